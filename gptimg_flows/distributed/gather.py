"""The answer of a distributed batch, read from the archive every worker reaches: which
rows are archived, each row's images in input order, why a row with none failed (its task
run's state, else its chunk run's), and the report artifact.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.logging import get_run_logger

from gptimg_flows.archive.layout import job_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.distributed.plan import Chunk
from gptimg_flows.engine.artifacts import cell, failure_table
from gptimg_flows.engine.records import read_result
from gptimg_flows.models import ArchivedImage
from gptimg_flows.results import BatchFailure, BatchResult, cost_summary
from gptimg_flows.rows import Row, on_row, row_metadata, row_prompt

#: Archive reads in flight while looking up which rows are done: the threads of a pool of
#: their own (a 20,000-row batch on S3 neither takes the default pool every other part of
#: the process shares, nor opens 20,000 reads at once: bench/archive_scan.py).
ARCHIVE_READS = 32
#: Keys handed to the pool at a time (what waits in memory for a thread).
SCAN_WINDOW = 1024
_POOL = ThreadPoolExecutor(ARCHIVE_READS, thread_name_prefix="gptimg-archive-scan")

K = TypeVar("K")
V = TypeVar("V")
#: Failures listed in the report (all of them are in the result).
REPORT_FAILURES = 200
REPORT_KEY = "distributed-batch"
#: How long to wait for the server to record why rows of completed chunk runs failed.
DETAILS_WAIT_SECONDS = 30.0
#: A failed task run's state message: "...exception ContentRejected: the prompt was ...".
_EXCEPTION = re.compile(r"\b([A-Z]\w*): (.*)", re.S)


async def archived_rows(store: Archive, keys: dict[int, str]) -> dict[int, list[ArchivedImage]]:
    """Rows whose images are all in the archive now."""
    found = await scan(keys.items(), lambda key: read_result(store, key))
    return {i: images for i, images in found.items() if images}


async def scan(items: Iterable[tuple[K, str]], read: Callable[[str], V]) -> dict[K, V]:
    """`read(key)` for each (row, key) on the scan's own pool of ARCHIVE_READS threads, in
    windows of SCAN_WINDOW keys."""
    loop = asyncio.get_running_loop()
    pending = list(items)
    out: dict[K, V] = {}
    for start in range(0, len(pending), SCAN_WINDOW):
        window = pending[start : start + SCAN_WINDOW]
        values = await asyncio.gather(
            *(loop.run_in_executor(_POOL, read, key) for _, key in window)
        )
        out.update((row, value) for (row, _), value in zip(window, values, strict=True))
    return out


async def gather_results(
    client: PrefectClient,
    store: Archive,
    rows: list[Row],
    keys: dict[int, str],
    done: dict[int, list[ArchivedImage]],
    chunks: list[Chunk],
    failures: list[BatchFailure],
) -> tuple[list[ArchivedImage], list[BatchFailure]]:
    """Every row's images from the archive, in input order: those archived before this run
    are `from_archive` (0 this run), those a chunk run paid for are this run's. A row with no
    images is a failure: its request's failed task run says why, else its chunk run's state."""
    fresh = await archived_rows(store, {i: k for i, k in keys.items() if i not in done})
    by_row: dict[int, list[ArchivedImage]] = {
        i: [img.model_copy(update={"from_archive": True}) for img in images]
        for i, images in done.items()
    }
    by_row.update(fresh)
    chunk_of = {i: c for c in chunks for i in c.rows}
    missing = sorted(i for i in keys if i not in by_row)
    errors = await _task_errors(client, {i: chunk_of[i] for i in missing}, keys)
    records = await scan(((i, keys[i]) for i in missing), lambda key: store.read_json(job_rel(key)))
    for i in missing:
        error = errors.get(i)
        failures.append(_missing_row(i, rows[i], chunk_of[i], error, records[i]))
    failures.sort(key=lambda f: f.index)
    images = [img for i in sorted(by_row) for img in on_row(by_row[i], i, row_metadata(rows[i]))]
    return images, failures


def _task_run_name(key: str) -> str:
    """batch_generate runs each request as one task run named after its key (tasks.py)."""
    return f"job-{key[:12]}"


async def _task_errors(
    client: PrefectClient, chunk_of: dict[int, Chunk], keys: dict[int, str]
) -> dict[int, tuple[str, str]]:
    """(error type, message) of each row that failed in a chunk run that completed: the
    row's request task run failed, and its state says why.

    Read from the Prefect API, not from the chunk run's result (that stays on its worker
    unless results are persisted to shared storage). The server records task-run states from
    events, seconds behind the run's own end, so this waits up to DETAILS_WAIT_SECONDS for
    them; a row with no failed task run by then (BudgetExceeded stops a row before its task)
    is described by its chunk run instead.
    """
    names = {
        _task_run_name(keys[i]): i
        for i, c in chunk_of.items()
        if c.run is not None and c.state is StateType.COMPLETED
    }
    failed = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]))
    )
    out: dict[int, tuple[str, str]] = {}
    started = asyncio.get_running_loop().time()
    deadline = started + DETAILS_WAIT_SECONDS
    while names:
        ids = list({run.id for i in names.values() if (run := chunk_of[i].run) is not None})
        for start in range(0, len(ids), 50):
            offset = 0
            while True:
                page = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[start : start + 50])),
                    task_run_filter=failed,
                    limit=200,
                    offset=offset,
                )
                for task_run in page:
                    if (i := names.pop(task_run.name, None)) is None:
                        continue
                    message = (task_run.state.message if task_run.state else None) or ""
                    found = _EXCEPTION.search(message)
                    out[i] = (found[1], found[2]) if found else ("RowFailed", message)
                if len(page) < 200:
                    break
                offset += 200
        if not names or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(2.0)
    waited = asyncio.get_running_loop().time() - started
    if waited >= 1.0:
        get_run_logger().info(
            "waited %.0f s for the server to record why %d row(s) failed%s",
            waited,
            len(out),
            f"; {len(names)} row(s) left without a reason" if names else "",
        )
    return out


def _missing_row(
    index: int,
    row: Row,
    chunk: Chunk,
    error: tuple[str, str] | None,
    job_record: dict[str, Any] | None,
) -> BatchFailure:
    job = (job_record or {}).get("job") or {}
    run = chunk.run
    name = f"{run.name!r} ({run.id})" if run else "(none)"
    state = chunk.state.value if chunk.state else "never started"
    if error is not None:
        kind, text = error
    elif chunk.state is StateType.COMPLETED:
        kind = "RowFailed"
        text = f"no image archived; chunk run {name} completed, its artifact lists why"
    else:
        kinds = {"CRASHED": "ChunkCrashed", "CANCELLED": "ChunkCancelled"}
        kind = kinds.get(state, "ChunkFailed")
        message = (run.state.message if run and run.state else "") or ""
        text = f"chunk run {name} ended {state}: {message}".strip()
        if chunk.state is StateType.CRASHED:
            text += f" (after {chunk.restarts} restart(s); re-run to finish the batch)"
    if job_record and job_record.get("state") == "submitting":
        text += "; a submit was sent and its answer lost (a re-run looks it up, never repays)"
    return BatchFailure(
        index=index,
        prompt=row_prompt(row)[:200],
        error=text,
        error_type=kind,
        job_id=job.get("job_id"),
        extra=row_metadata(row),
    )


# -- the report ---------------------------------------------------------------------------------


async def publish_report(
    result: BatchResult, chunks: list[Chunk], total_rows: int, digest: str
) -> None:
    """One markdown artifact for the whole batch: totals, one line per chunk, the failures."""
    images_by_row: dict[int, int] = {}
    for img in result.images:
        if img.row is not None:
            images_by_row[img.row] = images_by_row.get(img.row, 0) + 1
    failed = {f.index for f in result.failures}
    lines = [
        f"## Distributed batch of {total_rows} row(s) in {len(chunks)} chunk(s)",
        "",
        f"{len(result.images)} image(s), {len(result.failures)} failed row(s). "
        f"{cost_summary(result.images)}. Batch `{digest[:12]}`.",
        "",
        "| chunk | rows | run | state | restarts | runs replaced | images | failed rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in chunks:
        span = f"{c.rows[0]}-{c.rows[-1]} ({len(c.rows)})" if c.rows else "-"
        if c.run is None:
            run, state = "-", "archived already" if not c.todo else "not started"
        else:
            run, state = cell(c.run.name or str(c.run.id)), c.state.value if c.state else "?"
        lines.append(
            f"| {c.index} | {span} | {run} | {state} | {c.restarts} | "
            f"{_replaced(c)} | "
            f"{sum(images_by_row.get(i, 0) for i in c.rows)} | "
            f"{sum(1 for i in c.rows if i in failed)} |"
        )
    if result.failures:
        lines += ["", failure_table(result.failures, limit=REPORT_FAILURES)]
    await acreate_markdown_artifact(
        markdown="\n".join(lines), key=REPORT_KEY, description="distributed batch report"
    )


def _replaced(chunk: Chunk) -> str:
    """The chunk's runs that were started again, and why."""
    runs = [f"{r[:8]} (crashed)" for r in chunk.crashed_runs]
    runs += [f"{r[:8]} (never started)" for r in chunk.unstarted_runs]
    return ", ".join(runs) or "-"
