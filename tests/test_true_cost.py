"""Costs that are true: what a run spent (nothing for images answered from the archive) apart
from what the images originally cost, and OpenAI billed from the token usage it reports —
each checked against the emulator's ledger, the provider's side of the story."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import batch_generate, generate_edit_archive, generate_images
from gptimg_flows.flows import BatchResult, PipelineResult

from .support.prefect_api import artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")


def ledger_credits(emulator: Any, name: str) -> float:
    return float(emulator.ledger()["credits"].get(name, 0.0))


async def test_openai_cost_is_the_token_bill_the_ledger_shows(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    images = await generate_images(
        prompt="a lighthouse poster",
        provider=provider_block("openai"),
        archive=str(archive_dir),
        n=2,
        size="1024x1536",
        quality="medium",
    )
    assert {i.cost_unit for i in images} == {"usd"}
    billed = ledger_credits(emulator, "openai")
    assert sum(i.cost or 0 for i in images) == pytest.approx(billed, abs=1e-6)
    # about 0.048 USD an image at 1024x1536 medium, not the old flat 0.04
    assert billed / 2 == pytest.approx(0.0476, abs=0.0005)


async def test_a_rerun_from_the_archive_spends_nothing_and_says_what_the_images_cost(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    kw: dict[str, Any] = {
        "prompt": "a lighthouse",
        "edit_prompt": "add a storm",
        "provider": provider_block("scenario"),
        "archive": str(archive_dir),
        "size": "256x256",
    }
    first: PipelineResult = await generate_edit_archive(**kw)
    paid = ledger_credits(emulator, "scenario")
    assert first.cost == first.images_cost == {"cu": pytest.approx(paid)} and paid > 0

    state = await generate_edit_archive(**kw, return_state=True)
    again: PipelineResult = await state.result()

    assert ledger_credits(emulator, "scenario") == paid, "the re-run was billed"
    assert again.cost == {"cu": 0.0} and again.images_cost == first.images_cost
    assert all(i.from_archive for i in again.generated + again.edited)
    [artifact] = [
        a for a in await artifacts(str(state.state_details.flow_run_id)) if a["type"] == "markdown"
    ]
    assert "This run spent: 0 cu; the images originally cost " in artifact["data"], artifact
    assert "(2 answered from the archive)" in artifact["data"]


async def test_a_partly_cached_batch_spends_only_for_its_new_rows(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    block = provider_block("gptimage2ai")
    first: BatchResult = await batch_generate(
        prompts=["a red kite", "a blue kite"], provider=block, archive=str(archive_dir), size="1:1"
    )
    assert first.cost == {"credits": 20.0}
    second: BatchResult = await batch_generate(
        prompts=["a red kite", "a blue kite", "a green kite"],
        provider=block,
        archive=str(archive_dir),
        size="1:1",
    )
    assert second.cost == {"credits": 10.0} and second.images_cost == {"credits": 30.0}
    assert ledger_credits(emulator, "gptimage2ai") == 30.0
    assert [i.from_archive for i in second.images] == [True, True, False]


async def test_gptimg_spend_reads_what_was_paid_from_the_sidecars(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    import json
    from datetime import UTC, datetime

    from .test_cli import gptimg

    await batch_generate(
        prompts=["a kite", "a boat"],
        provider=provider_block("gptimage2ai"),
        archive=str(archive_dir),
        size="1:1",
    )
    await generate_images(
        prompt="a lighthouse",
        provider=provider_block("scenario"),
        archive=str(archive_dir),
        size="256x256",
    )
    scenario_paid = ledger_credits(emulator, "scenario")

    done = gptimg("spend", str(archive_dir), "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["group"], r["unit"]): r for r in json.loads(done.stdout)}
    assert rows[("gptimage2ai", "credits")]["amount"] == ledger_credits(emulator, "gptimage2ai")
    assert rows[("gptimage2ai", "credits")]["images"] == 2
    assert rows[("scenario", "cu")]["amount"] == pytest.approx(scenario_paid)
    today = datetime.now(UTC).date().isoformat()
    by_day = gptimg("spend", str(archive_dir), "--by", "day", "--since", today)
    assert by_day.returncode == 0 and today in by_day.stdout, by_day.stdout
    later = gptimg("spend", str(archive_dir), "--since", "2999-01-01")
    assert "no archived images" in later.stdout
    bad = gptimg("spend", str(archive_dir), "--since", "yesterday")
    assert bad.returncode == 2 and "since: 'yesterday' is not YYYY-MM-DD" in bad.stderr
