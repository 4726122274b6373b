"""A seller: one provider as a run uses it, resolved once at the edge (a credentials block or
`offline`, the name sidecars and reports show, and its adapter) and handed down, so the engine
never turns the same block into the same adapter again (DESIGN.md: resolved once).

The adapter is the block's for the event loop the seller was made in (one connection pool a
loop); a run makes its sellers in its own loop, and a task given a plain block makes its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptimg_flows.blocks.credentials import ProviderCredentials, ProviderSpec, provider_of
from gptimg_flows.providers.base import Provider


@dataclass(frozen=True, eq=False)
class Seller:
    """One provider resolved for a run (also a route's member)."""

    name: str
    spec: ProviderSpec
    adapter: Provider = field(repr=False)

    @property
    def block(self) -> ProviderCredentials | None:
        return self.spec if isinstance(self.spec, ProviderCredentials) else None

    @property
    def usd_per_unit(self) -> float | None:
        return self.block.usd_per_unit if self.block else None

    def __repr__(self) -> str:  # never the block's fields (its secrets stay out of any log)
        return f"Seller({self.name!r})"


def member_name(spec: ProviderSpec, given: str | None) -> str:
    """A seller's shown name: the saved block's name (however it was named: `runware-prod`
    or `gptimg-runware-credentials/runware-prod`), else what the user wrote, else the
    provider's."""
    saved = getattr(spec, "_block_document_name", None)
    if isinstance(spec, ProviderCredentials) and saved:
        return str(saved)
    if given:
        return given
    return spec.provider_name if isinstance(spec, ProviderCredentials) else str(spec)


def seller_of(spec: ProviderSpec | Seller, name: str | None = None) -> Seller:
    """`spec` resolved (a Seller as it is): what a task given a plain block or `offline` uses."""
    if isinstance(spec, Seller):
        return spec
    return Seller(name or member_name(spec, None), spec, provider_of(spec))
