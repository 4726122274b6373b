"""A batch sent through OpenAI's Batch API (half price, done within 24 h), with resume.
Generations and edits alike (an edit's inputs are uploaded as files its line names; a batch
holds one kind).

Never pay twice:
- each row keeps its request key (the `custom_id` of its line, the same key a synchronous
  run uses, so either way finds the other's images in the archive);
- a batch record `_batches/<id>.json` is written before the create call ("creating") and
  after it ("created", with OpenAI's batch id), and each row's job record names its batch;
- a retry, crash or re-run polls the recorded batch; a record left at "creating" (the answer
  was lost) is looked up by our metadata in `GET /batches` before anything is sent again;
- rows already archived are not sent.
A run may end before the batch does (`batch_wait_seconds`): its rows are reported as
`BatchPending`, and a later run collects them.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from gptimg_flows import errors as _errors
from gptimg_flows.archive.layout import batch_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.seller import Seller
from gptimg_flows.engine.job_record import Recorded, State, mark_batched
from gptimg_flows.engine.records import (
    archived_result,
    archived_under,
    request_key,
    route_key,
    write_images,
)
from gptimg_flows.engine.refresh import point_to_newest, remade_key, with_newest
from gptimg_flows.engine.spending import Hold, hold_spend
from gptimg_flows.engine.steps import load_edit_inputs, make_images_for, settled, uncertain_text
from gptimg_flows.errors import (
    BudgetExceeded,
    InvalidRequest,
    ProviderError,
    nothing_created,
)
from gptimg_flows.media.download import save_inline
from gptimg_flows.media.sniff import magic_mime
from gptimg_flows.models import (
    ArchivedImage,
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobState,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.providers.openai_batch import (
    METADATA_KEY,
    BatchStatus,
    LineResult,
    OpenAIBatchAPI,
    endpoint_of,
    request_line,
    split_lines,
)
from gptimg_flows.providers.openai_batch import (
    check_batch_edit as check_batch_edit,
)
from gptimg_flows.results import BatchFailure
from gptimg_flows.rows import Row, row_metadata, row_prompt
from gptimg_flows.spend.prices import BATCH_DISCOUNT, Budget, must_fit

#: How long a row paid synchronously before, met by a Batch API run, is polled for.
RESUME_TIMEOUT_SECONDS = 900.0


@dataclass
class BatchItem:
    """One row going through the Batch API."""

    row: int
    request: ImageRequest
    key: str
    extra: dict[str, Any]
    #: an edit's loaded inputs and mask (uploaded as files when its batch is sent), and the
    #: archive URIs of its inputs (the images' lineage)
    inputs: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    parents: list[str] = field(default_factory=list)
    #: a batch row's position goes in its sidecars; a single run's requests have none
    sidecar_row: bool = True
    #: the key the same request has when sent through a route (it may be recorded there)
    routed_key: str = ""
    #: its key without a refresh (where a plain re-run looks for its newest images)
    base_key: str = ""


def record_id(keys: Sequence[str]) -> str:
    """A batch record's id: the hash of its rows' keys (the same rows, the same record)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]


def batch_api_of(adapter: object) -> OpenAIBatchAPI:
    if not isinstance(adapter, OpenAIProvider):
        name = getattr(adapter, "display_name", "this provider")
        raise InvalidRequest(
            f"batch_api: {name} has no batch API; use an OpenAI credentials block, or "
            "batch_api=False",
            field="batch_api",
        )
    return OpenAIBatchAPI(adapter)


