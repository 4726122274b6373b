"""OpenAI's Batch API at half price: one batch, rows in order, nothing paid twice across a lost
create answer, a run that stops waiting, and a re-run — against the emulator's ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import batch_generate
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.flows import BatchResult
from gptimg_flows.spend.prices import BATCH_DISCOUNT, usage_cost
from gptimg_flows.testing.routes_openai import usage_for

pytestmark = pytest.mark.usefixtures("prefect_server")

PROMPTS = [f"a paper kite number {i}" for i in range(12)]
FAST = {"batch_poll_seconds": 0.2, "size": "256x256", "quality": "low"}


async def run(block: Any, archive: Path, prompts: list[str] = PROMPTS, **kw: Any) -> BatchResult:
    result: BatchResult = await batch_generate(
        prompts=prompts, provider=block, archive=str(archive), batch_api=True, **{**FAST, **kw}
    )
    return result


async def test_a_batch_is_one_half_price_batch_with_rows_in_order(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=1.0)
    result = await run(provider_block("openai"), archive_dir)

    ledger = emulator.ledger()
    assert len(ledger["batches"]) == 1 and ledger["batches"][0]["lines"] == 12
    assert len(ledger["submissions"]) == 12 and ledger["requests"]["openai"]["submit"] == 1
    assert result.failures == []
    assert [i.row for i in result.images] == list(range(12))
    assert [i.prompt for i in result.images] == PROMPTS
    full = sum(usage_cost(usage_for(p, 256, 256, "low", 0)) or 0 for p in PROMPTS)
    assert result.cost["usd"] == pytest.approx(full * BATCH_DISCOUNT, abs=2e-5)  # per-line rounding
    assert result.cost["usd"] == pytest.approx(ledger["credits"]["openai"], abs=2e-5)
    sidecar = json.loads(Path(result.images[3].sidecar_uri).read_text())
    assert sidecar["row"] == 3 and sidecar["job_id"] == ledger["batches"][0]["batch_id"]

    again = await run(provider_block("openai"), archive_dir)
    assert all(i.from_archive for i in again.images) and again.cost == {"usd": 0.0}
    assert len(emulator.ledger()["batches"]) == 1, "a re-run created another batch"


async def test_another_provider_has_no_batch_api(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    with pytest.raises(InvalidRequest, match=r"batch_api: Scenario has no batch API") as caught:
        await run(provider_block("scenario"), archive_dir, size="256x256")
    assert caught.value.field == "batch_api"
    assert emulator.ledger()["requests"] == {}


async def test_a_lost_create_answer_is_looked_up_not_sent_again(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=0.5)
    emulator.force("submit_lost_response", provider="openai")
    first = await run(provider_block("openai"), archive_dir)
    assert first.images == [] and {f.error_type for f in first.failures} == {"BatchPending"}
    assert "may have been created" in first.failures[0].error
    assert "TransportError" in first.failures[0].error
    records = [json.loads(p.read_text()) for p in archive_dir.glob("_batches/*.json")]
    assert [r["state"] for r in records] == ["creating"]

    second = await run(provider_block("openai"), archive_dir)

    assert len(emulator.ledger()["batches"]) == 1, "the batch was created twice"
    assert second.failures == [] and len(second.images) == 12
    assert len(emulator.ledger()["submissions"]) == 12


async def test_a_run_may_end_before_its_batch_and_a_later_run_collects_it(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    emulator.configure(latency=3.0)
    early = await run(provider_block("openai"), archive_dir, batch_wait_seconds=0.5)
    assert early.images == [] and {f.error_type for f in early.failures} == {"BatchPending"}
    assert "re-run to collect it" in early.failures[0].error

    later = await run(provider_block("openai"), archive_dir, prompts=PROMPTS[:6] + PROMPTS[6:])
    assert len(later.images) == 12 and later.failures == []
    ledger = emulator.ledger()
    assert len(ledger["batches"]) == 1 and len(ledger["submissions"]) == 12


async def test_failed_lines_are_failures_of_their_rows_and_a_budget_is_one_purchase(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    from gptimg_flows import BudgetExceeded

    with pytest.raises(BudgetExceeded, match=r"half the token-table price"):
        await run(provider_block("openai"), archive_dir, max_cost=0.00001)
    assert emulator.ledger()["requests"] == {}, "a refused batch reached OpenAI"

    emulator.configure(latency=0.5)
    emulator.force("job_fail", provider="openai", count=2)
    result = await run(provider_block("openai"), archive_dir, max_cost=1.0)
    assert len(result.images) == 10 and len(result.failures) == 2
    assert {f.error_type for f in result.failures} == {"JobFailed"}
    assert all("HTTP 500" in f.error for f in result.failures)
    assert sorted({i.row for i in result.images} | {f.index for f in result.failures}) == list(
        range(12)
    )
    assert len(emulator.ledger()["submissions"]) == 10, "failed lines are not billed"
