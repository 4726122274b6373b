"""What the commands share: turning arguments into what the flows take, the checks made before
a flow run exists, the dry run, and printing archived images."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from gptimg_flows.cli.console import (
    run_command,
)

if TYPE_CHECKING:
    from gptimg_flows.blocks.resolve import ProviderParam
    from gptimg_flows.models import ArchivedImage, ExtraValue, ImageRequest
    from gptimg_flows.spend.prices import CostEstimate


def source_arg(value: str) -> str:
    """An input image or file: URLs as given, local paths absolute (recorded in sidecars)."""
    if "://" in value or value.startswith("data:"):
        return value
    return str(Path(value).expanduser().resolve())


def archive_arg(value: str | None) -> str | None:
    """A saved ImageArchive block name is passed on; anything path-like is made absolute."""
    if value is None or "://" in value:
        return value
    if "/" in value or os.sep in value or value.startswith((".", "~")) or Path(value).is_dir():
        return str(Path(value).expanduser().resolve())
    return value


def extras_arg(items: list[str] | None) -> dict[str, ExtraValue]:
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


def provider_arg(text: str) -> ProviderParam:
    """`-p a,b,c` is a route of three members; one name is one provider."""
    names: list[Any] = [n.strip() for n in text.split(",")]
    return names if len(names) > 1 else text


def priced_without_api(provider: str) -> ProviderParam | None:
    """What `estimate` can price with no Prefect API at all: `offline`, or one of our
    providers' names (`openai`, …) at its documented prices when no block can have been
    saved (no PREFECT_API_URL, and no Prefect database yet in PREFECT_HOME): starting an
    embedded server (20-40 s on a fresh machine) only to find none would be waste. None when
    a saved block may be meant."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from gptimg_flows.blocks.resolve import unkeyed_block
    from gptimg_flows.providers.offline import OFFLINE_NAMES

    name = provider.strip()
    if name in OFFLINE_NAMES:
        return name
    if PREFECT_API_URL.value() or (Path(PREFECT_HOME.value()) / "prefect.db").exists():
        return None
    return cast("ProviderParam | None", unkeyed_block(name))  # one of its block types


def precheck(
    provider: str,
    archive: str | None,
    timeout: float,
    request: ImageRequest | None = None,
    *,
    saved: bool = True,
) -> None:
    """What can be checked before a flow run exists, checked here: a typo costs no Failed run.
    Without Prefect: the request's fields, the offline provider's rules, a local archive, an
    edit's local inputs and mask (a mask that does not fit its image). With the API
    (`saved`): a saved provider's or route's name, and that it can make the request's size."""
    from gptimg_flows.blocks.credentials import provider_of
    from gptimg_flows.blocks.resolve import looks_like_path, open_archive, resolve_provider
    from gptimg_flows.engine.produce import check_timeout, planner_of
    from gptimg_flows.models import EditRequest
    from gptimg_flows.providers.offline import OFFLINE_NAMES

    check_timeout(timeout)
    store = None
    if archive is not None and looks_like_path(archive):
        store = open_archive(archive)
    if request is not None and provider.strip() in OFFLINE_NAMES:
        provider_of(provider.strip()).validate(request)
    elif saved:
        spec = run_command(lambda: resolve_provider(provider_arg(provider)))
        if request is not None:
            planner_of(spec).validate(request)
    if isinstance(request, EditRequest) and (archive is None or store is not None):
        sources = [*request.images, *([request.mask] if request.mask else [])]
        if all(isinstance(s, str) and "://" not in s for s in sources):  # local files only
            _check_edit_inputs(request, store)


def _check_edit_inputs(request: Any, store: Any) -> None:
    """An edit's inputs read and checked as the flow will (the mask against its image)."""
    from gptimg_flows.archive.store import Archive
    from gptimg_flows.engine.steps import load_edit_inputs

    asyncio.run(load_edit_inputs(request, store if store is not None else Archive()))


