"""Runware adapter translation: task bodies as sent, getResponse answers parsed, errors mapped.

Pure respx tests: no server, no Prefect. Every refusal is checked to send nothing.
"""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
import respx
from PIL import Image

from gptimg_flows.errors import (
    AuthError,
    ContentRejected,
    InsufficientCredits,
    InvalidRequest,
    MalformedResponse,
    OutputExpired,
    RateLimited,
    ServerError,
)
from gptimg_flows.models import EditRequest, ImageRequest, InputImage, Job, JobState, OutputRef
from gptimg_flows.providers.runware import TASK_NAMESPACE, RunwareProvider, task_uuid_for

KEY = "rw-secret-key-123"
URL = "https://api.runware.ai/v1"


def _png(w: int = 32, h: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _input(url: str | None = None) -> InputImage:
    data = _png()
    return InputImage(
        data=data, mime="image/png", width=32, height=32, sha256=InputImage.digest(data), url=url
    )


def _sent(route: respx.Route, i: int = -1) -> list[dict[str, object]]:
    body = json.loads(route.calls[i].request.content)
    assert isinstance(body, list), body
    return body


@pytest.fixture
def mock() -> respx.MockRouter:
    """Routes answered through the provider's own `transport`: no sockets, no TLS setup."""
    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


def _transport(router: respx.MockRouter) -> httpx.MockTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
def rw(mock: respx.MockRouter) -> RunwareProvider:
    return RunwareProvider(KEY, transport=_transport(mock))


def _job(rw: RunwareProvider, key: str = "k1", n: int = 2) -> Job:
    tid = task_uuid_for(key)
    return Job(
        provider="runware",
        model=rw.model,
        job_id=tid,
        key=key,
        n=n,
        handle={"taskUUID": tid, "numberResults": n, "outputFormat": "PNG"},
    )


# -- submit ------------------------------------------------------------------------------------


async def test_submit_sends_one_async_image_inference_task_with_deterministic_uuid(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    tid = str(uuid.uuid5(TASK_NAMESPACE, "key-A"))
    route = mock.post(URL).respond(
        200,
        json={"data": [{"taskType": "imageInference", "taskUUID": tid, "status": "processing"}]},
    )
    job = await rw.submit(ImageRequest(prompt="a red fox", n=2, size="1536x1024"), None, "key-A")

    assert route.calls.last.request.url == URL  # the base URL itself, no trailing slash
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert _sent(route) == [
        {
            "taskType": "imageInference",
            "taskUUID": tid,
            "model": "openai:gpt-image@2",
            "positivePrompt": "a red fox",
            "width": 1536,
            "height": 1024,
            "numberResults": 2,
            "outputType": "URL",
            "deliveryMethod": "async",
            "includeCost": True,
        }
    ]
    assert job.job_id == tid and job.handle["taskUUID"] == tid
    assert job.status is None and job.n == 2 and job.key == "key-A"


def test_task_uuid_is_stable_per_key_and_differs_between_keys() -> None:
    assert task_uuid_for("same") == task_uuid_for("same")
    assert task_uuid_for("same") != task_uuid_for("other")
    assert uuid.UUID(task_uuid_for("same")).version == 5


async def test_submit_maps_format_compression_quality_and_moderation(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    route = mock.post(URL).respond(200, json={"data": []})
    req = ImageRequest(
        prompt="poster",
        size="16:9",
        resolution="2K",
        quality="high",
        moderation="low",
        output_format="jpeg",
        output_compression=80,
        background="auto",
    )
    await rw.submit(req, None, "k")
    task = _sent(route)[0]
    assert (task["width"], task["height"]) == (2048, 1152)
    assert task["outputFormat"] == "JPG"
    assert task["outputQuality"] == 80
    assert task["providerSettings"] == {"openai": {"quality": "high", "moderation": "low"}}
    assert "background" not in task


async def test_unset_size_is_sent_as_1024_square(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    route = mock.post(URL).respond(200, json={"data": []})
    await rw.submit(ImageRequest(prompt="hi"), None, "k")
    task = _sent(route)[0]
    assert (task["width"], task["height"]) == (1024, 1024)
    assert "outputFormat" not in task and "providerSettings" not in task


async def test_edit_sends_references_as_data_uris_or_urls(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    route = mock.post(URL).respond(200, json={"data": []})
    req = EditRequest(prompt="make it blue", images=[b"x", b"y"])
    local, remote = _input(), _input("https://cdn.example.com/a.png")
    prepared = await rw.upload_inputs(req, [local, remote], None)
    assert prepared.refs[0].startswith("data:image/png;base64,")
    assert prepared.refs[1] == "https://cdn.example.com/a.png"
    assert prepared.digests == [local.sha256, remote.sha256]
    await rw.submit(req, prepared, "k")
    assert _sent(route)[0]["inputs"] == {"referenceImages": prepared.refs}


async def test_sync_delivery_returns_a_finished_job(mock: respx.MockRouter) -> None:
    rw = RunwareProvider(KEY, delivery="sync", transport=_transport(mock))
    tid = task_uuid_for("k")
    route = mock.post(URL).respond(
        200,
        json={
            "data": [
                {
                    "taskType": "imageInference",
                    "taskUUID": tid,
                    "imageUUID": "i1",
                    "imageURL": "https://im.runware.ai/a.png",
                    "seed": 11,
                    "cost": 0.04,
                },
            ]
        },
    )
    job = await rw.submit(ImageRequest(prompt="hi", output_format="png"), None, "k")
    assert _sent(route)[0]["deliveryMethod"] == "sync"
    assert job.status is not None and job.status.state is JobState.SUCCEEDED
    out = job.status.outputs[0]
    assert (out.url, out.seed, out.mime) == ("https://im.runware.ai/a.png", "11", "image/png")
    assert job.status.cost == pytest.approx(0.04) and job.status.cost_unit == "usd"


async def test_duplicate_task_uuid_returns_the_existing_job_to_poll(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    tid = task_uuid_for("k")
    route = mock.post(URL).respond(
        400,
        json={"errors": [{"code": "duplicateTaskUUID", "message": "exists", "taskUUID": tid}]},
    )
    job = await rw.submit(ImageRequest(prompt="hi", n=3), None, "k")
    assert route.call_count == 1
    assert job.job_id == tid and job.status is None and job.handle["numberResults"] == 3


@pytest.mark.parametrize(
    ("status", "error", "exc", "field"),
    [
        (200, {"code": "insufficientCredits", "message": "top up"}, InsufficientCredits, None),
        (400, {"code": "insufficientCredits", "message": "top up"}, InsufficientCredits, None),
        (200, {"code": "contentModeration", "message": "blocked"}, ContentRejected, None),
        (
            200,
            {"code": "invalidWidth", "message": "bad width", "parameter": "width"},
            InvalidRequest,
            "width",
        ),
        (
            400,
            {"code": "invalidModel", "message": "no", "parameter": "model"},
            InvalidRequest,
            "model",
        ),
    ],
)
async def test_errors_in_the_submit_body_become_typed_errors(
    mock: respx.MockRouter,
    rw: RunwareProvider,
    status: int,
    error: dict[str, str],
    exc: type[Exception],
    field: str | None,
) -> None:
    mock.post(URL).respond(status, json={"errors": [error]})
    with pytest.raises(exc) as info:
        await rw.submit(ImageRequest(prompt="hi"), None, "k")
    assert getattr(info.value, "field", None) == field
    assert error["message"] in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("status", "headers", "exc"),
    [
        (429, {"retry-after": "7"}, RateLimited),
        (401, {}, AuthError),
        (402, {}, InsufficientCredits),
        (503, {}, ServerError),
    ],
)
async def test_http_errors_are_typed(
    mock: respx.MockRouter,
    rw: RunwareProvider,
    status: int,
    headers: dict[str, str],
    exc: type[Exception],
) -> None:
    mock.post(URL).respond(
        status, headers=headers, json={"errors": [{"code": "x", "message": "nope"}]}
    )
    with pytest.raises(exc) as info:
        await rw.submit(ImageRequest(prompt="hi"), None, "k")
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 7
    assert KEY not in str(info.value) and KEY not in repr(rw)


async def test_answer_without_data_is_malformed(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    mock.post(URL).respond(200, json={"ok": True})
    with pytest.raises(MalformedResponse):
        await rw.submit(ImageRequest(prompt="hi"), None, "k")


# -- polling -----------------------------------------------------------------------------------


async def test_poll_sends_get_response_and_reads_processing(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    job = _job(rw)
    tid = job.job_id
    route = mock.post(URL).respond(
        200,
        json={"data": [{"taskType": "imageInference", "taskUUID": tid, "status": "processing"}]},
    )
    status = await rw.poll(job)
    assert _sent(route) == [{"taskType": "getResponse", "taskUUID": tid}]
    assert status.state is JobState.RUNNING and status.outputs == []


async def test_poll_success_items_give_outputs_seeds_and_summed_cost(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    job = _job(rw)
    tid = job.job_id
    items = [
        {
            "taskType": "imageInference",
            "taskUUID": tid,
            "imageUUID": f"i{i}",
            "imageURL": f"https://im.runware.ai/{i}.png",
            "seed": 100 + i,
            "cost": 0.04,
            "status": "success",
        }
        for i in range(2)
    ]
    mock.post(URL).respond(200, json={"data": items})
    status = await rw.poll(job)
    assert status.state is JobState.SUCCEEDED
    assert [o.url for o in status.outputs] == [
        "https://im.runware.ai/0.png",
        "https://im.runware.ai/1.png",
    ]
    assert [o.seed for o in status.outputs] == ["100", "101"]
    assert [o.index for o in status.outputs] == [0, 1]
    assert status.cost == pytest.approx(0.08) and status.cost_unit == "usd"


@pytest.mark.parametrize("reissued", [True, False])
async def test_an_expired_url_is_asked_for_again_and_lost_only_if_the_api_repeats_it(
    mock: respx.MockRouter, rw: RunwareProvider, reissued: bool
) -> None:
    job = _job(rw, n=1)
    old = "https://im.runware.ai/0.png?sig=old"
    new = "https://im.runware.ai/0.png?sig=new" if reissued else old
    item = {
        "taskType": "imageInference",
        "taskUUID": job.job_id,
        "imageUUID": "i0",
        "imageURL": new,
        "status": "success",
    }
    mock.post(URL).respond(200, json={"data": [item]})
    if reissued:
        fresh = await rw.refresh_output(job, OutputRef(index=0, url=old))
        assert fresh.url == new
    else:
        with pytest.raises(OutputExpired, match="cannot re-issue"):
            await rw.refresh_output(job, OutputRef(index=0, url=old))


async def test_poll_with_some_results_still_processing_is_running(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    job = _job(rw)
    tid = job.job_id
    mock.post(URL).respond(
        200,
        json={
            "data": [
                {"taskUUID": tid, "imageURL": "https://im/0.png", "status": "success"},
                {"taskUUID": tid, "status": "processing"},
            ]
        },
    )
    status = await rw.poll(job)
    assert status.state is JobState.RUNNING and status.progress == 0.5


@pytest.mark.parametrize("http_status", [200, 400])
async def test_poll_errors_mean_a_failed_job(
    mock: respx.MockRouter, rw: RunwareProvider, http_status: int
) -> None:
    job = _job(rw)
    mock.post(URL).respond(
        http_status,
        json={
            "errors": [{"code": "contentModeration", "message": "flagged", "taskUUID": job.job_id}]
        },
    )
    status = await rw.poll(job)
    assert status.state is JobState.FAILED
    assert (status.error, status.error_code) == ("flagged", "contentModeration")


async def test_poll_error_item_means_a_failed_job(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    job = _job(rw, n=1)
    mock.post(URL).respond(
        200, json={"data": [{"taskUUID": job.job_id, "status": "error", "message": "upstream"}]}
    )
    status = await rw.poll(job)
    assert status.state is JobState.FAILED and status.error == "upstream"


async def test_find_job_is_none_for_an_unknown_task_and_a_status_otherwise(
    mock: respx.MockRouter, rw: RunwareProvider
) -> None:
    probe = Job(provider="runware", model=rw.model, job_id="", key="lost-key")
    tid = task_uuid_for("lost-key")
    route = mock.post(URL)
    route.side_effect = [
        httpx.Response(
            400, json={"errors": [{"code": "taskNotFound", "message": "?", "taskUUID": tid}]}
        ),
        httpx.Response(200, json={"data": [{"taskUUID": tid, "status": "processing"}]}),
    ]
    assert await rw.find_job(probe) is None
    found = await rw.find_job(probe)
    assert found is not None and found.job_id == tid and found.state is JobState.RUNNING
    assert [_sent(route, i)[0]["taskUUID"] for i in range(2)] == [tid, tid]


# -- validation: refused before any request ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (ImageRequest(prompt="xx", size="1000x1000"), "size", "multiples of 16"),
        (ImageRequest(prompt="xx", size="4000x2000"), "size", "3840"),
        (ImageRequest(prompt="xx", size="auto"), "size", "explicit size"),
        (ImageRequest(prompt="x"), "prompt", "2-32000"),
        (ImageRequest(prompt="xx", background="transparent"), "background", "background"),
        (ImageRequest(prompt="xx", background="opaque"), "background", "jpeg"),
        (ImageRequest(prompt="xx", output_compression=10), "output_compression", "20-99"),
        (ImageRequest(prompt="xx", output_compression=100), "output_compression", "20-99"),
        (ImageRequest(prompt="xx", seed=1), "seed", "cannot honour"),
        (ImageRequest(prompt="xx", extras={"style": "x"}), "extras.style", "extras"),
        (EditRequest(prompt="xx", images=[b"a"], mask=b"m"), "mask", "mask"),
        (
            EditRequest(prompt="xx", images=[b"a"], input_fidelity="high"),
            "input_fidelity",
            "input_fidelity",
        ),
    ],
)
async def test_refusals_name_the_field_and_send_nothing(
    mock: respx.MockRouter,
    rw: RunwareProvider,
    request_: ImageRequest,
    field: str,
    words: str,
) -> None:
    route = mock.post(URL).respond(200, json={"data": []})
    with pytest.raises(InvalidRequest) as info:
        await rw.submit(request_, None, "k")
    assert info.value.field == field
    assert words in str(info.value)
    assert route.call_count == 0 and len(mock.calls) == 0


async def test_upload_refuses_a_mask(rw: RunwareProvider) -> None:
    with pytest.raises(InvalidRequest) as info:
        await rw.upload_inputs(EditRequest(prompt="xx", images=[b"a"]), [_input()], _input())
    assert info.value.field == "mask"


def test_missing_key_names_the_env_var(rw: RunwareProvider) -> None:
    with pytest.raises(AuthError, match="RUNWARE_API_KEY"):
        RunwareProvider("")
    assert KEY not in repr(rw) and KEY not in str(vars(rw))
