"""A real Chromium on the Prefect UI: helpers for browser tests (no tests here).

Debian's Chromium (`/usr/bin/chromium`) driven by Playwright's *async* API, so browser tests
are ordinary `async def` tests on the suite's pytest-asyncio loop (no thread, no second
loop). Open a browser per test with `async with launch_browser() as browser`: Playwright
objects belong to the loop that made them, and tests run on a loop of their own.

Prefect 3.9 serves two UIs from the same `prefect server start`: V1 (Vue) at `/` and V2
(React) at `/v2`. Both render markdown artifacts and the Resume form; the helpers take
`ui="v1" | "v2"` (see tests/BROWSER_NOTES.md for the DOM of each).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

UI = Literal["v1", "v2"]

# Without the background-networking flags Chromium's own connections (component updates,
# sync, field trials) are refused on a closed network, and the browser stalls on them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "apt-get install -y chromium; pip install playwright"
# Generous: on a loaded 2-CPU box a V2 page alone can take 5 s to load its bundles.
TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def chromium_or_skip() -> None:
    """Skip the test without Chromium or Playwright; fail instead if GPTIMG_REQUIRE_BROWSER=1."""
    missing = []
    if chromium_path() is None:
        missing.append("/usr/bin/chromium missing (and no `chromium` on PATH)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the `playwright` package is not installed")
    if not missing:
        return
    reason = f"real-browser test: {'; '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get("GPTIMG_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (GPTIMG_REQUIRE_BROWSER=1: the browser tests must run)")
    pytest.skip(reason)


@asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium (no Playwright browser download), closed on exit."""
    chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, *, width: int = 1400, height: int = 1000) -> Page:
    """A page in a fresh context that may only reach loopback hosts.

    The V2 UI initialises Amplitude (a request to sr-client-cfg.amplitude.com) even with
    analytics disabled; on a closed network that is a DNS failure, elsewhere a call home.
    Aborting every non-loopback request keeps the tests hermetic and their timing steady.
    """
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    await context.route(
        re.compile(r"^(?!(https?|wss?)://(127\.0\.0\.1|localhost|\[::1\])[:/])[a-z]+://"),
        lambda route: route.abort(),
    )
    return await context.new_page()


def ui_url_of(api_url: str) -> str:
    """`http://127.0.0.1:PORT/api` -> `http://127.0.0.1:PORT` (where the UI is served)."""
    return api_url.rstrip("/").removesuffix("/api")


def _base(ui_url: str, ui: UI) -> str:
    return ui_url.rstrip("/") + ("/v2" if ui == "v2" else "")


def _ui_of(page: Page) -> UI:
    return "v2" if re.search(r"^https?://[^/]+/v2(/|$)", page.url) else "v1"


# --- images -------------------------------------------------------------------------------

# Every visible <img> under `root`: [src prefix, naturalWidth, alt, rendered width].
_VISIBLE_IMAGES = """root => Array.from(root.querySelectorAll('img'))
  .filter(i => i.getClientRects().length > 0 && i.checkVisibility())
  .map(i => ({src: (i.getAttribute('src') || '').slice(0, 40), naturalWidth: i.naturalWidth,
              alt: i.alt, width: i.clientWidth, complete: i.complete}))"""


async def images_loaded(
    page: Page, within: Locator | None = None, *, min_count: int = 0, timeout_ms: int = 30_000
) -> list[dict[str, Any]]:
    """Each visible `<img>` (on the page, or `within` a locator), once all have loaded.

    Waits until at least `min_count` images are visible and every one is `complete` (loaded
    or failed), then returns `[{"src": first 40 chars, "naturalWidth", "alt", "width"}]`
    (`width`: the rendered width); a broken image has naturalWidth 0. Markdown renders after
    its container appears, so pass `min_count` when images are expected. The locator is
    re-resolved on every poll: the V2 UI re-mounts its markdown when a query refetches, so
    an element handle taken early goes stale (detached, nothing visible).
    """
    scope = within if within is not None else page.locator("body")
    deadline = time.monotonic() + timeout_ms / 1000
    error: Exception | None = None
    while True:
        try:
            images = await scope.evaluate(_VISIBLE_IMAGES, timeout=5_000)
        except Exception as exc:  # detached mid-evaluation or not rendered yet: poll again
            images, error = None, exc
        if images is not None and len(images) >= min_count and all(i["complete"] for i in images):
            for image in images:
                del image["complete"]
            return list(images)
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {min_count} loaded images: {images}") from error
        await asyncio.sleep(0.1)


