"""A flow process killed with SIGKILL after its submit is paid resumes without paying again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from gptimg_flows import batch_generate, generate_images

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def _block_fields(block: Any) -> dict[str, Any]:
    fields = {"base_url": block.base_url, "api_key": block.api_key.get_secret_value()}
    if hasattr(block, "api_secret"):
        fields["api_secret"] = block.api_secret.get_secret_value()
    return fields


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill_9_flow_process(spec: dict[str, Any], when: Callable[[], None]) -> None:
    """Run one flow in its own process (tests/support/flow_process.py); SIGKILL it once `when()`
    returns, and check it died of that signal."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.flow_process", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        when()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""


@pytest.mark.parametrize("name", ["runware", "scenario"])
async def test_kill_9_after_submit_then_rerun_polls_the_recorded_job(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=4.0)
    block = provider_block(name)
    kwargs = {"prompt": "a lighthouse in fog", "archive": str(archive_dir), "size": "256x256"}
    spec = {
        "flow": "generate_images",
        "provider": name,
        "block": _block_fields(block),
        "kwargs": kwargs,
    }

    def paid_and_recorded() -> None:
        _wait_for(lambda: emulator.ledger()["submissions"], 90, "the paid submission")
        # The record is written as soon as the answer arrives; give it that moment.
        _wait_for(
            lambda: any("submitted" in p.read_text() for p in archive_dir.glob("_jobs/*.json")),
            5,
            "the job record",
        )

    _kill_9_flow_process(spec, when=paid_and_recorded)
    assert not list(archive_dir.glob("images/*/*.png")), "the first run must die before archiving"

    images = await generate_images(provider=block, **kwargs)

    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 1, ledger["submissions"]
    assert len(images) == 1 and Path(images[0].uri).exists()
    assert images[0].job_id == ledger["submissions"][0]["job_id"]


@pytest.mark.parametrize("name", ["runware", "scenario"])
async def test_kill_9_mid_batch_then_rerun_finishes_and_pays_nothing_twice(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """Killed with some jobs archived, some running, maybe a submit in flight; run again.

    Runware finds a submit whose answer was lost by our taskUUID; Scenario cannot look one
    up, so an item whose submit was cut off mid-request stops with SubmitUncertain instead of
    paying again (at most the few submits in flight at the kill).
    """
    total = 30
    emulator.configure(latency=1.5, render_mode="stamp")
    block = provider_block(name)
    prompts = [f"crash batch {name} {i}" for i in range(total)]
    kwargs: dict[str, Any] = {
        "prompts": prompts,
        "archive": str(archive_dir),
        "concurrency": 8,
        "size": "256x256",
    }
    if name == "runware":
        kwargs["output_format"] = "png"  # Runware's default is JPEG; Scenario's is PNG
    spec = {
        "flow": "batch_generate",
        "provider": name,
        "block": _block_fields(block),
        "kwargs": kwargs,
    }
    _kill_9_flow_process(
        spec,
        when=lambda: _wait_for(
            lambda: (
                len(list(archive_dir.glob("images/*/*.png"))) >= 4
                and len(emulator.ledger()["submissions"]) >= 12
            ),
            120,
            "a batch half done",
        ),
    )
    paid_before = len(emulator.ledger()["submissions"])
    archived_before = len(list(archive_dir.glob("images/*/*.png")))
    assert 4 <= archived_before < total and paid_before < total, (archived_before, paid_before)

    result = await batch_generate(provider=block, **kwargs)

    subs = emulator.ledger()["submissions"]
    assert len({s["body_sha256"] for s in subs}) == len(subs), "a request was submitted twice"
    uncertain = [f for f in result.failures if f.error_type == "SubmitUncertain"]
    assert len(result.failures) == len(uncertain), result.failures
    if name == "runware":
        assert not uncertain
    assert len(uncertain) <= 8, "only submits in flight at the kill can be uncertain"
    assert len(result.images) + len(uncertain) == total
    # An uncertain item's submit may or may not have reached the provider: never both.
    assert total - len(uncertain) <= len(subs) <= total
    jobs = [img.job_id for img in result.images]
    assert len(set(jobs)) == len(jobs) and set(jobs) <= {s["job_id"] for s in subs}
    assert len(list(archive_dir.glob("images/*/*.png"))) == len(result.images)
    assert len(list(archive_dir.glob("_results/*.json"))) == len(result.images)


async def test_kill_9_while_an_openai_batch_runs_then_rerun_collects_the_one_batch(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """SIGKILL once the batch is created and the run is waiting on it: the re-run polls the
    recorded batch (no second batch, no line paid twice) and archives every row."""
    emulator.configure(latency=6.0)
    block = provider_block("openai")
    prompts = [f"batch kite {i}" for i in range(20)]
    kwargs = {
        "prompts": prompts,
        "archive": str(archive_dir),
        "size": "256x256",
        "quality": "low",
        "batch_api": True,
        "batch_poll_seconds": 0.5,
    }
    spec = {
        "flow": "batch_generate",
        "provider": "openai",
        "block": _block_fields(block),
        "kwargs": kwargs,
    }

    def batch_created() -> None:
        _wait_for(
            lambda: any('"created"' in p.read_text() for p in archive_dir.glob("_batches/*.json")),
            90,
            "the batch record",
        )

    _kill_9_flow_process(spec, when=batch_created)
    assert len(emulator.ledger()["batches"]) == 1
    assert not list(archive_dir.glob("images/*/*.png")), "killed before the batch finished"

    result = await batch_generate(provider=block, **kwargs)

    ledger = emulator.ledger()
    assert len(ledger["batches"]) == 1, "the re-run created a second batch"
    assert len(ledger["submissions"]) == 20 and result.failures == []
    assert [i.row for i in result.images] == list(range(20))
    assert len(list(archive_dir.glob("images/*/*.png"))) == 20
