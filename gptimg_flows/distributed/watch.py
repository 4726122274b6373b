"""Starting and watching the chunk runs of a distributed batch.

Each chunk's run is created (or, on a re-run, adopted) through run_deployment under an
idempotency key; one filter call follows them all; a running one that stops beating is
marked Crashed, and a crashed one is started again under its next attempt. A run that never
starts is cancelled and started again too: one left Pending past `start_timeout` (the worker
that took it died before starting it: a live worker starts a run in seconds), or one still
Scheduled (Late) past it while its pool has no online worker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.deployments import arun_deployment
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Crashed

from gptimg_flows.distributed.plan import FINAL, Chunk

#: Watching the chunk runs: one filter call, every POLL_MIN s while things change, backing
#: off to POLL_MAX s while nothing does.
POLL_MIN, POLL_MAX = 2.0, 5.0
#: Chunk runs created at once (each is a few API calls).
STARTS_AT_ONCE = 8
#: The setting through which chunk runs are told how often to beat, and the event they send.
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
#: A worker whose last heartbeat is older than this many of its intervals is taken for gone
#: (the server's own ONLINE/OFFLINE lags behind a killed worker).
WORKER_BEATS_MISSED = 2


def unstarted_reason(
    run: FlowRun, now: datetime, start_timeout: float, pool_online: bool | None
) -> str | None:
    """Why a chunk run that never started is given up on, or None while it may still start:
    Pending past `start_timeout` (its worker died before starting it), or Scheduled past its
    start by `start_timeout` with no online worker in its pool (`pool_online` False)."""
    state = run.state
    if state is None:
        return None
    if state.type is StateType.PENDING:
        waited = (now - state.timestamp).total_seconds()
        if waited > start_timeout:
            return (
                f"Pending for {waited:.0f} s: the worker that took it never started it (a live "
                "worker starts a run in seconds)"
            )
    if state.type is StateType.SCHEDULED and pool_online is False:
        due = run.expected_start_time or state.timestamp
        waited = (now - due).total_seconds()
        if waited > start_timeout:
            return (
                f"not started {waited:.0f} s after it was due, and work pool "
                f"{run.work_pool_name!r} has no online worker"
            )
    return None


@dataclass
class Watcher:
    """Starts (or adopts) each chunk's run, restarts crashed ones, waits for all of them."""

    deployment: str
    digest: str
    chunks: list[Chunk]
    chunk_retries: int
    heartbeat_seconds: int
    lost_after: float
    set_beats: bool = True  # the pool takes `env`: chunk runs beat every heartbeat_seconds
    start_timeout: float = 600.0
    _progress: UUID | None = None

    def beats_every(self, run: FlowRun) -> float:
        """How often a chunk run beats: ours every heartbeat_seconds; one adopted from an
        earlier run of this flow, as that run asked (its job variables say)."""
        env = (run.job_variables or {}).get("env") or {}
        try:
            return float(env.get(HEARTBEAT_ENV, self.heartbeat_seconds))
        except (TypeError, ValueError):
            return float(self.heartbeat_seconds)

    def lost_after_for(self, run: FlowRun) -> float:
        """Silence that means lost: as many of this run's beats as lost_after is of ours."""
        return self.lost_after * max(1.0, self.beats_every(run) / self.heartbeat_seconds)

    def key(self, chunk: Chunk) -> str:
        return f"gptimg-distributed:{self.digest}:chunk-{chunk.index}:attempt-{chunk.attempt}"

    async def run(self, client: PrefectClient) -> None:
        active = [c for c in self.chunks if c.todo]
        self._progress = await acreate_progress_artifact(
            progress=self._percent(), description="distributed batch: chunks done"
        )
        gate = asyncio.Semaphore(STARTS_AT_ONCE)

        async def adopt(chunk: Chunk) -> None:
            async with gate:
                await self._adopt_or_start(client, chunk)

        await asyncio.gather(*(adopt(c) for c in active))
        delay, last_percent = POLL_MIN, self._percent()
        while not all(c.settled for c in self.chunks):
            await asyncio.sleep(delay)
            changed = await self._refresh(client, active)
            changed |= await self._crash_lost(client, active)
            changed |= await self._replace_unstarted(client, active)
            for chunk in active:
                if chunk.state is not StateType.CRASHED or chunk.gave_up:
                    continue
                assert chunk.run is not None
                message = chunk.run.state.message if chunk.run.state else ""
                await self._start_again(client, chunk, f"crashed ({message})", chunk.crashed_runs)
                changed = True
            if (percent := self._percent()) != last_percent:
                last_percent = percent
                await aupdate_progress_artifact(self._progress, percent)
            delay = POLL_MIN if changed else min(POLL_MAX, delay * 1.5)
        await aupdate_progress_artifact(self._progress, 100.0)

    def _percent(self) -> float:
        total = sum(len(c.rows) for c in self.chunks) or 1
        return round(100.0 * sum(len(c.rows) for c in self.chunks if c.settled) / total, 1)

    async def _start(self, client: PrefectClient, chunk: Chunk) -> FlowRun:
        # as_subflow: the chunk runs show under this run in the UI, and cancelling this run
        # cancels them (the server cancels a cancelled run's subflow runs).
        run: FlowRun = await arun_deployment(
            self.deployment,
            client=client,
            parameters=chunk.parameters,
            timeout=0,
            idempotency_key=self.key(chunk),
            as_subflow=True,
            flow_run_name=f"{self.digest[:8]}-chunk-{chunk.index}-try-{chunk.attempt}",
            tags=["distributed-batch", f"batch-{self.digest[:12]}"],
            job_variables=(
                {"env": {HEARTBEAT_ENV: str(self.heartbeat_seconds)}} if self.set_beats else None
            ),
        )
        chunk.run, chunk.last_beat = run, None
        return run

    async def _adopt_or_start(self, client: PrefectClient, chunk: Chunk) -> None:
        """The chunk's run under its key; an earlier run of the same batch that already ended
        (a re-run after a crash, or rows left failed) is followed by the next attempt, which
        answers archived rows from the archive and does the rest."""
        while True:
            run = await self._start(client, chunk)
            if not (run.state and run.state.type in FINAL):
                return
            if run.state.type is StateType.CRASHED:
                chunk.crashed_runs.append(str(run.id))
            chunk.attempt += 1

    async def _start_again(
        self, client: PrefectClient, chunk: Chunk, why: str, replaced: list[str] | None
    ) -> None:
        """The next attempt of a chunk whose run crashed or never started, while
        `chunk_retries` allows (the run goes in `replaced`); else the chunk is given up."""
        assert chunk.run is not None
        logger = get_run_logger()
        if chunk.restarts >= self.chunk_retries:
            chunk.gave_up = True
            logger.error(
                "chunk %d: run %r %s; not started again (%d restart(s) made)",
                chunk.index,
                chunk.run.name,
                why,
                chunk.restarts,
            )
            return
        logger.warning(
            "chunk %d: run %r %s; starting it again (restart %d of %d): archived rows are "
            "answered from the archive and recorded jobs resumed, so nothing is paid twice",
            chunk.index,
            chunk.run.name,
            why,
            chunk.restarts + 1,
            self.chunk_retries,
        )
        if replaced is not None:
            replaced.append(str(chunk.run.id))
        chunk.restarts += 1
        chunk.attempt += 1
        await self._start(client, chunk)

    async def _replace_unstarted(self, client: PrefectClient, chunks: list[Chunk]) -> bool:
        """Cancel and start again the chunk runs that never started (unstarted_reason)."""
        waiting = [
            c
            for c in chunks
            if c.run is not None
            and c.state in (StateType.PENDING, StateType.SCHEDULED)
            and not c.gave_up
        ]
        if not waiting:
            return False
        now = datetime.now(UTC)
        online: dict[str, bool | None] = {}
        replaced = False
        for chunk in waiting:
            assert chunk.run is not None
            pool = chunk.run.work_pool_name
            if chunk.state is StateType.SCHEDULED and pool and pool not in online:
                online[pool] = await _pool_online(client, pool, now)
            why = unstarted_reason(chunk.run, now, self.start_timeout, online.get(pool or ""))
            if why is None:
                continue
            cancel: State[Any] = Cancelled(message=f"distributed-batch: {why}")
            result = await client.set_flow_run_state(chunk.run.id, cancel)
            if result.status is not SetStateStatus.ACCEPT:
                continue  # it started meanwhile
            replaced = True
            chunk.unstarted_runs.append(str(chunk.run.id))
            chunk.run = await client.read_flow_run(chunk.run.id)  # Cancelled, if it stays
            await self._start_again(client, chunk, f"{why}; cancelled", None)
        return replaced

    async def _refresh(self, client: PrefectClient, chunks: list[Chunk]) -> bool:
        """One filter call (a page per 200 runs) for every chunk run still going."""
        going = {c.run.id: c for c in chunks if c.run is not None and c.state not in FINAL}
        ids = list(going)
        changed = False
        for start in range(0, len(ids), 200):
            page = ids[start : start + 200]
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=len(page)
            )
            for run in runs:
                chunk = going[run.id]
                before = chunk.state
                chunk.run = run
                changed |= chunk.state is not before
        return changed

    async def _crash_lost(self, client: PrefectClient, chunks: list[Chunk]) -> bool:
        """Mark Crashed the running chunk runs that stopped beating: their worker or machine
        is gone (Prefect itself marks nothing; the zombie automation in its docs would).

        Only runs silent for longer than their threshold are looked up (one events query for
        all of them, the latest heartbeat of each), so a healthy batch costs about one query
        per run every few heartbeats.
        """
        now = datetime.now(UTC)

        def silence(chunk: Chunk) -> float:
            assert chunk.run is not None and chunk.run.state is not None
            since = chunk.run.state.timestamp
            if chunk.last_beat is not None and chunk.last_beat > since:
                since = chunk.last_beat
            return (now - since).total_seconds()

        suspects = {
            f"prefect.flow-run.{c.run.id}": c
            for c in chunks
            if c.run is not None
            and c.run.state is not None
            and c.run.state.type is StateType.RUNNING
            and silence(c) > self.lost_after_for(c.run)
        }
        if not suspects:
            return False
        longest = max(self.lost_after_for(c.run) for c in suspects.values() if c.run)
        window = EventOccurredFilter(
            since=now - timedelta(seconds=longest), until=now + timedelta(hours=1)
        )
        names = list(suspects)
        for start in range(0, len(names), 50):
            page = await client.read_events(
                EventFilter(
                    occurred=window,
                    event=EventNameFilter(name=[HEARTBEAT_EVENT]),
                    resource=EventResourceFilter(id=names[start : start + 50], distinct=True),
                ),
                limit=50,
            )
            for event in page.events:
                chunk = suspects[event.resource.id]
                if chunk.last_beat is None or event.occurred > chunk.last_beat:
                    chunk.last_beat = event.occurred
        crashed = False
        for chunk in suspects.values():
            assert chunk.run is not None
            limit = self.lost_after_for(chunk.run)
            if silence(chunk) <= limit:
                continue
            message = (
                f"no heartbeat for {limit:g} s (it beats every {self.beats_every(chunk.run):g} "
                "s): its worker or machine is gone; distributed-batch starts the chunk again"
            )
            state: State[Any] = Crashed(message=message)
            result = await client.set_flow_run_state(chunk.run.id, state)
            if result.status is SetStateStatus.ACCEPT:
                get_run_logger().warning(
                    "chunk %d: run %r: %s", chunk.index, chunk.run.name, message
                )
                chunk.run = await client.read_flow_run(chunk.run.id)
                crashed = True
        return crashed


async def _pool_online(client: PrefectClient, pool: str, now: datetime) -> bool | None:
    """Whether any worker of `pool` beat recently (None: the pool's workers cannot be read,
    e.g. a served deployment's runs, which have no pool)."""
    try:
        workers = await client.read_workers_for_work_pool(pool)
    except Exception:  # no answer about the pool: decide nothing from it
        return None
    for worker in workers:
        beat = worker.last_heartbeat_time
        every = worker.heartbeat_interval_seconds or 30
        if beat is not None and (now - beat).total_seconds() <= WORKER_BEATS_MISSED * every:
            return True
    return False
