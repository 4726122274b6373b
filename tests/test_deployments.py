"""deployments/prefect.yaml on a real `prefect server`: deploy, schedule, run through a worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .prefect_cli import ROOT, api, cli, deploy_all

pytestmark = pytest.mark.slow


def test_deploy_schedule_and_run_the_daily_pipeline_through_a_worker(
    cli_server: dict[str, str], tmp_path: Path
) -> None:
    server = cli_server
    deploy_all(server)

    daily = api(server, "GET", "/deployments/name/daily-content/daily-content")
    batch = api(server, "GET", "/deployments/name/batch-generate/batch-from-file")
    assert batch["work_pool_name"] == daily["work_pool_name"] == "gptimg-process"
    schedule = daily["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 6 * * *" and schedule["timezone"] == "Europe/Paris"
    assert daily["schedules"][0]["active"] is True

    archive = tmp_path / "archive"
    out = cli(server, "deployment", "run", "daily-content/daily-content",
               "--param", f"archive={archive}", "--param", "size=256x256",
               "--param", "run_date=2026-11-23")  # fmt: skip
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)

    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gptimg-process",
         "--run-once"], env=server, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    state = api(server, "GET", f"/flow_runs/{run_id}")["state"]
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
