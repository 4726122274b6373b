"""OpenAI: GPT Image 2 from its origin, through the synchronous Images API.

The answer to a generate or edit holds the images themselves (`data[].b64_json`), so a job is
finished the moment `submit` returns. There is no job id and nothing to fetch again later: a
crash between submit and archive loses the images (and they are still billed). OpenAI documents
no idempotency key for images, so this adapter never retries; the task layer decides.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, ClassVar

import httpx
from PIL import Image

from gptimg_flows.errors import (
    AuthError,
    InvalidRequest,
    JobFailed,
    MalformedResponse,
)
from gptimg_flows.media.sniff import magic_mime
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
from gptimg_flows.providers._http import ApiClient, default_timeout, require
from gptimg_flows.providers.base import Capabilities, PreparedInputs, Provider
from gptimg_flows.sizes import parse_size
from gptimg_flows.spend.prices import (
    TOKEN_PRICES_BY_MODEL,
    Price,
    TokenPrices,
    token_estimate,
    usage_cost,
)

log = logging.getLogger("gptimg_flows.providers.openai")

API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_MODEL = "gpt-image-2"

#: OpenAI's mask limit: a PNG under 4 MB.
MAX_MASK_BYTES = 4 * 1024 * 1024
#: Input image types the edits endpoint takes for GPT Image models.
INPUT_MIMES = ("image/png", "image/jpeg", "image/webp")
#: The bill: the answer's token `usage` times the token prices. An answer without `usage` is
#: priced from the token table instead, and says so by its unit.
COST_UNIT = "usd"
ESTIMATE_UNIT = "usd-estimate"

_MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXT_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


# -- helpers shared with other adapters of the same model (scenario.py) ---------------------


def check_mask(
    provider: Provider, image: InputImage, mask: InputImage, max_bytes: int | None
) -> None:
    """GPT Image 2's mask rules: a PNG with alpha, the first image's size, under `max_bytes`."""
    who = provider.display_name
    if mask.mime != "image/png" or not mask.has_alpha:
        raise InvalidRequest(
            f"mask must be a PNG with an alpha channel (transparent = area to edit); got "
            f"{mask.mime}{' with alpha' if mask.has_alpha else ' without alpha'}",
            field="mask",
            provider=provider.name,
        )
    if (mask.width, mask.height) != (image.width, image.height):
        raise InvalidRequest(
            f"mask is {mask.width}x{mask.height} but the first image is "
            f"{image.width}x{image.height}; {who} needs the same size",
            field="mask",
            provider=provider.name,
        )
    if max_bytes is not None and len(mask.data) >= max_bytes:
        raise InvalidRequest(
            f"mask is {len(mask.data):,} bytes; {who} takes masks under {max_bytes:,} bytes",
            field="mask",
            provider=provider.name,
        )


def _to_png(image: InputImage) -> InputImage:
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        converted = img.convert("RGBA" if has_alpha else "RGB")
    buf = io.BytesIO()
    converted.save(buf, "PNG")
    data = buf.getvalue()
    return InputImage(
        data=data,
        mime="image/png",
        width=image.width,
        height=image.height,
        sha256=InputImage.digest(data),
        name=PurePath(image.name).stem + ".png",
        url=None,
        has_alpha=has_alpha,
    )


async def first_image_as_png(image: InputImage) -> InputImage:
    """The image to edit, as PNG: the API wants the mask and the first image in one format.

    PNG is lossless, so this changes no pixel; the digest used for our keys stays the original's.
    """
    if image.mime == "image/png":
        return image
    log.info("converting the first image from %s to PNG to match the PNG mask", image.mime)
    return await asyncio.to_thread(_to_png, image)


class OpenAIProvider(Provider):
    """GPT Image 2 through OpenAI's Images API (`/images/generations`, `/images/edits`)."""

    name: ClassVar[str] = "openai"
    display_name: ClassVar[str] = "OpenAI"
    capabilities: ClassVar[Capabilities] = Capabilities(
        model=DEFAULT_MODEL,
        max_n=10,
        fields=frozenset(
            {
                "size",
                "resolution",
                "quality",
                "background",
                "output_format",
                "output_compression",
                "moderation",
                "input_fidelity",
            }
        ),
        size_mode="pixels",
        auto_size=True,
        multiple_of=MULTIPLE_OF,
        min_side=MIN_SIDE,
        max_side=MAX_SIDE,
        max_pixels=MAX_PIXELS,
        ratio_bounds=RATIO_BOUNDS,
        qualities=QUALITIES,
        backgrounds=BACKGROUNDS,
        formats=("png", "jpeg", "webp"),
        compression_formats=("jpeg", "webp"),
        moderations=("auto", "low"),
        edit=True,
        mask=True,
        max_reference_images=16,
        input_kinds=frozenset({"bytes"}),
        synchronous=True,
        can_find_job_by_key=False,
        can_cancel=False,
        cost_unit=COST_UNIT,
        notes=(
            "synchronous: images come back inline (b64_json) in the submit answer; a lost answer "
            "cannot be fetched again and is still billed",
            "cost is the answer's token usage x gpt-image-2's token prices (USD per 1M tokens: "
            "text in 5, cached text 1.25, image in 8, cached image 2, image out 30; set "
            "token_prices on the block for others); output tokens are priced as image output; "
            "an answer without usage is priced from the token table, as usd-estimate",
            "a ratio size (e.g. 16:9 + resolution) is sent as the exact WxH it converts to",
            "no minimum size is enforced here; third-party pages report a floor of about "
            "655,360 pixels for gpt-image-2 (unconfirmed): smaller sizes may be refused by OpenAI",
            "background='transparent' is passed through; whether gpt-image-2 honours it is not "
            "confirmed by the documents we hold",
            "output_compression needs output_format jpeg or webp",
            "edits: a non-PNG first image is converted to PNG when a mask is given (same format)",
            "no idempotency key is documented: a retried submit may generate and bill twice",
        ),
    )

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        model: str = DEFAULT_MODEL,
        timeout: float = 600.0,
        organization: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token_prices: TokenPrices | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise AuthError(
                f"no OpenAI API key: set {API_KEY_ENV} or pass api_key", provider=self.name
            )
        self.model = model
        # Another model's prices are never borrowed: unknown until the block sets them.
        self.token_prices = token_prices or TOKEN_PRICES_BY_MODEL.get(model)
        headers = {"Authorization": f"Bearer {api_key.strip()}"}
        if organization:
            headers["OpenAI-Organization"] = organization
        # Generation takes tens of seconds to minutes: the read timeout must allow it.
        self._api = ApiClient(self.name, base_url, headers, default_timeout(timeout), transport)

    @property
    def api(self) -> ApiClient:
        """The authenticated client, for the Batch API's files and batches (openai_batch.py)."""
        return self._api

    async def aclose(self) -> None:
        await self._api.aclose()

    def documented_price(self, request: ImageRequest) -> Price:
        """OpenAI's token table, scaled by pixels, at this adapter's token prices."""
        if self.token_prices is None:
            return Price(
                amount=None,
                unit=COST_UNIT,
                basis="unknown",
                note=f"no published token prices for model {self.model!r} here: set "
                "token_prices (or price_per_image) on the OpenAI block",
            )
        inputs = len(request.images) if isinstance(request, EditRequest) else 0
        size = request.resolved_pixels() if request.size not in (None, "auto") else (1024, 1536)
        usd = token_estimate(
            request.prompt, request.n, request.quality, size, inputs, self.token_prices
        )
        assumed = []  # what the estimate had to assume, said rather than hidden (#33)
        if request.size in (None, "auto"):
            assumed.append("size auto estimated as 1024x1536")
        if request.quality in (None, "auto"):
            assumed.append("quality auto estimated as high (the most it can cost)")
        note = "; ".join(assumed)
        return Price(amount=usd, unit=COST_UNIT, basis="token table", note=note)

    # -- inputs ------------------------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """Bytes travel in the multipart submit; check them here so a refusal costs nothing."""
        self._check_input_count(images)
        for i, img in enumerate(images):
            if img.mime not in INPUT_MIMES:
                raise self._invalid(
                    f"images[{i}]", f"{img.mime} is not accepted; OpenAI takes PNG, JPEG or WebP"
                )
        digests = [img.sha256 for img in images]
        prepared = list(images)
        if mask is not None:
            check_mask(self, images[0], mask, MAX_MASK_BYTES)
            prepared[0] = await first_image_as_png(images[0])
        return PreparedInputs(images=prepared, mask=mask, digests=digests)

    # -- submit ------------------------------------------------------------------------------

    def build_fields(self, request: ImageRequest) -> dict[str, Any]:
        """The generation fields exactly as sent (JSON body, or form fields of an edit)."""
        fields: dict[str, Any] = {"model": self.model, "prompt": request.prompt, "n": request.n}
        if request.size == "auto":
            fields["size"] = "auto"
        elif request.size is not None or request.resolution is not None:
            width, height = request.resolved_pixels()
            fields["size"] = f"{width}x{height}"
        for name in ("quality", "background", "output_format", "output_compression", "moderation"):
            value = getattr(request, name)
            if value is not None:
                fields[name] = value
        if isinstance(request, EditRequest) and request.input_fidelity is not None:
            fields["input_fidelity"] = request.input_fidelity
        return fields

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        """One POST; the answer is the finished job."""
        self.validate(request)
        job_id = "openai-" + key[:24]
        fields = self.build_fields(request)
        if isinstance(request, EditRequest):
            if inputs is None or not inputs.images:
                raise self._invalid(
                    "images", "an edit needs its input images: call upload_inputs first"
                )
            if request.mask is not None and inputs.mask is None:
                raise self._invalid("mask", "the mask was not prepared: call upload_inputs first")
            files: list[tuple[str, tuple[str, bytes, str]]] = [
                ("image[]", (f"image_{i}.{_EXT_BY_MIME.get(img.mime, 'png')}", img.data, img.mime))
                for i, img in enumerate(inputs.images)
            ]
            if inputs.mask is not None:
                files.append(("mask", ("mask.png", inputs.mask.data, "image/png")))
            form = {k: str(v) for k, v in fields.items()}
            body = await self._call("POST", "/images/edits", job_id, data=form, files=files)
        else:
            body = await self._call("POST", "/images/generations", job_id, json_body=fields)
        status = self._status(body, request, job_id)
        usage = body.get("usage") if isinstance(body, dict) else None
        status = status.model_copy(update=self._bill(usage, request, len(status.outputs)))
        handle: dict[str, Any] = {"usage": usage} if isinstance(usage, dict) else {}
        return Job(
            provider=self.name,
            model=self.model,
            job_id=job_id,
            key=key,
            n=request.n,
            handle=handle,
            status=status,
        )

    def _status(self, body: Any, request: ImageRequest, job_id: str) -> JobStatus:
        """A finished JobStatus from the synchronous answer (images decoded from base64)."""
        items = require(body, "data", provider=self.name, job_id=job_id)
        if not isinstance(items, list) or not items:
            raise self._malformed("answer has no images in `data`", job_id)
        answer_format = body.get("output_format") or request.output_format or "png"
        fallback_mime = _MIME_BY_FORMAT.get(str(answer_format), "image/png")
        size = parse_size(str(body.get("size") or ""))
        if size is None and request.size not in (None, "auto"):
            size = request.resolved_pixels()
        outputs = []
        for index in range(len(items)):
            encoded = require(body, "data", index, "b64_json", provider=self.name, job_id=job_id)
            try:
                data = base64.b64decode(str(encoded), validate=True)
            except (binascii.Error, ValueError):
                raise self._malformed(f"`data.{index}.b64_json` is not base64", job_id) from None
            outputs.append(
                OutputRef(
                    index=index,
                    data=data,
                    mime=magic_mime(data[:16]) or fallback_mime,
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                )
            )
        return JobStatus(
            job_id=job_id,
            state=JobState.SUCCEEDED,
            raw_status="completed",
            progress=1.0,
            outputs=outputs,
        )

    def _bill(self, usage: Any, request: ImageRequest, images: int) -> dict[str, Any]:
        """The answer's cost: its token usage priced, else the token-table estimate."""
        usd = usage_cost(usage, self.token_prices)
        if usd is not None:
            return {"cost": usd, "cost_unit": COST_UNIT}
        estimate = self.documented_price(request.model_copy(update={"n": max(1, images)}))
        return {"cost": estimate.amount, "cost_unit": ESTIMATE_UNIT}

    # -- the rest of the lifecycle -------------------------------------------------------------

    async def poll(self, job: Job) -> JobStatus:
        """OpenAI jobs finish at submit; a job rebuilt without its answer cannot be recovered."""
        if job.status is None:
            raise JobFailed(
                "OpenAI answers synchronously and keeps no copy: the images of this submit "
                "were lost with its answer (it may still have been billed); submit again",
                provider=self.name,
                job_id=job.job_id,
            )
        return job.status

    # -- HTTP --------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        job_id: str,
        *,
        json_body: Any = None,
        data: dict[str, str] | None = None,
        files: Any = None,
    ) -> Any:
        _, body = await self._api.request(  # the client redacts our key from its errors
            method, path, json_body=json_body, data=data, files=files, job_id=job_id
        )
        return body

    def _malformed(self, message: str, job_id: str) -> MalformedResponse:
        return MalformedResponse(message, provider=self.name, job_id=job_id)
