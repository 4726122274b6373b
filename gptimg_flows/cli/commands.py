"""The `gptimg` command.

Settings that must be in place before Prefect is imported are set first: the embedded server
needs more than Prefect's default 20 s to create its database on a fresh machine, and with no
internet its telemetry only logs errors. (The package's `__init__` imports Prefect before this
module runs, so the callback also applies them to Prefect's settings for the command's run.)

Errors end a command with one line on stderr, `error: <type>: <message>`, and exit code 2 for
bad input (`InvalidRequest`, an unreadable file) or 1 for anything else; `--debug` adds the
traceback and Prefect's own console logs.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import asyncio
import contextlib
import inspect
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gptimg_flows.cli.console import (
    OPTIONS,
    require_prefect_api,
    run_command,
    stderr_console,
    stdout_console,
)
from gptimg_flows.cli.errors import (
    exit_on_error,
    redact,
    short_error,
)
from gptimg_flows.results import RowsFailed, cost_text

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from gptimg_flows.flows import BatchResult
    from gptimg_flows.models import ArchivedImage, ExtraValue, ImageRequest
    from gptimg_flows.spend.prices import CostEstimate

T = TypeVar("T")

app = typer.Typer(
    add_completion=False,
    help="GPT Image 2 pipelines on Prefect.",
    no_args_is_help=True,
    # Rich tracebacks print local variables, which may hold a key: we print plain ones.
    pretty_exceptions_enable=False,
)
blocks_app = typer.Typer(help="Prefect blocks: register the types, create them from env vars.")
app.add_typer(blocks_app, name="blocks", no_args_is_help=True)

log = logging.getLogger("gptimg_flows.cli.commands")


@app.callback()
def _main_options(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help="On error, print the traceback; show Prefect's console logs."
    ),
) -> None:
    """GPT Image 2 pipelines on Prefect."""
    OPTIONS.debug = debug
    ctx.with_resource(_env_defaults_applied())


def _env_defaults_applied() -> contextlib.AbstractContextManager[Any]:
    """Prefect read its settings when the package imported it, before this module's
    `os.environ.setdefault`s: apply them (the user's own values win) for this command."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    return temporary_settings(
        updates={
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: os.environ[
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ],
            PREFECT_SERVER_ANALYTICS_ENABLED: os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"],
        }
    )


# -- argument helpers ---------------------------------------------------------------------------


def _source(value: str) -> str:
    """An input image or file: URLs as given, local paths absolute (recorded in sidecars)."""
    if "://" in value or value.startswith("data:"):
        return value
    return str(Path(value).expanduser().resolve())


def _archive(value: str | None) -> str | None:
    """A saved ImageArchive block name is passed on; anything path-like is made absolute."""
    if value is None or "://" in value:
        return value
    if "/" in value or os.sep in value or value.startswith((".", "~")) or Path(value).is_dir():
        return str(Path(value).expanduser().resolve())
    return value


def _extras(items: list[str] | None) -> dict[str, ExtraValue]:
    """`--extra key=value`: numbers and true/false are typed, anything else is a string."""
    from gptimg_flows.errors import InvalidRequest

    out: dict[str, ExtraValue] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"extra: {item!r} is not KEY=VALUE", field="extras")
        value: ExtraValue = raw
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            if isinstance(parsed, bool | int | float):
                value = parsed
        out[key.strip()] = value
    return out


def _precheck(
    provider: str, archive: str | None, timeout: float, request: ImageRequest | None = None
) -> None:
    """What can be checked without Prefect, checked before a flow run exists: a typo costs
    neither a server start nor a Failed run. (Saved blocks are checked by the flow.)"""
    from gptimg_flows.blocks.credentials import provider_of
    from gptimg_flows.blocks.resolve import looks_like_path, open_archive
    from gptimg_flows.engine.produce import check_timeout
    from gptimg_flows.providers.offline import OFFLINE_NAMES

    check_timeout(timeout)
    if archive is not None and looks_like_path(archive):
        open_archive(archive)
    if request is not None and provider.strip() in OFFLINE_NAMES:
        provider_of(provider.strip()).validate(request)


