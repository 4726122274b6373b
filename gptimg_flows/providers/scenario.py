"""Scenario: GPT Image 2 as the custom model `model_openai-gpt-image-2`, run as async jobs.

Inputs are Scenario assets (uploaded first as data URLs); a job answers with asset ids, and an
asset's URL is temporary, so outputs are resolved to URLs only when they are about to be
downloaded, and resolved again when a URL has expired. Scenario documents no idempotency key:
the task layer must not resubmit blindly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx

from gptimg_flows.errors import AuthError, InvalidRequest, MalformedResponse, ProviderError
from gptimg_flows.models import (
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobState,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers._gpt_image import (
    BACKGROUNDS,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    MULTIPLE_OF,
    QUALITIES,
    RATIO_BOUNDS,
)
from gptimg_flows.providers._http import (
    ApiClient,
    default_timeout,
    error_for_response,
    map_status,
    require,
    status_table,
)
from gptimg_flows.providers.base import Capabilities, PreparedInputs, Provider
from gptimg_flows.providers.openai import check_mask, first_image_as_png

log = logging.getLogger("gptimg_flows.providers.scenario")

API_KEY_ENV = "SCENARIO_SDK_API_KEY"
API_SECRET_ENV = "SCENARIO_SDK_API_SECRET"  # noqa: S105 (a variable name, not a secret)
DEFAULT_MODEL_ID = "model_openai-gpt-image-2"
COST_UNIT = "cu"

_T = TypeVar("_T")

#: Every status spelling of the seed and of the SDK's types.
STATUSES = status_table(
    queued=["queued", "pending", "warming-up"],
    running=["processing", "in-progress", "finalizing"],
    succeeded=["success", "succeeded"],
    failed=["failed", "failure"],
    canceled=["canceled", "cancelled"],
)


class _ScenarioApiClient(ApiClient):
    """ApiClient that also reads Scenario's error shape `{"error": "message", "code": "..."}`.

    The shared mapping reads a string `error` as the whole story and drops the top-level
    `code`, which is where Scenario says `content_moderation`. A response hook rewrites such an
    answer into the `{"error": {"message", "code"}}` shape and maps it with the shared rules.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: dict[str, str],
        timeout: httpx.Timeout,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(provider, base_url, headers, timeout, transport)
        self._client.event_hooks = {"request": [], "response": [self._read_error_code]}

    async def _read_error_code(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        message, code = body.get("error"), body.get("code")
        if not (isinstance(message, str) and isinstance(code, str) and code):
            return
        headers = {k: v for k, v in response.headers.items() if k.startswith("retry-after")}
        normalised = httpx.Response(
            response.status_code,
            headers=headers,
            json={"error": {"message": message, "code": code, "param": body.get("parameter")}},
        )
        raise error_for_response(self.provider, normalised)


class ScenarioProvider(Provider):
    """GPT Image 2 through Scenario's REST API (assets, `/generate/custom/{modelId}`, jobs)."""

    name: ClassVar[str] = "scenario"
    display_name: ClassVar[str] = "Scenario"
    capabilities: ClassVar[Capabilities] = Capabilities(
        model=DEFAULT_MODEL_ID,
        max_n=4,
        fields=frozenset({"size", "resolution", "quality", "background"}),
        size_mode="pixels",
        auto_size=False,
        multiple_of=MULTIPLE_OF,
        min_side=MIN_SIDE,
        max_side=MAX_SIDE,
        max_pixels=MAX_PIXELS,
        ratio_bounds=RATIO_BOUNDS,
        qualities=QUALITIES,
        backgrounds=BACKGROUNDS,
        formats=(),
        moderations=(),
        edit=True,
        mask=True,
        max_reference_images=16,
        input_kinds=frozenset({"bytes"}),
        synchronous=False,
        can_find_job_by_key=False,
        can_cancel=True,
        cost_unit=COST_UNIT,
        notes=(
            "width/height limits are assumed to be OpenAI's for gpt-image-2 (multiples of 16, "
            "ratio 1:3-3:1, sides up to 3840, at most 8,294,400 pixels); Scenario documents none",
            "numOutputs is assumed to be 1-4 (the docs give only the default, 1)",
            "quality values (auto, low, medium, high) and background values (auto, transparent, "
            "opaque) are assumed to be OpenAI's: the docs name only the default 'auto'",
            "no output_format, output_compression, moderation, seed or input_fidelity field is "
            "documented, so they are refused; size='auto' is refused (leave size unset)",
            "up to 16 reference images is assumed (OpenAI's limit)",
            "inputs are uploaded as assets (POST /assets, data URL) before the submit",
            "masks: PNG with alpha, the first image's size; a non-PNG first image is converted "
            "to PNG (the docs want both in one format); OpenAI's 4 MB mask cap is not applied",
            "cost is reported in Scenario compute units (billing.cuCost)",
            "no idempotency key is documented: a retried submit may run and bill twice",
        ),
    )

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        base_url: str = "https://api.cloud.scenario.com/v1",
        model_id: str = DEFAULT_MODEL_ID,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        missing = [
            env
            for env, value in ((API_KEY_ENV, api_key), (API_SECRET_ENV, api_secret))
            if not value or not value.strip()
        ]
        if missing:
            raise AuthError(
                f"no Scenario credentials: set {' and '.join(missing)} (Scenario needs both "
                f"{API_KEY_ENV} and {API_SECRET_ENV}) or pass api_key and api_secret",
                provider=self.name,
            )
        self.model = model_id
        key, secret = api_key.strip(), api_secret.strip()
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        self._api = _ScenarioApiClient(
            self.name,
            base_url,
            {"Authorization": f"Basic {token}", "Accept": "application/json"},
            default_timeout(timeout),
            transport,
        )

    async def aclose(self) -> None:
        await self._api.aclose()

    # -- inputs ------------------------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """Upload each image (and the mask) as an asset; the submit refers to their ids."""
        self._check_input_count(images)
        digests = [img.sha256 for img in images]
        to_upload = list(images)
        if mask is not None:
            check_mask(self, images[0], mask, None)
            to_upload[0] = await first_image_as_png(images[0])
            to_upload.append(mask)
        ids = await _all([self._upload(img) for img in to_upload])
        mask_ref = ids.pop() if mask is not None else None
        # No bytes are kept: the assets hold them, and prepared inputs cross task boundaries.
        return PreparedInputs(refs=ids, mask_ref=mask_ref, digests=digests)

    async def _upload(self, image: InputImage) -> str:
        body = await self._call(
            "POST", "/assets", json_body={"image": image.data_uri, "name": image.name}
        )
        asset_id = require(body, "asset", "id", provider=self.name)
        return str(asset_id)

    # -- submit ------------------------------------------------------------------------------

    def build_body(self, request: ImageRequest, inputs: PreparedInputs | None) -> dict[str, Any]:
        """The generate body exactly as sent (public so tests can read it)."""
        body: dict[str, Any] = {"prompt": request.prompt, "numOutputs": request.n}
        if request.size is not None or request.resolution is not None:
            body["width"], body["height"] = request.resolved_pixels()
        if request.quality is not None:
            body["quality"] = request.quality
        if request.background is not None:
            body["background"] = request.background
        if isinstance(request, EditRequest):
            if inputs is None or not inputs.refs:
                raise self._invalid(
                    "images", "an edit needs its input assets: call upload_inputs first"
                )
            body["referenceImages"] = list(inputs.refs)
            if request.mask is not None and inputs.mask_ref is None:
                raise self._invalid("mask", "the mask was not uploaded: call upload_inputs first")
            if inputs.mask_ref is not None:
                body["mask"] = inputs.mask_ref
        return body

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        """Start the job; Scenario answers at once with its job id."""
        self.validate(request)
        body = self.build_body(request, inputs)
        answer = await self._call(
            "POST", f"/generate/custom/{quote(self.model, safe='')}", json_body=body
        )
        job_id = require(answer, "job", "jobId", provider=self.name)
        return Job(provider=self.name, model=self.model, job_id=str(job_id), key=key, n=request.n)

    # -- polling -----------------------------------------------------------------------------

    async def poll(self, job: Job) -> JobStatus:
        answer = await self._call("GET", f"/jobs/{_segment(job.job_id)}", job_id=job.job_id)
        data = require(answer, "job", provider=self.name, job_id=job.job_id)
        return self._status(job, data)

    def _status(self, job: Job, data: Any) -> JobStatus:
        raw = str(require(data, "status", provider=self.name, job_id=job.job_id))
        state = map_status(raw, STATUSES)
        outputs: list[OutputRef] = []
        if state is JobState.SUCCEEDED:
            ids = require(data, "metadata", "assetIds", provider=self.name, job_id=job.job_id)
            if not isinstance(ids, list) or not ids:
                raise MalformedResponse(
                    "a successful job lists no `metadata.assetIds`",
                    provider=self.name,
                    job_id=job.job_id,
                )
            outputs = [OutputRef(index=i, asset_id=str(a)) for i, a in enumerate(ids)]
        error, error_code = _error_of(data.get("error"))
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and error_code is None:  # seen as metadata.error {code}
            meta_error, error_code = _error_of(metadata.get("error"))
            error = error or meta_error
        if state in (JobState.FAILED, JobState.CANCELED) and error is None:
            error = f"Scenario reported status {raw!r}"
        billing = data.get("billing")
        cost = billing.get("cuCost") if isinstance(billing, dict) else None
        return JobStatus(
            job_id=job.job_id,
            state=state,
            raw_status=raw,
            progress=1.0 if state is JobState.SUCCEEDED else _progress(data.get("progress")),
            outputs=outputs,
            error=error,
            error_code=error_code,
            cost=float(cost)
            if isinstance(cost, (int, float)) and not isinstance(cost, bool)
            else None,
            cost_unit=COST_UNIT,
        )

    # -- outputs -----------------------------------------------------------------------------

    async def resolve_outputs(self, job: Job, status: JobStatus) -> list[OutputRef]:
        """Asset ids → (temporary) URLs, with type and size, one GET per asset."""
        return await _all([self._resolve(job, ref) for ref in status.outputs])

    async def refresh_output(self, job: Job, ref: OutputRef) -> OutputRef:
        """A fresh GET of the asset gives a fresh URL."""
        if ref.asset_id is None:
            return await super().refresh_output(job, ref)
        return await self._resolve(job, ref, force=True)

    async def _resolve(self, job: Job, ref: OutputRef, *, force: bool = False) -> OutputRef:
        if ref.asset_id is None or (ref.url and not force):
            return ref
        answer = await self._call("GET", f"/assets/{_segment(ref.asset_id)}", job_id=job.job_id)
        asset = require(answer, "asset", provider=self.name, job_id=job.job_id)
        url = require(asset, "url", provider=self.name, job_id=job.job_id)
        meta = asset.get("metadata") if isinstance(asset, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        mime = asset.get("mimeType")
        return ref.model_copy(
            update={
                "url": str(url),
                "mime": str(mime) if mime else ref.mime,
                "width": _int(meta.get("width")) or ref.width,
                "height": _int(meta.get("height")) or ref.height,
            }
        )

    async def cancel(self, job: Job) -> None:
        """Ask Scenario to stop the job; a job it refuses to cancel (already over) is logged."""
        try:
            await self._call(
                "POST",
                f"/jobs/{_segment(job.job_id)}/action",
                json_body={"action": "cancel"},
                job_id=job.job_id,
            )
        except InvalidRequest as err:
            log.warning("Scenario did not cancel job %s: %s", job.job_id, err.message)

    # -- HTTP --------------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, job_id: str | None = None
    ) -> Any:
        try:
            _, body = await self._api.request(method, path, json_body=json_body, job_id=job_id)
        except ProviderError as err:
            if err.job_id is None and job_id is not None:  # raised by the response hook
                err.job_id = job_id
                err.args = (err._render(),)
            raise  # the client has redacted our credentials from it
        return body


async def _all(calls: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run calls concurrently; on the first failure cancel the rest and raise that error itself
    (a TaskGroup would wrap it in an ExceptionGroup that the task layer cannot classify)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _segment(value: str) -> str:
    """A job or asset id as one URL path segment (ids come from the network)."""
    return quote(value, safe="")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _progress(value: Any) -> float | None:
    """Progress as 0..1; a value above 1 is read as a percentage."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    fraction = float(value) / 100 if value > 1 else float(value)
    return min(1.0, max(0.0, fraction))


def _error_of(value: Any) -> tuple[str | None, str | None]:
    """(message, code) from a job's `error`: a string, or an object with message/code."""
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict):
        message = value.get("message") or value.get("error") or value.get("code")
        code = value.get("code")
        return (str(message) if message else None), (str(code) if code else None)
    return None, None
