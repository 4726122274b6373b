"""OpenAI's Batch API for image generations and edits: the wire format, at half the price.
No Prefect.

A batch is a JSONL file of requests (`custom_id`, `method`, `url`, `body`) uploaded with
`POST /files` (purpose `batch`), then `POST /batches`; it finishes within 24 h and its output
file holds one JSONL line per `custom_id` with the images response (b64_json + usage). One
batch holds one endpoint: generations and edits go in batches of their own.

An edit's line carries the JSON edit body: its input images and mask as references. We upload
each input once as a file (purpose `vision`) and send `{"file_id": …}`: a data URL would put
the image in every line that uses it, base64-encoded (a third larger), inside the 200 MB input
file, and up to 20,971,520 characters each. The JSON edit takes fewer sizes than the multipart
one (`BATCH_EDIT_SIZES`): another size is refused before anything is uploaded or paid.
The orchestration (records, polling, archiving) lives in `engine/batch_api.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field

from gptimg_flows.errors import InvalidRequest, MalformedResponse
from gptimg_flows.models import EditRequest, ImageRequest
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.spend.prices import BATCH_DISCOUNT, usage_cost

log = logging.getLogger("gptimg_flows.providers.openai_batch")

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
ENDPOINT = GENERATIONS
#: The sizes OpenAI's JSON edit body (the only edit a batch line carries) takes.
BATCH_EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
#: OpenAI's limits for one batch input file.
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Metadata key naming our batch record, so a lost create answer can be found again.
METADATA_KEY = "gptimg_batch"
#: `GET /batches` pages: OpenAI's largest page, and how many we read at most (a million
#: batches) before a lost create counts as not found.
LIST_LIMIT = 100
MAX_LIST_PAGES = 10_000
#: A lost create is looked for among batches this much older than its record too: OpenAI's
#: clock (`created_at`) and ours (the record's time) may disagree.
CLOCK_SKEW = timedelta(minutes=10)


class BatchStatus(BaseModel):
    """`GET /batches/{id}` as we read it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    metadata: dict[str, str] | None = None
    created_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class BatchPage(NamedTuple):
    """One page of `GET /batches` (newest first) and the cursor of the next one."""

    batches: list[BatchStatus]
    has_more: bool
    last_id: str | None


class LineResult(BaseModel):
    """One output line: the images of one request, or why it has none."""

    custom_id: str
    images: list[bytes] = Field(default_factory=list, repr=False)
    cost: float | None = None
    error: str | None = None


def endpoint_of(request: ImageRequest) -> str:
    return EDITS if isinstance(request, EditRequest) else GENERATIONS


def check_batch_edit(request: ImageRequest) -> None:
    """An edit a batch line can carry: its size is one the JSON edit body takes."""
    if not isinstance(request, EditRequest):
        return
    size = request.size if request.size is not None else "auto"
    if request.resolution is not None or size not in BATCH_EDIT_SIZES:
        raise InvalidRequest(
            f"size={size!r}: an edit sent through the Batch API takes size "
            f"{', '.join(BATCH_EDIT_SIZES)} (OpenAI's JSON edit body); choose one of those, "
            "or send this edit with batch_api=False",
            field="size",
        )


