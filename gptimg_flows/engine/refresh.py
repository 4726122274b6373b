"""Which refresh a request belongs to, and where a request's newest images are.

`refresh=True` pays for new images: each request gets a key of its own, stamped with the
refresh's token. The token belongs to the run's *identity* (its flow and its parameters, so the
same command or deployment run again), not to the flow run: a refresh whose run did not complete
(killed, cancelled, failed), or completed with rows still in flight (a batch still running or
whose create is in doubt, a lost answer, a job not done: `IN_FLIGHT`), is resumed by the same
refresh run again, collecting its recorded jobs and archived images instead of paying again;
once a run of it completed with nothing in flight, the next refresh is a new one. Parameters
that change how a run goes, not what it makes (`HOW`), are not part of the identity.
`remake_uncertain=True` makes again only requests whose submit is uncertain, under a key derived
from the uncertain record (the same re-make resumes, never pays twice).

Wherever new images land under such a key, `_latest/<base key>.json` points at it, so a plain
re-run returns the newest images and pays nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

from gptimg_flows.archive.layout import latest_rel, refresh_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.job_record import Recorded
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.models import canonical_json

#: Tokens already settled in this process: (flow run id, archive) -> task giving the stamp
#: (the oldest dropped past KEPT_STAMPS: a long-lived worker runs many flows).
_STAMPS: dict[tuple[str, str], asyncio.Task[str]] = {}
KEPT_STAMPS = 256

#: A row that failed with one of these has a request still in flight: its refresh stays open.
IN_FLIGHT = frozenset({"BatchPending", "SubmitUncertain", "JobTimeout"})

#: Parameters that change how a run goes, not what it makes: the same refresh whatever they are.
HOW = frozenset(
    {
        "refresh",
        "remake_uncertain",
        "concurrency",
        "timeout_seconds",
        "max_cost",
        "batch_wait_seconds",
        "batch_poll_seconds",
        "fail_on_row_failure",
        "review_timeout_seconds",
        "on_review_timeout",
        "max_review_rounds",
    }
)


async def refresh_stamp(archive: Archive) -> str:
    """The slot suffix of this run's refresh (see the module docstring)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return f":refresh:{time.time_ns()}"
    run_id = str(context.flow_run.id)
    cache = (run_id, archive.basepath)
    task = _STAMPS.get(cache)
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        identity = _identity(context)
        task = _STAMPS[cache] = asyncio.ensure_future(_token(archive, identity, run_id))
        for old in list(_STAMPS)[: max(0, len(_STAMPS) - KEPT_STAMPS)]:
            if _STAMPS[old].done():
                del _STAMPS[old]
    return f":refresh:{await asyncio.shield(task)}"


async def end_refresh(archive: Archive, error_types: list[str]) -> None:
    """A refresh run ends, its failed rows' error types given: while any is `IN_FLIGHT`, the
    refresh stays open (the same refresh run again collects them instead of paying again)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run_id = str(context.flow_run.id)
    if (run_id, archive.basepath) not in _STAMPS:
        return  # no request of this run was stamped
    rel = refresh_rel(_identity(context))
    record = await asyncio.to_thread(archive.read_json, rel)
    if not (isinstance(record, dict) and record.get("flow_run_id") == run_id):
        return
    in_flight = sum(kind in IN_FLIGHT for kind in error_types)
    await asyncio.to_thread(archive.write_json, rel, {**record, "in_flight": in_flight})
    if in_flight:
        get_run_logger().info(
            "refresh %s stays open: %d row(s) of it are still in flight; running the same "
            "refresh again collects them (nothing is paid again)",
            record.get("token"),
            in_flight,
        )


def refreshed_rows(refresh: bool, rows: list[int] | None, row_of: list[int]) -> set[int]:
    """Which of a batch's prompts (their places in `row_of`) a refresh makes again: every one
    with `refresh`, those numbered in `rows` (the input's row numbers) otherwise. A number that
    names no row is refused before anything is paid."""
    if rows is None:
        return set(range(len(row_of))) if refresh else set()
    wanted = set(rows)
    if unknown := sorted(wanted - set(row_of)):
        shown = ", ".join(map(str, unknown[:10])) + (" …" if len(unknown) > 10 else "")
        have = f"{min(row_of)} to {max(row_of)}" if row_of else "none"
        raise InvalidRequest(
            f"refresh_rows: row(s) {shown} are not in this batch (its rows: {have}, counted "
            "from 0 as each image's `row`)",
            field="refresh_rows",
        )
    return {i for i, number in enumerate(row_of) if number in wanted}


def _identity(context: FlowRunContext) -> str:
    """The flow and what it makes (`HOW` aside): what the same run, started again, has."""
    params = {k: v for k, v in (context.parameters or {}).items() if k not in HOW}
    flow = context.flow.name if context.flow is not None else ""
    payload = canonical_json({"flow": flow, "parameters": params})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


async def _token(archive: Archive, identity: str, run_id: str) -> str:
    record = await asyncio.to_thread(archive.read_json, refresh_rel(identity))
    token = record.get("token") if isinstance(record, dict) else None
    owner = record.get("flow_run_id") if isinstance(record, dict) else None
    open_rows = record.get("in_flight") if isinstance(record, dict) else None
    if not (
        isinstance(token, str) and (owner == run_id or open_rows or not await _completed(owner))
    ):
        token = uuid.uuid4().hex[:16]  # the last refresh of this run completed: a new one
    state = {"token": token, "flow_run_id": run_id, "identity": identity}
    await asyncio.to_thread(archive.write_json, refresh_rel(identity), state)
    return token


async def _completed(flow_run_id: Any) -> bool:
    """Did the run that opened this refresh complete? (A run the server no longer knows is
    taken as completed: a refresh is a request to pay for new images.)"""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not isinstance(flow_run_id, str):
        return True
    try:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return True
    return run.state is not None and run.state.is_completed()


def remade_key(found: Recorded) -> str:
    """The key that re-makes a request whose submit is uncertain: derived from that record,
    so a re-run of the re-make (by any path) finds its own job instead of paying a third time."""
    record = found.record or {}
    seed = canonical_json(
        {"remake_of": found.key, "owner": record.get("owner"), "at": record.get("started_at")}
    )
    return hashlib.sha256(seed.encode()).hexdigest()


async def newest_key(archive: Archive, key: str) -> str | None:
    """The key a request's newest images are under (a refresh's or a re-make's), if any."""
    pointer = await asyncio.to_thread(archive.read_json, latest_rel(key))
    newest = pointer.get("key") if isinstance(pointer, dict) else None
    return newest if isinstance(newest, str) and newest != key else None


async def with_newest(archive: Archive, keys: list[str]) -> list[str]:
    """`keys`, each preceded by the key its newest images are under, where one is."""
    newest = await asyncio.gather(*(newest_key(archive, k) for k in keys))
    out: list[str] = []
    for key, new in zip(keys, newest, strict=True):
        out += [new, key] if new else [key]
    return out


async def point_to_newest(archive: Archive, base: str, key: str) -> None:
    """New images of the request `base` are under `key`: plain re-runs find them first."""
    if base != key:
        await asyncio.to_thread(archive.write_json, latest_rel(base), {"key": key})
