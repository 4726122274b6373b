"""Edits through OpenAI's Batch API: half the synchronous token bill, inputs uploaded once as
files, the pipeline's generation and edits as two batches, and a kill -9 mid-batch whose
re-run creates no second batch — against the emulator's ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gptimg_flows import edit_image, generate_edit_archive
from gptimg_flows.errors import BatchPending, InvalidRequest
from gptimg_flows.spend.prices import BATCH_DISCOUNT

from .support.images import png_file, sky_mask

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST = {"batch_poll_seconds": 0.2, "size": "1024x1024", "quality": "low"}


def _inputs(tmp_path: Path) -> tuple[str, str]:
    source = png_file(tmp_path / "source.png", (1024, 1024))
    return str(source), str(sky_mask(tmp_path / "mask.png", (1024, 1024)))


async def test_an_edit_batch_costs_half_the_synchronous_token_bill(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    source, mask = _inputs(tmp_path)
    kwargs: dict[str, Any] = dict(image=source, mask=mask, prompt="a storm sky", **FAST)
    kwargs.pop("batch_poll_seconds")
    emulator.configure(latency=0.2)
    now = await edit_image(provider=provider_block("openai"), archive=str(tmp_path / "a"), **kwargs)
    sync_bill = emulator.ledger()["credits"]["openai"]

    emulator.reset()
    emulator.configure(latency=0.5)
    batched = await edit_image(
        provider=provider_block("openai"),
        archive=str(tmp_path / "b"),
        batch_api=True,
        batch_poll_seconds=0.2,
        **kwargs,
    )
    ledger = emulator.ledger()
    assert len(ledger["batches"]) == 1 and ledger["batches"][0]["lines"] == 1
    assert ledger["requests"]["openai"]["upload"] == 3, "the JSONL, the image and the mask"
    assert ledger["credits"]["openai"] == pytest.approx(sync_bill * BATCH_DISCOUNT, abs=1e-6)
    assert batched[0].cost == pytest.approx(now[0].cost * BATCH_DISCOUNT, abs=1e-6)
    assert batched[0].job_id == ledger["batches"][0]["batch_id"]
    sidecar = json.loads(Path(batched[0].sidecar_uri).read_text())
    assert sidecar["parents"] and sidecar["row"] is None, "lineage, and no batch row"
    assert Path(sidecar["parents"][0].removeprefix("file://")).exists()
    assert (batched[0].width, batched[0].height) == (1024, 1024)

    again = await edit_image(
        provider=provider_block("openai"),
        archive=str(tmp_path / "b"),
        batch_api=True,
        batch_poll_seconds=0.2,
        **kwargs,
    )
    assert again[0].from_archive and len(emulator.ledger()["batches"]) == 1


async def test_an_edit_size_the_json_edit_body_does_not_take_is_refused_before_paying(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    source, _ = _inputs(tmp_path)
    with pytest.raises(InvalidRequest, match="1536x1024") as caught:
        await edit_image(
            image=source,
            prompt="a storm sky",
            provider=provider_block("openai"),
            archive=str(tmp_path / "a"),
            batch_api=True,
            size="1024x768",
        )
    assert caught.value.field == "size"
    assert emulator.ledger()["requests"] == {}


async def test_a_pipeline_sends_its_candidates_then_their_edits_as_two_batches(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    _, mask = _inputs(tmp_path)
    emulator.configure(latency=0.3)
    result = await generate_edit_archive(
        prompt="a lighthouse at dawn",
        edit_prompt="replace the sky with a storm",
        mask=mask,
        provider=provider_block("openai"),
        archive=str(tmp_path / "archive"),
        n=2,
        batch_api=True,
        **FAST,
    )
    ledger = emulator.ledger()
    assert [b["lines"] for b in ledger["batches"]] == [1, 2]
    assert len(result.generated) == 2 and len(result.edited) == 2
    assert {e.parents[0] for e in result.edited} == {g.uri for g in result.generated}
    assert result.cost["usd"] == pytest.approx(ledger["credits"]["openai"], abs=1e-6)
    assert {i.job_id for i in result.generated} == {ledger["batches"][0]["batch_id"]}


async def test_a_run_that_stops_waiting_reports_the_edit_pending_and_a_rerun_collects_it(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    source, mask = _inputs(tmp_path)
    emulator.configure(latency=3.0)
    kwargs: dict[str, Any] = dict(
        image=source,
        mask=mask,
        prompt="a storm sky",
        provider=provider_block("openai"),
        archive=str(tmp_path / "a"),
        batch_api=True,
        **FAST,
    )
    with pytest.raises(BatchPending):
        await edit_image(**kwargs, batch_wait_seconds=0.5)
    made = await edit_image(**kwargs)
    assert len(made) == 1 and not made[0].from_archive
    assert len(emulator.ledger()["batches"]) == 1, "the re-run collected the recorded batch"


@pytest.mark.slow
async def test_kill_9_mid_edit_batch_then_rerun_creates_no_second_batch(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    from tests.test_crash_resume import _block_fields, _kill_9_flow_process, _wait_for

    source, mask = _inputs(tmp_path)
    emulator.configure(latency=6.0)
    block = provider_block("openai")
    kwargs: dict[str, Any] = dict(
        image=source,
        mask=mask,
        prompt="a storm sky",
        archive=str(tmp_path / "a"),
        batch_api=True,
        **FAST,
    )
    spec = {
        "flow": "edit_image",
        "provider": "openai",
        "block": _block_fields(block),
        "kwargs": kwargs,
    }
    _kill_9_flow_process(
        spec, when=lambda: _wait_for(lambda: emulator.ledger()["batches"], 90, "the batch")
    )
    assert not list((tmp_path / "a").glob("images/*/*.json")), "killed before it was archived"
    made = await edit_image(provider=block, **kwargs)
    assert len(made) == 1
    ledger = emulator.ledger()
    assert len(ledger["batches"]) == 1 and len(ledger["submissions"]) == 1


async def test_an_edit_batch_over_max_cost_is_refused_before_anything_is_sent(
    emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    from gptimg_flows.errors import BudgetExceeded

    source, mask = _inputs(tmp_path)
    with pytest.raises(BudgetExceeded):
        await edit_image(
            image=source,
            mask=mask,
            prompt="a storm sky",
            provider=provider_block("openai"),
            archive=str(tmp_path / "a"),
            batch_api=True,
            max_cost=0.0001,
            **FAST,
        )
    assert emulator.ledger()["requests"] == {}
