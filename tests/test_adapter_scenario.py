"""Scenario adapter translation: asset uploads, generate bodies, job statuses, asset resolution.

Pure respx tests: no server, no Prefect. Every refusal is checked to send nothing.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Any

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
    OutputExpired,
    ProviderError,
    RateLimited,
    ServerError,
    TransportError,
)
from gptimg_flows.models import EditRequest, ImageRequest, InputImage, Job, JobState, OutputRef
from gptimg_flows.providers._http import failure_error
from gptimg_flows.providers.scenario import ScenarioProvider

KEY = "scn-key-0123456789"
SECRET = "scn-secret-abcdefghij"
URL = "https://api.cloud.scenario.com/v1"
GENERATE = "/generate/custom/model_openai-gpt-image-2"


def _image_bytes(w: int = 32, h: int = 32, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)).save(buf, fmt)
    return buf.getvalue()


def _input(
    w: int = 32, h: int = 32, fmt: str = "PNG", mode: str = "RGB", name: str = "in.png"
) -> InputImage:
    data = _image_bytes(w, h, fmt, mode)
    return InputImage(
        data=data,
        mime="image/png" if fmt == "PNG" else "image/jpeg",
        width=w,
        height=h,
        sha256=InputImage.digest(data),
        name=name,
        has_alpha=mode == "RGBA",
    )


def _mask(w: int = 32, h: int = 32) -> InputImage:
    return _input(w, h, "PNG", "RGBA", name="mask.png")


def _sent(route: respx.Route, i: int = -1) -> Any:
    return json.loads(route.calls[i].request.content)


def _job(job_id: str = "job_abc") -> Job:
    return Job(provider="scenario", model="model_openai-gpt-image-2", job_id=job_id, key="k", n=2)


def _job_answer(status: str, **extra: Any) -> dict[str, Any]:
    return {"job": {"jobId": "job_abc", "status": status, **extra}}


def _asset(asset_id: str, url: str, width: int = 1024, height: int = 1024) -> dict[str, Any]:
    return {
        "asset": {
            "id": asset_id,
            "url": url,
            "mimeType": "image/png",
            "metadata": {"width": width, "height": height},
        }
    }


@pytest.fixture
def mock() -> respx.MockRouter:
    """Routes answered through the provider's own `transport`: no sockets, no TLS setup."""
    return respx.MockRouter(base_url=URL, assert_all_called=False, assert_all_mocked=True)


@pytest.fixture
def sc(mock: respx.MockRouter) -> ScenarioProvider:
    return ScenarioProvider(KEY, SECRET, transport=httpx.MockTransport(mock.async_handler))


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "secret", "missing"),
    [
        ("", SECRET, "SCENARIO_SDK_API_KEY"),
        (KEY, " ", "SCENARIO_SDK_API_SECRET"),
        ("", "", "SCENARIO_SDK_API_KEY and SCENARIO_SDK_API_SECRET"),
    ],
)
def test_missing_credentials_are_an_auth_error_naming_the_env_vars(
    key: str, secret: str, missing: str
) -> None:
    with pytest.raises(AuthError, match=f"set {missing}") as info:
        ScenarioProvider(key, secret)
    assert SECRET not in str(info.value) and KEY not in str(info.value)


def test_repr_never_shows_credentials(sc: ScenarioProvider) -> None:
    text = f"{sc!r} {vars(sc)}"
    assert KEY not in text and SECRET not in text


def test_capabilities_refuse_fields_scenario_does_not_document() -> None:
    caps = ScenarioProvider.capabilities
    assert caps.fields == {"size", "resolution", "quality", "background"}
    assert caps.max_n == 4 and caps.mask and caps.can_cancel and not caps.synchronous
    assert caps.cost_unit == "cu" and caps.formats == () and caps.moderations == ()


# -- inputs ------------------------------------------------------------------------------------


