"""skills.video adapter translation: JSON and multipart submits, every status spelling, errors.

Pure respx tests: no server, no Prefect. Every refusal is checked to send nothing.
"""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from gptimg_flows.errors import (
    AuthError,
    InsufficientCredits,
    InvalidRequest,
    MalformedResponse,
    RateLimited,
    ServerError,
)
from gptimg_flows.models import EditRequest, ImageRequest, InputImage, Job, JobState
from gptimg_flows.providers.skillsvideo import SkillsVideoProvider

KEY = "sv-secret-key-456"
BASE = "https://open.skills.video/api"
SUBMIT = f"{BASE}/v1/generation/openai/gpt-image-2"


def _input(url: str | None = None, name: str = "image") -> InputImage:
    buf = io.BytesIO()
    Image.new("RGBA", (32, 32), (10, 200, 30, 255)).save(buf, "PNG")
    data = buf.getvalue()
    return InputImage(
        data=data,
        mime="image/png",
        width=32,
        height=32,
        sha256=InputImage.digest(data),
        url=url,
        name=name,
    )


def _accepted(**extra: Any) -> dict[str, Any]:
    return {
        "id": "gen_123",
        "status": "IN_QUEUE",
        "input": {"prompt": "a cat"},
        "usage": {"total": 20, "subscription": 20, "permanent": 0},
        **extra,
    }


@pytest.fixture
def mock() -> respx.MockRouter:
    """Routes answered through the provider's own `transport`: no sockets, no TLS setup."""
    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


def _transport(router: respx.MockRouter) -> httpx.MockTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
def sv(mock: respx.MockRouter) -> SkillsVideoProvider:
    return SkillsVideoProvider(KEY, transport=_transport(mock))


def _job() -> Job:
    return Job(provider="skillsvideo", model="openai/gpt-image-2", job_id="gen_123", key="k", n=2)


# -- submit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            ImageRequest(prompt="a cat", n=2, size="16:9", resolution="4K", quality="medium"),
            {
                "prompt": "a cat",
                "aspect_ratio": "16:9",
                "resolution": "4K",
                "quality": "medium",
                "num_images": 2,
            },
        ),
        (
            ImageRequest(prompt="a cat", size="1536x1024", output_format="webp"),
            {
                "prompt": "a cat",
                "aspect_ratio": "3:2",
                "resolution": "2K",
                "num_images": 1,
                "output_format": "webp",
            },
        ),
        (
            ImageRequest(prompt="a cat", size="1024x1024"),
            {"prompt": "a cat", "aspect_ratio": "1:1", "resolution": "1K", "num_images": 1},
        ),
        (ImageRequest(prompt="a cat"), {"prompt": "a cat", "num_images": 1}),
    ],
)
async def test_submit_sends_json_with_ratio_and_tier(
    mock: respx.MockRouter,
    sv: SkillsVideoProvider,
    request_: ImageRequest,
    expected: dict[str, Any],
) -> None:
    route = mock.post(SUBMIT).respond(200, json=_accepted())
    job = await sv.submit(request_, None, "key-1")
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == expected
    assert (job.job_id, job.key, job.n, job.status) == ("gen_123", "key-1", request_.n, None)


async def test_edit_with_urls_sends_image_urls_and_mask_url(
    mock: respx.MockRouter, sv: SkillsVideoProvider
) -> None:
    route = mock.post(SUBMIT).respond(200, json=_accepted())
    req = EditRequest(prompt="swap sky", images=[b"a", b"b"], mask=b"m")
    images = [_input("https://cdn.example.com/a.png"), _input("https://cdn.example.com/b.png")]
    mask = _input("https://cdn.example.com/m.png")
    prepared = await sv.upload_inputs(req, images, mask)
    assert prepared.refs == ["https://cdn.example.com/a.png", "https://cdn.example.com/b.png"]
    assert prepared.mask_ref == "https://cdn.example.com/m.png" and prepared.images == []
    assert prepared.digests == [i.sha256 for i in images]
    await sv.submit(req, prepared, "k")
    body = json.loads(route.calls.last.request.content)
    assert body["image_urls"] == prepared.refs
    assert body["mask_url"] == "https://cdn.example.com/m.png"