@task(name="submit-openai-batch", task_run_name="openai-batch-{record:.12}", cache_policy=NO_CACHE)
async def submit_openai_batch(
    api: OpenAIBatchAPI, items: list[BatchItem], record: str, archive: Archive
) -> str:
    """Upload the rows' JSONL and create the batch once; returns OpenAI's batch id.

    Not retried by Prefect: a lost create answer is looked up on the next run instead.
    """
    logger = get_run_logger()
    found = await asyncio.to_thread(archive.read_json, batch_rel(record))
    if found and found.get("batch_id"):
        return str(found["batch_id"])
    if found and found.get("state") == "creating":
        existing = await api.find(record, since=_started_at(found))
        if existing is not None:
            await _write_created(archive, record, found, existing)
            logger.info("found batch %s created earlier for these rows", existing.id)
            return existing.id
    state = {
        "state": "creating",
        "record": record,
        "keys": [i.key for i in items],
        "started_at": datetime.now(UTC).isoformat(),
    }
    held = [
        (item, found)
        for item in items
        if (found := await asyncio.to_thread(mark_batched, archive, item.key, record)) is not None
    ]
    if held:  # another run began paying for these rows since they were grouped: send nothing
        item, found = held[0]
        raise ProviderError(
            f"{len(held)} row(s) of this batch (row {item.row} first) were taken by another run "
            f"while the batch was made (their job record says {found.state.value}): nothing "
            "was sent; re-run to collect them",
            provider="openai",
        )
    await asyncio.to_thread(archive.write_json, batch_rel(record), state)
    refs = await _uploaded_inputs(api, items)
    with tempfile.TemporaryDirectory(prefix="gptimg-batch-") as tmp:
        path = Path(tmp) / f"{record}.jsonl"
        with path.open("wb") as fh:  # streamed to disk, then streamed up: flat memory
            for item in items:
                images, mask = refs.get(item.key, ([], None))
                fh.write(request_line(api.provider, item.key, item.request, images, mask))
        file_id = await api.upload(path)
    state["file_id"] = file_id
    await asyncio.to_thread(archive.write_json, batch_rel(record), state)
    try:
        created = await api.create(file_id, {METADATA_KEY: record}, endpoint_of(items[0].request))
    except ProviderError as exc:
        if nothing_created(exc):  # refused or never sent: no batch, nothing held for it
            await asyncio.to_thread(archive.delete, batch_rel(record))
        raise  # otherwise "creating" stays: the next run looks the batch up before creating one
    await _write_created(archive, record, state, created)
    logger.info("created OpenAI batch %s with %d line(s)", created.id, len(items))
    return created.id


def _started_at(record: dict[str, Any]) -> datetime | None:
    """When a batch record was written: its batch cannot be older, so the lookup of a lost
    create stops there (None, unreadable: the whole list is read)."""
    try:
        return datetime.fromisoformat(str(record["started_at"]))
    except (KeyError, ValueError):
        return None


async def _uploaded_inputs(
    api: OpenAIBatchAPI, items: list[BatchItem]
) -> dict[str, tuple[list[str], str | None]]:
    """Each edit's inputs and mask checked as a synchronous edit checks them, then uploaded
    once each (by digest) as files its line names: {key: (image file ids, mask file id)}."""
    uploaded: dict[str, str] = {}

    async def file_of(image: InputImage, name: str) -> str:
        if image.sha256 not in uploaded:
            uploaded[image.sha256] = await api.upload_image(image.data, image.mime, name)
        return uploaded[image.sha256]

    out: dict[str, tuple[list[str], str | None]] = {}
    for item in items:
        if not item.inputs:
            continue
        assert isinstance(item.request, EditRequest)
        prepared = await api.provider.upload_inputs(item.request, item.inputs, item.mask)
        images = [await file_of(img, f"image-{img.sha256[:12]}") for img in prepared.images]
        mask = await file_of(prepared.mask, "mask.png") if prepared.mask is not None else None
        out[item.key] = (images, mask)
    return out


async def _write_created(
    archive: Archive, record: str, state: dict[str, Any], batch: BatchStatus
) -> None:
    done = {**state, "state": "created", "batch_id": batch.id}
    await asyncio.to_thread(archive.write_json, batch_rel(record), done)


