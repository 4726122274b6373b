"""The seams simulation (issue #32) over many seeds: tests/support/simulation.py's stories, on the
emulator and `prefect server start`, judged the same way as tests/test_simulation.py.

    python bench/seams_sim.py --seeds 0-200          # a long run; appends to RESULTS-seams.md
    python bench/seams_sim.py --seeds 17-18 --show   # replay one story, printing its plan

Reported: stories, runs, kills, paid requests, archived, uncertain, the longest run, and every
violation with its seed (a failing seed replays the same story).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "RESULTS-seams.md"


def _block_maker(emu: Any) -> Any:
    from gptimg_flows.blocks.credentials import CREDENTIAL_BLOCKS
    from gptimg_flows.testing.config import EMULATOR_KEYS

    by_name = {cls.provider_name: cls for cls in CREDENTIAL_BLOCKS}

    def make(name: str, **overrides: Any) -> Any:
        key = EMULATOR_KEYS[name]
        fields: dict[str, Any] = {"base_url": emu.base_url(name)}
        if isinstance(key, tuple):
            fields["api_key"], fields["api_secret"] = key
        else:
            fields["api_key"] = key
        return by_name[name](**{**fields, **overrides})

    return make


async def run(first: int, last: int, show: bool, work: Path) -> list[str]:
    from run import PrefectServer, bench_env

    bench_env(work / "prefect-home", "ERROR")

    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess

    totals: Counter[str] = Counter()
    violations: list[str] = []
    longest_run = [0.0]
    started = time.monotonic()
    with EmulatorProcess(EmulatorConfig()) as emu, PrefectServer(work / "home") as server:
        os.environ["PREFECT_API_URL"] = server.url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            await _stories(emu, first, last, show, work, totals, violations, longest_run)
    wall = time.monotonic() - started
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, seeds {first}-{last - 1}",
        "",
        f"- stories {totals['stories']}, runs {totals['runs']} (of them killed with SIGKILL: "
        f"{totals['kills']}; stopped by a Ctrl-C or a cancel: {totals['stops']}), "
        f"wall {wall:.0f} s",
        f"- requests paid {totals['paid']}, archived {totals['archived']}, reported uncertain "
        f"{totals['uncertain']}; longest run {longest_run[0]:.1f} s",
        f"- **violations: {len(violations)}**",
        *[f"  - {v}" for v in violations[:50]],
        "",
    ]
    return lines


async def _stories(
    emu: Any,
    first: int,
    last: int,
    show: bool,
    work: Path,
    totals: Counter[str],
    violations: list[str],
    longest_run: list[float],
) -> None:
    from gptimg_flows.engine.rate_limiter import forget_limiters
    from gptimg_flows.engine.route_health import forget_health
    from tests.support.simulation import plan, simulate

    blocks = _block_maker(emu)
    for seed in range(first, last):
        if show:
            print(plan(seed))
        forget_limiters()
        forget_health()
        outcome = await simulate(seed, emu.client, work, blocks)
        totals.update(
            stories=1,
            runs=outcome.runs,
            kills=outcome.kills,
            stops=outcome.stops,
            paid=outcome.paid,
            archived=outcome.archived,
            uncertain=outcome.uncertain,
        )
        longest_run[0] = max(longest_run[0], outcome.longest_run)
        violations += [f"seed {seed}: {v}" for v in outcome.violations]
        print(
            f"seed {seed}: {outcome.runs} runs, {outcome.kills} killed, {outcome.stops} "
            f"stopped, {outcome.paid} paid, "
            f"{outcome.archived} archived, {outcome.uncertain} uncertain, "
            f"{len(outcome.violations)} violation(s)",
            flush=True,
        )
        for v in outcome.violations:
            print("   ", v, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-50")
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    first, last = map(int, args.seeds.split("-"))
    with tempfile.TemporaryDirectory(prefix="gptimg-sim-") as tmp:
        lines = asyncio.run(run(first, last, args.show, Path(tmp)))
    print("\n".join(lines))
    if not args.no_write:
        head = "" if RESULTS.exists() else "# The seams simulation (issue #32)\n\n"
        with RESULTS.open("a") as fh:
            fh.write(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
