"""Two flow processes on one account's rate limit (issue 36, "two processes on one account").

    python bench/shared_limit.py                  # both providers, N=100 a process (~8 min)
    python bench/shared_limit.py --n 40 --no-results

One emulator account of 60 images a minute (a token bucket, burst 3, jobs of 2 s), one
Prefect server, and two flow processes started together, each running `batch_generate` of N
rows with C=16 and the block's defaults (nothing told about the limit or about each other).
Two providers: gptimage2.ai answers a refused submit with Retry-After only; OpenAI also sends
its x-ratelimit headers. Reported: the wall until both finish against the ideal
((2N - burst) / rate + one job), rows failed, 429s per row, images paid. Goal: <= 1.25x, no
row lost, each row paid once. Appends to bench/RESULTS-ratelimit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
RESULTS = HERE / "RESULTS-ratelimit.md"
RATE = 60
BURST = 3
LATENCY = 2.0
C = 16
GOAL = 1.25


async def child(provider: str, base_url: str, key: str, n: int, tag: str, out: Path) -> None:
    """One flow process: its own limiter, learning the account alone or through the server."""
    from gptimg_flows import GptImage2AICredentials, OpenAIImageCredentials, batch_generate

    block: Any = (
        OpenAIImageCredentials(api_key=key, base_url=base_url)
        if provider == "openai"
        else GptImage2AICredentials(api_key=key, base_url=base_url)
    )
    started = time.time()
    result = await batch_generate(
        prompts=[f"{tag} row {i}" for i in range(n)],
        provider=block,
        archive=str(out.parent / f"archive-{tag}"),
        concurrency=C,
        size="1024x1024" if provider == "openai" else None,
    )
    out.write_text(
        json.dumps(
            {
                "started": started,
                "ended": time.time(),
                "failed": len(result.failures),
                "refused": result.refused_submits,
            }
        )
    )


def run(n: int, providers: list[str], work: Path) -> list[dict[str, Any]]:
    from run import PrefectServer, bench_env

    home = work / "prefect-home"
    bench_env(home)
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    rows = []
    config = EmulatorConfig(latency=LATENCY, render_mode="stamp", url_ttl=None)
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        env = {**os.environ, "PREFECT_API_URL": server.url}
        for provider in providers:
            key, base = str(EMULATOR_KEYS[provider]), emu.base_url(provider)
            # A warm-up outside the limit: both children then start on a warm server.
            emu.client.reset()
            _children(provider, base, key, 2, work / f"warm-{provider}", env)
            emu.client.reset(rate_limits={provider: {"images_per_minute": RATE, "burst": BURST}})
            started = time.time()
            outs = _children(provider, base, key, n, work / provider, env)
            ledger = emu.client.ledger()
            wall = max(o["ended"] for o in outs) - started
            ideal = (2 * n - BURST) / (RATE / 60.0) + LATENCY
            row = {
                "provider": provider,
                "n": n,
                "wall": wall,
                "ideal": ideal,
                "ratio": wall / ideal,
                "failed": sum(o["failed"] for o in outs),
                "refused_per_row": ledger["rate_limited"].get(provider, 0) / (2 * n),
                "paid": len(ledger["submissions"]),
                "ends": sorted(o["ended"] - started for o in outs),
            }
            print(_line(row), flush=True)
            rows.append(row)
    return rows


def _children(
    provider: str, base: str, key: str, n: int, work: Path, env: dict[str, str]
) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    procs = []
    for tag in ("a", "b"):
        out = work / f"{tag}.json"
        cmd = [sys.executable, __file__, "--child", provider, base, key, str(n), tag, str(out)]
        procs.append((subprocess.Popen(cmd, env=env), out))
    for proc, _ in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a flow process failed ({proc.returncode})")
    return [json.loads(out.read_text()) for _, out in procs]


def _line(r: dict[str, Any]) -> str:
    ends = " / ".join(f"{e:.0f}" for e in r["ends"])
    return (
        f"| {r['provider']} | {r['n']} x 2 | {r['wall']:.1f} s / {r['ideal']:.1f} s = "
        f"**{r['ratio']:.2f}x** | {ends} s | {r['failed']} | {r['refused_per_row']:.2f} | "
        f"{r['paid']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=6, metavar="X", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100, help="rows in each process")
    parser.add_argument("--providers", default="gptimage2ai,openai")
    parser.add_argument("--label", default="", help="a word for the results table")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if args.child:
        provider, base, key, n, tag, out = args.child
        asyncio.run(child(provider, base, key, int(n), tag, Path(out)))
        return
    work = Path(tempfile.mkdtemp(prefix="gptimg-shared-limit-"))
    try:
        rows = run(args.n, args.providers.split(","), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            f"## Two flow processes on one account, {stamp} {args.label}".rstrip(),
            "",
            f"`python bench/shared_limit.py`: {RATE}/min, burst {BURST}, jobs of {LATENCY:g} s, "
            f"C={C} in each process; ideal = (2N - burst) / rate + one job; goal <= {GOAL}x.",
            "",
            "| provider | rows | wall / ideal | each process ended | rows failed | 429s per row "
            "| images paid |",
            "|---|---|---|---|---|---|---|",
            *(_line(r) for r in rows),
            "",
        ]
    )
    print(section)
    if not args.no_results:
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n\n" + section)


if __name__ == "__main__":
    main()
