"""The provider emulator over real HTTP: happy paths, auth, faults, expiry, limits, credits.

Every test talks to the session's emulator subprocess with raw httpx, as an adapter would.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from gptimg_flows.spend.prices import usage_cost
from gptimg_flows.testing import EMULATOR_KEYS, EmulatorClient, EmulatorConfig, EmulatorProcess
from gptimg_flows.testing.routes_openai import usage_for

SCENARIO_MODEL = "/generate/custom/model_openai-gpt-image-2"
RED = (200, 30, 30, 255)


# -- helpers ------------------------------------------------------------------------------------


def auth(provider: str, wrong: bool = False) -> dict[str, str]:
    key = EMULATOR_KEYS[provider]
    if isinstance(key, tuple):
        secret = f"{key[0]}:{'nope' if wrong else key[1]}"
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
    return {"Authorization": f"Bearer {'nope' if wrong else key}"}


@pytest.fixture
def http(emulator: EmulatorClient) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        yield client


def png(size: tuple[int, int] = (64, 64), colour: tuple[int, ...] = RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, "PNG")
    return buf.getvalue()


def left_half_mask(size: tuple[int, int] = (64, 64)) -> bytes:
    """Opaque (keep) everywhere except a transparent (edit) left half."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def assert_mask_applied(data: bytes) -> None:
    """Right half kept pixel-exactly, left half repainted."""
    img = image(data).convert("RGBA")
    w, h = img.size
    kept = img.crop((w // 2, 0, w, h))
    assert [c for _, c in kept.getcolors(1 << 16) or []] == [RED]
    assert [c for _, c in img.crop((0, 0, w // 2, h)).getcolors(1 << 16) or []] != [RED]


def runware_task(**overrides: Any) -> dict[str, Any]:
    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "openai:gpt-image@2",
        "positivePrompt": "a lighthouse at dusk",
        "width": 64,
        "height": 64,
        "numberResults": 1,
        "outputType": "URL",
        "outputFormat": "PNG",
        "deliveryMethod": "async",
        "includeCost": True,
    }
    return task | overrides


def wait_runware(http: httpx.Client, emu: EmulatorClient, tid: str) -> list[dict[str, Any]]:
    url = emu.base_url("runware")
    for _ in range(200):
        r = http.post(
            url, json=[{"taskType": "getResponse", "taskUUID": tid}], headers=auth("runware")
        )
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["data"]
        if items and items[0]["status"] != "processing":
            return items
        time.sleep(0.02)
    raise AssertionError("runware task never finished")


def gpt2_submit(http: httpx.Client, emu: EmulatorClient, **body: Any) -> httpx.Response:
    return http.post(
        emu.base_url("gptimage2ai") + "/generate",
        json={"prompt": "a ceramic cup"} | body,
        headers=auth("gptimage2ai"),
    )


def gpt2_wait(http: httpx.Client, emu: EmulatorClient, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        r = http.get(
            emu.base_url("gptimage2ai") + f"/generate/{job_id}", headers=auth("gptimage2ai")
        )
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            return body
        assert r.status_code == 202 and r.json()["status"] in ("pending", "running")
        time.sleep(0.02)
    raise AssertionError("gptimage2ai job never finished")


def scenario_submit(http: httpx.Client, emu: EmulatorClient, **body: Any) -> httpx.Response:
    return http.post(
        emu.base_url("scenario") + SCENARIO_MODEL,
        json={"prompt": "a fox", "width": 64, "height": 64} | body,
        headers=auth("scenario"),
    )


def scenario_wait(
    http: httpx.Client, emu: EmulatorClient, job_id: str
) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    for _ in range(300):
        r = http.get(emu.base_url("scenario") + f"/jobs/{job_id}", headers=auth("scenario"))
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()["job"]
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in ("success", "failure", "failed", "canceled"):
            return job, seen
        time.sleep(0.01)
    raise AssertionError("scenario job never finished")


def scenario_asset_url(http: httpx.Client, emu: EmulatorClient, asset_id: str) -> str:
    r = http.get(emu.base_url("scenario") + f"/assets/{asset_id}", headers=auth("scenario"))
    assert r.status_code == 200, r.text
    url: str = r.json()["asset"]["url"]
    return url


# -- happy paths --------------------------------------------------------------------------------


def test_openai_generation_returns_real_images_and_bills_the_tokens_it_reports(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.05)
    r = http.post(
        emulator.base_url("openai") + "/images/generations",
        json={
            "model": "gpt-image-2",
            "prompt": "a fox",
            "n": 2,
            "size": "64x48",
            "quality": "low",
            "output_format": "jpeg",
        },
        headers=auth("openai") | {"Idempotency-Key": "k-1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "64x48" and body["output_format"] == "jpeg" and body["usage"]
    for item in body["data"]:
        img = image(base64.b64decode(item["b64_json"]))
        assert (img.format, img.size) == ("JPEG", (64, 48))
    ledger = emulator.ledger()
    assert body["usage"] == usage_for("a fox", 64, 48, "low", images=0, n=2)
    assert ledger["credits"]["openai"] == pytest.approx(usage_cost(body["usage"]))
    [sub] = ledger["submissions"]
    assert (sub["provider"], sub["n"], sub["key"]) == ("openai", 2, "k-1")
    assert ledger["requests"]["openai"]["submit"] == 1


def test_openai_edit_applies_the_mask_and_checks_its_size(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.05)
    url = emulator.base_url("openai") + "/images/edits"
    fields = {"model": "gpt-image-2", "prompt": "paint a sun", "n": "1"}
    r = http.post(
        url,
        data=fields,
        headers=auth("openai"),
        files=[
            ("image[]", ("a.png", png(), "image/png")),
            ("mask", ("m.png", left_half_mask(), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    out = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert image(out).size == (64, 64)
    assert_mask_applied(out)
    r = http.post(
        url,
        data=fields,
        headers=auth("openai"),
        files=[
            ("image", ("a.png", png(), "image/png")),
            ("mask", ("m.png", left_half_mask((32, 32)), "image/png")),
        ],
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "mask"
    # only the first edit was billed: the tokens its answer reported, at gpt-image-2's prices
    first_usage = usage_for("paint a sun", 64, 64, "auto", images=1)
    assert emulator.ledger()["credits"]["openai"] == pytest.approx(usage_cost(first_usage))


def test_scenario_edit_walks_sdk_statuses_and_applies_the_mask(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.3)
    base = emulator.base_url("scenario")
    ids = []
    for data in (png(), left_half_mask()):
        r = http.post(
            base + "/assets",
            json={"image": data_uri(data), "name": "in.png"},
            headers=auth("scenario"),
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["asset"]["id"])
    r = http.post(
        base + SCENARIO_MODEL,
        headers=auth("scenario"),
        json={
            "prompt": "paint a sun",
            "numOutputs": 2,
            "referenceImages": [ids[0]],
            "mask": ids[1],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["job"]["status"] == "queued"
    job, seen = scenario_wait(http, emulator, r.json()["job"]["jobId"])
    assert seen[-1] == "success" and {"warming-up", "in-progress"} <= set(seen)
    assert set(seen) <= {"queued", "warming-up", "in-progress", "finalizing", "success"}
    assert job["billing"]["cuCost"] == 10 and len(job["metadata"]["assetIds"]) == 2
    for asset_id in job["metadata"]["assetIds"]:
        data = http.get(scenario_asset_url(http, emulator, asset_id)).content
        assert image(data).size == (64, 64)
        assert_mask_applied(data)
    ledger = emulator.ledger()
    assert ledger["credits"]["scenario"] == 10
    assert ledger["requests"]["scenario"]["upload"] == 2
    assert ledger["requests"]["scenario"]["resolve"] == 2


def test_scenario_seed_spelling_and_cancel(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.2, scenario_spelling="seed")
    r = scenario_submit(http, emulator)
    _, seen = scenario_wait(http, emulator, r.json()["job"]["jobId"])
    assert seen == ["queued", "processing", "success"]
    emulator.configure(latency=5)
    job_id = scenario_submit(http, emulator).json()["job"]["jobId"]
    r = http.post(
        emulator.base_url("scenario") + f"/jobs/{job_id}/action",
        json={"action": "cancel"},
        headers=auth("scenario"),
    )
    assert r.json()["job"]["status"] == "canceled"
    assert emulator.ledger()["running_jobs"]["scenario"] == 0


def test_runware_async_and_sync_delivery(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.1)
    url = emulator.base_url("runware")
    task = runware_task(numberResults=2, width=96)
    r = http.post(url + "/", json=[task], headers=auth("runware"))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [
        {"taskType": "imageInference", "taskUUID": task["taskUUID"], "status": "processing"}
    ]
    items = wait_runware(http, emulator, task["taskUUID"])
    assert [i["status"] for i in items] == ["success", "success"]
    assert all(i["cost"] == 0.04 for i in items)
    img = image(http.get(items[0]["imageURL"]).content)
    assert (img.format, img.size) == ("PNG", (96, 64))
    sync = runware_task(deliveryMethod="sync", outputType="dataURI", outputFormat="JPG")
    started = time.monotonic()
    r = http.post(url, json=[sync], headers=auth("runware"))
    assert r.status_code == 200 and time.monotonic() - started >= 0.09
    [item] = r.json()["data"]
    assert item["imageDataURI"].startswith("data:image/jpeg;base64,")
    assert image(base64.b64decode(item["imageDataURI"].split(",")[1])).format == "JPEG"
    assert emulator.ledger()["credits"]["runware"] == pytest.approx(0.12)


def test_runware_task_uuid_bookkeeping_and_validation(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    url = emulator.base_url("runware")
    task = runware_task()
    assert http.post(url, json=[task], headers=auth("runware")).status_code == 200
    r = http.post(url, json=[task], headers=auth("runware"))
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "duplicateTaskUUID"
    r = http.post(
        url,
        json=[{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}],
        headers=auth("runware"),
    )
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "taskNotFound"
    for bad, code in (
        ({"width": 65}, "invalidWidth"),
        ({"height": 4096}, "invalidHeight"),
        ({"numberResults": 21}, "invalidNumberResults"),
        ({"positivePrompt": "x"}, "invalidPositivePrompt"),
    ):
        r = http.post(url, json=[runware_task(**bad)], headers=auth("runware"))
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == code
    ledger = emulator.ledger()
    assert ledger["credits"]["runware"] == pytest.approx(0.04)
    assert len(ledger["submissions"]) == 1
    assert ledger["submissions"][0]["task_uuid"] == task["taskUUID"]


def test_skillsvideo_json_and_multipart_edit(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.1)
    base = emulator.base_url("skillsvideo")
    r = http.post(
        base + "/v1/generation/openai/gpt-image-2",
        headers=auth("skillsvideo"),
        data={"prompt": "paint a sun", "num_images": "1", "output_format": "png"},
        files=[
            ("image_urls", ("a.png", png(), "image/png")),
            ("mask_url", ("m.png", left_half_mask(), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "IN_QUEUE" and body["usage"]["total"] == 20
    gen_id = body["id"]
    running = http.get(base + "/v1/generations/running", headers=auth("skillsvideo")).json()
    assert [g["id"] for g in running["data"]] == [gen_id]
    for _ in range(100):
        body = http.get(base + f"/v1/generation/{gen_id}", headers=auth("skillsvideo")).json()
        if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            break
        assert body["data"] is None
        time.sleep(0.02)
    assert body["status"] == "COMPLETED"
    first = body["data"]["images"][0]
    assert (first["width"], first["height"], first["content_type"]) == (64, 64, "image/png")
    assert_mask_applied(http.get(first["url"]).content)
    # JSON with URL inputs: the emulator fetches them (here, its own output URL)
    r = http.post(
        base + "/v1/generation/openai/gpt-image-2",
        headers=auth("skillsvideo"),
        json={
            "prompt": "again",
            "image_urls": [first["url"]],
            "aspect_ratio": "1:1",
            "resolution": "1K",
            "quality": "low",
            "n": 1,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["input"]["resolution"] == "1024x1024"
    for bad in ({"n": 5}, {"aspect_ratio": "5:4"}, {"resolution": "8K"}, {"prompt": ""}):
        r = http.post(
            base + "/v1/generation/openai/gpt-image-2",
            headers=auth("skillsvideo"),
            json={"prompt": "x"} | bad,
        )
        assert r.status_code == 400 and r.json()["error"]["code"]


def test_gptimage2ai_polls_202_then_200_and_validates(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.1)
    r = gpt2_submit(http, emulator, ratio="16:9", count=2, style="studio-product")
    assert r.status_code == 200 and r.json()["status"] == "pending"
    done = gpt2_wait(http, emulator, r.json()["jobId"])
    assert done["status"] == "succeeded" and len(done["results"]) == 2
    assert "studio-product" in done["results"][0]["finalPrompt"]
    img = image(http.get(done["results"][0]["imageUrl"]).content)
    assert (img.format, img.size) == ("PNG", (1024, 576))
    r = gpt2_submit(
        http, emulator, mode="image-to-image", imageUrls=[done["results"][0]["imageUrl"]]
    )
    assert r.status_code == 200, r.text
    for bad, code in (
        ({"prompt": "   "}, "prompt_required"),
        ({"ratio": "2:3"}, "invalid_ratio"),
        ({"count": 5}, "invalid_count"),
        ({"mode": "image-to-image"}, "image_urls_required"),
    ):
        r = gpt2_submit(http, emulator, **bad)
        assert r.status_code == 400 and r.json()["error"] == code
    assert emulator.ledger()["credits"]["gptimage2ai"] == 30


# -- auth ---------------------------------------------------------------------------------------

SUBMITS = {
    "openai": ("/images/generations", {"model": "gpt-image-2", "prompt": "x", "size": "64x64"}),
    "scenario": (SCENARIO_MODEL, {"prompt": "x", "width": 64, "height": 64}),
    "runware": ("", None),
    "skillsvideo": ("/v1/generation/openai/gpt-image-2", {"prompt": "x"}),
    "gptimage2ai": ("/generate", {"prompt": "x"}),
}


def submit(
    http: httpx.Client, emu: EmulatorClient, provider: str, wrong: bool = False
) -> httpx.Response:
    path, body = SUBMITS[provider]
    return http.post(
        emu.base_url(provider) + path,
        json=body if body is not None else [runware_task()],
        headers=auth(provider, wrong),
    )


@pytest.mark.parametrize("provider", list(SUBMITS))
def test_wrong_or_missing_key_is_401_in_the_provider_shape(
    http: httpx.Client, emulator: EmulatorClient, provider: str
) -> None:
    r = submit(http, emulator, provider, wrong=True)
    assert r.status_code == 401
    body = r.json()
    shape = {
        "openai": lambda b: b["error"]["code"] == "invalid_api_key",
        "scenario": lambda b: isinstance(b["error"], str),
        "runware": lambda b: b["errors"][0]["code"] == "invalidApiKey",
        "skillsvideo": lambda b: b["error"]["code"] == "unauthorized",
        "gptimage2ai": lambda b: b["error"] == "unauthorized",
    }[provider]
    assert shape(body), body
    assert http.post(emulator.base_url(provider) + SUBMITS[provider][0], json={}).status_code == 401
    ledger = emulator.ledger()
    assert ledger["rejected"][provider]["401"] == 2 and ledger["submissions"] == []


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(SUBMITS))
def test_submit_faults_as_the_client_sees_them(
    http: httpx.Client, emulator: EmulatorClient, provider: str
) -> None:
    emulator.configure(latency=0.05, retry_after=2)
    for kind in ("submit_429", "submit_500", "submit_503", "html_error", "submit_drop"):
        emulator.force(kind, provider)
    r = submit(http, emulator, provider)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    if provider == "openai":
        assert r.headers["retry-after-ms"] == "2000"
    assert submit(http, emulator, provider).status_code == 500
    assert submit(http, emulator, provider).status_code == 503
    r = submit(http, emulator, provider)
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    with pytest.raises(httpx.RemoteProtocolError):
        submit(http, emulator, provider)
    ledger = emulator.ledger()
    assert ledger["submissions"] == [] and ledger["credits"] == {}
    assert [f["kind"] for f in ledger["faults"]] == [
        "submit_429",
        "submit_500",
        "submit_503",
        "html_error",
        "submit_drop",
    ]
    emulator.force("malformed_json", provider)
    r = submit(http, emulator, provider)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    emulator.force("submit_lost_response", provider)
    with pytest.raises(httpx.RemoteProtocolError):
        submit(http, emulator, provider)
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 2 and ledger["credits"][provider] > 0  # both were billed


def test_lost_runware_answer_is_found_by_get_response(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.05)
    emulator.force("submit_lost_response", "runware")
    task = runware_task()
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(emulator.base_url("runware"), json=[task], headers=auth("runware"))
    assert wait_runware(http, emulator, task["taskUUID"])[0]["status"] == "success"
    r = http.post(emulator.base_url("runware"), json=[task], headers=auth("runware"))
    assert r.json()["errors"][0]["code"] == "duplicateTaskUUID"
    assert emulator.ledger()["credits"]["runware"] == pytest.approx(0.04)


def test_poll_faults(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.05)
    job_id = gpt2_submit(http, emulator).json()["jobId"]
    emulator.force("poll_500", "gptimage2ai")
    emulator.force("poll_drop", "gptimage2ai")
    url = emulator.base_url("gptimage2ai") + f"/generate/{job_id}"
    assert http.get(url, headers=auth("gptimage2ai")).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url, headers=auth("gptimage2ai"))
    assert gpt2_wait(http, emulator, job_id)["status"] == "succeeded"


def test_job_fail_is_refunded_by_gptimage2ai_only(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.05)
    emulator.force("job_fail", "gptimage2ai")
    emulator.force("job_fail", "scenario")
    done = gpt2_wait(http, emulator, gpt2_submit(http, emulator, count=2).json()["jobId"])
    assert done["status"] == "failed" and done["error"]
    job, _ = scenario_wait(http, emulator, scenario_submit(http, emulator).json()["job"]["jobId"])
    assert job["status"] == "failure" and job["error"]
    ledger = emulator.ledger()
    assert ledger["credits"] == {"gptimage2ai": 0, "scenario": 5}
    assert [(r["provider"], r["amount"]) for r in ledger["refunds"]] == [("gptimage2ai", 20)]


def test_download_faults_and_expiry(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.02, url_ttl=0.3)
    task = runware_task(numberResults=3)
    http.post(emulator.base_url("runware"), json=[task], headers=auth("runware"))
    emulator.force("url_expired", "runware")
    items = wait_runware(http, emulator, task["taskUUID"])
    born_expired = http.get(items[0]["imageURL"])
    assert born_expired.status_code == 403 and "Request has expired" in born_expired.text
    emulator.force("download_truncate")
    with http.stream("GET", items[1]["imageURL"]) as r:
        declared = int(r.headers["content-length"])
        got = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_bytes():
                got.extend(chunk)
    assert 0 < len(got) < declared
    emulator.force("download_not_image")
    r = http.get(items[1]["imageURL"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = http.get(items[1]["imageURL"])
    assert r.headers["content-type"] == "image/png" and int(r.headers["content-length"]) == declared
    time.sleep(0.35)
    assert http.get(items[2]["imageURL"]).status_code == 403
    ledger = emulator.ledger()
    assert ledger["requests"]["runware"]["download"] == 5
    kinds = [f["kind"] for f in ledger["faults"]]
    assert kinds == ["url_expired", "download_truncate", "download_not_image"]


def test_scenario_reresolve_gives_a_fresh_url_after_expiry(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.02, url_ttl=0.2)
    job, _ = scenario_wait(http, emulator, scenario_submit(http, emulator).json()["job"]["jobId"])
    asset_id = job["metadata"]["assetIds"][0]
    first = scenario_asset_url(http, emulator, asset_id)
    assert http.get(first).status_code == 200
    time.sleep(0.25)
    assert http.get(first).status_code == 403
    fresh = scenario_asset_url(http, emulator, asset_id)
    assert fresh != first
    assert image(http.get(fresh).content).size == (64, 64)


def test_forced_queue_is_consumed_in_order_per_provider(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.02)
    emulator.force("submit_500", "runware", count=2)
    emulator.force("submit_429")
    assert [f["kind"] for f in emulator.config()["force"]] == ["submit_500", "submit_429"]
    assert gpt2_submit(http, emulator).status_code == 429  # the provider-less entry matches
    assert submit(http, emulator, "runware").status_code == 500
    assert submit(http, emulator, "runware").status_code == 500
    assert submit(http, emulator, "runware").status_code == 200
    assert emulator.config()["force"] == []


def test_fault_rates_are_reproducible_with_a_seed(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    def run() -> list[int]:
        emulator.reset(latency=0.02, seed=7, faults={"submit_500": 0.5})
        return [scenario_submit(http, emulator).status_code for _ in range(16)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first
    emulator.reset(faults={"submit_500": 0.0}, faults_by_provider={"scenario": {"submit_503": 1.0}})
    assert scenario_submit(http, emulator).status_code == 503
    assert gpt2_submit(http, emulator).status_code == 200


# -- limits, credits, moderation --------------------------------------------------------------


def test_concurrency_limit_answers_429_and_peaks_are_tracked(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.3, max_concurrent_jobs=2, retry_after=1)
    assert scenario_submit(http, emulator).status_code == 200
    assert scenario_submit(http, emulator).status_code == 200
    assert gpt2_submit(http, emulator).status_code == 200  # the limit is per provider
    r = scenario_submit(http, emulator)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    time.sleep(0.32)
    assert scenario_submit(http, emulator).status_code == 200
    ledger = emulator.ledger()
    assert ledger["peak_concurrent_jobs"]["scenario"] == 2
    assert ledger["peak_concurrent_jobs"]["all"] == 3
    assert ledger["rejected"]["scenario"] == {"429": 1}


def test_balance_refuses_without_charging(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.02, balance={"gptimage2ai": 20, "openai": 0.0001})
    assert gpt2_submit(http, emulator, count=2).status_code == 200
    r = gpt2_submit(http, emulator)
    assert r.status_code == 402 and r.json()["error"] == "insufficient_credits"
    body = {"model": "gpt-image-2", "prompt": "x", "size": "64x64", "quality": "high"}
    r = http.post(
        emulator.base_url("openai") + "/images/generations", json=body, headers=auth("openai")
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert emulator.ledger()["credits"] == {"gptimage2ai": 20}


def test_moderation_in_each_providers_way(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.05)
    prompt = "something FORBIDDEN here"
    r = http.post(
        emulator.base_url("openai") + "/images/generations",
        headers=auth("openai"),
        json={"model": "gpt-image-2", "prompt": prompt, "size": "64x64"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "moderation_blocked"
    r = scenario_submit(http, emulator, prompt=prompt)
    assert r.status_code == 400 and r.json()["code"] == "content_moderation"
    r = http.post(
        emulator.base_url("runware"),
        json=[runware_task(positivePrompt=prompt)],
        headers=auth("runware"),
    )
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "contentModeration"
    r = http.post(
        emulator.base_url("skillsvideo") + "/v1/generation/openai/gpt-image-2",
        json={"prompt": prompt},
        headers=auth("skillsvideo"),
    )
    gen_id = r.json()["id"]
    time.sleep(0.06)
    body = http.get(
        emulator.base_url("skillsvideo") + f"/v1/generation/{gen_id}", headers=auth("skillsvideo")
    ).json()
    assert body["status"] == "FAILED" and body["code"] == "content_moderation"
    done = gpt2_wait(http, emulator, gpt2_submit(http, emulator, prompt=prompt).json()["jobId"])
    assert done["status"] == "failed" and done["error"] == "content_moderation"
    ledger = emulator.ledger()
    assert ledger["credits"] == {"skillsvideo": 20, "gptimage2ai": 0}
    assert ledger["refunds"][0]["reason"] == "content_moderation"


# -- ledger, padding, control -------------------------------------------------------------------


def test_ledger_hashes_requests_without_volatile_ids(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    url = emulator.base_url("runware")
    for _ in range(2):
        http.post(url, json=[runware_task()], headers=auth("runware"))
    http.post(url, json=[runware_task(positivePrompt="something else")], headers=auth("runware"))
    subs = emulator.ledger()["submissions"]
    assert subs[0]["body_sha256"] == subs[1]["body_sha256"] != subs[2]["body_sha256"]
    assert len({s["task_uuid"] for s in subs}) == 3
    assert all(s["at"] > 0 and s["n"] == 1 for s in subs)


def test_pad_to_bytes_serves_large_valid_pngs(http: httpx.Client, emulator: EmulatorClient) -> None:
    emulator.configure(latency=0.02, pad_to_bytes=3_000_000)
    job, _ = scenario_wait(http, emulator, scenario_submit(http, emulator).json()["job"]["jobId"])
    r = http.get(scenario_asset_url(http, emulator, job["metadata"]["assetIds"][0]))
    assert int(r.headers["content-length"]) == len(r.content)
    assert abs(len(r.content) - 3_000_000) < 100
    with Image.open(io.BytesIO(r.content)) as img:
        img.verify()  # walks every chunk and checks CRCs
    assert image(r.content).size == (64, 64)


def test_config_reset_restores_startup_config(emulator: EmulatorClient) -> None:
    emulator.configure(latency=3.0, faults={"poll_500": 0.5})
    assert emulator.config()["latency"] == 3.0
    with pytest.raises(ValueError):
        emulator.configure(faults={"poll_500": 2.0})
    with pytest.raises(ValueError):
        emulator.configure(no_such_field=1)
    emulator.reset()
    assert emulator.config()["latency"] == 3.0  # kept
    emulator.reset(config=True)
    assert emulator.config()["latency"] == 0.1 and emulator.config()["faults"] == {}


def test_emulator_process_runs_a_given_config_and_stops() -> None:
    with EmulatorProcess(EmulatorConfig(latency=0.0, keys={"gptimage2ai": "other"})) as proc:
        assert proc.client.config()["latency"] == 0.0
        r = httpx.post(
            proc.base_url("gptimage2ai") + "/generate",
            json={"prompt": "x"},
            headers={"Authorization": "Bearer other"},
        )
        assert r.status_code == 200
        process = proc.process
    assert process is not None and process.poll() is not None


# -- rate limits --------------------------------------------------------------------------------


def _openai_generation(http: httpx.Client, emulator: EmulatorClient, n: int = 1) -> httpx.Response:
    return http.post(
        emulator.base_url("openai") + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "a fox", "n": n, "size": "64x48"},
        headers=auth("openai"),
    )


def test_rate_limits_are_off_unless_configured(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.0)
    answers = [_openai_generation(http, emulator) for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 5
    assert not any(k.startswith("x-ratelimit") for k in answers[0].headers)
    assert emulator.ledger()["rate_limited"] == {}


def test_openai_bucket_refuses_before_any_job_with_an_honest_retry_after_and_headers(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.0, rate_limits={"openai": {"images_per_minute": 30, "burst": 2}})
    first = _openai_generation(http, emulator, n=2)  # IPM counts images: the whole burst
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "30"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    reset = first.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 3.5 <= float(reset.rstrip("s")) <= 4.0, reset
    refused = _openai_generation(http, emulator)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    wait_ms = int(refused.headers["retry-after-ms"])
    assert 1500 <= wait_ms <= 2000, wait_ms  # one image at 30 a minute: 2 s from empty
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == 1 and ledger["rate_limited"] == {"openai": 1}
    time.sleep(wait_ms / 1000)
    assert _openai_generation(http, emulator).status_code == 200, "the wait it named suffices"


def test_other_providers_get_429_and_retry_after_only(
    http: httpx.Client, emulator: EmulatorClient
) -> None:
    emulator.configure(latency=0.0, rate_limits={"gptimage2ai": {"images_per_minute": 6}})
    url = emulator.base_url("gptimage2ai") + "/generate"
    body = {"prompt": "a fox", "ratio": "1:1"}
    assert http.post(url, json=body, headers=auth("gptimage2ai")).status_code in (200, 202)
    refused = http.post(url, json=body, headers=auth("gptimage2ai"))
    assert refused.status_code == 429 and refused.headers["retry-after"] in ("9", "10")
    assert not any(k.startswith("x-ratelimit") for k in refused.headers)
    assert len(emulator.ledger()["submissions"]) == 1


def test_runware_cannot_be_given_a_rate_limit(emulator: EmulatorClient) -> None:
    with pytest.raises(ValueError, match="runware documents no rate limit"):
        emulator.configure(rate_limits={"runware": {"images_per_minute": 6}})
