"""The flows users run: generate_images, edit_image, generate_edit_archive, batch_generate.

Each is a composition a user could have written from the tasks; all are async so one process
can keep hundreds of provider jobs in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

from .archive import Archive
from .artifacts import publish_images
from .batch_api import BatchItem, run_through_batch_api
from .costs import BATCH_DISCOUNT, Budget
from .errors import BudgetExceeded, InvalidRequest, ProviderError
from .models import (
    ArchivedImage,
    Background,
    EditRequest,
    ExtraValue,
    ImageRequest,
    InputFidelity,
    InputImage,
    Moderation,
    OutputFormat,
    Quality,
    Resolution,
    build_request,
    canonical_json,
)
from .pacing import run_traffic, traffic_text
from .providers.base import Provider
from .resolve import ArchiveParam, ProviderParam, resolve_archive, resolve_provider
from .results import (
    BatchFailure,
    BatchResult,
    PipelineResult,
    ReviewRound,
    cost_summary,
    cost_text,
    spent_cost,
    total_cost,
)
from .review import (
    DEFAULT_TIMEOUT_SECONDS,
    OnTimeout,
    ReviewDecision,
    ReviewLog,
    check_review_options,
    review_images,
)
from .rows import (
    PromptsParam,
    Row,
    check_columns,
    read_prompts,
    row_metadata,
    row_prompt,
    row_request,
)
from .spending import take_spend
from .tasks import (
    ProviderSpec,
    archived_result,
    job_recorded,
    load_edit_inputs,
    make_images_for,
    provider_of,
    request_key,
    upload_inputs,
)

# -- one request, end to end --------------------------------------------------------------------


async def produce(
    spec: ProviderSpec,
    request: ImageRequest,
    archive: Archive,
    *,
    slot: str = "0",
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    extra: dict[str, Any] | None = None,
    row: int | None = None,
    budget: Budget | None = None,
) -> list[ArchivedImage]:
    """Validate → (inputs) → archived already? → budget → submit → wait → download → archive.

    A request that must be paid for reserves its estimate in the run's `budget` and takes it
    from the block's shared spend limit first; either refusal is BudgetExceeded, before any
    upload or submit. A job already on record (a resumed run) takes nothing again.
    """
    logger = get_run_logger()
    adapter = provider_of(spec)
    adapter.validate(request)  # before anything is read, uploaded or paid
    digests: list[str] = []
    parents: list[str] = []
    loaded: list[InputImage] = []
    mask: InputImage | None = None
    if isinstance(request, EditRequest):
        loaded, mask = await load_edit_inputs(request, archive)
        digests = [img.sha256 for img in loaded] + (["mask:" + mask.sha256] if mask else [])
        parents = [archive.uri(Archive.image_rel(img.sha256, img.mime)) for img in loaded]
    if refresh:
        slot = f"{slot}{refresh_stamp()}"
    key = request_key(adapter, request, digests, slot)
    if not refresh and (found := await archived_result(archive, key)):
        logger.info(
            "%d image(s) for this request are already archived: no provider call", len(found)
        )
        return [img.model_copy(update={"from_archive": True}) for img in found]
    price = adapter.price(request)
    held = budget.reserve(price) if budget is not None else 0.0
    try:
        if not await job_recorded(archive, key):
            await take_spend(spec, price)
        inputs = (
            await upload_inputs(spec, request, loaded, mask, archive)
            if isinstance(request, EditRequest)
            else None
        )
        archived: list[ArchivedImage] = await make_images_for(spec)(
            spec, request, inputs, key, archive, parents, extra, timeout_seconds, row
        )
    except BaseException:
        if budget is not None:
            budget.settle(held, None)  # it may have been billed: keep the reservation
        raise
    if budget is not None:
        costs = [i.cost for i in archived if i.cost is not None]
        budget.settle(held, sum(costs) if costs else None)
    return archived


__all__ = ["BatchFailure", "BatchResult", "PipelineResult", "cost_summary", "review_images"]


def refresh_stamp() -> str:
    """What makes `refresh=True` pay for new images: new for each flow run, the same when a
    suspended run starts again from the top or the run is retried (nothing paid twice)."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return f":refresh:{context.flow_run.id}"
    return f":refresh:{time.time_ns()}"


