"""What a process knows about each route member's account: failures in a row and over a window,
cooldowns and their probe, and the images promised to its rate limiter but not queued there
yet. Plus what each flow run's routes did (images, failovers, spills, cooldowns, cost per
member), for its artifact and logs. It reads no provider JSON and asks Prefect only which
flow run it is in; time is passed in.

Why per account, not per route: two routes (or two runs) sending to one seller see the same
outage, and the same limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from gptimg_flows.blocks.route import RoutePolicy

#: A failure ratio needs at least this many submits in the window to be believed.
MIN_WINDOW_SUBMITS = 4


@dataclass
class Health:
    """One member account's recent submits (True: went through) and cooldown."""

    in_a_row: int = 0
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    cooled_until: float = 0.0
    #: after a cooldown, one request (the probe) goes first; the rest wait for its answer
    needs_probe: bool = False
    probing: bool = False
    cooldowns: int = 0
    #: images routed here whose submit has not reached the account's limiter yet
    promised: int = 0


_HEALTH: dict[str, Health] = {}
_LOCK = threading.Lock()


def _of(account: str) -> Health:
    health = _HEALTH.get(account)
    if health is None:
        health = _HEALTH[account] = Health()
    return health


def available(account: str, now: float) -> bool:
    """May a request be sent here now (not cooling, and no probe already in flight)?"""
    with _LOCK:
        health = _of(account)
        return now >= health.cooled_until and not (health.needs_probe and health.probing)


def cooling_until(account: str) -> float:
    with _LOCK:
        return _of(account).cooled_until


def take(account: str, now: float) -> bool:
    """Claim a place here for one request; after a cooldown that request is the probe.
    False if another request took the probe meanwhile (or it is cooling)."""
    with _LOCK:
        health = _of(account)
        if now < health.cooled_until or (health.needs_probe and health.probing):
            return False
        if health.needs_probe:
            health.probing = True
        return True


def succeeded(account: str, now: float, policy: RoutePolicy) -> None:
    with _LOCK:
        health = _of(account)
        health.in_a_row = 0
        health.needs_probe = health.probing = False
        _note(health, now, True, policy)


def failed(account: str, now: float, policy: RoutePolicy) -> bool:
    """A submit there failed for the seller's sake (down, refusing the account). Returns
    True when this failure started a cooldown."""
    with _LOCK:
        health = _of(account)
        health.in_a_row += 1
        _note(health, now, False, policy)
        fails = sum(1 for _, ok in health.recent if not ok)
        too_many = len(health.recent) >= MIN_WINDOW_SUBMITS and (
            fails / len(health.recent) > policy.failure_ratio
        )
        if not (health.probing or health.in_a_row >= policy.failures_to_cool or too_many):
            return False
        health.cooled_until = now + policy.cooldown_seconds
        health.needs_probe, health.probing = True, False
        health.in_a_row = 0
        health.recent.clear()
        health.cooldowns += 1
        return True


def released(account: str) -> None:
    """The probe ended without an answer about the seller (e.g. refused by a budget): let
    another request probe."""
    with _LOCK:
        _of(account).probing = False


def _note(health: Health, now: float, ok: bool, policy: RoutePolicy) -> None:
    health.recent.append((now, ok))
    while health.recent and health.recent[0][0] < now - policy.window_seconds:
        health.recent.popleft()


def promise(account: str, images: int) -> None:
    with _LOCK:
        _of(account).promised += images


def unpromise(account: str, images: int) -> None:
    with _LOCK:
        health = _of(account)
        health.promised = max(0, health.promised - images)


def promised(account: str) -> int:
    with _LOCK:
        return _of(account).promised


def forget_health() -> None:
    """Tests: start again from nothing known."""
    with _LOCK:
        _HEALTH.clear()


# -- what each run's routes did --------------------------------------------------------------


@dataclass
class MemberStats:
    """One member's part in one flow run."""

    images: int = 0
    from_archive: int = 0
    failovers: int = 0  # requests moved away from it (it was down or refused the account)
    spills: int = 0  # requests moved away because its rate limit was full
    cooldowns: int = 0  # cooldowns this run's failures started
    cost: dict[str, float] = field(default_factory=dict)
    usd: float | None = 0.0  # None once a cost could not be converted


#: Flow runs whose stats are kept (a worker serving runs for months must not grow for ever).
KEPT_RUNS = 1000
_RUNS: OrderedDict[Any, dict[str, MemberStats]] = OrderedDict()


def run_id() -> Any:
    """The current flow run's id (None outside one): what stats are kept under."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def run_stats(run: Any, member: str) -> MemberStats:
    with _LOCK:
        members = _RUNS.setdefault(run, {})
        _RUNS.move_to_end(run)
        while len(_RUNS) > KEPT_RUNS:
            _RUNS.popitem(last=False)
        return members.setdefault(member, MemberStats())


def stats_of(run: Any) -> dict[str, MemberStats]:
    with _LOCK:
        return dict(_RUNS.get(run, {}))


def route_moves(run: Any = None) -> dict[str, int]:
    """A run's requests moved between a route's members, summed (BatchResult's fields): to
    another member because one was down or refused (`route_failovers`), or because its rate
    limit was full (`route_spills`)."""
    members = stats_of(run if run is not None else run_id()).values()
    return {
        "route_failovers": sum(m.failovers for m in members),
        "route_spills": sum(m.spills for m in members),
    }


def record_images(
    stats: MemberStats,
    paid: int,
    answered: int,
    cost: float | None,
    unit: str | None,
    usd: float | None,
) -> None:
    with _LOCK:
        stats.images += paid
        stats.from_archive += answered
        if cost is not None and unit:
            stats.cost[unit] = round(stats.cost.get(unit, 0.0) + cost, 6)
        if cost is not None and stats.usd is not None:
            stats.usd = None if usd is None else round(stats.usd + usd, 6)


def count(stats: MemberStats, *, failovers: int = 0, spills: int = 0, cooldowns: int = 0) -> None:
    with _LOCK:
        stats.failovers += failovers
        stats.spills += spills
        stats.cooldowns += cooldowns
