"""What requests, or a batch's rows, are expected to cost on one provider, before paying.
No Prefect, no blocks: the caller resolves the provider and reads the prompt file.

The estimate assumes nothing is archived yet (a re-run of archived requests costs nothing). A
request the provider would refuse costs nothing and is noted, as a batch would refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gptimg_flows.errors import ProviderError
from gptimg_flows.models import ImageRequest
from gptimg_flows.rows import Row, check_columns, plan_rows
from gptimg_flows.spend.prices import CostEstimate, Price


class Pricer(Protocol):
    """What prices a request: one provider's adapter, or a route (engine/routing.py)."""

    @property
    def cost_unit(self) -> str: ...

    def validate(self, request: ImageRequest) -> None: ...

    def price(self, request: ImageRequest) -> Price: ...


def estimate_requests(adapter: Pricer, requests: Sequence[ImageRequest]) -> CostEstimate:
    """The expected cost of these requests, each priced after the adapter's own checks."""
    notes: list[str] = []
    estimate = CostEstimate.of([(price_of(adapter, r, notes), r.n) for r in requests])
    return estimate.model_copy(update={"notes": estimate.notes + notes})


def estimate_rows(
    adapter: Pricer,
    rows: list[Row],
    defaults: dict[str, Any],
    prompt_template: str | None,
) -> CostEstimate:
    """The expected cost of a batch's rows, planned as `batch_generate` plans them: rows the
    batch would refuse are left out and noted."""
    check_columns(rows, prompt_template)
    planned, refused = plan_rows(rows, defaults, prompt_template, lambda _: None)
    estimate = estimate_requests(adapter, [r for r in planned if r is not None])
    left_out = [f"row {f.index} left out: {f.error}" for f in refused]
    return estimate.model_copy(update={"notes": estimate.notes + left_out})


def price_of(adapter: Pricer, request: ImageRequest, notes: list[str] | None = None) -> Price:
    """One request's price, after the adapter's own checks (a refused request costs 0)."""
    try:
        adapter.validate(request)
    except ProviderError as exc:
        if notes is None:
            raise
        notes.append(f"refused, costs nothing: {exc}")
        return Price(amount=0.0, unit=adapter.cost_unit, basis="free")
    return adapter.price(request)