def print_estimate(
    provider: str, requests: list[ImageRequest] | None, as_json: bool, **batch: Any
) -> None:
    """Print what `estimate_cost` says these requests (or this prompt file) would cost."""
    from gptimg_flows.estimates import estimate_cost

    unsaved = priced_without_api(provider)

    async def work() -> CostEstimate:
        given = unsaved if unsaved is not None else provider_arg(provider)
        return await estimate_cost(requests, provider=given, **batch)

    # Arithmetic needs no Prefect server: one is asked only where a saved block may be meant.
    estimate = asyncio.run(work()) if unsaved is not None else run_command(work, "estimating…")
    if as_json:
        typer.echo(estimate.model_dump_json(indent=2))
        return
    typer.echo(
        f"estimate: {estimate.text()} for {estimate.requests} request(s), "
        f"{estimate.images} image(s); nothing was run or paid"
    )
    for note in estimate.notes:
        typer.echo(f"note: {note}")


TEXT_CHECK_HELP = (
    "off, flag (read back the text the prompt quotes and mark misspelt images) or remake "
    "(also pay for another try, --text-check-attempts times at most). Needs gptimg-flows[ocr]."
)
EXPECTED_TEXT_HELP = "The text each image must carry (repeatable), instead of the prompt's quotes."


def text_check_args(mode: str, expected: list[str] | None, attempts: int) -> dict[str, Any]:
    """The text check's flow parameters, checked before any flow run exists."""
    from gptimg_flows.engine.text_checking import text_rule

    text_rule(mode, expected, attempts)  # type: ignore[arg-type]  # checked inside
    return {"text_check": mode, "expected_text": expected or None, "text_check_attempts": attempts}


def remakes(checks: dict[str, Any]) -> int:
    """How many more tries a request may get (what its estimate must allow for)."""
    return int(checks["text_check_attempts"]) if checks["text_check"] == "remake" else 0


def text_check_line(img: ArchivedImage) -> str:
    """How an image's text check went, for a line of output ("" when unchecked)."""
    check = img.text_check
    if check is None:
        return ""
    if check.passed:
        return "  text ok"
    return f"  TEXT MISREAD: expected {check.expected}, read {check.read[:4]}"


def print_images(images: list[ArchivedImage], as_json: bool) -> None:
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
            f"{cost}){text_check_line(img)}"
        )
    typer.echo(f"{cost_summary(images)}; each image has a .json sidecar")


def prompt_rows(source: str, archive: str | None) -> list[dict[str, Any]]:
    """The prompt file's rows, read as the flow will read them: a file on a remote store with
    the archive's storage options (a saved block's are fetched from the Prefect API)."""
    from gptimg_flows.archive.store import Archive
    from gptimg_flows.blocks.resolve import looks_like_path, open_archive, resolve_archive
    from gptimg_flows.engine.reading import read_rules
    from gptimg_flows.media.prompt_files import read_prompts

    store: Archive | None = None
    if "://" in source and not source.startswith(("http://", "https://")):
        if archive is None:
            store = Archive()
        elif looks_like_path(archive):
            store = open_archive(archive)
        else:
            store = run_command(lambda: resolve_archive(archive))
    return read_prompts(source, read_rules(store))


def print_rows_estimate(
    provider: str,
    rows: list[dict[str, Any]],
    as_json: bool,
    *,
    size: str | None,
    quality: str | None,
    output_format: str | None,
    template: str | None,
    text_check_attempts: int = 0,
) -> None:
    """The estimate of a prompt file's rows, already read by `prompt_rows` (the file and a
    saved archive block are not fetched a second time), priced as `batch_generate` plans them."""
    print_estimate(
        provider,
        None,
        as_json,
        prompts=rows,
        size=size,
        quality=quality,
        output_format=output_format,
        prompt_template=template,
        text_check_attempts=text_check_attempts,
    )
