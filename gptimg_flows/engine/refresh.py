"""Which refresh a request belongs to, and where a request's newest images are.

`refresh=True` pays for new images: each request gets a key of its own, stamped with the
refresh's token. The token belongs to the run's *identity* (its flow and its parameters, so the
same command or deployment run again), not to the flow run: a refresh whose run did not complete
(killed, cancelled, failed) is resumed by the same refresh run again, collecting its recorded
jobs and archived images instead of paying again; once that run completed, the next refresh is a
new one. `remake_uncertain=True` makes again only requests whose submit is uncertain, under a key
derived from the uncertain record (the same re-make resumes, never pays twice).

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

from gptimg_flows.archive.layout import latest_rel, refresh_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.job_record import Recorded
from gptimg_flows.models import canonical_json

#: Tokens already settled in this process: (flow run id, archive) -> task giving the stamp.
_STAMPS: dict[tuple[str, str], asyncio.Task[str]] = {}


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
    return f":refresh:{await asyncio.shield(task)}"


def _identity(context: FlowRunContext) -> str:
    """The flow and its parameters (refresh aside): what the same run, started again, has."""
    params = {k: v for k, v in (context.parameters or {}).items() if k != "refresh"}
    flow = context.flow.name if context.flow is not None else ""
    payload = canonical_json({"flow": flow, "parameters": params})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


async def _token(archive: Archive, identity: str, run_id: str) -> str:
    record = await asyncio.to_thread(archive.read_json, refresh_rel(identity))
    token = record.get("token") if isinstance(record, dict) else None
    owner = record.get("flow_run_id") if isinstance(record, dict) else None
    if not (isinstance(token, str) and (owner == run_id or not await _completed(owner))):
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
