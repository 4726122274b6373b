"""A real `prefect server start` in its own process, and the CLI/API calls tests make on it.

Deployments and workers are exercised the way a team runs them: a server process, the
`prefect` CLI, and workers as separate processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the checkout (this file is tests/support/)


@contextmanager
def running_server(
    home: Path, port: int, *, extra_env: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Start `prefect server start` (SQLite under `home`); yield the env for CLI subprocesses.

    `extra_env` is added to the server's and the yielded env (e.g. a PostgreSQL database URL).
    """
    api = f"http://127.0.0.1:{port}/api"
    # Workers get a temporary directory of their own, apart from the tests' archives (which
    # live under pytest's tmp_path): a deployment's run refuses an archive under the
    # temporary directory, as it must for users.
    temp = home / "tmp"
    temp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "TMPDIR": str(temp),
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    env.update(extra_env or {})
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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
        log.close()


def start_worker(
    env: dict[str, str],
    name: str | None,
    cwd: Path,
    *,
    limit: int,
    log: Path | None = None,
    pool: str = "gptimg-process",
) -> subprocess.Popen[bytes]:
    """`prefect worker start` on `pool` (gptimg-process), at most `limit` flow runs at once,
    in `cwd` (where its flow runs start). Its output, stderr included, goes to `log` (by
    default `cwd/<name>.log`); with no `name`, Prefect names it."""
    path = log or cwd / f"{name or 'worker'}.log"
    named = ["--name", name] if name else []
    with path.open("wb") as out:  # the worker holds its own copy of the file
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                pool,
                *named,
                "--limit",
                str(limit),
            ],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_workers(workers: Iterable[subprocess.Popen[bytes]]) -> None:
    """Ask every worker to stop at once, then wait for each (killed after 30 s)."""
    workers = list(workers)
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


#: A busy machine (a contributor's, running other work) answers slowly, not never.
API_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """One API call; a 503 (a busy SQLite server: nothing was done) is tried again, and so is
    a read that timed out when asking again changes nothing (a GET or a filter)."""
    repeatable = method == "GET" or path.endswith("/filter")
    for attempt in range(10):
        try:
            response = httpx.request(
                method, env["PREFECT_API_URL"] + path, json=body, timeout=API_TIMEOUT
            )
        except httpx.ReadTimeout:
            if not repeatable or attempt == 9:
                raise
            continue
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def deploy_all(env: dict[str, str]) -> None:
    """The work pool and every deployment of deployments/prefect.yaml (idempotent)."""
    pools = {p["name"] for p in api(env, "POST", "/work_pools/filter", {})}
    if "gptimg-process" not in pools:
        cli(env, "work-pool", "create", "gptimg-process", "--type", "process")
    cli(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
