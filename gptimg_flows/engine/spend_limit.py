"""A spend limit shared by every worker: a Prefect global concurrency limit used as a bucket.

The credentials block names the limit (`spend_limit`) and the size of one slot in the
provider's cost unit (`spend_limit_unit`, e.g. 0.01 USD). Create it with the daily budget as
its limit and that budget per day as its decay, e.g. for 50 USD a day in cents:

    prefect gcl create openai-daily-spend --limit 5000 --slot-decay-per-second 0.0578704

Before each paid submit the run takes the estimate's slots from the bucket; the server holds
the count, so two workers cannot overspend together. A submit whose slots are not free within
`spend_limit_wait_seconds` is refused with BudgetExceeded (slots come back as the day passes).
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx

from gptimg_flows.blocks.credentials import ProviderCredentials, ProviderSpec
from gptimg_flows.errors import BudgetExceeded, InvalidRequest
from gptimg_flows.media.headers import parse_retry_after
from gptimg_flows.spend.prices import Price


def spend_slots(price: Price, unit: float) -> int:
    """How many slots of `unit` the estimate takes (rounded up: never under-count)."""
    assert price.amount is not None
    return slots_of(price.amount, unit)


def slots_of(amount: float, unit: float) -> int:
    """Slots of `unit` that `amount` fills (rounded up)."""
    return max(1, math.ceil(round(amount / unit, 9))) if amount > 0 else 0


async def take_spend(spec: ProviderSpec, price: Price) -> int:
    """Take this submit's estimate from the block's shared spend limit, if it names one;
    returns the slots taken (engine/spending gives them back when nothing was paid)."""
    if not isinstance(spec, ProviderCredentials) or not spec.spend_limit:
        return 0
    name = spec.spend_limit
    if price.amount is None:
        raise BudgetExceeded(
            f"spend limit {name!r} cannot be kept: {price.note or 'the cost is unknown'}"
        )
    slots = spend_slots(price, spec.spend_limit_unit)
    if slots == 0:
        return 0
    outcome = await _taken_whole(spec, slots)
    if outcome == "missing":
        raise InvalidRequest(
            f"spend limit {name!r} does not exist; create it with `prefect gcl create {name} "
            "--limit BUDGET_IN_UNITS --slot-decay-per-second BUDGET_PER_SECOND`",
            field="spend_limit",
        )
    if outcome != "taken":
        raise BudgetExceeded(
            f"spend limit {name!r} is used up: this request needs {slots} slot(s) of "
            f"{spec.spend_limit_unit:g} {price.unit} ({price.amount:g} {price.unit}, "
            f"{price.basis}) and they were not free within {spec.spend_limit_wait_seconds:g} s"
            + (" (more than the whole limit)" if outcome == "too-big" else "")
        )
    return slots


async def _taken_whole(spec: ProviderCredentials, slots: int) -> str:
    """`_increment`, never cut halfway: a run stopped while its take is on the wire (a
    Ctrl-C, a cancel) gives the slots back once the server has counted them, instead of
    leaving them held for a submit that was never sent."""
    assert spec.spend_limit is not None
    take = asyncio.ensure_future(_increment(spec.spend_limit, slots, spec.spend_limit_wait_seconds))
    try:
        return await asyncio.shield(take)
    except asyncio.CancelledError:

        async def undo() -> None:
            try:
                taken = await take
            except Exception:  # the take failed: nothing is held
                return
            if taken == "taken":
                await give_back_spend(spec, slots)

        await asyncio.shield(asyncio.ensure_future(undo()))
        raise


async def give_back_spend(spec: ProviderSpec, slots: int) -> None:
    """Return `slots` to the block's spend limit: the submit they were taken for created
    nothing (or cost less than its estimate)."""
    if slots <= 0 or not isinstance(spec, ProviderCredentials) or not spec.spend_limit:
        return
    from prefect.client.orchestration import get_client

    async with get_client() as client:  # no occupancy: a bucket's slots are spend, not time
        body = {"names": [spec.spend_limit], "slots": slots}
        await client.request("POST", "/v2/concurrency_limits/decrement", json=body)


async def _increment(name: str, slots: int, wait_seconds: float) -> str:
    """One server-side take of `slots`, retried while the server says "locked" (423) within
    `wait_seconds`: "taken", "missing", "too-big" or "full".

    Prefect's `rate_limit()` queues every acquisition through one client-side service, so a
    take that cannot fit holds up the others; a spend bucket needs a quick yes or no.
    """
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + wait_seconds
    async with get_client() as client:
        while True:
            try:
                response = await client.increment_concurrency_slots([name], slots, "rate_limit")
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code == 422:
                    return "too-big"
                if code != 423:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    return "full"
                hint = parse_retry_after(exc.response.headers)
                await asyncio.sleep(min(left, 0.5 if hint is None else max(0.05, hint)))
                continue
            return "taken" if response.json() else "missing"
