"""OpenAI Images API: synchronous generations and multipart edits answering `b64_json`.

The request is held open for the configured latency, like the real API holding it while it
draws; it counts as a running job for the concurrency limit meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_flows.media import render
from gptimg_flows.sizes import parse_size
from gptimg_flows.spend.prices import usage_cost
from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import (
    DroppedConnection,
    gateway_timeout_response,
    malformed_json_response,
)
from gptimg_flows.testing.images import OutputSpec, StoredInput, pad_length, padded_bytes
from gptimg_flows.testing.state import (
    Emulator,
    body_digest,
    endpoint,
    idempotency_key,
    json_body,
    new_id,
    output_seed,
)

P = "openai"
MODELS = ("gpt-image-2", "gpt-image-2-2026-04-21")
QUALITIES = ("low", "medium", "high", "auto")
BACKGROUNDS = ("transparent", "opaque", "auto")
FORMATS = ("png", "jpeg", "webp")
MODERATIONS = ("auto", "low")
FIDELITIES = ("high", "low")
MAX_PIXELS = 8_294_400


class Invalid(Exception):
    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return shapes.invalid(P, str(self), param=self.param, code=self.code)


@dataclass(frozen=True)
class Params:
    prompt: str
    n: int
    width: int
    height: int
    quality: str
    background: str
    fmt: render.Format
    compression: int | None


def _int(fields: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if not lo <= value <= hi:
        raise Invalid(f"Invalid '{name}': {value}; expected {lo} to {hi}.", name)
    return value


def _choice(fields: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise Invalid(
            f"Invalid value for '{name}': {value!r}. Supported values are: "
            + ", ".join(repr(a) for a in allowed)
            + ".",
            name,
        )
    return str(value)


def _size(value: Any, base: StoredInput | None) -> tuple[int, int]:
    if value in (None, "", "auto"):
        return (base.width, base.height) if base else (1024, 1024)
    parsed = parse_size(str(value))
    if parsed is None:
        raise Invalid(f"Invalid size {value!r}: expected 'auto' or WIDTHxHEIGHT.", "size")
    w, h = parsed
    if w % 16 or h % 16:
        raise Invalid(f"Invalid size {value!r}: width and height must be multiples of 16.", "size")
    if min(w, h) < 16 or max(w, h) > 3840:
        raise Invalid(f"Invalid size {value!r}: sides must be between 16 and 3840.", "size")
    if not 1 / 3 <= w / h <= 3:
        raise Invalid(f"Invalid size {value!r}: aspect ratio must be between 1:3 and 3:1.", "size")
    if w * h > MAX_PIXELS:
        raise Invalid(f"Invalid size {value!r}: at most {MAX_PIXELS:,} pixels.", "size")
    return w, h


def _params(fields: Mapping[str, Any], base: StoredInput | None) -> Params:
    model = fields.get("model")
    if model not in MODELS:
        raise Invalid(f"Invalid model {model!r}; this server serves {', '.join(MODELS)}.", "model")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    if len(prompt) > 32000:
        raise Invalid("Invalid 'prompt': string too long (max 32000).", "prompt")
    n = _int(fields, "n", 1, 1, 10)
    w, h = _size(fields.get("size"), base)
    quality = _choice(fields, "quality", QUALITIES, "auto")
    background = _choice(fields, "background", BACKGROUNDS, "auto")
    fmt = _choice(fields, "output_format", FORMATS, "png")
    compression = _int(fields, "output_compression", 100, 0, 100)
    _choice(fields, "moderation", MODERATIONS, "auto")
    _choice(fields, "input_fidelity", FIDELITIES, "low")
    if background == "transparent" and fmt == "jpeg":
        raise Invalid("Transparent background requires output_format png or webp.", "background")
    return Params(
        prompt=prompt,
        n=n,
        width=w,
        height=h,
        quality=quality,
        background=background,
        fmt=fmt,  # type: ignore[arg-type]
        compression=None if fmt == "png" or "output_compression" not in fields else compression,
    )


def usage_for(
    prompt: str, width: int, height: int, quality: str, images: int, n: int = 1
) -> dict[str, Any]:
    """The token usage the emulator reports (and bills, at gpt-image-2's token prices)."""
    per_tile = {"low": 272, "medium": 1056, "high": 4160, "auto": 4160}[quality]
    output = round(per_tile * width * height / (1024 * 1024)) * n
    text = max(1, len(prompt) // 4)
    prompt_tokens = text + 323 * images
    return {
        "total_tokens": prompt_tokens + output,
        "input_tokens": prompt_tokens,
        "output_tokens": output,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 323 * images},
    }


async def _generate(
    request: Request,
    emu: Emulator,
    params: Params,
    body_sha: str,
    inputs: list[StoredInput],
    mask: StoredInput | None,
) -> Response:
    path = request.url.path
    if emu.moderated(params.prompt):
        return shapes.moderation_blocked(P)
    usage = usage_for(
        params.prompt, params.width, params.height, params.quality, len(inputs), params.n
    )
    cost = usage_cost(usage) or 0.0  # OpenAI bills the tokens the answer reports
    limited, rate_headers = emu.rate_check(P, request, params.n)
    if limited is not None:
        return limited
    if refusal := emu.precheck(P, cost):
        return refusal
    job_id = new_id("emu-openai-")
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
    job = emu.accept(
        P,
        specs,
        path=path,
        body_sha256=body_sha,
        charge=cost,
        charge_now=False,
        fail=emu.job_failure(P, path),
        job_id=job_id,
        key=idempotency_key(request),
    )
    await asyncio.sleep(max(0.0, job.done_at - emu.now()))
    if job.fail:
        return shapes.server_error(P, 500)
    emu.ledger.charge(P, job.job_id, cost)  # drawn, so billed, whether or not the answer arrives
    after = emu.fault(P, "accepted", path)
    if after == "gateway_504":
        return gateway_timeout_response()
    if after == "submit_lost_response":
        return DroppedConnection()
    data = await asyncio.gather(*(emu.renderer.get(s, emu.config.render_mode) for s in specs))
    encoded = await asyncio.to_thread(_b64, list(data), params.fmt, emu.config.pad_to_bytes)
    if after == "malformed_json":
        return malformed_json_response(job.job_id)
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": [{"b64_json": b} for b in encoded],
            "usage": usage,
            "size": f"{params.width}x{params.height}",
            "quality": "high" if params.quality == "auto" else params.quality,
            "background": "opaque" if params.background == "auto" else params.background,
            "output_format": params.fmt,
        },
        headers=rate_headers,
    )


