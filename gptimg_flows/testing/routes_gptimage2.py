"""gptimage2.ai: submit, then poll answering 202 while pending/running and 200 when done.

Credits are reserved at submit and refunded when a job fails (moderation included), as its
documentation promises.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_flows.sizes import dims_for
from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import (
    DroppedConnection,
    gateway_timeout_response,
    malformed_json_response,
)
from gptimg_flows.testing.images import OutputSpec, StoredInput, fetch_url
from gptimg_flows.testing.state import (
    PRICE_PER_IMAGE,
    Emulator,
    Job,
    body_digest,
    endpoint,
    idempotency_key,
    json_body,
    output_seed,
    root_url,
)

P = "gptimage2ai"
RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
MODES = ("text-to-image", "image-to-image")
HINTS = ("style", "lighting", "camera", "negative")


def _bad(code: str, message: str, param: str | None = None) -> JSONResponse:
    return shapes.invalid(P, message, code=code, param=param)


def balance(emu: Emulator) -> dict[str, Any]:
    left = emu.balance_view(P)
    return {
        "paidCredits": left,
        "freeImagesRemaining": 0,
        "totalImages": int(left // PRICE_PER_IMAGE[P]),
        "freeImagesPerDay": 0,
    }


def _final_prompt(body: dict[str, Any]) -> str:
    parts = [str(body["prompt"]).strip()]
    for hint in HINTS:
        if isinstance(body.get(hint), str) and body[hint].strip():
            label = "Avoid" if hint == "negative" else hint.capitalize()
            parts.append(f"{label}: {body[hint].strip()}")
    return ". ".join(parts)


def job_json(emu: Emulator, job: Job, root: str, path: str) -> tuple[int, dict[str, Any]]:
    now = emu.now()
    state = job.state(now)
    body: dict[str, Any] = {"jobId": job.job_id}
    if state in ("queued", "running"):
        body["status"] = "pending" if job.progress(now) < 0.3 else "running"
        status = 202
    elif state == "succeeded":
        body["status"] = "succeeded"
        body["results"] = [
            {"imageUrl": url, "seed": str(spec.seed), "finalPrompt": job.extra["final_prompt"]}
            for url, spec in zip(emu.job_urls(root, job, path), job.outputs, strict=True)
        ]
        status = 200
    else:
        body["status"] = "failed"
        body["error"] = job.fail[0] if job.fail else "canceled"
        status = 200
    body["balance"] = balance(emu)
    return status, body


@endpoint(P, "submit")
async def generate(request: Request, emu: Emulator) -> Response:
    path = request.url.path
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.submit_fault(P, path):
        return fault
    try:
        body = await json_body(request)
    except ValueError:
        return _bad("invalid_json", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _bad("invalid_json", "The request body must be a JSON object.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _bad("prompt_required", "A prompt is required.", "prompt")
    mode = body.get("mode", "text-to-image")
    if mode not in MODES:
        return _bad("invalid_mode", f"mode must be one of {', '.join(MODES)}.", "mode")
    ratio = body.get("ratio", "1:1")
    if ratio not in RATIOS:
        return _bad("invalid_ratio", f"ratio must be one of {', '.join(RATIOS)}.", "ratio")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 4:
        return _bad("invalid_count", "count must be an integer from 1 to 4.", "count")
    urls = body.get("imageUrls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        return _bad("invalid_image_urls", "imageUrls must be a list of URLs.", "imageUrls")
    if mode == "image-to-image" and not urls:
        return _bad("image_urls_required", "image-to-image needs imageUrls.", "imageUrls")
    images: list[StoredInput] = []
    for url in urls:
        if not url.startswith(("http://", "https://")):
            return _bad("invalid_image_url", f"not an http(s) URL: {url[:80]}", "imageUrls")
        try:
            images.append(await emu.inputs.add(await fetch_url(emu.http, url)))
        except ValueError as exc:
            return _bad("invalid_image_url", str(exc), "imageUrls")
    cost = PRICE_PER_IMAGE[P] * count
    if (limited := emu.rate_check(P, request, count)[0]) is not None:
        return limited
    if refusal := emu.precheck(P, cost):
        return refusal
    width, height = dims_for(ratio, "1K")
    job_id = str(uuid.uuid4())
    final_prompt = _final_prompt(body)
    specs = [
        OutputSpec(
            prompt=emu.drawn(P, final_prompt, path),
            width=width,
            height=height,
            fmt="png",
            seed=output_seed(emu.config, job_id, i),
            base=images[0].sha256 if images else None,
        )
        for i in range(count)
    ]
    moderated = emu.moderated(prompt, *(body.get(h) for h in HINTS if isinstance(body.get(h), str)))
    fail = (
        ("content_moderation", "The prompt was rejected by content moderation.")
        if moderated
        else emu.job_failure(P, path)
    )
    canonical = dict(body)
    if images:
        canonical["imageUrls"] = [i.sha256 for i in images]
    job = emu.accept(
        P,
        specs,
        path=path,
        body_sha256=body_digest(canonical),
        charge=cost,
        fail=fail,
        refund_on_fail=True,
        job_id=job_id,
        key=idempotency_key(request),
        extra={"final_prompt": final_prompt},
    )
    after = emu.fault(P, "accepted", path)
    if after == "gateway_504":
        return gateway_timeout_response()
    if after == "submit_lost_response":
        return DroppedConnection()
    if after == "malformed_json":
        return malformed_json_response(job.job_id)
    return JSONResponse({"jobId": job.job_id, "status": "pending", "balance": balance(emu)})


@endpoint(P, "poll")
async def poll(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.poll_fault(P, request.url.path):
        return fault
    job = emu.jobs.get(request.path_params["job_id"])
    if job is None or job.provider != P:
        return shapes.error_response(P, 404, "job_not_found", "No such job.")
    emu.settle()
    status, body = job_json(emu, job, root_url(request), request.url.path)
    return JSONResponse(body, status_code=status)


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/generate", generate, methods=["POST"]),
        Route(prefix + "/generate/{job_id}", poll, methods=["GET"]),
    ]