# --- artifacts ----------------------------------------------------------------------------


def latest_artifact_id(api_url: str, key: str) -> str:
    """The id of the newest artifact with `key` (the UI's key pages show a timeline only)."""
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    response = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    [artifact] = response.json()
    return str(artifact["id"])


ARTIFACT_MARKDOWN = {"v1": ".artifact-data-markdown", "v2": "[data-testid=markdown-display]"}


async def open_artifact_page(page: Page, ui_url: str, artifact_id: str, ui: UI = "v2") -> Locator:
    """Open `/artifacts/artifact/<id>` (V1) or `/v2/artifacts/artifact/<id>`.

    Returns the rendered markdown's container, once it has content (the artifact's
    description is rendered apart from it, above).
    """
    await page.goto(f"{_base(ui_url, ui)}/artifacts/artifact/{artifact_id}")
    markdown = page.locator(ARTIFACT_MARKDOWN[ui])
    await markdown.locator(":scope > *").first.wait_for()
    return markdown


# --- flow runs and the Resume form ------------------------------------------------------


def wait_for_resume_form(api_url: str, flow_run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll the API until the run is PAUSED and its RunInput schema/description are saved.

    `apause_flow_run` sets PAUSED *before* it saves the schema and then the description,
    so a browser opened at the first PAUSED may get a form without them. Returns the run.
    """
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30).json()
        state = run.get("state") or {}
        keyset = (state.get("state_details") or {}).get("run_input_keyset")
        if state.get("type") == "PAUSED" and keyset:
            last = keyset.get("description") or keyset["schema"]
            got = httpx.get(f"{api_url}/flow_runs/{flow_run_id}/input/{last}", timeout=30)
            if got.status_code == 200:
                return run
        elif state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            raise AssertionError(f"flow run {flow_run_id} ended before its pause: {state}")
        time.sleep(0.25)
    raise AssertionError(f"flow run {flow_run_id} never paused with its form: {run.get('state')}")


async def open_flow_run(
    page: Page, ui_url: str, flow_run_id: str, ui: UI = "v2", *, state: str | None = None
) -> None:
    """Open `/runs/flow-run/<id>` (V1) or `/v2/runs/flow-run/<id>`.

    Waits until the run has loaded (both UIs title the page "Flow Run: <name> • ...");
    with `state` (e.g. "Paused"), until the heading's state badge shows that name. The run
    page polls the API every few seconds, so "network idle" is not a usable signal there.
    """
    await page.goto(f"{_base(ui_url, ui)}/runs/flow-run/{flow_run_id}")
    await page.wait_for_function("document.title.startsWith('Flow Run: ')")
    if state is not None:
        badge = ".state-badge" if ui == "v1" else "[data-slot=badge]"
        name = re.compile(rf"^\s*{re.escape(state)}\s*$")
        await page.locator(badge, has_text=name).first.wait_for()


def form_field(dialog: Locator, title: str) -> Locator:
    """A schema-form property by its title ("Approved" matches "Approved (Optional)").

    V1 labels are not tied to their controls (`for` names no element), so `get_by_label`
    fails there; both UIs nest the label and the field's <fieldset> in one element.
    """
    label = f"normalize-space(.)='{title}' or starts-with(normalize-space(.), '{title} (')"
    return dialog.locator(f"xpath=.//label[{label}]/ancestor::*[.//fieldset][1]").first


async def set_int_list(page: Page, field: Locator, values: list[int]) -> None:
    """Make a `list[int]` form field hold exactly `values`.

    Each item is an `<input type="number" step="1">` (role spinbutton) in a draggable row;
    "Add item" appends an empty row. Rows beyond `values` (say, from `with_initial_data`)
    are deleted from the end: V1 by the row's first button (an unnamed "x"), V2 by the
    row's "Open menu" -> "Delete". Beware: V1 sends no key at all for an emptied list, so
    the flow then gets the field's default (its `with_initial_data` value), not `[]`.
    """
    from playwright.async_api import expect

    numbers = field.get_by_role("spinbutton")
    count = await numbers.count()
    while count > len(values):
        last = numbers.nth(count - 1)
        if _ui_of(page) == "v1":
            row = last.locator("xpath=ancestor::*[contains(@class, 'p-draggable-list__item')][1]")
            await row.locator("button").first.click()
        else:
            row = last.locator("xpath=ancestor::div[.//button[@aria-label='Drag to reorder']][1]")
            await row.get_by_role("button", name="Open menu").click()
            await page.get_by_role("menuitem", name="Delete", exact=True).click()
        count -= 1
        await expect(numbers).to_have_count(count)
    for index, value in enumerate(values):
        if index >= count:
            await field.get_by_role("button", name="Add item").click()
            count += 1
            await expect(numbers).to_have_count(count)
        await numbers.nth(index).fill(str(value))


async def click_resume_and_fill(
    page: Page,
    approved: list[int],
    note: str,
    *,
    new_prompt: str | None = None,
    min_images: int = 0,
) -> list[dict[str, Any]]:
    """On an open Paused run page: Resume, fill the RunInput form, submit.

    V1 has a "Resume" button in the page heading and "Submit" in the modal; V2 has
    "Resume" in the heading's "Open menu" (kebab) menu and "Resume" in the modal.
    `approved` (a `list[int]` field) is set with `set_int_list`; `note` is a textarea;
    `new_prompt` (`str | None`, None by default) is switched to its "str" tab and filled
    when given. Waits for `min_images` description images and returns the images visible
    in the form (see `images_loaded`), read before submitting. Raises AssertionError
    unless the server accepts the resume (POST .../resume -> status ACCEPT).
    """
    ui = _ui_of(page)
    if ui == "v1":
        await page.get_by_role("button", name="Resume", exact=True).click()
    else:
        await page.get_by_role("button", name="Open menu").first.click()
        await page.get_by_role("menuitem", name="Resume", exact=True).click()
    dialog = page.get_by_role("dialog")
    approved_field = form_field(dialog, "Approved")
    await approved_field.wait_for()
    images = await images_loaded(page, dialog, min_count=min_images)

    await set_int_list(page, approved_field, approved)

    if new_prompt is not None:
        prompt_field = form_field(dialog, "New Prompt")
        await prompt_field.locator("button").filter(has_text=re.compile(r"^\s*str\s*$")).click()
        await prompt_field.get_by_role("textbox").fill(new_prompt)

    await form_field(dialog, "Note").get_by_role("textbox").fill(note)

    submit = dialog.get_by_role("button", name="Submit" if ui == "v1" else "Resume", exact=True)
    try:
        async with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/resume"), timeout=30_000
        ) as resumed:
            await submit.click()
    except Exception as exc:
        text = await dialog.inner_text() if await dialog.count() else ""
        raise AssertionError(f"the Resume form sent nothing (invalid input?): {text!r}") from exc
    response = await resumed.value
    body = await response.json() if response.ok else await response.text()
    if not response.ok or body.get("status") != "ACCEPT":
        raise AssertionError(f"resume refused: {response.status} {body}")
    await dialog.wait_for(state="hidden")
    return images
