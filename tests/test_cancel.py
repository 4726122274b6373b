"""A stopped run lets its paid calls land (issue #35, item 3): Ctrl-C, a flow run cancelled in
Prefect, or a SIGTERM never cuts a submit that was sent; its answer is recorded (the job, in
`_jobs/`), then the run stops, and the same command again resumes every recorded job: every
image paid for is archived and nothing is paid twice. A second Ctrl-C stops at once and names
what it leaves uncertain.

Each test pays slowly (the emulator's `submit_latency`: a submit's job exists, charged, for
that long before the answer comes back), so submits are in flight when the stop comes."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from gptimg_flows import batch_generate
from gptimg_flows.blocks.from_env import SOURCES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")

ROWS = 12
SUBMIT_SECONDS = 1.5
#: The variables blocks_env reads: kept from the child, as tests/test_cli.py does.
_OURS = {var for s in SOURCES for _, var in s.secrets} | {s.base_url_var for s in SOURCES}


def _paid(emulator: Any) -> list[dict[str, Any]]:
    return list(emulator.ledger()["submissions"])


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _wait_paid(emulator: Any, proc: subprocess.Popen[str], n: int) -> None:
    """Until the provider has been paid `n` submits by the command `proc`."""

    def paid() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended ({proc.returncode}) first:\n{out}\n{err}")
        return len(_paid(emulator)) >= n

    _wait_for(paid, 120, f"{n} paid submits")


def _jobs(archive: Path) -> dict[str, dict[str, Any]]:
    """Every job record, by key."""
    return {p.stem: json.loads(p.read_text()) for p in archive.glob("_jobs/*.json")}


def _assert_every_paid_job_recorded(archive: Path, paid: list[dict[str, Any]]) -> None:
    records = _jobs(archive)
    left = {k[:12]: r.get("state") for k, r in records.items() if not r.get("job")}
    assert not left, f"records left without a job (submitting/uncertain): {left}"
    recorded = {r["job"]["job_id"] for r in records.values()}
    assert {s["job_id"] for s in paid} <= recorded, "a paid job is not on record"


def _assert_paid_once_and_all_archived(archive: Path, paid: list[dict[str, Any]]) -> None:
    assert len(paid) == ROWS, f"{len(paid)} submissions paid for {ROWS} rows"
    bodies = [s["body_sha256"] for s in paid]
    assert len(set(bodies)) == len(bodies), "a request was paid twice"
    sidecars = [json.loads(p.read_text()) for p in archive.glob("images/*/*.json")]
    assert sorted(s["job_id"] for s in sidecars) == sorted(s["job_id"] for s in paid)


def _prompts(tmp_path: Path, tag: str) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"row {i} {tag}"}) + "\n" for i in range(ROWS)))
    return path


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.Popen(
        [sys.executable, "-m", "gptimg_flows.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _batch_args(emulator: Any, provider_block: Any, archive: Path, tmp_path: Path) -> list[str]:
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    provider_block("scenario").save(name)
    prompts = _prompts(tmp_path, uuid.uuid4().hex[:8])
    return [
        "batch",
        str(prompts),
        "--provider",
        name,
        "--archive",
        str(archive),
        "--concurrency",
        "4",
        "--size",
        "256x256",
    ]


def _run_again(args: list[str]) -> str:
    again = _cli(*args)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert "SubmitUncertain" not in out + err
    rows = {
        cells[0]: cells[1]
        for line in out.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2
    }
    assert rows["images"] == str(ROWS) and rows["failures"] == "0", out
    return out


@pytest.mark.slow
def test_ctrl_c_in_a_paid_batch_then_the_same_command_pays_once_and_loses_nothing(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """The finding: 12 rows, 4 at a time, Ctrl-C once 5 submits are paid. The command waits
    for the submits in flight to be recorded, exits 130, and the same command again archives
    every image paid for, paying only for the rows never sent."""
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    args = _batch_args(emulator, provider_block, archive_dir, tmp_path)
    proc = _cli(*args)
    try:
        _wait_paid(emulator, proc, 5)
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - interrupted
    assert proc.returncode == 130, (out, err)
    paid = _paid(emulator)
    assert 5 <= len(paid) < ROWS
    _assert_every_paid_job_recorded(archive_dir, paid)
    assert "stopping (Ctrl-C): waiting for" in err and "already sent to be recorded" in err, err
    assert "stopped: every paid call is recorded" in err, err
    assert took < 30, f"the stop took {took:.1f} s"

    emulator.configure(submit_latency=0.0)
    _run_again(args)
    _assert_paid_once_and_all_archived(archive_dir, _paid(emulator))


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_names_what_may_be_billed(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """The second Ctrl-C cuts the submits in flight: the command ends within a moment (not
    after their answers), naming each request it leaves uncertain, and those stay uncertain
    (a re-run stops on them rather than paying again)."""
    emulator.configure(submit_latency=10.0)
    args = _batch_args(emulator, provider_block, archive_dir, tmp_path)
    proc = _cli(*args)
    try:
        _wait_paid(emulator, proc, 4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        cut = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - cut
    assert proc.returncode == 130, (out, err)
    assert took < 8, f"a second Ctrl-C took {took:.1f} s"  # the answers were 10 s away
    assert "stopping at once: 4 paid call(s) were cut" in err, err
    assert err.count("Scenario submit of 'row ") >= 4, err
    assert "may have been billed" in err and "SubmitUncertain" in err
    records = _jobs(archive_dir)
    assert sum(1 for r in records.values() if r.get("state") == "submitting") == 4

    emulator.configure(submit_latency=0.0)
    again = _cli(*args)
    out, err = again.communicate(timeout=180)
    assert "SubmitUncertain" in out, out  # the 4 cut ones: reported, not paid again
    paid = _paid(emulator)
    assert len(paid) == ROWS and len({s["body_sha256"] for s in paid}) == ROWS


def _in_own_loop(main: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 120) -> Any:
    """`asyncio.run(main())` as a user's script runs it (in a thread here, with this test's
    Prefect settings): its loop closes before this returns."""
    context = contextvars.copy_context()
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["result"] = context.run(asyncio.run, main())
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out.get("result")


@pytest.mark.slow
def test_a_cancelled_batch_task_lets_its_paid_submits_land(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """In-process: the task running batch_generate is cancelled mid-submit (what asyncio.run
    does on Ctrl-C). Once the script's loop has closed, every submission the provider saw is
    recorded `submitted` (none left `submitting`), and a re-run archives them all, paying only
    for the rows never sent."""
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    kwargs = {
        "prompts": [f"in-process row {i} {uuid.uuid4().hex[:8]}" for i in range(ROWS)],
        "provider": provider_block("scenario"),
        "archive": str(archive_dir),
        "concurrency": 4,
        "size": "256x256",
    }

    async def script() -> str:
        run = asyncio.create_task(batch_generate(**kwargs))
        while len(await asyncio.to_thread(_paid, emulator)) < 5:
            await asyncio.sleep(0.05)
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert _in_own_loop(script) == "cancelled"
    paid = _paid(emulator)
    assert 5 <= len(paid) < ROWS
    _assert_every_paid_job_recorded(archive_dir, paid)

    emulator.configure(submit_latency=0.0)
    result = _in_own_loop(lambda: batch_generate(**kwargs))
    assert len(result.images) == ROWS and not result.failures
    _assert_paid_once_and_all_archived(archive_dir, _paid(emulator))


async def _cancel_in_prefect(run_name: str) -> None:
    async with get_client() as client:
        found = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
        )
        (run,) = found
        await client.set_flow_run_state(run.id, Cancelling(), force=True)


async def _state_of(run_name: str) -> str:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
        )
        assert run.state is not None
        return str(run.state.name)


@pytest.mark.slow
async def test_prefect_does_not_stop_an_in_process_run_it_cancels(
    emulator: Any, provider_block: Any, archive_dir: Path
) -> None:
    """What Prefect 3.9 does with a run made in-process (a script's `await batch_generate`)
    set to Cancelling through the API: nothing. The run goes on, pays for every row, and its
    Completed is refused, so it stays Cancelling. (`gptimg batch` watches for it: below.)"""
    emulator.configure(submit_latency=0.5)
    name = f"api-cancel-{uuid.uuid4().hex[:8]}"
    prompts: list[str | dict[str, Any]] = [
        f"api row {i} {uuid.uuid4().hex[:8]}" for i in range(ROWS)
    ]
    flow = batch_generate.with_options(flow_run_name=name)
    run = asyncio.create_task(
        flow(
            prompts=prompts,
            provider=provider_block("scenario"),
            archive=str(archive_dir),
            concurrency=4,
            size="256x256",
        )
    )
    while len(await asyncio.to_thread(_paid, emulator)) < 5:
        await asyncio.sleep(0.05)
    await _cancel_in_prefect(name)
    result = await asyncio.wait_for(run, 60)
    assert len(result.images) == ROWS and len(_paid(emulator)) == ROWS
    assert await _state_of(name) == "Cancelling"


@pytest.mark.slow
def test_gptimg_batch_cancelled_in_prefect_stops_once_its_paid_submits_are_recorded(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """The UI's Cancel of a `gptimg batch` run (the API's Cancelling): the command sees it,
    stops as at a first Ctrl-C (the submits in flight are recorded first), marks the run
    Cancelled and exits 1 saying so; the same command again pays only for what was never
    sent."""
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    args = _batch_args(emulator, provider_block, archive_dir, tmp_path)
    proc = _cli(*args)
    try:
        _wait_paid(emulator, proc, 5)
        name = asyncio.run(_run_name_of_newest_batch())
        asyncio.run(_cancel_in_prefect(name))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    # Which of the two it says depends on the moment the cancel is seen (the command looks
    # every 2 s; the rows submit and poll in step, so now and then no submit is on the wire).
    assert re.search(
        r"stopping \(the flow run was cancelled in Prefect\): (waiting for|no paid call is in "
        r"flight)",
        err,
    ), err
    assert err.strip().splitlines()[-1].startswith("error: RunCancelled: "), err
    assert asyncio.run(_state_of(name)) == "Cancelled"
    paid = _paid(emulator)
    assert 5 <= len(paid) < ROWS
    _assert_every_paid_job_recorded(archive_dir, paid)

    emulator.configure(submit_latency=0.0)
    _run_again(args)
    _assert_paid_once_and_all_archived(archive_dir, _paid(emulator))


async def _run_name_of_newest_batch() -> str:
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    names = [
        r.name
        for r in runs
        if r.name.startswith("gptimg-batch-") and r.state is not None and r.state.is_running()
    ]
    assert len(names) == 1, f"gptimg batch runs running: {names}"
    return names[0]


@pytest.mark.slow
def test_a_sigterm_lets_the_paid_submits_in_flight_land(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM (a worker stopping the run, `kill`): Prefect's handler raises
    TerminationSignal, asyncio.run closes its loop, and the closing loop waits for the paid
    calls in flight (they refuse its cancellation) before the process ends (143)."""
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    args = _batch_args(emulator, provider_block, archive_dir, tmp_path)
    proc = _cli(*args)
    try:
        _wait_paid(emulator, proc, 5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    paid = _paid(emulator)
    assert 5 <= len(paid) < ROWS
    _assert_every_paid_job_recorded(archive_dir, paid)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in err, err

    emulator.configure(submit_latency=0.0)
    _run_again(args)
    _assert_paid_once_and_all_archived(archive_dir, _paid(emulator))


#: `gptimg` with Prefect's SIGTERM handler landing in a row's own task: the first poll raises
#: TerminationSignal (as the handler does wherever Python is when the signal comes) once
#: another row's submit is in flight.
_TERMINATED_IN_A_ROW = """
import asyncio, sys
from prefect.exceptions import TerminationSignal
from gptimg_flows.providers.scenario import ScenarioProvider

sending, first = 0, True
submit, poll = ScenarioProvider.submit, ScenarioProvider.poll

async def counted_submit(self, *args, **kwargs):
    global sending
    sending += 1
    try:
        return await submit(self, *args, **kwargs)
    finally:
        sending -= 1

async def terminated_poll(self, job):
    global first
    if first:
        first = False
        while not sending:
            await asyncio.sleep(0.01)
        raise TerminationSignal(15)
    return await poll(self, job)

ScenarioProvider.submit, ScenarioProvider.poll = counted_submit, terminated_poll
from gptimg_flows.cli import main
sys.argv = ["gptimg", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_sigterm_landing_in_a_row_lets_the_paid_submits_in_flight_land(
    emulator: Any, provider_block: Any, archive_dir: Path, tmp_path: Path
) -> None:
    """Where Prefect's SIGTERM handler raises in a row's task, the run's engine ends and
    hands the signal back to the handler that was there before it (SIG_DFL would kill the
    process at once, mid-submit): the command's, which stops as a first Ctrl-C does."""
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    args = _batch_args(emulator, provider_block, archive_dir, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    done = subprocess.run(
        [sys.executable, "-c", _TERMINATED_IN_A_ROW, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    paid = _paid(emulator)
    assert len(paid) < ROWS, done.stderr
    _assert_every_paid_job_recorded(archive_dir, paid)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert re.search(r"stopping \(SIGTERM\): waiting for [1-9]\d* paid call", done.stderr), (
        done.stderr
    )

    emulator.configure(submit_latency=0.0)
    _run_again(args)
    _assert_paid_once_and_all_archived(archive_dir, _paid(emulator))


@pytest.mark.slow
async def test_a_deployment_run_cancelled_under_a_worker_lets_its_paid_submits_land(
    cli_server: dict[str, str], emulator: Any, provider_block: Any, tmp_path: Path
) -> None:
    """The UI's Cancel of a deployment's run under a process worker: the worker tells the
    flow process (the cancel intent) and sends it SIGTERM; the flow's closing event loop
    waits for the submits in flight (well within the worker's 30 s before SIGKILL), so every
    paid job is on record, and a run of the same rows pays only for those never sent."""
    from prefect.settings import temporary_settings

    from gptimg_flows.blocks.credentials import ImageArchive

    from .support.prefect_cli import api, deploy_all, start_worker, stop_workers

    env = {**cli_server}
    deploy_all(env)
    archive = tmp_path / "content-archive"
    block = f"cancel-{uuid.uuid4().hex[:8]}"
    scenario = provider_block("scenario")
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        await ImageArchive(basepath=str(archive)).asave("content-archive", overwrite=True)
        await scenario.asave(block)
    emulator.configure(submit_latency=SUBMIT_SECONDS)
    params: dict[str, Any] = {
        "prompts": [f"worker row {i} {uuid.uuid4().hex[:8]}" for i in range(ROWS)],
        "provider": block,
        "archive": "content-archive",
        "concurrency": 4,
        "size": "256x256",
    }
    deployment = api(env, "GET", "/deployments/name/batch-generate/batch-from-file")
    path = f"/deployments/{deployment['id']}/create_flow_run"
    run_id = api(env, "POST", path, {"parameters": params})["id"]
    workdir = tmp_path / "worker"
    workdir.mkdir()
    worker = start_worker(env, None, workdir, limit=1, log=tmp_path / "worker.log")
    try:
        _wait_for(lambda: len(_paid(emulator)) >= 5, 180, "5 paid submits")
        cancel = {"state": {"type": "CANCELLING"}, "force": True}
        api(env, "POST", f"/flow_runs/{run_id}/set_state", cancel)
        _wait_for(
            lambda: api(env, "GET", f"/flow_runs/{run_id}")["state_type"] == "CANCELLED",
            60,
            "the run Cancelled",
        )
    finally:
        stop_workers([worker])
    paid = _paid(emulator)
    assert 5 <= len(paid) < ROWS, (tmp_path / "worker.log").read_text()[-3000:]
    _assert_every_paid_job_recorded(archive, paid)

    emulator.configure(submit_latency=0.0)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        result = await batch_generate(**{**params, "provider": scenario, "archive": str(archive)})
    assert len(result.images) == ROWS and not result.failures
    _assert_paid_once_and_all_archived(archive, _paid(emulator))


@pytest.mark.parametrize("paced", [False, True], ids=["claimed-up-front", "claimed-when-paced"])
async def test_a_stop_while_the_claim_is_written_withdraws_it(
    paced: bool,
    emulator: Any,
    provider_block: Any,
    archive_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped while its claim is being written (nothing sent yet), a request leaves no
    claim behind: one left would read as a lost answer, and the next run would stop on a
    request never paid for (SubmitUncertain). Both places a claim is made: up front, and in
    the paid call's own task when the account is paced (the block knows its rate)."""
    from gptimg_flows.engine import records, steps

    writing = threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        time.sleep(0.5)
        return records.try_claim(*args, **kwargs)

    monkeypatch.setattr(steps, "try_claim", slow_claim)
    block = provider_block("scenario", **({"images_per_minute": 600} if paced else {}))
    run = asyncio.create_task(
        batch_generate(
            prompts=[f"never sent {uuid.uuid4().hex[:8]}"],
            provider=block,
            archive=str(archive_dir),
            size="256x256",
        )
    )
    while not writing.is_set():
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(1.0)  # the claim's thread is done by now
    assert _jobs(archive_dir) == {} and _paid(emulator) == []
