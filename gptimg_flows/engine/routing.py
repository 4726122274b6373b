"""One request through a route: which member makes it, and when it moves on.

- Candidates are the members whose own checks accept the request (a mask only where masks
  are taken, a size only where it is allowed); none accepting is refused before anything is
  paid, naming each member's reason.
- `order` takes the first healthy candidate, `cheapest` the lowest estimate in USD (through
  `usd_per_unit`; a member with no price or conversion after those with one). A member whose
  rate limit would keep the request waiting longer than `spill_after_seconds` passes it on.
- A request moves on only while nothing can have been paid (`errors.can_move_on`). The key is
  the route's (`records.route_key`), the same for every member, so its one claim stops two
  members being paid, and its job record names the member: once submitted, a request stays
  with that member for life (polls, downloads, resumes and re-runs).
- Failures there count against the member's account (route_health): K in a row, or over half
  in a window, cool it down; after the cooldown one probe goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prefect.logging import get_run_logger

from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.route import Member, Route
from gptimg_flows.engine import route_health as health
from gptimg_flows.engine.job_record import NO_PAYING, State, recorded
from gptimg_flows.engine.pacing import ROUTED_SUBMIT, RoutedSubmit, account_limiter
from gptimg_flows.engine.records import request_key, route_key
from gptimg_flows.engine.refresh import point_to_newest, remade_key, with_newest
from gptimg_flows.engine.spending import Hold, hold_spend
from gptimg_flows.engine.steps import make_images_for, past_live_claim, upload_inputs
from gptimg_flows.errors import (
    BudgetExceeded,
    InvalidRequest,
    ProviderError,
    RateLimited,
    RoutedElsewhere,
    ServerError,
    can_move_on,
)
from gptimg_flows.models import ArchivedImage, EditRequest, ImageRequest, InputImage
from gptimg_flows.providers.base import Provider
from gptimg_flows.spend.prices import Budget, Price

USD = "usd"


# -- pricing and checks across members -----------------------------------------------------


def usd_rate(member: Member, adapter: Provider) -> float | None:
    """USD for one of the member's cost units: 1 for USD providers, else the block's
    `usd_per_unit`, else None (not comparable)."""
    if adapter.cost_unit == USD:
        return 1.0
    return member.usd_per_unit


def amount_in(amount: float, adapter: Provider, unit: str, rate: float | None) -> float | None:
    """A member's bill in the route's budget unit (None: not convertible)."""
    if adapter.cost_unit == unit:
        return amount
    return round(amount * rate, 9) if unit == USD and rate is not None else None


def in_unit(price: Price, unit: str, rate: float | None, member: str) -> Price:
    """`price` in the route's budget unit (its own, or USD through the member's rate)."""
    if price.unit == unit or price.amount is None:
        return price
    if unit == USD and rate is not None:
        return price.model_copy(update={"amount": round(price.amount * rate, 9), "unit": USD})
    return Price(
        amount=None,
        unit=unit,
        basis="unknown",
        note=(
            f"route member {member!r} prices in {price.unit}: set `usd_per_unit` on its "
            f"credentials block to compare it in {unit}"
        ),
    )


@dataclass(frozen=True)
class RoutePlanner:
    """A route seen as one provider by the flows' checks and budgets (estimates.Pricer)."""

    route: Route

    @property
    def cost_unit(self) -> str:
        """The members' unit when they share one, else USD."""
        units = {m.adapter.cost_unit for m in self.route.members}
        return units.pop() if len(units) == 1 else USD

    def validate(self, request: ImageRequest) -> None:
        candidates(self.route, request)

    def price(self, request: ImageRequest) -> Price:
        """What the member the strategy would pick first charges (in `cost_unit`)."""
        first = candidates(self.route, request)[0]
        adapter = first.adapter
        return in_unit(adapter.price(request), self.cost_unit, usd_rate(first, adapter), first.name)

    def keys(self, request: ImageRequest, digests: list[str], slot: str) -> list[str]:
        """Where a request's images or job may already be recorded: the route's key, then
        each member's own (sent there before the provider became a route)."""
        own = [request_key(m.adapter, request, digests, slot) for m in self.route.members]
        return [route_key(request, digests, slot), *dict.fromkeys(own)]

    def member_of_key(
        self, key: str, request: ImageRequest, digests: list[str], slot: str
    ) -> str | None:
        """The member whose own key `key` is (the first, where two share a provider)."""
        for member in self.route.members:
            if request_key(member.adapter, request, digests, slot) == key:
                return member.name
        return None


def candidates(route: Route, request: ImageRequest) -> list[Member]:
    """The members that can make `request`, in the strategy's order; InvalidRequest (naming
    each member's reason) when none can."""
    able: list[Member] = []
    reasons: list[str] = []
    for member in route.members:
        try:
            member.adapter.validate(request)
        except InvalidRequest as exc:
            reasons.append(f"{member.name}: {exc}")
            continue
        able.append(member)
    if not able:
        raise InvalidRequest(
            f"no member of route {route.name!r} can make this request (" + "; ".join(reasons) + ")",
            field="provider",
        )
    if route.policy.strategy == "cheapest":
        able.sort(key=lambda member: _usd_of(member, request))
    return able


