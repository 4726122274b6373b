"""`estimate_cost`: what a request or a prompt file is expected to cost, before paying.

The estimate assumes nothing is archived yet (a re-run of archived requests costs nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from gptimg_flows.blocks.credentials import provider_of
from gptimg_flows.blocks.resolve import ProviderParam, resolve_provider
from gptimg_flows.errors import InvalidRequest, ProviderError
from gptimg_flows.models import ImageRequest, OutputFormat, Quality
from gptimg_flows.providers.base import Provider
from gptimg_flows.rows import PromptsParam, check_columns, plan_rows, read_prompts
from gptimg_flows.spend.prices import CostEstimate, Price


async def estimate_cost(
    requests: ImageRequest | Sequence[ImageRequest] | None = None,
    *,
    prompts: PromptsParam | None = None,
    provider: ProviderParam = "offline",
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    prompt_template: str | None = None,
) -> CostEstimate:
    """The expected cost of requests (ImageRequest / EditRequest), or of a batch's prompts
    (a list or a prompt file, read as `batch_generate` reads it), on one provider.

    Each request is priced from the credentials block's `price_per_image`, else the
    provider's documented price (gptimage2.ai), token table (OpenAI) or nothing (offline);
    the others are unknown, and the estimate says so. Rows a batch would refuse are left out
    and noted.
    """
    adapter = provider_of(await resolve_provider(provider))
    if requests is not None and prompts is not None:
        raise InvalidRequest("estimate_cost: pass requests or prompts, not both")
    listed: list[ImageRequest] = []
    notes: list[str] = []
    if isinstance(requests, ImageRequest):
        listed = [requests]
    elif requests is not None:
        listed = list(requests)
    elif prompts is not None:
        rows = read_prompts(prompts)
        check_columns(rows, prompt_template)
        defaults = {"size": size, "quality": quality, "output_format": output_format}
        planned, refused = plan_rows(rows, defaults, prompt_template, lambda _: None)
        listed.extend(r for r in planned if r is not None)
        notes.extend(f"row {f.index} left out: {f.error}" for f in refused)
    else:
        raise InvalidRequest("estimate_cost: pass requests or prompts", field="prompts")
    estimate = CostEstimate.of([(price_of(adapter, r, notes), r.n) for r in listed])
    return estimate.model_copy(update={"notes": estimate.notes + notes})


def price_of(adapter: Provider, request: ImageRequest, notes: list[str] | None = None) -> Price:
    """One request's price, after the adapter's own checks (a refused request costs 0)."""
    try:
        adapter.validate(request)
    except ProviderError as exc:
        if notes is None:
            raise
        notes.append(f"refused, costs nothing: {exc}")
        return Price(amount=0.0, unit=adapter.capabilities.cost_unit, basis="free")
    return adapter.price(request)
