"""Retry, key and polling policy as pure functions: decided once, tested here."""

from __future__ import annotations

import itertools
import random
from typing import Any

import httpx
import pytest

from gptimg_flows import tasks
from gptimg_flows.blocks.credentials import RunwareCredentials
from gptimg_flows.engine import polling, retry_policy
from gptimg_flows.engine.retry import (
    DurationEstimate,
    backoff_delay,
    poll_delays,
    read_with_retries,
)
from gptimg_flows.errors import (
    AuthError,
    InvalidOutput,
    RateLimited,
    ServerError,
    TransportError,
    is_retryable,
)
from gptimg_flows.media.download import download
from gptimg_flows.media.reads import ReadRules
from gptimg_flows.models import ImageRequest, Job, JobState, JobStatus, OutputRef
from gptimg_flows.providers.base import Provider
from gptimg_flows.providers.offline import OfflineProvider


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(i, rng=rng) for i in range(8)]
    for i, d in enumerate(delays):
        base = min(60.0, 2.0**i)
        assert base <= d <= base * 1.25, (i, d)


def test_retry_after_is_a_floor_never_undercut() -> None:
    for seed in range(50):
        assert backoff_delay(0, retry_after=7.5, rng=random.Random(seed)) >= 7.5


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (RateLimited("x"), True),
        (ServerError("x"), True),
        (TransportError("x"), True),
        (AuthError("x"), False),
        (InvalidOutput("x"), False),
        (ValueError("x"), False),
    ],
)
def test_only_transient_errors_are_retried(exc: Exception, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_prefect_delay_list_honours_the_retry_after_of_the_failure() -> None:
    from prefect.states import Failed

    delays = retry_policy.retry_delays(5)
    assert isinstance(delays, list) and len(delays) == 5
    retry: Any = retry_policy.retry_on_retryable
    assert retry(None, None, Failed(data=RateLimited("slow", retry_after=9)))
    assert delays[0] >= 9
    assert delays[0] <= 1.25, "the hint is used once, then plain backoff resumes"
    assert not retry(None, None, Failed(data=AuthError("no")))


def test_request_key_ignores_credentials_and_base_url_but_not_what_is_asked() -> None:
    a = RunwareCredentials(api_key="key-one", base_url="http://127.0.0.1:1/runware/v1")
    b = RunwareCredentials(api_key="key-two")
    req = ImageRequest(prompt="a fox", size="256x256")
    key_a = tasks.request_key(a.get_provider(), req, [], "0")
    assert key_a == tasks.request_key(b.get_provider(), req, [], "0")
    assert "key-one" not in key_a
    assert key_a != tasks.request_key(b.get_provider(), req, [], "1")
    assert key_a != tasks.request_key(b.get_provider(), req, ["abc"], "0")
    other = ImageRequest(prompt="a fox", size="256x256", quality="high")
    assert key_a != tasks.request_key(b.get_provider(), other, [], "0")
    assert key_a != tasks.request_key(OfflineProvider(), req, [], "0")


def test_poll_rhythm_starts_fast_and_backs_off_to_a_cap() -> None:
    delays = poll_delays()
    assert delays[0] == 0.5 and delays[-1] == 10.0
    assert all(b >= a for a, b in itertools.pairwise(delays))


class _Scripted(Provider):
    """A provider whose job finishes after a fixed number of polls, with an optional hint."""

    name = "scripted"
    display_name = "scripted"
    capabilities = OfflineProvider.capabilities

    def __init__(self, polls_until_done: int, hint: float | None) -> None:
        self.left, self.hint, self.polls = polls_until_done, hint, 0

    async def submit(self, request: Any, inputs: Any, key: str) -> Job:
        raise NotImplementedError

    async def poll(self, job: Job) -> JobStatus:
        self.polls += 1
        self.left -= 1
        state = JobState.SUCCEEDED if self.left <= 0 else JobState.RUNNING
        return JobStatus(job_id=job.job_id, state=state, poll_after=self.hint)


async def test_polling_follows_the_providers_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(polling.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(polling, "_DURATIONS", {"scripted": DurationEstimate()})
    job = Job(provider="scripted", model="m", job_id="j1", key="k")
    status = await polling.poll_until_done(_Scripted(4, hint=0.2), job, 60)
    # The first look waits the default rhythm's first step; then the provider's hint rules.
    assert status.state is JobState.SUCCEEDED and slept[1:] == [0.2, 0.2, 0.2]
    assert slept[0] == pytest.approx(poll_delays()[0], abs=0.05)
    slept.clear()
    polling._DURATIONS["scripted"] = DurationEstimate()  # nothing learned: the default rhythm
    await polling.poll_until_done(_Scripted(4, hint=None), job, 60)
    # (the faked sleep stops the clock: a job this young is polled every first step)
    assert slept == pytest.approx([poll_delays()[0]] * 4, abs=0.05)


def test_with_nothing_learned_polls_back_off_but_by_at_most_a_tenth_of_the_jobs_age() -> None:
    est, steps = DurationEstimate(), poll_delays()
    assert est.next_delay(1, 1.0) == steps[0]  # young: the first step
    assert est.next_delay(1, 60.0) == steps[1]  # the rhythm's own step when it is smaller
    assert est.next_delay(7, 16.0) == pytest.approx(1.6)  # a 20 s job is seen ≤ 2 s late
    assert est.next_delay(30, 500.0) == steps[-1]  # very old: the cap


def test_a_learned_duration_times_the_first_poll_and_keeps_later_ones_close() -> None:
    est = DurationEstimate()
    assert est.first_wait(0.0) == poll_delays()[0] and est.next_delay(0, 0.3) == poll_delays()[0]
    for _ in range(30):
        est.observe(1.05, running_at=0.95)  # done between a poll at 0.95 s and one at 1.05 s
    assert est.first_wait(0.1) == pytest.approx(0.95, abs=0.01)
    assert est.next_delay(0, 1.05) == pytest.approx(0.1)  # near the estimate: poll closely
    # Past it, the gap is a quarter of the overrun: noticed soon, polled rarely when very late.
    assert est.next_delay(3, 2.0) == pytest.approx(0.25 * (2.0 - est.seconds), abs=0.001)
    assert est.next_delay(3, 1000.0) == poll_delays()[-1]


def test_late_notices_never_teach_the_estimate_to_poll_later() -> None:
    est = DurationEstimate()
    est.observe(1.05, running_at=0.95)
    for _ in range(5):
        est.observe(4.0)  # a busy loop polled late and found the job long done
    assert est.seconds is not None and est.seconds < 1.0


def test_a_burst_of_jobs_found_done_at_once_shrinks_the_estimate_once() -> None:
    est = DurationEstimate()
    est.observe(1.05, running_at=0.95)
    for _ in range(50):  # a batch's whole round, all done by their first poll
        est.observe(1.05)
    assert est.seconds == pytest.approx(0.95, abs=0.01)


async def test_download_stops_at_the_size_cap() -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"0" * 5000

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=big, headers={"content-type": "image/png"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(InvalidOutput, match="cap"):
            await download(
                client,
                OutputRef(index=0, url="https://cdn.example/x.png"),
                rules=ReadRules(trusted_hosts=frozenset({"cdn.example"})),  # no DNS here
                max_bytes=1000,
            )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_large_downloads_are_checked_by_their_end_marker(
    fmt: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io as _io

    from PIL import Image

    from gptimg_flows.media import sniff as imageio

    monkeypatch.setattr(imageio, "FULL_VERIFY_MAX_BYTES", 10)  # every file counts as large
    buf = _io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, fmt)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.write_bytes(buf.getvalue())
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    assert imageio.sniff_file(whole).width == 64
    with pytest.raises(ValueError, match=r"truncated|not a readable image"):
        imageio.sniff_file(cut)


def _flaky(errors: list[Exception]) -> tuple[Any, list[int]]:
    """A read that raises `errors` in turn, then answers "ok"; and its call count."""
    calls = [0]

    async def read() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    return read, calls


async def test_free_reads_are_retried_in_place_after_transient_errors() -> None:
    read, calls = _flaky([ServerError("503"), TransportError("dropped")])
    seen: list[tuple[str, int]] = []
    answer = await read_with_retries(
        read, base=0.001, on_retry=lambda e, d, n: seen.append((type(e).__name__, n))
    )
    assert answer == "ok" and calls[0] == 3
    assert seen == [("ServerError", 1), ("TransportError", 2)]


async def test_a_read_that_keeps_failing_goes_up_after_its_attempts() -> None:
    read, calls = _flaky([ServerError(str(i)) for i in range(10)])
    with pytest.raises(ServerError, match="3"):
        await read_with_retries(read, attempts=4, base=0.001)
    assert calls[0] == 4


async def test_a_non_retryable_read_error_is_not_retried() -> None:
    read, calls = _flaky([AuthError("401"), ServerError("later")])
    with pytest.raises(AuthError):
        await read_with_retries(read, base=0.001)
    assert calls[0] == 1


async def test_read_retries_wait_for_retry_after_and_stop_at_the_budget() -> None:
    read, calls = _flaky([RateLimited("429", retry_after=5.0), ServerError("no")])
    with pytest.raises(RateLimited):
        await read_with_retries(read, base=0.001, budget=1.0)  # 5 s would overrun the deadline
    assert calls[0] == 1


async def test_jobs_polling_before_any_duration_is_known_wake_when_a_peer_teaches_it() -> None:
    import asyncio
    import time

    est = DurationEstimate()
    started = time.monotonic()

    async def teach() -> None:
        await asyncio.sleep(0.05)
        est.observe(1.0, running_at=0.9)

    woken = await asyncio.gather(est.sleep(5.0), est.sleep(5.0), teach())
    assert woken[:2] == [True, True] and time.monotonic() - started < 1.0
    assert await est.sleep(0.01) is False  # known now: a plain sleep


class _Timed(Provider):
    """Every job is done `seconds` after its submit; counts polls."""

    name = "timed"
    display_name = "timed"
    capabilities = OfflineProvider.capabilities

    def __init__(self, seconds: float) -> None:
        self.seconds, self.polls = seconds, 0

    async def submit(self, request: Any, inputs: Any, key: str) -> Job:
        raise NotImplementedError

    async def poll(self, job: Job) -> JobStatus:
        from datetime import UTC, datetime

        self.polls += 1
        age = (datetime.now(UTC) - job.submitted_at).total_seconds()
        state = JobState.SUCCEEDED if age >= self.seconds else JobState.RUNNING
        return JobStatus(job_id=job.job_id, state=state)


async def test_a_first_round_of_many_jobs_sends_scouts_and_the_rest_wait_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    monkeypatch.setattr(polling, "_DURATIONS", {"timed": DurationEstimate()})
    provider, n = _Timed(1.2), 60
    jobs = [Job(provider="timed", model="m", job_id=f"j{i}", key=f"k{i}") for i in range(n)]
    started = asyncio.get_running_loop().time()
    done = await asyncio.gather(*(polling.poll_until_done(provider, j, 60) for j in jobs))
    took = asyncio.get_running_loop().time() - started
    assert all(s.state is JobState.SUCCEEDED for s in done)
    # Without scouts every job walks the default rhythm (0.5, 1.25, 2.4 s: 3 polls each).
    assert provider.polls <= n + 16, provider.polls  # 4 scouts, a few polls each
    assert took < 3.0, f"the waiting jobs were noticed late: {took:.1f} s"
    assert polling._DURATIONS["timed"].scouting == 0


async def test_resumed_jobs_never_wait_for_scouts_and_a_failed_scout_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    monkeypatch.setattr(polling, "_DURATIONS", {"timed": DurationEstimate()})
    provider = _Timed(0.0)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)  # a crash's jobs, resumed by a re-run
    resumed = [
        Job(provider="timed", model="m", job_id=f"r{i}", key=f"r{i}", submitted_at=long_ago)
        for i in range(30)
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(polling.poll_until_done(provider, j, 60) for j in resumed))
    assert loop.time() - started < 2.0, "resumed jobs waited for scouts"
    assert provider.polls == 30 and polling._DURATIONS["timed"].seconds is None

    class _FirstFail(_Timed):
        async def poll(self, job: Job) -> JobStatus:
            status = await super().poll(job)
            if job.job_id in {"f0", "f1", "f2", "f3"}:  # the four scouts' jobs fail
                return status.model_copy(update={"state": JobState.FAILED})
            return status

    failing = _FirstFail(0.6)
    jobs = [Job(provider="timed", model="m", job_id=f"f{i}", key=f"f{i}") for i in range(12)]
    started = loop.time()
    done = await asyncio.gather(*(polling.poll_until_done(failing, j, 60) for j in jobs))
    assert [s.state for s in done].count(JobState.SUCCEEDED) == 8
    assert loop.time() - started < 5.0, "waiting jobs slept on although the scouts had failed"
    assert polling._DURATIONS["timed"].scouting == 0
