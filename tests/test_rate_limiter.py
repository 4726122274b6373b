"""The per-account limiter on its own: the pace it learns, FIFO turns, giving up, and the
x-ratelimit figures it is told (pure: a token bucket in this process, time compressed)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gptimg_flows.engine.rate_limiter import (
    DECREASE,
    AccountLimiter,
    Ticket,
    forget_limiters,
    gated_read,
    limiter_for,
    paced,
)
from gptimg_flows.errors import RateLimited, is_retryable
from gptimg_flows.providers._http import parse_duration, parse_rate_headers

from .support.bucket import Bucket


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_reset_durations_as_openai_spells_them(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_rate_headers_are_optional_and_parsed_when_present() -> None:
    assert parse_rate_headers(httpx.Headers({"content-type": "application/json"})) is None
    figures = parse_rate_headers(
        httpx.Headers(
            {
                "x-ratelimit-limit-requests": "50",
                "x-ratelimit-remaining-requests": "3",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-limit-tokens": "800000",
            }
        )
    )
    assert figures is not None
    assert (figures.limit_requests, figures.remaining_requests, figures.reset_requests) == (
        50,
        3,
        360.0,
    )
    assert figures.limit_tokens == 800000 and figures.remaining_tokens is None


def test_refusals_already_in_flight_decrease_the_pace_once() -> None:
    limiter = AccountLimiter("p")
    limiter.refused(Ticket(epoch=0, n=1), 1.0, now=10.0)  # first sign: ~1 image/s
    first = limiter.rate
    assert first == pytest.approx(1.0)
    sent_before = Ticket(epoch=0, n=1)  # sent before the pace existed
    limiter.refused(sent_before, 1.0, now=10.01)
    assert limiter.rate == first, "a refusal sent under an older pace is the same congestion"
    limiter.refused(Ticket(epoch=limiter.epoch, n=1), 1.0, now=11.0)
    assert limiter.rate == pytest.approx(first * DECREASE)


def test_the_providers_limit_is_a_ceiling_never_passed() -> None:
    limiter = AccountLimiter("openai")
    limiter.told(120, now=0.0)
    assert limiter.rate == pytest.approx(2.0) and limiter.ceiling == pytest.approx(2.0)
    blocked = AccountLimiter("openai", images_per_minute=60)
    blocked.told(120, now=0.0)
    assert blocked.ceiling == pytest.approx(1.0), "the block's figure wins when it is lower"


def test_one_limiter_per_account_and_the_block_sets_its_ceiling() -> None:
    forget_limiters()
    a = limiter_for("acct-1", "openai", None)
    assert limiter_for("acct-1", "openai", None) is a
    assert limiter_for("acct-2", "openai", None) is not a
    limiter_for("acct-1", "openai", 30)
    assert a.ceiling == pytest.approx(0.5) and a.rate == pytest.approx(0.5)
    forget_limiters()


async def test_turns_are_first_come_first_served_and_a_refused_submit_goes_first() -> None:
    limiter = AccountLimiter("p", images_per_minute=600)  # 10 a second
    order: list[str] = []

    async def go(name: str, first: bool = False) -> None:
        await limiter.turn(1, first=first)
        order.append(name)

    tasks = [asyncio.create_task(go(str(i))) for i in range(4)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(go("refused", first=True)))
    await asyncio.gather(*tasks)
    assert order[0] == "0", order  # went at once, before the refused one queued
    assert order[1] == "refused" and order[2:] == ["1", "2", "3"], order


async def test_a_submit_that_cannot_get_through_gives_up_with_what_to_change() -> None:
    limiter = AccountLimiter("gptimage2ai")
    sent = 0

    async def always_refused() -> None:
        nonlocal sent
        sent += 1
        raise RateLimited("429", retry_after=0.2)

    with pytest.raises(RateLimited) as raised:
        await paced(limiter, 1, always_refused, bound=1.0)
    assert raised.value.gave_up and not is_retryable(raised.value)
    assert "could not get through within 1 s" in str(raised.value)
    assert "Retry-After was 0.2 s" in str(raised.value)
    assert 2 <= sent <= 8, sent
    assert limiter.stats.refused == sent


async def test_reads_told_429_hold_the_accounts_reads() -> None:
    limiter = AccountLimiter("p")
    calls: list[float] = []

    async def refused_once() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RateLimited("429", retry_after=0.3)
        return "ok"

    with pytest.raises(RateLimited):
        await gated_read(limiter, refused_once)
    assert await gated_read(limiter, refused_once) == "ok"  # a peer's read waits the hold
    assert calls[1] - calls[0] >= 0.28
    assert limiter.rate is None, "a read's 429 leaves the submits' pace alone"


@pytest.mark.parametrize(("headers", "processes"), [(True, 1), (False, 1), (True, 2), (False, 2)])
async def test_sixteen_at_once_against_a_bucket_lose_nothing_and_waste_few_refusals(
    headers: bool, processes: int
) -> None:
    """60 a minute, burst 3, 16 at once (over one limiter, or two sharing the key as two
    processes would), time compressed 20 times: every submit gets through, refusals stay a
    fraction of the rows, and neither process is starved to a crawl by the other."""
    scale, rows = 20.0, 120
    bucket = Bucket(1.0 * scale, 3, whole_seconds=not headers)
    limiters = [AccountLimiter(f"sim-{p}") for p in range(processes)]
    todo = list(range(rows))
    done: list[int] = []

    async def worker(limiter: AccountLimiter) -> None:
        async def send() -> None:
            await asyncio.sleep(0.001)
            if headers:
                limiter.told(60 * scale, time.monotonic())
            wait = bucket.take()
            if wait is not None:
                retry_after = wait / scale if not headers else wait
                raise RateLimited("429", retry_after=retry_after)

        while todo:
            row = todo.pop()
            await paced(limiter, 1, send, bound=60.0)
            done.append(row)

    await asyncio.gather(*(worker(limiters[i % processes]) for i in range(16)))
    assert sorted(done) == list(range(rows))
    assert bucket.refused / rows <= 0.5, f"{bucket.refused} refusals for {rows} rows"
    slowest = min(limiter.rate or 0.0 for limiter in limiters)
    assert slowest >= 0.1 * scale, [limiter.describe() for limiter in limiters]
