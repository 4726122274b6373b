"""Processes on one account keep one pace: how two limiters' views merge (pure), a simulation
of two processes sharing a token bucket, and the Prefect variable they meet in (a real
Prefect server)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from gptimg_flows.engine.rate_limiter import (
    DECREASE,
    MEMBER_STALE_SECONDS,
    SHARED_FRESH_SECONDS,
    AccountLimiter,
    SharedPace,
    Ticket,
    _Waiter,
    paced,
)
from gptimg_flows.errors import RateLimited

from .support.bucket import Bucket


def _busy(limiter: AccountLimiter, waiting: int) -> None:
    """As if `waiting` submits of this process were queued for their turn."""
    limiter.busy = waiting
    limiter._queue.extend(_FakeWaiter() for _ in range(waiting))


class _FakeWaiter(_Waiter):
    def __init__(self) -> None:
        self.n = 1

    def wake(self) -> None:
        pass


def _pacing(rate: float) -> AccountLimiter:
    limiter = AccountLimiter("p", account="acct")
    limiter.rate = rate
    return limiter


def _two_in_step(
    rate: float = 1.0, waiting: tuple[int, int] = (4, 4), b_at: float = 0.0
) -> tuple[AccountLimiter, AccountLimiter, SharedPace]:
    """Two processes pacing one account at `rate`, each with submits waiting, in step (a
    synced at 0, then b at `b_at` on the wall clock)."""
    a, b = _pacing(rate), _pacing(rate)
    _busy(a, waiting[0])
    _busy(b, waiting[1])
    shared = a.sync(SharedPace(), "a", 0.0, 0.0)
    return a, b, b.sync(shared, "b", b_at, 0.0)


def test_a_process_joining_takes_the_accounts_pace_and_its_share() -> None:
    wall, now = 1000.0, 50.0
    a = _pacing(1.0)
    _busy(a, 8)
    shared = a.sync(SharedPace(), "a", wall, now)
    assert shared.rate == 1.0 and set(shared.members) == {"a"}
    assert a.share == 1.0

    b = AccountLimiter("p", account="acct")  # not pacing yet: no 429 seen here
    _busy(b, 8)
    shared = b.sync(shared, "b", wall + 0.5, now)
    assert b.rate == 1.0, "the account's pace, not a first guess of its own"
    assert b.share == pytest.approx(0.5)
    shared = a.sync(shared, "a", wall + 1, now)
    assert a.share == pytest.approx(0.5)
    assert set(shared.members) == {"a", "b"}


def test_shares_follow_the_submits_each_process_has_waiting() -> None:
    a, b, shared = _two_in_step(2.0, (12, 4), b_at=0.1)
    shared = a.sync(shared, "a", 0.2, 0.0)
    assert (a.share, b.share) == (pytest.approx(0.75), pytest.approx(0.25))
    assert a._pace() + b._pace() == pytest.approx(2.0), "together: the account's pace"


def test_one_congestion_cuts_the_accounts_pace_once() -> None:
    """Both processes meet 429s from the same overload: the account's pace is cut once."""
    a, b, shared = _two_in_step(b_at=0.1)
    for limiter in (a, b):
        limiter.refused(Ticket(epoch=limiter.epoch, n=1), 1.0, now=1.0)
        assert limiter.cut_news.is_set()
    shared = a.sync(shared, "a", 1.1, 1.1)
    assert shared.rate == pytest.approx(DECREASE)
    shared = b.sync(shared, "b", 1.2, 1.2)
    assert shared.rate == pytest.approx(DECREASE), "b's cut was the same congestion"
    assert b.rate == pytest.approx(DECREASE)

    # a later overload, met by b alone, is news
    b.refused(Ticket(epoch=b.epoch, n=1), 1.0, now=5.0)
    shared = b.sync(shared, "b", 5.1, 5.1)
    assert shared.rate == pytest.approx(DECREASE * DECREASE)


