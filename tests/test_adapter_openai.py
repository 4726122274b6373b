"""OpenAI adapter translation: JSON and multipart bodies as sent, b64 answers parsed, errors mapped.

Pure respx tests: no server, no Prefect. Every refusal is checked to send nothing.
"""

from __future__ import annotations

import base64
import io
import json
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import pytest
import respx
from PIL import Image

from gptimg_flows.errors import (
    AuthError,
    ContentRejected,
    InsufficientCredits,
    InvalidRequest,
    JobFailed,
    MalformedResponse,
    ProviderError,
    RateLimited,
    ServerError,
    TransportError,
)
from gptimg_flows.models import EditRequest, ImageRequest, InputImage, Job, JobState
from gptimg_flows.providers.openai import MAX_MASK_BYTES, OpenAIProvider

KEY = "sk-test-abcdefghijklmnop1234"
URL = "https://api.openai.com/v1"
IDEM = "f" * 64


def _image_bytes(w: int = 32, h: int = 32, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    color = (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)
    Image.new(mode, (w, h), color).save(buf, fmt)
    return buf.getvalue()


def _input(
    w: int = 32, h: int = 32, fmt: str = "PNG", mode: str = "RGB", name: str = "in.png"
) -> InputImage:
    data = _image_bytes(w, h, fmt, mode)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}[fmt]
    return InputImage(
        data=data,
        mime=mime,
        width=w,
        height=h,
        sha256=InputImage.digest(data),
        name=name,
        has_alpha=mode == "RGBA",
    )


def _mask(w: int = 32, h: int = 32) -> InputImage:
    return _input(w, h, "PNG", "RGBA", name="mask.png")


PNG_OUT = _image_bytes(16, 16)


def _answer(n: int = 1, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "created": 1700000000,
        "data": [{"b64_json": base64.b64encode(PNG_OUT).decode()} for _ in range(n)],
        "usage": {"total_tokens": 1300, "input_tokens": 300, "output_tokens": 1000},
    }
    body.update(extra)
    return body


def _multipart(request: httpx.Request) -> list[Message]:
    """The parts of a multipart request, as an email parser reads them."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + request.content)
    assert msg.is_multipart(), request.headers["content-type"]
    return list(msg.iter_parts())  # type: ignore[attr-defined]


def _fields(parts: list[Message]) -> dict[str, str]:
    return {
        str(p.get_param("name", header="content-disposition")): p.get_payload(decode=True).decode()
        for p in parts
        if p.get_filename() is None
    }


def _files(parts: list[Message]) -> list[tuple[str, str, str, bytes]]:
    return [
        (
            str(p.get_param("name", header="content-disposition")),
            str(p.get_filename()),
            p.get_content_type(),
            p.get_payload(decode=True),
        )
        for p in parts
        if p.get_filename() is not None
    ]


@pytest.fixture
def mock() -> respx.MockRouter:
    """Routes answered through the provider's own `transport`: no sockets, no TLS setup."""
    return respx.MockRouter(base_url=URL, assert_all_called=False, assert_all_mocked=True)


@pytest.fixture
def oa(mock: respx.MockRouter) -> OpenAIProvider:
    return OpenAIProvider(KEY, transport=httpx.MockTransport(mock.async_handler))


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   "])
def test_missing_key_is_an_auth_error_naming_the_env_var(key: str) -> None:
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        OpenAIProvider(key)


def test_repr_never_shows_the_key(oa: OpenAIProvider) -> None:
    assert KEY not in repr(oa) and KEY not in str(vars(oa))


def test_capabilities_match_gpt_image_2_limits() -> None:
    caps = OpenAIProvider.capabilities
    assert (caps.max_n, caps.max_side, caps.max_pixels, caps.multiple_of) == (
        10,
        3840,
        8_294_400,
        16,
    )
    assert caps.synchronous and caps.mask and caps.auto_size and not caps.can_cancel
    assert caps.max_reference_images == 16 and caps.cost_unit == "usd"


