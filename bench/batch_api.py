"""The OpenAI Batch API path at 2,000 lines: one batch, and memory that does not grow with N.

    python bench/batch_api.py              # 200 then 2,000 lines (about 2 minutes)

Each size runs `batch_generate(batch_api=True)` in this process against the emulator and a
`prefect server` (SQLite), after a warm-up, sampling RSS every 5 ms; the growth (peak minus the
RSS just before the run) is what the batch itself held. Writes bench/RESULTS-batch-api.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from memory import PeakSampler, rss_mb  # noqa: E402
from run import PrefectServer, bench_env, machine  # noqa: E402

OUT = HERE / "out-batch-api"
LATENCY = 3.0


async def one(block: Any, n: int, archive: Path, emu: Any) -> dict[str, Any]:
    from gptimg_flows import batch_generate

    emu.client.reset()
    before = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    result = await batch_generate(
        prompts=[f"batch line {i}: a paper kite over dunes" for i in range(n)],
        provider=block,
        archive=str(archive),
        batch_api=True,
        batch_poll_seconds=1.0,
        size="64x64",
        quality="low",
    )
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    ledger = emu.client.ledger()
    return {
        "n": n,
        "wall": wall,
        "rss_growth_mb": sampler.peak - before,
        "images": len(result.images),
        "failures": len(result.failures),
        "batches": len(ledger["batches"]),
        "lines_paid": len(ledger["submissions"]),
        "in_order": [i.row for i in result.images] == list(range(n)),
        "cost": result.cost.get("usd", 0.0),
        "ledger": ledger["credits"].get("openai", 0.0),
    }


async def main(sizes: list[int]) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    home = OUT / "prefect-home"
    bench_env(home)
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    config = EmulatorConfig(latency=LATENCY, render_mode="stamp", url_ttl=None)
    rows = []
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        os.environ["PREFECT_API_URL"] = server.url
        from gptimg_flows import OpenAIImageCredentials

        block = OpenAIImageCredentials(
            api_key=str(EMULATOR_KEYS["openai"]), base_url=emu.base_url("openai")
        )
        await one(block, 5, OUT / "warmup", emu)
        for n in sizes:
            row = await one(block, n, OUT / f"n{n}", emu)
            print(row, flush=True)
            rows.append(row)
    write(rows)


def write(rows: list[dict[str, Any]]) -> None:
    lines = [
        "# Benchmark: OpenAI Batch API",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Emulator: OpenAI Files + Batches, batch latency {LATENCY:g} s, 64x64 PNG, low "
        "quality; a `prefect server` (SQLite) on the same machine.",
        "- Command: `python bench/batch_api.py`.",
        "- Target (issue #12): a 2,000-line batch is one batch, with flat memory.",
        "",
        "| lines | wall s | RSS growth MB | batches created | lines paid | images | failures "
        "| rows in order | cost usd (ours / ledger) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['wall']:.1f} | {r['rss_growth_mb']:.1f} | {r['batches']} | "
            f"{r['lines_paid']} | {r['images']} | {r['failures']} | {r['in_order']} | "
            f"{r['cost']:.6f} / {r['ledger']:.6f} |"
        )
    per_row = ""
    if len(rows) >= 2 and rows[-1]["n"] != rows[0]["n"]:
        kb = (rows[-1]["rss_growth_mb"] - rows[0]["rss_growth_mb"]) * 1024
        per_row = f" (here {kb / (rows[-1]['n'] - rows[0]['n']):.1f} KB a row)"
    lines += [
        "",
        "The JSONL goes to a temporary file and up as a streamed multipart body; the output "
        "file is read line by line, each line's images spooled and archived before the next. "
        f"What grows with N is the list of ArchivedImage records the result returns{per_row}; "
        "no image or file is held whole.",
        "",
    ]
    (HERE / "RESULTS-batch-api.md").write_text("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    asyncio.run(main(parser.parse_args().sizes))
