"""Runware REST: one POST of a task array; `imageInference` submits, `getResponse` polls.

The taskUUID is the client's, so the emulator keeps every accepted one: a resubmission is
refused (`duplicateTaskUUID`, no charge) and a lost answer can be found with getResponse.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_flows.media import render
from gptimg_flows.testing import shapes
from gptimg_flows.testing.faults import (
    DroppedConnection,
    gateway_timeout_response,
    malformed_json_response,
)
from gptimg_flows.testing.images import (
    OutputSpec,
    StoredInput,
    decode_data_uri,
    fetch_url,
    pad_length,
    padded_bytes,
)
from gptimg_flows.testing.state import (
    PRICE_PER_IMAGE,
    Emulator,
    Job,
    body_digest,
    endpoint,
    json_body,
    output_seed,
    root_url,
)

P = "runware"
MODEL = "openai:gpt-image@2"
FORMATS: dict[str, render.Format] = {"JPG": "jpeg", "JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
OUTPUT_TYPES = ("URL", "dataURI", "base64Data")
QUALITIES = ("auto", "high", "medium", "low")
MODERATIONS = ("auto", "low")


class TaskError(Exception):
    """One task refused: becomes an item of `errors` and decides the HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        task_uuid: str | None,
        parameter: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.item: dict[str, Any] = {"code": code, "message": message}
        if parameter:
            self.item["parameter"] = parameter
        if task_uuid:
            self.item["taskUUID"] = task_uuid


