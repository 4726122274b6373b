"""Every adapter against the provider emulator over real HTTP on 127.0.0.1: no respx, no mocks.

Adapters are built directly with `base_url=emulator.base_url(name)` and the emulator's keys and
driven through their whole contract (validate → upload_inputs → submit → poll → resolve_outputs
→ download). The emulator's ledger is the ground truth for what reached the server and what was
charged: a refusal that happens "before any network call" must leave it empty.
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gptimg_flows.errors import (
    AuthError,
    ContentRejected,
    InsufficientCredits,
    InvalidOutput,
    InvalidRequest,
    JobFailed,
    MalformedResponse,
    OutputExpired,
    ProviderError,
    RateLimited,
    ServerError,
    TransportError,
)
from gptimg_flows.media.download import DownloadedImage, download, save_inline
from gptimg_flows.media.inputs import load_image
from gptimg_flows.media.reads import ReadRules, trusted_host_of
from gptimg_flows.models import (
    EditRequest,
    ImageRequest,
    InputImage,
    Job,
    JobState,
    JobStatus,
    OutputRef,
)
from gptimg_flows.providers import PROVIDERS, Provider
from gptimg_flows.providers._http import failure_error
from gptimg_flows.providers.runware import task_uuid_for
from gptimg_flows.spend.prices import usage_cost
from gptimg_flows.testing import EMULATOR_KEYS, EmulatorClient
from gptimg_flows.testing.routes_openai import usage_for

ALL = ("openai", "scenario", "runware", "skillsvideo", "gptimage2ai")
#: Providers that answer a submit with a job to poll (OpenAI answers with the images).
ASYNC = ("scenario", "runware", "skillsvideo", "gptimage2ai")
#: Providers whose outputs are downloaded from (expiring) URLs; OpenAI's come inline.
URL_OUTPUTS = ASYNC
MASKED = ("openai", "scenario", "skillsvideo")
#: Ratio-only providers render at their tier sizes (1K: long side 1024).
RATIO_ONLY = ("skillsvideo", "gptimage2ai")
#: What the emulator charges per image, in the ledger's unit (docs/wire.md). OpenAI: by quality.
PER_IMAGE = {"scenario": 5.0, "runware": 0.04, "skillsvideo": 20.0, "gptimage2ai": 10.0}


def price(name: str, request: ImageRequest, size: tuple[int, int] = (64, 64)) -> float:
    """What the emulator bills one request: per image, or OpenAI's reported token usage."""
    if name != "openai":
        return PER_IMAGE[name] * request.n
    inputs = len(request.images) if isinstance(request, EditRequest) else 0
    usage = usage_for(request.prompt, *size, request.quality or "auto", inputs, request.n)
    return usage_cost(usage) or 0.0


#: OpenAI's bill for the text-to-image case below: the tokens the answer reports, priced.
OPENAI_LOW = usage_cost(usage_for("a lighthouse at dusk for openai", 64, 48, "low", 0)) or 0.0

#: Appended to a key to make the emulator refuse it (and findable if it leaks into a message).
WRONG = "-x9refused"
GREEN = (0, 200, 0)
BLUE = (0, 0, 220)


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads land in this test's own spool directory."""
    monkeypatch.setenv("GPTIMG_SPOOL", str(tmp_path / "spool"))