def test_a_probe_here_and_a_cut_there_merge_as_factors() -> None:
    a, b, shared = _two_in_step()
    a._set_rate(1.1)  # a probed 10 % faster while its submits waited
    b.refused(Ticket(epoch=b.epoch, n=1), 1.0, now=1.0)  # b met a 429
    shared = b.sync(shared, "b", 1.0, 1.0)
    shared = a.sync(shared, "a", 1.1, 1.1)
    assert shared.rate == pytest.approx(1.1 * DECREASE)


def test_a_process_that_stopped_or_vanished_leaves_its_share() -> None:
    a, b, shared = _two_in_step()
    a.busy = 0  # a's batch ended: its last sync leaves
    shared = a.sync(shared, "a", 0.5, 0.5)
    assert set(shared.members) == {"b"}
    b.sync(shared, "b", 0.6, 0.6)
    assert b.share == 1.0

    # a process killed never says goodbye: it stops counting once stale
    shared = a.sync(SharedPace(rate=1.0, updated=0.0), "a", 0.0, 0.0)
    a.busy = 4
    shared = a.sync(shared, "a", 0.0, 0.0)
    b.sync(shared, "b", 0.1, 0.1)
    assert b.share == pytest.approx(0.5)
    b.sync(shared, "b", MEMBER_STALE_SECONDS + 1, 0.1)
    assert b.share == 1.0


def test_an_old_pace_nobody_keeps_is_forgotten() -> None:
    b = AccountLimiter("p", account="acct")
    _busy(b, 4)
    old = SharedPace(rate=0.2, updated=0.0)
    b.sync(old, "b", SHARED_FRESH_SECONDS + 1, 0.0)
    assert b.rate is None, "an hour-old guess by a process long gone is not news"
    b.sync(old, "b", SHARED_FRESH_SECONDS - 1, 0.0)
    assert b.rate == 0.2


def test_a_long_retry_after_holds_every_process() -> None:
    a, b = _pacing(1.0), _pacing(1.0)
    _busy(a, 4)
    _busy(b, 4)
    shared = a.sync(SharedPace(), "a", 1000.0, 10.0)
    a.refused(Ticket(epoch=a.epoch, n=1), 60.0, now=10.0)  # 60 s >> the pace's interval
    shared = a.sync(shared, "a", 1000.0, 10.0)
    assert shared.hold_until == pytest.approx(1060.0)
    b.sync(shared, "b", 1001.0, 500.0)  # b's own clock reads differently
    assert b.hold_until == pytest.approx(559.0)


def test_the_stored_value_round_trips_and_is_read_leniently() -> None:
    shared = SharedPace(rate=1.5, peak=2.0, cut_at=3.0, hold_until=4.0, updated=5.0)
    shared.members["x"] = (6.0, 7)
    assert SharedPace.from_json(shared.to_json()) == shared
    for junk in (None, "text", {"rate": "fast"}, {"members": {"x": [1]}}, {"rate": -1}):
        assert SharedPace.from_json(junk).rate is None


