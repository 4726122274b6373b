"""deployments/prefect.yaml on a real `prefect server`: deploy, schedule, run through a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `prefect server start` (SQLite, fresh home), its env for CLI subprocesses."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_UI_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false"}  # fmt: skip
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(api + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((home / "server.log").read_text()[-3000:])
        yield env
    finally:
        proc.terminate()
        proc.wait(30)


def _cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_deploy_schedule_and_run_the_daily_pipeline_through_a_worker(
    server: dict[str, str], tmp_path: Path
) -> None:
    _cli(server, "work-pool", "create", "gptimg-process", "--type", "process")
    _cli(server, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

    daily = _api(server, "GET", "/deployments/name/daily-content/daily-content")
    batch = _api(server, "GET", "/deployments/name/batch-generate/batch-from-file")
    assert batch["work_pool_name"] == daily["work_pool_name"] == "gptimg-process"
    schedule = daily["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 6 * * *" and schedule["timezone"] == "Europe/Paris"
    assert daily["schedules"][0]["active"] is True

    archive = tmp_path / "archive"
    out = _cli(server, "deployment", "run", "daily-content/daily-content",
               "--param", f"archive={archive}", "--param", "size=256x256",
               "--param", "run_date=2026-11-23")  # fmt: skip
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)

    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gptimg-process",
         "--run-once"], env=server, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    state = _api(server, "GET", f"/flow_runs/{run_id}")["state"]
    assert state["type"] == "COMPLETED", (state, worker.stdout[-3000:], worker.stderr[-3000:])
    pngs = sorted(archive.glob("images/*/*.png"))
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in pngs]
    assert len(pngs) == 2, pngs
    edited = next(s for s in sidecars if s["parents"])
    assert edited["prompt"] == "add a bold headline banner across the top"
    assert "23 November 2026" in next(s for s in sidecars if not s["parents"])["prompt"]


def test_serve_script_builds_the_same_deployments() -> None:
    sys.path.insert(0, str(ROOT / "deployments"))
    try:
        import serve
    finally:
        sys.path.pop(0)
    built = {d.name: d for d in serve.build()}
    assert set(built) == {"daily-content", "batch-from-file"}
    daily = built["daily-content"].schedules[0].schedule
    assert daily.cron == "0 6 * * *" and daily.timezone == "Europe/Paris"
