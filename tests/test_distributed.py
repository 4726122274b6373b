"""distributed_batch on a PostgreSQL-backed `prefect server` with three process workers.

What a team runs beyond one machine: PostgreSQL under the Prefect server, a process work pool,
several workers, and a batch split into chunk runs of the batch deployment. The tests check
the promises that matter when money is involved: every prompt paid once, rows back in input
order, a re-run paying nothing, and a worker lost with its machine (`kill -9` of the worker
and its flow-run processes) costing no duplicate submission.

One PostgreSQL, one server and one set of workers serve the whole module (each costs tens of
seconds on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from gptimg_flows.blocks.credentials import ImageArchive, RunwareCredentials
from gptimg_flows.distributed.flow import distributed_batch
from gptimg_flows.distributed.plan import plan_chunks
from gptimg_flows.errors import BudgetExceeded, InvalidRequest

from .support.cluster import (
    BATCH_DEPLOYMENT,
    IMAGE,
    PRICE,
    Cluster,
    read_report,
    save_provider,
    start_parent,
    wait_for_run,
)
from .support.postgres import postgres_server
from .support.prefect_cli import (
    api,
    cli,
    deploy_all,
    running_server,
    start_worker,
    stop_workers,
)

pytestmark = pytest.mark.slow

WORKERS = ("w1", "w2", "w3")
#: A running chunk run with no heartbeat for this long is lost (Prefect beats every 30 s).
LOST_AFTER = 45
JOB_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """PostgreSQL 15, `prefect server start` on it, the deployments, three process workers."""
    started = time.monotonic()
    with postgres_server(_free_port()) as url:
        home = tmp_path_factory.mktemp("prefect-pg-home")
        extra = {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": url,
            # Heartbeats reach the events API, and task-run states (why a row failed) the
            # task-run API, within a second instead of five.
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "50",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
        }
        with running_server(home, _free_port(), extra_env=extra) as env:
            deploy_all(env)
            # Workers hold no AWS_* keys: an archive on S3 brings its own (its block's).
            worker_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
            worker_env.update(
                AWS_EC2_METADATA_DISABLED="true",
                AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                AWS_CONFIG_FILE="/nonexistent",
            )
            workers = {name: start_worker(worker_env, name, home, limit=3) for name in WORKERS}
            print(f"cluster ready in {time.monotonic() - started:.1f} s")
            try:
                yield Cluster(env, home, workers)
            finally:
                # Logs and events of the runs made in this process go out while the server
                # is up (else the process spends its exit retrying a dead server).
                APILogWorker.drain_all(timeout=30, at_exit=False)
                EventsWorker.drain_all(timeout=30, at_exit=False)
                stop_workers(workers.values())


def _runs(
    cluster: Cluster,
    archive: Path,
    deployment_name: str = BATCH_DEPLOYMENT,
    block: str | None = None,
) -> list[dict[str, Any]]:
    """The chunk runs (runs of the batch deployment) writing into `archive` (given as its
    path, or as the saved ImageArchive `block` naming it)."""
    deployment = api(cluster.env, "GET", f"/deployments/name/{deployment_name}")
    body = {"deployments": {"id": {"any_": [deployment["id"]]}}, "limit": 200}
    runs: list[dict[str, Any]] = api(cluster.env, "POST", "/flow_runs/filter", body)
    named = {str(archive), block}
    return [r for r in runs if r["parameters"].get("archive") in named]


def _assert_paid_once(ledger: dict[str, Any], count: int, repeated: int = 0) -> None:
    """`count` submissions, no task submitted twice, and no request body twice except the
    `repeated` prompts the input itself repeats (Runware's body, taskUUID aside)."""
    submissions = ledger["submissions"]
    uuids = Counter(s["task_uuid"] for s in submissions)
    bodies = Counter(s["body_sha256"] for s in submissions)
    assert len(submissions) == count, (len(submissions), count)
    assert max(uuids.values()) == 1, [u for u, n in uuids.items() if n > 1]
    assert sum(n - 1 for n in bodies.values()) == repeated, "a prompt was submitted twice"


def test_identical_requests_share_a_chunk_so_each_keeps_its_slot() -> None:
    """A chunk run numbers identical requests itself (slot 0, 1, …): all of them must be in
    one chunk, in input order, for their keys to be those of one batch over the whole input."""
    groups = {0: "a", 1: "b", 2: "c", 3: "a", 4: "d", 5: "e", 6: "b"}
    assert plan_chunks(list(groups), groups, 2) == [[0, 1, 3, 6], [2, 4], [5]]


async def test_refused_before_any_chunk_run(
    cluster: Cluster, emulator: Any, tmp_path: Path
) -> None:
    provider = await save_provider(cluster, emulator)
    archive = tmp_path / "archive"
    base: dict[str, Any] = dict(
        prompts=[f"refused {i}" for i in range(10)],
        provider=provider,
        archive=str(archive),
        chunk_size=4,
        **IMAGE,
    )
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        with pytest.raises(BudgetExceeded, match=r"estimated at 0\.4 usd"):
            await distributed_batch(**base, max_cost=0.39)
        with pytest.raises(InvalidRequest, match="no deployment 'batch-generate/nope'"):
            await distributed_batch(**base, deployment="batch-generate/nope")
        with pytest.raises(InvalidRequest, match="runs the flow 'daily-content'"):
            await distributed_batch(**base, deployment="daily-content/daily-content")
        unsaved = {**base, "provider": RunwareCredentials(api_key="k", price_per_image=PRICE)}
        with pytest.raises(InvalidRequest, match="not an unsaved block"):
            await distributed_batch(**unsaved)
    assert _runs(cluster, archive) == [] and emulator.ledger()["submissions"] == []


async def test_a_batch_over_three_workers_is_paid_once_in_order_and_rerun_free(
    cluster: Cluster, emulator: Any, tmp_path: Path
) -> None:
    emulator.configure(latency=0.5, render_mode="stamp")
    provider = await save_provider(cluster, emulator)
    archive = tmp_path / "archive"
    # 300 prompts (the last a repeat of the first: a second image, so it shares chunk 0 to
    # keep its own request key), one the provider's moderation refuses (a failure of its row
    # in chunk 5, not paid) and one no provider would take (refused before any chunk run).
    # A CSV whose `sku` column is each row's own: the sidecars must join back to it by `row`.
    prompts = [f"distributed prompt {i}" for i in range(299)] + ["distributed prompt 0"]
    archive.mkdir(parents=True)
    # Under the archive, saved as a block: a deployment's run may read its folder (a folder a
    # parameter names is never a read root).
    table = archive / "inputs.csv"
    archive_block = f"dist-archive-{uuid.uuid4().hex[:6]}"
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        await ImageArchive(basepath=str(archive)).asave(archive_block)
    with table.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["prompt", "sku", "size"])
        out.writerows([p, f"sku-{i}", ""] for i, p in enumerate(prompts))
        out.writerow(["a FORBIDDEN poster", "moderated", ""])
        out.writerow(["a size Runware refuses", "bad", "100x100"])
    params: dict[str, Any] = dict(
        prompts=str(table),
        provider=provider,
        archive=archive_block,
        chunk_size=50,
        concurrency=10,
        max_cost=301 * PRICE,
        **IMAGE,
    )
    failed = [
        (300, "ContentRejected", {"sku": "moderated"}),
        (301, "InvalidRequest", {"sku": "bad"}),
    ]

    # The parent runs as a run of the `distributed-batch` deployment, on a worker.
    started = time.monotonic()
    parent = start_parent(cluster, params)
    done = await wait_for_run(cluster, parent["id"], timeout=240)
    first = time.monotonic() - started
    assert done["state_type"] == "COMPLETED", (done["state"], _logs(cluster))
    ledger = emulator.ledger()
    _assert_paid_once(ledger, 300, repeated=1)
    runs = _runs(cluster, archive, block=archive_block)
    assert len(runs) == 6 and {r["state_type"] for r in runs} == {"COMPLETED"}, runs
    # Chunk runs are subflows of the parent (the UI nests them; cancelling it cancels them).
    for run in runs:
        link = api(cluster.env, "GET", f"/task_runs/{run['parent_task_run_id']}")
        assert link["flow_run_id"] == parent["id"], run["name"]
    # The budget was split exactly: each chunk run got its own rows' estimate (chunk 0 has 51
    # rows with the repeat, the others 50), so no chunk ran out although it was all spent.
    caps = sorted(r["parameters"]["max_cost"] for r in runs)
    assert caps == pytest.approx([50 * PRICE] * 5 + [51 * PRICE]), caps
    report = read_report(cluster, parent["id"])
    assert "300 image(s), 2 failed row(s). This run spent: 12 usd" in report, report
    assert "| 300 | a FORBIDDEN poster | - | ContentRejected:" in report, report

    # A re-run (here in this process) pays nothing and returns the same rows in input order.
    # Finished chunks are not run again; chunk 5, left with a failed row, is (its next
    # attempt answers its other rows from the archive, and the provider refuses again).
    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        again = await distributed_batch(**params)
    rerun = time.monotonic() - started
    assert emulator.ledger()["submissions"] == ledger["submissions"]
    new_runs = {
        r["name"].split("-", 1)[1] for r in _runs(cluster, archive, block=archive_block)
    } - {r["name"].split("-", 1)[1] for r in runs}
    assert new_runs == {"chunk-5-try-1"}, new_runs
    assert [img.row for img in again.images] == list(range(300))
    assert [img.prompt for img in again.images] == prompts[:300]
    paid = {s["job_id"] for s in ledger["submissions"]}
    assert {img.job_id for img in again.images} == paid  # the repeat is an image of its own
    assert all(img.from_archive for img in again.images)
    assert again.cost == {"usd": 0.0} and again.images_cost == {"usd": pytest.approx(12.0)}
    assert [(f.index, f.error_type, f.extra) for f in again.failures] == failed
    # Joined back to the CSV by the sidecars alone: every row found once, with its own sku.
    sidecars = [json.loads(p.read_text()) for p in archive.glob("images/*/*.json")]
    joined = sorted((sc["row"], sc["extra"]["sku"], sc["prompt"]) for sc in sidecars)
    assert joined == [(i, f"sku-{i}", p) for i, p in enumerate(prompts)], joined[:5]
    print(f"300 prompts over 3 workers (parent on a worker): {first:.1f} s; re-run {rerun:.1f} s")