def _dry_run(
    provider: str, requests: list[ImageRequest] | None, as_json: bool, **batch: Any
) -> None:
    """Print what `estimate_cost` says these requests (or this prompt file) would cost."""
    from gptimg_flows.estimates import estimate_cost

    async def work() -> CostEstimate:
        return await estimate_cost(requests, provider=provider, **batch)

    estimate = run_command(work, status="estimating…")
    if as_json:
        typer.echo(estimate.model_dump_json(indent=2))
        return
    typer.echo(
        f"estimate: {estimate.text()} for {estimate.requests} request(s), "
        f"{estimate.images} image(s); nothing was run or paid"
    )
    for note in estimate.notes:
        typer.echo(f"note: {note}")


def _print_images(images: list[ArchivedImage], as_json: bool) -> None:
    from gptimg_flows.flows import cost_summary

    if as_json:
        typer.echo(json.dumps([img.model_dump(mode="json") for img in images], indent=2))
        return
    for img in images:
        cost = f"{img.cost:g} {img.cost_unit}" if img.cost is not None else "cost unknown"
        if img.from_archive:
            cost += ", from the archive: 0 this run"
        typer.echo(
            f"{img.uri}  ({img.width}x{img.height}, {img.provider}, sha256 {img.sha256[:12]}, "
            f"{cost})"
        )
    typer.echo(f"{cost_summary(images)}; each image has a .json sidecar")


# -- commands -----------------------------------------------------------------------------------

PROVIDER_HELP = "A saved credentials block name (see `gptimg blocks create`), or `offline`."
ARCHIVE_HELP = (
    "A saved ImageArchive block name, a folder (./name for a new one) or an fsspec URL "
    "(default: $GPTIMG_ARCHIVE or ./gptimg-archive)."
)
SIZE_HELP = "WxH (1536x1024), an aspect ratio (16:9, with --resolution) or auto."
MAX_COST_HELP = (
    "Budget in the provider's cost unit: refused before paying if the estimate is over it "
    "(a batch stops submitting at it)."
)
DRY_RUN_HELP = "Print the cost estimate and exit: nothing is run or paid."


@app.command()
def demo(
    archive: str = typer.Option("gptimg-archive", help="Folder or fsspec URL to archive into."),
    prompt: str = typer.Option(
        "poster of a lighthouse at dawn, headline 'OPEN DAY'", help="What to generate."
    ),
    edit_prompt: str = typer.Option("replace the sky with a storm", help="How to edit it."),
) -> None:
    """Generate → edit with a mask → archive, on the offline provider (no key needed)."""
    from gptimg_flows.cli.demo import run_demo

    with exit_on_error():
        require_prefect_api()
        result = asyncio.run(run_demo(archive, prompt, edit_prompt))
    for label, images in (("generated", result.generated), ("edited", result.edited)):
        for img in images:
            typer.echo(
                f"{label:>9}: {img.uri}  ({img.width}x{img.height}, sha256 {img.sha256[:12]})"
            )
    typer.echo(f"  sidecar: {result.edited[0].sidecar_uri}")
    from prefect.settings import get_current_settings

    home = get_current_settings().home
    typer.echo(
        "Done. See the runs in the Prefect UI: `make ui` (or "
        f"`PREFECT_HOME={home} prefect server start`), then open http://127.0.0.1:4200"
    )


@app.command()
def providers() -> None:
    """The capability table of every provider (markdown)."""
    from gptimg_flows.providers import capability_notes, capability_table

    typer.echo(capability_table())
    typer.echo("\nAssumed, not confirmed by the providers' documents:\n" + capability_notes())


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    archive: str | None = typer.Option(None, "--archive", "-a", help=ARCHIVE_HELP),
    n: int = typer.Option(1, "--n", "-n", help="Number of images."),
    size: str | None = typer.Option(None, help=SIZE_HELP),
    resolution: str | None = typer.Option(None, help="1K, 2K or 4K, with a ratio --size."),
    quality: str | None = typer.Option(None, help="auto, low, medium or high."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    background: str | None = typer.Option(None, help="auto, transparent or opaque."),
    compression: int | None = typer.Option(None, help="0-100, for jpeg and webp."),
    moderation: str | None = typer.Option(None, help="auto or low."),
    seed: int | None = typer.Option(None, help="Only providers that take a seed honour it."),
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="Provider-specific KEY=VALUE (repeatable), e.g. style=anime."),
    ] = None,
    refresh: bool = typer.Option(False, help="Pay for new images even if these are archived."),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the provider's job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the ArchivedImage records as JSON."),
) -> None:
    """Text → images, archived; prints each image's URI. A re-run returns the archived ones."""
    with exit_on_error():
        from gptimg_flows.models import ImageRequest

        fields: dict[str, Any] = dict(
            prompt=prompt,
            n=n,
            size=size,
            resolution=resolution,
            quality=quality,
            background=background,
            output_format=output_format,
            output_compression=compression,
            moderation=moderation,
            seed=seed,
            extras=_extras(extra),
        )
        # bad input exits here, before Prefect runs anything
        request = ImageRequest(**fields)
        _precheck(provider, _archive(archive), timeout, request)
        if dry_run:
            _dry_run(provider, [request], as_json)
            return

        async def work() -> list[ArchivedImage]:
            from gptimg_flows.flows import generate_images

            images: list[ArchivedImage] = await generate_images(
                provider=provider,
                archive=_archive(archive),
                refresh=refresh,
                timeout_seconds=timeout,
                max_cost=max_cost,
                **fields,
            )
            return images

        images = run_command(work, status=f"generating with {provider}…")
        _print_images(images, as_json)


