"""Routes: several sellers of GPT Image 2 as one provider, on the emulator and a real Prefect
server. A request goes to a member that can make it, moves on only while nothing was paid, stays
with its member once submitted, and is never paid twice whichever member made it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client

from gptimg_flows import ProviderRoute, batch_generate, edit_image, generate_images
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.results import BatchResult

pytestmark = pytest.mark.usefixtures("prefect_server")


def _sidecars(archive_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in archive_dir.glob("images/*/*.json")]


def _paid(ledger: dict[str, Any], provider: str) -> int:
    return sum(1 for s in ledger["submissions"] if s["provider"] == provider)


async def _artifact(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1
        )
    return str(found[0].data)


async def test_a_200_row_batch_over_a_down_and_a_healthy_member_is_all_made_by_the_healthy_one(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """scenario answers 503 to everything; every row is made by gptimage2.ai, scenario is
    paid for nothing, and scenario is asked only a few times (it cools down)."""
    rows = 200
    emulator.configure(
        latency=0.05,
        render_mode="stamp",
        outages=[{"provider": "scenario", "status": 503}],
    )
    await provider_block("scenario").save("route-down", overwrite=True)
    await provider_block("gptimage2ai").save("route-healthy", overwrite=True)
    result: BatchResult = await batch_generate(
        prompts=[f"route row {i}" for i in range(rows)],
        provider=["route-down", "route-healthy"],
        archive=str(archive_dir),
        concurrency=16,
    )
    assert not result.failures, result.failures[:3]
    assert len(result.images) == rows
    assert {img.member for img in result.images} == {"route-healthy"}
    assert sorted(img.row for img in result.images) == list(range(rows))
    ledger = emulator.ledger()
    assert _paid(ledger, "scenario") == 0
    assert _paid(ledger, "gptimage2ai") == rows
    refused = [f for f in ledger["faults"] if f["kind"] == "outage_503"]
    assert 1 <= len(refused) < 40, "a member that keeps failing cools down: not asked per row"
    assert {s["member"] for s in _sidecars(archive_dir)} == {"route-healthy"}
    table = await _artifact("batch-generate")
    assert "| route-down | 0 | 0 |" in table and "| route-healthy | 200 | 0 |" in table

    again: BatchResult = await batch_generate(
        prompts=[f"route row {i}" for i in range(rows)],
        provider=["route-down", "route-healthy"],
        archive=str(archive_dir),
        concurrency=16,
    )
    assert len(again.images) == rows and all(i.from_archive for i in again.images)
    assert len(emulator.ledger()["submissions"]) == rows, "a re-run pays nothing"


async def test_an_outage_mid_batch_moves_the_rest_over_and_the_member_comes_back(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """scenario stops taking jobs 1.5 s into the batch, for 3 s (its polls still answer: with
    them down too, rows in flight there wait for it, holding the batch's slots, and they must:
    a submitted request never moves); the route cools it for 2 s after three failures, probes
    it, and sends it work again once it is back."""
    emulator.configure(latency=0.3, render_mode="stamp")
    await provider_block("scenario").save("mid-first", overwrite=True)
    await provider_block("gptimage2ai").save("mid-second", overwrite=True)
    route = ProviderRoute(
        providers=["mid-first", "mid-second"], cooldown_seconds=2.0, failures_to_cool=3
    )
    await route.save("mid-route", overwrite=True)
    emulator.configure(
        outages=[
            {"provider": "scenario", "start": 1.5, "end": 4.5, "status": 503, "scope": "submit"}
        ]
    )
    configured = time.time()
    result: BatchResult = await batch_generate(
        prompts=[f"mid outage {i}" for i in range(60)],
        provider="mid-route",
        archive=str(archive_dir),
        concurrency=2,
    )
    assert not result.failures, result.failures[:3]
    assert len(result.images) == 60
    ledger = emulator.ledger()
    at = {
        p: [s["at"] - configured for s in ledger["submissions"] if s["provider"] == p]
        for p in ("scenario", "gptimage2ai")
    }
    assert any(t < 1.5 for t in at["scenario"]), "scenario made rows before its outage"
    assert not any(1.6 < t < 4.4 for t in at["scenario"]), "nothing paid there while down"
    assert at["gptimage2ai"], "the rest moved over"
    assert any(t > 4.5 for t in at["scenario"]), "it came back after its cooldown"
    assert len(ledger["submissions"]) == 60, "each row paid once"
    members = {img.member for img in result.images}
    assert members == {"mid-first", "mid-second"}


async def test_cheapest_picks_by_price_in_usd_and_skips_members_that_cannot(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """runware at $0.05 an image, gptimage2.ai at 10 credits of $0.004 ($0.04), scenario at
    4 CU of $0.005 ($0.02): `order` takes runware, `cheapest` scenario; a WebP request, which
    neither scenario nor gptimage2.ai can make, goes to runware."""
    emulator.configure(latency=0.05)
    await provider_block("runware", price_per_image=0.05).save("cheap-runware", overwrite=True)
    await provider_block("gptimage2ai", usd_per_unit=0.004).save("cheap-credits", overwrite=True)
    await provider_block("scenario", price_per_image=4.0, usd_per_unit=0.005).save(
        "cheap-cu", overwrite=True
    )
    members = ["cheap-runware", "cheap-credits", "cheap-cu"]
    await ProviderRoute(providers=members, strategy="cheapest").save("cheap-route", overwrite=True)

    made = await generate_images(
        prompt="first seller", provider=members, archive=str(archive_dir), size="1024x1024"
    )
    assert [i.member for i in made] == ["cheap-runware"], "order: the first member"
    made = await generate_images(
        prompt="cheapest seller",
        provider="cheap-route",
        archive=str(archive_dir),
        size="1024x1024",
    )
    assert [i.member for i in made] == ["cheap-cu"]
    assert made[0].cost_unit == "cu", "billed in its own unit"
    made = await generate_images(
        prompt="a seller that makes webp",
        provider="cheap-route",
        archive=str(archive_dir),
        size="1024x1024",
        output_format="webp",
    )
    assert [i.member for i in made] == ["cheap-runware"]
    ledger = emulator.ledger()
    assert _paid(ledger, "scenario") == 1 and _paid(ledger, "runware") == 2
    assert _paid(ledger, "gptimage2ai") == 0
    table = await _artifact("generate-images")
    assert "| cheap-runware | 1 | 0 | 0 | 0 | 0 |" in table, table


async def test_a_mask_goes_to_the_one_member_that_takes_masks(
    provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path
) -> None:
    emulator.configure(latency=0.05)
    source = tmp_path / "source.png"
    Image.new("RGB", (256, 256), (40, 90, 160)).save(source)
    mask = tmp_path / "mask.png"
    picture = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    picture.paste((0, 0, 0, 0), (0, 0, 256, 80))
    picture.save(mask)
    route = [provider_block("runware"), provider_block("gptimage2ai"), provider_block("scenario")]
    made = await edit_image(
        image=str(source),
        mask=str(mask),
        prompt="a storm sky",
        provider=route,
        archive=str(archive_dir),
    )
    assert [i.member for i in made] == ["scenario"]
    ledger = emulator.ledger()
    assert _paid(ledger, "scenario") == 1 and len(ledger["submissions"]) == 1


async def test_a_route_no_member_of_which_can_make_the_request_is_refused_before_paying(
    provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (256, 256), (40, 90, 160)).save(source)
    mask = tmp_path / "mask.png"
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(mask)
    route = [provider_block("runware"), provider_block("gptimage2ai")]
    with pytest.raises(InvalidRequest) as raised:
        await edit_image(
            image=str(source),
            mask=str(mask),
            prompt="a storm sky",
            provider=route,
            archive=str(archive_dir),
        )
    text = str(raised.value)
    assert "runware:" in text and "gptimage2ai:" in text and "mask" in text
    assert emulator.ledger()["submissions"] == []
    assert not any(emulator.ledger()["requests"].values()), "nothing was even uploaded"