def request_line(
    provider: OpenAIProvider,
    custom_id: str,
    request: ImageRequest,
    images: list[str] | None = None,
    mask: str | None = None,
) -> bytes:
    """One JSONL line: our request key as `custom_id`, the same fields a synchronous call
    sends; an edit's inputs (and mask) as the file ids they were uploaded under."""
    body = provider.build_fields(request)
    if isinstance(request, EditRequest):
        body["images"] = [{"file_id": f} for f in images or []]
        if mask is not None:
            body["mask"] = {"file_id": mask}
    url = endpoint_of(request)
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def split_lines(lines: Iterable[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """Chunks under OpenAI's per-batch limits (50,000 lines, 200 MB)."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for custom_id, line in lines:
        if chunk and (len(chunk) >= MAX_LINES or size + len(line) > MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((custom_id, line))
        size += len(line)
    if chunk:
        yield chunk


class OpenAIBatchAPI:
    """Files and batches on the same client (key, base URL, prices) as the OpenAI adapter."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider
        self._api = provider.api

    async def upload(self, path: Path) -> str:
        """`POST /files` with the JSONL streamed from disk (flat memory whatever its size)."""
        with path.open("rb") as fh:
            files: dict[str, tuple[str, BinaryIO, str]] = {
                "file": (path.name, fh, "application/jsonl")
            }
            _, body = await self._api.request(
                "POST", "/files", data={"purpose": "batch"}, files=files
            )
        return str(self._field(body, "id"))

    async def upload_image(self, data: bytes, mime: str, name: str) -> str:
        """`POST /files` (purpose `vision`): an edit's input, referenced by its file id."""
        files: dict[str, tuple[str, bytes, str]] = {"file": (name, data, mime)}
        _, body = await self._api.request("POST", "/files", data={"purpose": "vision"}, files=files)
        return str(self._field(body, "id"))

    async def create(
        self, input_file_id: str, metadata: dict[str, str], endpoint: str = GENERATIONS
    ) -> BatchStatus:
        _, body = await self._api.request(
            "POST",
            "/batches",
            json_body={
                "input_file_id": input_file_id,
                "endpoint": endpoint,
                "completion_window": "24h",
                "metadata": metadata,
            },
        )
        return self._status(body)

    async def get(self, batch_id: str) -> BatchStatus:
        _, body = await self._api.request("GET", f"/batches/{batch_id}", job_id=batch_id)
        return self._status(body)

    async def find(
        self, record_key: str, since: datetime | None = None, limit: int = LIST_LIMIT
    ) -> BatchStatus | None:
        """The batch whose metadata names our record (a create whose answer was lost).

        OpenAI lists batches newest first, a page at a time, and an account may have made
        any number since ours: pages are read until ours is found, the list ends, or a whole
        page is older than `since` (when our record was written, less `CLOCK_SKEW`), as our
        batch cannot be older than its record. None: not found (or a list that never ends).
        """
        oldest = _unix(since - CLOCK_SKEW) if since is not None else None
        after: str | None = None
        cursors: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            page = await self.list_page(limit, after)
            for status in page.batches:
                if (status.metadata or {}).get(METADATA_KEY) == record_key:
                    return status
            if not page.has_more or _all_older(page.batches, oldest):
                return None
            if page.last_id is None or page.last_id in cursors:
                log.warning("GET /batches gave no new cursor (%r): stopped paging", page.last_id)
                return None
            cursors.add(page.last_id)
            after = page.last_id
        log.warning(
            "GET /batches: stopped after %d pages without finding the batch", MAX_LIST_PAGES
        )
        return None

    async def list_page(self, limit: int = LIST_LIMIT, after: str | None = None) -> BatchPage:
        """One page of `GET /batches`: the batches after the one named `after`."""
        query = {"limit": limit, **({"after": after} if after else {})}
        _, body = await self._api.request("GET", f"/batches?{urlencode(query)}")
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise MalformedResponse("batch list has no `data`", provider="openai")
        batches = [self._status(item) for item in items]
        last = body.get("last_id")
        last_id = last if isinstance(last, str) and last else (batches[-1].id if batches else None)
        return BatchPage(batches, body.get("has_more") is True, last_id)

    async def results(self, file_id: str) -> AsyncIterator[LineResult]:
        """The output (or error) file, one line at a time: never the whole file in memory."""
        async for raw in self._api.stream_lines(f"/files/{file_id}/content", job_id=file_id):
            if raw.strip():
                yield self.parse_line(raw)

    def parse_line(self, raw: str) -> LineResult:
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
        except (ValueError, KeyError, TypeError):
            raise MalformedResponse("a batch output line is not JSON with a custom_id") from None
        error = line.get("error")
        response = line.get("response") or {}
        status_code = response.get("status_code")
        body = response.get("body") or {}
        if error or status_code != 200:
            message = _error_text(error) or _error_text(body.get("error")) or "no image"
            return LineResult(custom_id=custom_id, error=f"HTTP {status_code}: {message}")
        images = []
        for item in body.get("data") or []:
            try:
                images.append(base64.b64decode(str(item["b64_json"]), validate=True))
            except (KeyError, TypeError, binascii.Error, ValueError):
                return LineResult(custom_id=custom_id, error="an image is not base64")
        usd = usage_cost(body.get("usage"), self.provider.token_prices)
        cost = round(usd * BATCH_DISCOUNT, 9) if usd is not None else None
        return LineResult(custom_id=custom_id, images=images, cost=cost)

    def _status(self, body: Any) -> BatchStatus:
        try:
            return BatchStatus.model_validate(body)
        except ValueError:
            raise MalformedResponse(
                "batch answer is not a batch object", provider="openai"
            ) from None

    def _field(self, body: Any, name: str) -> Any:
        if not isinstance(body, dict) or name not in body:
            raise MalformedResponse(f"answer has no `{name}`", provider="openai")
        return body[name]


def _unix(moment: datetime) -> float:
    """A moment as a unix time (a time without a zone is UTC, as our records write it)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _all_older(batches: list[BatchStatus], oldest: float | None) -> bool:
    """Every batch of a page was created before `oldest` (one without a time is not)."""
    if oldest is None or not batches:
        return False
    return all(b.created_at is not None and b.created_at < oldest for b in batches)


def _error_text(error: Any) -> str | None:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "") or None
    return str(error) if error else None