# -- flows --------------------------------------------------------------------------------------


@flow(name="generate-images", log_prints=True)
async def generate_images(
    prompt: str,
    provider: ProviderParam = "offline",
    archive: ArchiveParam = None,
    n: int = 1,
    size: str | None = None,
    resolution: Resolution | None = None,
    quality: Quality | None = None,
    background: Background | None = None,
    output_format: OutputFormat | None = None,
    output_compression: int | None = None,
    moderation: Moderation | None = None,
    seed: int | None = None,
    extras: dict[str, ExtraValue] | None = None,
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
) -> list[ArchivedImage]:
    """Generate `n` images from a prompt and archive them.

    `max_cost` (in the provider's cost unit) refuses the run before any provider call when
    its estimate is over it (BudgetExceeded).

    `review=True`: once archived, the run pauses (suspends, under a worker) until a person
    approves candidates in the Resume form, or asks for a new round from a new prompt. Every
    candidate of every round is returned with its `review`."""
    request = build_request(
        ImageRequest, prompt=prompt, n=n, size=size, resolution=resolution, quality=quality,
        background=background, output_format=output_format,
        output_compression=output_compression, moderation=moderation, seed=seed,
        extras=extras or {},
    )  # fmt: skip
    check_timeout(timeout_seconds)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    budget = run_budget(provider_of(spec), max_cost, [request])
    images = await produce(spec, request, store, refresh=refresh,
                           timeout_seconds=timeout_seconds, budget=budget)  # fmt: skip
    if review:
        rounds = Rounds(store, "generate-images-review", review_timeout_seconds,
                        on_review_timeout, max_review_rounds)  # fmt: skip

        async def again(prompt: str, number: int) -> list[ArchivedImage]:
            req = request.model_copy(update={"prompt": prompt})
            provider_of(spec).validate(req)
            return await produce(spec, req, store, slot=f"round-{number}", refresh=refresh,
                                 timeout_seconds=timeout_seconds, budget=budget)  # fmt: skip

        images = await rounds.run(images, request.prompt, again)
    await publish_images(images, store, f"Generated: {request.prompt[:60]}", "generate-images")
    return images


@flow(name="edit-image", log_prints=True)
async def edit_image(
    image: str | list[str],
    prompt: str,
    provider: ProviderParam = "offline",
    mask: str | None = None,
    archive: ArchiveParam = None,
    n: int = 1,
    size: str | None = None,
    quality: Quality | None = None,
    background: Background | None = None,
    output_format: OutputFormat | None = None,
    input_fidelity: InputFidelity | None = None,
    extras: dict[str, ExtraValue] | None = None,
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
) -> list[ArchivedImage]:
    """Edit an image (local path, fsspec URL or http URL), optionally only where a mask says."""
    request = build_request(
        EditRequest, images=[image] if isinstance(image, str) else image, mask=mask,
        prompt=prompt, n=n,
        size=size, quality=quality, background=background, output_format=output_format,
        input_fidelity=input_fidelity, extras=extras or {},
    )  # fmt: skip
    check_timeout(timeout_seconds)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    budget = run_budget(provider_of(spec), max_cost, [request])
    images = await produce(spec, request, store, refresh=refresh,
                           timeout_seconds=timeout_seconds, budget=budget)  # fmt: skip
    await publish_images(images, store, f"Edited: {request.prompt[:60]}", "edit-image")
    return images