@pytest.fixture
def emu(emulator: EmulatorClient) -> EmulatorClient:
    """The reset emulator with quick jobs."""
    emulator.configure(latency=0.05)
    return emulator


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[str, bytes], str]]:
    """A plain local HTTP server: `served(name, data)` → its http://127.0.0.1 URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()

    def serve(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_port}/{name}"

    yield serve
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@asynccontextmanager
async def adapter(
    emulator: EmulatorClient, name: str, *, wrong_key: bool = False
) -> AsyncIterator[Provider]:
    """The real adapter for `name`, pointed at the emulator with its keys (or a wrong one)."""
    key = EMULATOR_KEYS[name]
    credentials = list(key) if isinstance(key, tuple) else [key]
    if wrong_key:
        credentials[-1] += WRONG  # scenario: right key, wrong secret
    provider: Provider = PROVIDERS[name](*credentials, base_url=emulator.base_url(name))  # type: ignore[call-arg]
    try:
        yield provider
    finally:
        await provider.aclose()


async def finish(provider: Provider, job: Job, timeout: float = 10.0) -> JobStatus:
    """Poll until the job is terminal (a synchronous answer is terminal already)."""
    if job.status is not None and job.status.state.terminal:
        return job.status
    deadline = time.monotonic() + timeout
    while True:
        status = await provider.poll(job)
        if status.state.terminal:
            return status
        assert time.monotonic() < deadline, (
            f"{provider.name} job {job.job_id} still {status.raw_status!r} after {timeout}s"
        )
        await asyncio.sleep(0.02)


async def fetch(ref: OutputRef) -> DownloadedImage:
    """Inline bytes are saved, URLs downloaded (without any provider credentials)."""
    if ref.data is not None:
        return await save_inline(ref)
    assert ref.url is not None
    trusted = ReadRules(trusted_hosts=trusted_host_of(ref.url))  # the emulator's own host
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await download(client, ref, rules=trusted)


async def run(
    provider: Provider, request: ImageRequest, key: str, inputs: Any = None
) -> tuple[Job, JobStatus, list[OutputRef]]:
    """validate → submit → poll → resolve_outputs, asserting success."""
    provider.validate(request)
    job = await provider.submit(request, inputs, key)
    status = await finish(provider, job)
    assert status.state is JobState.SUCCEEDED, f"{provider.name}: {status!r}"
    refs = await provider.resolve_outputs(job, status)
    assert len(refs) == request.n, f"{provider.name}: {len(refs)} outputs for n={request.n}"
    return job, status, refs


def opened(path: str) -> Image.Image:
    """The file as Pillow reads it (its `format` is the real one, whatever the name says)."""
    img = Image.open(path)
    img.load()
    return img


def png(size: tuple[int, int], colour: tuple[int, ...] | None = None) -> bytes:
    """A real PNG: solid `colour`, or noise (every pixel different enough to compare)."""
    if colour is not None:
        img = Image.new("RGB", size, colour)
    else:
        noise = random.Random(7).randbytes(size[0] * size[1] * 3)
        img = Image.frombytes("RGB", size, noise)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    """A real JPEG of noise."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(size))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def left_half_mask(size: tuple[int, int]) -> bytes:
    """OpenAI's convention: transparent (alpha 0) = edit here; the opaque right half is kept."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def input_image(data: bytes, name: str = "image.png", url: str | None = None) -> InputImage:
    """An InputImage built by hand from real bytes (the other inputs go through load_image)."""
    with Image.open(io.BytesIO(data)) as img:
        mime = Image.MIME[img.format or "PNG"]
        return InputImage(
            data=data,
            mime=mime,
            width=img.width,
            height=img.height,
            sha256=InputImage.digest(data),
            name=name,
            url=url,
            has_alpha=img.mode in ("RGBA", "LA", "PA"),
        )


def small(name: str, prompt: str = "a small test picture", **fields: Any) -> ImageRequest:
    """A cheap text-to-image request every provider accepts."""
    size = "1:1" if name in RATIO_ONLY else "64x64"
    return ImageRequest(prompt=prompt, size=size, **fields)


def submissions(ledger: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in ledger["submissions"] if s["provider"] == name]


def assert_nothing_reached(ledger: dict[str, Any], what: str) -> None:
    assert ledger["requests"] == {}, f"{what}: the emulator saw requests {ledger['requests']}"
    assert ledger["submissions"] == [], f"{what}: submitted {ledger['submissions']}"
    assert ledger["credits"] == {}, f"{what}: charged {ledger['credits']}"


def assert_not_charged(ledger: dict[str, Any], name: str, what: str) -> None:
    assert submissions(ledger, name) == [], f"{what}: a job was created: {ledger['submissions']}"
    assert ledger["credits"].get(name, 0) == 0, f"{what}: charged {ledger['credits']}"


# -- text to image --------------------------------------------------------------------------------

#: Per provider: request fields, the real format and pixel size expected, credits charged.
TEXT_TO_IMAGE: dict[str, tuple[dict[str, Any], str, tuple[int, int], float]] = {
    "openai": (
        {"size": "64x48", "quality": "low", "output_format": "webp"},
        "WEBP",
        (64, 48),
        OPENAI_LOW,
    ),
    "scenario": ({"size": "64x48", "quality": "low"}, "PNG", (64, 48), 5.0),
    "runware": ({"size": "64x48", "output_format": "jpeg", "n": 2}, "JPEG", (64, 48), 0.08),
    "skillsvideo": (
        {"size": "16:9", "resolution": "1K", "output_format": "jpeg"},
        "JPEG",
        (1024, 576),
        20.0,
    ),
    "gptimage2ai": ({"size": "3:4"}, "PNG", (768, 1024), 10.0),
}


@pytest.mark.parametrize("name", ALL)
async def test_text_to_image_end_to_end_gives_the_requested_format_and_size_charged_once(
    name: str, emu: EmulatorClient
) -> None:
    fields, fmt, size, credits = TEXT_TO_IMAGE[name]
    request = ImageRequest(prompt=f"a lighthouse at dusk for {name}", **fields)
    async with adapter(emu, name) as provider:
        _, status, refs = await run(provider, request, key=f"t2i-{name}")
    for ref in refs:
        got = await fetch(ref)
        img = opened(got.path)
        assert (img.format, img.size) == (fmt, size), (
            f"{name} output {ref.index}: got {img.format} {img.size}, asked {fmt} {size}"
        )
        assert (got.width, got.height) == size and got.mime == Image.MIME[fmt]
    ledger = emu.ledger()
    subs = submissions(ledger, name)
    assert len(ledger["submissions"]) == 1 and len(subs) == 1, ledger["submissions"]
    assert subs[0]["n"] == request.n, subs
    assert ledger["credits"] == {name: pytest.approx(credits)}, ledger["charges"]
    assert status.cost == pytest.approx(credits), f"{name} reports cost {status.cost}"


# -- edits ----------------------------------------------------------------------------------------

#: Per provider: extra request fields and the output size (ratio providers render at 1K).
EDIT: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "openai": ({}, (64, 48)),
    "scenario": ({}, (64, 48)),
    "runware": ({"size": "64x48", "output_format": "png"}, (64, 48)),
    "skillsvideo": ({}, (64, 48)),
    "gptimage2ai": ({"size": "4:3"}, (1024, 768)),
}


#: (provider, how inputs travel): bytes (multipart, assets, data URIs) or http URLs it fetches.
EDIT_ROUTES = [
    ("openai", "bytes"),
    ("scenario", "bytes"),
    ("runware", "bytes"),
    ("runware", "urls"),
    ("skillsvideo", "bytes"),
    ("skillsvideo", "urls"),
    ("gptimage2ai", "urls"),  # URL-only
]


async def load_inputs(
    via: str, files: dict[str, bytes], tmp_path: Path, served: Callable[[str, bytes], str]
) -> tuple[list[str], list[InputImage]]:
    """(request sources, loaded inputs): local files, or URLs on a local HTTP server.

    The first file goes through `load_image`; with bytes the others are built by hand.
    """
    sources: list[str] = []
    images: list[InputImage] = []
    for i, (file_name, data) in enumerate(files.items()):
        if via == "urls":
            source = served(file_name, data)
            images.append(await load_image(source, f"images[{i}]"))
            assert images[-1].url == source
        else:
            path = tmp_path / file_name
            path.write_bytes(data)
            source = str(path)
            loaded = await load_image(source, f"images[{i}]") if i == 0 else None
            images.append(loaded or input_image(data, file_name))
        sources.append(source)
    return sources, images


@pytest.mark.parametrize(("name", "via"), EDIT_ROUTES)
async def test_edit_with_reference_images_is_built_on_the_first_image(
    name: str,
    via: str,
    emu: EmulatorClient,
    tmp_path: Path,
    served: Callable[[str, bytes], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """upload_inputs then submit; the emulator blends the first reference with a new drawing,
    so a solid green first reference leaves every output pixel green-dominant."""
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")  # the local server is on 127.0.0.1
    files = {"first.png": png((64, 48), GREEN), "second.png": png((64, 48), BLUE)}
    sources, images = await load_inputs(via, files, tmp_path, served)
    fields, size = EDIT[name]
    request = EditRequest(prompt="make it a watercolour", images=sources, **fields)
    async with adapter(emu, name) as provider:
        provider.validate(request)
        inputs = await provider.upload_inputs(request, images, None)
        assert inputs.digests == [img.sha256 for img in images]
        _, _, refs = await run(provider, request, f"edit-{name}-{via}", inputs)
    got = await fetch(refs[0])
    img = opened(got.path).convert("RGB")
    assert img.size == size, f"{name}: edit output is {img.size}, expected {size}"
    (r_lo, r_hi), (g_lo, g_hi), _ = img.getextrema()
    assert g_lo >= 99 and r_hi <= 128, (
        f"{name} ({via}): output is not built on the green first reference "
        f"(R {r_lo}-{r_hi}, G {g_lo}-{g_hi})"
    )
    assert img.getcolors(1 << 16) != [(size[0] * size[1], GREEN)], f"{name}: nothing was edited"
    ledger = emu.ledger()
    assert len(submissions(ledger, name)) == 1, ledger["submissions"]
    assert ledger["credits"] == {name: pytest.approx(price(name, request, size))}, ledger
    if name == "scenario":
        assert ledger["requests"]["scenario"]["upload"] == 2, "each reference is one asset"


#: (provider, how inputs travel, the image's format): a JPEG is converted to PNG where the
#: API wants image and mask in one format; the kept pixels are the decoded JPEG's.
MASK_ROUTES = [
    ("openai", "bytes", "PNG"),
    ("openai", "bytes", "JPEG"),
    ("scenario", "bytes", "PNG"),
    ("scenario", "bytes", "JPEG"),
    ("skillsvideo", "bytes", "PNG"),
    ("skillsvideo", "urls", "PNG"),
]


@pytest.mark.parametrize(("name", "via", "fmt"), MASK_ROUTES)
async def test_masked_edit_keeps_opaque_mask_pixels_and_repaints_transparent_ones(
    name: str,
    via: str,
    fmt: str,
    emu: EmulatorClient,
    tmp_path: Path,
    served: Callable[[str, bytes], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPTIMG_ALLOW_PRIVATE_URLS", "1")
    size = (64, 48)
    original = png(size) if fmt == "PNG" else jpeg(size)  # noise: any repaint shows
    ext = fmt.lower()
    files = {f"in.{ext}": original, "mask.png": left_half_mask(size)}
    sources, (image, mask) = await load_inputs(via, files, tmp_path, served)
    assert mask.has_alpha and image.mime == Image.MIME[fmt]
    request = EditRequest(
        prompt="paint a red door on the left", images=[sources[0]], mask=sources[1]
    )
    async with adapter(emu, name) as provider:
        provider.validate(request)
        inputs = await provider.upload_inputs(request, [image], mask)
        _, _, refs = await run(provider, request, f"mask-{name}-{via}-{fmt}", inputs)
    got = await fetch(refs[0])
    out = opened(got.path).convert("RGBA")
    src = Image.open(io.BytesIO(original)).convert("RGBA")
    assert out.size == size, f"{name}: {out.size}"
    half = size[0] // 2
    kept = (half, 0, size[0], size[1])
    edited = (0, 0, half, size[1])
    assert out.crop(kept).tobytes() == src.crop(kept).tobytes(), (
        f"{name} ({via}, {fmt}): pixels under the opaque part of the mask changed"
    )
    assert out.crop(edited).tobytes() != src.crop(edited).tobytes(), (
        f"{name} ({via}, {fmt}): the transparent part of the mask was not repainted"
    )
    assert len(submissions(emu.ledger(), name)) == 1


def test_every_capability_is_covered_by_an_emulator_route() -> None:
    """The routes above exercise exactly what the adapters declare they can do."""
    caps = {name: PROVIDERS[name].capabilities for name in ALL}
    assert {n for n, _, _ in MASK_ROUTES} == set(MASKED) == {n for n in ALL if caps[n].mask}
    assert {(n, "urls" if "url" in caps[n].input_kinds else "bytes") for n in ALL} <= set(
        EDIT_ROUTES
    )
    assert {n for n in ALL if not caps[n].synchronous} == set(ASYNC)


# -- refusals before any network call -------------------------------------------------------------

MASK_BYTES = left_half_mask((64, 64))
IMAGE_BYTES = png((64, 64), GREEN)


def _masked_edit(**fields: Any) -> EditRequest:
    return EditRequest(prompt="edit it", images=[IMAGE_BYTES], mask=MASK_BYTES, **fields)


REFUSALS = [
    pytest.param("runware", _masked_edit(size="64x64"), "mask", id="runware-mask"),
    pytest.param("gptimage2ai", _masked_edit(), "mask", id="gptimage2ai-mask"),
    pytest.param(
        "skillsvideo", ImageRequest(prompt="p", size="17:9"), "size", id="skillsvideo-17:9"
    ),
    pytest.param(
        "gptimage2ai", ImageRequest(prompt="p", size="17:9"), "size", id="gptimage2ai-17:9"
    ),
    pytest.param("skillsvideo", ImageRequest(prompt="p", n=5), "n", id="skillsvideo-n5"),
    pytest.param("gptimage2ai", ImageRequest(prompt="p", n=5), "n", id="gptimage2ai-n5"),
    pytest.param("scenario", ImageRequest(prompt="p", n=5), "n", id="scenario-n5"),
    pytest.param("openai", ImageRequest(prompt="p", n=11), "n", id="openai-n11"),
    pytest.param("runware", ImageRequest(prompt="pp", size="100x64"), "size", id="runware-w100"),
    pytest.param("openai", ImageRequest(prompt="p", size="4096x2048"), "size", id="openai-4096"),
    pytest.param("openai", ImageRequest(prompt="p", size="48x160"), "size", id="openai-ratio"),
    pytest.param(
        "openai",
        ImageRequest(prompt="p", output_compression=50),
        "output_compression",
        id="openai-compression-png",
    ),
    pytest.param(
        "scenario",
        ImageRequest(prompt="p", output_format="png"),
        "output_format",
        id="scenario-fmt",
    ),
    pytest.param("scenario", ImageRequest(prompt="p", size="auto"), "size", id="scenario-auto"),
    pytest.param(
        "runware",
        ImageRequest(prompt="pp", background="transparent"),
        "background",
        id="runware-transparent",
    ),
    pytest.param("runware", ImageRequest(prompt="a"), "prompt", id="runware-1-char-prompt"),
    pytest.param(
        "skillsvideo", ImageRequest(prompt="p", quality="auto"), "quality", id="skillsvideo-auto"
    ),
    pytest.param(
        "gptimage2ai", ImageRequest(prompt="p", quality="high"), "quality", id="g2-quality"
    ),
    pytest.param(
        "gptimage2ai",
        ImageRequest(prompt="p", extras={"mood": "calm"}),
        "extras.mood",
        id="g2-extra",
    ),
    pytest.param(
        "gptimage2ai",
        ImageRequest(prompt="p", extras={"style": 3}),
        "extras.style",
        id="g2-extra-type",
    ),
]


@pytest.mark.parametrize(("name", "request_", "field"), REFUSALS)
async def test_refusal_names_the_field_and_reaches_no_server(
    name: str, request_: ImageRequest, field: str, emu: EmulatorClient
) -> None:
    async with adapter(emu, name) as provider:
        with pytest.raises(InvalidRequest) as by_validate:
            provider.validate(request_)
        with pytest.raises(InvalidRequest) as by_submit:
            await provider.submit(request_, None, f"refused-{name}")
        if isinstance(request_, EditRequest) and request_.mask is not None:
            with pytest.raises(InvalidRequest) as by_upload:
                await provider.upload_inputs(
                    request_, [input_image(IMAGE_BYTES)], input_image(MASK_BYTES, "mask.png")
                )
            assert by_upload.value.field == field, str(by_upload.value)
    for caught in (by_validate, by_submit):
        err = caught.value
        assert (err.field, err.provider) == (field, name), f"{name}: {err} (field {err.field})"
    assert_nothing_reached(emu.ledger(), f"{name} refusing {field}")


UPLOAD_REFUSALS = [
    pytest.param(
        "gptimage2ai", [input_image(IMAGE_BYTES)], None, "images[0]", id="gptimage2ai-bytes-only"
    ),
    pytest.param(
        "openai",
        [input_image(IMAGE_BYTES)],
        input_image(left_half_mask((32, 32)), "mask.png"),
        "mask",
        id="openai-mask-size",
    ),
    pytest.param(
        "scenario",
        [input_image(IMAGE_BYTES)],
        input_image(png((64, 64), (0, 0, 0)), "mask.png"),
        "mask",
        id="scenario-mask-without-alpha",
    ),
]


@pytest.mark.parametrize(("name", "images", "mask", "field"), UPLOAD_REFUSALS)
async def test_inputs_refused_by_upload_inputs_reach_no_server(
    name: str,
    images: list[InputImage],
    mask: InputImage | None,
    field: str,
    emu: EmulatorClient,
) -> None:
    request = EditRequest(
        prompt="edit it", images=[IMAGE_BYTES], mask=MASK_BYTES if mask is not None else None
    )
    async with adapter(emu, name) as provider:
        with pytest.raises(InvalidRequest) as caught:
            await provider.upload_inputs(request, images, mask)
    assert caught.value.field == field, f"{name}: {caught.value} (field {caught.value.field})"
    assert_nothing_reached(emu.ledger(), f"{name} refusing {field}")


# -- error mapping over real HTTP -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
async def test_wrong_key_is_an_auth_error_and_nothing_is_charged(
    name: str, emu: EmulatorClient
) -> None:
    async with adapter(emu, name, wrong_key=True) as provider:
        with pytest.raises(AuthError) as caught:
            await provider.submit(small(name), None, f"wrong-key-{name}")
    err = caught.value
    assert (err.status_code, err.provider) == (401, name), str(err)
    assert WRONG not in str(err), f"the refused credential leaked into the message: {err}"
    ledger = emu.ledger()
    assert_not_charged(ledger, name, "wrong key")
    assert ledger["rejected"] == {name: {"401": 1}}, ledger["rejected"]


SUBMIT_FAULTS: list[tuple[str, type[ProviderError], int | None]] = [
    ("submit_429", RateLimited, 429),
    ("submit_500", ServerError, 500),
    ("submit_503", ServerError, 503),
    ("html_error", ServerError, 502),  # a proxy's HTML 502: error_for_response → ServerError
    ("submit_drop", TransportError, None),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("kind", "error", "status_code"), SUBMIT_FAULTS)
async def test_submit_fault_maps_to_its_typed_error_and_charges_nothing(
    name: str,
    kind: str,
    error: type[ProviderError],
    status_code: int | None,
    emu: EmulatorClient,
) -> None:
    emu.configure(retry_after=2.5)
    emu.force(kind, name)
    async with adapter(emu, name) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(small(name), None, f"{kind}-{name}")
    err = caught.value
    assert type(err) is error, f"{name} {kind}: {type(err).__name__}: {err}"
    assert err.status_code == status_code, f"{name} {kind}: {err}"
    if isinstance(err, RateLimited):
        assert err.retry_after == pytest.approx(2.5), f"{name}: Retry-After not read: {err}"
    if isinstance(err, TransportError):
        assert err.request_sent, f"{name}: a dropped submit may have reached the provider"
    ledger = emu.ledger()
    assert [f["kind"] for f in ledger["faults"]] == [kind], ledger["faults"]
    assert_not_charged(ledger, name, kind)


@pytest.mark.parametrize("name", ALL)
async def test_malformed_json_answer_is_malformed_response_although_the_job_was_charged(
    name: str, emu: EmulatorClient
) -> None:
    """Why MalformedResponse is never retried blindly: the job exists and is paid for."""
    emu.force("malformed_json", name)
    request = small(name)
    async with adapter(emu, name) as provider:
        with pytest.raises(MalformedResponse) as caught:
            await provider.submit(request, None, f"malformed-{name}")
    assert caught.value.provider == name and caught.value.status_code == 200, str(caught.value)
    ledger = emu.ledger()
    assert len(submissions(ledger, name)) == 1, ledger["submissions"]
    assert ledger["credits"][name] == pytest.approx(price(name, request)), ledger["charges"]


@pytest.mark.parametrize("name", ALL)
async def test_exhausted_balance_is_insufficient_credits_and_nothing_is_charged(
    name: str, emu: EmulatorClient
) -> None:
    emu.configure(balance={name: 0})
    async with adapter(emu, name) as provider:
        with pytest.raises(InsufficientCredits) as caught:
            await provider.submit(small(name), None, f"broke-{name}")
    # OpenAI says "out of credits" as 429 insufficient_quota, which must not become RateLimited.
    expected_status = 429 if name == "openai" else 402
    assert caught.value.status_code == expected_status, str(caught.value)
    assert_not_charged(emu.ledger(), name, "no balance")


@pytest.mark.parametrize("name", ALL)
async def test_forbidden_prompt_is_content_rejected_at_submit_or_as_a_failed_job(
    name: str, emu: EmulatorClient
) -> None:
    request = small(name, prompt="a FORBIDDEN picture")
    async with adapter(emu, name) as provider:
        if name in ("openai", "scenario", "runware"):  # moderated synchronously: refused
            with pytest.raises(ContentRejected) as caught:
                await provider.submit(request, None, f"moderated-{name}")
            assert caught.value.provider == name, str(caught.value)
            assert_not_charged(emu.ledger(), name, "moderated at submit")
            return
        job = await provider.submit(request, None, f"moderated-{name}")
        status = await finish(provider, job)
    assert status.state is JobState.FAILED, f"{name}: {status!r}"
    err = failure_error(name, job, status)
    assert isinstance(err, ContentRejected), f"{name}: {type(err).__name__}: {err}"
    ledger = emu.ledger()
    if name == "gptimage2ai":  # failed jobs are refunded, and the adapter reports 0
        assert ledger["credits"][name] == 0 and len(ledger["refunds"]) == 1, ledger
        assert status.cost == 0
    else:  # skills.video bills the moderated job and says so in usage.total
        assert ledger["credits"][name] == pytest.approx(price(name, request)), ledger["charges"]
        assert status.cost == pytest.approx(price(name, request))


@pytest.mark.parametrize(
    ("name", "failure_http"),
    [(name, 200) for name in ASYNC] + [("runware", 400)],  # Runware reports either way
)
async def test_job_fail_ends_in_a_failed_status_that_is_a_job_failure(
    name: str, failure_http: int, emu: EmulatorClient
) -> None:
    emu.configure(runware_failure_http=failure_http)
    emu.force("job_fail", name)
    async with adapter(emu, name) as provider:
        job = await provider.submit(small(name), None, f"fail-{name}")
        status = await finish(provider, job)
    assert status.state is JobState.FAILED, f"{name}: {status!r}"
    assert status.outputs == [] and status.error, f"{name}: {status!r}"
    err = failure_error(name, job, status)
    assert type(err) is JobFailed, f"{name}: {type(err).__name__}: {err}"
    ledger = emu.ledger()
    assert len(submissions(ledger, name)) == 1
    if name == "gptimage2ai":
        assert ledger["credits"][name] == 0 and status.cost == 0, "failed jobs are refunded"


async def test_openai_job_failure_is_a_server_error_and_not_billed(emu: EmulatorClient) -> None:
    """OpenAI is synchronous: an upstream failure is the submit's own 500 answer."""
    emu.force("job_fail", "openai")
    async with adapter(emu, "openai") as provider:
        with pytest.raises(ServerError) as caught:
            await provider.submit(small("openai"), None, "fail-openai")
    assert caught.value.status_code == 500
    assert emu.ledger()["credits"].get("openai", 0) == 0


