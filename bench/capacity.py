"""In-flight capacity: one `batch_generate` flow run keeping C jobs of L seconds in flight.

    python bench/capacity.py --n 5000 --c 1000 --latency 20 --db sqlite
    python bench/capacity.py --n 5000 --c 1000 --latency 20 --db postgres --rerun-after 60
    python bench/capacity.py --n 200 --c 100 --latency 5 --db sqlite     # a quick look

What runs, all on this machine:
- the provider emulator (Runware API, every job takes `--latency` s, 256x256 PNG, "stamp"
  rendering so pictures cost next to nothing);
- `prefect server start` (tests/support/prefect_cli.py) on SQLite, or on a throwaway PostgreSQL 15
  (tests/support/postgres.py, `--db postgres`);
- ONE flow process (this file, `--child`) running `batch_generate` of N prompts (a prompt
  file) with `concurrency=C`, then at once the same batch again (same archive: the cache
  re-run), and with `--rerun-after S` once more after S seconds (a settled re-run).

Measured: the first run's wall against the ideal ceil(N/C) x L, the flow process's peak RSS
(VmRSS sampled from /proc every 0.5 s, and the kernel's high-water mark VmHWM), the CPU of
the server's process tree (and of PostgreSQL's, and of the emulator), the server log's ERROR
lines and 'database is locked', polls per job and the peak number of jobs in flight (the
emulator's ledger), images archived, and each re-run's wall and provider calls (must be 0).

Prints a summary and appends a section to bench/RESULTS-capacity.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS-capacity.md"
HEADER = (
    "# In-flight capacity benchmark\n\n"
    "`python bench/capacity.py` (see its docstring): one `batch_generate` flow run of N "
    "images, C at a time, each job taking L s on the emulator (Runware API, 256x256 PNG), "
    "against a `prefect server` on SQLite or PostgreSQL, all on one machine. Each run "
    "appends a section below.\n"
)
MARK = "@@capacity "  # prefix of the flow process's report lines on its stdout
SAMPLE_SECONDS = 0.5
SIZE, FORMAT = "256x256", "png"

#: Issue 13's targets for this benchmark (at N = 5000, C = 1000, L = 20 s).
TARGET = {"ratio": 1.15, "rss_mb": 1024.0, "polls": 1.5, "rerun_pct": 10.0}

# `python bench/capacity.py` puts bench/ first on sys.path; the repo root instead, so that
# `bench.run` and `tests.support.postgres` import as packages and bench's modules shadow nothing.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- the flow process -------------------------------------------------------------------------


def _say(event: str, **fields: Any) -> None:
    print(MARK + json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def _status_kb(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


async def child(spec: dict[str, Any]) -> None:
    """The flow process: the first run, the immediate re-run, maybe a settled re-run."""
    from gptimg_flows import RunwareCredentials, batch_generate
    from gptimg_flows.testing import EmulatorClient

    emulator = EmulatorClient(spec["emulator"], timeout=120)
    block = RunwareCredentials(api_key=spec["api_key"], base_url=spec["base_url"])

    def counts() -> dict[str, Any]:
        ledger = emulator.ledger()
        accepted = [s["at"] for s in ledger["submissions"]]
        return {
            "requests": ledger["requests"],
            "submissions": len(accepted),
            "accepted_at": [min(accepted), max(accepted)] if accepted else None,
            "peak": ledger["peak_concurrent_jobs"],
            "rejected": ledger["rejected"],
        }

    runs: list[tuple[str, float]] = [("first", 0.0), ("immediate", 0.0)]
    if spec["rerun_after"] is not None:
        runs.append(("settled", float(spec["rerun_after"])))
    if spec.get("phases"):
        from bench.run import instrument_phases

        instrument_phases()
    _say("ready")
    for label, pause in runs:
        await asyncio.sleep(pause)
        before = counts()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        _say("start", label=label)
        t0 = time.perf_counter()
        result = await batch_generate(
            prompts=spec["prompts"],
            provider=block,
            archive=spec["archive"],
            concurrency=spec["c"],
            size=SIZE,
            output_format=FORMAT,
        )
        wall = time.perf_counter() - t0
        hwm = _status_kb("self", "VmHWM")
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        # The report line first (the parent times its samples by it), the ledger read after.
        _say(
            "done",
            label=label,
            wall=wall,
            images=len(result.images),
            failures=len(result.failures),
            failure_examples=[f"{f.error_type}: {f.error}"[:300] for f in result.failures[:3]],
            cpu=(usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
            hwm_kb=hwm,
        )
        after = counts()
        _say("ledger", label=label, before=before, after=after)
        if spec.get("phases") and label == "first":
            _say("phases", label=label, means=_phase_means(float(spec["latency"])))
    emulator.close()


def _phase_means(latency: float) -> dict[str, float]:
    """Mean seconds per image of each step of the first run (bench/run.py's instrumentation):
    where a slot's time goes besides the job itself ('wait' less the job's latency)."""
    from bench.run import PHASES, phase_means

    means = phase_means()
    if "wait" in means:
        means["wait beyond the job"] = means.pop("wait") - latency
    PHASES.clear()
    return means


# -- the parent: emulator, server, sampling -------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def find_server_pid(port: int) -> int | None:
    """Our `prefect server start --port <port>` child (running_server does not expose it)."""
    for pid in _children(os.getpid()):
        args = _cmdline(pid)
        if "server" in args and "start" in args and str(port) in args:
            return pid
    return None


def find_postmaster(port: int) -> int | None:
    """The PostgreSQL postmaster listening on `port` (pg_ctl daemonized it: not our child)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if args and args[0].endswith("/postgres") and "-p" in args:
            i = args.index("-p")
            if i + 1 < len(args) and args[i + 1] == str(port):
                return int(entry.name)
    return None