def _int(
    task: dict[str, Any], name: str, default: int | None, lo: int, hi: int, step: int, tid: str
) -> int:
    value = task.get(name, default)
    code = "invalid" + name[0].upper() + name[1:]
    if value is None:
        raise TaskError(400, code, f"Missing required parameter '{name}'.", tid, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskError(
            400,
            code,
            f"Invalid value for '{name}': must be an integer from {lo} to {hi}.",
            tid,
            name,
        )
    if value % step:
        raise TaskError(
            400, code, f"Invalid value for '{name}': must be a multiple of {step}.", tid, name
        )
    return value


def _choice(value: Any, allowed: tuple[str, ...], name: str, tid: str) -> str:
    if value not in allowed:
        raise TaskError(
            400,
            "invalid" + name[0].upper() + name[1:],
            f"Invalid value for '{name}': allowed values are {', '.join(allowed)}.",
            tid,
            name,
        )
    return str(value)


async def _reference(emu: Emulator, ref: Any, tid: str) -> StoredInput:
    param = "inputs.referenceImages"
    if not isinstance(ref, str) or not ref:
        raise TaskError(
            400, "invalidReferenceImages", "Reference images must be strings.", tid, param
        )
    try:
        if ref in emu.images:
            spec = emu.images[ref]
            return await emu.inputs.add(await emu.renderer.get(spec, emu.config.render_mode))
        if ref.startswith(("http://", "https://")):
            return await emu.inputs.add(await fetch_url(emu.http, ref))
        if _is_uuid(ref):
            raise ValueError(f"no image with UUID {ref}")
        return await emu.inputs.add(decode_data_uri(ref))
    except ValueError as exc:
        raise TaskError(
            400, "invalidReferenceImages", f"Invalid reference image: {exc}", tid, param
        ) from None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _infer(request: Request, emu: Emulator, task: dict[str, Any]) -> Job:
    path = request.url.path
    tid = task.get("taskUUID")
    if not isinstance(tid, str) or not _is_uuid(tid):
        raise TaskError(400, "invalidTaskUUID", "taskUUID must be a UUID.", None, "taskUUID")
    if tid in emu.jobs and emu.jobs[tid].provider == P:
        raise TaskError(
            400,
            "duplicateTaskUUID",
            f"A task with taskUUID {tid} was already submitted.",
            tid,
            "taskUUID",
        )
    if task.get("model") != MODEL:
        raise TaskError(
            400, "invalidModel", f"Invalid model; this server serves {MODEL}.", tid, "model"
        )
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not 2 <= len(prompt.strip()) <= 32000:
        raise TaskError(
            400,
            "invalidPositivePrompt",
            "positivePrompt must be a string of 2 to 32000 characters.",
            tid,
            "positivePrompt",
        )
    width = _int(task, "width", None, 16, 3840, 16, tid)
    height = _int(task, "height", None, 16, 3840, 16, tid)
    n = _int(task, "numberResults", 1, 1, 20, 1, tid)
    output_type = task.get("outputType", "URL")
    if isinstance(output_type, list) and len(output_type) == 1:
        output_type = output_type[0]
    _choice(output_type, OUTPUT_TYPES, "outputType", tid)
    fmt = FORMATS.get(str(task.get("outputFormat", "JPG")).upper())
    if fmt is None:
        raise TaskError(
            400,
            "invalidOutputFormat",
            "Invalid value for 'outputFormat': allowed values are JPG, PNG, WEBP.",
            tid,
            "outputFormat",
        )
    quality = _int(task, "outputQuality", 95, 20, 99, 1, tid)
    _choice(task.get("deliveryMethod", "sync"), ("sync", "async"), "deliveryMethod", tid)
    settings = (task.get("providerSettings") or {}).get("openai") or {}
    if not isinstance(settings, dict):
        raise TaskError(
            400,
            "invalidProviderSettings",
            "providerSettings.openai must be an object.",
            tid,
            "providerSettings",
        )
    _choice(settings.get("quality", "auto"), QUALITIES, "quality", tid)
    _choice(settings.get("moderation", "auto"), MODERATIONS, "moderation", tid)
    refs = (task.get("inputs") or {}).get("referenceImages")
    images: list[StoredInput] = []
    if refs is not None:
        if not isinstance(refs, list) or not 1 <= len(refs) <= 16:
            raise TaskError(
                400,
                "invalidReferenceImages",
                "referenceImages takes 1 to 16 images.",
                tid,
                "inputs.referenceImages",
            )
        images = [await _reference(emu, ref, tid) for ref in refs]
    if emu.moderated(prompt):
        raise TaskError(
            400,
            "contentModeration",
            "The prompt was rejected by the content moderation system.",
            tid,
        )
    cost = PRICE_PER_IMAGE[P] * n
    if refusal := emu.precheck(P, cost):
        code = "insufficientCredits" if refusal.status_code == 402 else "tooManyRequests"
        raise TaskError(
            refusal.status_code,
            code,
            "Insufficient credits."
            if code == "insufficientCredits"
            else "Too many concurrent tasks.",
            tid,
        )
    canonical = {k: v for k, v in task.items() if k != "taskUUID"}
    if images:
        canonical["inputs"] = dict(canonical["inputs"]) | {
            "referenceImages": [i.sha256 for i in images]
        }
    specs = [
        OutputSpec(
            prompt=emu.drawn(P, prompt, path),
            width=width,
            height=height,
            fmt=fmt,
            seed=output_seed(emu.config, tid, i),
            quality=None if fmt == "png" else quality,
            base=images[0].sha256 if images else None,
        )
        for i in range(n)
    ]
    job = emu.accept(
        P,
        specs,
        path=path,
        body_sha256=body_digest(canonical),
        charge=cost,
        fail=emu.job_failure(P, path, "inferenceFailed"),
        job_id=tid,
        task_uuid=tid,
        key=tid,
        extra={"task": canonical},
    )
    job.image_uuids = [str(uuid.uuid4()) for _ in specs]
    for image_uuid, spec in zip(job.image_uuids, specs, strict=True):
        emu.images[image_uuid] = spec
    return job


async def _results(request: Request, emu: Emulator, job: Job) -> tuple[list[Any], list[Any]]:
    """getResponse items for one task: processing, its images, or its error."""
    tid = job.job_id
    state = job.state(emu.now())
    if state in ("queued", "running"):
        return [{"taskType": "imageInference", "taskUUID": tid, "status": "processing"}], []
    if state == "canceled":
        return [], [{"code": "taskCanceled", "message": "The task was canceled.", "taskUUID": tid}]
    if state == "failed":
        code, message = job.fail or ("inferenceFailed", "failed")
        return [], [{"code": code, "message": message, "taskUUID": tid}]
    task = job.extra["task"]
    output_type = task.get("outputType", "URL")
    output_type = output_type[0] if isinstance(output_type, list) else output_type
    job_urls = None
    if output_type == "URL":
        job_urls = emu.job_urls(root_url(request), job, request.url.path)
    items = []
    for i, spec in enumerate(job.outputs):
        item: dict[str, Any] = {
            "taskType": "imageInference",
            "taskUUID": tid,
            "imageUUID": job.image_uuids[i],
            "seed": spec.seed,
            "status": "success",
        }
        if job_urls is not None:
            item["imageURL"] = job_urls[i]
        else:
            data = await emu.renderer.get(spec, emu.config.render_mode)
            pad = pad_length(data, spec.fmt, emu.config.pad_to_bytes)
            encoded = await asyncio.to_thread(_b64, data, pad)
            if output_type == "dataURI":
                item["imageDataURI"] = f"data:{spec.mime};base64,{encoded}"
            else:
                item["imageBase64Data"] = encoded
        if task.get("includeCost"):
            item["cost"] = PRICE_PER_IMAGE[P]
        items.append(item)
    return items, []


def _b64(data: bytes, pad: int) -> str:
    return base64.b64encode(padded_bytes(data, pad)).decode()


def _authorized(emu: Emulator, request: Request, tasks: list[dict[str, Any]]) -> bool:
    if emu.authorized(P, request):
        return True
    key = emu.config.keys.get(P)
    return any(t.get("taskType") == "authentication" and t.get("apiKey") == key for t in tasks)


@endpoint(P, None)
async def tasks(request: Request, emu: Emulator) -> Response:
    path = request.url.path
    try:
        body = await json_body(request)
        if not isinstance(body, list) or not all(isinstance(t, dict) for t in body):
            raise ValueError("The request body must be a JSON array of task objects.")
    except ValueError as exc:
        emu.ledger.request(P, "other")
        if not emu.authorized(P, request):  # credentials are checked before the payload
            return shapes.unauthorized(P)
        return shapes.invalid(P, str(exc), code="invalidPayload")
    types = {t.get("taskType") for t in body}
    kind = "submit" if "imageInference" in types else "poll" if "getResponse" in types else "other"
    emu.ledger.request(P, kind)
    if not _authorized(emu, request, body):
        return shapes.unauthorized(P)
    fault = emu.submit_fault(P, path) if kind == "submit" else None
    if kind == "poll":
        fault = emu.poll_fault(P, path)
    if fault is not None:
        return fault
    data: list[Any] = []
    errors: list[Any] = []
    statuses: list[int] = []
    accepted: list[tuple[Job, bool]] = []
    for task in body:
        task_type = task.get("taskType")
        tid = task.get("taskUUID")
        if task_type == "authentication":
            data.append({"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())})
        elif task_type == "ping":
            data.append({"taskType": "ping", "pong": True})
        elif task_type == "imageInference":
            try:
                job = await _infer(request, emu, task)
            except TaskError as exc:
                errors.append(exc.item)
                statuses.append(exc.status)
                continue
            accepted.append((job, task.get("deliveryMethod", "sync") == "sync"))
        elif task_type == "getResponse":
            job_found = emu.jobs.get(tid) if isinstance(tid, str) else None
            if job_found is None or job_found.provider != P:
                errors.append(
                    {
                        "code": "taskNotFound",
                        "message": f"No task with taskUUID {tid}.",
                        "taskUUID": tid,
                    }
                )
                statuses.append(400)
                continue
            emu.settle()
            items, errs = await _results(request, emu, job_found)
            data.extend(items)
            errors.extend(errs)
            statuses.extend([emu.config.runware_failure_http] * len(errs))
        else:
            errors.append(
                {
                    "code": "unsupportedTaskType",
                    "message": f"Unsupported taskType {task_type!r}.",
                    "taskUUID": tid,
                }
            )
            statuses.append(400)
    after = emu.fault(P, "accepted", path) if accepted else None
    sync_jobs = [job for job, sync in accepted if sync]
    if sync_jobs:
        await asyncio.sleep(max(0.0, max(j.done_at for j in sync_jobs) - emu.now()))
    if after == "gateway_504":
        return gateway_timeout_response()
    if after == "submit_lost_response":
        return DroppedConnection()
    for job, sync in accepted:
        if sync:
            items, errs = await _results(request, emu, job)
            data.extend(items)
            errors.extend(errs)
            statuses.extend([emu.config.runware_failure_http] * len(errs))
        else:
            data.append(
                {"taskType": "imageInference", "taskUUID": job.job_id, "status": "processing"}
            )
    if after == "malformed_json":
        return malformed_json_response(accepted[0][0].job_id)
    answer: dict[str, Any] = {"data": data}
    if errors:
        answer["errors"] = errors
    status = max(statuses, default=200)
    headers = {"retry-after": f"{emu.config.retry_after:g}"} if status == 429 else None
    return JSONResponse(answer, status_code=status, headers=headers)


def routes(prefix: str) -> list[Route]:
    return [
        Route(prefix, tasks, methods=["POST"]),
        Route(prefix + "/", tasks, methods=["POST"]),
    ]
