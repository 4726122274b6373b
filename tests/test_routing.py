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

from .support.images import png_file, sky_mask

pytestmark = pytest.mark.usefixtures("prefect_server")


def _sidecars(archive_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in archive_dir.glob("images/*/*.json")]


def _paid(ledger: dict[str, Any], provider: str) -> int:
    return sum(1 for s in ledger["submissions"] if s["provider"] == provider)


async def _artifact(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
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
    assert result.route_failovers == len(refused), "every request moved off it is counted"
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
    table = await _artifact("generate-images")  # the last run's: the WebP one
    assert "| cheap-runware | 1 | 0 | 0 | 0 | 0 |" in table, table


async def test_a_mask_goes_to_the_one_member_that_takes_masks(
    provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path
) -> None:
    emulator.configure(latency=0.05)
    source, mask = png_file(tmp_path / "source.png"), sky_mask(tmp_path / "mask.png")
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
    source = png_file(tmp_path / "source.png")
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


async def test_members_refusing_the_account_or_the_connection_pass_work_on_and_cost_nothing(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """A wrong key (401), an empty account (no credits) and a port nobody listens on: each
    request moves on to the next member, none of them is paid, and the failover is logged."""
    from tests.conftest import free_port

    emulator.configure(latency=0.05, balance={"runware": 0.0})
    refused = provider_block("scenario", base_url=f"http://127.0.0.1:{free_port()}/v1")
    wrong_key = provider_block("skillsvideo", api_key="not-the-key")
    empty = provider_block("runware")
    healthy = provider_block("gptimage2ai")
    result: BatchResult = await batch_generate(
        prompts=[f"refusing members {i}" for i in range(6)],
        provider=[refused, wrong_key, empty, healthy],
        archive=str(archive_dir),
        concurrency=2,
    )
    assert not result.failures, result.failures
    assert {i.member for i in result.images} == {"gptimage2ai"}
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 6 and _paid(ledger, "gptimage2ai") == 6
    assert ledger["credits"].get("runware", 0.0) == 0.0
    table = await _artifact("batch-generate")
    for name in ("scenario", "skillsvideo", "runware"):
        assert f"| {name} | 0 | 0 |" in table, table


async def test_a_request_whose_every_member_refuses_reports_the_last_reason(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    emulator.configure(outages=[{"provider": "scenario"}, {"provider": "gptimage2ai"}])
    with pytest.raises(Exception) as raised:
        await generate_images(
            prompt="nobody is up",
            provider=[
                provider_block("scenario", retries=0),
                provider_block("gptimage2ai", retries=0),
            ],
            archive=str(archive_dir),
        )
    assert "503" in str(raised.value)
    assert emulator.ledger()["submissions"] == []


@pytest.mark.slow
async def test_kill_9_mid_routed_batch_then_rerun_pays_each_row_once_and_never_at_two_members(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """A routed batch (runware, then gptimage2.ai for what spills over) killed with jobs
    running at both; the re-run resumes each submitted row at the member that has it."""
    from tests.test_crash_resume import _kill_9_flow_process, _wait_for

    total = 30
    emulator.configure(latency=1.5, render_mode="stamp")
    await provider_block("runware").save("kill-first", overwrite=True)
    await provider_block("gptimage2ai").save("kill-second", overwrite=True)
    kwargs: dict[str, Any] = {
        "prompts": [f"routed crash {i}" for i in range(total)],
        "archive": str(archive_dir),
        "concurrency": 8,
    }
    spec = {"flow": "batch_generate", "provider": ["kill-first", "kill-second"], "kwargs": kwargs}

    def both_paid_some() -> None:
        def paid(provider: str, at_least: int) -> Any:
            return lambda: _paid(emulator.ledger(), provider) >= at_least

        _wait_for(paid("runware", 3), 120, "rows paid at runware")
        # runware stops taking new jobs: the rows left move to gptimage2.ai mid-batch
        emulator.configure(outages=[{"provider": "runware", "scope": "submit"}])
        _wait_for(paid("gptimage2ai", 6), 120, "rows moved over to gptimage2.ai")

    _kill_9_flow_process(spec, when=both_paid_some)
    before = emulator.ledger()["submissions"]
    assert len(before) < total

    emulator.configure(outages=[])  # runware is back: a re-run could send rows to either
    result: BatchResult = await batch_generate(provider=["kill-first", "kill-second"], **kwargs)

    subs = emulator.ledger()["submissions"]
    uncertain = [f for f in result.failures if f.error_type == "SubmitUncertain"]
    assert len(result.failures) == len(uncertain), result.failures
    assert len(result.images) + len(uncertain) == total
    assert len(uncertain) <= 8, "only submits in flight at the kill can be uncertain"
    # each row paid once in all: as many submissions as rows made (or in doubt), no body twice
    assert len({s["body_sha256"] for s in subs}) == len(subs), "a request was submitted twice"
    assert total - len(uncertain) <= len(subs) <= total
    by_job = {s["job_id"]: s["provider"] for s in subs}
    for img in result.images:
        member_provider = {"kill-first": "runware", "kill-second": "gptimage2ai"}[img.member]
        assert by_job[img.job_id] == member_provider, "an image from the member that was paid"
    first_run = {s["job_id"] for s in before}
    resumed = [i for i in result.images if i.job_id in first_run and not i.from_archive]
    assert resumed, "rows submitted before the kill were resumed at their member"


def test_the_cli_takes_a_route_as_names_with_commas_and_spend_groups_by_member(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    from tests.test_cli import gptimg

    emulator.configure(latency=0.05, outages=[{"provider": "scenario"}])
    provider_block("scenario").save("cli-route-down", overwrite=True)
    provider_block("gptimage2ai").save("cli-route-up", overwrite=True)
    made = gptimg(
        "generate",
        "a routed lighthouse",
        "-p",
        "cli-route-down,cli-route-up",
        "--archive",
        str(archive_dir),
    )
    assert made.returncode == 0, made.stderr
    assert emulator.ledger()["submissions"][0]["provider"] == "gptimage2ai"
    report = gptimg("spend", str(archive_dir))
    assert report.returncode == 0, report.stderr
    assert "cli-route-up (gptimage2ai)" in report.stdout and "10  credits" in report.stdout
    priced = gptimg("estimate", "a price", "-p", "cli-route-down,cli-route-up")
    assert priced.returncode == 0, priced.stderr
    # priced at the member the route would pick first, which documents no price
    assert "estimate: unknown" in priced.stdout and "Scenario documents no price" in priced.stdout


async def test_refresh_through_a_route_pays_once_for_a_new_image(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    route = [provider_block("runware"), provider_block("gptimage2ai")]
    first = await generate_images(prompt="a fresh one", provider=route, archive=str(archive_dir))
    again = await generate_images(prompt="a fresh one", provider=route, archive=str(archive_dir))
    fresh = await generate_images(
        prompt="a fresh one", provider=route, archive=str(archive_dir), refresh=True
    )
    assert again[0].from_archive and again[0].sha256 == first[0].sha256
    assert not fresh[0].from_archive and fresh[0].sha256 != first[0].sha256
    assert len(emulator.ledger()["submissions"]) == 2


async def test_images_made_before_the_provider_became_a_route_are_not_paid_again(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    runware = provider_block("runware")
    alone = await generate_images(prompt="made alone", provider=runware, archive=str(archive_dir))
    routed = await generate_images(
        prompt="made alone",
        provider=[provider_block("gptimage2ai"), runware],
        archive=str(archive_dir),
    )
    assert routed[0].from_archive and routed[0].sha256 == alone[0].sha256
    assert len(emulator.ledger()["submissions"]) == 1


async def test_a_routes_max_cost_is_in_usd_when_its_members_units_differ(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    from gptimg_flows.errors import BudgetExceeded

    runware = provider_block("runware", price_per_image=0.05)
    credits = provider_block("gptimage2ai", usd_per_unit=0.004)  # 10 credits: $0.04
    with pytest.raises(BudgetExceeded, match=r"0\.04"):
        await generate_images(
            prompt="over budget",
            provider=[credits, runware],
            archive=str(archive_dir),
            max_cost=0.03,
        )
    with pytest.raises(BudgetExceeded, match="usd_per_unit"):
        await generate_images(
            prompt="no conversion",
            provider=[provider_block("gptimage2ai"), runware],
            archive=str(archive_dir),
            max_cost=1.0,
        )
    assert emulator.ledger()["submissions"] == []
    made = await generate_images(
        prompt="within budget",
        provider=[credits, runware],
        archive=str(archive_dir),
        max_cost=0.05,
    )
    assert made[0].member == "gptimage2ai" and made[0].cost_unit == "credits"


async def test_a_request_whose_members_are_all_cooling_waits_until_its_timeout_then_says_so(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    from gptimg_flows.errors import ServerError

    emulator.configure(outages=[{"provider": "scenario"}, {"provider": "gptimage2ai"}])
    await provider_block("scenario", retries=0).save("cool-a", overwrite=True)
    await provider_block("gptimage2ai", retries=0).save("cool-b", overwrite=True)
    route = ProviderRoute(providers=["cool-a", "cool-b"], failures_to_cool=1, cooldown_seconds=60)
    await route.save("cool-route", overwrite=True)
    with pytest.raises(ServerError, match="503"):
        await generate_images(prompt="first", provider="cool-route", archive=str(archive_dir))
    started = time.monotonic()
    with pytest.raises(ServerError, match="cooling down"):
        await generate_images(
            prompt="second", provider="cool-route", archive=str(archive_dir), timeout_seconds=2
        )
    assert 1.5 < time.monotonic() - started < 30
    assert emulator.ledger()["submissions"] == []
