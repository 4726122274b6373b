"""What a person sees, in a real Chromium on a real `prefect server`: the pictures in a run's
artifact, and the review form's candidates, chosen and submitted by clicking.

Skipped with the reason where Chromium or Playwright is missing; `.ci/run` installs Chromium
and sets GPTIMG_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from gptimg_flows import generate_edit_archive

from .support.browser import (
    chromium_or_skip,
    click_resume_and_fill,
    images_loaded,
    latest_artifact_id,
    launch_browser,
    new_page,
    open_artifact_page,
    open_flow_run,
    ui_url_of,
    wait_for_resume_form,
)
from .support.prefect_cli import api

# Prefect 3.9 serves two UIs: V1 at `/runs/…` (where Prefect's own "View at" links open a run)
# and V2 at `/v2/…` (where `/` redirects). Both must show the pictures and take the answer.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("ui", ["v1", "v2"])]


def _mask(path: Path) -> str:
    from PIL import Image

    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 256, 80))
    mask.save(path)
    return str(path)


async def test_the_pipeline_artifact_shows_both_images_and_the_edits_source(
    cli_server: dict[str, str], tmp_path: Path, ui: str
) -> None:
    chromium_or_skip()
    api_url = cli_server["PREFECT_API_URL"]
    with temporary_settings({PREFECT_API_URL: api_url}):
        result = await generate_edit_archive(
            prompt="browser: a lighthouse at dawn",
            edit_prompt="browser: add a storm",
            provider="offline",
            mask=_mask(tmp_path / "mask.png"),
            archive=str(tmp_path / "archive"),
            size="256x256",
        )
    artifact_id = latest_artifact_id(api_url, "generate-edit-archive")
    async with launch_browser() as browser:
        page = await new_page(browser, width=1366, height=768)  # a common laptop screen
        markdown = await open_artifact_page(page, ui_url_of(api_url), artifact_id, ui=ui)
        images = await images_loaded(page, markdown, min_count=3)
        # Every column, the cost and the link included, is on screen without scrolling.
        columns = await markdown.locator("th").evaluate_all(
            "cells => cells.map(c => [c.textContent.trim(), c.getBoundingClientRect().right])"
        )
        width = await page.evaluate("window.innerWidth")
    heads = [name for name, _ in columns]
    assert heads == ["#", "from", "image", "provider", "size", "cost", "review", "prompt", "link"]
    off_screen = [name for name, right in columns if right > width]
    assert not off_screen, f"off-screen at {width} px: {off_screen} ({columns})"
    # generated; then the edit's row: its source → the edit
    assert len(images) == 3, images
    assert all(i["naturalWidth"] > 0 for i in images), images
    assert [i["alt"] for i in images] == ["image 1", "source", "image 2"], images
    assert result.edited[0].parents == [result.generated[0].uri]


async def _paused_run(api_url: str, env: dict[str, str], prompt: str) -> str:
    for _ in range(600):
        runs = api(
            env,
            "POST",
            "/flow_runs/filter",
            {
                "flows": {"name": {"any_": ["generate-edit-archive"]}},
                "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
            },
        )
        runs = [r for r in runs if r["parameters"].get("prompt") == prompt]
        if runs:
            return str(runs[0]["id"])
        await asyncio.sleep(0.2)
    raise AssertionError("the review run never paused")


async def test_a_person_approves_one_candidate_in_the_resume_form_and_only_it_is_edited(
    cli_server: dict[str, str], tmp_path: Path, ui: str
) -> None:
    chromium_or_skip()
    env = cli_server
    api_url = env["PREFECT_API_URL"]
    with temporary_settings({PREFECT_API_URL: api_url}):
        running: asyncio.Future[Any] = asyncio.ensure_future(
            generate_edit_archive(
                prompt=f"browser review ({ui}): a red kite",
                edit_prompt="browser review: add a cloud",
                provider="offline",
                archive=str(tmp_path / "archive"),
                size="256x256",
                n=2,
                review=True,
            )
        )
        try:
            run_id = await _paused_run(api_url, env, f"browser review ({ui}): a red kite")
            await asyncio.to_thread(wait_for_resume_form, api_url, run_id)
            async with launch_browser() as browser:
                page = await new_page(browser)
                await open_flow_run(page, ui_url_of(api_url), run_id, ui=ui, state="Paused")
                shown = await click_resume_and_fill(
                    page, approved=[2], note="picked in the browser", min_images=2
                )
            result = await asyncio.wait_for(running, 120)
        finally:
            if not running.done():
                running.cancel()
    assert len(shown) >= 2 and all(i["naturalWidth"] > 0 for i in shown), shown
    assert [i["alt"] for i in shown][:2] == ["candidate 1", "candidate 2"], shown
    first, second = result.generated
    assert first.review.status == "rejected" and second.review.status == "approved"
    assert second.review.note == "picked in the browser"
    [edited] = result.edited
    assert edited.parents == [second.uri]
