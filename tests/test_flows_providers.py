"""Every provider through the flows: real Prefect server, emulator over HTTP, real archives."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
import s3fs
from PIL import Image, ImageChops
from prefect.client.orchestration import get_client

from gptimg_flows import ImageArchive, generate_edit_archive, generate_images
from gptimg_flows.errors import AuthError

from .support.prefect_api import api_post

pytestmark = pytest.mark.usefixtures("prefect_server")

ALL = ["openai", "scenario", "runware", "skillsvideo", "gptimage2ai"]
MASKED = ["openai", "scenario", "skillsvideo"]
SIZE = {"skillsvideo": "1:1", "gptimage2ai": "1:1"}  # ratio-only providers


def _submissions(ledger: dict[str, Any], provider: str) -> list[dict[str, Any]]:
    return [s for s in ledger["submissions"] if s["provider"] == provider]


def _calls(ledger: dict[str, Any]) -> int:
    return sum(sum(v.values()) for v in ledger["requests"].values())


@pytest.mark.parametrize("name", ALL)
async def test_generate_images_archives_and_a_rerun_makes_no_provider_call(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    block = provider_block(name)
    size = SIZE.get(name, "256x256")
    images = await generate_images(
        prompt=f"a lighthouse for {name}", provider=block, archive=str(archive_dir), size=size
    )
    assert len(images) == 1
    img = images[0]
    assert Path(img.uri).exists() and img.provider == name
    with Image.open(img.uri) as pic:
        assert pic.size == (img.width, img.height)
    sidecar = json.loads(Path(img.sidecar_uri).read_text())
    assert sidecar["job_id"] == img.job_id and sidecar["cost"] == img.cost
    ledger = emulator.ledger()
    assert len(_submissions(ledger, name)) == 1, ledger["submissions"]
    calls = _calls(ledger)

    again = await generate_images(
        prompt=f"a lighthouse for {name}", provider=block, archive=str(archive_dir), size=size
    )
    assert [i.uri for i in again] == [img.uri]
    assert _calls(emulator.ledger()) == calls, "a re-run must make zero provider calls"


def _mask(path: Path, size: tuple[int, int], editable_rows: int) -> str:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], editable_rows))
    mask.save(path)
    return str(path)


@pytest.mark.parametrize("name", MASKED)
async def test_full_pipeline_with_mask_keeps_the_unmasked_pixels(
    name: str, provider_block: Any, emulator: Any, archive_dir: Path, tmp_path: Path
) -> None:
    size = (1024, 1024) if name == "skillsvideo" else (256, 256)
    result = await generate_edit_archive(
        prompt="a harbour at noon",
        edit_prompt="a storm in the sky",
        provider=provider_block(name),
        mask=_mask(tmp_path / "mask.png", size, size[1] // 3),
        archive=str(archive_dir),
        size=SIZE.get(name, f"{size[0]}x{size[1]}"),
    )
    before = Image.open(result.generated[0].uri).convert("RGBA")
    after = Image.open(result.edited[0].uri).convert("RGBA")
    keep = (0, size[1] // 3, size[0], size[1])
    assert ImageChops.difference(before.crop(keep), after.crop(keep)).getbbox() is None
    assert result.edited[0].parents == [result.generated[0].uri]
    assert len(_submissions(emulator.ledger(), name)) == 2
    assert result.cost, "the run's cost is summed"


async def test_url_only_provider_gets_signed_urls_from_an_s3_archive(
    provider_block: Any,
    emulator: Any,
    s3_archive: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")  # moto and the emulator are on 127.0.0.1
    basepath, options = s3_archive
    result = await generate_edit_archive(
        prompt="a ceramic cup",
        edit_prompt="make it blue",
        provider=provider_block("gptimage2ai"),
        archive=ImageArchive(basepath=basepath, storage_options=options),
        size="1:1",
    )
    fs = s3fs.S3FileSystem(**options)
    edited = result.edited[0]
    assert edited.uri.startswith(basepath)
    assert Image.open(io.BytesIO(fs.cat_file(edited.uri))).size == (edited.width, edited.height)
    submitted = _submissions(emulator.ledger(), "gptimage2ai")
    assert len(submitted) == 2


async def _task_run_states(
    flow_run_id: str, expect: str, timeout: float = 20.0
) -> dict[str, list[str]]:
    """Task run name → state names, from the Prefect API (what the UI shows)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        runs = await api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        history: dict[str, list[str]] = {}
        async with get_client() as client:
            for run in runs:
                states = await client.read_task_run_states(run["id"])
                history[run["name"]] = [s.name for s in sorted(states, key=lambda s: s.timestamp)]
        if any(expect in names for names in history.values()):
            return history
        if asyncio.get_running_loop().time() > deadline:
            return history
        await asyncio.sleep(0.5)


async def test_rate_limited_submit_waits_inside_its_task_and_is_paid_once(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    """A 429 created nothing: the submit waits for the account's limiter and goes again in the
    same task run (no task retry spent)."""
    emulator.force("submit_429", provider="runware")
    state = await generate_images(
        prompt="a kite",
        provider=provider_block("runware"),
        archive=str(archive_dir),
        size="256x256",
        return_state=True,
    )
    assert state.is_completed()
    history = await _task_run_states(str(state.state_details.flow_run_id), "Completed")
    submit = next(names for run, names in history.items() if run.startswith("job-"))
    assert "AwaitingRetry" not in submit and "Retrying" not in submit, history
    ledger = emulator.ledger()
    assert len(_submissions(ledger, "runware")) == 1
    assert ledger["rejected"]["runware"] == {"429": 1}


async def test_wrong_key_fails_at_once_without_retry_or_charge(
    provider_block: Any, emulator: Any, archive_dir: Path
) -> None:
    block = provider_block("skillsvideo", api_key="sk-wrong-key")
    with pytest.raises(AuthError):
        await generate_images(prompt="a kite", provider=block, archive=str(archive_dir), size="1:1")
    ledger = emulator.ledger()
    assert ledger["rejected"]["skillsvideo"] == {"401": 1}, "an auth error must not be retried"
    assert _submissions(ledger, "skillsvideo") == [] and not ledger["credits"].get("skillsvideo")
    assert not list(archive_dir.rglob("_jobs/*.json")), "a refused submit leaves no job record"