class Rounds:
    """Review rounds: show the candidates, and make a new round while a person asks for one.

    Each round's candidates are paid under their own slot (`round-2`, …), so a suspended run
    starting again from the top gets every earlier round back from the archive."""

    def __init__(
        self, archive: Archive, key: str, timeout_seconds: float, on_timeout: OnTimeout,
        max_rounds: int,
    ) -> None:  # fmt: skip
        self.archive, self.log = archive, ReviewLog(key)
        self.timeout_seconds, self.on_timeout, self.max_rounds = (
            timeout_seconds, on_timeout, max_rounds,
        )  # fmt: skip
        self.decisions: list[ReviewDecision] = []

    @property
    def approved(self) -> list[ArchivedImage]:
        return [i for d in self.decisions for i in d.approved]

    @property
    def records(self) -> list[ReviewRound]:
        return [d.round for d in self.decisions]

    async def run(
        self,
        candidates: list[ArchivedImage],
        prompt: str,
        again: Callable[[str, int], Awaitable[list[ArchivedImage]]],
        check_prompt: Callable[[str], object] | None = None,
    ) -> list[ArchivedImage]:
        """Every round's candidates, each with its review recorded."""
        shown: list[ArchivedImage] = []
        for number in range(1, self.max_rounds + 1):
            decision = await review_images(
                candidates, self.archive, prompt=prompt, round_no=number,
                max_rounds=self.max_rounds, timeout_seconds=self.timeout_seconds,
                on_timeout=self.on_timeout, check_prompt=check_prompt,
            )  # fmt: skip
            self.decisions.append(decision)
            shown += decision.candidates
            await self.log.add(decision, self.archive)
            if decision.new_prompt is None:
                break
            prompt = decision.new_prompt
            candidates = await again(prompt, number + 1)
        return shown


async def _generate_then_edit(
    prompt: str, edit_prompt: str, provider: ProviderParam, mask: str | None,
    archive: ArchiveParam, size: str | None, quality: Quality | None,
    output_format: OutputFormat | None, refresh: bool, timeout_seconds: float,
    max_cost: float | None, n: int, review: bool, review_timeout_seconds: float,
    on_review_timeout: OnTimeout, max_review_rounds: int, key: str,
) -> PipelineResult:  # fmt: skip
    """generate_edit_archive's steps, also run by daily_content in its own flow run (so a
    deployment's review suspends the deployment's run, not a subflow)."""
    first = build_request(
        ImageRequest, prompt=prompt, n=n, size=size, quality=quality, output_format=output_format
    )
    edit = build_request(
        EditRequest, images=["pending"], mask=mask, prompt=edit_prompt, quality=quality,
        output_format=output_format,
    )  # fmt: skip
    check_timeout(timeout_seconds)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    adapter = provider_of(spec)
    adapter.validate(first)
    adapter.validate(edit)  # both checked before the first credit is spent
    budget = run_budget(adapter, max_cost, [first, edit])
    if budget is not None and (refresh or not await archived_result(
        store, request_key(adapter, first, [], "0")
    )):  # fmt: skip
        whole = Budget(budget.max_cost, budget.unit)
        whole.reserve(adapter.price(first))
        for _ in range(n):  # every candidate may be approved and edited
            whole.reserve(adapter.price(edit))  # all must fit before the first is paid
    candidates = await produce(spec, first, store, refresh=refresh,
                               timeout_seconds=timeout_seconds, budget=budget)  # fmt: skip
    generated, to_edit = candidates, candidates
    reviews: list[ReviewRound] = []
    if review:
        rounds = Rounds(store, f"{key}-review", review_timeout_seconds, on_review_timeout,
                        max_review_rounds)  # fmt: skip

        async def again(new_prompt: str, number: int) -> list[ArchivedImage]:
            req = first.model_copy(update={"prompt": new_prompt})
            adapter.validate(req)
            return await produce(spec, req, store, slot=f"round-{number}", refresh=refresh,
                                 timeout_seconds=timeout_seconds, budget=budget)  # fmt: skip

        generated = await rounds.run(candidates, prompt, again)
        to_edit, reviews = rounds.approved, rounds.records
    edited: list[ArchivedImage] = []
    for source in to_edit:
        request = edit.model_copy(update={"images": [source.uri]})
        edited += await produce(
            spec, request, store, refresh=refresh, timeout_seconds=timeout_seconds,
            extra={"derived_from": source.uri}, budget=budget,
        )  # fmt: skip
    both = generated + edited
    result = PipelineResult(generated=generated, edited=edited, cost=spent_cost(both),
                            images_cost=total_cost(both), reviews=reviews)  # fmt: skip
    await publish_images(both, store, f"Pipeline: {prompt[:40]} → {edit_prompt[:40]}", key)
    return result


