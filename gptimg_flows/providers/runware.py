"""Runware: GPT Image 2 as an `imageInference` task in Runware's REST task array.

Runware lets the caller choose the `taskUUID`, so ours is derived from our idempotency key: a
lost submit answer can be looked up (`find_job`), and a resubmission is refused by Runware as a
duplicate instead of being paid twice. Errors may arrive inside an HTTP 200 body
(`{"errors": [...]}`); they are mapped to the same typed errors as HTTP errors.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import httpx

from gptimg_flows.errors import (
    ContentRejected,
    InsufficientCredits,
    InvalidRequest,
    MalformedResponse,
    ProviderError,
)
from gptimg_flows.models import (
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobState,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers._gpt_image import MAX_SIDE, MIN_SIDE, MULTIPLE_OF, QUALITIES
from gptimg_flows.providers._http import bearer_api, map_status, require, status_table
from gptimg_flows.providers.base import EXPIRED_URL_NOTE, Capabilities, PreparedInputs, Provider

log = logging.getLogger("gptimg_flows.providers.runware")

API_KEY_ENV = "RUNWARE_API_KEY"
DEFAULT_MODEL = "openai:gpt-image@2"

#: Fixed namespace of our taskUUIDs: the same idempotency key always gives the same task.
TASK_NAMESPACE = uuid.UUID("dead6d04-32a8-44a7-bdc2-244965e92cc3")

_FORMATS = {"png": "PNG", "jpeg": "JPG", "webp": "WEBP"}
_MIMES = {"PNG": "image/png", "JPG": "image/jpeg", "WEBP": "image/webp"}
_OUTPUT_QUALITY = (20, 99)

#: Per-generation statuses of a getResponse item.
_ITEM_STATES = status_table(
    queued=["queued", "pending"],
    running=["processing", "running", "in-progress"],
    succeeded=["success", "succeeded", "completed", "done"],
    failed=["error", "failed", "failure"],
    canceled=["canceled", "cancelled"],
)

_CREDIT_WORDS = ("insufficientcredits", "insufficient", "credit", "balance", "payment")
_MODERATION_WORDS = ("moderation", "nsfw", "safety", "content policy", "contentpolicy")


def task_uuid_for(key: str) -> str:
    """Our taskUUID for an idempotency key: stable, so Runware recognises a resubmission."""
    return str(uuid.uuid5(TASK_NAMESPACE, key))


class RunwareProvider(Provider):
    """GPT Image 2 through Runware's REST API (`POST {base_url}` with a JSON array of tasks)."""

    name: ClassVar[str] = "runware"
    display_name: ClassVar[str] = "Runware"
    capabilities: ClassVar[Capabilities] = Capabilities(
        model=DEFAULT_MODEL,
        max_n=20,
        fields=frozenset(
            {
                "size",
                "resolution",
                "quality",
                "background",
                "output_format",
                "output_compression",
                "moderation",
            }
        ),
        size_mode="pixels",
        auto_size=False,
        multiple_of=MULTIPLE_OF,
        min_side=MIN_SIDE,
        max_side=MAX_SIDE,
        qualities=QUALITIES,
        backgrounds=("auto",),
        formats=("png", "jpeg", "webp"),
        moderations=("auto", "low"),
        mask=False,
        max_reference_images=16,
        input_kinds=frozenset({"url", "bytes"}),
        min_prompt_chars=2,
        max_prompt_chars=32000,
        synchronous=False,
        can_find_job_by_key=True,
        can_cancel=False,
        cost_unit="usd",
        notes=(
            "width/height are always sent: an unset size is sent as 1024x1024",
            "no background field is documented: background='auto' sends nothing; "
            "'opaque' and 'transparent' are refused (output_format='jpeg' is always opaque)",
            "output_compression is sent unchanged as outputQuality; "
            "values outside 20-99 are refused",
            "an unset output_format leaves Runware's default (JPG)",
            "seed is not documented for this model and is refused",
            "OpenAI's own limits (at most 8,294,400 pixels, ratio 1:3-3:1) may also apply upstream",
            "taskUUID is a UUID v5 of our key although the docs say UUID v4 (unconfirmed)",
            "input images are sent as data URIs, or as their URL when they have one",
            "deliveryMethod async by default; delivery='sync' returns finished jobs at submit",
            "no cancel endpoint is documented",
            EXPIRED_URL_NOTE,
        ),
    )

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.runware.ai/v1",
        model: str = DEFAULT_MODEL,
        delivery: Literal["async", "sync"] = "async",
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if delivery not in ("async", "sync"):
            raise ValueError(f"delivery must be 'async' or 'sync', not {delivery!r}")
        self.model = model
        self.delivery = delivery
        # Runware's REST endpoint is the base URL itself (no path, no trailing slash).
        self._endpoint = base_url.rstrip("/")
        self._api = bearer_api(
            self.name, "Runware", API_KEY_ENV, api_key, self._endpoint, timeout, transport
        )

    # -- checks ------------------------------------------------------------------------------

    def validate(self, request: ImageRequest) -> None:
        """Base checks, then the Runware limits the base cannot express."""
        if request.background in ("transparent", "opaque"):
            raise self._invalid(
                "background",
                f"background={request.background!r}: Runware documents no background field for "
                "GPT Image 2; leave it unset or 'auto' (use openai or scenario for transparency; "
                "output_format='jpeg' is always opaque)",
            )
        super().validate(request)
        if request.output_compression is not None:
            lo, hi = _OUTPUT_QUALITY
            if not lo <= request.output_compression <= hi:
                raise self._invalid(
                    "output_compression",
                    f"output_compression={request.output_compression}: Runware's outputQuality "
                    f"takes {lo}-{hi}",
                )

    # -- inputs ------------------------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """References go inline as data URIs (or by URL): Runware needs no separate upload."""
        if mask is not None:
            raise self._invalid("mask", "Runware documents no mask for GPT Image 2")
        return PreparedInputs(
            refs=[_reference(img) for img in images], digests=[img.sha256 for img in images]
        )

    # -- submit ------------------------------------------------------------------------------

    def build_task(
        self, request: ImageRequest, inputs: PreparedInputs | None, key: str
    ) -> dict[str, Any]:
        """The imageInference task exactly as sent (public so tests can read it)."""
        width, height = request.resolved_pixels()
        task: dict[str, Any] = {
            "taskType": "imageInference",
            "taskUUID": task_uuid_for(key),
            "model": self.model,
            "positivePrompt": request.prompt,
            "width": width,
            "height": height,
            "numberResults": request.n,
            "outputType": "URL",
            "deliveryMethod": self.delivery,
            "includeCost": True,
        }
        if request.output_format is not None:
            task["outputFormat"] = _FORMATS[request.output_format]
        if request.output_compression is not None:
            task["outputQuality"] = request.output_compression
        if isinstance(request, EditRequest):
            task["inputs"] = {"referenceImages": self._refs(inputs)}
        openai: dict[str, str] = {}
        if request.quality is not None:
            openai["quality"] = request.quality
        if request.moderation is not None:
            openai["moderation"] = request.moderation
        if openai:
            task["providerSettings"] = {"openai": openai}
        return task

    def _refs(self, inputs: PreparedInputs | None) -> list[str]:
        if inputs is not None and inputs.refs:
            return list(inputs.refs)
        if inputs is not None and inputs.images:
            return [_reference(img) for img in inputs.images]
        raise self._invalid("images", "an edit needs its input images: call upload_inputs first")

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        self.validate(request)
        task = self.build_task(request, inputs, key)
        task_uuid: str = task["taskUUID"]
        handle: dict[str, Any] = {"taskUUID": task_uuid, "numberResults": request.n}
        if "outputFormat" in task:
            handle["outputFormat"] = task["outputFormat"]
        job = Job(
            provider=self.name,
            model=self.model,
            job_id=task_uuid,
            key=key,
            n=request.n,
            handle=handle,
        )
        status_code, body = await self._post([task], None)
        errors = _errors_of(body)
        if errors:
            if any(_code(e) == "duplicateTaskUUID" for e in errors):
                # Already submitted (and paid for) under this key: poll that task, never pay twice.
                log.info("Runware already has task %s for this key; polling it", task_uuid)
                return job
            raise self._error(errors, status_code)
        items = require(body, "data", provider=self.name, job_id=task_uuid)
        status = self._status(job, task_uuid, _as_list(items, task_uuid))
        if status.state.terminal:
            return job.model_copy(update={"status": status})
        return job

    # -- polling -----------------------------------------------------------------------------

    async def find_job(self, job: Job) -> JobStatus | None:
        """Ask Runware about the taskUUID our key maps to; None when it never saw it."""
        return await self._get_response(job, not_found_is_none=True)

    async def poll(self, job: Job) -> JobStatus:
        status = await self._get_response(job, not_found_is_none=False)
        assert status is not None
        return status

    async def _get_response(self, job: Job, *, not_found_is_none: bool) -> JobStatus | None:
        task_uuid = str(job.handle.get("taskUUID") or task_uuid_for(job.key))
        _, body = await self._post([{"taskType": "getResponse", "taskUUID": task_uuid}], task_uuid)
        errors = _errors_of(body)
        if errors:
            if not_found_is_none and any(_code(e) == "taskNotFound" for e in errors):
                return None
            first = errors[0]
            return JobStatus(
                job_id=task_uuid,
                state=JobState.FAILED,
                raw_status="error",
                error=str(first.get("message") or first.get("code") or "task failed"),
                error_code=_code(first) or None,
                cost_unit="usd",
            )
        items = require(body, "data", provider=self.name, job_id=task_uuid)
        return self._status(job, task_uuid, _as_list(items, task_uuid))

    def _status(self, job: Job, task_uuid: str, items: list[Any]) -> JobStatus:
        """One JobStatus from the per-generation items Runware returns for our task.

        getResponse lists every generation of the task (processing, success or error), so the
        task is done when none is processing. When we know how many we asked for (a job we
        submitted ourselves), fewer finished items than that also means "still running".
        """
        asked = job.handle.get("numberResults")
        expected = int(asked) if isinstance(asked, int) else 0
        mime = _MIMES.get(str(job.handle.get("outputFormat", "")))
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        running = 0
        cost = 0.0
        has_cost = False
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("taskUUID") not in (None, task_uuid):
                continue
            if isinstance(item.get("cost"), (int, float)):
                cost += float(item["cost"])
                has_cost = True
            state = _item_state(item)
            if state is JobState.SUCCEEDED:
                done.append(item)
            elif state in (JobState.FAILED, JobState.CANCELED):
                failed.append(item)
            else:
                running += 1
        outputs = [self._output(i, item, mime, task_uuid) for i, item in enumerate(done)]
        error = error_code = None
        if failed:
            error = str(failed[0].get("message") or failed[0].get("error") or "generation failed")
            code = failed[0].get("code") or failed[0].get("errorCode")
            error_code = str(code) if code else None
        if running or not (done or failed) or (len(done) + len(failed) < expected):
            state, raw = JobState.RUNNING, "processing"
        elif done:
            # All generations finished; keep (and report) the ones that succeeded, since they
            # were paid for, even if some others failed.
            state, raw = JobState.SUCCEEDED, "success"
        else:
            state, raw = JobState.FAILED, "error"
        return JobStatus(
            job_id=task_uuid,
            state=state,
            raw_status=raw,
            progress=min(1.0, len(done) / expected) if expected else None,
            outputs=outputs if state is JobState.SUCCEEDED else [],
            error=error,
            error_code=error_code,
            cost=cost if has_cost else None,
            cost_unit="usd",
        )

    def _output(self, index: int, item: dict[str, Any], mime: str | None, job_id: str) -> OutputRef:
        seed = item.get("seed")
        common: dict[str, Any] = {
            "index": index,
            "seed": str(seed) if seed is not None else None,
            "width": item.get("width") if isinstance(item.get("width"), int) else None,
            "height": item.get("height") if isinstance(item.get("height"), int) else None,
        }
        if url := item.get("imageURL"):
            return OutputRef(url=str(url), mime=mime, **common)
        inline = item.get("imageDataURI") or item.get("imageBase64Data")
        if isinstance(inline, str):
            header, _, payload = inline.rpartition(",")
            if header.startswith("data:"):
                mime = header[5:].split(";")[0] or mime
            try:
                return OutputRef(data=base64.b64decode(payload, validate=True), mime=mime, **common)
            except (binascii.Error, ValueError):
                pass
        raise MalformedResponse(
            "a successful item has no `imageURL`", provider=self.name, job_id=job_id
        )

    # -- HTTP --------------------------------------------------------------------------------

    async def _post(self, tasks: list[dict[str, Any]], job_id: str | None) -> tuple[int, Any]:
        """POST a task array. HTTP 400 is read here: its `errors[].code` decides what it means."""
        status_code, body = await self._api.request(
            "POST", self._endpoint, json_body=tasks, ok=(200, 400), job_id=job_id
        )
        if status_code == 400 and not _errors_of(body):
            raise InvalidRequest(
                f"request refused: {str(body)[:200]}",
                provider=self.name,
                status_code=400,
                job_id=job_id,
            )
        return status_code, body

    def _error(self, errors: list[dict[str, Any]], status_code: int) -> ProviderError:
        """Map Runware's `errors[]` in a submit answer (HTTP 200 or 400) to our typed errors."""
        first = errors[0]
        code = _code(first)
        message = str(first.get("message") or code or "no message")
        param = first.get("parameter") or first.get("param")
        text = f"{code} {message}".lower()
        kw: dict[str, Any] = {"provider": self.name, "status_code": status_code}
        label = f"{message} ({code})" if code and code not in message else message
        if any(w in text for w in _CREDIT_WORDS):
            return InsufficientCredits(f"out of credits: {label}", **kw)
        if any(w in text for w in _MODERATION_WORDS):
            return ContentRejected(f"rejected by moderation: {label}", **kw)
        where = f" (parameter `{param}`)" if param else ""
        return InvalidRequest(
            f"request refused: {label}{where}", field=str(param) if param else None, **kw
        )

    async def aclose(self) -> None:
        await self._api.aclose()


def _reference(image: InputImage) -> str:
    return image.url if image.url else image.data_uri


def _code(error: dict[str, Any]) -> str:
    return str(error.get("code") or "")


def _errors_of(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, dict)]
    return []


def _as_list(items: Any, job_id: str) -> list[Any]:
    if isinstance(items, list):
        return items
    raise MalformedResponse("answer `data` is not a list", provider="runware", job_id=job_id)


def _item_state(item: dict[str, Any]) -> JobState:
    raw = item.get("status")
    if isinstance(raw, str) and raw:
        return map_status(raw, _ITEM_STATES)
    has_image = any(item.get(k) for k in ("imageURL", "imageDataURI", "imageBase64Data"))
    return JobState.SUCCEEDED if has_image else JobState.RUNNING
