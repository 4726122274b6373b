"""A seeded simulation of the paths that can pay, mixed with faults and kill -9, over the provider
emulator and a real Prefect server (issue #32): the same seed plays the same story.

One example: a few prompts; a home provider P and another seller Q; 3-5 runs, each down one path
(P alone, a route [P, Q] or [Q, P], for OpenAI the Batch API too), each with forced faults (a
lost answer, a gateway 504 after the job exists, a 503, a 429 with a junk or huge Retry-After,
refused polls, truncated downloads, Q down), some stopped in the middle: killed with SIGKILL,
a Ctrl-C (SIGINT), or `gptimg batch` cancelled through the Prefect API. Then every
path is run once more with no faults (the runs that settle), and the example is judged from the
emulator's ledger and the archive:

- each request (prompt) paid at most once, by any seller;
- every paid request has its image archived, or the settling runs report it uncertain (never
  sent again);
- every run ended within its timeout plus a margin (a Ctrl-C'd or cancelled one too), and a
  Ctrl-C or a cancel left no request uncertain beyond the run's ambiguous faults;
- no job record moved where engine/job_record does not go (backwards).

tests/test_simulation.py runs a fixed budget of seeds in CI; bench/seams_sim.py runs many more.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptimg_flows.archive.layout import job_rel
from gptimg_flows.archive.store import Archive
from gptimg_flows.engine.job_record import MOVES, State, state_of

ROOT = Path(__file__).resolve().parents[2]
#: A run's requests time out after this; the run itself must end within it plus MARGIN.
TIMEOUT_SECONDS = 20.0
MARGIN_SECONDS = 45.0
#: Blocks cap Retry-After at this in the simulation (a huge one must not hold a run).
RETRY_AFTER_CAP = 2.0
SIZE = "1024x1024"

#: Faults a run may be given (kind, whose), forced in this order.
FAULTS: tuple[str, ...] = (
    "submit_lost_response",
    "gateway_504",
    "malformed_json",
    "submit_503",
    "submit_429",
    "poll_500",
    "poll_429",
    "download_truncate",
)
#: How a run may be stopped in the middle (RunPlan.stop).
STOPS = ("kill", "sigint", "cancel")
#: Faults that may leave a request uncertain (its answer lost or ambiguous after sending).
AMBIGUOUS = frozenset({"submit_lost_response", "gateway_504", "malformed_json"})
JUNK_RETRY_AFTER = ("soon", "1e9", "inf", "-5", "Wed, 21 Oct 2065 07:28:00 GMT", "")
FAMILIES = {"scenario": "gptimage2ai", "runware": "gptimage2ai", "openai": "gptimage2ai"}


@dataclass
class RunPlan:
    path: str  # "alone", "route-pq", "route-qp", "chunk" (a distributed_batch chunk), "batch"
    faults: list[tuple[str, str]]
    retry_after_header: str | None
    q_down: bool
    kill_after_paid: int | None  # stop the run once this many more submits are paid (None: no stop)
    kill_delay: float
    chunk: tuple[int, int] = (0, 0)  # the rows a "chunk" run makes
    refresh: bool = False  # pays for new images (a refresh)
    edit: bool = False  # the story's edit request too (after the batch, same path)
    remake: bool = False  # remake_uncertain=True: pays again for requests in doubt
    #: how it is stopped: "kill" (SIGKILL), "sigint" (a Ctrl-C), "cancel" (its flow run set to
    #: Cancelling through the Prefect API, as the UI's Cancel does; `gptimg batch` watches for
    #: it, so this run is that command; paths the CLI does not take get a Ctrl-C instead)
    stop: str = "kill"


@dataclass
class Plan:
    seed: int
    home: str
    other: str
    prompts: list[str]
    runs: list[RunPlan]
    cap: int = 0  # the home block's daily cap, in images

    @property
    def edit_prompt(self) -> str:
        return f"sim {self.seed} edit: a storm sky"

    @property
    def every_prompt(self) -> list[str]:
        return [*self.prompts, self.edit_prompt]


def plan(seed: int, *, kills: bool = True) -> Plan:
    rng = random.Random(seed)
    home = rng.choice(sorted(FAMILIES))
    other = FAMILIES[home]
    prompts = [f"sim {seed} request {i}" for i in range(rng.randint(2, 4))]
    paths = ["alone", "route-pq", "route-qp", "chunk"] + (["batch"] * 2 if home == "openai" else [])
    runs = []
    for _ in range(rng.randint(3, 5)):
        faults = [(rng.choice(FAULTS), rng.choice([home, other])) for _ in range(rng.randint(1, 4))]
        runs.append(
            RunPlan(
                path=rng.choice(paths),
                faults=faults,
                retry_after_header=rng.choice([None, None, *JUNK_RETRY_AFTER]),
                q_down=rng.random() < 0.2,
                kill_after_paid=rng.randint(0, len(prompts))
                if kills and rng.random() < 0.3
                else None,
                kill_delay=rng.uniform(0.0, 0.6),
                chunk=(lo := rng.randrange(len(prompts)), rng.randint(lo + 1, len(prompts))),
                refresh=rng.random() < 0.15,
                edit=rng.random() < 0.4,
                remake=rng.random() < 0.2,
                stop=rng.choice(STOPS),
            )
        )
    cap = rng.randint(len(prompts), 3 * len(prompts))
    return Plan(seed, home, other, prompts, runs, cap)


@dataclass
class Outcome:
    seed: int
    violations: list[str] = field(default_factory=list)
    runs: int = 0
    kills: int = 0
    stops: int = 0  # runs stopped by a Ctrl-C or a cancel (not a kill)
    paid: int = 0
    archived: int = 0
    uncertain: int = 0
    longest_run: float = 0.0
    edits: list[Any] = field(default_factory=list)  # what each edit answered


def _name(provider: str) -> str:
    return f"sim-{provider}"


def _provider(p: Plan, path: str) -> str | list[str]:
    home, other = _name(p.home), _name(p.other)
    return {"route-pq": [home, other], "route-qp": [other, home]}.get(path, home)


def _kwargs(p: Plan, run: RunPlan | None, path: str, archive: Path) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "prompts": p.prompts,
        "archive": str(archive),
        "size": SIZE,
        "timeout_seconds": TIMEOUT_SECONDS,
        "concurrency": 4,
    }
    if path == "batch":
        kw.update(batch_api=True, batch_wait_seconds=TIMEOUT_SECONDS, batch_poll_seconds=0.2)
    if path == "chunk" and run is not None:  # the rows a chunk run of distributed_batch makes
        lo, hi = run.chunk
        kw.update(prompts=p.prompts[lo:hi], row_numbers=list(range(lo, hi)))
    if run is not None and run.refresh:
        kw["refresh"] = True
    if run is not None and run.remake:
        kw["remake_uncertain"] = True
    return kw


def _snapshot(archive: Path) -> dict[str, State]:
    store = Archive(str(archive))
    keys = [p.stem for p in archive.glob("_jobs/*.json")] + [
        p.stem for p in archive.glob("_results/*.json")
    ]
    out = {}
    for key in set(keys):
        try:
            out[key] = state_of(store, key).state
        except Exception:  # a record read mid-write by a killed process: judged next time
            continue
    return out


def _uncertain(archive: Path) -> set[str]:
    """Keys whose submit is uncertain (a claim whose answer was never recorded)."""
    return {key for key, state in _snapshot(archive).items() if state in (State.UNCERTAIN,)}


def _reachable() -> dict[State, set[State]]:
    reach = {s: {s} for s in State}
    changed = True
    while changed:
        changed = False
        for a in State:
            for b in list(reach[a]):
                for c in MOVES[b]:
                    if c not in reach[a]:
                        reach[a].add(c)
                        changed = True
    return reach


REACH = _reachable()


#: Prices for the providers that document none (a spend limit needs an estimate).
PRICES = {"scenario": 5.0, "runware": 0.05}


async def save_blocks(provider_block: Any, caps: dict[str, str] | None = None) -> None:
    """The story's blocks; `caps` gives a provider a spend limit (a bucket on the server) in
    which every image, whatever its price, takes one slot."""
    for provider in sorted(set(FAMILIES) | set(FAMILIES.values())):
        extra: dict[str, Any] = {}
        if provider in PRICES:
            extra["price_per_image"] = PRICES[provider]
        if caps and provider in caps:
            extra.update(
                spend_limit=caps[provider], spend_limit_unit=1e6, spend_limit_wait_seconds=0.2
            )
        block = provider_block(
            provider, retries=2, max_retry_after_seconds=RETRY_AFTER_CAP, **extra
        )
        await block.save(_name(provider), overwrite=True)


async def _cap(limit: int) -> str:
    from prefect.client.orchestration import get_client

    name = f"sim-cap-{uuid.uuid4().hex[:10]}"
    async with get_client() as client:
        response = await client._client.post(
            "/v2/concurrency_limits/",
            json={"name": name, "limit": limit, "slot_decay_per_second": 1e-6},
        )
        response.raise_for_status()
    return name


async def _held(name: str) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
    return int(limit.active_slots)


def _stopped(
    command: list[str], emulator: Any, after_paid: int, delay: float, deadline: float, how: str
) -> str:
    """Run one flow's process; stop it `how` once `after_paid` more submits are paid (and
    `delay` later): "ended" (it ended first), "stopped", or "hung" (a Ctrl-C or a cancel that
    did not end the process within the deadline)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    before = len(emulator.ledger()["submissions"])
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stop = time.monotonic() + deadline
        while proc.poll() is None and time.monotonic() < stop:
            if len(emulator.ledger()["submissions"]) >= before + after_paid:
                time.sleep(delay)
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            return "ended"
        if how == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "sigint":
            os.kill(proc.pid, signal.SIGINT)
        elif not asyncio.run(_cancel_running_batch()):
            proc.wait(max(1.0, stop - time.monotonic()))  # it ended before it was cancelled
            return "ended"
        try:
            proc.wait(max(10.0, stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            return "hung"
        return "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _cancel_running_batch() -> bool:
    """The running `gptimg batch` flow run set to Cancelling, as the UI's Cancel does."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Cancelling

    for _ in range(100):
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=10)
            for run in runs:
                if run.name.startswith("gptimg-batch-") and run.state and run.state.is_running():
                    await client.set_flow_run_state(run.id, Cancelling(), force=True)
                    return True
        await asyncio.sleep(0.1)
    return False


def _command(p: Plan, run: RunPlan, path: str, archive: Path) -> tuple[list[str], str]:
    """The process a stopped run is, and how it is stopped."""
    kwargs = _kwargs(p, run, path, archive)
    if run.stop != "cancel" or path in ("batch", "chunk"):  # the CLI has no chunk or Batch API
        spec = {"flow": "batch_generate", "provider": _provider(p, path), "kwargs": kwargs}
        how = "sigint" if run.stop == "cancel" else run.stop
        return ["-m", "tests.support.flow_process", json.dumps(spec)], how
    prompts = archive.parent / f"sim-{p.seed}-prompts.txt"
    prompts.write_text("".join(f"{prompt}\n" for prompt in kwargs["prompts"]))
    provider = _provider(p, path)
    args = ["-m", "gptimg_flows.cli", "batch", str(prompts)]
    args += ["-p", provider if isinstance(provider, str) else ",".join(provider)]
    args += ["-a", str(archive), "--size", SIZE, "--concurrency", str(kwargs["concurrency"])]
    args += ["--timeout", str(kwargs["timeout_seconds"])]
    args += ["--refresh"] * bool(kwargs.get("refresh"))
    args += ["--remake-uncertain"] * bool(kwargs.get("remake_uncertain"))
    return args, "cancel"


async def _one_run(
    p: Plan, run: RunPlan | None, path: str, emulator: Any, archive: Path, out: Outcome
) -> Any:
    import gptimg_flows

    faults = run.faults if run is not None else []
    emulator.configure(
        force=[{"kind": k, "provider": who, "count": 1} for k, who in faults],
        retry_after_header=run.retry_after_header if run is not None else None,
        outages=[{"provider": p.other, "status": 503}] if run is not None and run.q_down else [],
    )
    started = time.monotonic()
    result: Any = None
    if run is not None and run.kill_after_paid is not None:
        command, how = _command(p, run, path, archive)
        doubt_before = _uncertain(archive)
        ended = await asyncio.to_thread(
            _stopped,
            command,
            emulator,
            run.kill_after_paid,
            run.kill_delay,
            TIMEOUT_SECONDS + MARGIN_SECONDS,
            how,
        )
        out.kills += int(ended == "stopped" and how == "kill")
        out.stops += int(ended == "stopped" and how != "kill")
        if ended == "hung":
            out.violations.append(f"a {path} run stopped by {how} did not end")
        elif how != "kill":  # a Ctrl-C or a cancel lets every sent submit land
            ambiguous = sum(kind in AMBIGUOUS for kind, _ in run.faults)
            if (new := len(_uncertain(archive) - doubt_before)) > ambiguous:
                out.violations.append(
                    f"a {path} run stopped by {how} left {new} request(s) uncertain with "
                    f"{ambiguous} ambiguous fault(s): a sent submit was cut"
                )
    else:
        try:
            result = await asyncio.wait_for(
                gptimg_flows.batch_generate(
                    provider=_provider(p, path), **_kwargs(p, run, path, archive)
                ),
                TIMEOUT_SECONDS + MARGIN_SECONDS,
            )
        except TimeoutError:
            out.violations.append(f"a {path} run did not end within its timeout plus a margin")
        except Exception as exc:  # a run may fail (a row's error is in its result otherwise)
            result = exc
        if run is None or run.edit:
            out.edits.append(await _edit(p, run, path, archive, out))
    took = time.monotonic() - started
    out.longest_run = max(out.longest_run, took)
    out.runs += 1
    return result


async def _edit(p: Plan, run: RunPlan | None, path: str, archive: Path, out: Outcome) -> Any:
    """The story's edit (an input image of its own), down the run's path where an edit can go
    (a route with a member that takes no local image first falls back to the home provider)."""
    from PIL import Image

    import gptimg_flows

    source = archive.parent / f"sim-{p.seed}-source.png"
    if not source.exists():
        Image.new("RGB", (256, 256), (40, 90, 160)).save(source)
    where = path if path in ("alone", "route-pq", "batch") else "alone"
    kw: dict[str, Any] = {"timeout_seconds": TIMEOUT_SECONDS}
    if where == "batch":
        kw.update(batch_api=True, batch_wait_seconds=TIMEOUT_SECONDS, batch_poll_seconds=0.2)
    if run is not None and run.remake:
        kw["remake_uncertain"] = True
    try:
        return await asyncio.wait_for(
            gptimg_flows.edit_image(
                image=str(source),
                prompt=p.edit_prompt,
                provider=_provider(p, where),
                archive=str(archive),
                **kw,
            ),
            TIMEOUT_SECONDS + MARGIN_SECONDS,
        )
    except TimeoutError:
        out.violations.append(f"an edit ({where}) did not end within its timeout plus a margin")
        return None
    except Exception as exc:
        return exc


def _check_moves(before: dict[str, State], after: dict[str, State], when: str) -> list[str]:
    bad = []
    for key, old in before.items():
        new = after.get(key, State.NONE)
        if new not in REACH[old]:
            bad.append(f"{when}: record {key[:12]} went from {old.value} to {new.value}")
    return bad


async def simulate(
    seed: int, emulator: Any, workdir: Path, provider_block: Any, *, kills: bool = True
) -> Outcome:
    """Play one seeded story and judge it (see the module docstring)."""
    p = plan(seed, kills=kills)
    out = Outcome(seed)
    archive = workdir / f"sim-{seed}"
    emulator.reset(config=True)
    emulator.configure(latency=0.3, render_mode="stamp", retry_after=0.2, seed=seed)
    cap = await _cap(p.cap)
    await save_blocks(provider_block, {p.home: cap})
    snap = _snapshot(archive)
    tokens: set[str] = set()
    for number, run in enumerate(p.runs):
        await _one_run(p, run, run.path, emulator, archive, out)
        now = _snapshot(archive)
        out.violations += _check_moves(snap, now, f"run {number} ({run.path})")
        snap = now
        tokens |= _tokens(archive)
    # Settle: every path once, no faults, no kills.
    settle = ["batch", "route-pq", "alone"] if p.home == "openai" else ["route-pq", "alone"]
    results = []
    for path in settle:
        results.append(await _one_run(p, None, path, emulator, archive, out))
        now = _snapshot(archive)
        out.violations += _check_moves(snap, now, f"settling ({path})")
        snap = now
    _judge(p, emulator, archive, results, out, extra_payments=len(tokens) + _remakes(p))
    held, paid_home = await _held(cap), _paid_at(emulator, p, p.home)
    if not paid_home <= held <= p.cap:
        out.violations.append(
            f"the daily cap of {p.cap} image(s) at {p.home}: {held} slot(s) held for "
            f"{paid_home} paid (paid <= held <= cap must hold)"
        )
    if out.kills == 0 and held > paid_home + out.uncertain + _lines_in_doubt(archive):
        out.violations.append(
            f"{held - paid_home} slot(s) of {p.home}'s cap held with nothing paid and nothing "
            "in doubt: a reservation was not given back"
        )
    return out


def _lines_in_doubt(archive: Path) -> int:
    """Lines of Batch API batches whose create was answered ambiguously (still "creating"):
    they may be billed, so their reservations are rightly kept."""
    lines = 0
    for path in archive.glob("_batches/*.json"):
        record = json.loads(path.read_text())
        if record.get("state") == "creating":
            lines += len(record.get("keys") or [])
    return lines


def _tokens(archive: Path) -> set[str]:
    out = set()
    for path in archive.glob("_refreshes/*.json"):
        try:
            out.add(str(json.loads(path.read_text()).get("token")))
        except ValueError:
            continue
    return out


def _remakes(p: Plan) -> int:
    return sum(1 for run in p.runs if run.remake)


def _paid_at(emulator: Any, p: Plan, provider: str) -> int:
    subs = emulator.ledger()["submissions"]
    return sum(1 for s in subs if s["provider"] == provider and s.get("prompt") in p.every_prompt)


def _judge(
    p: Plan,
    emulator: Any,
    archive: Path,
    results: list[Any],
    out: Outcome,
    extra_payments: int = 0,
) -> None:
    """Paid at most once (plus once per refresh and re-make the story asked for), every paid
    request archived or reported uncertain, every request made or refused by the cap."""
    ledger = emulator.ledger()
    paid: dict[str, list[str]] = {}
    for sub in ledger["submissions"]:
        if sub.get("prompt") in p.every_prompt:
            paid.setdefault(sub["prompt"], []).append(f"{sub['provider']}:{sub['job_id']}")
    out.paid = sum(len(v) for v in paid.values())
    for prompt, jobs in paid.items():
        if len(jobs) > 1 + extra_payments:
            out.violations.append(
                f"{prompt!r} was paid {len(jobs)} times ({extra_payments} refresh(es) and "
                f"re-make(s) asked for): {jobs}"
            )
    archived = set()
    for sidecar in archive.glob("images/*/*.json"):
        meta = json.loads(sidecar.read_text())
        if meta.get("prompt") in p.every_prompt:
            archived.add(meta["prompt"])
    out.archived = len(archived)
    uncertain, capped = set(), set()
    for result in results:
        for failure in getattr(result, "failures", []) or []:
            if failure.error_type in ("SubmitUncertain", "MalformedResponse"):
                uncertain.add(p.prompts[failure.index])
            if failure.error_type == "BudgetExceeded":
                capped.add(p.prompts[failure.index])
    for settled_edit in out.edits[-len(results) :]:
        kind = type(settled_edit).__name__
        if kind in ("SubmitUncertain", "MalformedResponse"):
            uncertain.add(p.edit_prompt)
        elif kind == "BudgetExceeded":
            capped.add(p.edit_prompt)
    out.uncertain = len(uncertain)
    for prompt in paid:
        if prompt not in archived and prompt not in uncertain:
            out.violations.append(
                f"{prompt!r} was paid but is neither archived nor reported uncertain "
                f"(last results: {[_describe(r) for r in results]})"
            )
    for prompt in p.every_prompt:
        if prompt not in paid and prompt not in archived | uncertain | capped:
            out.violations.append(f"{prompt!r} was never made after the settling runs")
    store = Archive(str(archive))
    for path in archive.glob("_jobs/*.json"):
        if store.read_json(job_rel(path.stem)) is None:
            out.violations.append(f"record {path.stem[:12]} vanished while being read")


def _describe(result: Any) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"[:300]
    failures = getattr(result, "failures", None) or []
    return "; ".join(f"row {f.index} {f.error_type}: {f.error[:120]}" for f in failures) or "ok"
