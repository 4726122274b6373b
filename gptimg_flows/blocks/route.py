"""A route: several sellers of GPT Image 2 used as one provider. The saved block a deployment
names (`ProviderRoute`), and what a flow runs once it is resolved (`Route`): its members in
order, each under the name sidecars, artifacts and the spend report show, and the policy that
picks among them. The decisions themselves are engine/routing.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field

from gptimg_flows.blocks.seller import Seller

_DOCS = "https://github.com/gptimg-flows/gptimg-flows#routes"

Strategy = Literal["order", "cheapest"]


class PolicyFields(BaseModel):
    """How a route picks a member and when it stops sending one work (the saved block's
    fields, and the policy a resolved route runs)."""

    strategy: Strategy = Field(
        default="order",
        description=(
            "order: the first healthy member that can make the request; cheapest: the lowest "
            "estimate per image in USD (members priced in credits need `usd_per_unit` on "
            "their block; a member with no price or conversion goes after those with one)."
        ),
    )
    failures_to_cool: int = Field(
        default=3,
        ge=1,
        description="A member whose submits fail this many times in a row cools down.",
    )
    failure_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "... or whose submits fail more than this share of the time over window_seconds "
            "(once at least 4 were tried there)."
        ),
    )
    window_seconds: float = Field(default=60.0, gt=0)
    cooldown_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a member gets no work after it cooled down; then one probe.",
    )
    spill_after_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "A member whose rate limit would keep a request waiting longer than this sends it "
            "to the next member instead (a route's throughput is the sum of its members')."
        ),
    )


class _Members(BaseModel):
    """A route's members (first in the block's form)."""

    providers: list[str] = Field(
        min_length=1,
        description=(
            "Saved credentials block names (or 'offline'), in order of preference: each one a "
            "member of the route."
        ),
    )


class ProviderRoute(Block, PolicyFields, _Members):
    """Several credentials blocks as one provider: `provider: content-route` in a deployment.

    Example:
        ```python
        from gptimg_flows import ProviderRoute
        ProviderRoute(providers=["runware-prod", "scenario-prod"], strategy="cheapest").save(
            "content-route"
        )
        ```
    """

    _block_type_name = "GPT Image Provider Route"
    _block_type_slug = "gptimg-provider-route"
    _documentation_url = _DOCS  # type: ignore[assignment]
    _description = "Route each image request to one of several GPT Image 2 providers."

    def policy(self) -> RoutePolicy:
        return RoutePolicy(**{f: getattr(self, f) for f in RoutePolicy.model_fields})


class RoutePolicy(PolicyFields):
    model_config = ConfigDict(frozen=True)


#: One seller in a route: its name (a saved block's, `offline`, or the provider's for an
#: unsaved block), what it resolved to and its adapter.
Member = Seller


@dataclass(frozen=True)
class Route:
    """A resolved route: what `produce` is handed instead of one provider."""

    name: str
    members: tuple[Seller, ...]
    policy: RoutePolicy
    #: the saved ProviderRoute block it was loaded from (what a chunk run on another worker
    #: loads), or None for a list given in the call
    saved: str | None = None

    def member(self, name: str) -> Seller | None:
        return next((m for m in self.members if m.name == name), None)