@pytest.mark.parametrize("name", ASYNC)
@pytest.mark.parametrize(
    ("kind", "error"), [("poll_500", ServerError), ("poll_drop", TransportError)]
)
async def test_poll_fault_is_retryable_and_the_next_poll_sees_the_job(
    name: str, kind: str, error: type[ProviderError], emu: EmulatorClient
) -> None:
    async with adapter(emu, name) as provider:
        job = await provider.submit(small(name), None, f"{kind}-{name}")
        emu.force(kind, name)
        with pytest.raises(ProviderError) as caught:
            await provider.poll(job)
        assert type(caught.value) is error, f"{name}: {type(caught.value).__name__}"
        assert caught.value.job_id == job.job_id, str(caught.value)
        status = await finish(provider, job)
    assert status.state is JobState.SUCCEEDED
    assert len(submissions(emu.ledger(), name)) == 1


# -- expiring URLs, lost answers, download faults -------------------------------------------------


async def test_scenario_expired_output_url_is_refreshed_and_downloads(
    emulator: EmulatorClient,
) -> None:
    emulator.configure(latency=0.05, url_ttl=0.3)
    async with adapter(emulator, "scenario") as provider:
        job, _, [ref] = await run(provider, small("scenario"), "expiring")
        assert ref.url and ref.asset_id
        await asyncio.sleep(0.45)
        with pytest.raises(OutputExpired):
            await fetch(ref)
        emulator.configure(url_ttl=60.0)  # the fresh URL must not expire while we fetch it
        fresh = await provider.refresh_output(job, ref)
        assert fresh.asset_id == ref.asset_id and fresh.url != ref.url, fresh
        got = await fetch(fresh)
    assert (got.mime, got.width, got.height) == ("image/png", 64, 64), got
    ledger = emulator.ledger()
    assert ledger["requests"]["scenario"]["resolve"] == 2, ledger["requests"]
    assert ledger["credits"] == {"scenario": 5.0}, "refreshing a URL costs nothing"


