"""Routes on the emulator and `prefect server start` (issue 20).

    python bench/routing.py            # N=200 through an outage, N=120 for spill-over
    python bench/routing.py --quick    # smaller N, for a look

1. **Outage**: N rows, C at a time, over the route [scenario, gptimage2ai]; scenario goes down
   (503 to submits and polls) OUTAGE_AT s into the batch for OUTAGE_FOR s. Against the same
   batch on gptimage2.ai alone. Reported: rows failed (lost), paid submissions (= N: nothing
   paid twice), failovers and cooldowns (the run's per-member table), and wall against the
   healthy single provider.
2. **Spill-over**: scenario and gptimage2.ai each allow RATE images a minute (a token bucket,
   burst 3, 429 with Retry-After). N rows over one of them, then over the route of both;
   throughput = N / wall. Once with the limits learned from 429s, once with `images_per_minute`
   set on both blocks.

Targets: 0 rows lost, 0 paid twice, spill-over at least 1.8x one member's throughput.
Appends a section to bench/RESULTS-routing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "RESULTS-routing.md"
LATENCY = 2.0
OUTAGE_AT, OUTAGE_FOR = 4.0, 12.0
RATE, BURST = 60, 3
TARGET_SPILL = 1.8


async def batch(provider: Any, n: int, c: int, archive: Path, tag: str) -> dict[str, Any]:
    """One batch_generate run; its wall, failures and (for a route) per-member figures."""
    from gptimg_flows import batch_generate
    from gptimg_flows.engine.rate_limiter import forget_limiters
    from gptimg_flows.engine.route_health import forget_health, stats_of

    forget_limiters()  # a fresh process's view of each account
    forget_health()
    started = time.monotonic()
    state = await batch_generate(
        prompts=[f"{tag} row {i}" for i in range(n)],
        provider=provider,
        archive=str(archive),
        concurrency=c,
        return_state=True,
    )
    result = await state.result()
    wall = time.monotonic() - started
    stats = stats_of(state.state_details.flow_run_id)
    return {
        "wall": wall,
        "failed": len(result.failures),
        "images": len(result.images),
        "members": {name: vars(s) for name, s in stats.items()},
        "failovers": sum(s.failovers for s in stats.values()),
        "spills": sum(s.spills for s in stats.values()),
        "cooldowns": sum(s.cooldowns for s in stats.values()),
    }


async def run(quick: bool, work: Path) -> list[str]:
    home = work / "prefect-home"
    from run import PrefectServer, bench_env

    bench_env(home)

    from gptimg_flows import GptImage2AICredentials, ScenarioCredentials
    from gptimg_flows.testing import EmulatorConfig, EmulatorProcess
    from gptimg_flows.testing.config import EMULATOR_KEYS

    lines: list[str] = []
    n_outage, c_outage = (60, 16) if quick else (200, 16)
    n_spill, c_spill = (45, 24) if quick else (120, 32)
    config = EmulatorConfig(latency=LATENCY, render_mode="stamp", url_ttl=None, retry_after=1.0)
    with EmulatorProcess(config) as emu, PrefectServer(home) as server:
        os.environ["PREFECT_API_URL"] = server.url
        key = EMULATOR_KEYS["scenario"]
        assert isinstance(key, tuple)

        def blocks(**extra: Any) -> tuple[Any, Any]:
            scenario = ScenarioCredentials(
                api_key=key[0], api_secret=key[1], base_url=emu.base_url("scenario"), **extra
            )
            g2 = GptImage2AICredentials(
                api_key=str(EMULATOR_KEYS["gptimage2ai"]),
                base_url=emu.base_url("gptimage2ai"),
                **extra,
            )
            return scenario, g2

        scenario, g2 = blocks()
        await batch(g2, 2, 2, work / "warmup", "warmup")

        # 1. outage mid-batch
        emu.client.reset()
        alone = await batch(g2, n_outage, c_outage, work / "alone", "outage")
        paid_alone = len(emu.client.ledger()["submissions"])
        lines += [
            f"### Outage: N={n_outage}, C={c_outage}, job latency {LATENCY:g} s, scenario down "
            f"from {OUTAGE_AT:g} s for {OUTAGE_FOR:g} s",
            "",
            "| run | rows lost | paid submissions | wall | failovers | cooldowns |",
            "|---|---|---|---|---|---|",
            f"| gptimage2.ai alone (healthy) | {alone['failed']} | {paid_alone} | "
            f"{alone['wall']:.1f} s | - | - |",
        ]
        lost, twice = alone["failed"], paid_alone - n_outage
        for scope, what in (("submit", "new jobs refused"), ("all", "submits and polls refused")):
            outage = {
                "provider": "scenario",
                "start": OUTAGE_AT,
                "end": OUTAGE_AT + OUTAGE_FOR,
                "status": 503,
                "scope": scope,
            }
            emu.client.reset(outages=[outage])
            routed = await batch(
                [scenario, g2], n_outage, c_outage, work / f"routed-{scope}", f"outage-{scope}"
            )
            ledger = emu.client.ledger()
            paid = len(ledger["submissions"])
            bodies = len({s["body_sha256"] for s in ledger["submissions"]})
            by = {
                p: sum(1 for s in ledger["submissions"] if s["provider"] == p)
                for p in ("scenario", "gptimage2ai")
            }
            lines.append(
                f"| route [scenario, gptimage2ai], {what} | {routed['failed']} | {paid} "
                f"(scenario {by['scenario']}, gptimage2ai {by['gptimage2ai']}; {bodies} "
                f"distinct) | {routed['wall']:.1f} s ({routed['wall'] / alone['wall']:.2f}x) | "
                f"{routed['failovers']} | {routed['cooldowns']} |"
            )
            lost += routed["failed"] + (n_outage - routed["images"] - routed["failed"])
            twice += paid - n_outage
        lines.append("")
        print("\n".join(lines), flush=True)

        # 2. spill-over between two rate-limited members
        limits = {
            p: {"images_per_minute": RATE, "burst": BURST} for p in ("scenario", "gptimage2ai")
        }
        spill_lines = [
            f"### Spill-over: N={n_spill}, C={c_spill}, each member {RATE} images/min "
            f"(burst {BURST}), job latency {LATENCY:g} s",
            "",
            "| limits | one member | route of two | throughput ratio | 429s | paid |",
            "|---|---|---|---|---|---|",
        ]
        ratios: list[float] = []
        for told in (False, True):
            extra = {"images_per_minute": float(RATE)} if told else {}
            scenario, g2 = blocks(**extra)
            emu.client.reset(rate_limits=limits, outages=[])
            one = await batch(g2, n_spill, c_spill, work / f"one-{told}", f"spill-one-{told}")
            emu.client.reset(rate_limits=limits, outages=[])
            two = await batch(
                [g2, scenario], n_spill, c_spill, work / f"two-{told}", f"spill-two-{told}"
            )
            ledger = emu.client.ledger()
            refused = sum(ledger["rate_limited"].values())
            ratio = (n_spill / two["wall"]) / (n_spill / one["wall"])
            ratios.append(ratio)
            lost += one["failed"] + two["failed"]
            twice += len(ledger["submissions"]) - n_spill
            spill_lines.append(
                f"| {'set on the blocks' if told else 'learned from 429s'} | "
                f"{n_spill / one['wall'] * 60:.0f} images/min ({one['wall']:.1f} s) | "
                f"{n_spill / two['wall'] * 60:.0f} images/min ({two['wall']:.1f} s; "
                f"{two['spills']} spilled; {_split(ledger)}) | **{ratio:.2f}x** | {refused} | "
                f"{len(ledger['submissions'])} |"
            )
            print(spill_lines[-1], flush=True)
        lines += [*spill_lines, ""]
        verdict = [
            f"- rows lost: {lost} (target 0): {'**met**' if lost == 0 else 'not met'}",
            f"- paid twice: {max(twice, 0)} (target 0): {'**met**' if twice <= 0 else 'not met'}",
            f"- spill-over: {', '.join(f'{r:.2f}x' for r in ratios)} (target >= "
            f"{TARGET_SPILL}x): {'**met**' if min(ratios) >= TARGET_SPILL else 'not met'}",
        ]
        lines += verdict
    return lines


def _split(ledger: dict[str, Any]) -> str:
    subs = ledger["submissions"]
    counts = {p: sum(1 for s in subs if s["provider"] == p) for p in ("gptimage2ai", "scenario")}
    return ", ".join(f"{p} {n}" for p, n in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N (a look, not a result)")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptimg-routing-"))
    try:
        lines = asyncio.run(run(args.quick, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([f"## {stamp}{' (quick)' if args.quick else ''}", "", *lines, ""])
    print(section)
    if not args.no_results:
        with RESULTS.open("a") as fh:
            fh.write(section + "\n")


if __name__ == "__main__":
    main()
