"""One limiter per provider account in a process: paces paid submits at the rate the account
allows, learned from what the provider says. No Prefect, no provider JSON.

Why a limiter of our own: a provider's 429 on a submit created nothing and cost nothing, so it
is not a failure, but letting `concurrency` submits race into a limit wastes every refusal and,
with Prefect's task retries, used to lose rows. The limiter:
- starts from a known rate when one is given (a block's `images_per_minute`) or told
  (`x-ratelimit-limit-requests`, a per-minute figure, is a ceiling it never passes);
- otherwise sends freely until the first 429, then paces: a multiplicative decrease on a 429
  (once per pace, so refusals already in flight count once), not below the rate it measured
  getting through, and a gentle increase with every submit sent while others wait;
- keeps a refused submit back for its Retry-After (the floor of its wait), then lets it go
  first; the others wait one interval of the new pace, or the whole Retry-After when that is
  long against the pace (a window that resets rather than a bucket that refills);
- lets submits go one at a time in FIFO order, so no row waits much longer than its place in
  the queue, and a change of pace applies at once to everyone waiting;
- never holds anything longer than `max_hold` (a block's `max_retry_after_seconds`): a 429
  asking for an hour, or for 1e9 s, must not stop an account for the rest of the process;
- shares what it learned with the other processes on the same account (`sync` with a
  `SharedPace` kept elsewhere, engine/shared_pace.py): one pace for the account, cut once per
  congestion whoever met it, and each process sending its share of it (in proportion to the
  submits it has waiting), so two processes do not each learn the limit alone (one starved
  by the other, then slow once alone).

Time is passed in (`clock`), so tests can run it fast. Thread-safe: flow runs of one process
may run on several event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gptimg_flows.errors import RateLimited
from gptimg_flows.media.headers import RETRY_AFTER_CAP

T = TypeVar("T")

#: A 429 without Retry-After keeps its submit back this long (seconds).
DEFAULT_HOLD = 1.0
#: The slowest pace the limiter falls to without being told (images per second): 1 a minute.
MIN_RATE = 1 / 60
#: Fraction of the pace kept on a 429 (multiplicative decrease) ...
DECREASE = 0.7
#: ... unless the rate measured getting through is higher, up to this fraction of the pace.
FLOOR_OF_PACE = 0.95
#: A Retry-After this many intervals of the pace (or more) holds every submit of the account.
HOLD_ALL_INTERVALS = 8.0
#: Growth of the pace per image sent while others wait, as a fraction of the pace: faster
#: before the first decrease (finding the rate from a low first guess, e.g. a whole-second
#: Retry-After from a bucket that refills 5 times a second), gentle after.
GROWTH_FINDING = 0.2
GROWTH_STEADY = 0.01
#: After a decrease the pace also regains this share of its ceiling (or best pace) a second
#: of sending, counted over at most RECOVERY_STEP_SECONDS between two sends.
RECOVERY_PER_SECOND = 0.01
RECOVERY_STEP_SECONDS = 5.0
#: Images that got through, kept to measure the rate the account delivers (seconds).
WINDOW_SECONDS = 20.0
#: A measured rate needs at least this long a window and this many images to be believed.
MIN_WINDOW_SECONDS = 4.0
MIN_WINDOW_IMAGES = 4
#: Another process counts for its share while it said it was sending this recently (s) ...
MEMBER_STALE_SECONDS = 5.0
#: ... and a pace nobody has kept up to date for this long is an old guess, not news (s).
SHARED_FRESH_SECONDS = 120.0


@dataclass
class SharedPace:
    """What the processes pacing one account tell each other: the account's pace (images/s
    for all of them together), the fastest pace a 429 has cut, when a 429 last cut it and
    until when a long Retry-After holds every submit (wall clock, seconds), and who is
    sending with how many submits waiting. Plain JSON, so any store can keep it."""

    rate: float | None = None
    peak: float = 0.0
    cut_at: float = 0.0
    hold_until: float = 0.0
    updated: float = 0.0
    #: member -> (last seen, wall clock; submits waiting)
    members: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "peak": self.peak,
            "cut_at": self.cut_at,
            "hold_until": self.hold_until,
            "updated": self.updated,
            "members": {m: [seen, waiting] for m, (seen, waiting) in self.members.items()},
        }

    @classmethod
    def from_json(cls, value: object) -> SharedPace:
        """Whatever is stored, read leniently: a value this code cannot read is no news."""
        if not isinstance(value, dict):
            return cls()
        try:
            members = {
                str(m): (float(v[0]), int(v[1])) for m, v in dict(value.get("members", {})).items()
            }
            rate = value.get("rate")
            return cls(
                rate=float(rate) if rate is not None and float(rate) > 0 else None,
                peak=float(value.get("peak", 0.0)),
                cut_at=float(value.get("cut_at", 0.0)),
                hold_until=float(value.get("hold_until", 0.0)),
                updated=float(value.get("updated", 0.0)),
                members=members,
            )
        except (TypeError, ValueError, IndexError):
            return cls()


@dataclass(frozen=True)
class Ticket:
    """A submit let go, and the pace it went under (a 429 decreases a pace once)."""

    epoch: int
    n: int
    #: sent under a pace (False: before any limit was known, e.g. a first burst)
    paced: bool = True


@dataclass
class TrafficStats:
    """What one account's limiter did: refused submits and time spent waiting."""

    refused: int = 0
    waited_seconds: float = 0.0


