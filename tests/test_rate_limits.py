"""Batches against accounts with a rate limit (the emulator's token bucket of paid submits):
no row lost to 429s, a 429 never uses a task retry, a row that cannot get through fails with a
message that says what to change, two processes on one account lose nothing, and an empty
account (insufficient_quota) still fails at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from gptimg_flows import batch_generate
from gptimg_flows.results import BatchResult

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")


async def _task_runs(flow_run_id: UUID) -> list[Any]:
    """The run's task runs once the server has recorded them all (its task-run recorder
    writes them in batches, at least once a second: see the Makefile)."""
    seen: list[Any] = []
    async with get_client() as client:
        for _ in range(15):
            runs = list(
                await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
            )
            if runs and len(runs) == len(seen):
                return runs
            seen = runs
            await asyncio.sleep(1.2)
    return seen


async def _batch(**kwargs: Any) -> tuple[BatchResult, UUID]:
    state = await batch_generate(**kwargs, return_state=True)
    result: BatchResult = await state.result()
    assert state.state_details.flow_run_id is not None
    return result, state.state_details.flow_run_id


@pytest.mark.parametrize("name", ["openai", "gptimage2ai"])
async def test_batch_at_60_a_minute_with_16_at_once_loses_no_row_and_retries_no_task(
    name: str,
    provider_block: Any,
    emulator: Any,
    archive_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenAI tells its limit in x-ratelimit headers; gptimage2.ai only answers 429 with a
    Retry-After. Either way every row is made, each paid once, and the refusals are waited out
    inside the submit, not as Prefect task retries."""
    rows = 24
    emulator.configure(
        latency=0.2,
        rate_limits={name: {"images_per_minute": 60, "burst": 3}},
        render_mode="stamp",
    )
    started = time.monotonic()
    result, run_id = await _batch(
        prompts=[f"paced {name} {i}" for i in range(rows)],
        provider=provider_block(name),
        archive=str(archive_dir),
        concurrency=16,
        size="1024x1024" if name == "openai" else None,
    )
    wall = time.monotonic() - started
    assert not result.failures, [f.error for f in result.failures]
    assert len(result.images) == rows
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == rows, "each row paid exactly once"
    refused = ledger["rate_limited"].get(name, 0)
    assert refused > 0, "the limit must have been met for this test to mean anything"
    assert result.refused_submits == refused, (result.refused_submits, refused)
    assert result.rate_limit_wait_seconds > 0
    # #33: "held back" is wall time (never longer than the run), the sum is over submits.
    held = result.rate_limit_held_seconds
    assert 0 < held <= wall and held < result.rate_limit_wait_seconds, (held, wall)
    # (rows - burst) submits at one a second: the batch cannot be faster than that.
    assert wall >= (rows - 3) * 0.9, wall
    task_runs = await _task_runs(run_id)
    retried = [(t.name, t.run_count) for t in task_runs if t.run_count > 1]
    assert not retried, f"429s used task retries: {retried}"
    assert refused <= rows, f"{refused} refused submits for {rows} rows"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{name}: ")]
    assert any("429s, pacing at" in m for m in said), said
    assert any("pacing stopped" in m for m in said), said


