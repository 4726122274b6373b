"""OpenAI's Files and Batch API, emulated for image generations and edits (docs/wire.md).

`POST /files` (multipart `file` + `purpose=batch`) keeps the JSONL, and with `purpose=vision`
an edit's input image, which an edit line names as `{"file_id": …}` (or carries as an
`image_url` data URL); `POST /batches` starts a
batch that runs for the provider's latency (validating → in_progress → finalizing →
completed); on the first look after that, every line is drawn, billed at half the token price
and written to an output file, one JSONL line per `custom_id`. `GET /batches` lists batches with
their metadata, newest first, a page at a time as OpenAI does: `limit` (1 to 100, default 20),
`after` (the last id of the previous page), and `has_more`, `first_id`, `last_id`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gptimg_flows.spend.prices import BATCH_DISCOUNT, usage_cost
from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import DroppedConnection
from gptimg_flows.testing.images import OutputSpec, StoredInput
from gptimg_flows.testing.routes_openai import Invalid, P, _b64, _params, usage_for
from gptimg_flows.testing.state import Emulator, endpoint, new_id, output_seed

ENDPOINT = "/v1/images/generations"
EDITS = "/v1/images/edits"
PURPOSES = ("batch", "vision", "user_data")
#: OpenAI's page size for list endpoints: default and largest.
LIST_DEFAULT = 20
LIST_MAX = 100


@dataclass
class Batch:
    batch_id: str
    input_file_id: str
    metadata: dict[str, str]
    created: float
    latency: float
    created_at: int
    endpoint: str = ENDPOINT
    output_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def status(self, now: float) -> str:
        if self.output_file_id is not None:
            return "completed"
        if now < self.created + 0.2 * self.latency:
            return "validating"
        return "in_progress" if now < self.created + self.latency else "finalizing"

    def view(self, now: float) -> dict[str, Any]:
        return {
            "id": self.batch_id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status(now),
            "output_file_id": self.output_file_id,
            "error_file_id": None,
            "created_at": self.created_at,
            "metadata": self.metadata,
            "request_counts": self.counts,
        }


@dataclass
class BatchStore:
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)


def store_of(emu: Emulator) -> BatchStore:
    if emu.batch_store is None:
        emu.batch_store = BatchStore()
    store: BatchStore = emu.batch_store
    return store


@endpoint(P, "upload")
async def upload_file(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    form = await request.form(max_part_size=200 * 1024 * 1024)
    upload = form.get("file")
    purpose = form.get("purpose")
    if purpose not in PURPOSES or upload is None or isinstance(upload, str):
        return shapes.invalid(
            P, "Expected a `file` part and purpose batch, vision or user_data.", param="file"
        )
    data = await upload.read()
    file_id = new_id("file-")
    store_of(emu).files[file_id] = data
    return JSONResponse(
        {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "purpose": purpose,
            "filename": upload.filename,
            "created_at": int(time.time()),
        }
    )


@endpoint(P, "submit")
async def create_batch(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if refusal := emu.submit_fault(P, request.url.path):
        return refusal
    body = json.loads(await request.body() or b"{}")
    store = store_of(emu)
    file_id = body.get("input_file_id")
    if file_id not in store.files:
        return shapes.invalid(P, f"No such file: {file_id!r}", param="input_file_id")
    if body.get("endpoint") not in (ENDPOINT, EDITS) or body.get("completion_window") != "24h":
        return shapes.invalid(
            P, "Only /v1/images/generations or /v1/images/edits within 24h.", param="endpoint"
        )
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return shapes.invalid(P, "metadata: at most 16 string pairs.", param="metadata")
    lines = [ln for ln in store.files[file_id].splitlines() if ln.strip()]
    batch = Batch(
        batch_id=new_id("batch_"),
        input_file_id=file_id,
        metadata=metadata,
        created=emu.now(),
        latency=emu.config.latency_for(P),
        created_at=int(time.time()),
        endpoint=body["endpoint"],
        counts={"total": len(lines), "completed": 0, "failed": 0},
    )
    store.batches[batch.batch_id] = batch
    emu.ledger.batch(P, batch.batch_id, len(lines), metadata)
    if emu.fault(P, "accepted", request.url.path) == "submit_lost_response":
        return DroppedConnection()
    return JSONResponse(batch.view(emu.now()))


@endpoint(P, "poll")
async def get_batch(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.poll_fault(P, request.url.path):
        return fault
    batch = store_of(emu).batches.get(request.path_params["batch_id"])
    if batch is None:
        return shapes.not_found(P, "No such batch.")
    await _finish(emu, batch)
    return JSONResponse(batch.view(emu.now()))


@endpoint(P, "poll")
async def list_batches(request: Request, emu: Emulator) -> Response:
    """One page of batches, newest first: those after `after`, at most `limit`."""
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    raw = request.query_params.get("limit", str(LIST_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= LIST_MAX:
        return shapes.invalid(P, f"limit must be an integer from 1 to {LIST_MAX}.", param="limit")
    # Newest first; of two made at the same moment, the later one first.
    batches = sorted(reversed(store_of(emu).batches.values()), key=lambda b: -b.created)
    after = request.query_params.get("after")
    if after is not None:
        ids = [b.batch_id for b in batches]
        if after not in ids:
            return shapes.invalid(P, f"No such batch: {after!r}", param="after")
        batches = batches[ids.index(after) + 1 :]
    page, now = batches[: int(raw)], emu.now()
    return JSONResponse(
        {
            "object": "list",
            "data": [b.view(now) for b in page],
            "first_id": page[0].batch_id if page else None,
            "last_id": page[-1].batch_id if page else None,
            "has_more": len(batches) > len(page),
        }
    )


@endpoint(P, "download")
async def file_content(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    data = store_of(emu).files.get(request.path_params["file_id"])
    if data is None:
        return shapes.not_found(P, "No such file.")

    async def chunks() -> Any:
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    return StreamingResponse(chunks(), media_type="application/jsonl")


async def _finish(emu: Emulator, batch: Batch) -> None:
    """Once the batch's time is up, draw and bill every line and write the output file."""
    if batch.output_file_id is not None or emu.now() < batch.created + batch.latency:
        return
    async with batch.lock:
        if batch.output_file_id is not None:
            return
        out: list[bytes] = []
        for raw in _lines(store_of(emu).files[batch.input_file_id]):
            out.append(await _answer(emu, batch, raw))
        file_id = new_id("file-")
        store_of(emu).files[file_id] = b"".join(out)
        batch.output_file_id = file_id