async def test_upload_inputs_posts_each_image_and_the_mask_as_data_url_assets(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    ids = iter(["asset_img0", "asset_img1", "asset_mask"])
    route = mock.post("/assets").mock(
        side_effect=lambda request: httpx.Response(
            200, json=_asset(next(ids), "https://cdn.scenario.com/x")
        )
    )
    first, second, mask = _input(name="a.png"), _input(name="b.png"), _mask()
    req = EditRequest(prompt="edit", images=[b"a", b"b"], mask=b"m")
    prepared = await sc.upload_inputs(req, [first, second], mask)

    token = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert route.calls.last.request.headers["authorization"] == f"Basic {token}"
    bodies = sorted((_sent(route, i) for i in range(3)), key=lambda b: b["name"])
    assert bodies == [
        {"image": first.data_uri, "name": "a.png"},
        {"image": second.data_uri, "name": "b.png"},
        {"image": mask.data_uri, "name": "mask.png"},
    ]
    # Uploads run concurrently: ids follow the order answered, so map them back by name.
    by_name = {
        _sent(route, i)["name"]: f"asset_{n}" for i, n in enumerate(["img0", "img1", "mask"])
    }
    assert prepared.refs == [by_name["a.png"], by_name["b.png"]]
    assert prepared.mask_ref == by_name["mask.png"]
    assert prepared.digests == [first.sha256, second.sha256]
    assert prepared.images == [] and prepared.mask is None  # bytes stay with the assets


async def test_a_jpeg_first_image_is_uploaded_as_png_when_a_mask_is_given(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.post("/assets").respond(200, json=_asset("asset_1", "https://cdn/x"))
    jpeg = _input(fmt="JPEG", name="photo.jpg")
    prepared = await sc.upload_inputs(
        EditRequest(prompt="e", images=[b"a"], mask=b"m"), [jpeg], _mask()
    )
    names = sorted(_sent(route, i)["name"] for i in range(2))
    assert names == ["mask.png", "photo.png"]
    image_body = next(_sent(route, i) for i in range(2) if _sent(route, i)["name"] == "photo.png")
    assert image_body["image"].startswith("data:image/png;base64,")
    assert prepared.digests == [jpeg.sha256]


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (_input(mode="RGB", name="m.png"), "without alpha"),
        (_mask(64, 32), "mask is 64x32 but the first image is 32x32"),
    ],
)
async def test_bad_masks_are_refused_before_any_upload(
    mock: respx.MockRouter, sc: ScenarioProvider, mask: InputImage, match: str
) -> None:
    mock.route().respond(200, json=_asset("asset_1", "https://cdn/x"))
    with pytest.raises(InvalidRequest, match=match) as info:
        await sc.upload_inputs(EditRequest(prompt="e", images=[b"a"], mask=b"m"), [_input()], mask)
    assert info.value.field == "mask" and info.value.provider == "scenario"
    assert mock.calls.call_count == 0


