"""Benchmarks against the emulator; writes bench/RESULTS.md.

    python bench/run.py                 # N = 50, 200, 500 (about 10 minutes on 2 cores)
    python bench/run.py --sizes 50      # a quick look

1. Overhead: `batch_generate` of N images (job latency 1 s, concurrency 50) against a plain
   asyncio + httpx script doing the same submit/poll/download/write, alternating, same run.
2. Polling: polls per job, and the delay between a job finishing and the flow noticing it.
3. Memory: 20 concurrent downloads of 25 MB images archived (local and moto S3), peak RSS growth.
4. Cache: re-run of the finished largest batch: wall time and provider calls.

Everything runs on this machine: the emulator and a `prefect server` (SQLite) as subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
LATENCY = 1.0
CONCURRENCY = 50
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
RAW_POLL_INTERVAL = 0.25  # a careful hand-written script's poll rhythm


def bench_env(home: Path, log_level: str = "WARNING") -> None:
    """The environment every bench runs in, set before prefect is imported: its own Prefect
    home, no telemetry, Prefect's own logs at `log_level`."""
    os.environ.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL=log_level,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PrefectServer:
    """`prefect server start` on a free port with a fresh SQLite database."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.url,
            "PREFECT_SERVER_UI_ENABLED": "false",
        }
        # What `make ui` and the CLI's embedded server run with (Makefile): task runs'
        # state events recorded 200 at a time. BENCH_RECORDER_BATCH=1 measures Prefect's default.
        batch = os.environ.get("BENCH_RECORDER_BATCH", "200")
        env.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", batch)
        env.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE", batch)
        env.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self._use()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server did not start; see {self.log}")

    def _use(self) -> None:
        """Point this process's flows at this server. PREFECT_API_URL set in os.environ after
        prefect was imported is not read again (its settings are fixed at import): without
        this, a flow starts a temporary server of its own, and its CPU is counted nowhere."""
        os.environ["PREFECT_API_URL"] = self.url
        self._settings = None
        if "prefect" in sys.modules:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            self._settings = temporary_settings(updates={PREFECT_API_URL: self.url})
            self._settings.__enter__()

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "_settings", None) is not None:
            self._settings.__exit__(None, None, None)
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def errors(self) -> dict[str, int]:
        text = self.log.read_text(errors="replace")
        return {
            "database is locked": text.count("database is locked"),
            "ERROR lines": sum(1 for line in text.splitlines() if "ERROR" in line),
        }


# -- the baseline: what a user would write by hand ----------------------------------------------


async def raw_batch(base_url: str, key: str, n: int, outdir: Path) -> dict[str, float]:
    """Runware submit → poll getResponse → download → write, 50 at a time, no framework."""
    import httpx

    outdir.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {key}"}
    polls = 0

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal polls
        async with gate:
            task_uuid = str(uuid.uuid4())
            task = {
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "model": "openai:gpt-image@2",
                "positivePrompt": f"raw image {i}",
                "width": 256,
                "height": 256,
                "numberResults": 1,
                "outputType": "URL",
                "outputFormat": "PNG",
                "deliveryMethod": "async",
                "includeCost": True,
            }
            r = await client.post(base_url, json=[task], headers=headers)
            r.raise_for_status()
            while True:
                await asyncio.sleep(RAW_POLL_INTERVAL)
                polls += 1
                r = await client.post(
                    base_url,
                    json=[{"taskType": "getResponse", "taskUUID": task_uuid}],
                    headers=headers,
                )
                items = r.json().get("data", [])
                if items and all(it.get("status") != "processing" for it in items):
                    break
            async with client.stream("GET", items[0]["imageURL"]) as resp:
                resp.raise_for_status()
                with (outdir / f"{i}.png").open("wb") as fh:
                    async for chunk in resp.aiter_bytes(256 * 1024):
                        fh.write(chunk)

    cpu0, t0 = self_cpu(), time.perf_counter()
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(i, client) for i in range(n)))
    return {"wall": time.perf_counter() - t0, "cpu": self_cpu() - cpu0, "polls": polls}


# -- the same through gptimg-flows ------------------------------------------------------------


NOTICED: dict[str, float] = {}


def instrument_polling() -> None:
    """Record when the flow notices each job finished (for the notice-delay figure)."""
    from gptimg_flows.engine import steps

    original = steps.poll_until_done

    async def timed(adapter: Any, job: Any, timeout_seconds: float) -> Any:
        status = await original(adapter, job, timeout_seconds)
        NOTICED[job.job_id] = time.time()
        return status

    steps.poll_until_done = timed  # type: ignore[assignment]


#: prompt → phase name → (start, end) wall-clock seconds, for the largest batch.
PHASES: dict[str, dict[str, tuple[float, float]]] = {}
FLOW_SPAN: list[float] = []
PHASE_NAMES = (
    "flow start",
    "flow end",
    "queued for the task",
    "submit",
    "wait",
    "download",
    "archive",
    "task finish",
)


def instrument_phases() -> None:
    """Time each image's steps: where the time between two images' starts goes."""
    from gptimg_flows import flows, tasks

    def timing(name: str, fn: Any, prompt_of: Any) -> Any:
        @functools.wraps(fn)  # Prefect binds a task's parameters by its function's signature
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return await fn(*args, **kwargs)
            finally:
                PHASES.setdefault(prompt_of(args), {})[name] = (start, time.time())

        return timed

    from gptimg_flows.engine import steps

    flows.produce = timing("produce", flows.produce, lambda a: a[1].prompt)  # type: ignore[assignment]
    tasks.make_images.fn = timing("task", tasks.make_images.fn, lambda a: a[1].prompt)
    # The flows' path calls the steps' bodies (steps._submit …), not the public tasks' .fn.
    steps._submit = timing("submit", steps._submit, lambda a: a[1].prompt)  # type: ignore[assignment]
    tasks.archive_images.fn = timing("archive", tasks.archive_images.fn, lambda a: a[5])
    original_wait, original_download = steps._wait, steps._download

    async def wait(seller: Any, job: Any, *rest: Any) -> Any:
        start = time.time()
        try:
            return await original_wait(seller, job, *rest)
        finally:
            PHASES.setdefault("key:" + job.key, {})["wait"] = (start, time.time())

    async def download(seller: Any, job: Any, *rest: Any) -> Any:
        start = time.time()
        try:
            return await original_download(seller, job, *rest)
        finally:
            PHASES.setdefault("key:" + job.key, {})["download"] = (start, time.time())

    steps._wait, steps._download = wait, download  # type: ignore[assignment]


def phase_means() -> dict[str, float]:
    """Mean seconds per image in each phase (a task's phases are matched through its key)."""
    by_key = {k[4:]: v for k, v in PHASES.items() if k.startswith("key:")}
    sums: dict[str, list[float]] = {name: [] for name in PHASE_NAMES}
    for prompt, p in PHASES.items():
        if prompt.startswith("key:") or not {"produce", "task", "submit", "archive"} <= set(p):
            continue
        sums["queued for the task"].append(p["task"][0] - p["produce"][0])
        sums["submit"].append(p["submit"][1] - p["submit"][0])
        sums["archive"].append(p["archive"][1] - p["archive"][0])
        sums["task finish"].append(p["produce"][1] - p["archive"][1])
    for v in by_key.values():
        if "wait" in v:
            sums["wait"].append(v["wait"][1] - v["wait"][0])
        if "download" in v:
            sums["download"].append(v["download"][1] - v["download"][0])
    means = {name: sum(v) / len(v) for name, v in sums.items() if v}
    produced = [p["produce"] for k, p in PHASES.items() if "produce" in p]
    if produced and FLOW_SPAN:
        # Whole-run figures, not per image: before the first item starts, after the last ends.
        means["flow start"] = min(a for a, _ in produced) - FLOW_SPAN[0]
        means["flow end"] = FLOW_SPAN[1] - max(b for _, b in produced)
    return means


async def flow_batch(block: Any, n: int, archive: Path, tag: str) -> dict[str, Any]:
    from gptimg_flows import batch_generate

    cpu0, t0, wall0 = self_cpu(), time.perf_counter(), time.time()
    result = await batch_generate(
        prompts=[f"{tag} image {i}" for i in range(n)],
        provider=block,
        archive=str(archive),
        concurrency=CONCURRENCY,
        size="256x256",
        output_format="png",
    )
    FLOW_SPAN[:] = [wall0, time.time()]
    return {
        "wall": time.perf_counter() - t0,
        "cpu": self_cpu() - cpu0,
        "images": len(result.images),
        "failures": len(result.failures),
    }


def memory_probe(target: str, endpoint: str | None) -> dict[str, float]:
    """Run the 20 x 25 MB case in a fresh process so its peak RSS is its own."""
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "memory.py"),
            "--target",
            target,
            *(["--s3-endpoint", endpoint] if endpoint else []),
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- report ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import prefect

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, Prefect {prefect.__version__}"
    )


