"""Typed values at the edges: what users ask for, what providers answer, what we archive.

Validated once where data enters; everything inside passes these objects around.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.sizes import TIER_LONG_SIDE, dims_for, normalise_ratio, parse_size
from gptimg_flows.textcheck.check import TextCheck

Quality = Literal["auto", "low", "medium", "high"]
Background = Literal["auto", "transparent", "opaque"]
OutputFormat = Literal["png", "jpeg", "webp"]
Moderation = Literal["auto", "low"]
Resolution = Literal["1K", "2K", "4K"]
InputFidelity = Literal["high", "low"]
ExtraValue = str | int | float | bool

#: An input image: a local path, an fsspec URL (`s3://…`), an http(s) URL, or raw bytes.
ImageSource = Annotated[
    str | bytes, Field(description="local path, fsspec URL, http(s) URL or bytes")
]

MAX_PROMPT_CHARS = 32000


def _source_to_plain(value: object) -> object:
    return str(value) if isinstance(value, PurePath) else value


class ImageRequest(BaseModel):
    """One text-to-image request, independent of provider.

    Optional fields left as None mean "the provider's default": an adapter refuses a field it
    cannot honour rather than dropping it, so None is how a caller says "I don't mind".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, le=20, description="number of images")
    size: str | None = Field(
        None,
        description="`WxH` in pixels (e.g. `1536x1024`), an aspect ratio (e.g. `16:9`), or `auto`",
    )
    resolution: Resolution | None = Field(
        None, description="resolution tier used with an aspect ratio: 1K, 2K or 4K"
    )
    quality: Quality | None = None
    background: Background | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Moderation | None = None
    seed: int | None = Field(None, ge=0, description="only providers that take a seed honour it")
    extras: dict[str, ExtraValue] = Field(
        default_factory=dict,
        description="provider-specific fields (gptimage2.ai: style, lighting, camera, negative)",
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _trim_prompt(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError("prompt is empty (after trimming whitespace)")
        return value

    @field_validator("size", mode="before")
    @classmethod
    def _normalise_size(cls, value: object) -> object:
        if value is None or not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        parsed = parse_size(text)
        if parsed:
            w, h = parsed
            if w <= 0 or h <= 0:
                raise ValueError(f"size {value!r} has a zero side")
            return f"{w}x{h}"
        ratio = normalise_ratio(text)
        if ratio:
            return ratio
        raise ValueError(
            f"size {value!r} is neither `WxH` (e.g. 1024x1536), `W:H` (e.g. 16:9) nor auto"
        )

    @model_validator(mode="after")
    def _check_resolution(self) -> ImageRequest:
        if self.resolution is not None and self.pixels() is not None:
            raise ValueError("resolution applies to an aspect-ratio size, not to a `WxH` size")
        return self

    # -- size views used by the adapters ---------------------------------------------------

    def pixels(self) -> tuple[int, int] | None:
        """Explicit pixel size, when `size` is `WxH`."""
        return parse_size(self.size) if self.size and "x" in self.size else None

    def ratio(self) -> str | None:
        """Explicit aspect ratio, when `size` is `W:H`."""
        return self.size if self.size and ":" in self.size else None

    def resolved_pixels(self, default: tuple[int, int] = (1024, 1024)) -> tuple[int, int]:
        """Pixel size for pixel-speaking providers; ratio + tier is converted exactly."""
        if px := self.pixels():
            return px
        if ratio := self.ratio():
            return dims_for(ratio, self.resolution or "1K")
        if self.resolution:
            side = TIER_LONG_SIDE[self.resolution]
            return side, side
        return default

    def fingerprint(self) -> dict[str, Any]:
        """Normalised, JSON-safe description of what is asked (inputs excluded: see EditRequest)."""
        return self.model_dump(mode="json", exclude={"images", "mask"}, exclude_none=True)


class EditRequest(ImageRequest):
    """An edit: one or more reference images, an optional mask, and a prompt.

    The mask follows OpenAI's convention: transparent pixels (alpha 0) mark the area to change,
    opaque ones are kept. It must have the first image's size.
    """

    images: list[ImageSource] = Field(min_length=1, max_length=16)
    mask: ImageSource | None = None
    input_fidelity: InputFidelity | None = None

    @field_validator("images", mode="before")
    @classmethod
    def _paths_to_str(cls, value: object) -> object:
        if isinstance(value, (str, bytes, PurePath)):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_source_to_plain(v) for v in value]
        return value

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_path_to_str(cls, value: object) -> object:
        return _source_to_plain(value)


# -- provider answers -------------------------------------------------------------------------


R = TypeVar("R", bound=ImageRequest)


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """Pydantic's multi-line message as one InvalidRequest line naming the first bad field
    (without pydantic's echo of the input, which may be a long prompt or image bytes)."""
    parts, first = [], None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        first = first or loc or None
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    return InvalidRequest("; ".join(parts), field=first)


def build_request(model: type[R], **fields: Any) -> R:
    """A request from a user's fields; bad ones raise `InvalidRequest`, like every other
    refusal before a credit is spent, so callers catch one error type."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid_request(exc) from None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


class OutputRef(BaseModel):
    """Where one generated image can be had: a URL, a provider asset id, or inline bytes."""

    model_config = ConfigDict(frozen=True)

    index: int
    url: str | None = None
    asset_id: str | None = None
    data: bytes | None = Field(default=None, repr=False, exclude=True)
    mime: str | None = None
    seed: str | None = None
    width: int | None = None
    height: int | None = None


class JobStatus(BaseModel):
    """One observation of a job. `raw_status` keeps the provider's own spelling for logs."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    state: JobState
    raw_status: str = ""
    progress: float | None = None
    outputs: list[OutputRef] = Field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    cost: float | None = None
    cost_unit: str | None = None
    poll_after: float | None = Field(None, description="provider's hint: seconds to next poll")


class Job(BaseModel):
    """A frozen handle on a submitted job: enough to poll it again after a crash."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    job_id: str
    key: str = Field(description="our idempotency key for this submit")
    n: int = 1
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    handle: dict[str, Any] = Field(
        default_factory=dict, description="provider data needed to poll (never credentials)"
    )
    status: JobStatus | None = Field(
        None, description="set when the provider answered synchronously with a finished job"
    )
    member: str | None = Field(
        None, description="the route member it was submitted to (a re-run resumes it there)"
    )


class InputImage(BaseModel):
    """An input image loaded and checked: bytes, type, size, digest, and a URL where one exists."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    mime: str
    width: int
    height: int
    sha256: str
    name: str = "image"
    url: str | None = Field(None, description="http(s) URL a provider may fetch it from")
    has_alpha: bool = False

    @classmethod
    def digest(cls, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(self.mime, "bin")

    @property
    def data_uri(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"


ReviewStatus = Literal["approved", "rejected"]


class ReviewRecord(BaseModel):
    """A person's decision on one candidate (or the timeout's, when nobody answered)."""

    model_config = ConfigDict(frozen=True)

    status: ReviewStatus
    note: str = ""
    round: int = Field(1, ge=1, description="the review round the candidate was shown in")
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    timed_out: bool = Field(False, description="nobody answered: on_review_timeout decided")


class ArchivedImage(BaseModel):
    """An image written to the archive, with what produced it. This is what flows return."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sidecar_uri: str
    sha256: str
    mime: str
    width: int
    height: int
    size_bytes: int
    provider: str
    model: str
    prompt: str
    member: str | None = Field(
        None, description="the route member (a saved block's name) that made it, when routed"
    )
    job_id: str | None = None
    seed: str | None = None
    cost: float | None = None
    cost_unit: str | None = None
    request_key: str | None = None
    parents: list[str] = Field(default_factory=list, description="archive URIs of input images")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    row: int | None = Field(None, description="a batch row's 0-based position in the input")
    from_archive: bool = Field(
        False, description="answered from the archive: this run paid nothing for it"
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="a batch row's metadata columns (sku, campaign, …)"
    )
    review: ReviewRecord | None = Field(None, description="the review's decision, when reviewed")
    text_check: TextCheck | None = Field(
        None, description="the quoted text read back from the image (text_check='flag'/'remake')"
    )


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