# -- generations -------------------------------------------------------------------------------


async def test_generate_sends_json_with_bearer_auth_and_returns_a_finished_job(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    route = mock.post("/images/generations").respond(
        200, json=_answer(2, size="1536x1024", quality="medium", output_format="png")
    )
    req = ImageRequest(
        prompt="a red fox",
        n=2,
        size="1536x1024",
        quality="medium",
        background="opaque",
        output_format="webp",
        output_compression=70,
        moderation="low",
    )
    job = await oa.submit(req, None, IDEM)

    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-organization" not in sent.headers
    assert json.loads(sent.content) == {
        "model": "gpt-image-2",
        "prompt": "a red fox",
        "n": 2,
        "size": "1536x1024",
        "quality": "medium",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": 70,
        "moderation": "low",
    }
    assert job.job_id == "openai-" + IDEM[:24] and job.key == IDEM and job.n == 2
    assert job.model == "gpt-image-2" and job.provider == "openai"
    assert job.handle["usage"]["total_tokens"] == 1300
    status = job.status
    assert status is not None and status.state is JobState.SUCCEEDED and status.progress == 1.0
    assert [o.index for o in status.outputs] == [0, 1]
    out = status.outputs[0]
    assert out.data == PNG_OUT and out.mime == "image/png"  # from the bytes, not the request
    assert (out.width, out.height) == (1536, 1024)
    # 300 text tokens in at $5/1M, 1000 image tokens out at $30/1M
    assert status.cost == pytest.approx(0.0315) and status.cost_unit == "usd"


@pytest.mark.parametrize(
    ("size", "resolution", "sent"),
    [
        (None, None, None),
        ("auto", None, "auto"),
        ("16:9", "2K", "2048x1152"),
        ("1024x1536", None, "1024x1536"),
    ],
)
async def test_size_is_sent_as_pixels_auto_or_left_to_openai(
    mock: respx.MockRouter,
    oa: OpenAIProvider,
    size: str | None,
    resolution: str | None,
    sent: str | None,
) -> None:
    route = mock.post("/images/generations").respond(200, json=_answer())
    await oa.submit(ImageRequest(prompt="hi", size=size, resolution=resolution), None, IDEM)
    body = json.loads(route.calls.last.request.content)
    assert body.get("size") == sent
    assert set(body) <= {"model", "prompt", "n", "size"}


@pytest.mark.parametrize(
    ("quality", "size", "usd"),
    [
        # no size and no quality: estimated as 1024x1536 at high (auto is billed as high)
        (None, None, (1 * 5 + 6240 * 30) / 1e6),
        ("low", "1024x1024", (1 * 5 + 272 * 30) / 1e6),
        ("high", "1024x1024", (1 * 5 + 4160 * 30) / 1e6),
    ],
)
async def test_an_answer_without_usage_is_priced_from_the_token_table_as_an_estimate(
    mock: respx.MockRouter, oa: OpenAIProvider, quality: str | None, size: str | None, usd: float
) -> None:
    answer = _answer()
    del answer["usage"]
    mock.post("/images/generations").respond(200, json=answer)
    job = await oa.submit(ImageRequest(prompt="hi", quality=quality, size=size), None, IDEM)
    assert job.status is not None and job.status.cost == pytest.approx(usd)
    assert job.status.cost_unit == "usd-estimate"


async def test_negotiated_token_prices_on_the_adapter(mock: respx.MockRouter) -> None:
    from gptimg_flows.spend.prices import TokenPrices

    prices = TokenPrices(text_input=2.5, image_output=15.0)
    oa = OpenAIProvider(KEY, transport=httpx.MockTransport(mock.async_handler), token_prices=prices)
    mock.post("/images/generations").respond(200, json=_answer())
    job = await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert job.status is not None and job.status.cost == pytest.approx(
        (300 * 2.5 + 1000 * 15) / 1e6
    )


async def test_organization_header_and_custom_model_and_base_url() -> None:
    router = respx.MockRouter(base_url="http://127.0.0.1:9/openai/v1", assert_all_mocked=True)
    route = router.post("/images/generations").respond(200, json=_answer())
    oa = OpenAIProvider(
        KEY,
        base_url="http://127.0.0.1:9/openai/v1/",
        model="gpt-image-2-2026-04-21",
        organization="org-1",
        transport=httpx.MockTransport(router.async_handler),
    )
    job = await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    sent = route.calls.last.request
    assert sent.headers["openai-organization"] == "org-1"
    assert json.loads(sent.content)["model"] == "gpt-image-2-2026-04-21"
    assert job.model == "gpt-image-2-2026-04-21"
    await oa.aclose()


# -- edits -------------------------------------------------------------------------------------


async def test_edit_sends_multipart_with_image_parts_mask_and_form_fields(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    route = mock.post("/images/edits").respond(200, json=_answer())
    req = EditRequest(
        prompt="make the sky stormy",
        images=[b"a", b"b"],
        mask=b"m",
        n=1,
        size="1024x1024",
        quality="high",
        input_fidelity="high",
    )
    first, second, mask = _input(), _input(fmt="JPEG", name="b.jpg"), _mask()
    prepared = await oa.upload_inputs(req, [first, second], mask)
    assert prepared.digests == [first.sha256, second.sha256]
    job = await oa.submit(req, prepared, IDEM)

    sent = route.calls.last.request
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = _multipart(sent)
    assert _fields(parts) == {
        "model": "gpt-image-2",
        "prompt": "make the sky stormy",
        "n": "1",
        "size": "1024x1024",
        "quality": "high",
        "input_fidelity": "high",
    }
    assert _files(parts) == [
        ("image[]", "image_0.png", "image/png", first.data),
        ("image[]", "image_1.jpg", "image/jpeg", second.data),
        ("mask", "mask.png", "image/png", mask.data),
    ]
    assert job.status is not None and job.status.outputs[0].data == PNG_OUT


async def test_a_jpeg_first_image_is_sent_as_png_when_a_mask_is_given(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    route = mock.post("/images/edits").respond(200, json=_answer())
    req = EditRequest(prompt="edit", images=[b"a"], mask=b"m")
    jpeg = _input(fmt="JPEG", name="photo.jpg")
    prepared = await oa.upload_inputs(req, [jpeg], _mask())
    assert prepared.digests == [jpeg.sha256]  # keys stay those of what the user gave
    await oa.submit(req, prepared, IDEM)
    name, filename, mime, data = _files(_multipart(route.calls.last.request))[0]
    assert (name, filename, mime) == ("image[]", "image_0.png", "image/png")
    assert data.startswith(b"\x89PNG") and Image.open(io.BytesIO(data)).size == (32, 32)


async def test_edit_without_prepared_inputs_is_refused_before_sending(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    route = mock.post("/images/edits").respond(200, json=_answer())
    with pytest.raises(InvalidRequest) as info:
        await oa.submit(EditRequest(prompt="edit", images=[b"a"]), None, IDEM)
    assert info.value.field == "images"
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("mask", "first", "match"),
    [
        (_input(fmt="JPEG", name="m.jpg"), _input(), "PNG with an alpha channel"),
        (_input(mode="RGB", name="m.png"), _input(), "without alpha"),
        (_mask(64, 64), _input(32, 32), "mask is 64x64 but the first image is 32x32"),
    ],
)
async def test_bad_masks_are_refused_naming_the_mask(
    oa: OpenAIProvider, mask: InputImage, first: InputImage, match: str
) -> None:
    req = EditRequest(prompt="edit", images=[b"a"], mask=b"m")
    with pytest.raises(InvalidRequest, match=match) as info:
        await oa.upload_inputs(req, [first], mask)
    assert info.value.field == "mask" and info.value.provider == "openai"


async def test_a_mask_of_4_mb_or_more_is_refused(oa: OpenAIProvider) -> None:
    big = _mask().model_copy(update={"data": b"\x89PNG" + b"\0" * MAX_MASK_BYTES})
    with pytest.raises(InvalidRequest, match="under 4,194,304 bytes") as info:
        await oa.upload_inputs(EditRequest(prompt="e", images=[b"a"], mask=b"m"), [_input()], big)
    assert info.value.field == "mask"


async def test_gif_inputs_are_refused_naming_the_image(oa: OpenAIProvider) -> None:
    with pytest.raises(InvalidRequest, match="PNG, JPEG or WebP") as info:
        await oa.upload_inputs(
            EditRequest(prompt="e", images=[b"a", b"b"]), [_input(), _input(fmt="GIF")], None
        )
    assert info.value.field == "images[1]"


async def test_more_than_16_images_are_refused(oa: OpenAIProvider) -> None:
    with pytest.raises(InvalidRequest, match="at most 16") as info:
        await oa.upload_inputs(EditRequest(prompt="e", images=[b"a"]), [_input()] * 17, None)
    assert info.value.field == "images"


# -- validation: refused before any request ------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "match"),
    [
        (ImageRequest(prompt="x", size="1000x1000"), "size", "multiples of 16"),
        (ImageRequest(prompt="x", size="3072x768"), "size", "between 1:3 and 3:1"),
        (ImageRequest(prompt="x", size="3840x3840"), "size", "8,294,400"),
        (ImageRequest(prompt="x", size="4096x2304"), "size", "16 to 3840"),
        (ImageRequest(prompt="x", n=11), "n", "1-10"),
        (ImageRequest(prompt="x", seed=3), "seed", "cannot honour `seed`"),
        (ImageRequest(prompt="x", extras={"style": "noir"}), "extras.style", "no field"),
        (ImageRequest(prompt="x", output_compression=50), "output_compression", "jpeg or webp"),
        (
            ImageRequest(prompt="x", output_format="png", output_compression=50),
            "output_compression",
            "jpeg or webp",
        ),
        (
            ImageRequest(prompt="x", background="transparent", output_format="jpeg"),
            "background",
            "png or webp",
        ),
        (EditRequest(prompt="x", images=[b"a"], seed=1), "seed", "cannot honour `seed`"),
    ],
)
async def test_invalid_requests_are_refused_naming_the_field_without_sending(
    mock: respx.MockRouter,
    oa: OpenAIProvider,
    request_: ImageRequest,
    field: str,
    match: str | None,
) -> None:
    mock.route().respond(200, json=_answer())
    with pytest.raises(InvalidRequest, match=match) as info:
        await oa.submit(request_, None, IDEM)
    assert info.value.field == field and info.value.provider == "openai"
    assert mock.calls.call_count == 0


@pytest.mark.parametrize(
    "request_",
    [
        ImageRequest(prompt="x", size="3840x2160", output_format="jpeg", output_compression=0),
        ImageRequest(prompt="x", size="1024x3072"),  # exactly 1:3
        ImageRequest(prompt="x", size="auto", background="transparent", output_format="webp"),
    ],
)
def test_valid_requests_pass_validation(oa: OpenAIProvider, request_: ImageRequest) -> None:
    oa.validate(request_)


# -- errors ------------------------------------------------------------------------------------


async def test_429_rate_limit_carries_retry_after(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    mock.post("/images/generations").respond(
        429,
        headers={"retry-after": "7", "retry-after-ms": "1500"},
        json={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
    )
    with pytest.raises(RateLimited) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert info.value.retry_after == pytest.approx(1.5)  # the ms header is the precise one
    assert info.value.job_id == "openai-" + IDEM[:24] and info.value.status_code == 429


async def test_429_retry_after_seconds_when_no_ms_header(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    mock.post("/images/generations").respond(
        429, headers={"retry-after": "7"}, json={"error": {"message": "slow down", "code": None}}
    )
    with pytest.raises(RateLimited) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert info.value.retry_after == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("status", "error", "exc"),
    [
        (
            429,
            {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            },
            InsufficientCredits,
        ),
        (
            400,
            {
                "message": "Your request was rejected by the safety system.",
                "type": "image_generation_user_error",
                "code": "moderation_blocked",
            },
            ContentRejected,
        ),
        (
            400,
            {
                "message": "Billing hard limit has been reached",
                "type": "invalid_request_error",
                "code": "billing_hard_limit_reached",
            },
            InsufficientCredits,
        ),
        (403, {"message": "organization must be verified", "type": "invalid_request"}, AuthError),
        (500, {"message": "The server had an error", "type": "server_error"}, ServerError),
        (503, {"message": "overloaded", "type": "server_error"}, ServerError),
    ],
)
async def test_error_answers_map_to_typed_errors(
    mock: respx.MockRouter,
    oa: OpenAIProvider,
    status: int,
    error: dict[str, str],
    exc: type[ProviderError],
) -> None:
    mock.post("/images/generations").respond(status, json={"error": error})
    with pytest.raises(exc) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert type(info.value) is exc and info.value.status_code == status


async def test_400_invalid_value_names_the_param(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    mock.post("/images/generations").respond(
        400,
        json={
            "error": {
                "message": "Invalid size '512x256'",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "size",
            }
        },
    )
    with pytest.raises(InvalidRequest) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert info.value.field == "size"


async def test_401_message_never_carries_the_key(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    mock.post("/images/generations").respond(
        401,
        json={
            "error": {
                "message": f"Incorrect API key provided: {KEY[:8]}****{KEY[-4:]}. Also {KEY}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    with pytest.raises(AuthError) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    text = f"{info.value} {info.value.message} {info.value.args}"
    assert KEY not in text and KEY[:8] not in text and KEY[-4:] not in text
    assert "[redacted key]" in text


@pytest.mark.parametrize(
    "answer",
    [
        {"created": 1},
        {"data": []},
        {"data": [{"url": "https://example.com/x.png"}]},
        {"data": [{"b64_json": "not base64!!"}]},
    ],
)
async def test_200_without_images_is_malformed(
    mock: respx.MockRouter, oa: OpenAIProvider, answer: dict[str, object]
) -> None:
    mock.post("/images/generations").respond(200, json=answer)
    with pytest.raises(MalformedResponse) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert info.value.job_id == "openai-" + IDEM[:24]


async def test_html_answer_is_malformed(mock: respx.MockRouter, oa: OpenAIProvider) -> None:
    mock.post("/images/generations").respond(200, html="<html>gateway</html>")
    with pytest.raises(MalformedResponse):
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)


@pytest.mark.parametrize(
    ("side_effect", "sent"),
    [(httpx.ConnectError("refused"), False), (httpx.ReadTimeout("slow"), True)],
)
async def test_transport_errors_say_whether_the_request_was_sent(
    mock: respx.MockRouter, oa: OpenAIProvider, side_effect: Exception, sent: bool
) -> None:
    mock.post("/images/generations").mock(side_effect=side_effect)
    with pytest.raises(TransportError) as info:
        await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    assert info.value.request_sent is sent


# -- the rest of the lifecycle -------------------------------------------------------------------


async def test_poll_returns_the_status_from_submit_without_a_request(
    mock: respx.MockRouter, oa: OpenAIProvider
) -> None:
    mock.post("/images/generations").respond(200, json=_answer())
    job = await oa.submit(ImageRequest(prompt="hi"), None, IDEM)
    calls = mock.calls.call_count
    status = await oa.poll(job)
    assert status is job.status
    assert await oa.resolve_outputs(job, status) == status.outputs
    assert mock.calls.call_count == calls


async def test_poll_of_a_job_rebuilt_without_its_answer_explains_why_it_failed(
    oa: OpenAIProvider,
) -> None:
    job = Job(provider="openai", model="gpt-image-2", job_id="openai-x", key=IDEM)
    with pytest.raises(JobFailed, match="synchronously") as info:
        await oa.poll(job)
    assert info.value.job_id == "openai-x"
