"""Fan-out: one `distributed_batch` run of N images as chunk flow runs over W process workers.

    python bench/fanout.py --n 20000 --chunk-size 500 --concurrency 125      # 4 workers x 2
    python bench/fanout.py --n 2000 --chunk-size 250 --concurrency 125
    python bench/fanout.py --n 40 --latency 2 --workers 2 --chunk-size 10 --concurrency 5 \
        --no-results                                                        # a quick look

What runs, all on this machine (the cluster tests/support/cluster.py describes):
- a throwaway PostgreSQL 15 (tests/support/postgres.py) under `prefect server start`
  (tests/support/prefect_cli.py);
- the process work pool `gptimg-process` and the deployments of deployments/prefect.yaml: the
  chunk deployment `batch-generate/batch-from-file` and `distributed-batch`;
- W process workers (`prefect worker start --pool gptimg-process --limit <limit>`): each runs up
  to `limit` flow runs at once, each in a flow-run process of its own;
- the provider emulator (Runware API, every job takes `--latency` s, 256x256 PNG, "stamp"
  rendering so pictures cost next to nothing), named by a saved RunwareCredentials block;
- the parent: ONE `distributed_batch` run of N prompts (a prompt file), split into chunk runs of
  `--chunk-size` rows, each keeping `--concurrency` jobs in flight, archiving into a folder of
  the work directory (which every worker reaches: all on one machine). Then at once the same
  batch again (the cache re-run), the same way. By default the parent runs in a flow process of
  this benchmark (`--child`), as test_distributed's re-run does, so that all W x limit worker
  slots take chunk runs; with `--parent worker` it runs as a run of the `distributed-batch`
  deployment on a worker, as that deployment is meant to run, and holds one slot (counted).

Measured: the first run's wall against the ideal ceil(N / F) x L, where F, the jobs that can be
in flight at once, is (chunk runs running at once) x (jobs per chunk run), i.e.
min(chunks, slots) x min(concurrency, chunk size) with slots = W x limit (less the parent's with
`--parent worker`); also against the ideal with whole chunks (a chunk run takes
ceil(rows / concurrency) x L and holds its slot throughout). Images archived, provider
submissions (must be N: paid once) and repeated request bodies (must be 0), polls per job and the
peak number of jobs in flight (the emulator's ledger); chunk runs created, their final states and
how many ran at once (the server's timestamps); the CPU of the server's, PostgreSQL's, the
emulator's and the workers' process trees (each worker with its flow-run processes, exited ones
included) and of the parent's flow process; the ERROR lines of the server's and the workers'
logs; the peak RSS of the workers' process trees (VmRSS every 0.5 s, summed over all workers,
and the largest single tree and process). Then the immediate re-run: its wall as % of the first
run, its provider submissions (must be 0) and chunk runs started (0).

Prints a summary and appends a section to bench/RESULTS-fanout.md (unless --no-results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS-fanout.md"
HEADER = (
    "# Fan-out benchmark\n\n"
    "`python bench/fanout.py` (see its docstring): one `distributed_batch` run of N images "
    "fanned out as chunk flow runs over W process workers of one work pool, each job "
    "taking L s on the emulator (Runware API, 256x256 PNG), against a `prefect server` on "
    "PostgreSQL 15, all on one machine. Each run appends a section below.\n"
)
POOL = "gptimg-process"
PARENT_FLOW = "distributed-batch"
PROGRESS_SECONDS = 60.0
WORKER_START_SECONDS = 180.0

# As in bench/capacity.py: the repo root on sys.path, so that `bench.*` and `tests.*` import as
# packages and bench's modules shadow nothing.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- the parent's flow process ------------------------------------------------------------------


async def child(spec: dict[str, Any]) -> None:
    """Runs the parent twice (first, immediate re-run), here or as deployment runs on a worker,
    and reports each on stdout the way bench/capacity.py's flow process does."""
    from bench.capacity import _say, _status_kb
    from gptimg_flows.distributed.flow import distributed_batch  # imported before any run is timed
    from gptimg_flows.testing import EmulatorClient

    emulator = EmulatorClient(spec["emulator"], timeout=120)
    params: dict[str, Any] = spec["params"]

    def counts() -> dict[str, Any]:
        ledger = emulator.ledger()
        submissions = ledger["submissions"]
        bodies = Counter(s.get("body_sha256") for s in submissions)
        uuids = Counter(s.get("task_uuid") for s in submissions)
        return {
            "requests": ledger["requests"],
            "submissions": len(submissions),
            "repeated_bodies": sum(n - 1 for n in bodies.values()),
            "repeated_task_uuids": sum(n - 1 for n in uuids.values()),
            "peak": ledger["peak_concurrent_jobs"],
            "rejected": ledger["rejected"],
        }

    _say("ready")
    for label in ("first", "immediate"):
        before = counts()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        _say("start", label=label)
        t0 = time.perf_counter()
        if spec["parent"] == "local":
            outcome = await _run_here(distributed_batch, params)
        else:
            outcome = await _run_on_worker(spec, params)
        wall = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        _say(
            "done",
            label=label,
            wall=wall,
            cpu=(usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
            hwm_kb=_status_kb("self", "VmHWM"),
            **outcome,
        )
        _say("ledger", label=label, before=before, after=counts())
    emulator.close()


async def _run_here(distributed_batch: Any, params: dict[str, Any]) -> dict[str, Any]:
    result = await distributed_batch(**params)
    return {
        "state": "COMPLETED",
        "images": len(result.images),
        "failures": len(result.failures),
        "failure_examples": [f"{f.error_type}: {f.error}"[:300] for f in result.failures[:3]],
    }


async def _run_on_worker(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A run of the distributed-batch deployment, picked up by a worker (test_distributed's
    `_start_parent`), waited for; its images and failures read from its report artifact."""
    import os
    import re

    from tests.support.cluster import Cluster, read_report, start_parent, wait_for_run

    cluster = Cluster(dict(os.environ), Path(spec["home"]), {})
    run = start_parent(cluster, params)
    done = await wait_for_run(cluster, run["id"], timeout=spec["timeout"])
    outcome: dict[str, Any] = {"state": done["state_type"], "run_id": run["id"]}
    if done["state_type"] != "COMPLETED":
        message = (done.get("state") or {}).get("message") or ""
        return {**outcome, "images": 0, "failures": -1, "failure_examples": [message[:300]]}
    report = read_report(cluster, run["id"])
    found = re.search(r"(\d+) image\(s\), (\d+) failed row\(s\)", report)
    images, failures = (int(found[1]), int(found[2])) if found else (0, -1)
    examples = [line[:300] for line in report.splitlines() if "Error" in line or "Rejected" in line]
    return {**outcome, "images": images, "failures": failures, "failure_examples": examples[:3]}


# -- the workers: processes, CPU, RSS -----------------------------------------------------------


def family(pid: int) -> list[int]:
    """`pid` and its live descendants (a worker and its flow-run processes)."""
    from bench.capacity import _children

    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def family_cpu(pid: int) -> float:
    """CPU seconds of a process tree, its exited (reaped) members included: each chunk run is a
    process that ends, and its CPU then counts in its parent's cutime."""
    from bench.capacity import reaped_cpu
    from bench.run import process_tree_cpu

    return process_tree_cpu(pid) + sum(reaped_cpu(p) for p in family(pid))


def wait_for_workers(
    env: dict[str, str], workers: dict[str, subprocess.Popen[bytes]], home: Path
) -> None:
    """Until every worker has reported to the server (else the first chunk runs would wait
    for workers still importing Prefect)."""
    from tests.support.prefect_cli import api

    deadline = time.monotonic() + WORKER_START_SECONDS
    while True:
        for name, proc in workers.items():
            if proc.poll() is not None:
                log = (home / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"worker {name} exited ({proc.returncode}):\n{log}")
        online = {w["name"] for w in api(env, "POST", f"/work_pools/{POOL}/workers/filter", {})}
        if set(workers) <= online:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not online after {WORKER_START_SECONDS:.0f} s: {online}")
        time.sleep(1)


class WorkerRss:
    """VmRSS of each worker's process tree every SAMPLE_SECONDS, peaks kept per phase (the
    label of capacity's Watch: startup, first, after first, immediate, …)."""

    def __init__(self, workers: dict[str, subprocess.Popen[bytes]], watch: Any) -> None:
        self.workers = workers
        self.watch = watch
        self.peaks: dict[str, dict[str, int]] = {}  # label → total, tree, process (kB)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> WorkerRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        from bench.capacity import SAMPLE_SECONDS, _status_kb

        while not self._stop.is_set():
            trees, biggest = [], 0
            for proc in self.workers.values():
                kbs = [_status_kb(p, "VmRSS") for p in family(proc.pid)]
                trees.append(sum(kbs))
                biggest = max([biggest, *kbs])
            if any(trees):
                self.samples += 1
                peak = self.peaks.setdefault(self.watch.label, {})
                for key, kb in (("total", sum(trees)), ("tree", max(trees)), ("process", biggest)):
                    peak[key] = max(peak.get(key, 0), kb)
            self._stop.wait(SAMPLE_SECONDS)


def error_lines(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "ERROR" in line)


def log_lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def error_kinds(lines: list[str]) -> dict[str, int]:
    """A server log's ERROR lines by what they say (times dropped), each with the last line
    of the traceback that follows it (the exception), if any."""
    kinds: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if "ERROR" not in line:
            continue
        what = re.sub(r"\[\s*[\d.]+m?s\]", "", re.sub(r"^[\d:.]+ \| ERROR +\| ", "", line))
        tail = []
        for after in lines[i + 1 : i + 200]:
            if re.match(r"\d\d:\d\d:\d\d", after):
                break
            if after.strip():
                tail.append(after.strip())
        if tail:
            what += f" → {tail[-1]}"
        kinds[" ".join(what.split())[:240]] += 1
    return dict(kinds)


# -- what the server recorded ---------------------------------------------------------------------


def flow_runs(env: dict[str, str], body: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.support.prefect_cli import api

    out: list[dict[str, Any]] = []
    while True:
        page = api(
            env,
            "POST",
            "/flow_runs/filter",
            {**body, "sort": "ID_DESC", "limit": 200, "offset": len(out)},
        )
        out += page
        if len(page) < 200:
            return out


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def server_view(env: dict[str, str]) -> dict[str, Any]:
    """The two parent runs and the chunk runs each started, from the server's records."""
    from tests.support.cluster import BATCH_DEPLOYMENT
    from tests.support.prefect_cli import api

    parents = flow_runs(env, {"flows": {"name": {"any_": [PARENT_FLOW]}}})
    parents.sort(key=lambda r: _ts(r["created"]) or 0.0)
    deployment = api(env, "GET", f"/deployments/name/{BATCH_DEPLOYMENT}")
    chunks = flow_runs(env, {"deployments": {"id": {"any_": [deployment["id"]]}}})
    view: dict[str, Any] = {"parents": len(parents)}
    for i, label in enumerate(("first", "immediate")):
        if i >= len(parents):
            break
        parent = parents[i]
        since = _ts(parent["created"]) or 0.0
        until = (_ts(parents[i + 1]["created"]) or math.inf) if i + 1 < len(parents) else math.inf
        mine = [c for c in chunks if since <= (_ts(c["created"]) or 0.0) < until]
        spans = [
            (s, e)
            for c in mine
            if (s := _ts(c["start_time"])) is not None and (e := _ts(c["end_time"])) is not None
        ]
        start, end, created = (_ts(parent[k]) for k in ("start_time", "end_time", "created"))
        entry: dict[str, Any] = {
            "run": parent["name"],
            "state": parent["state_type"],
            "server_wall": (end - start) if start and end else None,
            "pickup": (start - created) if start and created else None,
            "chunk_runs": len(mine),
            "chunk_states": dict(Counter(c["state_type"] for c in mine)),
            "chunk_at_once": most_at_once(spans),
        }
        if spans:
            walls = [e - s for s, e in spans]
            entry |= {
                "chunk_wall_median": statistics.median(walls),
                "chunk_wall_max": max(walls),
                "to_first_chunk": min(s for s, _ in spans) - start if start else None,
                "last_chunk_to_end": end - max(e for _, e in spans) if end else None,
            }
        view[label] = entry
    return view


# -- the benchmark -------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Chunks, slots, jobs in flight at once, and the two ideals."""
    chunks = math.ceil(args.n / args.chunk_size)
    slots = args.workers * args.limit - (1 if args.parent == "worker" else 0)
    per_chunk = min(args.concurrency, args.chunk_size)
    in_flight = min(args.n, min(chunks, slots) * per_chunk)
    # whole chunks: each holds a slot for ceil(rows / concurrency) rounds of L, in input order
    free = [0.0] * max(1, slots)
    end = 0.0
    for first in range(0, args.n, args.chunk_size):
        rows = min(args.chunk_size, args.n - first)
        t = heapq.heappop(free) + math.ceil(rows / args.concurrency) * args.latency
        heapq.heappush(free, t)
        end = max(end, t)
    return {
        "chunks": chunks,
        "slots": slots,
        "per_chunk": per_chunk,
        "in_flight": in_flight,
        "ideal": math.ceil(args.n / in_flight) * args.latency,
        "ideal_chunks": end,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.capacity import (
        Watch,
        _prefect_version,
        database,
        find_postmaster,
        find_server_pid,
        reaped_cpu,
        server_errors,
    )
    from bench.run import free_port, machine, process_tree_cpu
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from tests.support.cluster import IMAGE, Cluster, save_provider
    from tests.support.prefect_cli import deploy_all, running_server, start_worker, stop_workers

    began = time.monotonic()
    shape = plan(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gptimg-fanout-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "prefect-home"
    home.mkdir(exist_ok=True)
    archive = work / "archive"  # outside the workers' TMPDIR (home/tmp): a deployment takes it
    prompts = work / "prompts.txt"
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prompts.write_text("".join(f"fanout {tag} image {i}\n" for i in range(args.n)))
    parent_log = work / "parent.log"
    print(f"work directory: {work}", flush=True)
    print(
        f"{args.n} images in {shape['chunks']} chunk(s) of up to {args.chunk_size}, "
        f"concurrency {args.concurrency} per chunk run; {args.workers} worker(s) x --limit "
        f"{args.limit} = {shape['slots']} slot(s) for chunk runs; {shape['in_flight']} jobs in "
        f"flight at most; ideal {shape['ideal']:.0f} s ({shape['ideal_chunks']:.0f} s with "
        "whole chunks)",
        flush=True,
    )

    config = EmulatorConfig(latency=args.latency, render_mode="stamp", url_ttl=None)
    timings: dict[str, float] = {}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        extra, pg_port, timings["postgres start"] = stack.enter_context(database("postgres"))
        print(f"PostgreSQL 15 on port {pg_port} in {timings['postgres start']:.1f} s", flush=True)
        emu = stack.enter_context(EmulatorProcess(config))
        port = free_port()
        t0 = time.monotonic()
        env = stack.enter_context(running_server(home, port, extra_env=extra))
        timings["server start"] = time.monotonic() - t0
        server_pid = find_server_pid(port)
        postmaster = find_postmaster(pg_port) if pg_port is not None else None
        print(
            f"prefect server on port {port} (pid {server_pid}) in "
            f"{timings['server start']:.1f} s; emulator at {emu.url}",
            flush=True,
        )
        t0 = time.monotonic()
        deploy_all(env)
        cluster = Cluster(env, home, workers)
        provider = asyncio.run(save_provider(cluster, emu))
        timings["deploy"] = time.monotonic() - t0
        t0 = time.monotonic()
        stack.callback(stop_workers, workers.values())
        for i in range(args.workers):
            name = f"fanout-w{i + 1}"
            workers[name] = start_worker(env, name, home, limit=args.limit)
        wait_for_workers(env, workers, home)
        timings["workers start"] = time.monotonic() - t0
        print(
            f"deployments and block {provider} in {timings['deploy']:.1f} s; {args.workers} "
            f"worker(s) online in {timings['workers start']:.1f} s",
            flush=True,
        )

        cpu_of: dict[str, Any] = {
            "server": (lambda: process_tree_cpu(server_pid)) if server_pid else (lambda: 0.0),
            "emulator": lambda: process_tree_cpu(emu.process.pid) if emu.process else 0.0,
            "workers": lambda: sum(family_cpu(w.pid) for w in workers.values()),
        }
        if postmaster:
            cpu_of["postgres"] = lambda: process_tree_cpu(postmaster) + reaped_cpu(postmaster)
        params: dict[str, Any] = {
            "prompts": str(prompts),
            "provider": provider,
            "archive": str(archive),
            "chunk_size": args.chunk_size,
            "concurrency": args.concurrency,
            **IMAGE,
        }
        budget = args.timeout or 900 + 4 * max(shape["ideal_chunks"], shape["ideal"])
        spec = {
            "parent": args.parent,
            "emulator": emu.url,
            "home": str(home),
            "params": params,
            "timeout": budget,
        }
        setup_lines = len(log_lines(home / "server.log"))
        cpu_start = {name: fn() for name, fn in cpu_of.items()}
        t0 = time.monotonic()
        with parent_log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                env={**env, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            watch = Watch(proc, cpu_of, work / "parent-stdout.log").start()
            rss = WorkerRss(workers, watch).start()
            try:
                _follow(proc, emu, budget, watch, parent_log)
            finally:
                rss.stop()
            watch.join()
        timings["parent process"] = time.monotonic() - t0
        cpu_end = {name: fn() for name, fn in cpu_of.items()}
        if proc.returncode != 0 or ("ledger", "first") not in watch.events:
            tail = parent_log.read_text(errors="replace")[-4000:]
            raise SystemExit(f"the parent's process failed ({proc.returncode}):\n{tail}")
        view = server_view(env)
        errors: dict[str, Any] = dict(server_errors(home / "server.log"))
        server_log = log_lines(home / "server.log")
        errors["setup"] = error_kinds(server_log[:setup_lines])
        errors["runs"] = error_kinds(server_log[setup_lines:])
        worker_errors = {name: error_lines(home / f"{name}.log") for name in workers}
        parent_errors = error_lines(parent_log)

    runs: dict[str, dict[str, Any]] = {}
    for label in ("first", "immediate"):
        done = watch.events.get(("done", label))
        if done is None or ("ledger", label) not in watch.events:
            continue
        ledger = watch.events[("ledger", label)]
        b, a = ledger["before"], ledger["after"]

        def diff(kind: str | None, a: dict[str, Any] = a, b: dict[str, Any] = b) -> int:
            return sum(
                v - b["requests"].get(p, {}).get(k, 0)
                for p, counts in a["requests"].items()
                for k, v in counts.items()
                if kind is None or k == kind
            )

        c0, c1 = watch.cpu[("start", label)], watch.cpu[("done", label)]
        runs[label] = {
            **{k: done.get(k) for k in ("wall", "state", "images", "failures", "cpu")},
            "failure_examples": done.get("failure_examples") or [],
            "hwm_mb": done["hwm_kb"] / 1024,
            "parent_rss_mb": watch.peak_kb.get(label, 0) / 1024,
            "workers_rss_mb": {k: v / 1024 for k, v in rss.peaks.get(label, {}).items()},
            "jobs": a["submissions"] - b["submissions"],
            "repeated_bodies": a["repeated_bodies"],
            "repeated_task_uuids": a["repeated_task_uuids"],
            "polls": diff("poll"),
            "calls": diff(None),
            "peak_in_flight": a["peak"].get("runware", 0),
            "rejected": a["rejected"],
            "cpu_during": {k: c1[k] - c0[k] for k in c0},
            "server": view.get(label, {}),
        }
    first = runs["first"]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "prefect": _prefect_version(),
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        **shape,
        "ratio": first["wall"] / shape["ideal"] if shape["ideal"] else float("nan"),
        "ratio_chunks": first["wall"] / shape["ideal_chunks"]
        if shape["ideal_chunks"]
        else float("nan"),
        "runs": runs,
        "parents_seen": view["parents"],
        "archived_files": sum(1 for _ in (archive / "images").rglob("*.png"))
        if (archive / "images").exists()
        else 0,
        "rss_samples": rss.samples,
        "workers_rss_idle_mb": {k: v / 1024 for k, v in rss.peaks.get("startup", {}).items()},
        "cpu_total": {k: cpu_end[k] - cpu_start[k] for k in cpu_start},
        "server_errors": errors,
        "worker_errors": worker_errors,
        "parent_errors": parent_errors,
        "timings": {**timings, "benchmark": time.monotonic() - began},
        "work": str(work),
    }


def _follow(proc: subprocess.Popen[str], emu: Any, budget: float, watch: Any, log: Path) -> None:
    """Wait for the parent's process, printing the emulator's count every minute."""
    started = time.monotonic()
    while True:
        try:
            proc.wait(PROGRESS_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
        if elapsed > budget:
            proc.kill()
            proc.wait()
            raise SystemExit(f"the parent's process ran over {budget:.0f} s; see {log}")
        try:
            ledger = emu.client.ledger()
        except Exception as exc:  # a busy emulator: no progress line this time
            print(f"  {elapsed:.0f} s ({watch.label}): ledger unavailable ({exc})", flush=True)
            continue
        print(
            f"  {elapsed:.0f} s ({watch.label}): {len(ledger['submissions'])} job(s) submitted, "
            f"{ledger.get('running_jobs', {}).get('runware', 0)} running",
            flush=True,
        )


# -- report ---------------------------------------------------------------------------------------


def render(r: dict[str, Any]) -> str:
    from bench.capacity import rejections, verdict

    a = r["args"]
    n, latency = a["n"], a["latency"]
    first, again = r["runs"]["first"], r["runs"].get("immediate")
    sv = first["server"]
    cpu, cpu_all = first["cpu_during"], r["cpu_total"]
    errs = r["server_errors"]
    during, at_setup = sum(errs["runs"].values()), sum(errs["setup"].values())
    polls = first["polls"] / max(1, first["jobs"])
    on_worker = a["parent"] == "worker"
    parent = (
        "a run of the `distributed-batch` deployment on a worker (it holds one slot)"
        if on_worker
        else "a flow process of the benchmark (no worker slot)"
    )
    command = (
        f"python bench/fanout.py --n {n} --latency {latency:g} --workers {a['workers']} "
        f"--limit {a['limit']} --chunk-size {a['chunk_size']} --concurrency {a['concurrency']}"
        + (" --parent worker" if on_worker else "")
    )
    ms = 1000 / n

    def mb(d: dict[str, float], key: str) -> str:
        return f"{d[key]:.0f} MB" if key in d else "?"

    wrss = first["workers_rss_mb"]
    lines = [
        f"## N = {n}, {a['workers']} workers x {a['limit']}, chunks of {a['chunk_size']} at "
        f"concurrency {a['concurrency']}, L = {latency:g} s ({r['date']})",
        "",
        f"- Machine: {r['machine']}",
        f"- Prefect {r['prefect']}, `prefect server` on PostgreSQL 15; {a['workers']} process "
        f"workers with `--limit {a['limit']}`; the parent ran as {parent}.",
        f"- Command: `{command}`",
        "",
        "| figure | value | expected |",
        "|---|---|---|",
        f"| wall of the distributed_batch run | {first['wall']:.1f} s "
        + (f"(the server's start → end {sv['server_wall']:.1f} s)" if sv.get("server_wall") else "")
        + " | |",
        f"| jobs in flight at once, F | {r['in_flight']} = min({r['chunks']} chunks, "
        f"{r['slots']} slots) x min(concurrency {a['concurrency']}, chunk {a['chunk_size']}) | |",
        f"| ideal ceil(N/F) x L | {r['ideal']:.0f} s | |",
        f"| wall / ideal | **{r['ratio']:.3f}x** | |",
        f"| ideal with whole chunks (each holds its slot ceil(rows/concurrency) x L) | "
        f"{r['ideal_chunks']:.0f} s; wall / that **{r['ratio_chunks']:.3f}x** | |",
        f"| images archived | {first['images']}/{n} ({r['archived_files']} files), "
        f"{first['failures']} failures | {n}: {verdict(first['images'] == n)} |",
        f"| provider submissions | {first['jobs']} ({first['repeated_bodies']} repeated "
        f"request bodies, {first['repeated_task_uuids']} repeated task UUIDs) | {n}, paid once: "
        f"{verdict(first['jobs'] == n and first['repeated_bodies'] == 0)} |",
        f"| polls per job | {polls:.2f} ({first['polls']} polls) | |",
        f"| peak jobs in flight (emulator) | {first['peak_in_flight']} | F = {r['in_flight']} |",
        f"| chunk runs | {sv.get('chunk_runs', '?')} "
        f"({', '.join(f'{k} {v}' for k, v in sv.get('chunk_states', {}).items()) or '-'}); "
        f"at most {sv.get('chunk_at_once', '?')} running at once | {r['chunks']}, "
        f"{min(r['chunks'], r['slots'])} at once |",
    ]
    if "chunk_wall_median" in sv:
        lines += [
            f"| chunk run wall, median / max | {sv['chunk_wall_median']:.1f} s / "
            f"{sv['chunk_wall_max']:.1f} s | "
            f"{math.ceil(min(a['chunk_size'], n) / a['concurrency']) * latency:g} s |",
        ]
    if sv.get("to_first_chunk") is not None:
        lines.append(
            f"| parent started → first chunk run started; last chunk run ended → parent "
            f"ended | {sv['to_first_chunk']:.1f} s; {sv['last_chunk_to_end']:.1f} s | |"
        )
    if on_worker and sv.get("pickup") is not None:
        lines.append(f"| parent run created → started on a worker | {sv['pickup']:.1f} s | |")
    lines += [
        f"| server CPU during the run | {cpu['server']:.1f} s ({ms * cpu['server']:.1f} ms "
        "per image) | |",
    ]
    if "postgres" in cpu:
        lines.append(
            f"| PostgreSQL CPU during the run | {cpu['postgres']:.1f} s "
            f"({ms * cpu['postgres']:.1f} ms per image) | |"
        )
    lines += [
        f"| emulator CPU during the run | {cpu['emulator']:.1f} s | |",
        "| workers' CPU during the run (their flow-run processes included"
        + (", the parent's too" if on_worker else "")
        + f") | {cpu['workers']:.1f} s ({ms * cpu['workers']:.1f} ms per image) | |",
    ]
    if not on_worker:
        lines.append(
            f"| parent's flow process: CPU, peak RSS | {first['cpu']:.1f} s, "
            f"{max(first['parent_rss_mb'], first['hwm_mb']):.0f} MB | |"
        )
    lines += [
        f"| peak RSS of the workers' process trees (VmRSS every 0.5 s) | all {a['workers']}: "
        f"{mb(wrss, 'total')}; largest tree {mb(wrss, 'tree')}; largest process "
        f"{mb(wrss, 'process')} | |",
        f"| server log ERROR lines | {during} while the runs ran, {at_setup} before (setup) | "
        f"0: {verdict(during == 0)} |",
        f"| workers' log ERROR lines | {sum(r['worker_errors'].values())} | |",
    ]
    if again is not None:
        share = 100 * again["wall"] / first["wall"]
        asv = again["server"]
        lines += [
            f"| immediate re-run (same batch, same way) | {again['wall']:.2f} s = **{share:.1f} "
            f"%** of the first run; {again['images']}/{n} images | |",
            f"| re-run: provider submissions, provider calls, chunk runs started | "
            f"{again['jobs']}, {again['calls']}, {asv.get('chunk_runs', '?')} | 0: "
            f"{verdict(again['jobs'] == 0 and asv.get('chunk_runs') == 0)} |",
        ]
    t = r["timings"]
    idle = r["workers_rss_idle_mb"]
    lines += [
        "",
        f"Took {t['benchmark']:.0f} s in all: PostgreSQL start {t['postgres start']:.1f} s, "
        f"server start {t['server start']:.1f} s, deployments {t['deploy']:.1f} s, workers "
        f"online {t['workers start']:.1f} s, parent process {t['parent process']:.1f} s. "
        f"Idle workers' RSS {mb(idle, 'total')} in all; {r['rss_samples']} RSS samples. "
        "CPU from the parent process's start to its exit: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in cpu_all.items())
        + f". {r['parent_errors']} ERROR lines in the parent's log.",
    ]
    for when in ("setup", "runs"):
        kinds = sorted(errs[when].items(), key=lambda kv: -kv[1])
        if kinds:
            lines.append(
                f"Server ERROR lines ({'setup' if when == 'setup' else 'while the runs ran'}): "
                + "; ".join(f"{n} x `{what}`" for what, n in kinds[:5])
                + (f"; and {len(kinds) - 5} other kind(s)" if len(kinds) > 5 else "")
                + "."
            )
    lines += rejections(first)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="images (prompts) in the batch")
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per emulator job")
    parser.add_argument("--workers", type=int, default=4, help="process workers")
    parser.add_argument(
        "--limit", type=int, default=2, help="each worker's --limit (flow runs at once)"
    )
    parser.add_argument("--chunk-size", type=int, default=500, help="rows per chunk run")
    parser.add_argument(
        "--concurrency", type=int, default=125, help="jobs in flight in each chunk run"
    )
    parser.add_argument(
        "--parent",
        choices=("local", "worker"),
        default="local",
        help="run the distributed_batch parent in a flow process of the benchmark (local, "
        "default) or as a deployment run on a worker, where it holds one slot",
    )
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    parser.add_argument("--no-results", action="store_true", help="do not append the results")
    parser.add_argument("--timeout", type=float, help="seconds the parent's process may take")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(json.loads(args.child)))
        return
    if min(args.n, args.workers, args.limit, args.chunk_size, args.concurrency) < 1:
        parser.error("--n, --workers, --limit, --chunk-size and --concurrency must be 1 or more")
    if args.latency < 0:
        parser.error("--latency must not be negative")
    if args.parent == "worker" and args.workers * args.limit < 2:
        parser.error("--parent worker holds a slot: --workers x --limit must be 2 or more")
    from bench.capacity import publish

    result = run(args)
    publish(args, result, render(result), RESULTS, HEADER)


if __name__ == "__main__":
    main()
