"""A flow process killed with SIGKILL after its submit is paid resumes without paying again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from gptimg_flows import generate_images

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


@pytest.mark.parametrize("name", ["runware", "scenario"])
async def test_kill_9_after_submit_then_rerun_polls_the_recorded_job(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=4.0)
    block = provider_block(name)
    kwargs = {"prompt": "a lighthouse in fog", "archive": str(archive_dir), "size": "256x256"}
    spec = {"flow": "generate_images", "provider": name, "block": _block_fields(block),
            "kwargs": kwargs}  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.flow_process", json.dumps(spec)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for(lambda: emulator.ledger()["submissions"], 90, "the paid submission")
        # The record is written as soon as the answer arrives; give it that moment.
        _wait_for(
            lambda: any("submitted" in p.read_text() for p in archive_dir.glob("_jobs/*.json")),
            5, "the job record",
        )  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""
    assert not list(archive_dir.glob("images/*/*.png")), "the first run must die before archiving"

    images = await generate_images(provider=block, **kwargs)

    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 1, ledger["submissions"]
    assert len(images) == 1 and Path(images[0].uri).exists()
    assert images[0].job_id == ledger["submissions"][0]["job_id"]