@app.command()
def edit(
    image: str = typer.Argument(..., help="Image to edit: a path, fsspec URL or http(s) URL."),
    prompt: str = typer.Argument(..., help="How to change it."),
    mask: str | None = typer.Option(
        None, "--mask", "-m", help="PNG whose transparent pixels mark the area to edit."
    ),
    more: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="A further reference image (repeatable)."),
    ] = None,
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    archive: str | None = typer.Option(None, "--archive", "-a", help=ARCHIVE_HELP),
    n: int = typer.Option(1, "--n", "-n", help="Number of images."),
    size: str | None = typer.Option(None, help=SIZE_HELP),
    quality: str | None = typer.Option(None, help="auto, low, medium or high."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    background: str | None = typer.Option(None, help="auto, transparent or opaque."),
    input_fidelity: str | None = typer.Option(None, help="high or low."),
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="Provider-specific KEY=VALUE (repeatable)."),
    ] = None,
    refresh: bool = typer.Option(False, help="Pay for new images even if these are archived."),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the provider's job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the ArchivedImage records as JSON."),
) -> None:
    """Image (+ mask) → images, archived with the input as parent; prints each image's URI."""
    with exit_on_error():
        from gptimg_flows.models import EditRequest

        images_in = [_source(image), *(_source(m) for m in more or [])]
        fields: dict[str, Any] = dict(
            prompt=prompt,
            mask=_source(mask) if mask else None,
            n=n,
            size=size,
            quality=quality,
            background=background,
            output_format=output_format,
            input_fidelity=input_fidelity,
            extras=_extras(extra),
        )
        request = EditRequest(images=images_in, **fields)
        _precheck(provider, _archive(archive), timeout, request)
        if dry_run:
            _dry_run(provider, [request], as_json)
            return

        async def work() -> list[ArchivedImage]:
            from gptimg_flows.flows import edit_image

            images: list[ArchivedImage] = await edit_image(
                image=images_in if len(images_in) > 1 else images_in[0],
                provider=provider,
                archive=_archive(archive),
                refresh=refresh,
                timeout_seconds=timeout,
                max_cost=max_cost,
                **fields,
            )
            return images

        images = run_command(work, status=f"editing with {provider}…")
        _print_images(images, as_json)


