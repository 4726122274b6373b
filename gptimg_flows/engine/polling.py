"""Polling a job until it ends: timed from how long this provider's jobs have taken (learned in
this process), with a few scouts while nothing is learned, following the provider's own hints,
and reads told 429 holding the account's reads: never past the deadline, whatever a 429 asks."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from gptimg_flows.engine.pacing import reads_of
from gptimg_flows.engine.rate_limiter import gated_read
from gptimg_flows.engine.retry import DurationEstimate, read_with_retries
from gptimg_flows.engine.retry_policy import log_read_retry
from gptimg_flows.errors import JobTimeout
from gptimg_flows.models import Job, JobState, JobStatus
from gptimg_flows.providers.base import Provider

#: A job whose polling starts later than this after its submit is a resumed one.
FRESH_JOB_SECONDS = 5.0
#: Learned job durations per provider, shared by every poll loop in this process.
_DURATIONS: dict[str, DurationEstimate] = {}


async def poll_until_done(adapter: Provider, job: Job, timeout_seconds: float) -> JobStatus:
    deadline = time.monotonic() + timeout_seconds
    estimate = _DURATIONS.setdefault(adapter.name, DurationEstimate())

    def elapsed() -> float:
        return (datetime.now(UTC) - job.submitted_at).total_seconds()

    # A resumed job submitted long ago (a crash, a re-run) found done at its first poll says
    # nothing about how long jobs take: learning its age would delay every later first poll.
    fresh = elapsed() < FRESH_JOB_SECONDS
    scout = fresh and estimate.wants_scout()
    if scout:
        estimate.scouting += 1
    try:
        # Enough peers are finding out how long jobs take: wait for the first to finish (a
        # scout that leaves without teaching, its job failed, wakes one to take its place).
        # Resumed jobs never wait: they teach nothing and may be long done. Bounded anyway.
        waited_until = time.monotonic() + estimate.SCOUT_WAIT_MAX
        while fresh and estimate.seconds is None and not scout:
            now = time.monotonic()
            if now >= min(deadline, waited_until):
                break
            if estimate.wants_scout():
                scout = True
                estimate.scouting += 1
                break
            await estimate.sleep(min(estimate.SCOUT_WAIT, deadline - now, waited_until - now))
        return await _poll_loop(adapter, job, estimate, deadline, timeout_seconds, fresh)
    finally:
        if scout:
            estimate.release_scout()


async def _poll_loop(
    adapter: Provider,
    job: Job,
    estimate: DurationEstimate,
    deadline: float,
    timeout_seconds: float,
    fresh: bool,
) -> JobStatus:
    def elapsed() -> float:
        return (datetime.now(UTC) - job.submitted_at).total_seconds()

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    reads = reads_of(adapter)
    first = min(estimate.first_wait(elapsed()), left())
    # Nothing learned yet: the first wait was the default rhythm's first step.
    attempt, running_at = (0 if estimate.seconds is not None else 1), None
    if first > 0 and await estimate.sleep(first):
        await asyncio.sleep(min(estimate.first_wait(elapsed()), left()))
    on_retry = log_read_retry(f"poll of job {job.job_id}")
    while True:
        # The provider decided the state after we asked, not when its answer reached a busy
        # loop: learning from send times keeps the estimate from drifting late by the RTT.
        asked_at = elapsed()
        status = await read_with_retries(
            lambda: gated_read(reads, lambda: adapter.poll(job), deadline=deadline),
            budget=left(),
            on_retry=on_retry,
        )
        if status.state.terminal:
            if status.state is JobState.SUCCEEDED and (fresh or running_at is not None):
                estimate.observe(asked_at, running_at)
            return status
        running_at = asked_at
        now = time.monotonic()
        if now >= deadline:
            await adapter.cancel(job)
            raise JobTimeout(
                f"still {status.raw_status or status.state.value} after {timeout_seconds:.0f} s",
                provider=adapter.name,
                job_id=job.job_id,
            )
        gap = status.poll_after or estimate.next_delay(attempt, running_at)
        attempt += 1
        if status.poll_after:
            await asyncio.sleep(min(gap, max(0.0, deadline - now)))
        elif await estimate.sleep(min(gap, max(0.0, deadline - now))):
            # a peer just taught us how long jobs take: look when this one should be done
            await asyncio.sleep(min(estimate.first_wait(elapsed()), max(0.0, deadline - now)))