def _usd_of(member: Member, request: ImageRequest) -> tuple[int, float]:
    """Sort key: members with a known USD price for the request first, cheapest first."""
    adapter = member.adapter
    price = adapter.price(request)
    rate = usd_rate(member, adapter)
    if price.amount is None or rate is None:
        return (1, 0.0)
    return (0, price.amount * rate)


# -- one request ---------------------------------------------------------------------------


@dataclass
class Prepared:
    """What a request carries to whichever member makes it."""

    loaded: list[InputImage]
    mask: InputImage | None
    digests: list[str]
    parents: list[str]


async def produce_routed(
    route: Route,
    request: ImageRequest,
    archive: Archive,
    prepared: Prepared,
    *,
    slot: str,
    refresh: bool,
    timeout_seconds: float,
    extra: dict[str, Any] | None,
    row: int | None,
    budget: Budget | None,
    base_slot: str | None = None,
    remake_uncertain: bool = False,
) -> list[ArchivedImage]:
    """The request made by one member of the route (see the module docstring)."""
    logger = get_run_logger()
    able = candidates(route, request)
    planner = RoutePlanner(route)
    keys = planner.keys(request, prepared.digests, slot)
    key = keys[0]  # the route's own: what it claims and records under
    base = route_key(request, prepared.digests, slot if base_slot is None else base_slot)
    found = await recorded(archive, keys if refresh else await with_newest(archive, keys))
    while remake_uncertain and found.state is State.UNCERTAIN:
        logger.info("this request's submit is uncertain: making it again (remake_uncertain)")
        key = remade_key(found)
        found = await recorded(archive, [key])
    if found.state is State.ARCHIVED and found.images:
        logger.info(
            "%d image(s) for this request are already archived: no provider call",
            len(found.images),
        )
        await point_to_newest(archive, base, found.key)
        answered = [img.model_copy(update={"from_archive": True}) for img in found.images]
        _count_images(route, answered)
        return answered
    found = await past_live_claim(archive, found)
    held_by = found.member if found.key == key else None
    if found.key != key and found.state in NO_PAYING:
        # Recorded under a member's own key (sent there before the provider became a route):
        # it stays with that member, under that key.
        held_by = planner.member_of_key(found.key, request, prepared.digests, slot)
        key = found.key
    moved_from: dict[str, BaseException] = {}
    spilled: set[str] = set()
    deadline = time.monotonic() + timeout_seconds
    while True:
        if held_by is not None:
            member = route.member(held_by)
            if member is None:
                raise InvalidRequest(
                    f"this request was submitted to {held_by!r}, which route {route.name!r} "
                    "no longer lists: add it back to collect the images (nothing is paid again)",
                    field="provider",
                )
            wait: float | None = None
            may_move = False
        else:
            member, wait = await _pick(route, able, request, moved_from, spilled, deadline)
            may_move = len([m for m in able if m.name not in moved_from]) > 1
        try:
            made = await _attempt(
                member,
                planner.cost_unit,
                request,
                archive,
                prepared,
                key,
                timeout_seconds=timeout_seconds,
                extra=extra,
                row=row,
                budget=budget,
                wait=wait,
                may_move=may_move,
                resumed=held_by is not None,
                route=route,
            )
        except RoutedElsewhere as exc:
            held_by = exc.member
            continue
        except ProviderError as exc:
            if held_by is not None or not can_move_on(exc):
                raise
            stats = health.run_stats(health.run_id(), member.name)
            if isinstance(exc, RateLimited):
                if wait is None:
                    raise  # it waited as long as its block allows: every member was full
                spilled.add(member.name)
                health.count(stats, spills=1)
                logger.info(
                    "route %s: %s is at its rate limit; passing this request on",
                    route.name,
                    member.name,
                )
            else:
                moved_from[member.name] = exc
                health.count(stats, failovers=1)
                logger.warning(
                    "route %s: failing over from %s (%s: %s); it said nothing was made there",
                    route.name,
                    member.name,
                    type(exc).__name__,
                    exc.message,
                )
            if all(m.name in moved_from for m in able):
                raise
            continue
        _count_images(route, made)
        await point_to_newest(archive, base, key)
        return made


async def _pick(
    route: Route,
    able: list[Member],
    request: ImageRequest,
    moved_from: dict[str, BaseException],
    spilled: set[str],
    deadline: float,
) -> tuple[Member, float | None]:
    """The member to try next and how long its rate limit may keep the request (None: as
    long as its block allows). Waits while every candidate is cooling down."""
    policy = route.policy
    while True:
        now = time.monotonic()
        left = [m for m in able if m.name not in moved_from]
        ready = [m for m in left if health.available(_account(m), now)]
        if ready:
            waits = {m.name: _expected_wait(m, request.n, now) for m in ready}
            fresh = [m for m in ready if m.name not in spilled]
            prompt = [m for m in fresh if waits[m.name] <= policy.spill_after_seconds]
            choice = prompt[0] if prompt else min(ready, key=lambda m: waits[m.name])
            wait: float | None = None  # every one is full: the soonest, as long as it allows
            if prompt and len(ready) > 1:
                # Room now: a short leash, so a limit slower than it looked passes it on.
                wait = waits[choice.name] + policy.spill_after_seconds
            if health.take(_account(choice), now):
                return choice, wait
            continue  # another request took its probe meanwhile: choose again
        until = min(health.cooling_until(_account(m)) for m in left)
        if now >= deadline:
            raise ServerError(
                f"every member of route {route.name!r} that can make this request is cooling "
                "down after failures, and the run's timeout_seconds has passed (nothing was "
                "paid for it)",
                provider=route.name,
            )
        await asyncio.sleep(min(max(until - now, 0.05), 1.0, max(deadline - now, 0.05)))


