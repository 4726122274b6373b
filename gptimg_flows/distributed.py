"""distributed_batch: one big batch fanned out as chunk flow runs of the batch deployment.

Beyond one machine, a batch is split into chunks and each chunk runs as a flow run of
`batch-generate/batch-from-file` (or any deployment of `batch_generate`), so every worker of
the deployment's pool takes chunks. How it keeps "never pay twice" across machines:

- Each chunk run is created with an idempotency key made from a digest of the whole batch
  (rows and options), the chunk's index and an attempt number: re-running this flow finds the
  runs it already started instead of starting them again.
- A chunk run that crashed (its process, worker or machine died) is started again under the
  next attempt number. That is safe because batch_generate answers archived rows from the
  archive and resumes recorded jobs: the new run pays only for rows nobody paid for.
- Identical requests share one chunk, so each keeps the slot (its occurrence number among
  identical requests) a single batch_generate over the whole input would give it: the
  request keys, and so the archive's records, are the same as a plain batch's.
- The answer is read from the archive (`_results/<key>.json`, written by whichever run paid),
  not from Prefect's result store: results live on the worker that ran a chunk unless a team
  configured shared result storage, while the archive is storage every worker reaches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.deployments import arun_deployment
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import Crashed

from .archive import DEFAULT_ARCHIVE_ENV, Archive
from .artifacts import cell, failure_table
from .blocks import ImageArchive
from .errors import BudgetExceeded, InvalidRequest, ProviderError
from .flows import check_timeout, on_row, row_failure, run_budget
from .models import ArchivedImage, ImageRequest, OutputFormat, Quality, canonical_json
from .providers.base import Provider
from .resolve import (
    ArchiveParam,
    ProviderParam,
    looks_like_path,
    resolve_archive,
    resolve_provider,
)
from .results import BatchFailure, BatchResult, cost_summary, spent_cost, total_cost
from .rows import (
    PromptsParam,
    Row,
    check_columns,
    read_prompts,
    row_metadata,
    row_prompt,
    row_request,
)
from .tasks import ProviderSpec, archived_result, job_rel, provider_of, request_key

DEFAULT_DEPLOYMENT = "batch-generate/batch-from-file"
#: Prefect's engine never beats more often than every 30 s; unless told, every 180 s.
MIN_HEARTBEAT_SECONDS = 30
PREFECT_HEARTBEAT_SECONDS = 180
#: Watching the chunk runs: one filter call, every POLL_MIN s while things change, backing
#: off to POLL_MAX s while nothing does.
POLL_MIN, POLL_MAX = 2.0, 5.0
#: Chunk runs created at once (each is a few API calls).
STARTS_AT_ONCE = 8
#: Archive reads in flight while looking up which rows are done.
ARCHIVE_READS = 64
#: Failures listed in the report (all of them are in the result).
REPORT_FAILURES = 200
REPORT_KEY = "distributed-batch"
#: How long to wait for the server to record why rows of completed chunk runs failed.
DETAILS_WAIT_SECONDS = 30.0
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
#: A failed task run's state message: "...exception ContentRejected: the prompt was ...".
_EXCEPTION = re.compile(r"\b([A-Z]\w*): (.*)", re.S)
KEY_VERSION = 1
_FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


@dataclass
class _Chunk:
    """One chunk: its rows (global indices, input order), its run, and what happened to it."""

    index: int
    rows: list[int]
    parameters: dict[str, Any]
    todo: int  # rows with no archived images when this run started
    attempt: int = 0
    restarts: int = 0
    run: FlowRun | None = None
    crashed_runs: list[str] = field(default_factory=list)
    gave_up: bool = False  # crashed more often than chunk_retries allows
    last_beat: datetime | None = None

    @property
    def state(self) -> StateType | None:
        return self.run.state.type if self.run and self.run.state else None

    @property
    def settled(self) -> bool:
        if self.todo == 0:
            return True
        return self.state in _FINAL and (self.state is not StateType.CRASHED or self.gave_up)


@flow(name="distributed-batch", log_prints=True)
async def distributed_batch(
    prompts: PromptsParam,
    provider: ProviderParam = "offline",
    archive: ArchiveParam = None,
    chunk_size: int = 100,
    deployment: str = DEFAULT_DEPLOYMENT,
    concurrency: int = 8,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    prompt_template: str | None = None,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    chunk_retries: int = 2,
    heartbeat_seconds: int = MIN_HEARTBEAT_SECONDS,
    lost_after_seconds: float | None = None,
) -> BatchResult:
    """Split the rows into chunks of `chunk_size`, run each as a flow run of `deployment`
    (a deployment of batch_generate) on whichever worker takes it, and gather one result.

    `prompts`, `prompt_template`, `size`, `quality`, `output_format`, `concurrency` (per
    chunk run) and `timeout_seconds` mean what they mean for batch_generate. `archive` must
    be storage every worker reaches (a saved ImageArchive block, an s3:// URL, or a shared
    absolute folder): it is where each chunk's images and job records are kept, and where
    this flow reads the answer from.

    A chunk run that crashes while this run watches is started again, up to `chunk_retries`
    times. Chunk runs beat every `heartbeat_seconds` (passed to them as
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY); a running chunk run with no heartbeat for
    `lost_after_seconds` (default 3 beats) is taken for lost with its machine, marked Crashed,
    and started again. (A run its worker left Pending is not detected: Prefect gives no sign.)

    Re-running with the same rows and options adopts the chunk runs already started (same
    idempotency keys) and starts nothing for chunks whose rows are all archived; a chunk whose
    last run ended with rows missing (crashed, cancelled, or rows that failed) gets its next
    attempt, which answers its archived rows from the archive and pays only for the rest.

    `max_cost` (the provider's unit) is split across the chunks: the estimate of every row not
    yet archived must fit, and each chunk run gets its own rows' estimate as its budget, so
    together they never pass it. Unlike batch_generate, a budget smaller than the estimate is
    refused up front (BudgetExceeded) instead of spent on the first rows.

    Images come back in input order, each with its global `row`; `cost` is what this run
    spent (rows already archived when it started cost 0), `images_cost` what the images cost.
    """
    logger = get_run_logger()
    check_timeout(timeout_seconds)
    lost_after = _check_watch_options(chunk_size, chunk_retries, heartbeat_seconds,
                                      lost_after_seconds)  # fmt: skip
    rows = _json_rows(read_prompts(prompts))
    check_columns(rows, prompt_template)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    provider_ref, archive_ref = _provider_ref(spec), _archive_ref(archive, store)
    adapter = provider_of(spec)
    defaults = {"size": size, "quality": quality, "output_format": output_format}
    requests: dict[int, ImageRequest] = {}
    failures: list[BatchFailure] = []
    for i, row in enumerate(rows):
        try:
            requests[i] = row_request(row, defaults, prompt_template)
            adapter.validate(requests[i])
        except (ValueError, ProviderError) as exc:
            requests.pop(i, None)
            failures.append(row_failure(i, row, row_prompt(row), exc))
    run_budget(adapter, max_cost, list(requests.values()))  # an unknown price is refused here
    async with get_client() as client:
        settable = await _check_deployment(client, deployment)
        if not settable:
            heartbeat_seconds, lost_after = _default_beats(deployment, heartbeat_seconds,
                                                           lost_after)  # fmt: skip
        keys, groups = _keys_and_groups(adapter, requests)
        done = await _archived_rows(store, keys)
        if max_cost is not None:
            _check_budget(adapter, requests, done, max_cost)
        options = {
            "provider": provider_ref, "archive": archive_ref, "concurrency": concurrency,
            "size": size, "quality": quality, "output_format": output_format,
            "prompt_template": prompt_template, "timeout_seconds": timeout_seconds,
        }  # fmt: skip
        digest = _batch_digest(rows, options, deployment, chunk_size, max_cost)
        chunks = _make_chunks(adapter, rows, requests, groups, done, options, chunk_size,
                              budgeted=max_cost is not None)  # fmt: skip
        logger.info(
            "%d row(s) in %d chunk(s) of up to %d; %d already archived, %d invalid; batch %s",
            len(rows), len(chunks), chunk_size, len(done), len(failures), digest[:12],
        )  # fmt: skip
        watcher = _Watcher(
            deployment=deployment, digest=digest, chunks=chunks, chunk_retries=chunk_retries,
            heartbeat_seconds=heartbeat_seconds, lost_after=lost_after, set_beats=settable,
        )  # fmt: skip
        await watcher.run(client)
        images, failures = await _gather(client, store, rows, keys, done, chunks, failures)
    result = BatchResult(
        images=images, failures=failures, cost=spent_cost(images), images_cost=total_cost(images)
    )
    logger.info("distributed batch: %d image(s), %d failure(s); %s", len(images),
                len(failures), cost_summary(images))  # fmt: skip
    await _publish_report(result, chunks, len(rows), digest)
    return result


# -- parameters ---------------------------------------------------------------------------------


def _check_watch_options(
    chunk_size: int, chunk_retries: int, heartbeat_seconds: int, lost_after_seconds: float | None
) -> float:
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size={chunk_size}; it must be 1 or more", field="chunk_size")
    if chunk_retries < 0:
        raise InvalidRequest(
            f"chunk_retries={chunk_retries}; it must be 0 or more", field="chunk_retries"
        )
    if heartbeat_seconds < MIN_HEARTBEAT_SECONDS:
        raise InvalidRequest(
            f"heartbeat_seconds={heartbeat_seconds}; Prefect beats every 30 s at most",
            field="heartbeat_seconds",
        )
    lost_after = 3.0 * heartbeat_seconds if lost_after_seconds is None else lost_after_seconds
    if not lost_after > heartbeat_seconds:
        raise InvalidRequest(
            f"lost_after_seconds={lost_after:g}; it must be more than heartbeat_seconds="
            f"{heartbeat_seconds} (a live chunk run beats once every heartbeat_seconds)",
            field="lost_after_seconds",
        )
    return lost_after


async def _check_deployment(client: PrefectClient, name: str) -> bool:
    """The chunk deployment exists and runs batch_generate (whose archive records this flow
    reads), before any chunk run is created. Returns whether its work pool takes an `env`
    job variable, through which chunk runs are told how often to beat."""
    try:
        found = await client.read_deployment_by_name(name)
    except (ObjectNotFound, ValueError):
        raise InvalidRequest(
            f"deployment: no deployment {name!r} (`flow-name/deployment-name`); deploy "
            "deployments/prefect.yaml (`prefect deploy --all`) or name your own deployment of "
            "batch_generate",
            field="deployment",
        ) from None
    flow_name = (await client.read_flow(found.flow_id)).name
    if flow_name != "batch-generate":
        raise InvalidRequest(
            f"deployment: {name!r} runs the flow {flow_name!r}; chunks must run batch-generate",
            field="deployment",
        )
    if not found.work_pool_name:
        return False  # served (`prefect serve`): runs take the serving process's settings
    pool = await client.read_work_pool(found.work_pool_name)
    variables = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
    return "env" in variables


def _default_beats(deployment: str, heartbeat_seconds: int, lost_after: float) -> tuple[int, float]:
    """Chunk runs we cannot set the heartbeat of beat as their workers say: assume Prefect's
    default, and wait as many of those beats before calling a run lost."""
    get_run_logger().warning(
        "chunk runs of %r cannot be told how often to beat (their work pool has no `env` job "
        "variable): assuming Prefect's default of %d s; set PREFECT_FLOWS_HEARTBEAT_FREQUENCY="
        "%d where they run, and heartbeat_seconds to match, to find lost ones sooner",
        deployment, PREFECT_HEARTBEAT_SECONDS, heartbeat_seconds,
    )  # fmt: skip
    return PREFECT_HEARTBEAT_SECONDS, lost_after * PREFECT_HEARTBEAT_SECONDS / heartbeat_seconds


def _json_rows(rows: list[Row]) -> list[Row]:
    """The rows as chunk runs will receive them (JSON parameters), so the request keys this
    flow computes are the ones the chunk runs compute."""
    try:
        decoded: list[Row] = json.loads(json.dumps(rows))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"prompts: every value must be JSON (strings, numbers, lists, dicts): {exc}; chunk "
            "runs receive the rows as flow-run parameters",
            field="prompts",
        ) from None
    return decoded


def _provider_ref(spec: ProviderSpec) -> str:
    """What a chunk run on another machine loads the provider from: a saved block's
    `slug/name` (never its secrets as a parameter), or `offline`."""
    if isinstance(spec, str):
        return spec
    name = getattr(spec, "_block_document_name", None)
    if not name or getattr(spec, "_is_anonymous", False):
        raise InvalidRequest(
            "provider: chunk runs load the credentials on their own worker, so pass a saved "
            "block (its name, or a block object after .save(name)), not an unsaved block",
            field="provider",
        )
    return f"{spec.get_block_type_slug()}/{name}"


def _archive_ref(archive: ArchiveParam, store: Archive) -> str:
    """What a chunk run opens the same archive from: a saved block's name, a URL, or an
    absolute folder (a relative one would be resolved in each worker's own directory)."""
    if isinstance(archive, ImageArchive):
        name = getattr(archive, "_block_document_name", None)
        if name and not getattr(archive, "_is_anonymous", False):
            return str(name)
        if archive.storage_options or archive.secret_storage_options:
            raise InvalidRequest(
                "archive: an unsaved ImageArchive with storage options cannot be handed to "
                "chunk runs; save it (.save(name)) and pass its name",
                field="archive",
            )
        return store.root if store.local else store.basepath
    if isinstance(archive, str) and not looks_like_path(archive.strip()):
        return archive.strip()  # a saved block's name: chunk runs load it
    if archive is None and not os.environ.get(DEFAULT_ARCHIVE_ENV):
        get_run_logger().warning(
            "archive not set: chunk runs will use %s, which only workers on this machine "
            "reach; pass a shared archive (an ImageArchive block or an s3:// URL)",
            store.root,
        )
    return str(Path(store.root)) if store.local else store.basepath


def _keys_and_groups(
    adapter: Provider, requests: dict[int, ImageRequest]
) -> tuple[dict[int, str], dict[int, str]]:
    """Each row's request key, with the slot batch_generate gives it (its occurrence number
    among identical requests), and each row's fingerprint (identical requests group)."""
    seen: dict[str, int] = {}
    keys: dict[int, str] = {}
    groups: dict[int, str] = {}
    for i, request in requests.items():
        fingerprint = canonical_json(request.fingerprint())
        slot = seen.get(fingerprint, 0)
        seen[fingerprint] = slot + 1
        keys[i] = request_key(adapter, request, [], str(slot))
        groups[i] = fingerprint
    return keys, groups


def _plan_chunks(order: list[int], groups: dict[int, str], chunk_size: int) -> list[list[int]]:
    """Rows in input order, `chunk_size` a chunk, except that a row identical to an earlier
    one joins that row's chunk: a chunk run numbers identical requests itself, so all of them
    must be in one chunk for each to keep its slot (and its key)."""
    chunks: list[list[int]] = []
    home: dict[str, int] = {}
    for i in order:
        if groups[i] in home:
            chunks[home[groups[i]]].append(i)
            continue
        if not chunks or len(chunks[-1]) >= chunk_size:
            chunks.append([])
        chunks[-1].append(i)
        home[groups[i]] = len(chunks) - 1
    return chunks


def _make_chunks(
    adapter: Provider,
    rows: list[Row],
    requests: dict[int, ImageRequest],
    groups: dict[int, str],
    done: dict[int, list[ArchivedImage]],
    options: dict[str, Any],
    chunk_size: int,
    budgeted: bool,
) -> list[_Chunk]:
    """Each chunk with the parameters of its runs. With a budget, each gets its own rows'
    estimate (rows archived already cost nothing): together never more than max_cost."""
    chunks = []
    for index, members in enumerate(_plan_chunks(list(requests), groups, chunk_size)):
        todo = [i for i in members if i not in done]
        cap = None
        if budgeted:
            cap = round(sum(adapter.price(requests[i]).amount or 0.0 for i in todo), 9)
        parameters = {**options, "prompts": [rows[i] for i in members], "max_cost": cap}
        chunks.append(_Chunk(index, members, parameters, todo=len(todo)))
    return chunks


def _batch_digest(
    rows: list[Row],
    options: dict[str, Any],
    deployment: str,
    chunk_size: int,
    max_cost: float | None,
) -> str:
    """What makes two runs the same batch: the same chunk runs would be started for both."""
    payload = {"v": KEY_VERSION, "rows": rows, "options": options, "deployment": deployment,
               "chunk_size": chunk_size, "max_cost": max_cost}  # fmt: skip
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _check_budget(
    adapter: Provider, requests: dict[int, ImageRequest], done: dict[int, list[ArchivedImage]],
    max_cost: float,
) -> None:  # fmt: skip
    """The rows still to pay for must fit in `max_cost` as a whole: chunk runs cannot share
    one running budget, so each gets a fixed share (its rows' estimate)."""
    todo = [r for i, r in requests.items() if i not in done]
    estimate = sum(adapter.price(r).amount or 0.0 for r in todo)
    if estimate > max_cost + 1e-9:
        unit = adapter.capabilities.cost_unit
        raise BudgetExceeded(
            f"max_cost={max_cost:g} {unit}: the {len(todo)} row(s) not yet archived are "
            f"estimated at {estimate:g} {unit}; a distributed batch is refused as a whole "
            "(chunk runs cannot share one running budget). Raise max_cost, or send fewer rows"
        )


# -- the archive: which rows are done, and their images ------------------------------------------


async def _archived_rows(store: Archive, keys: dict[int, str]) -> dict[int, list[ArchivedImage]]:
    """Rows whose images are all in the archive now."""
    gate = asyncio.Semaphore(ARCHIVE_READS)

    async def one(key: str) -> list[ArchivedImage] | None:
        async with gate:
            return await archived_result(store, key)

    found = await asyncio.gather(*(one(k) for k in keys.values()))
    return {i: images for i, images in zip(keys, found, strict=True) if images}


async def _gather(
    client: PrefectClient,
    store: Archive,
    rows: list[Row],
    keys: dict[int, str],
    done: dict[int, list[ArchivedImage]],
    chunks: list[_Chunk],
    failures: list[BatchFailure],
) -> tuple[list[ArchivedImage], list[BatchFailure]]:
    """Every row's images from the archive, in input order: those archived before this run
    are `from_archive` (0 this run), those a chunk run paid for are this run's. A row with no
    images is a failure: its request's failed task run says why, else its chunk run's state."""
    fresh = await _archived_rows(store, {i: k for i, k in keys.items() if i not in done})
    by_row: dict[int, list[ArchivedImage]] = {
        i: [img.model_copy(update={"from_archive": True}) for img in images]
        for i, images in done.items()
    }
    by_row.update(fresh)
    chunk_of = {i: c for c in chunks for i in c.rows}
    missing = sorted(i for i in keys if i not in by_row)
    errors = await _task_errors(client, {i: chunk_of[i] for i in missing}, keys)
    records = await asyncio.gather(
        *(asyncio.to_thread(store.read_json, job_rel(keys[i])) for i in missing)
    )
    for i, record in zip(missing, records, strict=True):
        error = errors.get(i)
        failures.append(_missing_row(i, rows[i], chunk_of[i], error, record))
    failures.sort(key=lambda f: f.index)
    images = [img for i in sorted(by_row) for img in on_row(by_row[i], i, row_metadata(rows[i]))]
    return images, failures


def _task_run_name(key: str) -> str:
    """batch_generate runs each request as one task run named after its key (tasks.py)."""
    return f"job-{key[:12]}"


async def _task_errors(
    client: PrefectClient, chunk_of: dict[int, _Chunk], keys: dict[int, str]
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
                    task_run_filter=failed, limit=200, offset=offset,
                )  # fmt: skip
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
            "waited %.0f s for the server to record why %d row(s) failed%s", waited,
            len(out), f"; {len(names)} row(s) left without a reason" if names else "",
        )  # fmt: skip
    return out


def _missing_row(
    index: int,
    row: Row,
    chunk: _Chunk,
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
        index=index, prompt=row_prompt(row)[:200], error=text, error_type=kind,
        job_id=job.get("job_id"), extra=row_metadata(row),
    )  # fmt: skip


# -- starting and watching the chunk runs --------------------------------------------------------


@dataclass
class _Watcher:
    """Starts (or adopts) each chunk's run, restarts crashed ones, waits for all of them."""

    deployment: str
    digest: str
    chunks: list[_Chunk]
    chunk_retries: int
    heartbeat_seconds: int
    lost_after: float
    set_beats: bool = True  # the pool takes `env`: chunk runs beat every heartbeat_seconds
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

    def key(self, chunk: _Chunk) -> str:
        return f"gptimg-distributed:{self.digest}:chunk-{chunk.index}:attempt-{chunk.attempt}"

    async def run(self, client: PrefectClient) -> None:
        logger = get_run_logger()
        active = [c for c in self.chunks if c.todo]
        self._progress = await acreate_progress_artifact(
            progress=self._percent(), description="distributed batch: chunks done"
        )
        gate = asyncio.Semaphore(STARTS_AT_ONCE)

        async def adopt(chunk: _Chunk) -> None:
            async with gate:
                await self._adopt_or_start(client, chunk)

        await asyncio.gather(*(adopt(c) for c in active))
        delay, last_percent = POLL_MIN, self._percent()
        while not all(c.settled for c in self.chunks):
            await asyncio.sleep(delay)
            changed = await self._refresh(client, active)
            changed |= await self._crash_lost(client, active)
            for chunk in active:
                if chunk.state is not StateType.CRASHED or chunk.gave_up:
                    continue
                if chunk.restarts < self.chunk_retries:
                    await self._restart(client, chunk)
                else:
                    chunk.gave_up = True
                    logger.error("chunk %d: run crashed again after %d restart(s); not "
                                 "restarted again", chunk.index, chunk.restarts)  # fmt: skip
                changed = True
            if (percent := self._percent()) != last_percent:
                last_percent = percent
                await aupdate_progress_artifact(self._progress, percent)
            delay = POLL_MIN if changed else min(POLL_MAX, delay * 1.5)
        await aupdate_progress_artifact(self._progress, 100.0)

    def _percent(self) -> float:
        total = sum(len(c.rows) for c in self.chunks) or 1
        return round(100.0 * sum(len(c.rows) for c in self.chunks if c.settled) / total, 1)

    async def _start(self, client: PrefectClient, chunk: _Chunk) -> FlowRun:
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

    async def _adopt_or_start(self, client: PrefectClient, chunk: _Chunk) -> None:
        """The chunk's run under its key; an earlier run of the same batch that already ended
        (a re-run after a crash, or rows left failed) is followed by the next attempt, which
        answers archived rows from the archive and does the rest."""
        while True:
            run = await self._start(client, chunk)
            if not (run.state and run.state.type in _FINAL):
                return
            if run.state.type is StateType.CRASHED:
                chunk.crashed_runs.append(str(run.id))
            chunk.attempt += 1

    async def _restart(self, client: PrefectClient, chunk: _Chunk) -> None:
        assert chunk.run is not None
        get_run_logger().warning(
            "chunk %d: run %r crashed (%s); starting it again (restart %d of %d): archived "
            "rows are answered from the archive and recorded jobs resumed, so nothing is "
            "paid twice",
            chunk.index, chunk.run.name, chunk.run.state.message if chunk.run.state else "",
            chunk.restarts + 1, self.chunk_retries,
        )  # fmt: skip
        chunk.crashed_runs.append(str(chunk.run.id))
        chunk.restarts += 1
        chunk.attempt += 1
        await self._start(client, chunk)

    async def _refresh(self, client: PrefectClient, chunks: list[_Chunk]) -> bool:
        """One filter call (a page per 200 runs) for every chunk run still going."""
        going = {c.run.id: c for c in chunks if c.run is not None and c.state not in _FINAL}
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

    async def _crash_lost(self, client: PrefectClient, chunks: list[_Chunk]) -> bool:
        """Mark Crashed the running chunk runs that stopped beating: their worker or machine
        is gone (Prefect itself marks nothing; the zombie automation in its docs would).

        Only runs silent for longer than their threshold are looked up (one events query for
        all of them, the latest heartbeat of each), so a healthy batch costs about one query
        per run every few heartbeats.
        """
        now = datetime.now(UTC)

        def silence(chunk: _Chunk) -> float:
            assert chunk.run is not None and chunk.run.state is not None
            since = chunk.run.state.timestamp
            if chunk.last_beat is not None and chunk.last_beat > since:
                since = chunk.last_beat
            return (now - since).total_seconds()

        suspects = {
            f"prefect.flow-run.{c.run.id}": c
            for c in chunks
            if c.run is not None and c.run.state is not None
            and c.run.state.type is StateType.RUNNING and silence(c) > self.lost_after_for(c.run)
        }  # fmt: skip
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
                get_run_logger().warning("chunk %d: run %r: %s", chunk.index, chunk.run.name,
                                         message)  # fmt: skip
                chunk.run = await client.read_flow_run(chunk.run.id)
                crashed = True
        return crashed


# -- the report ---------------------------------------------------------------------------------


async def _publish_report(
    result: BatchResult, chunks: list[_Chunk], total_rows: int, digest: str
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
        "| chunk | rows | run | state | restarts | crashed runs | images | failed rows |",
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
            f"{', '.join(r[:8] for r in c.crashed_runs) or '-'} | "
            f"{sum(images_by_row.get(i, 0) for i in c.rows)} | "
            f"{sum(1 for i in c.rows if i in failed)} |"
        )
    if result.failures:
        lines += ["", failure_table(result.failures, limit=REPORT_FAILURES)]
    await acreate_markdown_artifact(
        markdown="\n".join(lines), key=REPORT_KEY, description="distributed batch report"
    )
