"""The provider contract and capability checks (the HTTP helper is _http.py).

No Prefect here: adapters translate requests and answers; retry and idempotency policy live in
the task layer and act on the typed errors raised below.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptimg_flows.errors import (
    InvalidRequest,
    OutputExpired,
)
from gptimg_flows.models import (
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers._gpt_image import MAX_SIDE, MIN_SIDE, MULTIPLE_OF, QUALITIES
from gptimg_flows.providers._http import ApiClient
from gptimg_flows.sizes import ratio_of
from gptimg_flows.spend.prices import Price

log = logging.getLogger("gptimg_flows.providers")

#: Optional request fields an adapter may or may not honour (None = provider default).
OPTIONAL_FIELDS = (
    "size",
    "resolution",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "seed",
    "input_fidelity",
)


#: The capability note of every provider whose expired URLs we can only re-poll for.
EXPIRED_URL_NOTE = (
    "an expired output URL is asked for again by polling the job; if the same URL comes back, "
    "the image is lost and reported (OutputExpired, with the job id)"
)


@dataclass(frozen=True)
class Capabilities:
    """What one provider can do with GPT Image 2, in our request model's terms."""

    model: str
    max_n: int
    fields: frozenset[str]
    size_mode: Literal["pixels", "ratios"]
    ratios: tuple[str, ...] = ()
    resolutions: tuple[str, ...] = ()
    auto_size: bool = False
    multiple_of: int = MULTIPLE_OF
    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    max_pixels: int | None = None
    ratio_bounds: tuple[float, float] | None = None
    qualities: tuple[str, ...] = QUALITIES
    backgrounds: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    #: Formats that output_compression applies to (OpenAI's rule: jpeg/webp); empty = any.
    #: Providers that set it default to PNG when output_format is unset.
    compression_formats: tuple[str, ...] = ()
    moderations: tuple[str, ...] = ()
    edit: bool = True
    mask: bool = False
    max_reference_images: int = 16
    input_kinds: frozenset[Literal["bytes", "url"]] = frozenset({"bytes"})
    extras: frozenset[str] = frozenset()
    min_prompt_chars: int = 1
    max_prompt_chars: int = 32000
    synchronous: bool = False
    can_find_job_by_key: bool = False
    can_cancel: bool = False
    cost_unit: str = "credits"
    notes: tuple[str, ...] = field(default=())

    def table_row(self) -> dict[str, str]:
        """One row of the README/CLI capability table."""
        sizes = (
            f"WxH, multiples of {self.multiple_of}, sides {self.min_side}-{self.max_side}"
            + (f", ≤{self.max_pixels:,} px" if self.max_pixels else "")
            + (", auto" if self.auto_size else "")
            if self.size_mode == "pixels"
            else "ratios "
            + ", ".join(self.ratios)
            + (f" at {'/'.join(self.resolutions)}" if self.resolutions else "")
        )
        return {
            "model": self.model,
            "n": f"1-{self.max_n}",
            "sizes": sizes,
            "mask": "yes" if self.mask else "no",
            "transparent": "yes" if "transparent" in self.backgrounds else "no",
            "formats": ", ".join(self.formats) or "provider's choice",
            "inputs": ", ".join(sorted(self.input_kinds)),
            "extras": ", ".join(sorted(self.extras)) or "-",
            "jobs": "sync" if self.synchronous else "async (polled)",
            "cost unit": self.cost_unit,
        }


class PreparedInputs(BaseModel):
    """Inputs in the provider's own terms (asset ids, URLs, data URIs), plus bytes for multipart."""

    model_config = ConfigDict(frozen=True)

    refs: list[str] = Field(default_factory=list)
    mask_ref: str | None = None
    images: list[InputImage] = Field(default_factory=list)
    mask: InputImage | None = None
    digests: list[str] = Field(default_factory=list, description="sha256 of each input, in order")


