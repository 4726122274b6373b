"""What a paid submit takes from the budgets, and what it gives back: the one place every path
that can pay (a synchronous submit, a route member, a Batch API line) reserves money, beside the
job record's state machine (engine/job_record), whose answer decides what happens to it.

A hold takes the request's estimate from the run's `max_cost` budget and from the credentials
block's shared spend limit (a Prefect global concurrency limit used as a bucket: the daily cap
across workers). Then the answer decides:
- nothing was created (a refusal, a connection that never carried the request, a failure before
  the submit, a job record left empty): `release`, both given back in full;
- the bill is known: `settle`, the run's budget at the bill, the unused slots given back;
- anything else (a lost answer, a gateway 5xx, a job that failed after it was made): `keep`, as
  if billed, so the cap is never passed however the money went.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.credentials import ProviderCredentials, ProviderSpec
from gptimg_flows.engine.job_record import State, state_of
from gptimg_flows.engine.spend_limit import give_back_spend, slots_of, take_spend
from gptimg_flows.errors import ProviderError
from gptimg_flows.spend.prices import Budget, Price


@dataclass
class Hold:
    """One paid submit's reservation: `held` of the run's budget, `slots` of the block's limit."""

    spec: ProviderSpec
    budget: Budget | None
    held: float
    slots: int
    ended: bool = False

    async def release(self) -> None:
        """Nothing was created: everything goes back."""
        if self._end():
            if self.budget is not None:
                self.budget.settle(self.held, 0.0)
            await asyncio.shield(give_back_spend(self.spec, self.slots))

    async def settle(self, billed: float | None, billed_here: float | None = None) -> None:
        """The bill is known (`billed` in the run budget's unit, `billed_here` in the
        provider's, when they differ): the budget keeps the bill, the block's limit the slots
        the bill fills. An unknown bill keeps everything."""
        if not self._end():
            return
        if self.budget is not None:
            self.budget.settle(self.held, billed)
        own = billed if billed_here is None else billed_here
        if own is None or not isinstance(self.spec, ProviderCredentials):
            return
        used = slots_of(own, self.spec.spend_limit_unit)
        await asyncio.shield(give_back_spend(self.spec, self.slots - used))

    def keep(self) -> None:
        """The answer may have been billed: the reservation stays, as spent."""
        if self._end() and self.budget is not None:
            self.budget.settle(self.held, None)

    async def follow(self, exc: BaseException, archive: Archive, key: str) -> None:
        """After a failure: released when the provider said nothing was created, or when the
        request's job record is empty (it failed before its submit); kept otherwise."""
        if isinstance(exc, ProviderError) and exc.unpaid:
            await self.release()
            return
        try:
            found = await asyncio.shield(asyncio.to_thread(state_of, archive, key, results=False))
        except Exception:  # the record cannot be read: as if billed
            self.keep()
            return
        if found.state is State.NONE:
            await self.release()
        else:
            self.keep()

    def _end(self) -> bool:
        first, self.ended = not self.ended, True
        return first


async def hold_spend(
    spec: ProviderSpec,
    price: Price,
    budget: Budget | None,
    *,
    budget_price: Price | None = None,
    take: bool = True,
) -> Hold:
    """Reserve a paid submit's estimate: `budget_price` (the estimate in the run budget's
    unit, when it is not the provider's) from the run's budget, `price` from the block's spend
    limit unless `take` is False (a job already on record: paid before). Either refusal is
    BudgetExceeded, with nothing left held."""
    held = budget.reserve(budget_price or price) if budget is not None else 0.0
    try:
        slots = await take_spend(spec, price) if take else 0
    except BaseException as exc:
        if budget is not None:
            budget.settle(held, 0.0)
        if isinstance(exc, ProviderError):
            exc.unpaid = True  # this block's own limit: a route's other member may still pay
        raise
    return Hold(spec, budget, held, slots)
