"""Review under a worker: the shipped daily-content deployment with `review=True`, run by a real
process worker on a real `prefect server`.

The run suspends (its process ends: the worker is free), a person's answer reschedules it, and
it starts again from the top: the candidates come back from the archive (paid once), the
answer stored under the same pause key is read back, and only the approved candidate is
edited. A second run nobody answers is resumed by the server's one-off timeout automation and
decides by `on_review_timeout`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .support.prefect_cli import api, deploy_all, start_worker, stop_workers
from .test_deployments import _save_blocks

pytestmark = pytest.mark.slow
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _state(env: dict[str, str], run_id: str) -> dict[str, Any]:
    return dict(api(env, "GET", f"/flow_runs/{run_id}")["state"])


def _wait(env: dict[str, str], run_id: str, ok: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(env, run_id)
        if ok(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {state['type']} {state['name']}")


def _form(env: dict[str, str], run_id: str, key: str) -> str:
    """The Resume form's markdown (saved just after the state changes)."""
    import httpx

    for _ in range(40):
        got = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}/input/{key}", timeout=10)
        if got.status_code == 200:
            return got.text
        time.sleep(0.25)
    raise AssertionError(f"no form description under {key}")


def _resume(env: dict[str, str], run_id: str, run_input: dict[str, Any]) -> None:
    """What a person's answer does (POST /flow_runs/{id}/resume), retried as a client would
    when a busy SQLite server answers 503."""
    import httpx

    url = f"{env['PREFECT_API_URL']}/flow_runs/{run_id}/resume"
    for _ in range(20):
        answer = httpx.post(url, json={"run_input": run_input}, timeout=30)
        if answer.status_code < 500:
            assert answer.is_success and answer.json()["status"] == "ACCEPT", answer.text
            return
        time.sleep(1)
    raise AssertionError(f"resume kept failing: {answer.status_code} {answer.text}")


def _sidecars(archive: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(archive.glob("images/*/*.json"))]


async def test_a_deployment_run_suspends_for_review_and_resumes_without_paying_again(
    cli_server: dict[str, str], emulator: Any, tmp_path: Path
) -> None:
    env = {**cli_server}
    deploy_all(env)
    archive = tmp_path / "content-archive"
    provider = await _save_blocks(env, emulator, archive)
    daily = api(env, "GET", "/deployments/name/daily-content/daily-content")
    params = {"provider": provider, "n": 2, "review": True, "size": "1024x1024"}
    answered = api(
        env,
        "POST",
        f"/deployments/{daily['id']}/create_flow_run",
        {"parameters": {**params, "run_date": "2026-12-01"}},
    )["id"]
    unanswered = api(
        env,
        "POST",
        f"/deployments/{daily['id']}/create_flow_run",
        {
            "parameters": {
                **params,
                "run_date": "2026-12-02",
                "review_timeout_seconds": 10,
                "on_review_timeout": "approve",
            }
        },
    )["id"]
    workdir = tmp_path / "worker"
    workdir.mkdir()
    worker = start_worker(env, None, workdir, limit=2, log=tmp_path / "worker.log")
    try:
        suspended = _wait(env, answered, lambda s: s["name"] == "Suspended", 180, "suspend")
        assert suspended["type"] == "PAUSED"
        assert len(emulator.ledger()["submissions"]) >= 1
        paid_before = len(emulator.ledger()["submissions"])
        # The form's markdown shows both candidates.
        key = f"suspended-{suspended['state_details']['pause_key']}-description"
        form = _form(env, answered, key)
        assert str(form).count("data:image/webp;base64,") == 2

        _resume(env, answered, {"approved": [2], "note": "the second"})
        done = _wait(env, answered, lambda s: s["type"] in TERMINAL, 180, "answered run")
        other = _wait(env, unanswered, lambda s: s["type"] in TERMINAL, 180, "timed-out run")
    finally:
        for run_id in (answered, unanswered):  # nothing of this test left for other workers
            if _state(env, run_id)["type"] not in TERMINAL:
                api(
                    env,
                    "POST",
                    f"/flow_runs/{run_id}/set_state",
                    {"state": {"type": "CANCELLED"}, "force": True},
                )
        stop_workers([worker])
    worker_log = (tmp_path / "worker.log").read_text()[-4000:]
    assert done["type"] == "COMPLETED", (done, worker_log)
    assert other["type"] == "COMPLETED", (other, worker_log)

    # Answered run: 1 generate (2 candidates) + 1 edit of candidate 2; nothing paid twice
    # although the run started again from the top.
    ledger = emulator.ledger()["submissions"]
    paths = sorted(s["path"].rsplit("/", 1)[-1] for s in ledger)
    sidecars = _sidecars(archive)
    day1 = [s for s in sidecars if "01 December 2026" in s["prompt"]]
    assert sorted(s["review"]["status"] for s in day1) == ["approved", "rejected"]
    approved = next(s for s in day1 if s["review"]["status"] == "approved")
    edits = [s for s in sidecars if s["parents"] == [approved["uri"]]]
    assert len(edits) == 1 and approved["review"]["note"] == "the second"
    assert paid_before == 1 or paid_before == 2, "suspended right after the candidates"

    # Unanswered run: the server's timeout resumed it; both candidates approved and edited.
    day2 = [s for s in sidecars if "02 December 2026" in s["prompt"]]
    assert [s["review"]["timed_out"] for s in day2] == [True, True]
    assert {s["review"]["status"] for s in day2} == {"approved"}
    day2_edits = [
        s for s in sidecars if s["parents"] and s["parents"][0] in {d["uri"] for d in day2}
    ]
    assert len(day2_edits) == 2
    # 2 generates (one per run) + 1 + 2 edits in all: the restarts paid nothing again.
    assert paths == ["edits"] * 3 + ["generations"] * 2, paths
    automations = api(env, "POST", "/automations/filter", {})
    assert not [a for a in automations if "review-timeout" in a["name"]], "cleared after use"