async def test_edit_with_local_bytes_sends_multipart_file_parts(
    mock: respx.MockRouter, sv: SkillsVideoProvider
) -> None:
    route = mock.post(SUBMIT).respond(200, json=_accepted())
    req = EditRequest(prompt="swap sky", images=[b"a", b"b"], mask=b"m", size="3:4", n=3)
    images = [_input(), _input("https://cdn.example.com/b.png")]  # one without a URL
    prepared = await sv.upload_inputs(req, images, _input())
    assert prepared.refs == [] and len(prepared.images) == 2 and prepared.mask is not None
    await sv.submit(req, prepared, "k")
    sent = route.calls.last.request
    assert sent.headers["content-type"].startswith("multipart/form-data")
    content = sent.content
    assert content.count(b'name="image_urls"; filename=') == 2
    assert content.count(b'name="mask_url"; filename=') == 1
    for field, value in [("prompt", b"swap sky"), ("aspect_ratio", b"3:4"), ("num_images", b"3")]:
        assert f'name="{field}"'.encode() in content
        assert value in content
    assert images[0].data in content


async def test_submit_without_id_is_malformed(
    mock: respx.MockRouter, sv: SkillsVideoProvider
) -> None:
    mock.post(SUBMIT).respond(200, json={"status": "IN_QUEUE"})
    with pytest.raises(MalformedResponse, match="id"):
        await sv.submit(ImageRequest(prompt="a cat"), None, "k")


# -- polling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("IN_QUEUE", JobState.QUEUED),
        ("in_queue", JobState.QUEUED),
        ("IN_PROGRESS", JobState.RUNNING),
        ("In-Progress", JobState.RUNNING),
        ("processing", JobState.RUNNING),
        ("CANCELED", JobState.CANCELED),
        ("cancelled", JobState.CANCELED),
        ("SOMETHING_NEW", JobState.RUNNING),
    ],
)
async def test_poll_reads_every_status_spelling(
    mock: respx.MockRouter, sv: SkillsVideoProvider, raw: str, state: JobState
) -> None:
    route = mock.get(f"{BASE}/v1/generation/gen_123").respond(
        200, json=_accepted(status=raw, data=None)
    )
    status = await sv.poll(_job())
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert (status.state, status.raw_status) == (state, raw)
    assert status.cost == 20 and status.cost_unit == "credits"


@pytest.mark.parametrize("raw", ["COMPLETED", "completed", "Completed"])
async def test_poll_completed_reads_images(
    mock: respx.MockRouter, sv: SkillsVideoProvider, raw: str
) -> None:
    images = [
        {
            "url": f"https://cdn.skills.video/{i}.png",
            "file_name": f"{i}.png",
            "content_type": "image/png",
            "width": 1024,
            "height": 768,
        }
        for i in range(2)
    ]
    mock.get(f"{BASE}/v1/generation/gen_123").respond(
        200,
        json=_accepted(
            status=raw, usage={"total": 40}, data={"images": images, "image": images[0]}
        ),
    )
    status = await sv.poll(_job())
    assert status.state is JobState.SUCCEEDED
    assert [o.url for o in status.outputs] == [i["url"] for i in images]
    assert [(o.index, o.mime, o.width, o.height) for o in status.outputs] == [
        (0, "image/png", 1024, 768),
        (1, "image/png", 1024, 768),
    ]
    assert status.cost == 40


async def test_poll_completed_falls_back_to_data_image(
    mock: respx.MockRouter, sv: SkillsVideoProvider
) -> None:
    image = {"url": "https://cdn.skills.video/only.jpeg", "content_type": "image/jpeg"}
    mock.get(f"{BASE}/v1/generation/gen_123").respond(
        200, json=_accepted(status="COMPLETED", data={"image": image})
    )
    status = await sv.poll(_job())
    assert [o.url for o in status.outputs] == ["https://cdn.skills.video/only.jpeg"]