@flow(name="generate-edit-archive", log_prints=True)
async def generate_edit_archive(
    prompt: str,
    edit_prompt: str,
    provider: ProviderParam = "offline",
    mask: str | None = None,
    archive: ArchiveParam = None,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    n: int = 1,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
) -> PipelineResult:
    """Generate `n` candidates, edit each (with the mask, if given), and archive all with
    lineage.

    `review=True`: the run pauses once the candidates are archived, and only those a person
    approves are edited (none approved: nothing more is paid). With `max_cost`, generating and
    editing every candidate are estimated together and refused before the first provider call
    if they would pass it."""
    return await _generate_then_edit(
        prompt, edit_prompt, provider, mask, archive, size, quality, output_format, refresh,
        timeout_seconds, max_cost, n, review, review_timeout_seconds, on_review_timeout,
        max_review_rounds, key="generate-edit-archive",
    )  # fmt: skip


class _Progress:
    """A progress artifact for a batch, updated at most once a second (the API is shared)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done = max(1, total), done
        self.artifact_id: UUID | None = None
        self._last = 0.0

    async def start(self) -> None:
        self.artifact_id = await acreate_progress_artifact(
            progress=100.0 * self.done / self.total, description="batch progress"
        )

    async def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.artifact_id is not None and now - self._last >= 1.0:
            self._last = now
            await aupdate_progress_artifact(self.artifact_id, 100.0 * self.done / self.total)

    async def finish(self) -> None:
        if self.artifact_id is not None:
            await aupdate_progress_artifact(self.artifact_id, 100.0)


def row_failure(index: int, row: Row, prompt: str, exc: BaseException) -> BatchFailure:
    return BatchFailure(
        index=index, prompt=prompt[:200], error=str(exc), error_type=type(exc).__name__,
        job_id=getattr(exc, "job_id", None), extra=row_metadata(row),
    )  # fmt: skip


def on_row(images: list[ArchivedImage], index: int, extra: dict[str, Any]) -> list[ArchivedImage]:
    """This run's row and metadata on each image (an image answered from the archive carries
    those of the run that paid for it in its sidecar)."""
    return [i.model_copy(update={"row": index, "extra": {**i.extra, **extra}}) for i in images]


def check_timeout(timeout_seconds: float) -> None:
    if not timeout_seconds > 0:
        raise InvalidRequest(
            f"timeout_seconds={timeout_seconds:g}; it must be a positive number of seconds",
            field="timeout_seconds",
        )


def run_budget(
    adapter: Provider, max_cost: float | None, requests: list[ImageRequest]
) -> Budget | None:
    """The run's `max_cost` budget; a price nobody can estimate is refused up front, with how
    to set one."""
    if max_cost is None:
        return None
    if not max_cost >= 0:
        raise InvalidRequest(f"max_cost={max_cost:g}; it must be 0 or more", field="max_cost")
    for request in requests:
        price = adapter.price(request)
        if price.amount is None:
            raise BudgetExceeded(f"max_cost={max_cost:g} cannot be kept: {price.note}")
    return Budget(max_cost, adapter.capabilities.cost_unit)


@flow(name="batch-generate", log_prints=True)
async def batch_generate(
    prompts: PromptsParam,
    provider: ProviderParam = "offline",
    archive: ArchiveParam = None,
    concurrency: int = 8,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    prompt_template: str | None = None,
    refresh: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
) -> BatchResult:
    """One request per row, `concurrency` at a time; a failed row does not stop the rest.

    `prompts`: a list of prompts or of rows (dicts), or a JSONL / CSV / text file at any
    fsspec URL. A row's request fields (`prompt`, `n`, `size`, …) override the batch's; its
    other columns (`sku`, `campaign`, …) are carried on its images (`extra`, and the sidecar).
    `prompt_template` (e.g. `"product shot of {name}, {style} background"`) makes each row's
    prompt from its columns.

    `max_cost`: each paid row reserves its estimate before its submit; once the next would
    pass the budget, the batch submits no more and the rows left fail with BudgetExceeded.

    `batch_api=True` (an OpenAI block) sends the rows through OpenAI's Batch API at half
    price: done within 24 h, polled from `batch_poll_seconds` backing off to 5 minutes; a run
    that stops waiting after `batch_wait_seconds` reports its rows as BatchPending and a later
    run collects them (see batch_api.py for how nothing is paid twice).

    `review=True`: once every row is archived, the run pauses with the gallery numbered in row
    order (images of rows that failed are not shown). A `new_prompt` there is a prompt
    template for a new round of every row (`{prompt}` is the row's own prompt, other columns
    as in `prompt_template`).
    """
    logger = get_run_logger()
    check_timeout(timeout_seconds)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    rows = read_prompts(prompts)
    check_columns(rows, prompt_template)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    adapter = provider_of(spec)
    defaults = {"size": size, "quality": quality, "output_format": output_format}
    requests: list[ImageRequest | None] = []
    failures: list[BatchFailure] = []
    for i, row in enumerate(rows):
        try:
            req = row_request(row, defaults, prompt_template)
            adapter.validate(req)
            requests.append(req)
        except (ValueError, ProviderError) as exc:
            requests.append(None)
            failures.append(row_failure(i, row, row_prompt(row), exc))
    metadata = sorted(set().union(*(row_metadata(r).keys() for r in rows)) if rows else set())
    if metadata:
        logger.info("columns kept as each image's metadata (not sent): %s", ", ".join(metadata))
    budget = run_budget(adapter, max_cost, [r for r in requests if r is not None])
    gate = asyncio.Semaphore(max(1, concurrency))
    by_row: dict[int, list[ArchivedImage]] = {}
    progress = _Progress(total=len(rows), done=len(failures))
    await progress.start()

    async def one(i: int, req: ImageRequest, slot: str, into: dict[int, list[ArchivedImage]],
                  failed: list[BatchFailure]) -> None:  # fmt: skip
        extra = row_metadata(rows[i])
        async with gate:
            try:
                made = await produce(
                    spec, req, store, slot=slot, refresh=refresh,
                    timeout_seconds=timeout_seconds, row=i, extra=extra, budget=budget,
                )  # fmt: skip
                into[i] = on_row(made, i, extra)
            except Exception as exc:  # one item's failure is reported, not fatal
                failed.append(row_failure(i, rows[i], req.prompt, exc))
        await progress.advance()  # an API call: not while holding a slot

    # A request's slot is its occurrence number among identical requests, so re-running an
    # edited prompt file only pays for lines that are new, and a duplicate line is a new image.
    seen: dict[str, int] = {}
    slots: list[str] = []
    for r in requests:
        fp = canonical_json(r.fingerprint()) if r is not None else ""
        slots.append(str(seen.get(fp, 0)))
        seen[fp] = seen.get(fp, 0) + 1
    if batch_api:
        await _batch_api_rows(adapter, store, rows, requests, slots, refresh, budget,
                              batch_wait_seconds, batch_poll_seconds, by_row, failures)  # fmt: skip
    else:
        await asyncio.gather(*(one(i, r, slots[i], by_row, failures)
                               for i, r in enumerate(requests) if r is not None))  # fmt: skip
    failures.sort(key=lambda f: f.index)
    await progress.finish()
    images = [img for i in sorted(by_row) for img in by_row[i]]
    reviews: list[ReviewRound] = []
    if review:

        async def again(template: str, number: int) -> list[ArchivedImage]:
            """A new round of every row from the reviewer's template (its own slots)."""
            made: dict[int, list[ArchivedImage]] = {}
            todo: list[tuple[int, ImageRequest]] = []
            for i, row in enumerate(rows):
                try:
                    req = row_request(row, defaults, template)
                    adapter.validate(req)
                    todo.append((i, req))
                except (ValueError, ProviderError) as exc:
                    failures.append(row_failure(i, row, row_prompt(row), exc))
            await asyncio.gather(*(one(i, req, f"{slots[i]}:round-{number}", made, failures)
                                   for i, req in todo))  # fmt: skip
            return [img for i in sorted(made) for img in made[i]]

        rounds = Rounds(store, "batch-generate-review", review_timeout_seconds,
                        on_review_timeout, max_review_rounds)  # fmt: skip
        shown_prompt = prompt_template or f"each row's own prompt ({len(rows)} rows)"
        images = await rounds.run(images, shown_prompt, again,
                                  check_prompt=lambda t: check_columns(rows, t))  # fmt: skip
        reviews = rounds.records
        failures.sort(key=lambda f: f.index)
    traffic = run_traffic()
    result = BatchResult(images=images, failures=failures, cost=spent_cost(images),
                         images_cost=total_cost(images), reviews=reviews,
                         refused_submits=traffic.refused,
                         rate_limit_wait_seconds=round(traffic.waited_seconds, 3))  # fmt: skip
    logger.info("batch: %d image(s), %d failure(s), cost %s", len(images), len(failures),
                cost_text(result.cost))  # fmt: skip
    if line := traffic_text(traffic):
        logger.info("%s", line)
    await publish_images(images, store, f"Batch of {len(rows)} prompt(s)", "batch-generate",
                         failures=failures)  # fmt: skip
    return result


