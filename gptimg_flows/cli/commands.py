"""The single-request commands (generate, edit, estimate), the demo, the capability table,
review notifications and the spend report."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptimg_flows.cli.app import (
    ARCHIVE_HELP,
    DRY_RUN_HELP,
    MAX_COST_HELP,
    PROVIDER_HELP,
    SIZE_HELP,
    app,
)
from gptimg_flows.cli.args import (
    EXPECTED_TEXT_HELP,
    TEXT_CHECK_HELP,
    archive_arg,
    extras_arg,
    precheck,
    print_estimate,
    print_images,
    print_rows_estimate,
    prompt_rows,
    provider_arg,
    remakes,
    source_arg,
    text_check_args,
)
from gptimg_flows.cli.console import (
    require_prefect_api,
    run_command,
)
from gptimg_flows.cli.errors import (
    exit_on_error,
)

if TYPE_CHECKING:
    from gptimg_flows.models import ArchivedImage


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
    n: int = typer.Option(1, "-n", "--count", help="Number of images."),
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
    remake_uncertain: bool = typer.Option(
        False,
        "--remake-uncertain",
        help="Pay again only for requests whose earlier submit is uncertain (SubmitUncertain).",
    ),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the provider's job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    text_check: str = typer.Option("off", "--text-check", help=TEXT_CHECK_HELP),
    expected_text: Annotated[
        list[str] | None, typer.Option("--expected-text", help=EXPECTED_TEXT_HELP)
    ] = None,
    text_check_attempts: int = typer.Option(2, "--text-check-attempts", min=0, max=10),
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
            extras=extras_arg(extra),
        )
        # bad input exits here, before Prefect runs anything
        request = ImageRequest(**fields)
        precheck(provider, archive_arg(archive), timeout, request)
        checks = text_check_args(text_check, expected_text, text_check_attempts)
        if dry_run:
            print_estimate(provider, [request], as_json, text_check_attempts=remakes(checks))
            return

        async def work() -> list[ArchivedImage]:
            from gptimg_flows.flows import generate_images

            images: list[ArchivedImage] = await generate_images(
                provider=provider_arg(provider),
                archive=archive_arg(archive),
                refresh=refresh,
                remake_uncertain=remake_uncertain,
                timeout_seconds=timeout,
                max_cost=max_cost,
                **checks,
                **fields,
            )
            return images

        images = run_command(work, status=f"generating with {provider}…")
        print_images(images, as_json)


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
    n: int = typer.Option(1, "-n", "--count", help="Number of images."),
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
    remake_uncertain: bool = typer.Option(
        False,
        "--remake-uncertain",
        help="Pay again only for requests whose earlier submit is uncertain (SubmitUncertain).",
    ),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the provider's job."),
    max_cost: float | None = typer.Option(None, "--max-cost", help=MAX_COST_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    text_check: str = typer.Option("off", "--text-check", help=TEXT_CHECK_HELP),
    expected_text: Annotated[
        list[str] | None, typer.Option("--expected-text", help=EXPECTED_TEXT_HELP)
    ] = None,
    text_check_attempts: int = typer.Option(2, "--text-check-attempts", min=0, max=10),
    as_json: bool = typer.Option(False, "--json", help="Print the ArchivedImage records as JSON."),
) -> None:
    """Image (+ mask) → images, archived with the input as parent; prints each image's URI."""
    with exit_on_error():
        from gptimg_flows.models import EditRequest

        images_in = [source_arg(image), *(source_arg(m) for m in more or [])]
        fields: dict[str, Any] = dict(
            prompt=prompt,
            mask=source_arg(mask) if mask else None,
            n=n,
            size=size,
            quality=quality,
            background=background,
            output_format=output_format,
            input_fidelity=input_fidelity,
            extras=extras_arg(extra),
        )
        request = EditRequest(images=images_in, **fields)
        precheck(provider, archive_arg(archive), timeout, request)
        checks = text_check_args(text_check, expected_text, text_check_attempts)
        if dry_run:
            print_estimate(provider, [request], as_json, text_check_attempts=remakes(checks))
            return

        async def work() -> list[ArchivedImage]:
            from gptimg_flows.flows import edit_image

            images: list[ArchivedImage] = await edit_image(
                image=images_in if len(images_in) > 1 else images_in[0],
                provider=provider_arg(provider),
                archive=archive_arg(archive),
                refresh=refresh,
                remake_uncertain=remake_uncertain,
                timeout_seconds=timeout,
                max_cost=max_cost,
                **checks,
                **fields,
            )
            return images

        images = run_command(work, status=f"editing with {provider}…")
        print_images(images, as_json)


@app.command()
def estimate(
    prompt: str | None = typer.Argument(None, help="One request's prompt (or use --file)."),
    prompts_file: str | None = typer.Option(
        None, "--file", "-f", help="A prompt file (JSONL, CSV or text), priced row by row."
    ),
    provider: str = typer.Option("offline", "--provider", "-p", help=PROVIDER_HELP),
    n: int = typer.Option(1, "-n", "--count", help="Images per request."),
    size: str | None = typer.Option(None, help=SIZE_HELP),
    resolution: str | None = typer.Option(None, help="1K, 2K or 4K, with a ratio --size."),
    quality: str | None = typer.Option(None, help="auto, low, medium or high."),
    output_format: str | None = typer.Option(None, "--format", help="png, jpeg or webp."),
    template: str | None = typer.Option(None, "--template", help="Row prompts from columns."),
    archive: str | None = typer.Option(
        None, "--archive", "-a", help="Read a prompt file on its store with its storage options."
    ),
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

        if (prompt is None) == (prompts_file is None):
            raise InvalidRequest("estimate: give a PROMPT or --file PROMPTS", field="prompts")
        if prompts_file is not None:
            print_rows_estimate(  # its columns are checked as the estimate plans the rows
                provider,
                prompt_rows(source_arg(prompts_file), archive_arg(archive)),
                as_json,
                size=size,
                quality=quality,
                output_format=output_format,
                template=template,
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
        precheck(provider, None, 1.0, request, saved=False)  # a price needs no saved block
        print_estimate(provider, [request], as_json)


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
    by: str = typer.Option(
        "provider", help="Group by provider (a route's images by member) or day."
    ),
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
        target = archive_arg(archive)
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
        width = max([12, *(len(r.group) for r in rows)])
        typer.echo(f"{by:<{width}} {'images':>7} {'paid':>14}  unit")
        for r in rows:
            unpriced = f"  ({r.unpriced} without a cost)" if r.unpriced else ""
            typer.echo(f"{r.group:<{width}} {r.images:>7} {r.amount:>14g}  {r.unit}{unpriced}")