class Provider(ABC):
    """One hosted GPT Image 2 API. Subclasses translate; they never retry or sleep."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: A price per image in `capabilities.cost_unit` set on the credentials block: it wins
    #: over any documented price, for estimates and budgets (the bill is what the API reports).
    price_per_image: float | None = None

    # -- what a request is expected to cost ------------------------------------------------

    def price(self, request: ImageRequest) -> Price:
        """The expected cost of one request: the block's price, else the provider's own."""
        unit = self.capabilities.cost_unit
        if self.price_per_image is not None:
            return Price(
                amount=self.price_per_image * request.n, unit=unit, basis="block-set price"
            )
        return self.documented_price(request)

    def documented_price(self, request: ImageRequest) -> Price:
        """Adapters with a documented price (or a token table) override this."""
        return Price(
            amount=None,
            unit=self.capabilities.cost_unit,
            basis="unknown",
            note=f"{self.display_name} documents no price: set price_per_image (in "
            f"{self.capabilities.cost_unit}) on its credentials block to estimate and budget",
        )

    # -- checks before any network call ----------------------------------------------------

    def validate(self, request: ImageRequest) -> None:
        """Raise InvalidRequest naming the field and what is allowed; never call the network."""
        caps = self.capabilities
        who = self.display_name
        prompt_len = len(request.prompt)
        if prompt_len < caps.min_prompt_chars or prompt_len > caps.max_prompt_chars:
            raise self._invalid(
                "prompt",
                f"prompt has {prompt_len} characters; {who} takes "
                f"{caps.min_prompt_chars}-{caps.max_prompt_chars}",
            )
        if request.n > caps.max_n:
            raise self._invalid("n", f"n={request.n}; {who} makes 1-{caps.max_n} images a request")
        for name in OPTIONAL_FIELDS:
            if getattr(request, name, None) is not None and name not in caps.fields:
                honoured = ", ".join(f for f in OPTIONAL_FIELDS if f in caps.fields) or "none"
                raise self._invalid(
                    name,
                    f"{who} cannot honour `{name}`; leave it unset (fields it honours: {honoured})",
                )
        self._check_choice("quality", request.quality, caps.qualities)
        self._check_choice("background", request.background, caps.backgrounds)
        self._check_choice("output_format", request.output_format, caps.formats)
        self._check_choice("moderation", request.moderation, caps.moderations)
        if request.background == "transparent" and request.output_format == "jpeg":
            raise self._invalid(
                "background", "a transparent background needs output_format png or webp, not jpeg"
            )
        unknown = sorted(set(request.extras) - caps.extras)
        if unknown:
            allowed = ", ".join(sorted(caps.extras)) or "none"
            raise self._invalid(
                f"extras.{unknown[0]}",
                f"{who} has no field {unknown[0]!r}; its extras are: {allowed}",
            )
        self._check_size(request)
        if isinstance(request, EditRequest):
            self._check_edit(request)
        compressible = caps.compression_formats
        if (
            compressible
            and request.output_compression is not None
            and (request.output_format or "png") not in compressible
        ):
            raise self._invalid(
                "output_compression",
                f"output_compression applies only to output_format {' or '.join(compressible)}; "
                f"output_format is {request.output_format or 'unset (png)'}",
            )

    def _check_choice(self, name: str, value: str | None, allowed: Sequence[str]) -> None:
        if value is not None and value not in allowed:
            raise self._invalid(
                name, f"{name}={value!r}; {self.display_name} allows {', '.join(allowed)}"
            )

    def _check_size(self, request: ImageRequest) -> None:
        caps = self.capabilities
        who = self.display_name
        if request.size is None:
            return
        if request.size == "auto":
            if not caps.auto_size:
                raise self._invalid("size", f"{who} needs an explicit size, not auto")
            return
        if caps.size_mode == "ratios":
            ratio = request.ratio() or ratio_of(*request.resolved_pixels())
            if ratio not in caps.ratios:
                raise self._invalid(
                    "size",
                    f"aspect ratio {ratio} is not offered by {who}; "
                    f"allowed: {', '.join(caps.ratios)}",
                )
            return
        w, h = request.resolved_pixels()
        m = caps.multiple_of
        broken = []  # every rule the size breaks, at once: one error, not one per try
        if w % m or h % m:
            broken.append(f"needs width and height that are multiples of {m}")
        if min(w, h) < caps.min_side or max(w, h) > caps.max_side:
            broken.append(f"takes sides from {caps.min_side} to {caps.max_side}")
        if caps.max_pixels and w * h > caps.max_pixels:
            broken.append(f"allows at most {caps.max_pixels:,} pixels (this is {w * h:,})")
        if caps.ratio_bounds:
            lo, hi = caps.ratio_bounds
            if not lo <= w / h <= hi:
                broken.append("needs an aspect ratio between 1:3 and 3:1")
        if broken:
            raise self._invalid(
                "size",
                f"size {w}x{h}: {who} " + "; ".join(broken) + f". It takes {_sizes_of(caps)}",
            )

    def _check_edit(self, request: EditRequest) -> None:
        caps = self.capabilities
        who = self.display_name
        if not caps.edit:
            raise self._invalid("images", f"{who} does not edit images")
        if len(request.images) > caps.max_reference_images:
            raise self._invalid(
                "images",
                f"{len(request.images)} reference images; {who} takes at most "
                f"{caps.max_reference_images}",
            )
        if request.mask is not None and not caps.mask:
            raise self._invalid(
                "mask",
                f"{who} does not support masks; "
                "use openai, scenario or skillsvideo for masked edits",
            )

    @property
    def base_url(self) -> str | None:
        """Where this adapter's API is (None: it has none). Its host is trusted for the output
        URLs the provider names when it is itself private (a test server, an internal proxy)."""
        api = getattr(self, "_api", None)
        url = getattr(api, "base_url", None)
        return url if isinstance(url, str) else None

    def _invalid(self, field_name: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, field=field_name, provider=self.name)

    def _check_input_count(self, images: Sequence[InputImage]) -> None:
        """The loaded inputs of an edit: at least one, at most the provider's limit (the
        upload may be called without `validate`, and a refusal here costs nothing)."""
        if not images:
            raise self._invalid("images", "an edit needs at least one input image")
        if len(images) > self.capabilities.max_reference_images:
            raise self._invalid(
                "images",
                f"{len(images)} images; {self.display_name} takes at most "
                f"{self.capabilities.max_reference_images}",
            )

    # -- the job lifecycle -----------------------------------------------------------------

    async def upload_inputs(
        self, request: EditRequest, images: Sequence[InputImage], mask: InputImage | None
    ) -> PreparedInputs:
        """Turn loaded inputs into what the provider takes. Default: bytes sent at submit."""
        return PreparedInputs(images=list(images), mask=mask, digests=[i.sha256 for i in images])

    @abstractmethod
    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        """Start a job (the only call that costs money). `key` is our idempotency key."""

    async def find_job(self, job: Job) -> JobStatus | None:
        """Look up a job that may have been submitted under `job.key` but whose answer was lost.

        Only providers whose API can be asked by our own key (Runware's taskUUID) implement it.
        """
        return None

    @abstractmethod
    async def poll(self, job: Job) -> JobStatus:
        """Ask once how the job is doing."""

    async def resolve_outputs(self, job: Job, status: JobStatus) -> list[OutputRef]:
        """Turn a finished status into downloadable refs (asset ids → URLs where needed)."""
        return list(status.outputs)

    async def refresh_output(self, job: Job, ref: OutputRef) -> OutputRef:
        """A fresh URL for an output whose URL expired: ask for the job again.

        An API that signs its URLs on each read hands out a new one; one that repeats the
        same URL cannot re-issue it, and the output is lost (we download at once to avoid it).
        """
        if not self.capabilities.synchronous:
            status = await self.poll(job)
            fresh = next((o for o in status.outputs if o.index == ref.index), None)
            if fresh is not None and fresh.url and fresh.url != ref.url:
                return fresh
        raise OutputExpired(
            f"output {ref.index} URL expired and {self.display_name} cannot re-issue it",
            provider=self.name,
            job_id=job.job_id,
        )

    async def cancel(self, job: Job) -> None:
        """Cancel a running job where the API allows it."""
        return None

    async def aclose(self) -> None:
        return None

    @property
    def cost_unit(self) -> str:
        return self.capabilities.cost_unit

    @property
    def account(self) -> str:
        """Which account this adapter spends (a digest of provider, base URL and key): the
        unit a rate limit applies to."""
        api = getattr(self, "_api", None)
        return api.account if isinstance(api, ApiClient) else self.name

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:  # never show credentials
        return f"<{type(self).__name__} {self.name}>"


def _sizes_of(caps: Capabilities) -> str:
    """What a pixel-size provider takes, with sizes that work everywhere it does."""
    rule = caps.table_row()["sizes"]
    fine = [
        f"{w}x{h}"
        for w, h in ((1024, 1024), (1536, 1024), (1024, 1536), (2048, 1152), (3840, 2160))
        if not (w % caps.multiple_of or h % caps.multiple_of)
        and caps.min_side <= min(w, h)
        and max(w, h) <= caps.max_side
        and (not caps.max_pixels or w * h <= caps.max_pixels)
    ]
    return f"{rule} (e.g. {', '.join(fine)})" if fine else rule
