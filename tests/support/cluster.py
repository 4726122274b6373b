"""The distributed-batch cluster the tests and bench/fanout.py share: what a cluster is, a
Runware block saved on its server, the parent run of the distributed deployment, its report,
and waiting for a run to end."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from gptimg_flows.blocks.credentials import RunwareCredentials
from gptimg_flows.distributed.gather import REPORT_KEY
from gptimg_flows.testing.config import EMULATOR_KEYS

from .prefect_cli import api

PRICE = 0.04  # the emulator's Runware price per image, set on the block so budgets are exact
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
BATCH_DEPLOYMENT = "batch-generate/batch-from-file"
#: Small, quick images: the tests measure orchestration, not rendering.
IMAGE = {"size": "256x256", "output_format": "png"}


@dataclass
class Cluster:
    env: dict[str, str]
    home: Path
    workers: dict[str, subprocess.Popen[bytes]]

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")[-4000:]


async def save_provider(cluster: Cluster, emulator: Any) -> str:
    name = f"dist-{uuid.uuid4().hex[:6]}"
    block = RunwareCredentials(
        api_key=str(EMULATOR_KEYS["runware"]),
        base_url=emulator.base_url("runware"),
        price_per_image=PRICE,
    )
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        await block.asave(name)
    return f"{RunwareCredentials.get_block_type_slug()}/{name}"


def start_parent(cluster: Cluster, params: dict[str, Any]) -> dict[str, Any]:
    deployment = api(cluster.env, "GET", "/deployments/name/distributed-batch/distributed-batch")
    path = f"/deployments/{deployment['id']}/create_flow_run"
    run: dict[str, Any] = api(cluster.env, "POST", path, {"parameters": params})
    return run


def read_report(cluster: Cluster, flow_run_id: str) -> str:
    found = api(
        cluster.env,
        "POST",
        "/artifacts/filter",
        {
            "artifacts": {"key": {"any_": [REPORT_KEY]}},
            "flow_runs": {"id": {"any_": [flow_run_id]}},
        },
    )
    assert found, f"no {REPORT_KEY} artifact for {flow_run_id}"
    return str(found[0]["data"])


async def wait_for_run(cluster: Cluster, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = api(cluster.env, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL or time.monotonic() > deadline:
            return run
        await asyncio.sleep(1)
