"""Every wait has a deadline (issue #32): a provider's Retry-After is parsed without raising,
capped, and no wait (submit pacing, poll holds, task-retry delays, downloads) runs past the
run's `timeout_seconds`; a process-wide hold never outlives its cap.

Units first (no server), then flows against the emulator and a real Prefect server."""

from __future__ import annotations

import asyncio
import email.utils
import http.server
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gptimg_flows import generate_images
from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.credentials import GptImage2AICredentials
from gptimg_flows.engine import retry_policy
from gptimg_flows.engine.pacing import account_limiter
from gptimg_flows.engine.rate_limiter import (
    DEFAULT_HOLD,
    AccountLimiter,
    Ticket,
    forget_limiters,
    gated_read,
    limiter_for,
)
from gptimg_flows.engine.retry import backoff_delay
from gptimg_flows.engine.steps import download_outputs
from gptimg_flows.errors import JobTimeout, RateLimited, ServerError
from gptimg_flows.media.headers import RETRY_AFTER_CAP, parse_retry_after
from gptimg_flows.models import Job, JobState, JobStatus, OutputRef
from gptimg_flows.providers._http import error_for_response

CAP = RETRY_AFTER_CAP


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # junk ms: the other header
        ({"retry-after-ms": "-20", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "9e12"}, CAP),
        ({"retry-after": "3600"}, CAP),
        ({"retry-after": "1e9"}, CAP),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # past: now
        ({"retry-after": "Wed, 21 Oct 2065 07:28:00 GMT"}, CAP),  # 1.2e9 s away: the cap
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, 0.0),  # a date with no zone
        ({"retry-after": "soon"}, None),
        ({"retry-after": "Mon, 99 Foo 2025 99:99:99 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 99999999 07:28:00 GMT"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-inf"}, None),
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_is_parsed_without_raising_and_capped(
    headers: dict[str, str], expected: float | None
) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == expected


def test_a_near_http_date_is_the_seconds_until_it() -> None:
    seconds = parse_retry_after(httpx.Headers({"retry-after": _http_date(30)}))
    assert seconds is not None and 27 <= seconds <= 31


def test_a_429_with_a_junk_retry_after_is_a_rate_limit_without_a_hint() -> None:
    """Finding 5: `Retry-After: soon` raised ValueError out of the error mapping."""
    response = httpx.Response(429, headers={"retry-after": "soon"}, json={"error": "slow"})
    error = error_for_response("gptimage2ai", response)
    assert isinstance(error, RateLimited) and error.retry_after is None


# -- the limiter's holds ------------------------------------------------------------------------


def _block(**fields: Any) -> GptImage2AICredentials:
    return GptImage2AICredentials(api_key="k", base_url="http://127.0.0.1:9/api", **fields)


def test_a_submit_told_1e9_seconds_holds_the_account_no_longer_than_the_cap() -> None:
    """Finding 8: one 429 with Retry-After 1e9 held the account for the rest of the process."""
    limiter = AccountLimiter("p")
    again = limiter.refused(Ticket(epoch=0, n=1), 1e9, now=100.0)
    assert again <= 100.0 + CAP and limiter.hold_until <= 100.0 + CAP
    short = AccountLimiter("p", max_hold=5.0)
    assert short.refused(Ticket(epoch=0, n=1), 1e9, now=100.0) == pytest.approx(105.0)
    assert short.hold_until <= 105.0 and short.next_at <= 105.0 + 60.0  # MIN_RATE's interval
    for told in (math.inf, -math.inf, math.nan):
        other = AccountLimiter("p", max_hold=5.0)
        assert other.refused(Ticket(epoch=0, n=1), told, now=0.0) <= 5.0


async def test_after_a_capped_hold_the_next_submit_goes_at_once() -> None:
    now = [100.0]
    limiter = AccountLimiter("p", max_hold=5.0)
    limiter.refused(Ticket(epoch=0, n=1), 1e9, now=now[0])
    now[0] = 105.01
    ticket = await asyncio.wait_for(limiter.turn(1, clock=lambda: now[0]), 1.0)
    assert ticket.paced


def test_a_read_told_1e9_seconds_holds_the_accounts_reads_no_longer_than_the_cap() -> None:
    limiter = AccountLimiter("p", max_hold=7.0)
    assert limiter.read_refused(1e9, now=10.0) == 7.0
    assert limiter.read_wait(10.0) == pytest.approx(7.0)
    assert limiter.read_refused(float("nan"), now=10.0) == DEFAULT_HOLD


def test_the_blocks_cap_reaches_the_accounts_limiter() -> None:
    block = _block(max_retry_after_seconds=12)
    limiter = account_limiter(block, block.get_provider())
    assert limiter.max_hold == 12.0
    assert limiter_for("acct-w", "p", None).max_hold == CAP
    assert limiter_for("acct-w", "p", None, 3.0).max_hold == 3.0
    assert limiter_for("acct-w", "p", None).max_hold == 3.0, "None leaves the cap as it is"


async def test_gated_read_never_sleeps_past_its_deadline() -> None:
    limiter = AccountLimiter("p")
    limiter.read_refused(100.0, time.monotonic())
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    started = time.monotonic()
    with pytest.raises(RateLimited, match="deadline") as raised:
        await gated_read(limiter, read, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - started < 0.2 and calls == 0
    assert raised.value.retry_after is not None and raised.value.retry_after > 0.5
    limiter.read_hold_until = time.monotonic() + 0.2  # a hold that ends in time is waited
    assert await gated_read(limiter, read, deadline=time.monotonic() + 2.0) == "ok"


async def test_gated_read_passes_a_429_up_with_the_accounts_cap() -> None:
    limiter = AccountLimiter("p", max_hold=4.0)

    async def refused() -> str:
        raise RateLimited("429", retry_after=1e9)

    with pytest.raises(RateLimited) as raised:
        await gated_read(limiter, refused)
    assert raised.value.retry_after == 4.0


# -- task-retry delays --------------------------------------------------------------------------


def test_backoff_never_waits_past_the_cap_and_ignores_nan() -> None:
    assert backoff_delay(0, retry_after=1e9) <= CAP * 1.25
    assert backoff_delay(0, retry_after=float("inf")) <= CAP * 1.25
    assert backoff_delay(0, retry_after=float("nan")) <= 1.25


def _run_started(seconds_ago: float) -> Any:
    return SimpleNamespace(start_time=datetime.now(UTC) - timedelta(seconds=seconds_ago))


def _failed(exc: Exception) -> Any:
    from prefect.states import Failed

    return Failed(data=exc)


def test_a_retry_after_past_the_task_runs_deadline_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 4: a poll's Retry-After of 3600 s with timeout_seconds=15 scheduled a task retry
    3,894 s later. Now: capped, and past the run's deadline the error stands, saying why."""
    monkeypatch.setattr(retry_policy, "_parameters", lambda: {"timeout_seconds": 15})
    retry: Any = retry_policy.retry_on_retryable
    error = RateLimited("rate limited", retry_after=3600, provider="p")
    assert not retry(None, _run_started(1.0), _failed(error))
    assert "not retried" in str(error) and "timeout_seconds" in str(error)


def test_task_retry_delays_end_by_the_task_runs_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_policy, "_parameters", lambda: {"timeout_seconds": 15})
    delays = retry_policy.retry_delays(5)
    retry: Any = retry_policy.retry_on_retryable
    assert retry(None, _run_started(5.0), _failed(RateLimited("x", retry_after=4)))
    assert 4.0 <= delays[0] <= 10.0
    assert retry(None, _run_started(14.5), _failed(ServerError("x")))
    assert delays[3] <= 0.5, "plain backoff (4 s here) is cut to the time left"
    monkeypatch.setattr(retry_policy, "_parameters", lambda: {})
    assert retry(None, _run_started(1000.0), _failed(RateLimited("x", retry_after=1e9)))
    assert CAP <= delays[0] <= CAP * 1.25, "no deadline known: the cap still holds"


def test_the_blocks_cap_bounds_a_task_retrys_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    block = _block(max_retry_after_seconds=2)
    monkeypatch.setattr(retry_policy, "_parameters", lambda: {"provider": block})
    delays = retry_policy.retry_delays(5)
    retry: Any = retry_policy.retry_on_retryable
    assert retry(None, _run_started(0.0), _failed(RateLimited("x", retry_after=250)))
    assert 2.0 <= delays[0] <= 2.5


# -- downloads ----------------------------------------------------------------------------------


class _SlowImages(http.server.BaseHTTPRequestHandler):
    """`/trickle.png`: a PNG header, then a byte every 0.2 s for ever (no read timeout ever
    fires); `/busy.png`: 429 with Retry-After 3600."""

    def do_GET(self) -> None:
        if self.path == "/busy.png":
            self.send_response(429)
            self.send_header("Retry-After", "3600")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            self.wfile.write(b"\x89PNG\r\n\x1a\n")
            while True:
                self.wfile.flush()
                time.sleep(0.2)
                self.wfile.write(b"\x00")
        except OSError:
            return

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_images(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowImages)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _finished(url: str) -> tuple[Job, JobStatus]:
    job = Job(provider="offline", model="gpt-image-2", job_id="j-slow", key="k" * 64)
    ref = OutputRef(index=0, url=url, mime="image/png")
    return job, JobStatus(job_id=job.job_id, state=JobState.SUCCEEDED, outputs=[ref])


@pytest.mark.parametrize("path", ["/trickle.png", "/busy.png"])
async def test_a_download_and_its_retries_end_by_the_timeout(
    slow_images: str, tmp_path: Path, path: str
) -> None:
    """Downloads had no time limit: a server trickling bytes (or a 429 asking for an hour)
    held a paid job's download for as long as it liked."""
    job, status = _finished(slow_images + path)
    started = time.monotonic()
    with pytest.raises((JobTimeout, RateLimited)) as raised:
        await asyncio.wait_for(
            download_outputs.fn("offline", job, status, Archive(str(tmp_path)), 2.0), 30
        )
    assert time.monotonic() - started < 4.0
    if path == "/trickle.png":
        assert isinstance(raised.value, JobTimeout) and "within 2 s" in str(raised.value)


# -- flows: the emulator and a real Prefect server ----------------------------------------------


def _paid(emulator: Any, provider: str) -> int:
    return sum(s["provider"] == provider for s in emulator.ledger()["submissions"])


@pytest.mark.usefixtures("prefect_server")
async def test_a_poll_told_to_wait_an_hour_ends_by_the_runs_timeout(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """Finding 4: Retry-After 3600 on one poll with timeout_seconds=15 scheduled a task retry
    an hour later. Now the run fails within its timeout, saying why, and a re-run (a new
    process, no fault) polls the paid job instead of paying again."""
    emulator.configure(latency=1.0, retry_after=3600)
    emulator.force("poll_429", "gptimage2ai")
    block = provider_block("gptimage2ai")
    started = time.monotonic()
    with pytest.raises(RateLimited, match=r"not retried: the provider asked to wait 300 s"):
        await asyncio.wait_for(
            generate_images(
                prompt="an hour's wait", provider=block, archive=str(archive_dir), size="1:1",
                timeout_seconds=15,
            ),
            90,
        )  # fmt: skip
    assert time.monotonic() - started < 15 + 15
    forget_limiters()
    images = await asyncio.wait_for(
        generate_images(
            prompt="an hour's wait", provider=block, archive=str(archive_dir), size="1:1",
            timeout_seconds=15,
        ),
        60,
    )  # fmt: skip
    assert Path(images[0].uri).exists() and _paid(emulator, "gptimage2ai") == 1


@pytest.mark.usefixtures("prefect_server")
async def test_a_batch_whose_poll_is_told_an_hour_waits_the_blocks_cap_and_finishes(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """Finding 4, in a batch: one poll's 429 held every job of the account for its hour
    (6 paid, 0 finished after 70 s). With the block's cap at 2 s every row is made in time."""
    from gptimg_flows import batch_generate

    emulator.configure(latency=1.0, retry_after=3600)
    emulator.force("poll_429", "gptimage2ai")
    block = provider_block("gptimage2ai", max_retry_after_seconds=2)
    started = time.monotonic()
    result = await asyncio.wait_for(
        batch_generate(
            prompts=[f"held row {i}" for i in range(6)], provider=block,
            archive=str(archive_dir), concurrency=6, timeout_seconds=20,
        ),
        90,
    )  # fmt: skip
    assert not result.failures and len(result.images) == 6
    assert time.monotonic() - started < 20
    assert _paid(emulator, "gptimage2ai") == 6


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("header", ["soon", "inf"])
async def test_a_submit_429_with_a_junk_retry_after_is_waited_and_paid_once(
    provider_block: Any, emulator: Any, archive_dir: Path, header: str
) -> None:
    """Finding 5: `Retry-After: soon` on a submit raised ValueError out of the paid call,
    leaving a claim that made the re-run stop with SubmitUncertain. A junk header is no
    header: the submit waits a moment, goes again, and is paid once; a re-run pays nothing."""
    emulator.configure(retry_after_header=header)
    emulator.force("submit_429", "gptimage2ai")
    block = provider_block("gptimage2ai")
    kwargs: dict[str, Any] = {
        "prompt": "a junk header", "provider": block, "archive": str(archive_dir),
        "size": "1:1", "timeout_seconds": 30,
    }  # fmt: skip
    first = await asyncio.wait_for(generate_images(**kwargs), 60)
    again = await asyncio.wait_for(generate_images(**kwargs), 60)
    assert again[0].sha256 == first[0].sha256
    assert _paid(emulator, "gptimage2ai") == 1
    assert sum(f["kind"] == "submit_429" for f in emulator.ledger()["faults"]) == 1


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("header", ["1e9", "Wed, 21 Oct 2065 07:28:00 GMT"])
async def test_a_submit_told_to_wait_for_ever_waits_the_cap_and_the_account_goes_on(
    provider_block: Any, emulator: Any, archive_dir: Path, header: str
) -> None:
    """Finding 8: a submit's 429 asking for 1e9 s (or until 2065) held the account for the rest
    of the process. It now holds it for the block's cap, and the next request goes at once."""
    emulator.configure(retry_after_header=header)
    emulator.force("submit_429", "gptimage2ai")
    block = provider_block("gptimage2ai", max_retry_after_seconds=1)
    started = time.monotonic()
    for prompt in ("told to wait for ever", "the next one"):
        await asyncio.wait_for(
            generate_images(
                prompt=prompt, provider=block, archive=str(archive_dir), size="1:1",
                timeout_seconds=30,
            ),
            60,
        )  # fmt: skip
    assert time.monotonic() - started < 20
    assert _paid(emulator, "gptimage2ai") == 2