@task(
    name="collect-openai-batch",
    task_run_name="collect-{batch_id}",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
)
async def collect_openai_batch(
    api: OpenAIBatchAPI,
    batch_id: str,
    items: list[BatchItem],
    archive: Archive,
    wait_seconds: float,
    first_poll_seconds: float = 2.0,
    max_poll_seconds: float = 300.0,
) -> tuple[list[ArchivedImage], dict[str, str]]:
    """Wait for the batch (polls spaced out as its hours deserve), then archive each line.

    Returns the archived images and, per key, why a row has none.
    """
    logger = get_run_logger()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    gap = first_poll_seconds
    status = await api.get(batch_id)
    while not status.terminal:
        left = deadline - loop.time()
        if left <= 0:
            why = f"batch {batch_id} is still {status.status}; re-run to collect it"
            return [], {i.key: "BatchPending: " + why for i in items}
        await asyncio.sleep(min(gap, left))
        gap = min(max_poll_seconds, gap * 1.5)
        status = await api.get(batch_id)
    by_key = {i.key: i for i in items}
    images: list[ArchivedImage] = []
    errors: dict[str, str] = {}
    seen: set[str] = set()
    if status.output_file_id:
        async for line in api.results(status.output_file_id):
            item = by_key.get(line.custom_id)
            if item is None or line.custom_id in seen:
                continue
            seen.add(line.custom_id)
            if line.error:
                errors[item.key] = f"JobFailed: {line.error}"
                continue
            images += await _archive_line(api, batch_id, item, line, archive)
    if status.error_file_id:
        async for line in api.results(status.error_file_id):
            if line.custom_id in by_key and line.custom_id not in seen:
                seen.add(line.custom_id)
                errors[line.custom_id] = f"JobFailed: {line.error}"
    for key in by_key.keys() - seen:
        errors[key] = f"JobFailed: batch {batch_id} ended {status.status} without this row"
    logger.info(
        "batch %s %s: %d image(s) archived, %d row(s) without",
        batch_id,
        status.status,
        len(images),
        len(errors),
    )
    return images, errors


async def _archive_line(
    api: OpenAIBatchAPI, batch_id: str, item: BatchItem, line: LineResult, archive: Archive
) -> list[ArchivedImage]:
    refs = [OutputRef(index=i, data=d, mime=magic_mime(d[:16])) for i, d in enumerate(line.images)]
    spooled = [await save_inline(r) for r in refs]
    job = Job(
        provider="openai",
        model=api.provider.model,
        job_id=batch_id,
        key=item.key,
        n=len(refs),
        handle={"batch": batch_id},
    )
    status = JobStatus(job_id=batch_id, state=JobState.SUCCEEDED, cost=line.cost, cost_unit="usd")
    archived, no_preview = await write_images(
        spooled,
        archive,
        item.key,
        job,
        status,
        item.request.prompt,
        item.parents,
        item.extra,
        item.row if item.sidecar_row else None,
    )
    for sha, why in no_preview:
        get_run_logger().warning("no preview for %s: %s", sha[:12], why)
    return archived


@dataclass
class Sorted:
    """A run's rows by what their records say (engine/job_record): in a recorded batch, a
    synchronous job to resume, uncertain, or free to send."""

    batches: dict[str, list[BatchItem]] = field(default_factory=dict)
    resume: list[BatchItem] = field(default_factory=list)
    uncertain: list[tuple[BatchItem, Recorded]] = field(default_factory=list)
    new: list[BatchItem] = field(default_factory=list)
    #: rows a route sent to another seller (or whose routed submit is in doubt)
    elsewhere: list[tuple[BatchItem, Recorded]] = field(default_factory=list)