async def _batch_api_rows(
    adapter: Provider,
    store: Archive,
    rows: list[Row],
    requests: list[ImageRequest | None],
    slots: list[str],
    refresh: bool,
    budget: Budget | None,
    wait_seconds: float,
    poll_seconds: float,
    by_row: dict[int, list[ArchivedImage]],
    failures: list[BatchFailure],
) -> None:
    """The rows through OpenAI's Batch API (same keys as a synchronous run would use)."""
    stamp = refresh_stamp() if refresh else ""
    items = [
        BatchItem(row=i, request=r, key=request_key(adapter, r, [], slots[i] + stamp),
                  extra=row_metadata(rows[i]))
        for i, r in enumerate(requests) if r is not None
    ]  # fmt: skip
    if budget is not None and budget.max_cost is not None:
        half = sum((adapter.price(i.request).amount or 0.0) for i in items) * BATCH_DISCOUNT
        if half > budget.max_cost + 1e-9:
            raise BudgetExceeded(
                f"max_cost={budget.max_cost:g} {budget.unit}: the batch is estimated at "
                f"{half:g} {budget.unit} (half the token-table price) if nothing is archived"
            )
    images, errors = await run_through_batch_api(
        adapter, store, items, wait_seconds=wait_seconds, first_poll_seconds=poll_seconds
    )
    for img in images:
        if img.row is not None:
            by_row.setdefault(img.row, []).append(img)
    for row, (kind, message) in errors.items():
        failures.append(BatchFailure(index=row, prompt=row_prompt(rows[row])[:200], error=message,
                                     error_type=kind, extra=row_metadata(rows[row])))  # fmt: skip