async def test_runware_finds_a_job_whose_answer_was_lost_and_a_resubmit_is_not_charged_twice(
    emu: EmulatorClient,
) -> None:
    emu.force("submit_lost_response", "runware")
    request = ImageRequest(prompt="a lighthouse whose answer got lost", size="64x64", n=1)
    key = "lost-answer-key"
    async with adapter(emu, "runware") as provider:
        with pytest.raises(TransportError) as caught:
            await provider.submit(request, None, key)
        assert caught.value.request_sent
        # After a crash, all the task layer has is the key (no job id ever came back).
        model = provider.capabilities.model
        rebuilt = Job(provider="runware", model=model, job_id="unknown", key=key)
        found = await provider.find_job(rebuilt)
        assert found is not None, "the task submitted under this key was not found"
        assert found.job_id == task_uuid_for(key), found
        assert found.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED), found
        never = Job(provider="runware", model=model, job_id="unknown", key="never-submitted")
        assert await provider.find_job(never) is None, "a key never submitted must find nothing"

        job = await provider.submit(request, None, key)  # resubmission: duplicateTaskUUID
        assert job.job_id == task_uuid_for(key)
        status = await finish(provider, job)
        assert status.state is JobState.SUCCEEDED, status
        [ref] = await provider.resolve_outputs(job, status)
    got = await fetch(ref)
    assert (got.width, got.height) == (64, 64)
    ledger = emu.ledger()
    subs = submissions(ledger, "runware")
    assert len(subs) == 1 and subs[0]["task_uuid"] == task_uuid_for(key), subs
    assert ledger["requests"]["runware"]["submit"] == 2, ledger["requests"]
    assert ledger["credits"] == {"runware": pytest.approx(0.04)}, ledger["charges"]