def reaped_cpu(pid: int) -> float:
    """CPU seconds of `pid`'s children that have exited and been waited for (cutime+cstime):
    PostgreSQL's backends and autovacuum workers come and go."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Watch:
    """Follows the flow process: its report lines, its RSS every 0.5 s, and everyone's CPU
    at each run's start and end."""

    def __init__(
        self,
        proc: subprocess.Popen[str],
        cpu_of: dict[str, Any],
        log: Path,
    ) -> None:
        self.proc = proc
        self.cpu_of = cpu_of  # name → () -> CPU seconds
        self.log = log
        self.label = "startup"
        self.peak_kb: dict[str, int] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.cpu: dict[tuple[str, str], dict[str, float]] = {}
        self.samples = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> Watch:
        self._reader.start()
        self._sampler.start()
        return self

    def join(self) -> None:
        self._reader.join(30)
        self._sampler.join(5)

    def _cpus(self) -> dict[str, float]:
        return {name: fn() for name, fn in self.cpu_of.items()}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as log:
            for line in self.proc.stdout:
                if not line.startswith(MARK):
                    log.write(line)
                    continue
                event = json.loads(line[len(MARK) :])
                kind, label = event["event"], event.get("label", "")
                if kind == "start":
                    self.label = label
                elif kind == "done":
                    self.label = f"after {label}"
                if kind in ("start", "done"):
                    self.cpu[(kind, label)] = self._cpus()
                self.events[(kind, label)] = event
                if kind == "done":
                    print(
                        f"  {label}: {event['wall']:.1f} s, {event['images']} image(s), "
                        f"{event['failures']} failure(s)",
                        flush=True,
                    )

    def _sample(self) -> None:
        pid = self.proc.pid
        while self.proc.poll() is None:
            kb = _status_kb(pid, "VmRSS")
            if kb:
                self.samples += 1
                self.peak_kb[self.label] = max(self.peak_kb.get(self.label, 0), kb)
            time.sleep(SAMPLE_SECONDS)


