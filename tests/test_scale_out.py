"""Two process workers, one provider limit held by the server: the provider never sees more.

The batch is split across several flow runs of the `batch-from-file` deployment, so jobs run in
separate processes started by separate workers; only the server's global concurrency limit
(named on the credentials block) stands between them and the provider's 429s.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from gptimg_flows.blocks.credentials import RunwareCredentials
from gptimg_flows.testing.config import EMULATOR_KEYS

from .conftest import free_port
from .support.prefect_cli import api, deploy_all, running_server, start_worker, stop_workers

pytestmark = pytest.mark.slow

K = 2  # the provider's own limit of concurrent jobs, and the server's limit we set for it
RUNS, PER_RUN = 4, 5
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


async def _save_block(env: dict[str, str], emulator: Any, limit: str) -> str:
    name = f"scale-{uuid.uuid4().hex[:6]}"
    block = RunwareCredentials(
        api_key=str(EMULATOR_KEYS["runware"]),
        base_url=emulator.base_url("runware"),
        concurrency_limit=limit,
    )
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        await block.asave(name)
    return f"{RunwareCredentials.get_block_type_slug()}/{name}"


def _wait_for_runs(env: dict[str, str], ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs: list[dict[str, Any]] = api(
            env, "POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}}
        )
        if all(r["state_type"] in TERMINAL for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A server of this test's own: on the suite's shared SQLite server, busy with every
    earlier test's runs, a write lock once stalled the API for 85 s mid-test."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    with running_server(home, free_port()) as env:
        yield env


async def test_two_workers_share_one_provider_limit_held_by_the_server(
    own_server: dict[str, str], emulator: Any, tmp_path: Path
) -> None:
    env = own_server
    deploy_all(env)
    limit = f"runware-jobs-{uuid.uuid4().hex[:6]}"
    api(env, "POST", "/v2/concurrency_limits/", {"name": limit, "limit": K})
    provider = await _save_block(env, emulator, limit)
    emulator.configure(latency=1.0, max_concurrent_jobs=K, render_mode="stamp")

    deployment = api(env, "GET", "/deployments/name/batch-generate/batch-from-file")
    archive = tmp_path / "archive"
    ids = []
    for run in range(RUNS):
        params = {
            "prompts": [f"scale-out run {run} image {i}" for i in range(PER_RUN)],
            "provider": provider,
            "archive": str(archive),
            "concurrency": PER_RUN,
            "size": "256x256",
            "output_format": "png",
        }
        created = api(
            env, "POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": params}
        )
        ids.append(created["id"])

    workers = [start_worker(env, name, tmp_path, limit=2) for name in ("worker-a", "worker-b")]
    try:
        runs = _wait_for_runs(env, ids, timeout=420)
    finally:
        stop_workers(workers)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}

    states = {r["id"]: r["state_type"] for r in runs}
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    ran_by = {
        name: set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
        for name, text in logs.items()
    }
    assert ran_by["worker-a"] and ran_by["worker-b"], ("each worker runs some of the batch", logs)
    assert ran_by["worker-a"] | ran_by["worker-b"] == set(ids)

    ledger = emulator.ledger()
    assert len(ledger["submissions"]) == RUNS * PER_RUN, ledger["submissions"]
    assert ledger["peak_concurrent_jobs"]["runware"] <= K, ledger["peak_concurrent_jobs"]
    assert ledger["rejected"].get("runware", {}) == {}, ledger["rejected"]
    assert len(list(archive.glob("images/*/*.png"))) == RUNS * PER_RUN
    # The limit was doing the work: with 4 runs of 5 parallel requests, all 20 jobs would
    # otherwise have been in flight together (the single-process control case sees 429s).
    assert ledger["peak_concurrent_jobs"]["runware"] == K