async def main(sizes: list[int]) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    home = OUT / "prefect-home"
    bench_env(home)
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    config = EmulatorConfig(latency=LATENCY, render_mode="stamp", url_ttl=None)
    rows: list[dict[str, Any]] = []
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        os.environ["PREFECT_API_URL"] = server.url
        from gptimg_flows import RunwareCredentials

        instrument_polling()
        instrument_phases()
        key = str(EMULATOR_KEYS["runware"])
        base = emu.base_url("runware")
        block = RunwareCredentials(api_key=key, base_url=base)
        await flow_batch(block, 5, OUT / "warmup", "warmup")  # imports, first flow, DB tables
        last_archive = OUT / "warmup"
        last_tag, last_wall = "", 0.0
        for n in sizes:
            # REPEATS alternating pairs (raw, then ours); the median pair by ratio is reported,
            # because one pair on a shared 2-core machine varies by a third from run to run.
            reps: list[dict[str, Any]] = []
            for rep in range(REPEATS):
                emu.client.reset()
                raw = await raw_batch(base, key, n, OUT / f"raw-{n}-{rep}")
                emu.client.reset()
                NOTICED.clear()
                PHASES.clear()
                server_cpu0 = process_tree_cpu(server.proc.pid) if server.proc else 0.0
                last_archive, last_tag = OUT / f"flow-{n}-{rep}", f"n{n}-{rep}"
                ours = await flow_batch(block, n, last_archive, last_tag)
                last_wall = ours["wall"]
                server_cpu = process_tree_cpu(server.proc.pid) - server_cpu0 if server.proc else 0.0
                ledger = emu.client.ledger()
                subs = ledger["submissions"]
                delays = [
                    NOTICED[s["job_id"]] - (s["at"] + LATENCY)
                    for s in subs
                    if s["job_id"] in NOTICED
                ]
                reps.append(
                    {
                        "n": n,
                        "raw": raw,
                        "ours": ours,
                        "server_cpu": server_cpu,
                        "polls_per_job": ledger["requests"]["runware"].get("poll", 0)
                        / max(1, len(subs)),
                        "raw_polls_per_job": raw["polls"] / n,
                        "notice_p50": pct(delays, 0.5),
                        "notice_p95": pct(delays, 0.95),
                        "submissions": len(subs),
                        "phases": phase_means(),
                        "errors": server.errors(),
                    }
                )
                print(json.dumps(reps[-1], default=str), flush=True)
            ratios = sorted(r["ours"]["wall"] / r["raw"]["wall"] for r in reps)
            reps.sort(key=lambda r: r["ours"]["wall"] / r["raw"]["wall"])
            rows.append({**reps[len(reps) // 2], "ratios": ratios})
        # cache: the same largest batch again, at once and after the server has settled
        n = sizes[-1]
        cache: dict[str, Any] = {"n": n, "first_wall": last_wall}
        for label, pause in (("immediate", 0.0), ("settled", 20.0)):
            await asyncio.sleep(pause)
            emu.client.reset()
            PHASES.clear()
            again = await flow_batch(block, n, last_archive, last_tag)
            calls = sum(sum(v.values()) for v in emu.client.ledger()["requests"].values())
            spent = phase_means()
            cache[label] = {
                "wall": again["wall"],
                "calls": calls,
                "images": again["images"],
                "flow_start": spent.get("flow start", float("nan")),
                "flow_end": spent.get("flow end", float("nan")),
            }
        print(json.dumps(cache), flush=True)
        memory = {}
        from moto.server import ThreadedMotoServer

        s3_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        moto.start()
        try:
            memory["local"] = memory_probe("local", None)
            memory["s3"] = memory_probe("s3", f"http://127.0.0.1:{s3_port}")
        finally:
            moto.stop()
        print(json.dumps(memory), flush=True)
        errors = server.errors()
    write_results(rows, cache, memory, errors)


def write_results(
    rows: list[dict[str, Any]],
    cache: dict[str, Any],
    memory: dict[str, Any],
    errors: dict[str, int],
) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Emulator: Runware API, job latency {LATENCY:g} s, 256x256 PNG, "
        f"concurrency {CONCURRENCY}; a `prefect server` (SQLite) on the same machine.",
        "- Command: `make bench` (`python bench/run.py`).",
        "- The OpenAI Batch API benchmark (2,000 lines) is in "
        "[RESULTS-batch-api.md](RESULTS-batch-api.md) (`python bench/batch_api.py`).",
        "",
        "## 1. Overhead against a raw asyncio + httpx script",
        "",
        f"Each N ran {REPEATS} times, raw and ours alternating; the median run by ratio is "
        "shown, and the last column has every run's ratio.",
        "",
        "| N | raw wall s | gptimg wall s | ratio | raw CPU s/img | gptimg CPU s/img (client) "
        "| server CPU s/img | images | server errors | all runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        raw, ours = r["raw"], r["ours"]
        lines.append(
            f"| {r['n']} | {raw['wall']:.1f} | {ours['wall']:.1f} | "
            f"**{ours['wall'] / raw['wall']:.2f}x** | {raw['cpu'] / r['n']:.3f} | "
            f"{ours['cpu'] / r['n']:.3f} | {r['server_cpu'] / r['n']:.3f} | "
            f"{ours['images']}/{r['n']} | {r['errors']['database is locked']} locked, "
            f"{r['errors']['ERROR lines']} ERROR lines | "
            + ", ".join(f"{x:.2f}x" for x in r["ratios"])
            + " |"
        )
    lines += [
        "",
        "## 2. Polling",
        "",
        "| N | polls per job (ours) | polls per job (raw, 0.25 s) | notice delay p50 | p95 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['polls_per_job']:.2f} | {r['raw_polls_per_job']:.2f} | "
            f"{r['notice_p50']:.3f} s | {r['notice_p95']:.3f} s |"
        )
    lines += [
        "",
        "The minimum is one poll per job (the one that sees it finished). The notice delay is "
        "measured from the emulator's accept time + the job latency to the moment the flow's "
        "poll loop returns.",
        "",
        "Where the time goes (seconds; 'flow start' and 'flow end' once per run, the rest the "
        f"mean per image; the job itself takes {LATENCY:g} s of 'wait'):",
        "",
        "| N | " + " | ".join(PHASE_NAMES) + " |",
        "|---|" + "---|" * len(PHASE_NAMES),
        *(
            f"| {r['n']} | "
            + " | ".join(f"{r['phases'].get(name, float('nan')):.3f}" for name in PHASE_NAMES)
            + " |"
            for r in rows
        ),
        "",
        "'flow start': from calling the flow to its first item starting (creating the flow "
        "run, reading blocks and the prompts); 'flow end': from the last item done to the flow "
        "returning (artifacts, final state). 'queued for the task': from the batch item "
        "starting to the task's code running "
        "(Prefect's task-run start); 'task finish': from the archive written to the flow "
        "having the result (Prefect's task-run end).",
        "",
        "## 3. Memory: 20 concurrent downloads of 25 MB images",
        "",
        "| archive | peak RSS growth | images |",
        "|---|---|---|",
    ]
    for target, m in memory.items():
        lines.append(f"| {target} | {m['rss_growth_mb']:.0f} MB | {m['images']} |")
    lines += [
        "",
        "## 4. Cache: re-running the finished largest batch",
        "",
        "| when | wall s | % of first run | provider calls | images | flow start s | flow end s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {cache[label]['wall']:.2f} | "
            f"{100 * cache[label]['wall'] / cache['first_wall']:.1f} % | {cache[label]['calls']} | "
            f"{cache[label]['images']}/{cache['n']} | {cache[label]['flow_start']:.2f} | "
            f"{cache[label]['flow_end']:.2f} |"
            for label in ("immediate", "settled")
        ),
        "",
        f"The re-run is of the last N = {cache['n']} batch, which took "
        f"{cache['first_wall']:.1f} s. 'immediate' starts as soon as that run returns; "
        "'settled' 20 s later, once the Prefect server has written "
        "the first run's events.",
        "",
        f"Server log over the whole run: {errors['database is locked']} 'database is locked', "
        f"{errors['ERROR lines']} ERROR lines.",
        "",
    ]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    # another concurrency writes beside the default's figures, not over them
    out = HERE / ("RESULTS.md" if CONCURRENCY == 50 else f"RESULTS-c{CONCURRENCY}.md")
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,200,500", help="comma-separated batch sizes")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="jobs in flight (both contestants)"
    )
    args = parser.parse_args()
    CONCURRENCY = args.concurrency
    asyncio.run(main([int(s) for s in args.sizes.split(",")]))
