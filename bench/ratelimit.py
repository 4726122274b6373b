"""Batches against an account with a rate limit, side by side on the emulator (issue 19).

    python bench/ratelimit.py                  # every case (about 30 minutes)
    python bench/ratelimit.py --quick          # smaller N, for a look

Each case is an account of R images a minute (a token bucket, burst 3) answering refused
submits with 429 and an honest Retry-After, with OpenAI's x-ratelimit headers ("headers":
the OpenAI routes, a synchronous API) or without ("no headers": gptimage2.ai's routes, an
async API polled for its result). Three contestants make the same N images, C at a time:
- **gptimg-flows**: `batch_generate` with the block's defaults, on `prefect server start`;
- **naive script**: C at a time, honours Retry-After, 6 attempts a row, then the row fails;
- **paced script**: told the limit, spaces its submits 60/R s apart (and honours
  Retry-After, 6 attempts, if refused anyway).

Reported per contestant: rows failed, wall against the ideal ((N - burst) / rate + one job),
and 429s per row (the emulator's count of refused submits). Targets: 0 rows failed, wall at
most 1.10x ideal, at most 0.25 refused submits per row with headers and 0.75 without.
Appends a section to bench/RESULTS-ratelimit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "RESULTS-ratelimit.md"
BURST = 3
LATENCY = 2.0
ATTEMPTS = 6
#: (images a minute, concurrency, N): the issue's cases, N so the burst does not dominate.
CASES = [(60, 16, 100), (300, 64, 500), (30, 8, 50)]
QUICK = [(60, 16, 30), (300, 64, 120), (30, 8, 15)]
TARGET = {"ratio": 1.10, "refused_headers": 0.25, "refused_plain": 0.75}


def _retry_after(response: httpx.Response) -> float:
    if ms := response.headers.get("retry-after-ms"):
        return float(ms) / 1000
    return float(response.headers.get("retry-after", "1"))


async def _script_row(
    client: httpx.AsyncClient,
    provider: str,
    base: str,
    key: str,
    prompt: str,
    turn: Callable[[], Awaitable[None]],
) -> bool:
    """One row as a plain script makes it: submit (429: wait Retry-After, 6 attempts), poll
    an async job to its end, download the image."""
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(ATTEMPTS):
        await turn()
        if provider == "openai":
            body = {"model": "gpt-image-2", "prompt": prompt, "size": "1024x1024"}
            r = await client.post(f"{base}/images/generations", json=body, headers=headers)
        else:
            r = await client.post(f"{base}/generate", json={"prompt": prompt}, headers=headers)
        if r.status_code == 429:
            await asyncio.sleep(_retry_after(r))
            continue
        r.raise_for_status()
        if provider == "openai":
            return bool(r.json()["data"][0]["b64_json"])
        job = r.json().get("jobId") or r.json().get("id")
        while True:
            await asyncio.sleep(0.5)
            p = await client.get(f"{base}/generate/{job}", headers=headers)
            if p.status_code == 200:
                url = p.json()["results"][0]["imageUrl"]
                return (await client.get(url)).status_code == 200
    return False


async def script(
    provider: str, base: str, key: str, n: int, c: int, told_rate: float | None
) -> dict[str, Any]:
    """The naive script (told_rate None) or the paced one (told the images a minute)."""
    gate = asyncio.Semaphore(c)
    lock = asyncio.Lock()
    next_at = 0.0

    async def turn() -> None:
        nonlocal next_at
        if told_rate is None:
            return
        async with lock:
            now = time.monotonic()
            at = max(now, next_at)
            next_at = at + 60.0 / told_rate
        await asyncio.sleep(max(0.0, at - time.monotonic()))

    async def one(i: int, client: httpx.AsyncClient) -> bool:
        async with gate:
            return await _script_row(client, provider, base, key, f"row {i}", turn)

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as client:
        done = await asyncio.gather(*(one(i, client) for i in range(n)))
    return {"wall": time.monotonic() - started, "failed": done.count(False)}


async def project(provider: str, block: Any, n: int, c: int, archive: Path) -> dict[str, Any]:
    from gptimg_flows import batch_generate
    from gptimg_flows.engine.rate_limiter import forget_limiters

    forget_limiters()  # a fresh process's view of the account
    started = time.monotonic()
    result = await batch_generate(
        prompts=[f"row {i}" for i in range(n)],
        provider=block,
        archive=str(archive),
        concurrency=c,
        size="1024x1024" if provider == "openai" else None,
    )
    return {
        "wall": time.monotonic() - started,
        "failed": len(result.failures),
        "counted": result.refused_submits,
    }


async def run(cases: list[tuple[int, int, int]], work: Path) -> list[dict[str, Any]]:
    home = work / "prefect-home"
    from run import PrefectServer, bench_env

    bench_env(home)

    from gptimg_flows import GptImage2AICredentials, OpenAIImageCredentials
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    rows: list[dict[str, Any]] = []
    config = EmulatorConfig(latency=LATENCY, render_mode="stamp", url_ttl=None)
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        os.environ["PREFECT_API_URL"] = server.url
        blocks = {
            "openai": OpenAIImageCredentials(
                api_key=str(EMULATOR_KEYS["openai"]), base_url=emu.base_url("openai")
            ),
            "gptimage2ai": GptImage2AICredentials(
                api_key=str(EMULATOR_KEYS["gptimage2ai"]), base_url=emu.base_url("gptimage2ai")
            ),
        }
        await project("gptimage2ai", blocks["gptimage2ai"], 2, 2, work / "warmup")
        for ipm, c, n in cases:
            for provider in ("openai", "gptimage2ai"):
                limits = {provider: {"images_per_minute": ipm, "burst": BURST}}
                ideal = (n - BURST) / (ipm / 60.0) + LATENCY
                key, base = str(EMULATOR_KEYS[provider]), emu.base_url(provider)
                contestants: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                    "gptimg-flows": functools.partial(
                        project, provider, blocks[provider], n, c, work / f"{provider}-{ipm}"
                    ),
                    "naive script": functools.partial(script, provider, base, key, n, c, None),
                    "paced script": functools.partial(script, provider, base, key, n, c, ipm),
                }
                for name, go in contestants.items():
                    emu.client.reset(rate_limits=limits)  # a fresh, full bucket
                    figures = await go()
                    ledger = emu.client.ledger()
                    refused = ledger["rate_limited"].get(provider, 0)
                    row = {
                        "ipm": ipm,
                        "c": c,
                        "n": n,
                        "headers": provider == "openai",
                        "who": name,
                        "failed": figures["failed"],
                        "wall": figures["wall"],
                        "ideal": ideal,
                        "ratio": figures["wall"] / ideal,
                        "refused_per_row": refused / n,
                        "paid": len(ledger["submissions"]),
                    }
                    if "counted" in figures:
                        row["counted_ok"] = figures["counted"] == refused
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['ipm']}/min | {r['c']} | {r['n']} | {'yes' if r['headers'] else 'no'} | "
        f"{r['who']} | {r['failed']} | {r['wall']:.1f} s / {r['ideal']:.1f} s = "
        f"**{r['ratio']:.2f}x** | {r['refused_per_row']:.2f} |"
    )


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    ours = [r for r in rows if r["who"] == "gptimg-flows"]
    out = []
    for r in ours:
        cap = TARGET["refused_headers"] if r["headers"] else TARGET["refused_plain"]
        misses = []
        if r["failed"]:
            misses.append(f"{r['failed']} rows failed")
        if r["ratio"] > TARGET["ratio"]:
            misses.append(f"wall {r['ratio']:.2f}x > {TARGET['ratio']}x")
        if r["refused_per_row"] > cap:
            misses.append(f"{r['refused_per_row']:.2f} refused/row > {cap}")
        if r["paid"] != r["n"]:
            misses.append(f"{r['paid']} paid for {r['n']} rows")
        case = f"{r['ipm']}/min, C={r['c']}, {'headers' if r['headers'] else 'no headers'}"
        out.append(f"- {case}: " + ("**met**" if not misses else "not met: " + "; ".join(misses)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N (a look, not a result)")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptimg-ratelimit-"))
    try:
        rows = asyncio.run(run(QUICK if args.quick else CASES, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            f"## {stamp}{' (quick)' if args.quick else ''}",
            "",
            f"Burst {BURST}, every job {LATENCY:g} s; ideal = (N - burst) / rate + one job.",
            "",
            "| limit | C | N | headers | who | rows failed | wall / ideal | 429s per row |",
            "|---|---|---|---|---|---|---|---|",
            *(_line(r) for r in rows),
            "",
            "Targets for gptimg-flows (0 failed, wall <= 1.10x, <= 0.25 / 0.75 refused per row "
            "with / without headers, each row paid once):",
            *verdict(rows),
            "",
        ]
    )
    print(section)
    if not args.no_results:
        header = (
            "# Rate-limit benchmark (issue 19)\n\n`python bench/ratelimit.py`: see its docstring.\n"
        )
        existing = RESULTS.read_text() if RESULTS.exists() else header
        RESULTS.write_text(existing.rstrip("\n") + "\n\n" + section)


if __name__ == "__main__":
    main()
