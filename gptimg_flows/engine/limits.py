"""Provider limits held by the Prefect server, so they hold across every worker and machine:
a global concurrency limit on running jobs, and a decaying one on submits per second."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit

from gptimg_flows.blocks.credentials import ProviderCredentials, ProviderSpec
from gptimg_flows.errors import InvalidRequest


@contextlib.asynccontextmanager
async def provider_slot(spec: ProviderSpec) -> AsyncIterator[None]:
    """Hold one slot of the block's global concurrency limit while a job runs.

    The limit lives on the Prefect server, so it holds across every worker and machine. A
    named limit that does not exist is an error, not a silent "unlimited".
    """
    name = spec.concurrency_limit if isinstance(spec, ProviderCredentials) else None
    if not name:
        yield
        return
    try:
        async with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise InvalidRequest(
            f"concurrency limit {name!r} cannot be used ({exc}); create it with "
            f"`prefect gcl create {name} --limit K`",
            field="concurrency_limit",
        ) from None


async def submit_allowance(spec: ProviderSpec) -> None:
    """Wait for the block's rate limit (a decaying global limit) before a paid submit."""
    name = spec.rate_limit if isinstance(spec, ProviderCredentials) else None
    if not name:
        return
    try:
        await rate_limit(name, occupy=1, strict=True)
    except ConcurrencySlotAcquisitionError as exc:
        raise InvalidRequest(
            f"rate limit {name!r} cannot be used ({exc}); create it with "
            f"`prefect gcl create {name} --limit N --slot-decay-per-second R`",
            field="rate_limit",
        ) from None