async def sorted_by_record(
    archive: Archive, items: list[BatchItem], *, remake_uncertain: bool = False
) -> Sorted:
    """Each row's record, read once (a live synchronous claim waited for until it settles):
    a record of a paid or possibly paid submit is never sent in a batch again (unless the
    row is re-made under a key of its own: `remake_uncertain`)."""
    out = Sorted()
    for item in items:
        found = await settled(archive, item.key)
        while remake_uncertain and found.state is State.UNCERTAIN:
            item.key = remade_key(found)
            found = await settled(archive, item.key)
        if found.state is State.ARCHIVED:  # a re-make collected before: nothing to send
            out.resume.append(item)
            continue
        if found.state is State.NONE and item.routed_key:
            routed = await settled(archive, item.routed_key)  # sent through a route before
            if routed.state is State.SUBMITTED and routed.made_by == "openai":
                item.key = routed.key  # resumed under the key it was paid under
                found = routed
            elif routed.state is not State.NONE:
                out.elsewhere.append((item, routed))
                continue
        if found.state is State.BATCHED and found.record is not None:
            out.batches.setdefault(str(found.record["batch"]), []).append(item)
        elif found.state is State.SUBMITTED:
            out.resume.append(item)
        elif found.state is State.UNCERTAIN:
            out.uncertain.append((item, found))
        else:
            out.new.append(item)
    return out


def new_batches(api: OpenAIBatchAPI, items: list[BatchItem]) -> dict[str, list[BatchItem]]:
    """Rows not yet in any batch, split at OpenAI's limits (and by endpoint: generations and
    edits go in batches of their own), each chunk under its record id."""
    by_key = {i.key: i for i in items}
    out: dict[str, list[BatchItem]] = {}
    for endpoint in sorted({endpoint_of(i.request) for i in items}):
        lines = ((i.key, _sized_line(api, i)) for i in items if endpoint_of(i.request) == endpoint)
        for chunk in split_lines(lines):
            keys = [k for k, _ in chunk]
            out[record_id(keys)] = [by_key[k] for k in keys]
    return out


def _sized_line(api: OpenAIBatchAPI, item: BatchItem) -> bytes:
    """The line as it will be sent (file ids are as long as these stand-ins)."""
    images = [f"file-{img.sha256[:24]}" for img in item.inputs]
    mask = f"file-{item.mask.sha256[:24]}" if item.mask is not None else None
    return request_line(api.provider, item.key, item.request, images, mask)


