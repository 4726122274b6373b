"""skills.video: JSON or multipart submit, polled by generation id, outputs as URLs.

Moderation here is asynchronous: the job is accepted (and charged) and then FAILS with a
moderation code, which is how a client meets it on this provider.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_flows.media import render
from gptimg_flows.sizes import dims_for
from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import (
    DroppedConnection,
    gateway_timeout_response,
    malformed_json_response,
)
from gptimg_flows.testing.images import OutputSpec, StoredInput, decode_data_uri, fetch_url
from gptimg_flows.testing.state import (
    PRICE_PER_IMAGE,
    Emulator,
    Job,
    body_digest,
    endpoint,
    idempotency_key,
    json_body,
    new_id,
    output_seed,
    root_url,
)

P = "skillsvideo"
RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
RESOLUTIONS = ("1K", "2K", "4K")
QUALITIES = ("low", "medium", "high")
FORMATS: dict[str, render.Format] = {"jpeg": "jpeg", "png": "png", "webp": "webp"}


class Invalid(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


async def _image(emu: Emulator, value: Any, param: str) -> StoredInput:
    """A URL, a data URI, or an uploaded file part → a stored input image."""
    try:
        if isinstance(value, UploadFile):
            return await emu.inputs.add(await value.read())
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return await emu.inputs.add(await fetch_url(emu.http, value))
        if isinstance(value, str) and value.startswith("data:"):
            return await emu.inputs.add(decode_data_uri(value))
    except ValueError as exc:
        raise Invalid(f"`{param}`: {exc}", param) from None
    raise Invalid(f"`{param}` must be an http(s) URL, a data URI or a file part", param)


def _count(fields: dict[str, Any]) -> int:
    for name in ("num_images", "n"):
        value = fields.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
            raise Invalid(f"`{name}` must be an integer from 1 to 4", name)
        return value
    return 1


def _choice(fields: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise Invalid(f"`{name}` must be one of {', '.join(allowed)}", name)
    return str(value)


def status_of(job: Job, now: float) -> str:
    state = job.state(now)
    if state in ("queued", "running"):
        return "IN_QUEUE" if job.progress(now) < 0.3 else "IN_PROGRESS"
    return {"succeeded": "COMPLETED", "failed": "FAILED", "canceled": "CANCELED"}[state]


def job_json(emu: Emulator, job: Job, root: str, path: str) -> dict[str, Any]:
    now = emu.now()
    status = status_of(job, now)
    body: dict[str, Any] = {
        "id": job.job_id,
        "status": status,
        "input": job.extra["input"],
        "usage": {"total": job.charge, "subscription": job.charge, "permanent": 0},
        "data": None,
    }
    if status == "COMPLETED":
        urls = emu.job_urls(root, job, path)
        images = [
            {
                "url": url,
                "file_name": f"{job.job_id}_{i}.{spec.ext}",
                "content_type": spec.mime,
                "width": spec.width,
                "height": spec.height,
            }
            for i, (url, spec) in enumerate(zip(urls, job.outputs, strict=True))
        ]
        body["data"] = {"images": images, "image": images[0]}
    elif status == "FAILED" and job.fail:
        body["code"], body["message"] = job.fail
    return body


async def _read(request: Request) -> tuple[dict[str, Any], list[Any], Any]:
    """(plain fields, image_urls values, mask_url value) from JSON or multipart."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_part_size=4 * 1024 * 1024)
        except Exception as exc:  # any parse failure is the client's 400
            raise Invalid(f"could not parse multipart body: {exc}", "body") from None
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return fields, list(form.getlist("image_urls")), form.get("mask_url")
    try:
        body = await json_body(request)
    except ValueError as exc:
        raise Invalid(str(exc), "body") from None
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object", "body")
    urls = body.get("image_urls") or []
    if not isinstance(urls, list):
        raise Invalid("`image_urls` must be a list of URLs", "image_urls")
    fields = {k: v for k, v in body.items() if k not in ("image_urls", "mask_url")}
    return fields, urls, body.get("mask_url")