class _Waiter:
    """One submit in the queue; woken (from any thread) when the head may have changed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed meanwhile
            self.loop.call_soon_threadsafe(self.event.set)


@dataclass
class AccountLimiter:
    """The pace of one account's paid submits (see the module docstring)."""

    name: str
    images_per_minute: float | None = None
    #: the account's id (account_id): where other processes on it can be found
    account: str = ""
    #: the longest any 429 holds this account's submits or reads (seconds)
    max_hold: float = RETRY_AFTER_CAP
    #: images/s never to pass (a block's images_per_minute, or the provider's own figure)
    ceiling: float | None = None
    #: images/s being paced at; None: not pacing (no limit known, no 429 seen)
    rate: float | None = None
    next_at: float = 0.0
    hold_until: float = 0.0
    epoch: int = 0
    decreases: int = 0
    #: the fastest pace a 429 has cut (the best known to have been tried)
    peak: float = 0.0
    _grown_at: float = 0.0
    stats: TrafficStats = field(default_factory=TrafficStats)
    last_retry_after: float | None = None
    #: Reads (polls, downloads) answered 429 hold the account's reads, not its submits.
    read_hold_until: float = 0.0
    #: this process's share of the account's pace (1.0: alone); `rate` is the account's
    share: float = 1.0
    #: submits of this process inside `paced` (waiting, or sending): it is on the account
    busy: int = 0
    #: set when a 429 cuts the pace: whoever shares it should hear at once
    cut_news: threading.Event = field(default_factory=threading.Event)
    _last_send: tuple[float, int] | None = None
    _synced_rate: float | None = None
    _synced_decreases: int = 0
    _synced_wall: float = 0.0
    _through: deque[tuple[float, int]] = field(default_factory=deque)
    _queue: deque[_Waiter] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.images_per_minute:
            self.ceiling = self.rate = self.images_per_minute / 60.0

    # -- waiting for a turn -----------------------------------------------------------------

    async def turn(
        self,
        n: int,
        *,
        first: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> Ticket:
        """Wait until this submit of `n` images may go; `first`: ahead of the queue (a refused
        submit whose Retry-After has passed)."""
        me = _Waiter(n)
        with self._lock:
            if first:
                self._queue.appendleft(me)
            else:
                self._queue.append(me)
        try:
            while True:
                with self._lock:
                    now = clock()
                    head = self._queue[0] is me
                    at = self._send_time(now) if head else math.inf
                    if head and at <= now:
                        return self._let_go(me, now)
                me.event.clear()
                if at == math.inf:
                    await me.event.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(me.event.wait(), at - now)
        finally:
            with self._lock:
                if me in self._queue:  # cancelled while waiting
                    self._queue.remove(me)
                    self._wake_head()

    def _send_time(self, now: float) -> float:
        at = max(now, self.hold_until)
        return max(at, self.next_at) if self.rate is not None else at

    def _let_go(self, me: _Waiter, now: float) -> Ticket:
        self._queue.popleft()
        if self.rate is not None:
            # A timer fires a little late: a send up to half an interval behind its schedule
            # keeps the schedule (or the pace drifts below the rate it claims); after a pause
            # the schedule starts again from now (no burst the account may not allow).
            interval = 1.0 / self._pace()
            late = now - self.next_at
            start = self.next_at if 0.0 <= late <= interval / 2 else max(now, self.next_at)
            self.next_at = start + me.n * interval
            self._last_send = (start, me.n)
            if self._queue:  # others wait: the pace may be too slow; probe a little faster
                growth = GROWTH_STEADY if self.decreases else GROWTH_FINDING
                rate = self.rate * (1.0 + growth * me.n)
                if self.decreases:
                    # ... and, in time, a share of the best pace seen: a process starved by
                    # another on the same key (or decreased by a burst) comes back in tens of
                    # seconds, not after thousands of its own slow sends.
                    since = min(now - self._grown_at, RECOVERY_STEP_SECONDS)
                    rate += RECOVERY_PER_SECOND * (self.ceiling or self.peak) * since
                self._grown_at = now
                self._set_rate(rate)
        self._wake_head()
        return Ticket(epoch=self.epoch, n=me.n, paced=self.rate is not None)

    def _wake_head(self) -> None:
        if self._queue:
            self._queue[0].wake()

    # -- what the provider said ------------------------------------------------------------

    def refused(self, ticket: Ticket, retry_after: float | None, now: float) -> float:
        """A 429 on a submit: nothing was created. Slow down once per pace; returns when the
        refused submit may go again (its Retry-After is the floor, up to `max_hold`)."""
        hold = self.hold_for(retry_after)
        with self._lock:
            self.stats.refused += 1
            self.last_retry_after = retry_after
            if self.rate is None:
                # First sign of a limit: about one image per Retry-After, or what got through.
                self._set_rate(max(1.0 / max(hold, 0.05), self._measured(now) or 0.0))
            elif ticket.epoch == self.epoch and ticket.paced:
                self.peak = max(self.peak, self.rate)
                floor = min(self.rate * FLOOR_OF_PACE, (self._measured(now) or 0.0) / self.share)
                self._set_rate(max(self.rate * DECREASE, floor))
                self.decreases += 1
                self.cut_news.set()
            else:
                return now + hold  # sent under a pace already decreased: the same congestion
            assert self.rate is not None
            interval = 1.0 / self._pace()
            everyone = hold if hold >= HOLD_ALL_INTERVALS * interval else min(hold, interval)
            self.hold_until = max(self.hold_until, now + everyone)
            self.next_at = max(self.next_at, self.hold_until)
            self.epoch += 1
            self._wake_head()
            return now + hold

    def accepted(self, ticket: Ticket, now: float) -> None:
        """A submit got through: what the account delivers is measured from these."""
        with self._lock:
            self._through.append((now, ticket.n))
            while self._through and self._through[0][0] < now - WINDOW_SECONDS:
                self._through.popleft()

    def told(self, limit_per_minute: float | None, now: float) -> None:
        """The provider's own figure (x-ratelimit-limit-requests, per minute): a ceiling, and
        the pace to start from."""
        if not limit_per_minute or limit_per_minute <= 0:
            return
        with self._lock:
            ceiling = limit_per_minute / 60.0
            if self.images_per_minute:
                ceiling = min(ceiling, self.images_per_minute / 60.0)
            if ceiling == self.ceiling:
                return
            self.ceiling = ceiling
            self.rate = ceiling if self.rate is None else min(self.rate, ceiling)
            self.next_at = max(self.next_at, now)
            self.epoch += 1  # a new pace: refusals of submits sent before it are not news
            self._wake_head()

    def read_refused(self, retry_after: float | None, now: float) -> float:
        """A 429 on a read: the account's reads wait its Retry-After (up to `max_hold`);
        returns the hold."""
        hold = self.hold_for(retry_after)
        with self._lock:
            self.read_hold_until = max(self.read_hold_until, now + hold)
        return hold

    def hold_for(self, retry_after: float | None) -> float:
        """How long a 429 holds: its Retry-After (none, or NaN: DEFAULT_HOLD), never more
        than `max_hold`, so a huge one cannot stop the account for the rest of the process."""
        if retry_after is None or math.isnan(retry_after):
            return min(DEFAULT_HOLD, self.max_hold)
        return min(self.max_hold, max(0.0, retry_after))

    def read_wait(self, now: float) -> float:
        with self._lock:
            return max(0.0, self.read_hold_until - now)

    def expected_wait(self, n: int, now: float, ahead: int = 0) -> float:
        """About how long a submit of `n` images asked for now would wait for its turn, with
        `ahead` more images promised to this account but not queued yet (a route's guess of
        where a request goes soonest)."""
        with self._lock:
            at = self._send_time(now) - now
            if self.rate is None:
                return max(0.0, at)
            queued = sum(w.n for w in self._queue) + ahead
            return max(0.0, at) + queued / self._pace()

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.stats.waited_seconds += max(0.0, seconds)

    # -- other processes on the account -----------------------------------------------------

    def sync(self, shared: SharedPace, member: str, wall: float, now: float) -> SharedPace:
        """Merge what this process learned since its last sync into the account's `shared`
        pace and take the account's pace and this process's share back; returns what to
        store. `member` names this process, `wall` and `now` are the same instant on the
        wall clock and on this limiter's clock.

        Changes merge as factors (a cut here and a probe faster there both count), but a 429
        cuts the account's pace once however many processes met it: a cut here after
        another process's cut since the last sync is the same congestion. A process joining
        takes the account's pace instead of its own first guess. A pace nobody has kept up
        for SHARED_FRESH_SECONDS is forgotten.
        """
        with self._lock:
            others = {
                m: v
                for m, v in shared.members.items()
                if m != member and wall - v[0] <= MEMBER_STALE_SECONDS
            }
            fresh = shared.rate is not None and (
                others or wall - shared.updated <= SHARED_FRESH_SECONDS
            )
            theirs = shared.rate if fresh else None
            cut_at = shared.cut_at
            mine_cut = self.decreases > self._synced_decreases
            if theirs is None:
                rate = self.rate
                if mine_cut:
                    cut_at = wall
            elif self.rate is None or self._synced_rate is None:
                rate = theirs  # joining: the account's pace beats a first guess
            elif mine_cut and shared.cut_at > self._synced_wall:
                rate = theirs  # cut there already: the same congestion
            else:
                rate = theirs * (self.rate / self._synced_rate)
                if mine_cut:
                    cut_at = wall
            if rate is not None:
                self._set_rate(rate)
                self.peak = max(self.peak, shared.peak if fresh else 0.0)
            self._synced_rate = self.rate
            self._synced_decreases = self.decreases
            self._synced_wall = wall
            # a long Retry-After met anywhere holds everyone on the account
            self.hold_until = max(self.hold_until, shared.hold_until - wall + now)
            self.next_at = max(self.next_at, self.hold_until)
            members = dict(others)
            if self.busy and self.rate is not None:
                waiting = max(1, sum(w.n for w in self._queue))
                members[member] = (wall, waiting)
                self.share = waiting / (waiting + sum(max(1, n) for _, n in others.values()))
            else:
                self.share = 1.0
            if self.rate is not None and self._last_send is not None:
                # a faster pace or a bigger share applies now, not after a send scheduled at
                # the old one (a share of 1/32 spaces sends 32 intervals apart)
                sent, n = self._last_send
                soonest = max(sent + n / self._pace(), self.hold_until)
                self.next_at = min(self.next_at, soonest)
            self._wake_head()
            return SharedPace(
                rate=self.rate if self.rate is not None else theirs,
                peak=max(self.peak, shared.peak),
                cut_at=cut_at,
                hold_until=max(shared.hold_until, self.hold_until - now + wall),
                updated=wall if self.rate is not None else shared.updated,
                members=members,
            )

    def _pace(self) -> float:
        """This process's pace: its share of the account's."""
        assert self.rate is not None
        return self.rate * self.share

    # -- helpers ---------------------------------------------------------------------------

    def _set_rate(self, rate: float) -> None:
        cap = self.ceiling if self.ceiling is not None else math.inf
        self.rate = max(MIN_RATE, min(cap, rate))

    def _measured(self, now: float) -> float | None:
        """Images a second that got through over the window, when the window says enough."""
        if len(self._through) < 2:
            return None
        span = now - self._through[0][0]
        images = sum(n for _, n in self._through) - self._through[0][1]
        if span < MIN_WINDOW_SECONDS or images < MIN_WINDOW_IMAGES:
            return None
        return images / span

    def describe(self) -> str:
        """`2.1 images/s` or `4.8 images/min` for logs and errors."""
        rate = self.rate
        if rate is None:
            return "no limit seen"
        text = f"{rate:.2g} images/s" if rate >= 1 else f"{rate * 60:.2g} images/min"
        return text if self.share >= 0.999 else f"{text}, {self.share:.0%} of it here"

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)