def _b64(images: list[bytes], fmt: str, pad_to: int | None) -> list[str]:
    return [base64.b64encode(padded_bytes(d, pad_length(d, fmt, pad_to))).decode() for d in images]


@endpoint(P, "submit")
async def generations(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.submit_fault(P, request.url.path):
        return fault
    try:
        body = await json_body(request)
    except ValueError as exc:
        return shapes.invalid(P, str(exc), code="invalid_json")
    if not isinstance(body, dict):
        return shapes.invalid(P, "The request body must be a JSON object.", code="invalid_json")
    try:
        params = _params(body, None)
    except Invalid as exc:
        return exc.response()
    return await _generate(request, emu, params, body_digest(body), [], None)


@endpoint(P, "submit")
async def edits(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.submit_fault(P, request.url.path):
        return fault
    try:
        form = await request.form(max_part_size=4 * 1024 * 1024)
    except Exception as exc:  # any parse failure is the client's 400
        return shapes.invalid(P, f"Could not parse multipart body: {exc}", code="invalid_body")
    fields: dict[str, Any] = {}
    canonical: dict[str, Any] = {}
    for name, value in form.multi_items():
        if not isinstance(value, UploadFile):
            fields[name] = value
            canonical[name] = value
    uploads = [
        v for k in ("image[]", "image") for v in form.getlist(k) if isinstance(v, UploadFile)
    ]
    if not uploads:
        return shapes.invalid(
            P,
            "Missing required parameter: 'image'.",
            param="image",
            code="missing_required_parameter",
        )
    images: list[StoredInput] = []
    try:
        for upload in uploads:
            images.append(await emu.inputs.add(await upload.read()))
    except ValueError as exc:
        return shapes.invalid(
            P, f"Invalid image file: {exc}", param="image", code="invalid_image_file"
        )
    mask: StoredInput | None = None
    mask_part = form.get("mask")
    if isinstance(mask_part, UploadFile):
        try:
            mask = await emu.inputs.add(await mask_part.read())
        except ValueError as exc:
            return shapes.invalid(
                P, f"Invalid mask image: {exc}", param="mask", code="invalid_image_file"
            )
        if not mask.has_alpha:
            return shapes.invalid(
                P,
                "Invalid mask image: the mask must have an alpha channel.",
                param="mask",
                code="invalid_image_file",
            )
        if (mask.width, mask.height) != (images[0].width, images[0].height):
            return shapes.invalid(
                P,
                f"Invalid mask image: mask is {mask.width}x{mask.height}, image is "
                f"{images[0].width}x{images[0].height}; they must have the same dimensions.",
                param="mask",
                code="invalid_image_file",
            )
    canonical["image[]"] = [i.sha256 for i in images]
    if mask is not None:
        canonical["mask"] = mask.sha256
    try:
        params = _params(fields, images[0])
    except Invalid as exc:
        return exc.response()
    return await _generate(request, emu, params, body_digest(canonical), images, mask)


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/images/generations", generations, methods=["POST"]),
        Route(prefix + "/images/edits", edits, methods=["POST"]),
    ]