async def _two_processes(sharing: bool, scale: float, rows: int) -> dict[str, float]:
    """Two processes of 16 submits at once on a bucket of 60 a minute (time compressed),
    keeping in step every (compressed) second or each alone; what their paces added up to
    over the second half of the run, in bucket rates, and the 429s a row."""
    bucket = Bucket(1.0 * scale, 3, whole_seconds=False)
    limiters = [AccountLimiter(f"sim-{p}", account="acct") for p in range(2)]
    todo = {0: list(range(rows // 2)), 1: list(range(rows // 2))}
    done: list[int] = []
    shared = SharedPace()
    sums: list[float] = []
    ends = {0: 0.0, 1: 0.0}
    started = time.monotonic()

    async def worker(p: int) -> None:
        limiter = limiters[p]

        async def send() -> None:
            await asyncio.sleep(0.002)
            wait = bucket.take()
            if wait is not None:
                raise RateLimited("429", retry_after=wait)

        while todo[p]:
            todo[p].pop()
            await paced(limiter, 1, send, bound=60.0)
            done.append(p)
        ends[p] = max(ends[p], time.monotonic() - started)

    async def watch() -> None:
        nonlocal shared
        while todo[0] and todo[1]:
            if sharing:
                for p, limiter in enumerate(limiters):
                    shared = limiter.sync(shared, f"m{p}", time.time(), time.monotonic())
            if all(limiter.rate for limiter in limiters):
                sums.append(sum(limiter._pace() for limiter in limiters))
            await asyncio.sleep(1.0 / scale)

    await asyncio.gather(*(worker(i % 2) for i in range(32)), watch())
    assert len(done) == rows, "nothing lost"
    late = sums[len(sums) // 2 :]
    ideal = (rows - bucket.burst) / bucket.rate
    return {
        "pace": sum(late) / len(late) / scale,
        "refused": bucket.refused / rows,
        "first_end": min(ends.values()) / ideal,
        "last_end": max(ends.values()) / ideal,
    }


async def test_two_processes_in_step_finish_together_near_the_ideal() -> None:
    """Each alone, one process takes the account and the other crawls on at the pace it
    learned while starved (the first ends at ~0.77 of the ideal wall, the last at ~1.24);
    in step, the account's pace is split between them and both end near the ideal."""
    alone = await _two_processes(False, 20.0, 240)
    shared = await _two_processes(True, 20.0, 240)
    assert 0.6 <= shared["pace"] <= 1.25, shared
    assert shared["last_end"] <= 1.15, shared
    assert shared["last_end"] < alone["last_end"], (shared, alone)
    assert shared["last_end"] - shared["first_end"] < alone["last_end"] - alone["first_end"]


@pytest.mark.usefixtures("prefect_server")
async def test_processes_meet_in_a_prefect_variable() -> None:
    """The variable on the Prefect server carries one process's pace to another, and a
    process that stops leaves it."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    from gptimg_flows.engine import shared_pace

    account = uuid.uuid4().hex[:24]
    name = shared_pace.variable_name(account)
    a = AccountLimiter("p", account=account)
    a.rate = 1.5
    _busy(a, 6)
    with get_client(sync_client=True) as client:
        shared_pace._sync(client, name, a)
    stored: Any = await Variable.aget(name)
    assert stored["rate"] == 1.5 and shared_pace.MEMBER in stored["members"]

    # another process (another member name) starting on the account
    stored["members"]["other"] = [time.time(), 6]
    await Variable.aset(name, stored, overwrite=True)
    b = AccountLimiter("p", account=account)
    _busy(b, 6)
    await shared_pace.in_step(b)  # its first look, before its first submit
    assert b.rate == 1.5
    assert b.share == pytest.approx(0.5)

    b.busy = 0
    b._queue.clear()
    shared_pace._KEEPERS[id(b)][0].join(10)  # the keeper left after two idle syncs
    with get_client(sync_client=True) as client:
        shared_pace._sync(client, name, b)
    stored = await Variable.aget(name)
    assert set(stored["members"]) == {"other"}, "a process that stopped left"
    async with get_client() as client:
        await client.delete_variable_by_name(name)


async def test_a_bigger_share_applies_at_once_not_after_the_next_slow_send() -> None:
    """A process with 1 submit waiting against another's 31 sends 1/32 of the pace; when the
    other leaves, its next send is one interval of the whole pace away, not 32."""
    a, b = _pacing(1.0), _pacing(1.0)
    _busy(a, 31)
    b.busy = 1
    shared = a.sync(SharedPace(), "a", time.time(), time.monotonic())
    shared = b.sync(shared, "b", time.time(), time.monotonic())
    assert b.share == pytest.approx(1 / 32)

    async def send() -> None:
        pass

    await paced(b, 1, send, bound=5.0)  # goes at once (no schedule yet), the next 32 s away
    assert b.next_at - time.monotonic() > 30
    a.busy = 0
    a._queue.clear()
    shared = a.sync(shared, "a", time.time(), time.monotonic())
    b.busy = 1
    b.sync(shared, "b", time.time(), time.monotonic())
    assert b.share == 1.0
    assert b.next_at - time.monotonic() <= 1.0