async def test_the_artifact_counts_refused_submits_and_waiting(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    emulator.configure(latency=0.1, rate_limits={"scenario": {"images_per_minute": 120}})
    result, run_id = await _batch(
        prompts=[f"artifact {i}" for i in range(6)],
        provider=provider_block("scenario"),
        archive=str(archive_dir),
        concurrency=6,
        size="1024x1024",
    )
    assert not result.failures and result.refused_submits > 0
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    markdown = next(a.data for a in artifacts if a.key == "batch-generate")
    assert isinstance(markdown, str)
    assert f"Rate limits: {result.refused_submits} submit(s) refused with 429" in markdown


async def test_a_row_that_cannot_get_through_in_its_bound_fails_clearly_and_is_not_retried(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.1, rate_limits={"skillsvideo": {"images_per_minute": 2}})
    block = provider_block("skillsvideo", rate_limit_wait_seconds=3.0)
    started = time.monotonic()
    result, run_id = await _batch(
        prompts=["first", "second", "third"],
        provider=block,
        archive=str(archive_dir),
        concurrency=3,
        size="1024x1024",
    )
    assert time.monotonic() - started < 30, "a refused row must not wait past its bound"
    assert len(result.images) == 1, result.images
    assert [f.error_type for f in result.failures] == ["RateLimited", "RateLimited"]
    message = result.failures[0].error
    assert "could not get through within 3 s" in message, message
    assert "images_per_minute" in message and "concurrency" in message, message
    assert len(emulator.ledger()["submissions"]) == 1
    retried = [(t.name, t.run_count) for t in await _task_runs(run_id) if t.run_count > 1]
    assert not retried, f"a row that gave up waiting was retried: {retried}"


async def test_a_block_that_knows_its_limit_paces_from_the_first_submit(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """images_per_minute on the block: submits are spaced from the start, so the account's
    limit is never met (no 429 at all). The block says 100 against the account's 120: the
    job record's claim is written between a submit's turn and its request, and on a busy
    machine that write can take tens of milliseconds (110 against 120 left 45 ms of slack)."""
    emulator.configure(
        latency=0.1, rate_limits={"gptimage2ai": {"images_per_minute": 120, "burst": 1}}
    )
    block = provider_block("gptimage2ai", images_per_minute=100)
    result, _ = await _batch(
        prompts=[f"known {i}" for i in range(8)],
        provider=block,
        archive=str(archive_dir),
        concurrency=8,
    )
    assert not result.failures and len(result.images) == 8
    assert emulator.ledger()["rate_limited"].get("gptimage2ai", 0) == 0
    assert result.rate_limit_wait_seconds > 2.0


async def test_insufficient_quota_is_not_a_rate_limit_and_fails_at_once(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(
        latency=0.1,
        balance={"openai": 0.0},
        rate_limits={"openai": {"images_per_minute": 60, "burst": 3}},
    )
    started = time.monotonic()
    result, run_id = await _batch(
        prompts=["a", "b"],
        provider=provider_block("openai"),
        archive=str(archive_dir),
        concurrency=2,
        size="1024x1024",
    )
    assert time.monotonic() - started < 20
    assert [f.error_type for f in result.failures] == ["InsufficientCredits"] * 2
    assert result.refused_submits == 0 and not emulator.ledger()["submissions"]
    assert all(t.run_count == 1 for t in await _task_runs(run_id))


async def test_polls_told_429_wait_and_the_job_is_still_collected(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.3, retry_after=0.2)
    emulator.force("poll_429", "gptimage2ai", count=6)
    result, run_id = await _batch(
        prompts=["polled", "polled too"],
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        concurrency=2,
    )
    assert not result.failures and len(result.images) == 2
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 2
    assert sum(f["kind"] == "poll_429" for f in ledger["faults"]) == 6
    assert all(t.run_count == 1 for t in await _task_runs(run_id))


def _block_fields(block: Any) -> dict[str, Any]:
    return {"base_url": block.base_url, "api_key": block.api_key.get_secret_value()}


async def test_two_flow_processes_on_one_account_lose_no_row(
    provider_block: Any, emulator: Any, tmp_path: Path
) -> None:
    """Two workers sharing one key: they lose nothing, pay each row once, and keep one pace
    for the account on the Prefect server (bench/shared_limit.py measures the wall)."""
    per = 12
    emulator.configure(
        latency=0.2,
        rate_limits={"gptimage2ai": {"images_per_minute": 60, "burst": 3}},
        render_mode="stamp",
    )
    block = provider_block("gptimage2ai")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    procs = []
    started = time.time()
    for p in range(2):
        kwargs = {
            "prompts": [f"worker {p} row {i}" for i in range(per)],
            "archive": str(tmp_path / f"archive-{p}"),
            "concurrency": 8,
        }
        spec = {
            "flow": "batch_generate",
            "provider": "gptimage2ai",
            "block": _block_fields(block),
            "kwargs": kwargs,
        }
        command = [sys.executable, "-m", "tests.support.flow_process", json.dumps(spec)]
        procs.append(
            await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outputs = [await asyncio.wait_for(p.communicate(), 240) for p in procs]
    ended = time.time()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
        assert len(json.loads(out.decode().strip().splitlines()[-1])) == per
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 2 * per, "each row of each process paid once"
    assert ledger["rate_limited"].get("gptimage2ai", 0) > 0
    # they met on the Prefect server: one pace for the account, near its 1 a second, and
    # both processes gone from it once their batches ended
    from prefect.variables import Variable

    from gptimg_flows.blocks.credentials import provider_of
    from gptimg_flows.engine.shared_pace import variable_name

    shared: Any = await Variable.aget(variable_name(provider_of(block).account))
    assert shared is not None, "the processes kept their pace in step through the server"
    assert 0.3 <= shared["rate"] <= 2.0, shared
    assert started < shared["updated"] < ended, "kept up to date during this run"


def test_held_back_time_is_the_union_of_the_waits() -> None:
    from gptimg_flows.engine.pacing import RunTraffic

    traffic = RunTraffic()
    for start, end in [(5, 12), (0, 10), (20, 21), (11, 13), (30, 30.5)]:
        traffic.hold(start, end)
    assert traffic.held == [(0, 13), (20, 21), (30, 30.5)]
    assert traffic.held_seconds == 14.5