def _profile(where: str | None, pids: dict[str, int | None]) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process (with its subprocesses), sampling only on-CPU stacks: where the
    CPU per image goes."""
    if not where:
        return []
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "50",
                "--subprocesses",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if pid
    ]


def server_errors(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return {
        "database is locked": text.count("database is locked"),
        "ERROR lines": sum(1 for line in text.splitlines() if "ERROR" in line),
    }


@contextlib.contextmanager
def database(kind: str) -> Iterator[tuple[dict[str, str], int | None, float]]:
    """The server's extra env for `kind`, PostgreSQL's port (or None), seconds to start it."""
    from bench.run import free_port

    if kind == "sqlite":
        yield {}, None, 0.0
        return
    from tests.support.postgres import postgres_server

    port, t0 = free_port(), time.monotonic()
    try:
        with postgres_server(port) as url:
            yield {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}, port, time.monotonic() - t0
    except BaseException as exc:
        # tests/support/postgres.py skips (pytest's Skipped, a BaseException) without the binaries.
        if type(exc).__name__ in ("Skipped", "Failed"):
            raise SystemExit(f"PostgreSQL is not available: {exc}") from None
        raise


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import free_port, machine, process_tree_cpu
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS
    from tests.support.prefect_cli import running_server

    began = time.monotonic()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gptimg-capacity-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "prefect-home"
    home.mkdir(exist_ok=True)
    archive = work / "archive"
    prompts = work / "prompts.txt"
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prompts.write_text("".join(f"capacity {tag} image {i}\n" for i in range(args.n)))
    flow_log = work / "flow.log"
    print(f"work directory: {work}", flush=True)

    config = EmulatorConfig(latency=args.latency, render_mode="stamp", url_ttl=None)
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        extra, pg_port, timings["postgres start"] = stack.enter_context(database(args.db))
        if pg_port is not None:
            print(f"PostgreSQL 15 on port {pg_port} in {timings['postgres start']:.1f} s")
        t0 = time.monotonic()
        emu = stack.enter_context(EmulatorProcess(config))
        timings["emulator start"] = time.monotonic() - t0
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
        cpu_of: dict[str, Any] = {
            "server": (lambda: process_tree_cpu(server_pid)) if server_pid else (lambda: 0.0),
            "emulator": lambda: process_tree_cpu(emu.process.pid) if emu.process else 0.0,
        }
        if postmaster:
            cpu_of["postgres"] = lambda: process_tree_cpu(postmaster) + reaped_cpu(postmaster)
        spec = {
            "emulator": emu.url,
            "base_url": emu.base_url("runware"),
            "api_key": str(EMULATOR_KEYS["runware"]),
            "prompts": str(prompts),
            "archive": str(archive),
            "c": args.c,
            "rerun_after": args.rerun_after,
            "phases": args.phases,
            "latency": args.latency,
        }
        child_env = {**env, "PREFECT_LOGGING_LEVEL": args.log_level, "PYTHONUNBUFFERED": "1"}
        budget = args.timeout or 600 + 4 * math.ceil(args.n / args.c) * args.latency
        cpu_start = {name: fn() for name, fn in cpu_of.items()}
        t0 = time.monotonic()
        with flow_log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                env=child_env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            watch = Watch(proc, cpu_of, work / "flow-stdout.log").start()
            spies = _profile(args.profile, {"flow": proc.pid, "server": server_pid})
            try:
                proc.wait(budget)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                why = f"the flow process ran over {budget:.0f} s; see {flow_log}"
                raise SystemExit(why) from None
            watch.join()
            for spy in spies:
                spy.send_signal(2)
                spy.wait(60)
        timings["flow process"] = time.monotonic() - t0
        cpu_end = {name: fn() for name, fn in cpu_of.items()}
        if proc.returncode != 0 or ("done", "first") not in watch.events:
            tail = flow_log.read_text(errors="replace")[-4000:]
            raise SystemExit(f"the flow process failed ({proc.returncode}):\n{tail}")
        errors = server_errors(home / "server.log")
        flow_errors = sum(
            1 for line in flow_log.read_text(errors="replace").splitlines() if "ERROR" in line
        )

    runs: dict[str, dict[str, Any]] = {}
    for label in ("first", "immediate", "settled"):
        done = watch.events.get(("done", label))
        if done is None:
            continue
        ledger = watch.events[("ledger", label)]
        b, a = ledger["before"], ledger["after"]

        def diff(kind: str, a: dict[str, Any] = a, b: dict[str, Any] = b) -> int:
            return sum(
                counts.get(kind, 0) - b["requests"].get(p, {}).get(kind, 0)
                for p, counts in a["requests"].items()
            )

        calls = sum(
            v - b["requests"].get(p, {}).get(k, 0)
            for p, counts in a["requests"].items()
            for k, v in counts.items()
        )
        c0, c1 = watch.cpu[("start", label)], watch.cpu[("done", label)]
        runs[label] = {
            **{k: done[k] for k in ("wall", "images", "failures", "failure_examples", "cpu")},
            "hwm_mb": done["hwm_kb"] / 1024,
            "peak_rss_mb": watch.peak_kb.get(label, 0) / 1024,
            "jobs": a["submissions"] - b["submissions"],
            "submits": diff("submit"),
            "polls": diff("poll"),
            "downloads": diff("download"),
            "calls": calls,
            "peak_in_flight": a["peak"].get("runware", 0),
            "rejected": a["rejected"],
            "cpu_during": {k: c1[k] - c0[k] for k in c0},
            "started_at": watch.events[("start", label)]["t"],
            "returned_at": done["t"],
        }
        if runs[label]["jobs"] and a["accepted_at"]:
            # this run's jobs are the newest: the ledger's latest accept is this run's last
            runs[label]["last_accept_at"] = a["accepted_at"][1]
            if not b["submissions"]:
                runs[label]["first_accept_at"] = a["accepted_at"][0]
    first = runs["first"]
    ideal = math.ceil(args.n / args.c) * args.latency
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "prefect": _prefect_version(),
        "db": args.db,
        "n": args.n,
        "c": args.c,
        "latency": args.latency,
        "log_level": args.log_level,
        "rerun_after": args.rerun_after,
        "ideal": ideal,
        "ratio": first["wall"] / ideal,
        "runs": runs,
        "archived_files": sum(1 for _ in (archive / "images").rglob(f"*.{FORMAT}"))
        if (archive / "images").exists()
        else 0,
        "startup_peak_rss_mb": watch.peak_kb.get("startup", 0) / 1024,
        "rss_samples": watch.samples,
        "cpu_total": {k: cpu_end[k] - cpu_start[k] for k in cpu_start},
        "server_errors": errors,
        "flow_error_lines": flow_errors,
        "timings": {**timings, "benchmark": time.monotonic() - began},
        "ulimit_n": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "phases": watch.events.get(("phases", "first"), {}).get("means"),
        "work": str(work),
    }


def _prefect_version() -> str:
    import prefect

    return str(prefect.__version__)


# -- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(r: dict[str, Any]) -> str:
    first = r["runs"]["first"]
    cpu, cpu_all = first["cpu_during"], r["cpu_total"]
    errs = r["server_errors"]
    polls = first["polls"] / max(1, first["jobs"])
    at_target = (r["n"], r["c"], r["latency"]) == (5000, 1000, 20.0)
    db = {"sqlite": "SQLite", "postgres": "PostgreSQL 15"}[r["db"]]
    lines = [
        f"## N = {r['n']}, C = {r['c']}, L = {r['latency']:g} s, {db} ({r['date']})",
        "",
        f"- Machine: {r['machine']}",
        f"- Prefect {r['prefect']}, `prefect server` on {db}; flow log level {r['log_level']}.",
        f"- Command: `python bench/capacity.py --n {r['n']} --c {r['c']} "
        f"--latency {r['latency']:g} --db {r['db']}"
        + (f" --rerun-after {r['rerun_after']:g}" if r["rerun_after"] is not None else "")
        + (f" --log-level {r['log_level']}" if r["log_level"] != "INFO" else "")
        + "`",
        "- "
        + (
            "Issue 13's target size."
            if at_target
            else "Not the target size (N = 5000, C = 1000, L = 20 s): the targets below "
            "are for that size; at this size the figures only say whether it works."
        ),
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| wall of the flow run | {first['wall']:.1f} s | |",
        f"| ideal ceil(N/C) x L | {r['ideal']:.0f} s | |",
        f"| wall / ideal | **{r['ratio']:.3f}x** | ≤ {TARGET['ratio']}x: "
        f"{verdict(r['ratio'] <= TARGET['ratio'])} |",
        f"| flow-process peak RSS (VmRSS every {SAMPLE_SECONDS:g} s) | "
        f"{first['peak_rss_mb']:.0f} MB | ≤ 1 GB: "
        f"{verdict(max(first['peak_rss_mb'], first['hwm_mb']) <= TARGET['rss_mb'])} |",
        f"| flow-process high-water mark (VmHWM) at the end of the run | "
        f"{first['hwm_mb']:.0f} MB | |",
        f"| server errors (whole benchmark) | {errs['ERROR lines']} ERROR lines, "
        f"{errs['database is locked']} 'database is locked' | 0: "
        f"{verdict(errs['ERROR lines'] == 0 and errs['database is locked'] == 0)} |",
        f"| polls per job | {polls:.2f} ({first['polls']} polls, {first['jobs']} jobs) | "
        f"≤ {TARGET['polls']}: {verdict(polls <= TARGET['polls'])} |",
        f"| peak jobs in flight (emulator) | {first['peak_in_flight']} | C = {r['c']} |",
        f"| images archived | {first['images']}/{r['n']} ({r['archived_files']} files), "
        f"{first['failures']} failures | {r['n']} |",
        f"| flow-process CPU | {first['cpu']:.1f} s ({1000 * first['cpu'] / r['n']:.1f} ms "
        "per image) | |",
        f"| server CPU during the run | {cpu['server']:.1f} s "
        f"({1000 * cpu['server'] / r['n']:.1f} ms per image) | |",
    ]
    if "postgres" in cpu:
        lines.append(
            f"| PostgreSQL CPU during the run | {cpu['postgres']:.1f} s "
            f"({1000 * cpu['postgres'] / r['n']:.1f} ms per image) | |"
        )
    if "first_accept_at" in first:
        lines.append(
            f"| flow called → first job accepted | "
            f"{first['first_accept_at'] - first['started_at']:.1f} s | |"
        )
    if "last_accept_at" in first:
        last_done = first["last_accept_at"] + r["latency"]
        lines += [
            f"| flow called → last job accepted | "
            f"{first['last_accept_at'] - first['started_at']:.1f} s | "
            f"ideal {r['ideal'] - r['latency']:.0f} s |",
            f"| last job done → flow returned | {first['returned_at'] - last_done:.1f} s | |",
        ]
    lines += [
        f"| emulator CPU during the run | {cpu['emulator']:.1f} s | |",
        "| CPU from the flow process's start to its exit | "
        + ", ".join(f"{k} {v:.1f} s" for k, v in cpu_all.items())
        + " | |",
    ]
    for label, title in (("immediate", "immediate"), ("settled", "settled")):
        rerun = r["runs"].get(label)
        if rerun is None:
            continue
        share = 100 * rerun["wall"] / first["wall"]
        when = (
            "started as soon as the first run returned"
            if label == "immediate"
            else f"started {r['rerun_after']:g} s after the immediate re-run"
        )
        target = (
            f"≤ {TARGET['rerun_pct']:g} %: {verdict(share <= TARGET['rerun_pct'])}"
            if label == "immediate"
            else ""
        )
        lines += [
            f"| {title} cache re-run ({when}) | {rerun['wall']:.2f} s = **{share:.1f} %** "
            f"of the first run | {target} |",
            f"| {title} re-run: provider calls, images | {rerun['calls']}, "
            f"{rerun['images']}/{r['n']} | 0: {verdict(rerun['calls'] == 0)} |",
        ]
    t = r["timings"]
    lines += [
        "",
        f"Took {t['benchmark']:.0f} s in all: "
        + (f"PostgreSQL start {t['postgres start']:.1f} s, " if r["db"] == "postgres" else "")
        + f"server start {t['server start']:.1f} s, flow process {t['flow process']:.1f} s "
        f"(imports, runs, and its exit draining logs and events). Flow process: peak RSS "
        f"{r['startup_peak_rss_mb']:.0f} MB before the first run, {r['rss_samples']} RSS "
        f"samples; {r['flow_error_lines']} ERROR lines in its log; `ulimit -n` {r['ulimit_n']}.",
    ]
    if r.get("phases"):
        lines += [
            "",
            "Where an image's time goes in the first run (mean seconds per image; 'wait beyond "
            "the job' is the wait less the job's own latency):",
            "",
            "| " + " | ".join(r["phases"]) + " |",
            "|" + "---|" * len(r["phases"]),
            "| " + " | ".join(f"{v:.3f}" for v in r["phases"].values()) + " |",
        ]
    lines += rejections(first)
    return "\n".join(lines) + "\n"


def rejections(first: dict[str, Any]) -> list[str]:
    """The emulator's rejections and the first failures of a run, when there were any."""
    rejected = {p: c for p, c in first["rejected"].items() if c}
    if not (rejected or first["failures"]):
        return []
    return [
        f"Rejections by the emulator: {rejected or 'none'}; first failures: "
        f"{first['failure_examples'] or 'none'}."
    ]