async def _attempt(
    member: Member,
    unit: str,
    request: ImageRequest,
    archive: Archive,
    prepared: Prepared,
    key: str,
    *,
    timeout_seconds: float,
    extra: dict[str, Any] | None,
    row: int | None,
    budget: Budget | None,
    wait: float | None,
    may_move: bool,
    resumed: bool,
    route: Route,
) -> list[ArchivedImage]:
    """One member's try: budget, spend limit, inputs, then make_images under the route key.
    A resumed job (already on record) takes nothing from the spend limit again."""
    adapter = member.adapter
    account = _account(member)
    rate = usd_rate(member, adapter)
    price = adapter.price(request)
    hold: Hold | None = None
    stats = health.run_stats(health.run_id(), member.name)
    paid = False
    try:
        # Inside the try: a refusal here still ends a probe. The run's budget refused stays
        # refused; the member's own spend limit (unpaid) lets another member make it.
        hold = await hold_spend(
            member.spec,
            price,
            budget,
            budget_price=in_unit(price, unit, rate, member.name),
            take=not resumed,
        )
        inputs = (
            await upload_inputs(member, request, prepared.loaded, prepared.mask, archive)
            if isinstance(request, EditRequest)
            else None
        )
        with _promised(account, request.n, wait):
            archived: list[ArchivedImage] = await make_images_for(member, may_move=may_move)(
                member,
                request,
                inputs,
                key,
                archive,
                prepared.parents,
                extra,
                timeout_seconds,
                row,
                member.name,
            )
        paid = True
    except BaseException as exc:
        now = time.monotonic()
        unpaid = isinstance(exc, ProviderError) and exc.unpaid
        if hold is not None:
            await hold.follow(exc, archive, key)  # given back if nothing was created, else kept
        if can_move_on(exc) and not isinstance(exc, RateLimited | BudgetExceeded):
            if health.failed(account, now, route.policy):
                health.count(stats, cooldowns=1)
                get_run_logger().warning(
                    "route %s: %s cools down for %g s after repeated failures",
                    route.name,
                    member.name,
                    route.policy.cooldown_seconds,
                )
        elif isinstance(exc, ProviderError) and not unpaid and not _before_sending(exc):
            health.succeeded(account, now, route.policy)  # it took the job: the seller is up
        else:
            health.released(account)  # no word about the seller: another request may probe
        raise
    finally:
        if paid:
            health.succeeded(account, time.monotonic(), route.policy)
    mine = [i for i in archived if not i.from_archive]
    costs = [i.cost for i in mine if i.cost is not None]
    billed = sum(costs) if costs or not mine else None
    assert hold is not None
    await hold.settle(None if billed is None else amount_in(billed, adapter, unit, rate), billed)
    return archived


def _before_sending(exc: ProviderError) -> bool:
    """Refused on our side before anything reached the seller (a budget, a bad request)."""
    return isinstance(exc, BudgetExceeded | InvalidRequest)


@contextlib.contextmanager
def _promised(account: str, images: int, wait: float | None) -> Iterator[None]:
    """The request counts against the member's limiter from its choice until its turn."""
    health.promise(account, images)
    done = False

    def turn() -> None:
        nonlocal done
        if not done:
            done = True
            health.unpromise(account, images)

    token = ROUTED_SUBMIT.set(RoutedSubmit(on_turn=turn, wait_seconds=wait))
    try:
        yield
    finally:
        ROUTED_SUBMIT.reset(token)
        turn()


def _expected_wait(member: Member, n: int, now: float) -> float:
    adapter = member.adapter
    limiter = account_limiter(member.spec, adapter)
    return limiter.expected_wait(n, now, ahead=health.promised(adapter.account))


def _account(member: Member) -> str:
    return member.adapter.account


def _count_images(route: Route, images: list[ArchivedImage]) -> None:
    for name in {img.member for img in images if img.member}:
        member = route.member(name)
        mine = [i for i in images if i.member == name]
        paid = [i for i in mine if not i.from_archive]
        costs = [i.cost for i in paid if i.cost is not None]
        cost = sum(costs) if costs else None
        rate = None
        if member is not None and cost is not None:
            rate = usd_rate(member, member.adapter)
        health.record_images(
            health.run_stats(health.run_id(), name),
            len(paid),
            len(mine) - len(paid),
            cost,
            paid[0].cost_unit if paid else None,
            None if cost is None or rate is None else cost * rate,
        )
