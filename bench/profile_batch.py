"""Where a batch's CPU goes (issue #36): one `batch_generate` of N images against the emulator
(Runware's wire format, 1 s jobs, C at a time) on `prefect server start`, with
- the flow process's and the Prefect server's CPU seconds an image (/proc, the server with its
  children), and the wall;
- the Prefect API calls the flow process made (by method and route) and the events it emitted
  (by event name), each an image;
- flame graphs of both processes (py-spy, `pip install py-spy`), written to
  bench/flames/<label>-flow.svg and <label>-server.svg, and the flow process's top functions by
  cumulative time (cProfile) when `--cprofile` is given.

    python bench/profile_batch.py --n 200 --c 50 --label before
    python bench/profile_batch.py --n 200 --no-flames            # the counts alone

Appends one line of figures to bench/RESULTS-overhead.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FLAMES = HERE / "flames"
RESULTS = HERE / "RESULTS-overhead.md"
CALLS: collections.Counter[str] = collections.Counter()
EVENTS: collections.Counter[str] = collections.Counter()
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def count_calls() -> None:
    """Count the flow process's Prefect API requests and emitted events."""
    from prefect.client.base import PrefectHttpxAsyncClient
    from prefect.events.clients import PrefectEventsClient

    send = PrefectHttpxAsyncClient.send

    async def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        CALLS[f"{request.method} {_ID.sub('{id}', request.url.path)}"] += 1
        return await send(self, request, *args, **kwargs)

    PrefectHttpxAsyncClient.send = counted  # type: ignore[method-assign]
    emit = PrefectEventsClient._emit

    async def emitted(self: Any, event: Any) -> None:
        EVENTS[event.event] += 1
        await emit(self, event)

    PrefectEventsClient._emit = emitted  # type: ignore[method-assign]


def py_spy(
    pid: int, out: Path, subprocesses: bool, fmt: str = "flamegraph"
) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of a running process: an SVG flame graph, or ("raw") collapsed stacks
    that `top` below sums by function."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy is not installed (pip install py-spy): no flame graphs", file=sys.stderr)
        return None
    cmd = [exe, "record", "--pid", str(pid), "-o", str(out), "--rate", "100", "--nonblocking"]
    cmd += ["--format", fmt]
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top(collapsed: Path, count: int = 45) -> str:
    """Share of samples under each function (inclusive, once a stack), from py-spy's raw
    output: where the milliseconds go, as text beside the flame graph."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [
            re.sub(r" \((.*/)?(site-packages/|gptimg_flows/)?", " (", f) for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples; inclusive share, then own share, by function", ""]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(count)]
    lines += ["", "own:"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in own.most_common(count)]
    return "\n".join(lines) + "\n"


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    home = work / "prefect-home"
    from run import PrefectServer, bench_env, process_tree_cpu, self_cpu

    bench_env(home, args.log_level)

    from gptimg_flows import RunwareCredentials, batch_generate
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    config = EmulatorConfig(latency=1.0, render_mode="stamp", url_ttl=None)
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        os.environ["PREFECT_API_URL"] = server.url
        block = RunwareCredentials(
            api_key=str(EMULATOR_KEYS["runware"]), base_url=emu.base_url("runware")
        )

        async def batch(tag: str, n: int) -> float:
            started = time.perf_counter()
            result = await batch_generate(
                prompts=[f"{tag} image {i}" for i in range(n)],
                provider=block,
                archive=str(work / tag),
                concurrency=args.c,
                size="256x256",
                output_format="png",
            )
            assert len(result.images) == n, result.failures
            return time.perf_counter() - started

        if args.executor:
            from concurrent.futures import ThreadPoolExecutor

            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(args.executor))
        await batch("warmup", 5)
        count_calls()
        CALLS.clear()
        EVENTS.clear()
        emu.client.reset()
        assert server.proc is not None
        spies = []
        if args.flames:
            FLAMES.mkdir(exist_ok=True)
            spies = [
                py_spy(os.getpid(), FLAMES / f"{args.label}-flow.svg", False),
                py_spy(server.proc.pid, FLAMES / f"{args.label}-server.svg", True),
                py_spy(os.getpid(), work / "flow.txt", False, "raw"),
                py_spy(server.proc.pid, work / "server.txt", True, "raw"),
            ]
            await asyncio.sleep(1)
        server0, flow0 = process_tree_cpu(server.proc.pid), self_cpu()
        profiler = None
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        wall = await batch("measured", args.n)
        if profiler is not None:
            profiler.disable()
        flow_cpu = self_cpu() - flow0
        # The server handles events after the run has ended: count until it is idle again.
        settled = process_tree_cpu(server.proc.pid)
        for _ in range(60):
            await asyncio.sleep(1)
            now = process_tree_cpu(server.proc.pid)
            if now - settled < 0.05:
                break
            settled = now
        server_cpu = settled - server0
        for spy in spies:
            stop(spy)
        for name in ("flow", "server") if args.flames else ():
            if (work / f"{name}.txt").exists():
                text = top(work / f"{name}.txt")
                (FLAMES / f"{args.label}-{name}-top.txt").write_text(text)
        if profiler is not None:
            import io
            import pstats

            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
            (FLAMES / f"{args.label}-flow-cprofile.txt").write_text(text.getvalue())
    n = args.n
    return {
        "label": args.label,
        "n": n,
        "c": args.c,
        "wall": wall,
        "flow_ms": 1000 * flow_cpu / n,
        "server_ms": 1000 * server_cpu / n,
        "calls": sum(CALLS.values()) / n,
        "events": sum(EVENTS.values()) / n,
        "by_call": {k: round(v / n, 2) for k, v in CALLS.most_common(12)},
        "by_event": {k: round(v / n, 2) for k, v in EVENTS.most_common(12)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--c", type=int, default=50)
    parser.add_argument("--label", default="now")
    parser.add_argument("--no-flames", dest="flames", action="store_false")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--executor", type=int, default=0, help="threads of the default executor")
    parser.add_argument("--log-level", default="INFO", help="the flow's (INFO: Prefect's default)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the Prefect server (e.g. PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_"
        "BATCH_SIZE=100), shown in the results' label column",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for pair in args.server_env:
        name, _, value = pair.partition("=")
        os.environ[name] = value  # the server started below inherits it
    work = Path(tempfile.mkdtemp(prefix="gptimg-profile-"))
    try:
        out = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {out['label']} "
        f"{' '.join(args.server_env)} | {out['n']} | {out['c']} | "
        f"{out['wall']:.1f} s | {out['flow_ms']:.1f} | {out['server_ms']:.1f} | "
        f"{out['calls']:.2f} | {out['events']:.2f} | {args.log_level} |"
    )
    if not args.no_write:
        head = (
            ""
            if RESULTS.exists()
            else "# Overhead (issue #36): bench/profile_batch.py\n\n"
            "| when (UTC) | label | N | C | wall | flow CPU ms/image | server CPU ms/image | "
            "API calls/image | events/image | log level |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n"
        )
        with RESULTS.open("a") as fh:
            fh.write(head + line + "\n")


if __name__ == "__main__":
    main()