def publish(
    args: argparse.Namespace, result: dict[str, Any], section: str, path: Path, header: str
) -> None:
    """Print the section and the raw figures, append the section to `path` (made with
    `header` if new) unless --no-results, and remove the work directory unless kept."""
    print()
    print(section)
    print(json.dumps(result, default=str), flush=True)
    if not args.no_results:
        existing = path.read_text() if path.exists() else header
        path.write_text(existing.rstrip("\n") + "\n\n" + section)
        print(f"appended to {path}")
    if not (args.workdir or args.keep):
        shutil.rmtree(result["work"], ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="images (prompts) in the batch")
    parser.add_argument("--c", type=int, default=1000, help="the batch's concurrency")
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per emulator job")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--rerun-after",
        type=float,
        metavar="S",
        help="also re-run the batch S seconds after the immediate re-run (a settled re-run)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="PREFECT_LOGGING_LEVEL of the flow process"
    )
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    parser.add_argument("--no-results", action="store_true", help="do not append the results")
    parser.add_argument("--timeout", type=float, help="seconds the flow process may take")
    parser.add_argument(
        "--profile",
        help="write py-spy profiles (collapsed stacks) of the flow process and the server "
        "into this directory (needs py-spy)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="time each image's steps (submit, wait, download, archive, task start/finish)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(json.loads(args.child)))
        return
    if args.n < 1 or args.c < 1 or args.latency < 0:
        parser.error("--n and --c must be at least 1, --latency not negative")
    result = run(args)
    publish(args, result, render(result), RESULTS, HEADER)


if __name__ == "__main__":
    main()