DOWNLOAD_FAULTS: list[tuple[str, type[ProviderError]]] = [
    ("download_truncate", TransportError),
    ("download_not_image", InvalidOutput),
    ("url_expired", OutputExpired),
]


@pytest.mark.parametrize("name", URL_OUTPUTS)
@pytest.mark.parametrize(("kind", "error"), DOWNLOAD_FAULTS)
async def test_download_fault_maps_to_its_typed_error(
    name: str, kind: str, error: type[ProviderError], emu: EmulatorClient, tmp_path: Path
) -> None:
    if kind == "url_expired":  # decided when the URL is issued
        emu.force(kind, name)
    async with adapter(emu, name) as provider:
        job, _, [ref] = await run(provider, small(name), f"{kind}-{name}")
        if kind != "url_expired":  # decided when the file is fetched
            emu.force(kind, name)
        with pytest.raises(ProviderError) as caught:
            await fetch(ref)
        assert type(caught.value) is error, f"{name} {kind}: {type(caught.value).__name__}"
        if kind != "url_expired":
            got = await fetch(ref)  # the fault was one-off: the same URL now downloads
            assert got.width > 0
        elif name == "scenario":  # the only one that can re-issue an output URL
            got = await fetch(await provider.refresh_output(job, ref))
            assert got.width > 0
        else:
            with pytest.raises(OutputExpired):
                await provider.refresh_output(job, ref)
    kept = list((tmp_path / "spool").glob("*"))
    downloaded = 0 if kind == "url_expired" and name != "scenario" else 1
    assert len(kept) == downloaded, f"failed downloads left files behind: {kept}"
    assert [f["kind"] for f in emu.ledger()["faults"]] == [kind]