def _lines(data: bytes) -> list[bytes]:
    return [ln for ln in data.splitlines() if ln.strip()]


async def _answer(emu: Emulator, batch: Batch, raw: bytes) -> bytes:
    line = json.loads(raw)
    custom_id = str(line.get("custom_id"))
    body = line.get("body") or {}
    path = "/v1/batches"
    inputs: list[StoredInput] = []
    mask: StoredInput | None = None
    try:
        if line.get("url") != batch.endpoint:
            raise Invalid(f"This batch's lines go to {batch.endpoint}.", "url")
        if batch.endpoint == EDITS:
            inputs, mask = await _edit_inputs(emu, body)
        params = _params(body, inputs[0] if inputs else None)
    except Invalid as exc:
        batch.counts["failed"] += 1
        return _line(custom_id, 400, {"error": {"message": str(exc), "param": exc.param}})
    if emu.job_failure(P, path) or emu.moderated(params.prompt):
        batch.counts["failed"] += 1
        return _line(custom_id, 500, {"error": {"message": "The image generation failed."}})
    job_id = f"{batch.batch_id}:{custom_id}"
    specs = [
        OutputSpec(
            prompt=emu.drawn(P, params.prompt, path),
            width=params.width,
            height=params.height,
            fmt=params.fmt,
            seed=output_seed(emu.config, job_id, i),
            transparent=params.background == "transparent",
            quality=params.compression,
            base=inputs[0].sha256 if inputs else None,
            mask=mask.sha256 if mask else None,
        )
        for i in range(params.n)
    ]
    data = await asyncio.gather(*(emu.renderer.get(s, emu.config.render_mode) for s in specs))
    encoded = await asyncio.to_thread(_b64, list(data), params.fmt, emu.config.pad_to_bytes)
    usage = usage_for(
        params.prompt, params.width, params.height, params.quality, len(inputs), params.n
    )
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    emu.ledger.submission(
        P, job_id, params.n, digest, key=custom_id, path=path, prompt=params.prompt
    )
    emu.ledger.charge(P, job_id, round((usage_cost(usage) or 0.0) * BATCH_DISCOUNT, 9))
    batch.counts["completed"] += 1
    answer = {
        "created": int(time.time()),
        "data": [{"b64_json": b} for b in encoded],
        "usage": usage,
        "size": f"{params.width}x{params.height}",
    }
    return _line(custom_id, 200, answer)


EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")


async def _edit_inputs(
    emu: Emulator, body: dict[str, Any]
) -> tuple[list[StoredInput], StoredInput | None]:
    """A JSON edit's `images` and `mask`, each `{"file_id": …}` or `{"image_url": data URL}`."""
    refs = body.get("images")
    if not isinstance(refs, list) or not 1 <= len(refs) <= 16:
        raise Invalid("'images' must list 1 to 16 image references.", "images")
    if body.get("size", "auto") not in EDIT_SIZES:
        raise Invalid(f"Invalid size {body.get('size')!r}: one of {', '.join(EDIT_SIZES)}.", "size")
    inputs = [await _stored(emu, _ref_bytes(emu, r, "images"), "images") for r in refs]
    mask: StoredInput | None = None
    if body.get("mask") is not None:
        mask = await _stored(emu, _ref_bytes(emu, body["mask"], "mask"), "mask")
        if not mask.has_alpha or (mask.width, mask.height) != (inputs[0].width, inputs[0].height):
            raise Invalid("The mask must have an alpha channel and the image's size.", "mask")
    return inputs, mask


async def _stored(emu: Emulator, data: bytes, param: str) -> StoredInput:
    try:
        return await emu.inputs.add(data)
    except ValueError as exc:
        raise Invalid(f"'{param}': invalid image file: {exc}", param) from None


def _ref_bytes(emu: Emulator, ref: Any, param: str) -> bytes:
    if not isinstance(ref, dict) or len(ref) != 1:
        raise Invalid(f"'{param}': each reference has exactly one of file_id, image_url.", param)
    if "file_id" in ref:
        data = store_of(emu).files.get(str(ref["file_id"]))
        if data is None:
            raise Invalid(f"No such file: {ref['file_id']!r}", param)
        return data
    url = str(ref.get("image_url", ""))
    head, _, payload = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        raise Invalid(f"'{param}': this emulator takes data URLs and file ids only.", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"'{param}': the data URL is not base64.", param) from None


def _line(custom_id: str, status: int, body: dict[str, Any]) -> bytes:
    line = {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "body": body},
        "error": None,
    }
    return (json.dumps(line) + "\n").encode()


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/files", upload_file, methods=["POST"]),
        Route(prefix + "/files/{file_id}/content", file_content, methods=["GET"]),
        Route(prefix + "/batches", create_batch, methods=["POST"]),
        Route(prefix + "/batches", list_batches, methods=["GET"]),
        Route(prefix + "/batches/{batch_id}", get_batch, methods=["GET"]),
    ]
