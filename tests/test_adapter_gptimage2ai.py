"""gptimage2.ai adapter translation: create bodies, 202/200 polling, cost policy, errors.

Pure respx tests: no server, no Prefect. Every refusal is checked to send nothing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from gptimg_flows.errors import (
    AuthError,
    InsufficientCredits,
    InvalidRequest,
    MalformedResponse,
    RateLimited,
    ServerError,
)
from gptimg_flows.models import EditRequest, ImageRequest, InputImage, Job, JobState
from gptimg_flows.providers.gptimage2ai import GptImage2AIProvider

KEY = "g2-secret-key-789"
BASE = "https://gptimage2.ai/api"
JOB_ID = "8b93b17d-6ec7-4bd7-96a2-b06f69e8b862"
POLL = f"{BASE}/generate/{JOB_ID}"
BALANCE = {"paidCredits": 490, "totalImages": 49}


def _input(url: str | None) -> InputImage:
    data = b"\x89PNG fake bytes"
    return InputImage(
        data=data, mime="image/png", width=8, height=8, sha256=InputImage.digest(data), url=url
    )


@pytest.fixture
def mock() -> respx.MockRouter:
    """Routes answered through the provider's own `transport`: no sockets, no TLS setup."""
    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


def _transport(router: respx.MockRouter) -> httpx.MockTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
def g2(mock: respx.MockRouter) -> GptImage2AIProvider:
    return GptImage2AIProvider(KEY, transport=_transport(mock))


def _job(n: int = 2) -> Job:
    return Job(provider="gptimage2ai", model="gpt-image-2", job_id=JOB_ID, key="k", n=n)


# -- submit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 202])
async def test_text_to_image_body_as_sent(
    mock: respx.MockRouter, g2: GptImage2AIProvider, http_status: int
) -> None:
    route = mock.post(f"{BASE}/generate").respond(
        http_status, json={"jobId": JOB_ID, "status": "pending", "balance": BALANCE}
    )
    req = ImageRequest(
        prompt="espresso cup",
        n=2,
        size="16:9",
        extras={
            "style": "studio-product",
            "lighting": "soft",
            "camera": "50mm",
            "negative": "text",
        },
    )
    job = await g2.submit(req, None, "key-9")
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == {
        "mode": "text-to-image",
        "prompt": "espresso cup",
        "ratio": "16:9",
        "count": 2,
        "style": "studio-product",
        "lighting": "soft",
        "camera": "50mm",
        "negative": "text",
    }
    assert (job.job_id, job.key, job.n, job.status) == (JOB_ID, "key-9", 2, None)