async def run_through_batch_api(
    spec: Seller,
    archive: Archive,
    items: list[BatchItem],
    *,
    wait_seconds: float,
    first_poll_seconds: float,
    budget: Budget | None = None,
    remake_uncertain: bool = False,
) -> tuple[list[ArchivedImage], dict[int, tuple[str, str]]]:
    """Every row through the Batch API: archived rows answered from the archive, rows in a
    recorded batch collected from it, the rest sent as new batches. Returns the images (with
    their rows) and, per row, (error type, message) for rows without images. A row whose
    record says it was paid synchronously is resumed there; one whose submit is uncertain is
    reported, never sent again. Each new line holds its half-price estimate (engine/spending:
    the run's budget and the block's spend limit) before its batch is created; a line that
    does not fit is refused, not sent."""
    adapter = spec.adapter
    api = batch_api_of(adapter)
    images: list[ArchivedImage] = []
    pending: list[BatchItem] = []
    for item in items:
        keys = [item.key, item.routed_key or item.key]
        if item.key == item.base_key:  # not a refresh: its newest images first
            keys = await with_newest(archive, keys)
        found = await archived_under(archive, keys)
        if found:
            images += [
                i.model_copy(
                    update={
                        "from_archive": True,
                        "row": item.row,
                        "extra": {**i.extra, **item.extra},
                    }
                )
                for i in found
            ]
        else:
            pending.append(item)
    rows = await sorted_by_record(archive, pending, remake_uncertain=remake_uncertain)
    errors: dict[int, tuple[str, str]] = {}
    holds: dict[str, Hold] = {}
    for item in rows.new:
        price = adapter.price(item.request)
        half = None if price.amount is None else round(price.amount * BATCH_DISCOUNT, 9)
        try:
            holds[item.key] = await hold_spend(
                spec.spec, price.model_copy(update={"amount": half}), budget
            )
        except BudgetExceeded as exc:
            errors[item.row] = ("BudgetExceeded", f"not sent in the batch: {exc.message}")
    groups = dict(rows.batches)
    groups.update(new_batches(api, [i for i in rows.new if i.key in holds]))
    for item, doubt in rows.uncertain:
        errors[item.row] = ("SubmitUncertain", uncertain_text(doubt))
    for item, routed in rows.elsewhere:
        errors[item.row] = (
            "RoutedElsewhere",
            f"this request was sent through a route ({routed.member or 'a member'}; its record "
            f"says {routed.state.value}): it stays there; run it through that route to collect "
            "it (nothing is sent in a batch)",
        )

    async def resume(item: BatchItem) -> None:
        """A row paid synchronously before (its job on record): polled and downloaded as a
        synchronous run would, never sent in a batch."""
        try:
            made = await archived_result(archive, item.key) or await make_images_for(spec)(
                spec,
                item.request,
                None,
                item.key,
                archive,
                item.parents,
                item.extra,
                RESUME_TIMEOUT_SECONDS,
                item.row if item.sidecar_row else None,
            )
        except Exception as exc:
            errors[item.row] = (type(exc).__name__, str(exc))
            return
        images.extend(m.model_copy(update={"row": item.row}) for m in made)
        await point_to_newest(archive, item.base_key or item.key, item.key)

    async def one(record: str, members: list[BatchItem]) -> None:
        rows = {i.key: i.row for i in members}
        try:
            batch_id = await submit_openai_batch(api, members, record, archive)
            got, why = await collect_openai_batch(
                api, batch_id, members, archive, wait_seconds, first_poll_seconds
            )
        except BaseException as exc:  # the whole batch's rows fail alike; records keep the rest
            created = await asyncio.to_thread(archive.read_json, batch_rel(record))
            for item in members:  # no batch on record: nothing was created, all given back
                if (hold := holds.get(item.key)) is not None:
                    await (hold.release() if created is None else _kept(hold))
            if not isinstance(exc, Exception):
                raise
            for row in rows.values():
                errors[row] = _failed_batch(exc, record, created)
            return
        images.extend(got)
        for key, text in why.items():
            kind, _, message = text.partition(": ")
            errors[rows[key]] = (kind, message)
        for item in members:
            if any(i.request_key == item.key for i in got):
                await point_to_newest(archive, item.base_key or item.key, item.key)
            if (hold := holds.get(item.key)) is None:
                continue
            mine = [i.cost for i in got if i.request_key == item.key and i.cost is not None]
            if mine:
                await hold.settle(sum(mine))
            elif why.get(item.key, "").startswith("JobFailed"):
                await hold.release()  # a failed line is not billed
            else:
                hold.keep()  # still running (BatchPending): billed when it ends

    await asyncio.gather(
        *(one(record, members) for record, members in groups.items()),
        *(resume(item) for item in rows.resume),
    )
    images.sort(key=lambda i: i.row if i.row is not None else -1)
    return images, errors


async def batch_api_rows(
    spec: Seller,
    store: Archive,
    rows: list[Row],
    requests: list[ImageRequest | None],
    slots: list[str],
    refresh_stamp: str | None,
    refreshed: set[int],
    budget: Budget | None,
    wait_seconds: float,
    poll_seconds: float,
    by_row: dict[int, list[ArchivedImage]],
    failures: list[BatchFailure],
    remake_uncertain: bool = False,
) -> None:
    """The rows through OpenAI's Batch API (same keys as a synchronous run would use); the
    rows `refreshed` under the refresh's stamp."""
    adapter = spec.adapter

    def slot(i: int) -> str:
        return slots[i] + (refresh_stamp or "") if i in refreshed else slots[i]

    items = [
        BatchItem(
            row=i,
            request=r,
            key=request_key(adapter, r, [], slot(i)),
            extra=row_metadata(rows[i]),
            routed_key=route_key(r, [], slot(i)),
            base_key=request_key(adapter, r, [], slots[i]),
        )
        for i, r in enumerate(requests)
        if r is not None
    ]
    if budget is not None and budget.max_cost is not None:
        half = sum((adapter.price(i.request).amount or 0.0) for i in items) * BATCH_DISCOUNT
        must_fit(
            budget.max_cost,
            budget.unit,
            half,
            "the batch is",
            " (half the token-table price) if nothing is archived",
        )
    images, errors = await run_through_batch_api(
        spec,
        store,
        items,
        wait_seconds=wait_seconds,
        first_poll_seconds=poll_seconds,
        budget=budget,
        remake_uncertain=remake_uncertain,
    )
    for img in images:
        if img.row is not None:
            by_row.setdefault(img.row, []).append(img)
    for row, (kind, message) in errors.items():
        failures.append(
            BatchFailure(
                index=row,
                prompt=row_prompt(rows[row])[:200],
                error=message,
                error_type=kind,
                extra=row_metadata(rows[row]),
            )
        )