#: The process's limiters, one per account (provider, base URL, digest of the key).
_LIMITERS: dict[str, AccountLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(
    account: str, name: str, images_per_minute: float | None, max_hold: float | None = None
) -> AccountLimiter:
    """The account's limiter, made on first use; a block's `images_per_minute` sets its
    ceiling and its `max_retry_after_seconds` the longest hold (from then on, if the block
    changed; None leaves either as it is)."""
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(account)
        if limiter is None:
            limiter = _LIMITERS[account] = AccountLimiter(name, images_per_minute, account)
        if max_hold:
            with limiter._lock:
                limiter.max_hold = min(max_hold, RETRY_AFTER_CAP)
        if images_per_minute and limiter.images_per_minute != images_per_minute:
            with limiter._lock:
                limiter.images_per_minute = images_per_minute
                limiter.ceiling = images_per_minute / 60.0
                limiter.rate = min(limiter.rate or limiter.ceiling, limiter.ceiling)
        return limiter


def forget_limiters() -> None:
    """Drop every learned pace (tests, and a long-lived process told its limits changed)."""
    with _REGISTRY_LOCK:
        _LIMITERS.clear()


def account_id(*parts: str) -> str:
    """A stable id of an account that holds no secret: a digest of what identifies it."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


async def paced(
    limiter: AccountLimiter,
    n: int,
    send: Callable[[], Awaitable[T]],
    *,
    bound: float,
    clock: Callable[[], float] = time.monotonic,
    on_refused: Callable[[RateLimited], None] | None = None,
    on_waited: Callable[[float], None] | None = None,
) -> T:
    """`send()` (a paid submit of `n` images) when the account's pace allows, again after each
    429 (nothing was created), until it gets through or has waited `bound` seconds.

    A 429 here never reaches the task's retries: those stay for real faults. Giving up raises
    RateLimited with `gave_up` set (not retried), saying what the account allowed.
    """
    start = clock()
    sending = 0.0
    again: float | None = None
    with limiter._lock:
        limiter.busy += 1
    try:
        while True:
            if again is not None:
                delay = again - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            left = bound - (clock() - start - sending)
            try:
                ticket = await asyncio.wait_for(
                    limiter.turn(n, first=again is not None, clock=clock), max(0.0, left)
                )
            except TimeoutError:
                raise _gave_up(limiter, clock() - start - sending, bound) from None
            sent_at = clock()
            try:
                result = await send()
            except RateLimited as exc:
                now = clock()
                sending += now - sent_at
                if exc.gave_up:
                    raise
                again = limiter.refused(ticket, exc.retry_after, now)
                if on_refused is not None:
                    on_refused(exc)
                if again - start - sending > bound:
                    raise _gave_up(limiter, now - start - sending, bound) from None
                continue
            now = clock()
            sending += now - sent_at
            limiter.accepted(ticket, now)
            return result
    finally:
        with limiter._lock:
            limiter.busy -= 1
        waited = max(0.0, clock() - start - sending)
        limiter.waited(waited)
        if on_waited is not None:
            on_waited(waited)


def _gave_up(limiter: AccountLimiter, waited: float, bound: float) -> RateLimited:
    hint = (
        f"; its last Retry-After was {limiter.last_retry_after:g} s"
        if limiter.last_retry_after is not None
        else ""
    )
    return RateLimited(
        f"waited {waited:.0f} s for the account's rate limit and could not get through within "
        f"{bound:.0f} s (it allowed about {limiter.describe()} here{hint}): lower `concurrency`, "
        "raise the account's limit (its tier), set `images_per_minute` on the credentials "
        "block, or raise its `rate_limit_wait_seconds`",
        provider=limiter.name,
        gave_up=True,
    )


async def gated_read(
    limiter: AccountLimiter,
    read: Callable[[], Awaitable[T]],
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """A free read (a poll, a download) after any 429 the account's reads were given: one
    poll told to slow down slows its peers too, and leaves the submits' pace alone.

    `deadline` (on `clock`): a hold that ends after it is not waited out; RateLimited says
    so at once. A 429's Retry-After goes up capped at the account's `max_hold`, so retries
    above (in place, or Prefect's) wait no longer than the hold does.
    """
    now = clock()
    delay = limiter.read_wait(now)
    if delay > 0:
        if deadline is not None and now + delay > deadline:
            raise RateLimited(
                f"the account's reads are held {delay:.0f} s more by a 429's Retry-After, "
                f"past this read's deadline ({max(0.0, deadline - now):.0f} s away)",
                retry_after=delay,
                provider=limiter.name,
            )
        await asyncio.sleep(delay)
    try:
        return await read()
    except RateLimited as exc:
        hold = limiter.read_refused(exc.retry_after, clock())
        if exc.retry_after is not None:
            exc.retry_after = hold
        raise
