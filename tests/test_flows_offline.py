"""The flows on a real Prefect API server, with the offline provider (no key, no network)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import s3fs
from PIL import Image, ImageChops

from gptimg_flows import (
    ImageArchive,
    batch_generate,
    edit_image,
    generate_edit_archive,
    generate_images,
)
from gptimg_flows.errors import InvalidRequest
from gptimg_flows.providers.offline import OfflineProvider

from .support.prefect_api import artifacts, asset_events

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def submits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every paid call the offline provider receives, by key."""
    calls: list[str] = []
    original = OfflineProvider.submit

    async def counting(self: OfflineProvider, request: Any, inputs: Any, key: str) -> Any:
        calls.append(key)
        return await original(self, request, inputs, key)

    monkeypatch.setattr(OfflineProvider, "submit", counting)
    return calls


def _mask(path: Path, size: tuple[int, int], editable_rows: int) -> str:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], editable_rows))
    mask.save(path)
    return str(path)


def _pixels(uri: str, fs: Any = None) -> Image.Image:
    data = fs.cat_file(uri) if fs is not None else Path(uri).read_bytes()
    img = Image.open(io.BytesIO(data))
    return img.convert("RGBA")


async def test_generate_edit_archive_keeps_unmasked_pixels_and_records_lineage(
    archive_dir: Path, tmp_path: Path, submits: list[str]
) -> None:
    mask = _mask(tmp_path / "mask.png", (512, 512), editable_rows=200)
    result = await generate_edit_archive(
        prompt="poster of a lighthouse at dawn",
        edit_prompt="replace the sky with a storm",
        provider="offline",
        mask=mask,
        archive=str(archive_dir),
        size="512x512",
    )
    gen, edited = result.generated[0], result.edited[0]
    before, after = _pixels(gen.uri), _pixels(edited.uri)
    assert (
        ImageChops.difference(
            before.crop((0, 200, 512, 512)), after.crop((0, 200, 512, 512))
        ).getbbox()
        is None
    )
    assert ImageChops.difference(
        before.crop((0, 0, 512, 200)), after.crop((0, 0, 512, 200))
    ).getbbox()
    sidecar = json.loads(Path(edited.sidecar_uri).read_text())
    assert sidecar["parents"] == [gen.uri]
    assert sidecar["prompt"] == "replace the sky with a storm"
    assert sidecar["sha256"] == edited.sha256 and sidecar["provider"] == "offline"
    assert len(submits) == 2
    assert not list(archive_dir.rglob("*.tmp"))
    assert not [p for p in (archive_dir / "_staging").rglob("*") if p.is_file()]


async def test_rerun_is_answered_from_the_archive_and_refresh_pays_again(
    archive_dir: Path, submits: list[str]
) -> None:
    first = await generate_images(
        prompt="a red kite", provider="offline", archive=str(archive_dir), size="256x256"
    )
    again = await generate_images(
        prompt="a red kite", provider="offline", archive=str(archive_dir), size="256x256"
    )
    assert [i.uri for i in again] == [i.uri for i in first]
    assert len(submits) == 1, "a re-run with the same inputs must not call the provider"
    fresh = await generate_images(
        prompt="a red kite",
        provider="offline",
        archive=str(archive_dir),
        size="256x256",
        refresh=True,
    )
    assert len(submits) == 2 and fresh[0].sha256 != first[0].sha256


async def test_mask_of_the_wrong_size_fails_before_any_submit(
    archive_dir: Path, tmp_path: Path, submits: list[str]
) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (256, 256), (1, 2, 3)).save(image)
    with pytest.raises(InvalidRequest, match="mask is 128x128 but the image is 256x256"):
        await edit_image(
            image=str(image),
            prompt="add a moon",
            provider="offline",
            mask=_mask(tmp_path / "m.png", (128, 128), 10),
            archive=str(archive_dir),
        )
    assert submits == []
    assert not (archive_dir / "_jobs").exists() or not list((archive_dir / "_jobs").iterdir())


async def test_archive_to_s3_through_s3fs(s3_archive: tuple[str, dict[str, Any]]) -> None:
    basepath, options = s3_archive
    images = await generate_images(
        prompt="a lighthouse",
        provider="offline",
        n=2,
        size="256x256",
        output_format="webp",
        archive=ImageArchive(basepath=basepath, storage_options=options),
    )
    fs = s3fs.S3FileSystem(**options)
    assert len(images) == 2
    for img in images:
        assert img.uri.startswith(basepath + "/images/") and img.uri.endswith(".webp")
        assert Image.open(io.BytesIO(fs.cat_file(img.uri))).format == "WEBP"
        sidecar = json.loads(fs.cat_file(img.sidecar_uri))
        assert sidecar["sha256"] == img.sha256 and sidecar["width"] == 256
    assert not fs.find(f"{basepath}/_staging")