async def batch_produce(
    spec: Seller,
    store: Archive,
    requests: list[tuple[ImageRequest, str, dict[str, Any]]],
    *,
    refresh_stamp: str | None,
    budget: Budget | None,
    wait_seconds: float,
    poll_seconds: float,
    remake_uncertain: bool = False,
) -> list[ArchivedImage]:
    """A run's own requests ((request, slot, extra): one edit, a pipeline's candidates or its
    edits) through the Batch API as one batch, under the keys a synchronous run uses (either
    finds the other's images). Inputs are read and checked first; each request reserves half
    its price in `budget` before anything is sent. The first request without images raises
    its error (BatchPending while the batch runs on)."""
    adapter = spec.adapter
    stamp = refresh_stamp or ""
    items: list[BatchItem] = []
    for index, (request, slot, extra) in enumerate(requests):
        adapter.validate(request)
        check_batch_edit(request)
        digests: list[str] = []
        inputs: list[InputImage] = []
        mask: InputImage | None = None
        parents: list[str] = []
        if isinstance(request, EditRequest):
            inputs, mask = await load_edit_inputs(request, store)
            digests = [i.sha256 for i in inputs] + (["mask:" + mask.sha256] if mask else [])
            parents = [store.uri(Archive.image_rel(i.sha256, i.mime)) for i in inputs]
            await asyncio.gather(*(asyncio.to_thread(_keep_input, store, i) for i in inputs))
        key = request_key(adapter, request, digests, slot + stamp)
        items.append(
            BatchItem(
                index,
                request,
                key,
                dict(extra),
                inputs,
                mask,
                parents,
                sidecar_row=False,
                routed_key=route_key(request, digests, slot + stamp),
                base_key=request_key(adapter, request, digests, slot),
            )
        )
    images, errors = await run_through_batch_api(
        spec,
        store,
        items,
        wait_seconds=wait_seconds,
        first_poll_seconds=poll_seconds,
        budget=budget,
        remake_uncertain=remake_uncertain,
    )
    if errors:
        row = min(errors)
        kind, message = errors[row]
        error = getattr(_errors, kind, None)
        if not (isinstance(error, type) and issubclass(error, ProviderError)):
            error = ProviderError
        raise error(message, provider="openai")
    order = {item.key: item.row for item in items}
    images.sort(key=lambda img: order.get(img.request_key or "", 0))
    return [img.model_copy(update={"row": None}) for img in images]


def _failed_batch(exc: Exception, record: str, created: Any) -> tuple[str, str]:
    """Why a batch's rows have no images: its own error while nothing is on record; once a
    batch record is (its create answered, or its answer lost), BatchPending: a later run looks
    the batch up or collects it, never sending the rows again."""
    if not isinstance(created, dict):
        return type(exc).__name__, str(exc)
    how = "created" if created.get("batch_id") else "may have been created (its answer was lost)"
    return (
        "BatchPending",
        f"batch {created.get('batch_id') or record} {how}; this run stopped on "
        f"{type(exc).__name__}: {exc}; re-run to collect it (nothing is sent again)",
    )


async def _kept(hold: Hold) -> None:
    hold.keep()


def _keep_input(store: Archive, image: InputImage) -> None:
    """An edit's input in the archive (content-addressed): what its images' lineage names."""
    store.put_bytes(image.data, Archive.image_rel(image.sha256, image.mime), overwrite=False)