@endpoint(P, "submit")
async def submit(request: Request, emu: Emulator) -> Response:
    path = request.url.path
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.submit_fault(P, path):
        return fault
    try:
        fields, url_values, mask_value = await _read(request)
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise Invalid("`prompt` is required", "prompt")
        ratio = _choice(fields, "aspect_ratio", RATIOS)
        resolution = _choice(fields, "resolution", RESOLUTIONS)
        quality = _choice(fields, "quality", QUALITIES) or "high"
        fmt = FORMATS[_choice(fields, "output_format", tuple(FORMATS)) or "png"]
        n = _count(fields)
        if len(url_values) > 16:
            raise Invalid("`image_urls` takes at most 16 images", "image_urls")
        images = [await _image(emu, v, "image_urls") for v in url_values]
        mask = None
        if mask_value not in (None, ""):
            if not images:
                raise Invalid("`mask_url` needs `image_urls`", "mask_url")
            mask = await _image(emu, mask_value, "mask_url")
            if (mask.width, mask.height) != (images[0].width, images[0].height):
                raise Invalid(
                    f"mask is {mask.width}x{mask.height} but the image is "
                    f"{images[0].width}x{images[0].height}",
                    "mask_url",
                )
    except Invalid as exc:
        return shapes.invalid(P, str(exc), param=exc.param)
    cost = PRICE_PER_IMAGE[P] * n
    if (limited := emu.rate_check(P, request, n)[0]) is not None:
        return limited
    if refusal := emu.precheck(P, cost):
        return refusal
    if images and ratio is None and resolution is None:
        width, height = images[0].width, images[0].height
    else:
        width, height = dims_for(ratio or "4:3", resolution or "1K")
    job_id = new_id("gen_")
    specs = [
        OutputSpec(
            prompt=emu.drawn(P, prompt, path),
            width=width,
            height=height,
            fmt=fmt,
            seed=output_seed(emu.config, job_id, i),
            base=images[0].sha256 if images else None,
            mask=mask.sha256 if mask else None,
        )
        for i in range(n)
    ]
    fail = (
        ("content_moderation", "The prompt was flagged by content moderation.")
        if emu.moderated(prompt)
        else emu.job_failure(P, path)
    )
    normalised: dict[str, Any] = {
        "prompt": prompt,
        "aspect_ratio": ratio or "4:3",
        "resolution": f"{width}x{height}",
        "quality": quality,
        "n": n,
        "output_format": fmt,
    }
    canonical = dict(fields)
    if images:
        canonical["image_urls"] = [i.sha256 for i in images]
        normalised["image_urls"] = [v if isinstance(v, str) else "upload" for v in url_values]
    if mask is not None:
        canonical["mask_url"] = mask.sha256
    job = emu.accept(
        P,
        specs,
        path=path,
        body_sha256=body_digest(canonical),
        charge=cost,
        fail=fail,
        job_id=job_id,
        key=idempotency_key(request),
        extra={"input": normalised},
    )
    after = emu.fault(P, "accepted", path)
    if after == "gateway_504":
        return gateway_timeout_response()
    if after == "submit_lost_response":
        return DroppedConnection()
    if after == "malformed_json":
        return malformed_json_response(job.job_id)
    body = job_json(emu, job, root_url(request), path)
    body.pop("data")
    return JSONResponse(body)


@endpoint(P, "poll")
async def poll(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.poll_fault(P, request.url.path):
        return fault
    job = emu.jobs.get(request.path_params["gen_id"])
    if job is None or job.provider != P:
        return shapes.not_found(P, "Generation")
    return JSONResponse(job_json(emu, job, root_url(request), request.url.path))


@endpoint(P, "other")
async def running(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    now = emu.now()
    data = [
        {"id": j.job_id, "status": status_of(j, now), "input": j.extra["input"]}
        for j in emu.jobs.values()
        if j.provider == P and j.running(now)
    ]
    return JSONResponse({"data": data})


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/v1/generation/openai/gpt-image-2", submit, methods=["POST"]),
        Route(prefix + "/v1/generation/{gen_id}", poll, methods=["GET"]),
        Route(prefix + "/v1/generations/running", running, methods=["GET"]),
    ]
