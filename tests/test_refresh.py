"""Refresh pays only for what it must (issue #35): a refresh killed mid-run and run again resumes
its recorded jobs; after it, a plain re-run returns the newest images; the way out of
SubmitUncertain re-makes just the rows in doubt. On the emulator and a real Prefect server."""

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

from gptimg_flows import batch_generate
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.flows import BatchResult

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")


def _paid(emulator: Any) -> list[str]:
    return [s["job_id"] for s in emulator.ledger()["submissions"]]


async def test_the_way_out_of_submit_uncertain_remakes_only_the_rows_in_doubt(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.2)
    emulator.force("submit_lost_response", provider="gptimage2ai", count=4)
    kw: dict[str, Any] = {
        "prompts": [f"doubtful row {i}" for i in range(8)],
        "provider": provider_block("gptimage2ai"),
        "archive": str(archive_dir),
        "size": "1:1",
        "concurrency": 1,
    }
    first: BatchResult = await batch_generate(**kw)
    assert [f.error_type for f in first.failures] == ["SubmitUncertain"] * 4
    assert "remake_uncertain=True" in first.failures[0].error
    assert len(_paid(emulator)) == 8

    again: BatchResult = await batch_generate(**kw, remake_uncertain=True)
    assert again.failures == [] and len(again.images) == 8
    assert len(_paid(emulator)) == 12, "the archived rows were bought again"
    assert sum(not i.from_archive for i in again.images) == 4

    plain: BatchResult = await batch_generate(**kw)
    assert plain.failures == [] and all(i.from_archive for i in plain.images)
    assert [i.job_id for i in plain.images] == [i.job_id for i in again.images]
    await batch_generate(**kw, remake_uncertain=True)
    assert len(_paid(emulator)) == 12, "a second re-make paid again"


def _kill_9_when(spec: dict[str, Any], ready: Any, timeout: float = 120) -> None:
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.flow_process", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "timed out waiting to kill"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
async def test_a_refresh_killed_mid_run_is_resumed_by_the_same_refresh_then_a_plain_run_is_free(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    await provider_block("scenario").save("refresh-s", overwrite=True)
    kw: dict[str, Any] = {
        "prompts": [f"refreshed row {i}" for i in range(6)],
        "archive": str(archive_dir),
        "size": "1024x1024",
        "concurrency": 6,
    }
    emulator.configure(latency=0.2)
    made: BatchResult = await batch_generate(provider="refresh-s", **kw)
    assert len(made.images) == 6 and len(_paid(emulator)) == 6

    emulator.configure(latency=6.0)  # the refresh's jobs run long: killed while they run

    def recorded() -> bool:
        jobs = [json.loads(p.read_text()) for p in archive_dir.glob("_jobs/*.json")]
        return sum(1 for j in jobs if j.get("state") == "submitted") >= 12

    spec = {"flow": "batch_generate", "provider": "refresh-s", "kwargs": {**kw, "refresh": True}}
    _kill_9_when(spec, recorded)
    assert len(_paid(emulator)) == 12

    emulator.configure(latency=0.2)
    resumed: BatchResult = await batch_generate(provider="refresh-s", refresh=True, **kw)
    assert resumed.failures == [] and len(resumed.images) == 6
    assert len(_paid(emulator)) == 12, "the same refresh run again paid again"
    refreshed = {i.job_id for i in resumed.images}
    assert refreshed.isdisjoint({i.job_id for i in made.images})

    plain: BatchResult = await batch_generate(provider="refresh-s", **kw)
    assert {i.job_id for i in plain.images} == refreshed, "a plain run missed the newest images"
    assert len(_paid(emulator)) == 12

    newer: BatchResult = await batch_generate(provider="refresh-s", refresh=True, **kw)
    assert len(_paid(emulator)) == 18, "a refresh after a completed one makes new images"
    assert {i.job_id for i in newer.images}.isdisjoint(refreshed)


async def test_refresh_rows_pays_for_just_those_rows_and_a_plain_run_then_returns_them(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    kw: dict[str, Any] = {
        "prompts": [f"row to refresh maybe {i}" for i in range(5)],
        "provider": provider_block("gptimage2ai"),
        "archive": str(archive_dir),
        "size": "1:1",
    }
    first: BatchResult = await batch_generate(**kw)
    assert len(_paid(emulator)) == 5

    with pytest.raises(InvalidRequest, match=r"refresh_rows: row\(s\) 5, 9 are not in this batch"):
        await batch_generate(**kw, refresh_rows=[1, 5, 9])
    assert len(_paid(emulator)) == 5

    some: BatchResult = await batch_generate(**kw, refresh_rows=[1, 3])
    assert some.failures == [] and len(_paid(emulator)) == 7
    new = {i.row for i in some.images if not i.from_archive}
    assert new == {1, 3}
    before = {i.row: i.sha256 for i in first.images}
    after = {i.row: i.sha256 for i in some.images}
    assert [r for r in range(5) if after[r] != before[r]] == [1, 3]

    plain: BatchResult = await batch_generate(**kw)
    assert all(i.from_archive for i in plain.images) and len(_paid(emulator)) == 7
    assert {i.row: i.sha256 for i in plain.images} == after, "not the newest images"


async def test_a_refresh_that_ends_with_a_batch_still_running_stays_open_until_collected(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """Found in session 9: a refresh run that completed while its Batch API batch still ran
    was "done", so the same refresh again took a new token and paid for a second batch, and
    the first was never collected."""
    emulator.configure(latency=0.2)
    kw: dict[str, Any] = {
        "prompts": [f"a slow batch line {i}" for i in range(3)],
        "provider": provider_block("openai"),
        "archive": str(archive_dir),
        "size": "256x256",
        "quality": "low",
        "batch_api": True,
        "batch_poll_seconds": 0.2,
    }
    await batch_generate(**kw)
    emulator.configure(latency=3.0)
    early: BatchResult = await batch_generate(**kw, refresh=True, batch_wait_seconds=0.3)
    assert {f.error_type for f in early.failures} == {"BatchPending"}
    assert len(emulator.ledger()["batches"]) == 2

    emulator.configure(latency=0.2)
    later: BatchResult = await batch_generate(**kw, refresh=True)
    assert later.failures == [] and len(later.images) == 3
    assert len(emulator.ledger()["batches"]) == 2, "the same refresh created a second batch"
    assert len(_paid(emulator)) == 6

    plain: BatchResult = await batch_generate(**kw)
    assert all(i.from_archive for i in plain.images)
    assert [i.sha256 for i in plain.images] == [i.sha256 for i in later.images]

    await batch_generate(**kw, refresh=True)  # the refresh was collected: this one is new
    assert len(emulator.ledger()["batches"]) == 3 and len(_paid(emulator)) == 9
