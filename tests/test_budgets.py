"""Estimates before paying and budgets that hold, checked against the emulator's ledger."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import (
    BudgetExceeded,
    ImageRequest,
    batch_generate,
    estimate_cost,
    generate_edit_archive,
    generate_images,
)
from gptimg_flows.flows import BatchResult

from .support.prefect_api import api_post

pytestmark = pytest.mark.usefixtures("prefect_server")


def ledger_credits(emulator: Any, name: str) -> float:
    return float(emulator.ledger()["credits"].get(name, 0.0))


async def test_estimates_say_their_basis(provider_block: Any, tmp_path: Path) -> None:
    gpt2 = await estimate_cost(
        ImageRequest(prompt="a kite", n=3), provider=provider_block("gptimage2ai")
    )
    assert gpt2.total == {"credits": 30.0} and gpt2.basis == ["documented price"]
    prompts = tmp_path / "p.csv"
    prompts.write_text("sku,prompt,size\nA,a red kite,1024x1024\nB,a blue kite,1024x1536\n")
    openai = await estimate_cost(
        prompts=str(prompts), provider=provider_block("openai"), quality="medium"
    )
    expected = (3 * 5 + 1056 * 30 + 3 * 5 + 1584 * 30) / 1e6  # ~4 chars a text token in
    assert openai.total == {"usd": pytest.approx(expected)} and openai.basis == ["token table"]
    scenario = await estimate_cost(ImageRequest(prompt="x"), provider=provider_block("scenario"))
    assert scenario.total == {} and scenario.unknown == 1 and scenario.basis == ["unknown"]
    assert "set price_per_image (in cu)" in scenario.notes[0]
    priced = await estimate_cost(
        ImageRequest(prompt="x", n=2), provider=provider_block("scenario", price_per_image=5.0)
    )
    assert priced.total == {"cu": 10.0} and priced.basis == ["block-set price"]


async def test_a_run_over_its_budget_is_refused_before_any_provider_call(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    with pytest.raises(BudgetExceeded, match=r"max_cost=25 credits.*estimated at 30 credits"):
        await generate_images(
            prompt="a kite",
            provider=provider_block("gptimage2ai"),
            archive=str(archive_dir),
            n=3,
            size="1:1",
            max_cost=25,
        )
    with pytest.raises(BudgetExceeded, match=r"max_cost=15 credits"):
        await generate_edit_archive(  # 10 to generate + 10 to edit: refused before the first
            prompt="a kite",
            edit_prompt="add a moon",
            provider=provider_block("gptimage2ai"),
            archive=str(archive_dir),
            size="1:1",
            max_cost=15,
        )
    assert emulator.ledger()["requests"] == {}, "a refused run reached the provider"
    ok = await generate_images(
        prompt="a kite",
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        n=3,
        size="1:1",
        max_cost=30,
    )
    assert len(ok) == 3 and ledger_credits(emulator, "gptimage2ai") == 30


async def test_a_budget_with_no_price_refuses_and_says_how_to_set_one(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    with pytest.raises(BudgetExceeded, match=r"set price_per_image \(in cu\) on its credentials"):
        await batch_generate(
            prompts=["a kite"],
            provider=provider_block("scenario"),
            archive=str(archive_dir),
            size="256x256",
            max_cost=100,
        )
    assert emulator.ledger()["requests"] == {}


async def test_a_batch_stops_submitting_at_its_budget(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    prompts = [f"kite number {i}" for i in range(7)]
    result: BatchResult = await batch_generate(
        prompts=prompts,
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        size="1:1",
        concurrency=3,
        max_cost=45,
    )
    assert len(result.images) == 4, "4 x 10 credits fit in 45, a fifth would not"
    assert [f.error_type for f in result.failures] == ["BudgetExceeded"] * 3
    assert ledger_credits(emulator, "gptimage2ai") == 40 <= 45
    assert result.cost == {"credits": 40.0}
    # A re-run answers the 4 from the archive (free) and pays for 4 more within a new budget.
    again: BatchResult = await batch_generate(
        prompts=prompts,
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        size="1:1",
        concurrency=3,
        max_cost=30,
    )
    assert len(again.images) == 7 and again.cost == {"credits": 30.0}
    assert ledger_credits(emulator, "gptimage2ai") == 70


async def test_a_daily_spend_limit_holds_across_two_runs_at_once(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """Two flow runs at once, one spend bucket on the server: 50 credits a day, 10 an image."""
    name = f"gpt2-daily-{uuid.uuid4().hex[:6]}"
    await api_post(
        "/v2/concurrency_limits/", {"name": name, "limit": 50, "slot_decay_per_second": 50 / 86400}
    )
    emulator.configure(latency=0.3)
    block = provider_block(
        "gptimage2ai", spend_limit=name, spend_limit_unit=1.0, spend_limit_wait_seconds=1.0
    )

    async def one(run: int) -> BatchResult:
        result: BatchResult = await batch_generate(
            prompts=[f"run {run} kite {i}" for i in range(4)],
            provider=block,
            archive=str(archive_dir),
            size="1:1",
            concurrency=4,
        )
        return result

    first, second = await asyncio.gather(one(1), one(2))

    made = len(first.images) + len(second.images)
    assert made == 5, (first.failures, second.failures)
    assert ledger_credits(emulator, "gptimage2ai") == 50
    failures = first.failures + second.failures
    assert {f.error_type for f in failures} == {"BudgetExceeded"}
    assert f"spend limit {name!r} is used up" in failures[0].error


async def test_a_spend_limit_that_does_not_exist_is_refused_before_paying(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    from gptimg_flows.errors import InvalidRequest

    block = provider_block("gptimage2ai", spend_limit="no-such-spend-limit")
    with pytest.raises(InvalidRequest, match=r"spend limit 'no-such-spend-limit' does not exist"):
        await generate_images(prompt="a kite", provider=block, archive=str(archive_dir), size="1:1")
    assert emulator.ledger()["requests"] == {}
