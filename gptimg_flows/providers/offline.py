"""A provider that needs no key and no network: it draws the images itself.

It answers synchronously, like OpenAI, so the pipelines, demos and tests exercise the same
submit → poll → outputs path as the hosted providers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from typing import ClassVar

from PIL import Image

from gptimg_flows.media import render
from gptimg_flows.models import EditRequest, ImageRequest, Job, JobState, JobStatus, OutputRef
from gptimg_flows.providers.base import Capabilities, PreparedInputs, Provider
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.spend.prices import Price

_MODEL = "offline-gpt-image-2"


def _seed_of(request: ImageRequest, key: str) -> int:
    """The request's seed, else one derived from our submit key: same request → same pixels,
    while a refreshed request (new key) gets a new picture."""
    if request.seed is not None:
        return request.seed
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


#: OpenAI's gpt-image-2 rules, taken from its adapter: what passes offline passes on a real key.
_STRICT = dataclasses.replace(
    OpenAIProvider.capabilities,
    model=_MODEL,
    input_kinds=frozenset({"bytes", "url"}),
    cost_unit="usd",
    notes=(
        "draws locally; costs nothing",
        "validates like OpenAI's gpt-image-2 (sizes, ratio 1:3-3:1, output_compression only "
        "with jpeg/webp, no seed), so a pipeline that runs offline runs on a real key; "
        "`offline-lenient` draws any size from 16 to 4096 px and honours seed",
    ),
)


class OfflineProvider(Provider):
    """Draws deterministic images locally (same prompt + seed → same pixels); edits honour masks.

    Strict by default: it refuses what OpenAI's gpt-image-2 refuses.
    """

    name: ClassVar[str] = "offline"
    display_name: ClassVar[str] = "offline"
    capabilities: ClassVar[Capabilities] = _STRICT

    def documented_price(self, request: ImageRequest) -> Price:
        return Price(amount=0.0, unit="usd", basis="free")

    async def submit(self, request: ImageRequest, inputs: PreparedInputs | None, key: str) -> Job:
        self.validate(request)
        outputs = await asyncio.to_thread(self._make, request, inputs, key)
        job_id = "offline-" + key[:16]
        status = JobStatus(
            job_id=job_id,
            state=JobState.SUCCEEDED,
            raw_status="succeeded",
            progress=1.0,
            outputs=outputs,
            cost=0.0,
            cost_unit="usd",
        )
        return Job(
            provider=self.name, model=_MODEL, job_id=job_id, key=key, n=request.n, status=status
        )

    def _make(
        self, request: ImageRequest, inputs: PreparedInputs | None, key: str
    ) -> list[OutputRef]:
        fmt: render.Format = request.output_format or "png"
        quality = request.output_compression
        seed = _seed_of(request, key)
        transparent = request.background == "transparent"
        base: Image.Image | None = None
        mask: Image.Image | None = None
        if isinstance(request, EditRequest) and inputs is not None and inputs.images:
            base = Image.open(io.BytesIO(inputs.images[0].data))
            base.load()
            if inputs.mask is not None:
                mask = Image.open(io.BytesIO(inputs.mask.data))
                mask.load()
        w, h = (
            base.size
            if base is not None and request.size in (None, "auto")
            else request.resolved_pixels()
        )
        refs = []
        for i in range(request.n):
            if base is not None:
                if base.size != (w, h):
                    base = base.resize((w, h))
                img = render.edit(base, request.prompt, mask, seed + i)
                data = render.encode(img, fmt, quality)
            else:
                data = render.render(request.prompt, w, h, fmt, seed + i, transparent, quality)
            refs.append(
                OutputRef(
                    index=i, data=data, mime=render.MIME[fmt], seed=str(seed + i), width=w, height=h
                )
            )
        return refs

    async def poll(self, job: Job) -> JobStatus:
        if job.status is None:  # a crash between submit and archive: the drawing is repeatable
            raise RuntimeError("offline jobs finish at submit; nothing to poll")
        return job.status


class LenientOfflineProvider(OfflineProvider):
    """`offline-lenient`: any size from 16 to 4096 px, a seed, compression with any format.

    For drawing test fixtures; what passes here may be refused by every real provider.
    """

    name: ClassVar[str] = "offline-lenient"
    display_name: ClassVar[str] = "offline-lenient"
    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        _STRICT,
        fields=_STRICT.fields | {"seed"},
        multiple_of=1,
        max_side=4096,
        max_pixels=4096 * 4096,
        ratio_bounds=None,
        compression_formats=(),
        notes=("draws locally; costs nothing; checks only sides of 16-4096 px",),
    )


#: The names that mean "no provider, draw here", for `provider=` and the CLI's `-p`.
OFFLINE_NAMES: tuple[str, ...] = (OfflineProvider.name, LenientOfflineProvider.name)
