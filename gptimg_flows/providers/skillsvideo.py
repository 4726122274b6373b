"""skills.video: GPT Image 2 as an async generation job sized by aspect ratio and tier.

Inputs go as URLs when every input has one (JSON body), otherwise every input goes as a file
part of a multipart/form-data body under the same field names, so nothing needs uploading
first. Cost is reported by the API in credits (`usage.total`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from gptimg_flows.models import (
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobState,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers._http import bearer_api, map_status, require, status_table
from gptimg_flows.providers.base import EXPIRED_URL_NOTE, Capabilities, PreparedInputs, Provider
from gptimg_flows.sizes import TIER_LONG_SIDE, ratio_of, tier_for

API_KEY_ENV = "SKILLS_VIDEO_API_KEY"
MODEL = "openai/gpt-image-2"
SUBMIT_PATH = "/v1/generation/openai/gpt-image-2"

_STATES = status_table(
    queued=["IN_QUEUE", "queued", "pending", "waiting"],
    running=["IN_PROGRESS", "running", "processing"],
    succeeded=["COMPLETED", "succeeded", "success", "done"],
    failed=["FAILED", "failure", "error"],
    canceled=["CANCELED", "cancelled"],
)


class SkillsVideoProvider(Provider):
    """GPT Image 2 through skills.video's `POST /v1/generation/openai/gpt-image-2`."""

    name: ClassVar[str] = "skillsvideo"
    display_name: ClassVar[str] = "skills.video"
    capabilities: ClassVar[Capabilities] = Capabilities(
        model=MODEL,
        max_n=4,
        fields=frozenset({"size", "resolution", "quality", "output_format"}),
        size_mode="ratios",
        ratios=("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"),
        resolutions=("1K", "2K", "4K"),
        auto_size=False,
        qualities=("low", "medium", "high"),
        formats=("jpeg", "png", "webp"),
        mask=True,
        max_reference_images=16,
        input_kinds=frozenset({"url", "bytes"}),
        min_prompt_chars=1,
        max_prompt_chars=32000,
        synchronous=False,
        can_find_job_by_key=False,
        can_cancel=False,
        cost_unit="credits",
        notes=(
            "a WxH size is sent as its aspect ratio plus the smallest tier holding it "
            "(1K/2K/4K): the pixel size is the provider's, not exactly WxH",
            "unset size/resolution/quality/format leave the provider defaults (4:3, 1K, high, png)",
            "n is sent as num_images",
            "inputs go as image_urls/mask_url when all have URLs, else all as multipart file parts",
            "the maximum number of input images and the prompt length are not documented "
            "(we allow 16 images and 32000 characters)",
            "the mask convention is assumed to be OpenAI's (alpha 0 = area to change)",
            "cost is usage.total credits as the API reports it, also for failed jobs",
            "no cancel endpoint is documented",
            EXPIRED_URL_NOTE,
        ),
    )

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://open.skills.video/api",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = bearer_api(
            self.name, "skills.video", API_KEY_ENV, api_key, base_url, timeout, transport
        )

    # -- checks ------------------------------------------------------------------------------

    def validate(self, request: ImageRequest) -> None:
        """Base checks (ratios, n, quality, format), then the pixel sizes no tier can hold."""
        super().validate(request)
        if px := request.pixels():
            w, h = px
            if max(w, h) > TIER_LONG_SIDE["4K"]:
                raise self._invalid(
                    "size",
                    f"size {w}x{h}: skills.video's largest tier (4K) has a long side of "
                    f"{TIER_LONG_SIDE['4K']} pixels",
                )

    # -- inputs ------------------------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """URLs when every input has one; otherwise keep all bytes for one multipart submit."""
        digests = [img.sha256 for img in images]
        everything = [*images, *([mask] if mask is not None else [])]
        if all(img.url for img in everything):
            return PreparedInputs(
                refs=[str(img.url) for img in images],
                mask_ref=mask.url if mask is not None else None,
                digests=digests,
            )
        return PreparedInputs(images=list(images), mask=mask, digests=digests)

    # -- submit ------------------------------------------------------------------------------

    def build_fields(self, request: ImageRequest) -> dict[str, Any]:
        """The scalar body fields exactly as sent (public so tests can read them)."""
        body: dict[str, Any] = {"prompt": request.prompt}
        if ratio := request.ratio():
            body["aspect_ratio"] = ratio
        elif px := request.pixels():
            body["aspect_ratio"] = ratio_of(*px)
            body["resolution"] = tier_for(*px)
        if request.resolution is not None:
            body["resolution"] = request.resolution
        if request.quality is not None:
            body["quality"] = request.quality
        body["num_images"] = request.n
        if request.output_format is not None:
            body["output_format"] = request.output_format
        return body

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        self.validate(request)
        fields = self.build_fields(request)
        if isinstance(request, EditRequest):
            _, body = await self._submit_edit(request, fields, inputs)
        else:
            _, body = await self._api.request("POST", SUBMIT_PATH, json_body=fields)
        job_id = str(require(body, "id", provider=self.name))
        job = Job(
            provider=self.name,
            model=MODEL,
            job_id=job_id,
            key=key,
            n=request.n,
            handle={"id": job_id},
        )
        if isinstance(body.get("status"), str):
            status = self._status(job_id, body)
            if status.state.terminal:
                return job.model_copy(update={"status": status})
        return job

    async def _submit_edit(
        self, request: EditRequest, fields: dict[str, Any], inputs: PreparedInputs | None
    ) -> tuple[int, Any]:
        if inputs is not None and inputs.refs:
            body = {**fields, "image_urls": list(inputs.refs)}
            if inputs.mask_ref:
                body["mask_url"] = inputs.mask_ref
            elif request.mask is not None:
                raise self._invalid("mask", "the mask was not prepared: call upload_inputs first")
            return await self._api.request("POST", SUBMIT_PATH, json_body=body)
        if inputs is None or not inputs.images:
            raise self._invalid(
                "images", "an edit needs its input images: call upload_inputs first"
            )
        if request.mask is not None and inputs.mask is None:
            raise self._invalid("mask", "the mask was not prepared: call upload_inputs first")
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("image_urls", (f"image{i}.{img.extension}", img.data, img.mime))
            for i, img in enumerate(inputs.images)
        ]
        if (mask := inputs.mask) is not None:
            files.append(("mask_url", (f"mask.{mask.extension}", mask.data, mask.mime)))
        data = {k: str(v) for k, v in fields.items()}
        return await self._api.request("POST", SUBMIT_PATH, data=data, files=files)

    # -- polling -----------------------------------------------------------------------------

    async def poll(self, job: Job) -> JobStatus:
        path = f"/v1/generation/{quote(job.job_id, safe='')}"
        _, body = await self._api.request("GET", path, job_id=job.job_id)
        return self._status(job.job_id, body)

    def _status(self, job_id: str, body: Any) -> JobStatus:
        raw = str(require(body, "status", provider=self.name, job_id=job_id))
        state = map_status(raw, _STATES)
        outputs: list[OutputRef] = []
        if state is JobState.SUCCEEDED:
            outputs = self._outputs(job_id, body)
        error = error_code = None
        if state in (JobState.FAILED, JobState.CANCELED):
            error, error_code = _failure(body)
        usage = body.get("usage")
        total = usage.get("total") if isinstance(usage, dict) else None
        return JobStatus(
            job_id=job_id,
            state=state,
            raw_status=raw,
            progress=1.0 if state is JobState.SUCCEEDED else None,
            outputs=outputs,
            error=error,
            error_code=error_code,
            cost=float(total) if isinstance(total, (int, float)) else None,
            cost_unit="credits",
        )

    def _outputs(self, job_id: str, body: Any) -> list[OutputRef]:
        data = require(body, "data", provider=self.name, job_id=job_id)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list) or not images:
            images = [require(data, "image", provider=self.name, job_id=job_id)]
        refs = []
        for i, image in enumerate(images):
            url = require(images, i, "url", provider=self.name, job_id=job_id)
            refs.append(
                OutputRef(
                    index=i,
                    url=str(url),
                    mime=_str_or_none(image.get("content_type")),
                    width=image.get("width") if isinstance(image.get("width"), int) else None,
                    height=image.get("height") if isinstance(image.get("height"), int) else None,
                )
            )
        return refs

    async def aclose(self) -> None:
        await self._api.aclose()


def _failure(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(message, code) of a failed generation: top-level `code`/`message`, or under `error`."""
    message, code = body.get("message"), body.get("code")
    err = body.get("error")
    if isinstance(err, dict):
        message = message or err.get("message")
        code = code or err.get("code")
    elif isinstance(err, str):
        message = message or err
    return _str_or_none(message), _str_or_none(code)


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
