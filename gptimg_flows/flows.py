"""The flows users run: generate_images, edit_image, generate_edit_archive, batch_generate.

Each is a composition a user could have written from the tasks; all are async so one process
can keep hundreds of provider jobs in flight.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from gptimg_flows.blocks.resolve import (
    ArchiveParam,
    ProviderParam,
    resolve_archive,
    resolve_provider,
)
from gptimg_flows.blocks.route import Route
from gptimg_flows.blocks.seller import Seller
from gptimg_flows.engine.artifacts import publish_images
from gptimg_flows.engine.batch_api import batch_api_rows, batch_produce, check_batch_edit
from gptimg_flows.engine.pacing import run_traffic, traffic_text
from gptimg_flows.engine.produce import (
    check_timeout,
    key_of,
    planner_of,
    produce,
    run_budget,
)
from gptimg_flows.engine.progress import BatchProgress
from gptimg_flows.engine.reading import read_rules
from gptimg_flows.engine.records import archived_under
from gptimg_flows.engine.refresh import end_refresh, refresh_stamp, refreshed_rows
from gptimg_flows.engine.route_health import route_moves
from gptimg_flows.engine.text_checking import (
    TextRule,
    check_rows,
    checked,
    checked_text_of,
    edit_all,
    text_failed,
    text_failures,
    text_rule,
    worth_editing,
)
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.prompt_files import read_prompts
from gptimg_flows.models import (
    ArchivedImage,
    Background,
    EditRequest,
    ExtraValue,
    ImageRequest,
    InputFidelity,
    Moderation,
    OutputFormat,
    Quality,
    Resolution,
    build_request,
)
from gptimg_flows.results import (
    BatchFailure,
    BatchResult,
    PipelineResult,
    ReviewRound,
    cost_summary,
    cost_text,
    rows_failed,
    spent_cost,
    total_cost,
)
from gptimg_flows.review.pause import (
    DEFAULT_TIMEOUT_SECONDS,
    OnTimeout,
    check_review_options,
    review_images,
)
from gptimg_flows.review.rounds import Rounds
from gptimg_flows.rows import (
    PromptsParam,
    check_columns,
    occurrence_slots,
    on_row,
    plan_rows,
    row_expected_text,
    row_failure,
    row_metadata,
)
from gptimg_flows.spend.prices import Budget
from gptimg_flows.textcheck import TextCheckMode

# -- one request, end to end --------------------------------------------------------------------


__all__ = ["BatchFailure", "BatchResult", "PipelineResult", "cost_summary", "review_images"]


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
    remake_uncertain: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> list[ArchivedImage]:
    """Generate `n` images from a prompt and archive them.

    `max_cost` (in the provider's cost unit) refuses the run before any provider call when
    its estimate is over it (BudgetExceeded).

    `text_check="flag"` reads back the text the prompt quotes (or `expected_text`) from each
    image and marks the ones that misread it; `"remake"` also makes the request again, up to
    `text_check_attempts` more times, until an image passes (engine/text_checking.py).

    `review=True`: once archived, the run pauses (suspends, under a worker) until a person
    approves candidates in the Resume form, or asks for a new round from a new prompt. Every
    candidate of every round is returned with its `review`."""
    request = build_request(
        ImageRequest,
        prompt=prompt,
        n=n,
        size=size,
        resolution=resolution,
        quality=quality,
        background=background,
        output_format=output_format,
        output_compression=output_compression,
        moderation=moderation,
        seed=seed,
        extras=extras or {},
    )
    check_timeout(timeout_seconds)
    rule = text_rule(text_check, expected_text, text_check_attempts)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    budget = run_budget(planner_of(spec), max_cost, [request])
    images = await checked(
        lambda suffix: produce(
            spec,
            request,
            store,
            slot=f"0{suffix}",
            refresh=refresh,
            remake_uncertain=remake_uncertain,
            timeout_seconds=timeout_seconds,
            budget=budget,
        ),
        request.prompt,
        rule,
        store,
        size=request.pixels(),
    )
    if review:
        rounds = Rounds(
            store,
            "generate-images-review",
            review_timeout_seconds,
            on_review_timeout,
            max_review_rounds,
        )

        async def again(prompt: str, number: int) -> list[ArchivedImage]:
            req = request.model_copy(update={"prompt": prompt})
            planner_of(spec).validate(req)
            return await checked(
                lambda suffix: produce(
                    spec,
                    req,
                    store,
                    slot=f"round-{number}{suffix}",
                    refresh=refresh,
                    remake_uncertain=remake_uncertain,
                    timeout_seconds=timeout_seconds,
                    budget=budget,
                ),
                prompt,
                rule,
                store,
            )

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
    remake_uncertain: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> list[ArchivedImage]:
    """Edit an image (local path, fsspec URL or http URL), optionally only where a mask says.

    `batch_api=True` (an OpenAI block) sends the edit through OpenAI's Batch API at half the
    price (see batch_generate); its size must be auto, 1024x1024, 1536x1024 or 1024x1536.

    `text_check` as in generate_images: the edit prompt's quotes, else `expected_text`, else
    the text its source image was checked for (its sidecar's `text_check`)."""
    request = build_request(
        EditRequest,
        images=[image] if isinstance(image, str) else image,
        mask=mask,
        prompt=prompt,
        n=n,
        size=size,
        quality=quality,
        background=background,
        output_format=output_format,
        input_fidelity=input_fidelity,
        extras=extras or {},
    )
    check_timeout(timeout_seconds)
    rule = text_rule(text_check, expected_text, text_check_attempts)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    budget = run_budget(planner_of(spec), max_cost, [request])
    stamp = await refresh_stamp(store) if refresh and batch_api else None

    async def make(suffix: str) -> list[ArchivedImage]:
        if batch_api:
            return await batch_produce(
                _batch_provider(spec),
                store,
                [(request, f"0{suffix}", {})],
                refresh_stamp=stamp,
                budget=budget,
                wait_seconds=batch_wait_seconds,
                poll_seconds=batch_poll_seconds,
                remake_uncertain=remake_uncertain,
            )
        return await produce(
            spec,
            request,
            store,
            slot=f"0{suffix}",
            refresh=refresh,
            remake_uncertain=remake_uncertain,
            timeout_seconds=timeout_seconds,
            budget=budget,
        )

    sources = [i for i in request.images if isinstance(i, str)]
    source_text = await checked_text_of(store, sources) if rule.on else []
    images = await checked(
        make, request.prompt, rule, store, fallback=source_text, size=request.pixels()
    )
    await publish_images(images, store, f"Edited: {request.prompt[:60]}", "edit-image")
    return images


async def _generate_then_edit(
    *,
    prompt: str,
    edit_prompt: str,
    provider: ProviderParam,
    mask: str | None,
    archive: ArchiveParam,
    size: str | None,
    quality: Quality | None,
    output_format: OutputFormat | None,
    refresh: bool,
    remake_uncertain: bool,
    timeout_seconds: float,
    max_cost: float | None,
    n: int,
    review: bool,
    review_timeout_seconds: float,
    on_review_timeout: OnTimeout,
    max_review_rounds: int,
    key: str,
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    text: TextRule | None = None,
) -> PipelineResult:
    """generate_edit_archive's steps, also run by daily_content in its own flow run (so a
    deployment's review suspends the deployment's run, not a subflow)."""
    rule = text or TextRule()
    first = build_request(
        ImageRequest, prompt=prompt, n=n, size=size, quality=quality, output_format=output_format
    )
    edit = build_request(
        EditRequest,
        images=["pending"],
        mask=mask,
        prompt=edit_prompt,
        quality=quality,
        output_format=output_format,
    )
    check_timeout(timeout_seconds)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    spec = await resolve_provider(provider)
    store = await resolve_archive(archive)
    adapter = planner_of(spec)
    adapter.validate(first)
    adapter.validate(edit)  # both checked before the first credit is spent
    budget = run_budget(adapter, max_cost, [first, edit])
    if budget is not None and (refresh or not await archived_under(store, key_of(spec, first))):
        whole = Budget(budget.max_cost, budget.unit)
        whole.reserve(adapter.price(first))
        for _ in range(n):  # every candidate may be approved and edited
            whole.reserve(adapter.price(edit))  # all must fit before the first is paid
    stamp = await refresh_stamp(store) if refresh else None

    async def make(items: list[tuple[ImageRequest, str, dict[str, Any]]]) -> list[ArchivedImage]:
        """The requests through the Batch API as one batch, or each made at once."""
        if batch_api:
            return await batch_produce(
                _batch_provider(spec),
                store,
                items,
                refresh_stamp=stamp,
                budget=budget,
                wait_seconds=batch_wait_seconds,
                poll_seconds=batch_poll_seconds,
                remake_uncertain=remake_uncertain,
            )
        made: list[ArchivedImage] = []
        for req, slot, extra in items:
            made += await produce(
                spec,
                req,
                store,
                slot=slot,
                refresh=refresh,
                remake_uncertain=remake_uncertain,
                timeout_seconds=timeout_seconds,
                extra=extra or None,
                budget=budget,
            )
        return made

    if batch_api:
        check_batch_edit(edit)  # before the generation is paid
    candidates = await checked(
        lambda suffix: make([(first, f"0{suffix}", {})]),
        first.prompt,
        rule,
        store,
        size=first.pixels(),
    )
    generated, to_edit = candidates, worth_editing(candidates)
    reviews: list[ReviewRound] = []
    if review:
        rounds = Rounds(
            store, f"{key}-review", review_timeout_seconds, on_review_timeout, max_review_rounds
        )

        async def again(new_prompt: str, number: int) -> list[ArchivedImage]:
            req = first.model_copy(update={"prompt": new_prompt})
            adapter.validate(req)
            return await checked(
                lambda suffix: make([(req, f"round-{number}{suffix}", {})]), new_prompt, rule, store
            )

        generated = await rounds.run(candidates, prompt, again)
        to_edit, reviews = rounds.approved, rounds.records
    edited = await edit_all(
        lambda sources, suffix: make(
            [
                (
                    edit.model_copy(update={"images": [source.uri]}),
                    f"0{suffix}",
                    {"derived_from": source.uri},
                )
                for source in sources
            ]
        ),
        to_edit,
        edit.prompt,
        rule,
        store,
    )
    both = generated + edited
    result = PipelineResult(
        generated=generated,
        edited=edited,
        cost=spent_cost(both),
        images_cost=total_cost(both),
        reviews=reviews,
    )
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
    remake_uncertain: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    n: int = 1,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> PipelineResult:
    """Generate `n` candidates, edit each (with the mask, if given), and archive all with
    lineage.

    `text_check` (see generate_images): only candidates whose text passed are edited (the
    best one, flagged, when none did), so no edit is paid for on a misspelt source; each edit
    is checked for its own quotes, else its source's text.

    `batch_api=True` (an OpenAI block): the candidates go as one Batch API batch at half the
    price, and once it is done (and reviewed, with `review=True`) the edits as a second one;
    each waits up to `batch_wait_seconds` (a later run collects a batch still running, and
    sends nothing again).

    `review=True`: the run pauses once the candidates are archived, and only those a person
    approves are edited (none approved: nothing more is paid). With `max_cost`, generating and
    editing every candidate are estimated together and refused before the first provider call
    if they would pass it."""
    return await _generate_then_edit(
        prompt=prompt,
        edit_prompt=edit_prompt,
        provider=provider,
        mask=mask,
        archive=archive,
        size=size,
        quality=quality,
        output_format=output_format,
        refresh=refresh,
        remake_uncertain=remake_uncertain,
        timeout_seconds=timeout_seconds,
        max_cost=max_cost,
        n=n,
        review=review,
        review_timeout_seconds=review_timeout_seconds,
        on_review_timeout=on_review_timeout,
        max_review_rounds=max_review_rounds,
        key="generate-edit-archive",
        batch_api=batch_api,
        batch_wait_seconds=batch_wait_seconds,
        batch_poll_seconds=batch_poll_seconds,
        text=text_rule(text_check, expected_text, text_check_attempts),
    )


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
    remake_uncertain: bool = False,
    timeout_seconds: float = 900.0,
    max_cost: float | None = None,
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    review: bool = False,
    review_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    on_review_timeout: OnTimeout = "reject",
    max_review_rounds: int = 3,
    fail_on_row_failure: bool = False,
    row_numbers: list[int] | None = None,
    refresh_rows: list[int] | None = None,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> BatchResult:
    """One request per row, `concurrency` at a time; a failed row does not stop the rest.

    `fail_on_row_failure=True` (a scheduled job that must notice): once every row has been
    tried and every image made is archived and shown, any failed row fails the run
    (RowsFailed, its `result` the batch's result).

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
    run collects them (see engine/batch_api.py for how nothing is paid twice).

    `review=True`: once every row is archived, the run pauses with the gallery numbered in row
    order (images of rows that failed are not shown). A `new_prompt` there is a prompt
    template for a new round of every row (`{prompt}` is the row's own prompt, other columns
    as in `prompt_template`).

    `row_numbers`: each prompt's row in a larger input (distributed_batch's chunk runs pass
    it), so sidecars, results and failures name the input's row, not the chunk's.

    `refresh=True` pays for new images of every row; `refresh_rows` (row numbers, from 0 as in
    results and sidecars) of just those rows, the others served from the archive. The same
    refresh run again (after a crash, or while rows of it are still in flight) resumes it
    instead of paying again; a plain run afterwards returns the newest images (engine/refresh).

    `text_check` as in generate_images, per row: a row's `expected_text` column, else the
    batch's `expected_text`, else what the row's prompt (its template filled) quotes. With
    `fail_on_row_failure`, a row none of whose images passed is a failed row (TextCheckFailed).
    """
    logger = get_run_logger()
    check_timeout(timeout_seconds)
    rule = text_rule(text_check, expected_text, text_check_attempts, batch_api=batch_api)
    if review:
        check_review_options(review_timeout_seconds, on_review_timeout, max_review_rounds)
    store = await resolve_archive(archive)
    rows = await asyncio.to_thread(read_prompts, prompts, read_rules(store))
    check_columns(rows, prompt_template)
    row_of = _row_numbers(row_numbers, len(rows))
    fresh = refreshed_rows(refresh, refresh_rows, row_of)
    spec = await resolve_provider(provider)
    adapter = planner_of(spec)
    defaults = {"size": size, "quality": quality, "output_format": output_format}
    requests, failures = plan_rows(rows, defaults, prompt_template, adapter.validate)
    _renumber(failures, row_of)
    metadata = sorted(set().union(*(row_metadata(r).keys() for r in rows)) if rows else set())
    if metadata:
        logger.info("columns kept as each image's metadata (not sent): %s", ", ".join(metadata))
    budget = run_budget(adapter, max_cost, [r for r in requests if r is not None])
    gate = asyncio.Semaphore(max(1, concurrency))
    by_row: dict[int, list[ArchivedImage]] = {}
    progress = BatchProgress(total=len(rows), done=len(failures))
    await progress.start()

    async def one(
        i: int,
        req: ImageRequest,
        slot: str,
        into: dict[int, list[ArchivedImage]],
        failed: list[BatchFailure],
    ) -> None:
        extra = row_metadata(rows[i])
        async with gate:
            try:
                made = await checked(
                    lambda suffix: produce(
                        spec,
                        req,
                        store,
                        slot=slot + suffix,
                        refresh=i in fresh,
                        remake_uncertain=remake_uncertain,
                        timeout_seconds=timeout_seconds,
                        row=row_of[i],
                        extra=extra,
                        budget=budget,
                    ),
                    req.prompt,
                    rule.given(row_expected_text(rows[i])),
                    store,
                    size=req.pixels(),
                )
                into[i] = on_row(made, row_of[i], extra)
            except Exception as exc:  # one item's failure is reported, not fatal
                failed.append(row_failure(row_of[i], rows[i], req.prompt, exc))
        await progress.advance()  # an API call: not while holding a slot

    slots = occurrence_slots(requests)
    if batch_api:
        if isinstance(spec, Route):
            raise InvalidRequest(
                "batch_api=True sends rows to OpenAI's Batch API: give one OpenAI block as "
                "`provider`, not a route",
                field="batch_api",
            )
        if row_numbers is not None:
            raise InvalidRequest(
                "row_numbers is for distributed_batch's chunk runs, which do not use the Batch API",
                field="row_numbers",
            )
        await batch_api_rows(
            spec,
            store,
            rows,
            requests,
            slots,
            await refresh_stamp(store) if fresh else None,
            fresh,
            budget,
            batch_wait_seconds,
            batch_poll_seconds,
            by_row,
            failures,
            remake_uncertain,
        )
        await check_rows(by_row, rows, rule, store)  # once the batch is in
    else:
        await asyncio.gather(
            *(
                one(i, r, slots[i], by_row, failures)
                for i, r in enumerate(requests)
                if r is not None
            )
        )
    if fail_on_row_failure and rule.on:
        failures += text_failures(by_row, rows, row_of)
    failures.sort(key=lambda f: f.index)
    if fresh:
        await end_refresh(store, [f.error_type for f in failures])
    await progress.finish()
    images = [img for i in sorted(by_row) for img in by_row[i]]
    reviews: list[ReviewRound] = []
    if review:

        async def again(template: str, number: int) -> list[ArchivedImage]:
            """A new round of every row from the reviewer's template (its own slots)."""
            made: dict[int, list[ArchivedImage]] = {}
            again, refused = plan_rows(rows, defaults, template, adapter.validate)
            failures.extend(_renumber(refused, row_of))
            await asyncio.gather(
                *(
                    one(i, req, f"{slots[i]}:round-{number}", made, failures)
                    for i, req in enumerate(again)
                    if req is not None
                )
            )
            return [img for i in sorted(made) for img in made[i]]

        rounds = Rounds(
            store,
            "batch-generate-review",
            review_timeout_seconds,
            on_review_timeout,
            max_review_rounds,
        )
        shown_prompt = prompt_template or f"each row's own prompt ({len(rows)} rows)"
        images = await rounds.run(
            images, shown_prompt, again, check_prompt=lambda t: check_columns(rows, t)
        )
        reviews = rounds.records
        failures.sort(key=lambda f: f.index)
    traffic = run_traffic()
    result = BatchResult(
        images=images,
        failures=failures,
        cost=spent_cost(images),
        images_cost=total_cost(images),
        reviews=reviews,
        refused_submits=traffic.refused,
        rate_limit_wait_seconds=round(traffic.waited_seconds, 3),
        rate_limit_held_seconds=round(traffic.held_seconds, 3),
        text_check_failed=text_failed(images),
        **route_moves(),
    )
    logger.info(
        "batch: %d image(s), %d failure(s), cost %s",
        len(images),
        len(failures),
        cost_text(result.cost),
    )
    if line := traffic_text(traffic):
        logger.info("%s", line)
    await publish_images(
        images, store, f"Batch of {len(rows)} prompt(s)", "batch-generate", failures=failures
    )
    if fail_on_row_failure and failures:
        raise rows_failed(result, len(rows))
    return result


def _renumber(failures: list[BatchFailure], number: list[int]) -> list[BatchFailure]:
    """Failures planning found, under the input's row numbers."""
    for failure in failures:
        failure.index = number[failure.index]
    return failures


def _row_numbers(given: list[int] | None, count: int) -> list[int]:
    if given is None:
        return list(range(count))
    if len(given) != count or len(set(given)) != count or min(given, default=0) < 0:
        raise InvalidRequest(
            f"row_numbers: {len(given)} distinct numbers of 0 or more are needed, one for each "
            f"of the {count} prompts",
            field="row_numbers",
        )
    return list(given)


def _batch_provider(spec: Seller | Route) -> Seller:
    if isinstance(spec, Route):
        raise InvalidRequest(
            "batch_api=True sends requests to OpenAI's Batch API: give one OpenAI block as "
            "`provider`, not a route",
            field="batch_api",
        )
    return spec


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
    batch_api: bool = False,
    batch_wait_seconds: float = 86400.0,
    batch_poll_seconds: float = 30.0,
    remake_uncertain: bool = False,
    text_check: TextCheckMode = "off",
    expected_text: list[str] | None = None,
    text_check_attempts: int = 2,
) -> PipelineResult:
    """The scheduled pipeline: fill the prompt with the run's date and theme, then generate
    `n` candidates → (review) → edit (with the mask) → archive. The date is the run's
    scheduled day, so a late or re-run run makes the same image (and pays nothing twice).
    Under a worker, `review=True` suspends the run (the worker is free) until answered.
    `batch_api=True` (an OpenAI block) makes both steps Batch API batches at half the price
    (see generate_edit_archive): a nightly schedule can wait for them."""
    from prefect.runtime import flow_run

    day = run_date or flow_run.scheduled_start_time.date()
    chosen = themes or ["spring sale", "new arrivals", "customer stories", "behind the scenes"]
    prompt = fill_template(prompt_template, day, chosen)
    get_run_logger().info("prompt for %s: %s", day.isoformat(), prompt)
    return await _generate_then_edit(
        prompt=prompt,
        edit_prompt=edit_prompt,
        provider=provider,
        mask=mask,
        archive=archive,
        size=size,
        quality=quality,
        output_format=None,
        refresh=False,
        remake_uncertain=remake_uncertain,
        timeout_seconds=timeout_seconds,
        max_cost=max_cost,
        n=n,
        review=review,
        review_timeout_seconds=review_timeout_seconds,
        on_review_timeout=on_review_timeout,
        max_review_rounds=max_review_rounds,
        key="daily-content",
        batch_api=batch_api,
        batch_wait_seconds=batch_wait_seconds,
        batch_poll_seconds=batch_poll_seconds,
        text=text_rule(text_check, expected_text, text_check_attempts),
    )
