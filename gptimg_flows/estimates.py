"""`estimate_cost`, the public face of `spend.estimate`: it resolves the provider (a block
name, a block or `offline`) and reads a prompt file as `batch_generate` reads it, the two things
`spend/` may not do (it knows no blocks and reads no files)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gptimg_flows.blocks.resolve import (
    ArchiveParam,
    ProviderParam,
    UnusableBlock,
    resolve_archive,
    resolve_provider,
    unkeyed_block,
)
from gptimg_flows.blocks.route import Route
from gptimg_flows.blocks.seller import Seller, seller_of
from gptimg_flows.engine.produce import planner_of
from gptimg_flows.engine.reading import read_rules
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.prompt_files import read_prompts
from gptimg_flows.models import ImageRequest, OutputFormat, Quality
from gptimg_flows.rows import PromptsParam
from gptimg_flows.spend.estimate import Pricer, estimate_requests, estimate_rows
from gptimg_flows.spend.prices import CostEstimate


async def estimate_cost(
    requests: ImageRequest | Sequence[ImageRequest] | None = None,
    *,
    prompts: PromptsParam | None = None,
    provider: ProviderParam = "offline",
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    prompt_template: str | None = None,
    archive: ArchiveParam = None,
    text_check_attempts: int = 0,
) -> CostEstimate:
    """The expected cost of requests (ImageRequest / EditRequest), or of a batch's prompts
    (a list or a prompt file, read as `batch_generate` reads it), on one provider.

    Each request is priced from the credentials block's `price_per_image`, else the
    provider's documented price (gptimage2.ai), token table (OpenAI) or nothing (offline);
    the others are unknown, and the estimate says so. Rows a batch would refuse are left out
    and noted. The estimate assumes nothing is archived yet. A prompt file on the archive's
    store (`archive`: a block, a saved block's name or a URL) is read with its storage options.
    `text_check_attempts` (a run with text_check='remake') adds what every remake could cost
    (`at_most`, and a note).
    """
    if requests is not None and prompts is not None:
        raise InvalidRequest("estimate_cost: pass requests or prompts, not both")
    if requests is None and prompts is None:
        raise InvalidRequest("estimate_cost: pass requests or prompts", field="prompts")
    spec, note = await _priced_as(provider)
    # a route prices each request at the member it would pick first
    estimate = await _priced(
        planner_of(spec), requests, prompts, size, quality, output_format, prompt_template, archive
    )
    if note:
        estimate = estimate.model_copy(update={"notes": [*estimate.notes, note]})
    return estimate.with_remakes(text_check_attempts)


async def _priced_as(provider: ProviderParam) -> tuple[Seller | Route, str]:
    """What prices the requests, and a note when it is not the provider as given."""
    try:
        return await resolve_provider(provider), ""
    except UnusableBlock as exc:
        # A saved block whose key was blanked still says which provider it is for: price at
        # that provider's documented figures, and say why (a run would refuse it).
        unkeyed = unkeyed_block(exc.provider_name) if exc.provider_name else None
        if unkeyed is None:
            raise
        return seller_of(unkeyed), (
            f"{str(exc).removeprefix('provider: ')}; priced at {exc.provider_name}'s "
            "documented prices (not any price_per_image of its own), and a run would refuse it"
        )
    except InvalidRequest:
        # A bare provider name prices with its documented figures: no key needed to ask.
        unkeyed = unkeyed_block(provider.strip()) if isinstance(provider, str) else None
        if unkeyed is None:
            raise
        return seller_of(unkeyed), ""


async def _priced(
    adapter: Pricer,
    requests: ImageRequest | Sequence[ImageRequest] | None,
    prompts: PromptsParam | None,
    size: str | None,
    quality: Quality | None,
    output_format: OutputFormat | None,
    prompt_template: str | None,
    archive: ArchiveParam,
) -> CostEstimate:
    if isinstance(requests, ImageRequest):
        return estimate_requests(adapter, [requests])
    if requests is not None:
        return estimate_requests(adapter, list(requests))
    assert prompts is not None
    defaults = {"size": size, "quality": quality, "output_format": output_format}
    store = await resolve_archive(archive) if archive is not None else None
    rows = await asyncio.to_thread(read_prompts, prompts, read_rules(store))
    return estimate_rows(adapter, rows, defaults, prompt_template)