@app.command()
def estimate(
    prompt: str | None = typer.Argument(None, help="One request's prompt (or use --file)."),
    prompts_file: str | None = typer.Option(
        None, "--file", "-f", help="A prompt file (JSONL, CSV or text), priced row by row."
    ),
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    n: int = typer.Option(1, "--n", "-n", help="Images per request."),
    size: str | None = typer.Option(None, help=SIZE_HELP),
    resolution: str | None = typer.Option(None, help="1K, 2K or 4K, with a ratio --size."),
    quality: str | None = typer.Option(None, help="auto, low, medium or high."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    template: str | None = typer.Option(None, "--template", help="Row prompts from columns."),
    edit_images: int = typer.Option(
        0, "--edit-images", min=0, help="Price an edit with this many input images."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    """The expected cost of one request or a whole prompt file, per unit, with its basis
    (documented price, token table, block-set price, unknown). Nothing is run or paid."""
    with exit_on_error():
        from gptimg_flows.errors import InvalidRequest
        from gptimg_flows.models import EditRequest, ImageRequest
        from gptimg_flows.rows import check_columns, read_prompts

        if (prompt is None) == (prompts_file is None):
            raise InvalidRequest("estimate: give a PROMPT or --file PROMPTS", field="prompts")
        if prompts_file is not None:
            source = _source(prompts_file)
            check_columns(read_prompts(source), template)
            _dry_run(
                provider,
                None,
                as_json,
                prompts=source,
                size=size,
                quality=quality,
                output_format=output_format,
                prompt_template=template,
            )
            return
        fields: dict[str, Any] = dict(
            prompt=prompt,
            n=n,
            size=size,
            resolution=resolution,
            quality=quality,
            output_format=output_format,
        )
        request = (
            EditRequest(images=[f"input-{i}" for i in range(edit_images)], **fields)
            if edit_images
            else ImageRequest(**fields)
        )
        _precheck(provider, None, 1.0, request)
        _dry_run(provider, [request], as_json)


@app.command()
def batch(
    prompts_file: str = typer.Argument(
        ..., help="JSONL (per-line fields: prompt, n, size, …), CSV or text; path or fsspec URL."
    ),
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    archive: str | None = typer.Option(None, "--archive", "-a", help=ARCHIVE_HELP),
    concurrency: int = typer.Option(8, min=1, help="Requests in flight at once."),
    size: str | None = typer.Option(None, help=f"Default for items without one. {SIZE_HELP}"),
    quality: str | None = typer.Option(None, help="Default for items without one."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    template: str | None = typer.Option(
        None, "--template", help="Each row's prompt from its columns: 'shot of {name}, {style}'."
    ),
    refresh: bool = typer.Option(False, help="Pay for new images even if archived."),
    timeout: float = typer.Option(900.0, help="Seconds to wait for each provider job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the BatchResult as JSON."),
    strict: bool = typer.Option(
        False, "--strict", help="Any failed item fails the flow run and exits 1 (after all ran)."
    ),
) -> None:
    """One request per prompt, with a progress bar and a summary table.

    A failed item is reported in the table and does not fail the command (the others are paid
    for and archived; re-running retries only what is missing): the exit code is 0 unless every
    item failed (1), or any did with --strict (1; the flow run is Failed too).
    """
    with exit_on_error():
        from gptimg_flows.errors import InvalidRequest
        from gptimg_flows.models import ImageRequest
        from gptimg_flows.rows import check_columns, read_prompts

        source = _source(prompts_file)
        ImageRequest(prompt="-", size=size, quality=quality, output_format=output_format)
        _precheck(provider, _archive(archive), timeout)
        rows = read_prompts(source)
        if not rows:
            raise InvalidRequest(f"prompts: {prompts_file} holds no prompt", field="prompts")
        check_columns(rows, template)
        if dry_run:
            _dry_run(
                provider,
                None,
                as_json,
                prompts=source,
                size=size,
                quality=quality,
                output_format=output_format,
                prompt_template=template,
            )
            return
        kwargs: dict[str, Any] = dict(
            prompts=source,
            provider=provider,
            archive=_archive(archive),
            concurrency=concurrency,
            size=size,
            quality=quality,
            output_format=output_format,
            prompt_template=template,
            refresh=refresh,
            timeout_seconds=timeout,
            max_cost=max_cost,
            fail_on_row_failure=strict,
        )
        result, where = run_command(lambda: _batch_with_progress(kwargs, len(rows)))
        if as_json:
            typer.echo(result.model_dump_json(indent=2))
        else:
            _print_batch_summary(result, len(rows), where)
        if len(result.failures) >= len(rows) or (strict and result.failures):
            first = result.failures[0]
            how_many = (
                f"all {len(rows)}"
                if len(result.failures) >= len(rows)
                else f"{len(result.failures)} of {len(rows)}"
            )
            raise BatchFailed(
                f"{how_many} item(s) failed (first: {first.error_type}: "
                f"{short_error(first.error_type, first.error)})"
            )


class BatchFailed(Exception):
    """Every item of a batch failed, or any did with --strict (exit 1)."""


async def _batch_with_progress(kwargs: dict[str, Any], total: int) -> tuple[BatchResult, str]:
    """Run `batch_generate` while a progress bar follows it.

    The bar reads the flow run's own progress artifact from the Prefect API (the one the UI
    shows), which the flow advances as each item finishes, archived or failed, at most once a
    second. It is the flow's count, not a guess: items answered from the archive count as
    soon as they are found, failures as soon as they happen. The run is found by a unique
    name. On a terminal the bar redraws; piped, it prints once, at the end.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gptimg_flows.blocks.resolve import resolve_archive
    from gptimg_flows.flows import batch_generate

    run_name = f"gptimg-batch-{uuid.uuid4().hex[:10]}"
    flow_run = batch_generate.with_options(flow_run_name=run_name)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        disable=OPTIONS.debug,
    )
    task_id = progress.add_task("batch", total=total)
    running: asyncio.Task[BatchResult] = asyncio.ensure_future(flow_run(**kwargs))
    with progress:
        await _follow(run_name, total, running, progress, task_id)
        try:
            result = await running
        except RowsFailed as exc:  # --strict: the run is Failed; the summary still shows
            if exc.result is None:
                raise
            result = exc.result
        progress.update(task_id, completed=total)
    where = (await resolve_archive(kwargs["archive"])).basepath
    return result, where


async def _follow(
    run_name: str, total: int, running: asyncio.Task[Any], progress: Progress, task_id: TaskID
) -> None:
    """Every 0.5 s until the flow ends: the newest progress artifact of the run named
    `run_name`, as items done out of `total`.

    The filter is posted as JSON rather than through `read_artifacts`, which sends
    `"task_runs": null` (refused by Prefect 3.8.8's server) or, given an empty filter, joins on
    task runs and so misses the flow-level artifact."""
    from prefect.client.orchestration import get_client

    body = {
        "artifacts": {"type": {"any_": ["progress"]}},
        "flow_runs": {"name": {"any_": [run_name]}},
        "sort": "UPDATED_DESC",
        "limit": 1,
    }
    async with get_client() as client:
        while not running.done():
            try:
                response = await client.request("POST", "/artifacts/filter", json=body)
                response.raise_for_status()
                found = response.json()
                data = found[0].get("data") if found else None
                if isinstance(data, int | float):
                    progress.update(task_id, completed=min(round(total * data / 100), total))
            except Exception as exc:  # the bar is informational: the flow's result decides
                log.debug("progress poll failed: %s", exc)
            await asyncio.wait({running}, timeout=0.5)


def _print_batch_summary(result: BatchResult, total: int, where: str) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    summary = Table(title="batch summary", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("items", str(total))
    summary.add_row("images", str(len(result.images)))
    summary.add_row("failures", str(len(result.failures)))
    summary.add_row("spent this run", cost_text(result.cost))
    if result.images_cost != result.cost:
        summary.add_row("images originally cost", cost_text(result.images_cost))
    if result.refused_submits or result.rate_limit_wait_seconds >= 0.5:
        summary.add_row(
            "rate limits",
            f"{result.refused_submits} submit(s) refused with 429 (nothing paid), "
            f"{result.rate_limit_wait_seconds:.0f} s waited",
        )
    summary.add_row("archived under", Text(where))
    console.print(summary)
    for img in result.images:  # one line per image, in input order: paths stay whole
        meta = ", ".join(f"{k}={v}" for k, v in img.extra.items() if k != "derived_from")
        console.print(Text(f"row {img.row}  {img.uri}" + (f"  ({meta})" if meta else "")))
    if result.failures:
        failures = Table("#", "prompt", "error", title="failures")
        for f in result.failures:
            failures.add_row(
                str(f.index),
                Text(f.prompt[:60]),
                Text(f"{f.error_type}: {redact(short_error(f.error_type, f.error))}"),
            )
        console.print(failures)


@app.command("notify-review")
def notify_review(
    url: str | None = typer.Argument(
        None, help="Where the server POSTs when a run awaits review (Slack/Mattermost webhook…)."
    ),
    ui_url: str | None = typer.Option(
        None, help="The Prefect UI's address for the link (default: the server's PREFECT_UI_URL)."
    ),
    name: str = typer.Option("gptimg-review-waiting", help="The automation and block name."),
    remove: bool = typer.Option(False, "--remove", help="Delete the notification instead."),
) -> None:
    """Tell a team when a run pauses for review: a Prefect automation on the server that POSTs
    JSON (`text` with the run's name and UI link) to URL whenever a flow run pauses or
    suspends. Run it once per server; it updates itself when run again."""
    with exit_on_error():
        require_prefect_api()
        from gptimg_flows.errors import InvalidRequest
        from gptimg_flows.review.notify import (
            install_review_notification,
            remove_review_notification,
        )

        if remove:
            run_command(lambda: remove_review_notification(name))
            typer.echo(f"removed the review notification {name!r}")
            return
        if not url or not url.startswith(("http://", "https://")):
            raise InvalidRequest("url: give the http(s) URL to POST to", field="url")
        automation = run_command(lambda: install_review_notification(url, name=name, ui_url=ui_url))
        typer.echo(f"runs awaiting review now POST to the URL (automation {name!r}, {automation})")


@app.command()
def spend(
    archive: str | None = typer.Argument(
        None, help="A saved ImageArchive block, folder or fsspec URL (default: as generate's)."
    ),
    since: str | None = typer.Option(None, help="Only images archived on or after YYYY-MM-DD."),
    by: str = typer.Option("provider", help="Group by provider or day."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """What was paid for the images in an archive, read from their sidecars."""
    with exit_on_error():
        from datetime import date

        from gptimg_flows.archive.store import Archive
        from gptimg_flows.blocks.resolve import looks_like_path, open_archive, resolve_archive
        from gptimg_flows.errors import InvalidRequest
        from gptimg_flows.spend.report import spend_report

        if by not in ("provider", "day"):
            raise InvalidRequest(f"by: {by!r}; use provider or day", field="by")
        try:
            day = date.fromisoformat(since) if since else None
        except ValueError:
            raise InvalidRequest(f"since: {since!r} is not YYYY-MM-DD", field="since") from None
        target = _archive(archive)
        if target is not None and not looks_like_path(target):
            store = run_command(lambda: resolve_archive(target))  # a saved block: ask the API
        else:
            store = open_archive(target) if target else Archive()
        rows = spend_report(store, day, "day" if by == "day" else "provider")
        if as_json:
            typer.echo(json.dumps([r.model_dump() for r in rows], indent=2))
            return
        if not rows:
            typer.echo(f"no archived images under {store.basepath}")
            return
        typer.echo(f"{by:<12} {'images':>7} {'paid':>14}  unit")
        for r in rows:
            unpriced = f"  ({r.unpriced} without a cost)" if r.unpriced else ""
            typer.echo(f"{r.group:<12} {r.images:>7} {r.amount:>14g}  {r.unit}{unpriced}")


# -- blocks -------------------------------------------------------------------------------------


@blocks_app.command("register")
def blocks_register() -> None:
    """Register gptimg's block types with the Prefect API, so the UI can create them.

    The same as `prefect block register -m gptimg_flows`, in-process.
    """
    with exit_on_error():
        from prefect.blocks.core import Block

        import gptimg_flows

        found = [cls for _, cls in inspect.getmembers(gptimg_flows) if Block.is_block_class(cls)]

        async def work() -> None:
            for cls in found:
                await cls.aregister_type_and_schema()

        run_command(work, status="registering block types…")
        typer.echo(f"registered {len(found)} block type(s):")
        for cls in found:
            typer.echo(f"  {cls.get_block_type_name()}  ({cls.get_block_type_slug()})")


@blocks_app.command("create")
def blocks_create(
    archive: str | None = typer.Option(
        None, "--archive", help="Also save an ImageArchive block (`archive`) for this URL."
    ),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Name the blocks <prefix>-<provider> instead of <provider>."
    ),
) -> None:
    """Save a credentials block for each provider whose env vars are set.

    Reads OPENAI_API_KEY, SCENARIO_SDK_API_KEY + SCENARIO_SDK_API_SECRET, RUNWARE_API_KEY,
    SKILLS_VIDEO_API_KEY, GPTIMAGE2_API_KEY, and optional OPENAI_BASE_URL,
    SCENARIO_SDK_BASE_URL, RUNWARE_BASE_URL, SKILLS_VIDEO_BASE_URL, GPTIMAGE2_BASE_URL.
    Idempotent (unchanged blocks are not rewritten); never prints a key.
    """
    with exit_on_error():
        from gptimg_flows.blocks.from_env import save_blocks_from_env

        report = run_command(
            lambda: save_blocks_from_env(os.environ, prefix=prefix, archive=archive),
            status="saving blocks…",
        )
        for line in report.lines():
            typer.echo(redact(line))


def main() -> None:
    OPTIONS.owns_process = True
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


__all__ = ["Path", "app", "main"]
