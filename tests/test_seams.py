"""Where features meet (issue #32): the Batch API, routes, a lone provider and gateway errors all
obey one job record, on the emulator and a real Prefect server. Each test is a finding of the
issue that paid twice (or stuck a member) before the record's state machine was shared."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import batch_generate, generate_images
from gptimg_flows.engine import route_health as health
from gptimg_flows.errors import BudgetExceeded, SubmitUncertain
from gptimg_flows.flows import BatchResult

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST_BATCH = {"batch_poll_seconds": 0.2, "size": "256x256", "quality": "low"}


def _records(archive_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(archive_dir.glob("_jobs/*.json"))]


def _paid(emulator: Any, provider: str | None = None) -> int:
    subs = emulator.ledger()["submissions"]
    return sum(1 for s in subs if provider is None or s["provider"] == provider)


def _forget_results(archive_dir: Path) -> None:
    """As if the run was killed after the job was recorded and before it was archived."""
    for path in archive_dir.glob("_results/*.json"):
        path.unlink()


# -- 1. the Batch API meets a synchronous record --------------------------------------------


async def test_a_batch_api_rerun_never_sends_a_row_whose_synchronous_answer_was_lost(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    block = provider_block("openai")
    emulator.force("submit_lost_response", provider="openai")  # paid, answer lost
    prompts = ["seam lost answer 0", "seam lost answer 1"]
    first: BatchResult = await batch_generate(
        prompts=prompts, provider=block, archive=str(archive_dir), concurrency=1, **FAST_BATCH
    )
    assert [f.error_type for f in first.failures] == ["SubmitUncertain"]
    assert _paid(emulator) == 2

    again: BatchResult = await batch_generate(
        prompts=prompts, provider=block, archive=str(archive_dir), batch_api=True, **FAST_BATCH
    )

    assert emulator.ledger()["batches"] == [], "a batch paid again for a row paid synchronously"
    assert _paid(emulator) == 2
    assert [f.error_type for f in again.failures] == ["SubmitUncertain"]
    assert "may have been billed" in again.failures[0].error
    assert len(again.images) == 1 and again.images[0].from_archive
    states = sorted(r.get("state", "?") for r in _records(archive_dir))
    assert states == ["submitted", "submitting"], "the evidence of a payment was overwritten"


async def test_a_batch_api_rerun_resumes_a_synchronous_job_on_record(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    block = provider_block("openai")
    prompts = ["seam resume 0", "seam resume 1"]
    await batch_generate(prompts=prompts, provider=block, archive=str(archive_dir), **FAST_BATCH)
    _forget_results(archive_dir)

    again: BatchResult = await batch_generate(
        prompts=prompts, provider=block, archive=str(archive_dir), batch_api=True, **FAST_BATCH
    )

    assert emulator.ledger()["batches"] == []
    assert _paid(emulator) == 2, "a row paid synchronously was paid again"
    assert again.failures == [] and [i.row for i in again.images] == [0, 1]
    assert all(r["state"] == "submitted" for r in _records(archive_dir))


# -- 2. a route meets a record a member made alone (and the other way round) -----------------


async def test_a_route_resumes_a_job_its_member_made_alone(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.2)
    await provider_block("scenario").save("seam-s", overwrite=True)
    await provider_block("gptimage2ai").save("seam-g", overwrite=True)
    kw = {"prompt": "seam alone then routed", "archive": str(archive_dir), "size": "1024x1024"}
    await generate_images(provider="seam-s", **kw)
    _forget_results(archive_dir)

    images = await generate_images(provider=["seam-s", "seam-g"], **kw)

    assert _paid(emulator) == 1, emulator.ledger()["submissions"]
    assert len(images) == 1 and images[0].provider == "scenario"
    again = await generate_images(provider="seam-s", **kw)
    assert again[0].from_archive and _paid(emulator) == 1


async def test_a_lone_provider_resumes_a_job_a_route_sent_it(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.2)
    await provider_block("scenario").save("seam-s2", overwrite=True)
    await provider_block("gptimage2ai").save("seam-g2", overwrite=True)
    kw = {"prompt": "seam routed then alone", "archive": str(archive_dir), "size": "1024x1024"}
    await generate_images(provider=["seam-s2", "seam-g2"], **kw)
    _forget_results(archive_dir)

    images = await generate_images(provider="seam-s2", **kw)

    assert _paid(emulator) == 1, emulator.ledger()["submissions"]
    assert len(images) == 1 and images[0].provider == "scenario"


# -- 3. a gateway 5xx after the seller created the job --------------------------------------


async def test_a_gateway_504_after_the_job_exists_never_moves_the_request_on(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.force("gateway_504", provider="scenario")
    route = [provider_block("scenario"), provider_block("gptimage2ai")]
    with pytest.raises(SubmitUncertain, match=r"HTTP 504.*may have been billed"):
        await generate_images(
            prompt="seam 504 routed", provider=route, archive=str(archive_dir), size="1024x1024"
        )
    assert _paid(emulator, "gptimage2ai") == 0, "a second seller was paid for one image"
    assert _paid(emulator) == 1


async def test_a_gateway_504_at_a_lone_provider_is_uncertain_not_paid_again(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.force("gateway_504", provider="scenario")
    kw = {"prompt": "seam 504 alone", "archive": str(archive_dir), "size": "1024x1024"}
    block = provider_block("scenario")
    with pytest.raises(SubmitUncertain):
        await generate_images(provider=block, **kw)
    with pytest.raises(SubmitUncertain):
        await generate_images(provider=block, **kw)
    assert _paid(emulator) == 1


async def test_a_gateway_504_at_runware_is_looked_up_by_our_key_and_collected(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.2)
    emulator.force("gateway_504", provider="runware")
    route = [provider_block("runware"), provider_block("gptimage2ai")]
    images = await generate_images(
        prompt="seam 504 runware", provider=route, archive=str(archive_dir), size="256x256"
    )
    assert len(images) == 1 and images[0].provider == "runware"
    assert _paid(emulator) == 1 and _paid(emulator, "gptimage2ai") == 0


# -- 6. a probe refused by the run's budget -------------------------------------------------


async def test_a_probe_refused_by_the_budget_leaves_the_member_usable(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    probed = provider_block("runware", price_per_image=0.05)  # priced in USD, as openai is
    other = provider_block("openai")
    account = probed.get_provider().account
    policy = type("P", (), {"failures_to_cool": 1, "failure_ratio": 0.5})()
    policy.window_seconds, policy.cooldown_seconds = 60.0, 0.01  # type: ignore[attr-defined]
    assert health.failed(account, time.monotonic(), policy)  # type: ignore[arg-type]
    time.sleep(0.05)  # cooled: the next request there is its probe
    with pytest.raises(BudgetExceeded):
        await generate_images(
            prompt="seam probe over budget",
            provider=[probed, other],
            archive=str(archive_dir),
            size="1024x1024",
            max_cost=0.0001,
        )
    assert health.available(account, time.monotonic()), "the member is stuck 'probing'"
    assert _paid(emulator) == 0
