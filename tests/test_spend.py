"""Spend that follows the money (issue #35): the daily cap (a block's spend limit, a Prefect global
concurrency limit on the real test server) is taken by the Batch API too, and a reservation goes
back when the provider says nothing was created, and stays when the answer is ambiguous."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from gptimg_flows import batch_generate
from gptimg_flows.archive.layout import job_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.blocks.credentials import provider_of
from gptimg_flows.engine.records import request_key, try_claim
from gptimg_flows.flows import BatchResult
from gptimg_flows.models import ImageRequest

from .support.prefect_api import api_post

pytestmark = pytest.mark.usefixtures("prefect_server")


async def _bucket(limit: int) -> str:
    name = f"spend-{uuid.uuid4().hex[:8]}"
    await api_post(
        "/v2/concurrency_limits/", {"name": name, "limit": limit, "slot_decay_per_second": 1e-6}
    )
    return name


async def _held(name: str) -> int:
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
    return int(limit.active_slots)


async def test_the_batch_api_takes_its_lines_from_the_daily_cap(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """A cap of 2 lines: 2 are sent in the batch, the other 4 are refused, saying so."""
    name = await _bucket(2)
    block = provider_block(
        "openai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=0.5
    )
    result: BatchResult = await batch_generate(
        prompts=[f"a capped batch line {i}" for i in range(6)],
        provider=block,
        archive=str(archive_dir),
        batch_api=True,
        batch_poll_seconds=0.2,
        size="256x256",
        quality="low",
    )
    batches = emulator.ledger()["batches"]
    assert [b["lines"] for b in batches] == [2], batches
    assert len(result.images) == 2
    assert [f.error_type for f in result.failures] == ["BudgetExceeded"] * 4
    assert all("not sent in the batch" in f.error for f in result.failures)
    assert await _held(name) == 2  # each line's half price fills its one slot of 1 USD


async def test_a_reservation_goes_back_when_nothing_was_created_and_stays_when_in_doubt(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """50 credits a day, 10 an image: 3 submits refused for credits (402) take nothing; one
    answered by a gateway 504 after its job was made keeps its 10; 4 more rows fit in the
    40 left."""
    name = await _bucket(50)
    emulator.configure(latency=0.2)
    block = provider_block(
        "gptimage2ai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=0.5
    )
    kw: dict[str, Any] = {"provider": block, "archive": str(archive_dir), "size": "1:1"}

    emulator.configure(balance={"gptimage2ai": 0})
    refused: BatchResult = await batch_generate(prompts=[f"no credit {i}" for i in range(3)], **kw)
    assert [f.error_type for f in refused.failures] == ["InsufficientCredits"] * 3
    assert await _held(name) == 0, "a refused submit kept its reservation"

    emulator.configure(balance={})
    emulator.force("gateway_504", provider="gptimage2ai")
    doubt: BatchResult = await batch_generate(prompts=["in doubt"], **kw)
    assert [f.error_type for f in doubt.failures] == ["SubmitUncertain"]
    assert await _held(name) == 10, "an answer that may have been billed gave its reservation back"

    made: BatchResult = await batch_generate(prompts=[f"fits {i}" for i in range(4)], **kw)
    assert made.failures == [] and len(made.images) == 4
    assert await _held(name) == 50


async def test_the_run_budget_is_given_back_for_a_refused_submit(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """max_cost of two images: the first row is refused by moderation (nothing made), so the
    next two are both made."""
    block = provider_block("runware", price_per_image=0.05)
    result: BatchResult = await batch_generate(
        prompts=["a FORBIDDEN poster", "allowed poster 1", "allowed poster 2"],
        provider=block,
        archive=str(archive_dir),
        size="256x256",
        concurrency=1,
        max_cost=0.1,
    )
    assert [f.error_type for f in result.failures] == ["ContentRejected"]
    assert len(result.images) == 2


async def test_a_batch_create_refused_with_503_holds_nothing_and_is_sent_next_time(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """Found by the seams simulation: a 503 on the create kept the batch record at "creating"
    and its lines' reservations, though OpenAI had made nothing."""
    name = await _bucket(10)
    block = provider_block(
        "openai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=0.5
    )
    kw: dict[str, Any] = {
        "prompts": [f"a refused batch line {i}" for i in range(3)],
        "provider": block,
        "archive": str(archive_dir),
        "batch_api": True,
        "batch_poll_seconds": 0.2,
        "size": "256x256",
        "quality": "low",
    }
    emulator.force("submit_503", provider="openai")
    refused: BatchResult = await batch_generate(**kw)
    assert {f.error_type for f in refused.failures} == {"ServerError"}
    assert await _held(name) == 0 and list(archive_dir.glob("_batches/*.json")) == []

    made: BatchResult = await batch_generate(**kw)
    assert made.failures == [] and len(made.images) == 3
    assert [b["lines"] for b in emulator.ledger()["batches"]] == [3]
    assert await _held(name) == 3


async def test_a_run_that_pays_after_another_runs_claim_is_withdrawn_takes_from_the_cap(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """The request is claimed by another live run when this one starts (it waits, paying
    nothing); that claim is then withdrawn (its submit refused), so this run pays: it must
    take its 10 credits from the cap like any paid submit (it used to take none)."""
    name = await _bucket(50)
    block = provider_block(
        "gptimage2ai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=0.5
    )
    request = ImageRequest(prompt="claimed elsewhere first", size="1:1")
    key = request_key(provider_of(block), request, [], "0")
    archive = Archive(str(archive_dir))
    claim = try_claim(archive, key, {"state": "submitting", "key": key, "provider": "gptimage2ai"})
    assert claim.owner is not None
    withdrawn_at: list[float] = []

    def withdraw() -> None:
        time.sleep(1.5)
        archive.delete(job_rel(key))
        withdrawn_at.append(time.time())

    threading.Thread(target=withdraw, daemon=True).start()
    result: BatchResult = await batch_generate(
        prompts=[request.prompt], provider=block, archive=str(archive_dir), size="1:1"
    )
    assert result.failures == [] and len(result.images) == 1
    assert withdrawn_at, "the run paid before the other claim was withdrawn: it never met it"
    assert len(emulator.ledger()["submissions"]) == 1
    assert await _held(name) == 10, "a submit paid after a withdrawn claim took nothing"


async def test_a_take_cut_by_a_stop_gives_its_slots_back_once_the_server_counted_them(
    provider_block: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the seams simulation (seed 469): a run stopped while its take of the cap was
    on the wire left the slots held for a submit that was never sent."""
    import asyncio

    from gptimg_flows.engine import spend_limit
    from gptimg_flows.spend.prices import Price

    name = await _bucket(10)
    block = provider_block(
        "gptimage2ai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=0.5
    )
    real = spend_limit._increment
    counted = asyncio.Event()

    async def slow_answer(*args: Any) -> str:
        outcome = await real(*args)  # the server has counted the slots
        counted.set()
        await asyncio.sleep(1.0)  # ... and its answer is still on its way
        return outcome

    monkeypatch.setattr(spend_limit, "_increment", slow_answer)
    take = asyncio.ensure_future(
        spend_limit.take_spend(block, Price(amount=3.0, unit="credits", basis="documented price"))
    )
    await counted.wait()
    take.cancel()
    with pytest.raises(asyncio.CancelledError):
        await take
    for _ in range(50):
        if await _held(name) == 0:
            break
        await asyncio.sleep(0.1)
    assert await _held(name) == 0, "a take cut by a stop kept its slots"