# -- more of the contract -----------------------------------------------------------------------


async def test_runware_sync_delivery_answers_a_finished_job_at_submit(emu: EmulatorClient) -> None:
    key = EMULATOR_KEYS["runware"]
    assert isinstance(key, str)
    provider = PROVIDERS["runware"](key, base_url=emu.base_url("runware"), delivery="sync")  # type: ignore[call-arg]
    async with provider:
        request = ImageRequest(prompt="a lighthouse, delivered", size="64x48", output_format="webp")
        job = await provider.submit(request, None, "sync-delivery")
        assert job.status is not None and job.status.state is JobState.SUCCEEDED, job
        [ref] = await provider.resolve_outputs(job, job.status)
    got = await fetch(ref)
    assert (got.mime, got.width, got.height) == ("image/webp", 64, 48), got
    ledger = emu.ledger()
    assert ledger["requests"]["runware"].get("poll", 0) == 0, "a finished job needs no poll"
    assert ledger["credits"] == {"runware": pytest.approx(0.04)}


async def test_scenario_cancel_ends_the_job_canceled(emulator: EmulatorClient) -> None:
    emulator.configure(latency=5.0)
    async with adapter(emulator, "scenario") as provider:
        job = await provider.submit(small("scenario"), None, "to-cancel")
        await provider.cancel(job)
        status = await provider.poll(job)
    assert status.state is JobState.CANCELED, status
    err = failure_error("scenario", job, status)
    assert type(err) is JobFailed and "canceled" in str(err), str(err)
    assert emulator.ledger()["running_jobs"]["scenario"] == 0


@pytest.mark.parametrize("name", ASYNC)
async def test_concurrency_limit_is_rate_limited_with_retry_after(
    name: str, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=5.0, max_concurrent_jobs=1, retry_after=1.5)
    async with adapter(emulator, name) as provider:
        await provider.submit(small(name), None, f"first-{name}")
        with pytest.raises(RateLimited) as caught:
            await provider.submit(small(name, prompt="a second picture"), None, f"second-{name}")
    assert caught.value.retry_after == pytest.approx(1.5), str(caught.value)
    ledger = emulator.ledger()
    assert len(submissions(ledger, name)) == 1, ledger["submissions"]
    assert ledger["credits"] == {name: pytest.approx(price(name, small(name)))}, ledger