async def test_poll_completed_without_data_is_malformed(
    mock: respx.MockRouter, sv: SkillsVideoProvider
) -> None:
    mock.get(f"{BASE}/v1/generation/gen_123").respond(200, json=_accepted(status="COMPLETED"))
    with pytest.raises(MalformedResponse, match="data"):
        await sv.poll(_job())


@pytest.mark.parametrize(
    "body",
    [
        {"code": "content_policy_violation", "message": "blocked by safety"},
        {"error": {"code": "content_policy_violation", "message": "blocked by safety"}},
    ],
)
async def test_poll_failed_reads_code_and_message(
    mock: respx.MockRouter, sv: SkillsVideoProvider, body: dict[str, Any]
) -> None:
    mock.get(f"{BASE}/v1/generation/gen_123").respond(
        200, json=_accepted(status="FAILED", data=None, **body)
    )
    status = await sv.poll(_job())
    assert status.state is JobState.FAILED
    assert (status.error, status.error_code) == ("blocked by safety", "content_policy_violation")


@pytest.mark.parametrize(
    ("status", "headers", "body", "exc"),
    [
        (429, {"retry-after": "3"}, {"message": "slow down"}, RateLimited),
        (401, {}, {"message": "bad key"}, AuthError),
        (402, {}, {"error": {"code": "no_credits", "message": "top up"}}, InsufficientCredits),
        (400, {}, {"error": {"code": "invalid_prompt", "message": "empty"}}, InvalidRequest),
        (500, {}, {"message": "boom"}, ServerError),
    ],
)
async def test_http_errors_are_typed(
    mock: respx.MockRouter,
    sv: SkillsVideoProvider,
    status: int,
    headers: dict[str, str],
    body: dict[str, Any],
    exc: type[Exception],
) -> None:
    mock.post(SUBMIT).respond(status, headers=headers, json=body)
    with pytest.raises(exc) as info:
        await sv.submit(ImageRequest(prompt="a cat"), None, "k")
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 3
    assert KEY not in str(info.value)


# -- validation: refused before any request ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (ImageRequest(prompt="x", n=5), "n", "1-4"),
        (ImageRequest(prompt="x", quality="auto"), "quality", "low, medium, high"),
        (ImageRequest(prompt="x", size="5:4"), "size", "5:4"),
        (ImageRequest(prompt="x", size="1000x700"), "size", "10:7"),
        (ImageRequest(prompt="x", size="7680x4320"), "size", "4K"),
        (ImageRequest(prompt="x", size="auto"), "size", "auto"),
        (ImageRequest(prompt="x", background="transparent"), "background", "cannot honour"),
        (ImageRequest(prompt="x", output_compression=50), "output_compression", "cannot honour"),
        (ImageRequest(prompt="x", moderation="low"), "moderation", "cannot honour"),
        (ImageRequest(prompt="x", seed=3), "seed", "cannot honour"),
        (ImageRequest(prompt="x", extras={"style": "x"}), "extras.style", "extras"),
    ],
)
async def test_refusals_name_the_field_and_send_nothing(
    mock: respx.MockRouter,
    sv: SkillsVideoProvider,
    request_: ImageRequest,
    field: str,
    words: str,
) -> None:
    route = mock.post(SUBMIT).respond(200, json=_accepted())
    with pytest.raises(InvalidRequest) as info:
        await sv.submit(request_, None, "k")
    assert info.value.field == field
    assert words in str(info.value)
    assert route.call_count == 0 and len(mock.calls) == 0


def test_masks_and_both_input_kinds_are_offered() -> None:
    caps = SkillsVideoProvider.capabilities
    assert caps.mask and caps.input_kinds == {"url", "bytes"} and not caps.can_cancel


def test_missing_key_names_the_env_var(sv: SkillsVideoProvider) -> None:
    with pytest.raises(AuthError, match="SKILLS_VIDEO_API_KEY"):
        SkillsVideoProvider("  ")
    assert KEY not in repr(sv) and KEY not in str(vars(sv))
