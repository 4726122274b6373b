"""gptimage2.ai: GPT Image 2 behind a small job API (`POST /generate`, `GET /generate/{jobId}`).

It takes a prompt, an aspect ratio, a count and reference image URLs, plus four prompt hints
(`style`, `lighting`, `camera`, `negative`) passed as extras. Everything else our request model
can say (quality, format, mask, ...) it cannot honour, so validation refuses it. Polling answers
HTTP 202 while the job is pending or running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from gptimg_flows.errors import MalformedResponse
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
from gptimg_flows.sizes import ratio_of
from gptimg_flows.spend.prices import Price

API_KEY_ENV = "GPTIMAGE2_API_KEY"
MODEL = "gpt-image-2"
#: Documented price: every generated image spends 10 credits; failed jobs are refunded.
CREDITS_PER_IMAGE = 10.0
EXTRAS = ("style", "lighting", "camera", "negative")

_STATES = status_table(
    queued=["pending", "queued"],
    running=["running", "processing", "in-progress"],
    succeeded=["succeeded", "success", "completed"],
    failed=["failed", "failure", "error"],
    canceled=["canceled", "cancelled"],
)


class GptImage2AIProvider(Provider):
    """GPT Image 2 through gptimage2.ai's generate API."""

    name: ClassVar[str] = "gptimage2ai"
    display_name: ClassVar[str] = "gptimage2.ai"
    capabilities: ClassVar[Capabilities] = Capabilities(
        model=MODEL,
        max_n=4,
        fields=frozenset({"size"}),
        size_mode="ratios",
        ratios=("1:1", "16:9", "9:16", "4:3", "3:4"),
        resolutions=(),
        auto_size=False,
        qualities=(),
        backgrounds=(),
        formats=(),
        moderations=(),
        mask=False,
        max_reference_images=16,
        input_kinds=frozenset({"url"}),
        extras=frozenset(EXTRAS),
        min_prompt_chars=1,
        max_prompt_chars=32000,
        synchronous=False,
        can_find_job_by_key=False,
        can_cancel=False,
        cost_unit="credits",
        notes=(
            "a WxH size is sent as its aspect ratio; the pixel size is the provider's choice",
            "an unset size sends no ratio (provider default)",
            "input images must be http(s) URLs the service can fetch (e.g. signed archive URLs)",
            "the maximum number of reference URLs and the prompt length are not documented "
            "(we allow 16 and 32000 characters)",
            "cost is computed as 10 credits per image returned (documented price); "
            "0 for failed jobs (documented refund)",
            "the create call is assumed to answer 200 (202 is accepted too)",
            "no cancel endpoint is documented",
            EXPIRED_URL_NOTE,
        ),
    )

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://gptimage2.ai/api",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = bearer_api(
            self.name, "gptimage2.ai", API_KEY_ENV, api_key, base_url, timeout, transport
        )

    # -- checks ------------------------------------------------------------------------------

    def validate(self, request: ImageRequest) -> None:
        """Base checks (ratios, count, unsupported fields, mask), then the extras' types."""
        super().validate(request)
        for name, value in request.extras.items():
            if not isinstance(value, str):
                raise self._invalid(
                    f"extras.{name}",
                    f"extras.{name} must be a string (gptimage2.ai's {name} is a text hint), "
                    f"not {type(value).__name__}",
                )

    # -- inputs ------------------------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """gptimage2.ai fetches references itself: each input must come with an http(s) URL."""
        if mask is not None:
            raise self._invalid("mask", "gptimage2.ai does not support masks")
        refs = []
        for i, img in enumerate(images):
            if not img.url or urlsplit(img.url).scheme not in ("http", "https"):
                raise self._invalid(
                    f"images[{i}]",
                    f"gptimage2.ai takes input images only as http(s) URLs and images[{i}] "
                    f"({img.name}) has none; pass a public URL, or use an archive that can "
                    "sign URLs (e.g. s3://) so one can be made for it",
                )
            refs.append(img.url)
        return PreparedInputs(refs=refs, digests=[img.sha256 for img in images])

    # -- submit ------------------------------------------------------------------------------

    def build_body(self, request: ImageRequest, inputs: PreparedInputs | None) -> dict[str, Any]:
        """The JSON body exactly as sent (public so tests can read it)."""
        body: dict[str, Any] = {"mode": "text-to-image", "prompt": request.prompt}
        if ratio := request.ratio():
            body["ratio"] = ratio
        elif px := request.pixels():
            body["ratio"] = ratio_of(*px)
        body["count"] = request.n
        if isinstance(request, EditRequest):
            if inputs is None or not inputs.refs:
                raise self._invalid(
                    "images", "an edit needs its input image URLs: call upload_inputs first"
                )
            body["mode"] = "image-to-image"
            body["imageUrls"] = list(inputs.refs)
        for name in EXTRAS:
            if name in request.extras:
                body[name] = request.extras[name]
        return body

    def documented_price(self, request: ImageRequest) -> Price:
        return Price(amount=CREDITS_PER_IMAGE * request.n, unit="credits", basis="documented price")

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        self.validate(request)
        _, answer = await self._api.request(
            "POST", "/generate", json_body=self.build_body(request, inputs), ok=(200, 201, 202)
        )
        job_id = str(require(answer, "jobId", provider=self.name))
        job = Job(
            provider=self.name,
            model=MODEL,
            job_id=job_id,
            key=key,
            n=request.n,
            handle={"jobId": job_id},
        )
        if isinstance(answer.get("status"), str):
            status = self._status(job_id, 200, answer)
            if status.state.terminal:
                return job.model_copy(update={"status": status})
        return job

    # -- polling -----------------------------------------------------------------------------

    async def poll(self, job: Job) -> JobStatus:
        """202 = pending or running; 200 = succeeded or failed."""
        code, body = await self._api.request(
            "GET", f"/generate/{quote(job.job_id, safe='')}", ok=(200, 202), job_id=job.job_id
        )
        return self._status(job.job_id, code, body)

    def _status(self, job_id: str, http_status: int, body: Any) -> JobStatus:
        raw_value = body.get("status") if isinstance(body, dict) else None
        if http_status == 202 and not isinstance(raw_value, str):
            return JobStatus(job_id=job_id, state=JobState.RUNNING, raw_status="pending")
        raw = str(require(body, "status", provider=self.name, job_id=job_id))
        state = map_status(raw, _STATES)
        if state is JobState.SUCCEEDED:
            outputs = self._outputs(job_id, body)
            return JobStatus(
                job_id=job_id,
                state=state,
                raw_status=raw,
                progress=1.0,
                outputs=outputs,
                cost=CREDITS_PER_IMAGE * len(outputs),
                cost_unit="credits",
            )
        if state in (JobState.FAILED, JobState.CANCELED):
            error = body.get("error")
            message = body.get("message")
            return JobStatus(
                job_id=job_id,
                state=state,
                raw_status=raw,
                error=str(message or error or "generation failed"),
                error_code=str(error) if error else None,
                cost=0.0,
                cost_unit="credits",
            )
        return JobStatus(job_id=job_id, state=state, raw_status=raw)

    def _outputs(self, job_id: str, body: Any) -> list[OutputRef]:
        results = require(body, "results", provider=self.name, job_id=job_id)
        if not isinstance(results, list) or not results:
            raise MalformedResponse(
                "a succeeded job has no `results`", provider=self.name, job_id=job_id
            )
        refs = []
        for i, item in enumerate(results):
            url = require(results, i, "imageUrl", provider=self.name, job_id=job_id)
            seed = item.get("seed")
            refs.append(
                OutputRef(index=i, url=str(url), seed=str(seed) if seed is not None else None)
            )
        return refs

    async def aclose(self) -> None:
        await self._api.aclose()