async def test_upload_answer_without_asset_id_is_malformed(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.post("/assets").respond(200, json={"asset": {"url": "https://cdn/x"}})
    with pytest.raises(MalformedResponse, match=r"asset\.id"):
        await sc.upload_inputs(EditRequest(prompt="e", images=[b"a"]), [_input()], None)


async def test_a_failed_upload_raises_its_own_typed_error(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    answers = iter([httpx.Response(402, json={"error": "Not enough credits"})])
    mock.post("/assets").mock(
        side_effect=lambda request: next(
            answers, httpx.Response(200, json=_asset("asset_1", "https://cdn/x"))
        )
    )
    with pytest.raises(InsufficientCredits):  # not an ExceptionGroup
        await sc.upload_inputs(
            EditRequest(prompt="e", images=[b"a", b"b"]), [_input(), _input()], None
        )


# -- submit ------------------------------------------------------------------------------------


async def test_submit_sends_the_documented_generate_body(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.post(GENERATE).respond(200, json=_job_answer("queued"))
    req = ImageRequest(
        prompt="a lighthouse", n=3, size="1536x1024", quality="high", background="transparent"
    )
    job = await sc.submit(req, None, "key-1")
    assert _sent(route) == {
        "prompt": "a lighthouse",
        "numOutputs": 3,
        "width": 1536,
        "height": 1024,
        "quality": "high",
        "background": "transparent",
    }
    assert route.calls.last.request.headers["authorization"].startswith("Basic ")
    assert (job.job_id, job.key, job.n, job.provider) == ("job_abc", "key-1", 3, "scenario")
    assert job.model == "model_openai-gpt-image-2" and job.status is None


async def test_submit_with_only_prompt_leaves_defaults_to_scenario(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.post(GENERATE).respond(200, json=_job_answer("queued"))
    await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert _sent(route) == {"prompt": "hi", "numOutputs": 1}


async def test_ratio_and_resolution_are_sent_as_exact_pixels(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.post(GENERATE).respond(200, json=_job_answer("queued"))
    await sc.submit(ImageRequest(prompt="hi", size="9:16", resolution="2K"), None, "k")
    assert (_sent(route)["width"], _sent(route)["height"]) == (1152, 2048)


async def test_edit_submit_refers_to_uploaded_assets_and_mask(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    from gptimg_flows.providers.base import PreparedInputs

    route = mock.post(GENERATE).respond(200, json=_job_answer("queued"))
    inputs = PreparedInputs(refs=["asset_a", "asset_b"], mask_ref="asset_m", digests=["x", "y"])
    await sc.submit(EditRequest(prompt="edit", images=[b"a", b"b"], mask=b"m"), inputs, "k")
    assert _sent(route) == {
        "prompt": "edit",
        "numOutputs": 1,
        "referenceImages": ["asset_a", "asset_b"],
        "mask": "asset_m",
    }


@pytest.mark.parametrize(
    ("inputs", "field"),
    [(None, "images"), ({"refs": ["asset_a"]}, "mask")],
)
async def test_edit_without_uploaded_inputs_is_refused_before_sending(
    mock: respx.MockRouter, sc: ScenarioProvider, inputs: dict[str, Any] | None, field: str
) -> None:
    from gptimg_flows.providers.base import PreparedInputs

    route = mock.post(GENERATE).respond(200, json=_job_answer("queued"))
    prepared = PreparedInputs(**inputs) if inputs is not None else None
    with pytest.raises(InvalidRequest) as info:
        await sc.submit(EditRequest(prompt="e", images=[b"a"], mask=b"m"), prepared, "k")
    assert info.value.field == field and route.call_count == 0


@pytest.mark.parametrize(
    ("request_", "field", "match"),
    [
        (ImageRequest(prompt="x", output_format="png"), "output_format", "cannot honour"),
        (ImageRequest(prompt="x", output_compression=80), "output_compression", "cannot honour"),
        (ImageRequest(prompt="x", moderation="low"), "moderation", "cannot honour"),
        (ImageRequest(prompt="x", seed=1), "seed", "cannot honour"),
        (EditRequest(prompt="x", images=[b"a"], input_fidelity="high"), "input_fidelity", None),
        (ImageRequest(prompt="x", n=5), "n", "1-4"),
        (ImageRequest(prompt="x", size="auto"), "size", "explicit size"),
        (ImageRequest(prompt="x", size="1000x1000"), "size", "multiples of 16"),
        (ImageRequest(prompt="x", size="3072x768"), "size", "1:3 and 3:1"),
        (ImageRequest(prompt="x", size="3840x3840"), "size", "8,294,400"),
        (ImageRequest(prompt="x", extras={"aspectRatio": "16:9"}), "extras.aspectRatio", None),
    ],
)
async def test_invalid_requests_are_refused_naming_the_field_without_sending(
    mock: respx.MockRouter,
    sc: ScenarioProvider,
    request_: ImageRequest,
    field: str,
    match: str | None,
) -> None:
    mock.route().respond(200, json=_job_answer("queued"))
    with pytest.raises(InvalidRequest, match=match) as info:
        await sc.submit(request_, None, "k")
    assert info.value.field == field and info.value.provider == "scenario"
    assert mock.calls.call_count == 0


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "exc"),
    [
        (402, {"error": "Not enough credits"}, InsufficientCredits),
        (400, {"error": "Prompt was flagged", "code": "content_moderation"}, ContentRejected),
        (400, {"message": "prompt is required"}, InvalidRequest),
        (
            400,
            {"error": "numOutputs must be at most 4", "code": "invalid_parameter"},
            InvalidRequest,
        ),
        (401, {"error": "Unauthorized"}, AuthError),
        (403, {"message": "Forbidden"}, AuthError),
        (500, {"error": "Internal error"}, ServerError),
        (502, None, ServerError),
    ],
)
async def test_error_answers_map_to_typed_errors(
    mock: respx.MockRouter,
    sc: ScenarioProvider,
    status: int,
    body: dict[str, str] | None,
    exc: type[ProviderError],
) -> None:
    if body is None:
        mock.post(GENERATE).respond(status, html="<html><h1>502 Bad Gateway</h1></html>")
    else:
        mock.post(GENERATE).respond(status, json=body)
    with pytest.raises(exc) as info:
        await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert type(info.value) is exc and info.value.status_code == status


async def test_400_names_the_parameter(mock: respx.MockRouter, sc: ScenarioProvider) -> None:
    mock.post(GENERATE).respond(
        400, json={"error": "bad width", "code": "invalid_parameter", "parameter": "width"}
    )
    with pytest.raises(InvalidRequest) as info:
        await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert info.value.field == "width"


async def test_failed_job_reads_the_code_in_metadata_error(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/jobs/job_abc").respond(
        200,
        json=_job_answer(
            "failed",
            error="The prompt was refused",
            metadata={"error": {"code": "content_moderation", "message": "refused"}},
        ),
    )
    job = _job()
    status = await sc.poll(job)
    assert (status.error, status.error_code) == ("The prompt was refused", "content_moderation")
    assert isinstance(failure_error("scenario", job, status), ContentRejected)


async def test_429_carries_retry_after_even_with_a_code(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.post(GENERATE).respond(
        429, headers={"Retry-After": "12"}, json={"error": "Too many requests", "code": "rate"}
    )
    with pytest.raises(RateLimited) as info:
        await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert info.value.retry_after == pytest.approx(12.0)


async def test_error_on_a_job_call_names_the_job(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/jobs/job_abc").respond(404, json={"error": "Job not found", "code": "not_found"})
    with pytest.raises(InvalidRequest) as info:
        await sc.poll(_job())
    assert info.value.job_id == "job_abc" and "job job_abc" in str(info.value)


async def test_credentials_echoed_by_the_server_are_redacted(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.post(GENERATE).respond(401, json={"error": f"bad secret {SECRET} for key {KEY}"})
    with pytest.raises(AuthError) as info:
        await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert SECRET not in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize("answer", [{"job": {"status": "queued"}}, {"jobId": "job_abc"}, []])
async def test_submit_answer_without_job_id_is_malformed(
    mock: respx.MockRouter, sc: ScenarioProvider, answer: Any
) -> None:
    mock.post(GENERATE).respond(200, json=answer)
    with pytest.raises(MalformedResponse, match=r"job\.jobId"):
        await sc.submit(ImageRequest(prompt="hi"), None, "k")


async def test_connect_error_on_submit_was_not_sent(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.post(GENERATE).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransportError) as info:
        await sc.submit(ImageRequest(prompt="hi"), None, "k")
    assert info.value.request_sent is False


# -- polling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("queued", JobState.QUEUED),
        ("pending", JobState.QUEUED),
        ("warming-up", JobState.QUEUED),
        ("processing", JobState.RUNNING),
        ("in-progress", JobState.RUNNING),
        ("finalizing", JobState.RUNNING),
        ("success", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("failure", JobState.FAILED),
        ("canceled", JobState.CANCELED),
        ("IN_PROGRESS", JobState.RUNNING),
        ("something-new", JobState.RUNNING),
    ],
)
async def test_every_status_spelling_maps_to_our_state(
    mock: respx.MockRouter, sc: ScenarioProvider, raw: str, state: JobState
) -> None:
    extra = {"metadata": {"assetIds": ["asset_1"]}} if state is JobState.SUCCEEDED else {}
    mock.get("/jobs/job_abc").respond(200, json=_job_answer(raw, **extra))
    status = await sc.poll(_job())
    assert status.state is state and status.raw_status == raw and status.job_id == "job_abc"


async def test_running_job_reports_progress_and_cost(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/jobs/job_abc").respond(
        200, json=_job_answer("processing", progress=0.4, billing={"cuCost": 0})
    )
    status = await sc.poll(_job())
    assert status.progress == pytest.approx(0.4) and status.outputs == []
    assert status.cost == 0 and status.cost_unit == "cu"


async def test_successful_job_lists_asset_ids_and_compute_units(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/jobs/job_abc").respond(
        200,
        json=_job_answer(
            "success",
            progress=1,
            metadata={"assetIds": ["asset_1", "asset_2"]},
            billing={"cuCost": 10},
        ),
    )
    status = await sc.poll(_job())
    assert status.state is JobState.SUCCEEDED and status.progress == 1.0
    assert [(o.index, o.asset_id, o.url) for o in status.outputs] == [
        (0, "asset_1", None),
        (1, "asset_2", None),
    ]
    assert status.cost == 10.0 and status.cost_unit == "cu"


@pytest.mark.parametrize("metadata", [None, {}, {"assetIds": []}])
async def test_success_without_asset_ids_is_malformed(
    mock: respx.MockRouter, sc: ScenarioProvider, metadata: dict[str, Any] | None
) -> None:
    mock.get("/jobs/job_abc").respond(200, json=_job_answer("success", metadata=metadata))
    with pytest.raises(MalformedResponse) as info:
        await sc.poll(_job())
    assert info.value.job_id == "job_abc"


async def test_poll_answer_without_status_is_malformed(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/jobs/job_abc").respond(200, json={"job": {"jobId": "job_abc"}})
    with pytest.raises(MalformedResponse, match="status"):
        await sc.poll(_job())


@pytest.mark.parametrize(
    ("error", "exc"),
    [
        ("content_moderation: the prompt was flagged", ContentRejected),
        ({"message": "GPU fell over", "code": "internal"}, JobFailed),
        (None, JobFailed),
    ],
)
async def test_failed_job_carries_its_error_for_the_task_layer(
    mock: respx.MockRouter, sc: ScenarioProvider, error: Any, exc: type[ProviderError]
) -> None:
    extra = {"error": error} if error is not None else {}
    mock.get("/jobs/job_abc").respond(200, json=_job_answer("failure", **extra))
    job = _job()
    status = await sc.poll(job)
    assert status.state is JobState.FAILED and status.error
    assert isinstance(failure_error("scenario", job, status), exc)


@pytest.mark.parametrize(("raw", "fraction"), [(0.25, 0.25), (50, 0.5), ("x", None), (-1, 0.0)])
async def test_progress_is_a_fraction(
    mock: respx.MockRouter, sc: ScenarioProvider, raw: Any, fraction: float | None
) -> None:
    mock.get("/jobs/job_abc").respond(200, json=_job_answer("processing", progress=raw))
    assert (await sc.poll(_job())).progress == fraction


async def test_job_ids_are_quoted_as_one_path_segment(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.get(url__regex=r".*/jobs/.*").respond(200, json=_job_answer("queued"))
    await sc.poll(_job("job/../x"))
    assert route.calls.last.request.url.raw_path == b"/v1/jobs/job%2F..%2Fx"


# -- outputs and cancel ------------------------------------------------------------------------


async def test_resolve_outputs_turns_asset_ids_into_urls(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/assets/asset_1").respond(200, json=_asset("asset_1", "https://cdn/1.png", 1536))
    mock.get("/assets/asset_2").respond(200, json=_asset("asset_2", "https://cdn/2.png"))
    mock.get("/jobs/job_abc").respond(
        200, json=_job_answer("success", metadata={"assetIds": ["asset_1", "asset_2"]})
    )
    job = _job()
    refs = await sc.resolve_outputs(job, await sc.poll(job))
    assert [(r.index, r.asset_id, r.url, r.mime, r.width, r.height) for r in refs] == [
        (0, "asset_1", "https://cdn/1.png", "image/png", 1536, 1024),
        (1, "asset_2", "https://cdn/2.png", "image/png", 1024, 1024),
    ]


async def test_asset_answer_without_url_is_malformed(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    mock.get("/assets/asset_1").respond(200, json={"asset": {"id": "asset_1"}})
    with pytest.raises(MalformedResponse, match="url"):
        await sc.refresh_output(_job(), OutputRef(index=0, asset_id="asset_1"))


async def test_refresh_output_gets_a_fresh_url(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    route = mock.get("/assets/asset_1").respond(200, json=_asset("asset_1", "https://cdn/new"))
    old = OutputRef(index=3, asset_id="asset_1", url="https://cdn/old", mime="image/png")
    fresh = await sc.refresh_output(_job(), old)
    assert route.call_count == 1
    assert (fresh.index, fresh.asset_id, fresh.url) == (3, "asset_1", "https://cdn/new")


async def test_refresh_without_asset_id_cannot_be_done(
    mock: respx.MockRouter, sc: ScenarioProvider
) -> None:
    answer = _job_answer("success", metadata={"assetIds": ["asset_1"]})
    mock.get("/jobs/job_abc").respond(200, json=answer)
    with pytest.raises(OutputExpired):
        await sc.refresh_output(_job(), OutputRef(index=0, url="https://cdn/x"))


async def test_cancel_posts_the_cancel_action(mock: respx.MockRouter, sc: ScenarioProvider) -> None:
    route = mock.post("/jobs/job_abc/action").respond(200, json=_job_answer("canceled"))
    await sc.cancel(_job())
    assert _sent(route) == {"action": "cancel"}


async def test_cancel_of_a_finished_job_is_logged_not_raised(
    mock: respx.MockRouter, sc: ScenarioProvider, caplog: pytest.LogCaptureFixture
) -> None:
    mock.post("/jobs/job_abc/action").respond(400, json={"error": "Job already finished"})
    with caplog.at_level(logging.WARNING, logger="gptimg_flows.providers.scenario"):
        await sc.cancel(_job())
    assert "did not cancel job job_abc" in caplog.text


async def test_cancel_server_error_is_raised(mock: respx.MockRouter, sc: ScenarioProvider) -> None:
    mock.post("/jobs/job_abc/action").respond(503, json={"error": "busy"})
    with pytest.raises(ServerError):
        await sc.cancel(_job())
