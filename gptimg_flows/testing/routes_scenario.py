"""Scenario: assets in, a job id out, polled until success, outputs resolved to fresh URLs.

Status spelling follows `scenario_spelling`: the SDK's (queued → warming-up → in-progress →
finalizing → success/failure) or the seed page's (queued → processing → success/failed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import (
    DroppedConnection,
    gateway_timeout_response,
    malformed_json_response,
)
from gptimg_flows.testing.images import OutputSpec, StoredInput, decode_data_uri
from gptimg_flows.testing.state import (
    PRICE_PER_IMAGE,
    Asset,
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

P = "scenario"
MODEL_ID = "model_openai-gpt-image-2"
QUALITIES = ("auto", "low", "medium", "high")
BACKGROUNDS = ("auto", "transparent", "opaque")


def _iso(monotonic_at: float, emu: Emulator) -> str:
    wall = datetime.now(UTC).timestamp() - (emu.now() - monotonic_at)
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


def status_of(job: Job, now: float, spelling: str) -> str:
    state = job.state(now)
    if state == "canceled":
        return "canceled"
    if state == "succeeded":
        return "success"
    if state == "failed":
        return "failure" if spelling == "sdk" else "failed"
    p = job.progress(now)
    if spelling == "seed":
        return "queued" if p < 0.3 else "processing"
    if p < 0.25:
        return "queued"
    if p < 0.5:
        return "warming-up"
    return "in-progress" if p < 0.85 else "finalizing"


def job_json(emu: Emulator, job: Job) -> dict[str, Any]:
    now = emu.now()
    state = job.state(now)
    body: dict[str, Any] = {
        "jobId": job.job_id,
        "jobType": "inference",
        "modelId": MODEL_ID,
        "status": status_of(job, now, emu.config.scenario_spelling),
        "progress": round(job.progress(now), 3) if state != "failed" else 0.0,
        "metadata": {
            "assetIds": list(job.asset_ids) if state == "succeeded" else [],
            "input": job.extra.get("input", {}),
        },
        "billing": {"cuCost": job.charge, "cuDiscount": 0},
        "createdAt": _iso(job.created, emu),
        "updatedAt": _iso(min(now, job.done_at), emu),
    }
    if state == "failed" and job.fail:
        body["error"] = job.fail[1]
        body["metadata"]["error"] = {"code": job.fail[0], "message": job.fail[1]}
    return {"job": body}


def _asset_json(
    asset_id: str, url: str, mime: str, width: int, height: int, kind: str
) -> dict[str, Any]:
    return {
        "asset": {
            "id": asset_id,
            "url": url,
            "mimeType": mime,
            "status": "success",
            "metadata": {"width": width, "height": height, "kind": "image", "type": kind},
        }
    }


async def _asset_bytes(emu: Emulator, asset_id: str) -> StoredInput | None:
    """An asset as an input image: uploaded ones directly, outputs once their job succeeded."""
    asset = emu.assets.get(asset_id)
    if asset is None:
        return None
    if asset.input_sha is not None:
        return emu.inputs.get(asset.input_sha)
    job = emu.jobs.get(asset.job_id or "")
    if job is None or job.state(emu.now()) != "succeeded":
        return None
    spec = job.outputs[asset.index]
    return await emu.inputs.add(await emu.renderer.get(spec, emu.config.render_mode))


@endpoint(P, "upload")
async def upload(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    try:
        body = await json_body(request)
        image = body.get("image") if isinstance(body, dict) else None
        if not isinstance(image, str):
            raise ValueError("`image` (a data URL or base64 string) is required")
        item = await emu.inputs.add(decode_data_uri(image))
    except ValueError as exc:
        return shapes.invalid(P, str(exc), param="image", code="invalid_image")
    asset_id = new_id("asset_")
    emu.assets[asset_id] = Asset(asset_id, input_sha=item.sha256)
    url = emu.issue_url(
        root_url(request),
        P,
        issued_at=emu.now(),
        path=request.url.path,
        input_sha=item.sha256,
        mime=item.mime,
        ext=item.ext,
    )
    return JSONResponse(_asset_json(asset_id, url, item.mime, item.width, item.height, "uploaded"))


@endpoint(P, "submit")
async def generate(request: Request, emu: Emulator) -> Response:
    path = request.url.path
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if request.path_params["model_id"] != MODEL_ID:
        return shapes.error_response(P, 404, "not_found", "Model not found")
    if fault := emu.submit_fault(P, path):
        return fault
    try:
        body = await json_body(request)
    except ValueError as exc:
        return shapes.invalid(P, str(exc), code="invalid_json")
    if not isinstance(body, dict):
        return shapes.invalid(P, "The request body must be a JSON object.", code="invalid_json")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return shapes.invalid(P, "`prompt` is required", param="prompt")
    n = body.get("numOutputs", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        return shapes.invalid(P, "`numOutputs` must be an integer from 1 to 10", param="numOutputs")
    for name, allowed in (("quality", QUALITIES), ("background", BACKGROUNDS)):
        if body.get(name) is not None and body[name] not in allowed:
            return shapes.invalid(P, f"`{name}` must be one of {', '.join(allowed)}", param=name)
    width, height = body.get("width"), body.get("height")
    for name, value in (("width", width), ("height", height)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 3840
        ):
            return shapes.invalid(P, f"`{name}` must be an integer from 16 to 3840", param=name)
    if (width is None) != (height is None):
        return shapes.invalid(P, "`width` and `height` go together", param="width")
    refs = body.get("referenceImages") or []
    if not isinstance(refs, list) or len(refs) > 16 or not all(isinstance(r, str) for r in refs):
        return shapes.invalid(
            P, "`referenceImages` is a list of up to 16 asset ids", param="referenceImages"
        )
    images: list[StoredInput] = []
    for ref in refs:
        item = await _asset_bytes(emu, ref)
        if item is None:
            return shapes.invalid(
                P, f"asset {ref} not found", param="referenceImages", code="asset_not_found"
            )
        images.append(item)
    mask: StoredInput | None = None
    if body.get("mask") is not None:
        if not images:
            return shapes.invalid(P, "`mask` needs `referenceImages`", param="mask")
        mask = await _asset_bytes(emu, str(body["mask"]))
        if mask is None:
            return shapes.invalid(
                P, f"asset {body['mask']} not found", param="mask", code="asset_not_found"
            )
        if not mask.has_alpha:
            return shapes.invalid(P, "The mask must include an alpha channel", param="mask")
        if (mask.width, mask.height) != (images[0].width, images[0].height):
            return shapes.invalid(
                P,
                "The image to edit and the mask must use the same format and dimensions",
                param="mask",
            )
    if emu.moderated(prompt):
        return shapes.moderation_blocked(P)
    cost = PRICE_PER_IMAGE[P] * n
    if (limited := emu.rate_check(P, request, n)[0]) is not None:
        return limited
    if refusal := emu.precheck(P, cost):
        return refusal
    if width is None or height is None:
        width, height = (images[0].width, images[0].height) if images else (1024, 1024)
    job_id = new_id("job_")
    specs = [
        OutputSpec(
            prompt=emu.drawn(P, prompt, path),
            width=width,
            height=height,
            fmt="png",
            seed=output_seed(emu.config, job_id, i),
            transparent=body.get("background") == "transparent",
            base=images[0].sha256 if images else None,
            mask=mask.sha256 if mask else None,
        )
        for i in range(n)
    ]
    canonical = dict(body)
    if images:
        canonical["referenceImages"] = [i.sha256 for i in images]
    if mask is not None:
        canonical["mask"] = mask.sha256
    job = emu.accept(
        P,
        specs,
        path=path,
        body_sha256=body_digest(canonical),
        charge=cost,
        fail=emu.job_failure(P, path),
        job_id=job_id,
        key=idempotency_key(request),
        extra={"input": body | {"numOutputs": n}},
    )
    for i in range(n):
        asset_id = new_id("asset_")
        job.asset_ids.append(asset_id)
        emu.assets[asset_id] = Asset(asset_id, job_id=job.job_id, index=i)
    after = emu.fault(P, "accepted", path)
    if after == "gateway_504":
        return gateway_timeout_response()
    if after == "submit_lost_response":
        return DroppedConnection()
    if after == "malformed_json":
        return malformed_json_response(job.job_id)
    return JSONResponse(job_json(emu, job))


@endpoint(P, "poll")
async def get_job(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    if fault := emu.poll_fault(P, request.url.path):
        return fault
    job = emu.jobs.get(request.path_params["job_id"])
    if job is None or job.provider != P:
        return shapes.not_found(P, "Job")
    emu.settle()
    return JSONResponse(job_json(emu, job))


@endpoint(P, "cancel")
async def job_action(request: Request, emu: Emulator) -> Response:
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    job = emu.jobs.get(request.path_params["job_id"])
    if job is None or job.provider != P:
        return shapes.not_found(P, "Job")
    try:
        body = await json_body(request)
    except ValueError as exc:
        return shapes.invalid(P, str(exc), code="invalid_json")
    if not isinstance(body, dict) or body.get("action") != "cancel":
        return shapes.invalid(P, "`action` must be `cancel`", param="action")
    now = emu.now()
    if job.running(now):
        job.canceled_at = now
    return JSONResponse(job_json(emu, job))


@endpoint(P, "resolve")
async def get_asset(request: Request, emu: Emulator) -> Response:
    """Every call issues a fresh temporary URL, as Scenario's CDN links are short-lived."""
    if not emu.authorized(P, request):
        return shapes.unauthorized(P)
    asset = emu.assets.get(request.path_params["asset_id"])
    if asset is None:
        return shapes.not_found(P, "Asset")
    root, now, path = root_url(request), emu.now(), request.url.path
    if asset.input_sha is not None:
        item = emu.inputs.get(asset.input_sha)
        if item is None:
            return shapes.not_found(P, "Asset")
        url = emu.issue_url(
            root, P, issued_at=now, path=path, input_sha=item.sha256, mime=item.mime, ext=item.ext
        )
        return JSONResponse(
            _asset_json(asset.asset_id, url, item.mime, item.width, item.height, "uploaded")
        )
    job = emu.jobs.get(asset.job_id or "")
    if job is None or job.state(now) != "succeeded":
        return shapes.not_found(P, "Asset")
    spec = job.outputs[asset.index]
    url = emu.issue_url(root, P, issued_at=now, path=path, spec=spec, job_id=job.job_id)
    return JSONResponse(
        _asset_json(asset.asset_id, url, spec.mime, spec.width, spec.height, "inference-txt2img")
    )


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix + "/assets", upload, methods=["POST"]),
        Route(prefix + "/assets/{asset_id}", get_asset, methods=["GET"]),
        Route(prefix + "/generate/custom/{model_id}", generate, methods=["POST"]),
        Route(prefix + "/jobs/{job_id}", get_job, methods=["GET"]),
        Route(prefix + "/jobs/{job_id}/action", job_action, methods=["POST"]),
    ]
