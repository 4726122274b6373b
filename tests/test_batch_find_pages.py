"""A lost Batch API create is found however many batches were made after it (issue #32,
finding 7): `find` pages through `GET /batches` (newest first) until it finds ours, the list
ends, or a page is older than our record; it never loops on a server that repeats its cursor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptimg_flows import batch_generate
from gptimg_flows.flows import BatchResult
from gptimg_flows.providers import openai_batch
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.providers.openai_batch import METADATA_KEY, OpenAIBatchAPI
from gptimg_flows.testing.config import EMULATOR_KEYS

PROMPTS = [f"a paper kite number {i}" for i in range(12)]
FAST: dict[str, Any] = {"batch_poll_seconds": 0.2, "size": "256x256", "quality": "low"}
#: More than one page of OpenAI's largest (100): the old `find` read only the first.
NEWER = 150
LINE = {
    "custom_id": "other",
    "method": "POST",
    "url": "/v1/images/generations",
    "body": {"model": "gpt-image-2", "prompt": "a kite", "size": "256x256", "quality": "low"},
}


@asynccontextmanager
async def batch_api(emulator: Any) -> AsyncIterator[OpenAIBatchAPI]:
    """The Batch API client on the emulator, as the flows build it."""
    key = EMULATOR_KEYS["openai"]
    assert isinstance(key, str)
    provider = OpenAIProvider(key, base_url=emulator.base_url("openai"))
    try:
        yield OpenAIBatchAPI(provider)
    finally:
        await provider.aclose()


async def make_batches(api: OpenAIBatchAPI, tmp: Path, count: int, label: str) -> list[str]:
    """`count` batches (never polled, so never drawn or billed) of one small input file."""
    path = tmp / "one-line.jsonl"
    path.write_text(json.dumps(LINE) + "\n")
    file_id = await api.upload(path)
    return [(await api.create(file_id, {METADATA_KEY: f"{label}-{i}"})).id for i in range(count)]


def list_calls(emulator: Any) -> int:
    """`GET /batches` and `GET /batches/{id}` count as the emulator's OpenAI polls."""
    return int(emulator.ledger()["requests"].get("openai", {}).get("poll", 0))


# -- the emulator's list is OpenAI's: pages, cursors ---------------------------------------


async def test_the_emulator_lists_batches_a_page_at_a_time_newest_first(
    emulator: Any, tmp_path: Path
) -> None:
    async with batch_api(emulator) as api:
        newest_first = (await make_batches(api, tmp_path, 25, "b"))[::-1]
        first = await api.list_page(limit=10)
        second = await api.list_page(limit=10, after=first.last_id)
        third = await api.list_page(limit=10, after=second.last_id)
    pages = [first, second, third]
    assert [b.id for p in pages for b in p.batches] == newest_first
    assert [p.has_more for p in pages] == [True, True, False]
    assert all(b.created_at is not None for b in first.batches)

    url = emulator.base_url("openai") + "/batches"
    headers = {"Authorization": f"Bearer {EMULATOR_KEYS['openai']}"}
    default = httpx.get(url, headers=headers).json()
    assert [b["id"] for b in default["data"]] == newest_first[:20], "OpenAI's default: 20"
    assert default["has_more"] is True
    assert (default["first_id"], default["last_id"]) == (newest_first[0], newest_first[19])
    for bad in ("0", "101", "ten"):
        assert httpx.get(url, params={"limit": bad}, headers=headers).status_code == 400


# -- find pages through the emulator -------------------------------------------------------


async def test_find_reaches_a_batch_behind_more_than_a_page_of_newer_ones(
    emulator: Any, tmp_path: Path
) -> None:
    since = datetime.now(UTC)
    async with batch_api(emulator) as api:
        [ours] = await make_batches(api, tmp_path, 1, "ours")
        await make_batches(api, tmp_path, NEWER, "other")
        before = list_calls(emulator)

        found = await api.find("ours-0", since=since)

    assert found is not None and found.id == ours
    assert list_calls(emulator) - before == 2, "ours is the 151st: on the second page of 100"


async def test_find_of_a_batch_never_made_reads_every_page_then_answers_none(
    emulator: Any, tmp_path: Path
) -> None:
    async with batch_api(emulator) as api:
        await make_batches(api, tmp_path, NEWER + 1, "other")
        before = list_calls(emulator)
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert await api.find("never-made", since=an_hour_ago) is None
        assert list_calls(emulator) - before == 2, "151 batches are two pages of 100"

        before = list_calls(emulator)
        assert await api.find("never-made") is None  # no record time: the whole list
        assert list_calls(emulator) - before == 2