def fill_template(template: str, day: date, themes: list[str]) -> str:
    """`{date}` / `{date:%A %d %B}` and `{theme}` filled: the theme rotates one per day."""
    theme = themes[day.toordinal() % len(themes)] if themes else ""
    try:
        return template.format(date=day, theme=theme)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidRequest(
            f"prompt_template: {exc!s} (use {{date}}, {{date:%d %B}} and {{theme}})",
            field="prompt_template",
        ) from None


@flow(name="daily-content", log_prints=True)
async def daily_content(
    prompt_template: str = "editorial poster for {theme}, dated {date:%A %d %B %Y}",
    themes: list[str] | None = None,
    edit_prompt: str = "add a bold headline banner across the top",
    provider: ProviderParam = "offline",
    mask: str | None = None,
    archive: ArchiveParam = None,
    size: str | None = None,
    quality: Quality | None = None,
    run_date: date | None = None,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    n: int = 1,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
) -> PipelineResult:
    """The scheduled pipeline: fill the prompt with the run's date and theme, then generate
    `n` candidates → (review) → edit (with the mask) → archive. The date is the run's
    scheduled day, so a late or re-run run makes the same image (and pays nothing twice).
    Under a worker, `review=True` suspends the run (the worker is free) until answered."""
    from prefect.runtime import flow_run

    day = run_date or flow_run.scheduled_start_time.date()
    chosen = themes or ["spring sale", "new arrivals", "customer stories", "behind the scenes"]
    prompt = fill_template(prompt_template, day, chosen)
    get_run_logger().info("prompt for %s: %s", day.isoformat(), prompt)
    return await _generate_then_edit(
        prompt, edit_prompt, provider, mask, archive, size, quality, None, False,
        timeout_seconds, max_cost, n, review, review_timeout_seconds, on_review_timeout,
        max_review_rounds, key="daily-content",
    )  # fmt: skip
