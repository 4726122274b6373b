"""The Prefect side of the per-account rate limiter: which limiter a paid submit waits for, how
long it may wait, the log lines a user sees when pacing starts and stops, and what each flow
run counted (refused submits, time spent waiting) for its artifact and result.

The limiter itself (rate_limiter.py) knows no Prefect and no provider; adapters hand their
answers' x-ratelimit figures up through `RATE_HEADERS_SINK` without knowing who listens.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from gptimg_flows.blocks.credentials import RATE_LIMIT_WAIT_SECONDS, ProviderCredentials
from gptimg_flows.engine.rate_limiter import AccountLimiter, limiter_for, paced
from gptimg_flows.engine.shared_pace import in_step
from gptimg_flows.errors import RateLimited
from gptimg_flows.providers._http import RATE_HEADERS_SINK, RateHeaders
from gptimg_flows.providers.base import Provider

T = TypeVar("T")


@dataclass
class RunTraffic:
    """What one flow run met at its providers' rate limits: refused submits, the seconds its
    submits waited summed over them (`waited_seconds`: 50 submits waiting 10 s together are
    500), and the wall time in which at least one was waiting (`held_seconds`, what a person
    reads as "the run was held back")."""

    refused: int = 0
    waited_seconds: float = 0.0
    #: disjoint (start, end) intervals on the monotonic clock, merged as they come: submits
    #: wait together, so a run keeps a handful, not one a submit
    held: list[tuple[float, float]] = field(default_factory=list)

    @property
    def held_seconds(self) -> float:
        return sum(end - start for start, end in self.held)

    def hold(self, start: float, end: float) -> None:
        merged = [(start, end)]
        for a, b in self.held:
            if b < merged[0][0] or a > merged[0][1]:
                merged.append((a, b))
            else:
                merged[0] = (min(a, merged[0][0]), max(b, merged[0][1]))
        self.held = sorted(merged)


@dataclass
class RoutedSubmit:
    """Set by a route around one member's try (engine/routing.py): told when the submit's
    turn comes (the route stops counting it as promised to the account), and how long it may
    wait for the account's limit before it spills over to another member (None: as long as
    the block allows)."""

    on_turn: Callable[[], None]
    wait_seconds: float | None = None


ROUTED_SUBMIT: contextvars.ContextVar[RoutedSubmit | None] = contextvars.ContextVar(
    "gptimg_routed_submit", default=None
)

#: Flow runs whose counts are kept: a worker serving runs for months must not grow for ever.
KEPT_RUNS = 1000
_RUNS: OrderedDict[UUID | None, RunTraffic] = OrderedDict()
_ANNOUNCED: set[int] = set()
_LOCK = threading.Lock()


def _run_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def run_traffic(run_id: UUID | None = None) -> RunTraffic:
    """This flow run's counts (a fresh zero record if it met no limit)."""
    with _LOCK:
        return _RUNS.get(run_id if run_id is not None else _run_id(), RunTraffic())


def traffic_text(traffic: RunTraffic) -> str:
    """One line for an artifact or a log: empty when the run met no limit."""
    if not traffic.refused and traffic.held_seconds < 0.5:
        return ""
    return (
        f"Rate limits: {traffic.refused} submit(s) refused with 429 (nothing paid, tried "
        f"again); the run was held back {traffic.held_seconds:.1f} s by the account's limit "
        f"({traffic.waited_seconds:.1f} s of waiting summed over its submits)"
    )


def _count(refused: int = 0, waited: float = 0.0) -> None:
    run = _run_id()
    with _LOCK:
        traffic = _RUNS.setdefault(run, RunTraffic())
        _RUNS.move_to_end(run)
        while len(_RUNS) > KEPT_RUNS:
            _RUNS.popitem(last=False)
        traffic.refused += refused
        traffic.waited_seconds += waited
        if waited > 0:
            now = time.monotonic()
            traffic.hold(now - waited, now)


def wait_bound(spec: Any, timeout_seconds: float | None) -> float:
    """The longest a submit waits for the limit: the block's, or the run's timeout if shorter."""
    bound = (
        spec.rate_limit_wait_seconds
        if isinstance(spec, ProviderCredentials)
        else RATE_LIMIT_WAIT_SECONDS
    )
    return min(bound, timeout_seconds) if timeout_seconds else bound


def account_limiter(spec: Any, adapter: Provider) -> AccountLimiter:
    """The account's limiter, told the block's known rate and longest Retry-After hold."""
    if not isinstance(spec, ProviderCredentials):
        return limiter_for(adapter.account, adapter.name, None)
    return limiter_for(
        adapter.account, adapter.name, spec.images_per_minute, spec.max_retry_after_seconds
    )


def reads_of(adapter: Provider, spec: Any = None) -> AccountLimiter:
    """The limiter whose read hold an adapter's polls and downloads respect (`spec`, when
    known, sets its longest hold)."""
    if isinstance(spec, ProviderCredentials):
        return limiter_for(adapter.account, adapter.name, None, spec.max_retry_after_seconds)
    return limiter_for(adapter.account, adapter.name, None)


def _log(message: str, *args: object) -> None:
    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        import logging

        logger = logging.getLogger("gptimg_flows.engine.pacing")
    logger.info(message, *args)


@contextlib.contextmanager
def _headers_to(limiter: AccountLimiter) -> Iterator[None]:
    def observe(figures: RateHeaders) -> None:
        if figures.limit_requests:
            limiter.told(figures.limit_requests, time.monotonic())

    token = RATE_HEADERS_SINK.set(observe)
    try:
        yield
    finally:
        RATE_HEADERS_SINK.reset(token)


async def paced_submit(
    limiter: AccountLimiter, n: int, send: Callable[[], Awaitable[T]], bound: float
) -> T:
    """`send()` (the paid call) when the account allows; 429s wait and try again (counted for
    this run's artifact), and the pacing is logged once per account when it starts and ends."""

    routed = ROUTED_SUBMIT.get()
    if routed is not None and routed.wait_seconds is not None:
        bound = min(bound, routed.wait_seconds)

    def refused(exc: RateLimited) -> None:
        _count(refused=1)
        _announce(limiter, exc)

    async def send_with_headers() -> T:
        if routed is not None:
            routed.on_turn()
        with _headers_to(limiter):
            return await send()

    def waited(seconds: float) -> None:
        if seconds > 0:
            _count(waited=seconds)
        if seconds >= 1.0 and limiter.rate is not None:
            _announce(limiter, None)

    await in_step(limiter)  # with the account's other processes, if any
    try:
        return await paced(
            limiter, n, send_with_headers, bound=bound, on_refused=refused, on_waited=waited
        )
    finally:
        if routed is not None:
            routed.on_turn()
        if limiter.waiting == 0:
            _done(limiter)


def _announce(limiter: AccountLimiter, exc: RateLimited | None) -> None:
    with _LOCK:
        if id(limiter) in _ANNOUNCED:
            return
        _ANNOUNCED.add(id(limiter))
    why = "429s" if exc is not None or limiter.stats.refused else "its known limit"
    _log("%s: %s, pacing at %s", limiter.name, why, limiter.describe())


def _done(limiter: AccountLimiter) -> None:
    with _LOCK:
        if id(limiter) not in _ANNOUNCED:
            return
        _ANNOUNCED.discard(id(limiter))
    _log(
        "%s: pacing stopped, nothing waiting (at %s; %d refused submit(s) and %.0f s of "
        "waiting in this process so far)",
        limiter.name,
        limiter.describe(),
        limiter.stats.refused,
        limiter.stats.waited_seconds,
    )