async def test_pixel_size_is_sent_as_its_ratio_and_unset_size_sends_none(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    route = mock.post(f"{BASE}/generate").respond(200, json={"jobId": JOB_ID, "status": "pending"})
    await g2.submit(ImageRequest(prompt="cup", size="1024x768"), None, "k")
    await g2.submit(ImageRequest(prompt="cup"), None, "k2")
    assert json.loads(route.calls[0].request.content)["ratio"] == "4:3"
    assert json.loads(route.calls[1].request.content) == {
        "mode": "text-to-image",
        "prompt": "cup",
        "count": 1,
    }


async def test_image_to_image_sends_reference_urls(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    route = mock.post(f"{BASE}/generate").respond(200, json={"jobId": JOB_ID, "status": "pending"})
    req = EditRequest(prompt="keep the product", images=[b"a", b"b"], size="1:1")
    images = [_input("https://cdn.example.com/s.png"), _input("https://cdn.example.com/p.png")]
    prepared = await g2.upload_inputs(req, images, None)
    assert prepared.refs == ["https://cdn.example.com/s.png", "https://cdn.example.com/p.png"]
    assert prepared.digests == [i.sha256 for i in images]
    await g2.submit(req, prepared, "k")
    body = json.loads(route.calls.last.request.content)
    assert body["mode"] == "image-to-image" and body["imageUrls"] == prepared.refs


@pytest.mark.parametrize("url", [None, "s3://bucket/a.png", "file:///tmp/a.png"])
async def test_inputs_without_an_http_url_are_refused_with_advice(
    g2: GptImage2AIProvider, url: str | None
) -> None:
    req = EditRequest(prompt="x", images=[b"a"])
    with pytest.raises(InvalidRequest) as info:
        await g2.upload_inputs(req, [_input(url)], None)
    assert info.value.field == "images[0]"
    assert "URL" in str(info.value) and "sign" in str(info.value)


async def test_submit_without_job_id_is_malformed(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    mock.post(f"{BASE}/generate").respond(200, json={"status": "pending"})
    with pytest.raises(MalformedResponse, match="jobId"):
        await g2.submit(ImageRequest(prompt="cup"), None, "k")


# -- polling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "body", "state"),
    [
        (202, {"jobId": JOB_ID, "status": "pending", "balance": BALANCE}, JobState.QUEUED),
        (202, {"jobId": JOB_ID, "status": "running"}, JobState.RUNNING),
        (202, {"jobId": JOB_ID, "status": "RUNNING"}, JobState.RUNNING),
        (202, {"jobId": JOB_ID}, JobState.RUNNING),
        (200, {"jobId": JOB_ID, "status": "pending"}, JobState.QUEUED),
    ],
)
async def test_poll_pending_and_running(
    mock: respx.MockRouter,
    g2: GptImage2AIProvider,
    http_status: int,
    body: dict[str, Any],
    state: JobState,
) -> None:
    route = mock.get(POLL).respond(http_status, json=body)
    status = await g2.poll(_job())
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert status.state is state and status.outputs == [] and status.cost is None


@pytest.mark.parametrize("raw", ["succeeded", "SUCCEEDED", "success"])
async def test_poll_succeeded_reads_results_and_charges_ten_credits_an_image(
    mock: respx.MockRouter, g2: GptImage2AIProvider, raw: str
) -> None:
    results = [
        {
            "imageUrl": f"https://file.gptimage2.ai/generated/{i}.png",
            "seed": str(i + 1),
            "finalPrompt": "cup",
        }
        for i in range(2)
    ]
    mock.get(POLL).respond(
        200, json={"jobId": JOB_ID, "status": raw, "results": results, "balance": BALANCE}
    )
    status = await g2.poll(_job())
    assert status.state is JobState.SUCCEEDED
    assert [(o.index, o.url, o.seed) for o in status.outputs] == [
        (0, "https://file.gptimage2.ai/generated/0.png", "1"),
        (1, "https://file.gptimage2.ai/generated/1.png", "2"),
    ]
    assert (status.cost, status.cost_unit) == (20.0, "credits")


async def test_poll_failed_is_free_and_keeps_the_error_code(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    mock.get(POLL).respond(200, json={"jobId": JOB_ID, "status": "failed", "error": "moderation"})
    status = await g2.poll(_job())
    assert status.state is JobState.FAILED
    assert (status.error, status.error_code, status.cost) == ("moderation", "moderation", 0.0)


async def test_poll_succeeded_without_results_is_malformed(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    mock.get(POLL).respond(200, json={"jobId": JOB_ID, "status": "succeeded"})
    with pytest.raises(MalformedResponse, match="results"):
        await g2.poll(_job())


async def test_poll_200_without_status_is_malformed(
    mock: respx.MockRouter, g2: GptImage2AIProvider
) -> None:
    mock.get(POLL).respond(200, json={"jobId": JOB_ID})
    with pytest.raises(MalformedResponse, match="status"):
        await g2.poll(_job())


@pytest.mark.parametrize(
    ("status", "headers", "error", "exc"),
    [
        (400, {}, "prompt_required", InvalidRequest),
        (401, {}, "unauthorized", AuthError),
        (402, {}, "insufficient_credits", InsufficientCredits),
        (429, {"retry-after": "12"}, "rate_limited", RateLimited),
        (500, {}, "image_generation_failed", ServerError),
    ],
)
async def test_http_errors_are_typed(
    mock: respx.MockRouter,
    g2: GptImage2AIProvider,
    status: int,
    headers: dict[str, str],
    error: str,
    exc: type[Exception],
) -> None:
    mock.post(f"{BASE}/generate").respond(status, headers=headers, json={"error": error})
    mock.get(POLL).respond(status, headers=headers, json={"error": error})
    for call in (g2.submit(ImageRequest(prompt="cup"), None, "k"), g2.poll(_job())):
        with pytest.raises(exc) as info:
            await call
        assert error in str(info.value) and KEY not in str(info.value)
        if isinstance(info.value, RateLimited):
            assert info.value.retry_after == 12


# -- validation: refused before any request ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (ImageRequest(prompt="x", size="17:9"), "size", "17:9"),
        (ImageRequest(prompt="x", size="3:2"), "size", "1:1, 16:9, 9:16, 4:3, 3:4"),
        (ImageRequest(prompt="x", size="auto"), "size", "auto"),
        (ImageRequest(prompt="x", n=5), "n", "1-4"),
        (ImageRequest(prompt="x", quality="high"), "quality", "cannot honour"),
        (ImageRequest(prompt="x", background="opaque"), "background", "cannot honour"),
        (ImageRequest(prompt="x", output_format="png"), "output_format", "cannot honour"),
        (ImageRequest(prompt="x", output_compression=90), "output_compression", "cannot honour"),
        (ImageRequest(prompt="x", moderation="low"), "moderation", "cannot honour"),
        (ImageRequest(prompt="x", size="1:1", resolution="2K"), "resolution", "cannot honour"),
        (ImageRequest(prompt="x", seed=1), "seed", "cannot honour"),
        (ImageRequest(prompt="x", extras={"mood": "calm"}), "extras.mood", "camera"),
        (ImageRequest(prompt="x", extras={"style": 3}), "extras.style", "string"),
        (EditRequest(prompt="x", images=["https://a/b.png"], mask=b"m"), "mask", "mask"),
    ],
)
async def test_refusals_name_the_field_and_send_nothing(
    mock: respx.MockRouter,
    g2: GptImage2AIProvider,
    request_: ImageRequest,
    field: str,
    words: str,
) -> None:
    route = mock.post(f"{BASE}/generate").respond(200, json={"jobId": JOB_ID, "status": "pending"})
    with pytest.raises(InvalidRequest) as info:
        await g2.submit(request_, None, "k")
    assert info.value.field == field
    assert words in str(info.value)
    assert route.call_count == 0 and len(mock.calls) == 0


def test_only_url_inputs_and_no_cancel() -> None:
    caps = GptImage2AIProvider.capabilities
    assert caps.input_kinds == {"url"} and not caps.mask and not caps.can_cancel
    assert caps.extras == {"style", "lighting", "camera", "negative"}


def test_missing_key_names_the_env_var(g2: GptImage2AIProvider) -> None:
    with pytest.raises(AuthError, match="GPTIMAGE2_API_KEY"):
        GptImage2AIProvider("")
    assert KEY not in repr(g2) and KEY not in str(vars(g2))
