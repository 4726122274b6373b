"""Retry timing: exponential backoff with jitter, never sooner than asked; retried reads.

Prefect's own jitter can shorten a delay below its mean, which would break a provider's
Retry-After; these delays only ever lengthen.

Two layers, one classification (`errors.is_retryable`): free, idempotent reads (a poll, a
download) are retried in place a few times by `read_with_retries`, because a flaky poll is not
worth re-entering a whole task for; whatever still fails, and every paid submit, goes to the
Prefect task retries the UI shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gptimg_flows.errors import RateLimited, RetryableError
from gptimg_flows.media.headers import RETRY_AFTER_CAP

T = TypeVar("T")

#: Attempts of one free read before its error goes up to the task's retries.
READ_ATTEMPTS = 4
READ_BASE_DELAY = 0.5
#: 429s one read waits out before its error goes up (they use no attempt).
RATE_LIMITED_READS = 20

BASE_DELAY = 1.0
MAX_DELAY = 60.0
JITTER = 0.25


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    jitter: float = JITTER,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `attempt` (0-based): base·2^attempt, capped, +0..jitter·delay.

    A provider's Retry-After is a floor: we wait at least that long (plus jitter, so that many
    clients told the same time do not all return at once), up to RETRY_AFTER_CAP however it
    reached us.
    """
    delay = float(min(cap, base * (2.0**attempt)))
    if retry_after is not None and not math.isnan(retry_after):
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    spread = float((rng or random).uniform(0.0, jitter)) * delay
    return round(delay + spread, 3)


async def read_with_retries(
    read: Callable[[], Awaitable[T]],
    *,
    attempts: int = READ_ATTEMPTS,
    base: float = READ_BASE_DELAY,
    budget: float | None = None,
    on_retry: Callable[[RetryableError, float, int], None] | None = None,
) -> T:
    """`read()`, again after a transient error, up to `attempts` times in all.

    Only for calls that cost nothing and change nothing. `budget` (seconds) stops the waiting
    early so a deadline is never overrun; `on_retry(error, delay, attempt)` lets the caller log.
    """
    loop = asyncio.get_running_loop()
    stop = None if budget is None else loop.time() + budget
    attempt = limited = 0
    while True:
        try:
            return await read()
        except RetryableError as exc:
            # A 429 is the provider asking us to slow down, not a fault: it waits as told
            # without using up an attempt (up to RATE_LIMITED_READS times).
            slow_down = isinstance(exc, RateLimited) and limited < RATE_LIMITED_READS
            hint = exc.retry_after if isinstance(exc, RateLimited) else None
            delay = backoff_delay(limited if slow_down else attempt, base=base, retry_after=hint)
            last = not slow_down and attempt == attempts - 1
            if last or (stop is not None and loop.time() + delay > stop):
                raise
            if slow_down:
                limited += 1
            else:
                attempt += 1
            if on_retry is not None:
                on_retry(exc, delay, attempt if not slow_down else limited)
            await asyncio.sleep(delay)


def poll_delays(
    *,
    first: float = 0.5,
    factor: float = 1.5,
    cap: float = 10.0,
) -> list[float]:
    """The default polling rhythm before any hint: fast at first, then backing off."""
    out, d = [], first
    while d < cap:
        out.append(round(d, 3))
        d *= factor
    out.append(cap)
    return out


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DurationEstimate:
    """How long one provider's jobs take, learned from the jobs this process has seen.

    With an estimate, the first poll is timed for when the job should be done and later ones
    follow closely (10 % of the estimate apart), so a job is noticed soon after it finishes
    with about one poll; a job running well past the estimate falls back to backing off.
    """

    #: Jobs that poll on the default rhythm while nothing is learned; the others wait for
    #: one of them to finish (up to SCOUT_WAIT s), so a first round of 1,000 jobs costs about
    #: one poll each instead of one per step of the rhythm.
    SCOUTS = 4
    SCOUT_WAIT = 30.0
    SCOUT_WAIT_MAX = 300.0

    def __init__(self) -> None:
        self.seconds: float | None = None
        self._probed_at: float | None = None
        self._first: set[asyncio.Future[None]] = set()
        self.scouting = 0

    def wants_scout(self) -> bool:
        """Nothing learned and fewer than SCOUTS jobs finding out: this job should look."""
        return self.seconds is None and self.scouting < self.SCOUTS

    def release_scout(self) -> None:
        """A scout is done; if it taught nothing (its job failed), a waiting job takes over."""
        self.scouting -= 1
        if self.seconds is None:
            self._wake()

    async def sleep(self, seconds: float) -> bool:
        """Sleep, but wake early (returning True) when the first duration is learned.

        A batch's first jobs all start before any job has finished; without this they would
        keep the slow default rhythm although a finished peer now says when to look.
        """
        if self.seconds is not None or seconds <= 0:
            await asyncio.sleep(seconds)
            return False
        learned: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first.add(learned)
        timer = asyncio.ensure_future(asyncio.sleep(seconds))
        try:
            await asyncio.wait({timer, learned}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            self._first.discard(learned)
        return learned.done() and not timer.done()

    def _wake(self) -> None:
        for waiter in list(self._first):
            with contextlib.suppress(RuntimeError):  # its event loop has closed meanwhile
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
        self._first.clear()

    def observe(self, done_at: float, running_at: float | None = None) -> None:
        """A job was seen done by a poll sent `done_at` s after its submit; the last poll that
        saw it running was sent at `running_at`.

        Only the bounds are evidence: the job ended between those two polls. When the first
        poll already found it done, the estimate only moves down (a little, to probe earlier
        next time), so a late poll, e.g. on a busy event loop, never teaches us to poll later.
        """
        if done_at <= 0:
            return
        first = self.seconds is None
        if running_at is not None:
            mid = (running_at + done_at) / 2
            self.seconds = mid if self.seconds is None else 0.7 * self.seconds + 0.3 * mid
        elif self.seconds is None:
            self.seconds = done_at
        else:
            # Probe earlier, but at most once per job duration: a burst of jobs that all
            # finished before their first poll is one piece of evidence, not fifty.
            now = time.monotonic()
            if self._probed_at is None or now - self._probed_at >= self.seconds:
                self.seconds = min(self.seconds, done_at) * 0.95
                self._probed_at = now
        if first:
            self._wake()

    def first_wait(self, elapsed: float) -> float:
        """Seconds to wait before the first poll, `elapsed` seconds after the submit.

        Nothing learned yet: the default rhythm's first step (an image job is never done at
        once; jobs that are, come back finished from the submit and are not polled).
        """
        if self.seconds is None:
            return max(0.0, poll_delays()[0] - elapsed)
        return max(0.0, self.seconds * 1.05 - elapsed)

    def next_delay(self, attempt: int, elapsed: float) -> float:
        """Seconds to the next poll after `attempt` polls that found the job still running.

        Near the estimate, polls follow closely; past it, the gap grows with the overrun (a
        quarter of it), so a job that runs long is still noticed within a fraction of its
        extra time, and one that runs very long is polled rarely.
        """
        if self.seconds is None:
            # Backing off, but never by more than a tenth of the job's age: a batch's first
            # round waits for these polls (the scouts'), so a 20 s job seen 10 s late was 10 s
            # lost by every job of the round (bench/RESULTS-capacity.md).
            schedule = poll_delays()
            step = schedule[min(attempt, len(schedule) - 1)]
            return round(min(step, max(schedule[0], 0.1 * elapsed)), 3)
        close = max(0.05, 0.1 * self.seconds)
        return round(min(poll_delays()[-1], max(close, 0.25 * (elapsed - self.seconds))), 3)