async def test_batch_from_jsonl_reports_bad_lines_and_keeps_the_rest(
    archive_dir: Path, tmp_path: Path, submits: list[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"prompt": "a fox"},
                {"prompt": "   "},
                {"prompt": "a cat", "size": "100x100"},
                {"prompt": "a fox"},
                {"prompt": "an owl", "n": 2},
            ]
        )
    )
    result = await batch_generate(
        prompts=str(prompts),
        provider="offline",
        archive=str(archive_dir),
        concurrency=3,
        size="128x128",
    )
    assert [f.index for f in result.failures] == [1, 2]
    assert "prompt is empty" in result.failures[0].error
    assert "multiples of 16" in result.failures[1].error
    assert len(result.images) == 4  # fox, fox (a second, different image), owl x2
    assert len(submits) == 3
    assert len({i.sha256 for i in result.images}) == 4


async def test_each_run_publishes_an_artifact_with_cost(archive_dir: Path) -> None:
    await generate_images(
        prompt="a teapot", provider="offline", archive=str(archive_dir), size="128x128"
    )
    bodies = [a["data"] for a in await artifacts() if "a teapot" in str(a["data"])]
    assert bodies, "no artifact mentions the prompt"
    assert "This run spent: 0 usd" in bodies[0] and "offline" in bodies[0]


async def test_archived_images_are_prefect_assets_with_lineage(
    archive_dir: Path, tmp_path: Path
) -> None:
    mask = _mask(tmp_path / "mask.png", (128, 128), editable_rows=40)
    result = await generate_edit_archive(
        prompt="lineage: a pier",
        edit_prompt="lineage: add gulls",
        provider="offline",
        mask=mask,
        archive=str(archive_dir),
        size="128x128",
    )
    generated = "file://" + result.generated[0].uri
    edited = "file://" + result.edited[0].uri
    events = await asset_events({generated, edited})
    materialized = {
        e["resource"]["prefect.resource.id"]: e
        for e in events
        if e["event"] == "prefect.asset.materialization.succeeded"
    }
    assert generated in materialized and edited in materialized, list(materialized)
    upstream = [
        r["prefect.resource.id"]
        for r in materialized[edited]["related"]
        if r.get("prefect.resource.role") == "asset"
    ]
    assert upstream == [generated]


async def test_daily_content_fills_the_template_with_the_date_and_a_rotating_theme(
    archive_dir: Path, tmp_path: Path
) -> None:
    import datetime

    from gptimg_flows import daily_content

    day = datetime.date(2026, 11, 23)
    themes = ["autumn", "winter"]
    result = await daily_content(
        prompt_template="poster for {theme} on {date:%d %B %Y}",
        themes=themes,
        provider="offline",
        archive=str(archive_dir),
        size="128x128",
        run_date=day,
        mask=_mask(tmp_path / "m.png", (128, 128), 40),
    )
    theme = themes[day.toordinal() % 2]
    assert result.generated[0].prompt == f"poster for {theme} on 23 November 2026"
    assert result.edited[0].parents == [result.generated[0].uri]


async def test_batch_reads_a_csv_from_any_fsspec_url(archive_dir: Path) -> None:
    import fsspec

    with fsspec.open("memory://prompts/today.csv", "w") as fh:
        fh.write("prompt,size\na heron,128x128\na crane,256x128\n")
    result = await batch_generate(
        prompts="memory://prompts/today.csv", provider="offline", archive=str(archive_dir)
    )
    assert sorted((i.prompt, i.width, i.height) for i in result.images) == [
        ("a crane", 256, 128),
        ("a heron", 128, 128),
    ]


def test_flow_parameters_render_as_a_typed_form() -> None:
    from gptimg_flows import daily_content

    for flow_ in (
        generate_images,
        edit_image,
        generate_edit_archive,
        batch_generate,
        daily_content,
    ):
        schema = flow_.parameters.model_dump()
        props = schema["properties"]
        assert "provider" in props and "archive" in props, flow_.name
        refs = [r.get("$ref", r.get("type")) for r in props["provider"]["anyOf"]]
        # one provider (a block or a name), a saved route, or a list of providers (a route)
        assert refs[5:] == ["string", "#/definitions/ProviderRoute", "array"], refs
        assert len(props["provider"]["anyOf"][-1]["items"]["anyOf"]) == 6
        scenario = schema["definitions"]["ScenarioCredentials"]
        assert scenario["block_type_slug"] == "gptimg-scenario-credentials"
        route = schema["definitions"]["ProviderRoute"]
        assert route["block_type_slug"] == "gptimg-provider-route"
    gen = generate_images.parameters.model_dump()["properties"]
    assert gen["quality"]["anyOf"][0]["enum"] == ["auto", "low", "medium", "high"]
