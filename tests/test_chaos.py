"""A 200-image batch through every fault a provider throws at once: nothing lost, nothing repaid.

Faults at the rates of the issue: 20 % of submits answer 429 (with Retry-After) or 503, 10 % of
polls fail, 5 % of downloads are truncated, 5 % of output URLs have expired, 3 % of jobs fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gptimg_flows import batch_generate
from gptimg_flows.testing.state import PRICE_PER_IMAGE

from .support.prefect_api import api_post, artifacts

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

N = 200
DEADLINE = 300.0  # seconds; the run takes well under a minute here
CHAOS = {
    "submit_429": 0.10,
    "submit_503": 0.10,
    "poll_500": 0.05,
    "poll_drop": 0.05,
    "download_truncate": 0.05,
    "url_expired": 0.05,
    "job_fail": 0.03,
}
#: What each provider's own policy charges for a failed job: Scenario keeps the charge,
#: gptimage2.ai refunds it (../shared/providers.md; the emulator follows both).
REFUNDS_FAILED_JOBS = {"scenario": False, "gptimage2ai": True}
#: Scenario re-issues an expired URL (a fresh GET of the asset); gptimage2.ai repeats the same
#: URL when asked again, so an output whose URL expired before we fetched it is lost: it must
#: then be reported by job id, like a failed job, never silently dropped.
REISSUES_URLS = {"scenario": True, "gptimage2ai": False}
#: A provider this flaky is what a block's `retries` is for: with 1 submit in 5 refused, the
#: default 5 retries still leave 200 x 0.2^6 = 1 % odds that some image runs out of them.
RETRIES = 8
SIZES = {"scenario": "256x256", "gptimage2ai": "1:1"}


async def _flow_run_id_of_last_batch() -> str:
    runs = await api_post(
        "/flow_runs/filter",
        {"sort": "START_TIME_DESC", "limit": 1, "flows": {"name": {"any_": ["batch-generate"]}}},
    )
    return str(runs[0]["id"])


@pytest.mark.parametrize("provider", ["scenario", "gptimage2ai"])
async def test_chaos_batch_archives_every_image_whose_job_did_not_fail_and_pays_once(
    provider: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.3, retry_after=0.2, seed=7, faults=CHAOS, render_mode="stamp")
    prompts = [f"chaos {provider} {i}" for i in range(N)]
    started = time.monotonic()
    result = await asyncio.wait_for(
        batch_generate(
            prompts=prompts,
            provider=provider_block(provider, retries=RETRIES),
            archive=str(archive_dir),
            concurrency=25,
            size=SIZES[provider],
            timeout_seconds=120,
        ),
        timeout=DEADLINE,
    )
    elapsed = time.monotonic() - started
    ledger = emulator.ledger()
    faults = Counter(f["kind"] for f in ledger["faults"] if f["provider"] == provider)
    # The faults really happened, near their rates (a run that injected none proves nothing).
    assert faults["submit_429"] + faults["submit_503"] >= 20, faults
    assert faults["poll_500"] + faults["poll_drop"] >= 10, faults
    assert faults["download_truncate"] >= 3 and faults["url_expired"] >= 3, faults
    assert faults["job_fail"] >= 1, faults

    # Only the provider's failed jobs (and, where URLs cannot be re-issued, the outputs whose
    # URL was born expired) are failures, each named by its job id.
    kinds = Counter(f.error_type for f in result.failures)
    lost = 0 if REISSUES_URLS[provider] else faults["url_expired"]
    assert kinds == Counter({"JobFailed": faults["job_fail"], "OutputExpired": lost}), (
        faults,
        [f for f in result.failures if f.error_type != "JobFailed"],
    )
    failed_jobs = {f.job_id for f in result.failures if f.error_type == "JobFailed"}
    lost_jobs = {f.job_id for f in result.failures if f.error_type == "OutputExpired"}
    assert None not in failed_jobs | lost_jobs

    # No duplicate submission: each prompt reached the provider once, as one job.
    subs = [s for s in ledger["submissions"] if s["provider"] == provider]
    assert len(subs) == N, f"{len(subs)} submissions for {N} prompts"
    assert len({s["body_sha256"] for s in subs}) == N, "a request was submitted twice"
    jobs = {s["job_id"] for s in subs}
    assert failed_jobs | lost_jobs <= jobs

    # Every image whose job did not fail is archived, whole, under its own job.
    assert len(result.images) == N - len(failed_jobs) - len(lost_jobs)
    assert {img.job_id for img in result.images} == jobs - failed_jobs - lost_jobs
    failed_items = {f.index for f in result.failures}
    assert sorted(img.prompt for img in result.images) == sorted(
        p for i, p in enumerate(prompts) if i not in failed_items
    )
    for img in result.images:
        data = Path(img.uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == img.sha256, img.uri
        with Image.open(img.uri) as pic:
            pic.load()
    assert len(list(archive_dir.glob("images/*/*.png"))) == len(result.images)

    # Credits = the provider's own policy: every accepted job, less refunds of failed ones.
    price = PRICE_PER_IMAGE[provider]
    charged_jobs = N - (len(failed_jobs) if REFUNDS_FAILED_JOBS[provider] else 0)
    assert ledger["credits"][provider] == pytest.approx(price * charged_jobs)
    assert result.cost == {
        "cu" if provider == "scenario" else "credits": pytest.approx(price * len(result.images))
    }

    # The run's artifact names each failed job.
    run_id = await _flow_run_id_of_last_batch()
    # Page 1 of the gallery (key `batch-generate`) holds the failures table.
    table = next(a for a in await artifacts(run_id) if a["key"] == "batch-generate")
    assert f"Batch of {N}" in table["data"]
    for job_id in failed_jobs | lost_jobs:
        assert job_id in table["data"], job_id
    assert elapsed < DEADLINE / 2, f"{elapsed:.0f} s"