def _logs(cluster: Cluster) -> dict[str, str]:
    return {name: cluster.log(name) for name in WORKERS}


# -- a worker lost with its machine ---------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _flow_run_of(pid: int) -> str | None:
    """The flow run a process runs (the worker hands it PREFECT__FLOW_RUN_ID)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def _runs_by_worker(cluster: Cluster) -> dict[str, set[str]]:
    return {
        name: {r for pid in _descendants(proc.pid) if (r := _flow_run_of(pid))}
        for name, proc in cluster.workers.items()
        if proc.poll() is None
    }


async def test_a_csv_in_the_teams_bucket_is_fanned_out_and_archived_there_with_the_blocks_keys(
    cluster: Cluster, emulator: Any, s3_archive: tuple[str, dict[str, Any]], s3_client: Any
) -> None:
    """The parent (a deployment run on a worker) reads the prompt file from the bucket and every
    chunk run archives there, with keys that exist only in the saved ImageArchive block."""
    import json as _json

    emulator.configure(latency=0.3)  # drawn in full: each label's words are read back (#34)
    emulator.force("misspell_text", provider="runware", count=2)
    provider = await save_provider(cluster, emulator)
    basepath, options = s3_archive
    bucket = basepath.removeprefix("s3://").split("/")[0]
    client = s3_client
    rows = "".join(f"item {i},studio,S-{i}\n" for i in range(12))
    client.put_object(Bucket=bucket, Key="in/rows.csv", Body=("name,style,sku\n" + rows).encode())
    public = {k: v for k, v in options.items() if k not in ("key", "secret")}
    secret = _json.dumps({"key": options["key"], "secret": options["secret"]})
    name = f"bucket-archive-{uuid.uuid4().hex[:6]}"
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        await ImageArchive(
            basepath=basepath, storage_options=public, secret_storage_options=secret
        ).asave(name)
    params: dict[str, Any] = dict(
        prompts=f"s3://{bucket}/in/rows.csv",
        prompt_template='product shot of {name}, a tag reading "{name} {style}"',
        provider=provider,
        archive=name,
        chunk_size=4,
        concurrency=4,
        text_check="flag",
        **{**IMAGE, "size": "512x512"},
    )
    parent = start_parent(cluster, params)
    done = await wait_for_run(cluster, parent["id"], timeout=240)
    assert done["state_type"] == "COMPLETED", (done["state"], _logs(cluster))
    _assert_paid_once(emulator.ledger(), 12)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=basepath.split("/", 3)[3] + "/images/")
    images = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".png")]
    assert len(images) == 12, images
    checks = [
        _json.loads(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())["text_check"]
        for o in listed["Contents"]
        if o["Key"].endswith(".json")
    ]
    assert sorted(c["passed"] for c in checks) == [False] * 2 + [True] * 10, checks


async def test_b_a_worker_killed_mid_batch_its_chunks_are_restarted_and_nothing_paid_twice(
    cluster: Cluster, emulator: Any, tmp_path: Path
) -> None:
    # Long jobs, all of a chunk's rows in flight at once: the kill lands while every job of
    # the lost chunks is submitted (paid) and not yet done, the case that must not pay twice.
    # Resumed jobs are polled at once (they neither wait for nor teach the learned duration):
    # the restarted chunks must collect them before the emulator's 300 s URLs expire.
    emulator.configure(latency=JOB_SECONDS, render_mode="stamp")
    provider = await save_provider(cluster, emulator)
    archive = tmp_path / "archive"
    prompts = [f"crash-test prompt {i}" for i in range(300)]
    params: dict[str, Any] = dict(
        prompts=prompts,
        provider=provider,
        archive=str(archive),
        chunk_size=50,
        concurrency=50,
        max_cost=300 * PRICE,
        lost_after_seconds=LOST_AFTER,
        **IMAGE,
    )
    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: cluster.env["PREFECT_API_URL"]}):
        first = asyncio.create_task(distributed_batch(**params))
        # The parent dies once its chunk runs exist; its re-run adopts them (same keys).
        while len(_runs(cluster, archive)) < 6 and not first.done():
            await asyncio.sleep(0.5)
        first.cancel()
        await asyncio.wait([first])
        parent = asyncio.create_task(distributed_batch(**params))

    # Once every job is submitted (paid) and in flight, lose a worker whose chunk runs are
    # all running: it and its flow-run processes die at once, as with a machine. (Every
    # chunk run has started by then: a run a dead worker left Pending would never start.)
    victim = None
    while victim is None and not parent.done() and time.monotonic() - started < 180:
        await asyncio.sleep(0.5)
        if len(emulator.ledger()["submissions"]) < len(prompts):
            continue
        runs = _runs(cluster, archive)
        running = {r["id"] for r in runs if r["state_type"] == "RUNNING"}
        for name, ids in _runs_by_worker(cluster).items():
            if ids and ids <= running:
                victim = name
                break
    assert victim is not None, ("no worker was running chunks", _runs(cluster, archive))
    proc = cluster.workers[victim]
    family = _descendants(proc.pid)
    doomed = {r for pid in family if (r := _flow_run_of(pid))}  # every run it had, at once
    os.kill(proc.pid, signal.SIGKILL)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    killed_at = time.monotonic() - started

    try:
        result = await asyncio.wait_for(parent, timeout=240)
    except TimeoutError:
        states = [
            (r["name"], r["state_type"], r["state"]["message"]) for r in _runs(cluster, archive)
        ]
        raise AssertionError((states, _logs(cluster))) from None
    total = time.monotonic() - started
    assert [img.row for img in result.images] == list(range(300)), result.failures[:5]
    assert [img.prompt for img in result.images] == prompts and not result.failures
    # This run paid for every image, the lost chunk runs' ones included, each once.
    assert result.cost == result.images_cost == {"usd": pytest.approx(300 * PRICE)}
    _assert_paid_once(emulator.ledger(), 300)  # 0 duplicate submissions
    runs = {r["id"]: r for r in _runs(cluster, archive)}
    for run_id in doomed:
        state = runs[run_id]["state"]
        assert runs[run_id]["state_type"] == "CRASHED" and "no heartbeat" in state["message"]
    # No chunk run was started twice: the re-run adopted the six, and only the lost ones
    # were started again.
    assert len(runs) == 6 + len(doomed), sorted(r["name"] for r in runs.values())
    states = Counter(r["state_type"] for r in runs.values())
    assert states == {"COMPLETED": 6, "CRASHED": len(doomed)}, states
    print(
        f"kill -9 of {victim} at {killed_at:.1f} s ({len(doomed)} chunk run(s) lost); "
        f"batch done at {total:.1f} s"
    )


async def test_c_a_chunk_run_whose_worker_died_before_starting_it_is_cancelled_and_run_again(
    cluster: Cluster, emulator: Any, tmp_path: Path
) -> None:
    """A worker takes both chunk runs (Pending) and starts their processes, which (on this
    worker only) sleep before running the flow; worker and processes are killed then.
    Nothing would ever start them: the parent cancels them once Pending past
    start_timeout_seconds and starts them again, and a second worker runs the new attempts.
    Nothing is paid twice."""
    emulator.configure(latency=0.2, render_mode="stamp")
    provider = await save_provider(cluster, emulator)
    env = cluster.env
    pools = {p["name"] for p in api(env, "POST", "/work_pools/filter", {})}
    if "gptimg-slow-start" not in pools:
        cli(env, "work-pool", "create", "gptimg-slow-start", "--type", "process")
    base = api(env, "GET", "/deployments/name/batch-generate/batch-from-file")
    fields = ("flow_id", "entrypoint", "path", "pull_steps", "parameter_openapi_schema")
    body = {k: base[k] for k in fields if base.get(k) is not None}
    body.update(
        name="slow-start",
        work_pool_name="gptimg-slow-start",
        # a worker started with GPTIMG_TEST_START_DELAY starts its runs' processes late
        job_variables={
            "command": "sh -c 'sleep ${GPTIMG_TEST_START_DELAY:-0}; "
            f"exec {sys.executable} -m prefect.engine'"
        },
    )
    api(env, "POST", "/deployments/", body)
    archive = tmp_path / "archive"

    def chunk_runs() -> list[dict[str, Any]]:
        return _runs(cluster, archive, "batch-generate/slow-start")

    params: dict[str, Any] = dict(
        prompts=[f"slow start {i}" for i in range(8)],
        provider=provider,
        archive=str(archive),
        chunk_size=4,
        concurrency=4,
        deployment="batch-generate/slow-start",
        start_timeout_seconds=8,
        **IMAGE,
    )
    slow_env = {**env, "GPTIMG_TEST_START_DELAY": "30"}
    first = start_worker(slow_env, "slow-1", cluster.home, limit=4, pool="gptimg-slow-start")
    second = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            parent = asyncio.create_task(distributed_batch(**params, return_state=True))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            runs = chunk_runs()
            if len(runs) == 2 and all(r["state_type"] == "PENDING" for r in runs):
                break
        else:
            raise AssertionError(("the worker did not take both chunk runs", chunk_runs()))
        family = _descendants(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.wait(10)
        taken = {r["id"] for r in chunk_runs()}
        while time.monotonic() < deadline + 60:
            await asyncio.sleep(0.5)
            states = {r["id"]: r["state_type"] for r in chunk_runs()}
            if all(states.get(i) == "CANCELLED" for i in taken) and len(states) == 4:
                break
        else:
            raise AssertionError(("not cancelled and started again", chunk_runs()))
        second = start_worker(env, "slow-2", cluster.home, limit=4, pool="gptimg-slow-start")
        state = await asyncio.wait_for(parent, timeout=180)
        result = await state.result()
    finally:
        stop_workers([w for w in (first, second) if w is not None])
    assert not result.failures and [img.row for img in result.images] == list(range(8))
    _assert_paid_once(emulator.ledger(), 8)
    runs = {r["id"]: r for r in chunk_runs()}
    for run_id in taken:
        assert runs[run_id]["state_type"] == "CANCELLED"
        assert "never started it" in runs[run_id]["state"]["message"], runs[run_id]["state"]
    assert Counter(r["state_type"] for r in runs.values()) == {"CANCELLED": 2, "COMPLETED": 2}
    report = read_report(cluster, str(state.state_details.flow_run_id))
    assert report.count("(never started)") == 2, report