async def test_find_stops_at_a_page_older_than_the_record(emulator: Any, tmp_path: Path) -> None:
    async with batch_api(emulator) as api:
        await make_batches(api, tmp_path, NEWER, "other")
        before = list_calls(emulator)
        later = datetime.now(UTC) + openai_batch.CLOCK_SKEW + timedelta(minutes=5)
        assert await api.find("other-0", since=later) is None, "older than its record"
    assert list_calls(emulator) - before == 1, "the first page was already too old"


# -- find against a server that misbehaves -------------------------------------------------


def batch(batch_id: str, created_at: int | None = None) -> dict[str, Any]:
    return {"id": batch_id, "status": "completed", "metadata": {METADATA_KEY: "someone"}} | (
        {"created_at": created_at} if created_at is not None else {}
    )


def mock_api(answer: Any) -> tuple[OpenAIBatchAPI, list[httpx.URL]]:
    """The Batch API client on a fake server answering each `GET /batches` with
    `answer(request number)`; the requests it saw."""
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=answer(len(seen)))

    provider = OpenAIProvider("sk-test", transport=httpx.MockTransport(handler))
    return OpenAIBatchAPI(provider), seen


async def test_a_server_that_repeats_its_cursor_is_not_paged_forever() -> None:
    api, seen = mock_api(
        lambda _: {"data": [batch("batch_a"), batch("batch_b")], "has_more": True, "last_id": "b"}
    )
    assert await api.find("ours") is None
    assert len(seen) == 2
    assert seen[0].params.get("after") is None and seen[1].params["after"] == "b"


async def test_a_list_with_no_cursor_or_no_end_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    api, seen = mock_api(lambda _: {"data": [], "has_more": True})
    assert await api.find("ours") is None and len(seen) == 1

    monkeypatch.setattr(openai_batch, "MAX_LIST_PAGES", 5)
    api, seen = mock_api(lambda n: {"data": [batch(f"batch_{n}")], "has_more": True})
    assert await api.find("ours") is None
    assert len(seen) == 5 and seen[-1].params["after"] == "batch_4"


async def test_batches_without_a_time_are_never_taken_for_older_ones() -> None:
    pages = [[batch("batch_1")], [batch("batch_2", created_at=1)]]
    api, seen = mock_api(lambda n: {"data": pages[n - 1], "has_more": n < 5})
    assert await api.find("ours", since=datetime.now(UTC)) is None
    assert len(seen) == 2, "the first page had no times: read on; the second was older"


# -- the flow: a lost create answer behind 150 newer batches --------------------------------


async def run(block: Any, archive: Path) -> BatchResult:
    result: BatchResult = await batch_generate(
        prompts=PROMPTS, provider=block, archive=str(archive), batch_api=True, **FAST
    )
    return result


@pytest.mark.usefixtures("prefect_server")
async def test_a_lost_create_behind_more_than_a_page_of_newer_batches_is_not_sent_again(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    emulator.configure(latency=0.5)
    emulator.force("submit_lost_response", provider="openai")
    first = await run(provider_block("openai"), archive_dir)
    assert first.images == [] and {f.error_type for f in first.failures} == {"BatchPending"}
    assert "may have been created" in first.failures[0].error
    assert "TransportError" in first.failures[0].error
    [record] = [json.loads(p.read_text()) for p in archive_dir.glob("_batches/*.json")]
    assert record["state"] == "creating"
    async with batch_api(emulator) as api:  # the account's other work since
        await make_batches(api, tmp_path, NEWER, "other")

    second = await run(provider_block("openai"), archive_dir)

    ledger = emulator.ledger()
    ours = [b for b in ledger["batches"] if b["metadata"] == {METADATA_KEY: record["record"]}]
    assert len(ours) == 1, "the batch was created twice: OpenAI bills both"
    assert len(ledger["batches"]) == 1 + NEWER
    assert second.failures == [] and len(second.images) == 12
    assert len(ledger["submissions"]) == 12
    [done] = [json.loads(p.read_text()) for p in archive_dir.glob("_batches/*.json")]
    assert done["state"] == "created" and done["batch_id"] == ours[0]["batch_id"]
