"""The text check's data set (issue #34): how well OCR + matching tells a misspelt headline from
a right one, at which threshold, and what a read costs. Writes bench/RESULTS-text.md.

    python bench/text_check.py                   # 60 tuning cases + 60 held out, both spellings
    python bench/text_check.py --cases 10 --no-write

Each case is a prompt quoting a headline, price, date or name, drawn by the offline renderer
(the emulator's and the offline provider's) at one of four sizes, once as asked and once with
the quoted text misspelt the way models get it wrong (a letter dropped, doubled, swapped or
replaced: gptimg_flows/testing/misspell.py). A check "flags" an image when any expected line's
character error rate is over the threshold; a flag on a misspelt image is a true positive.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gptimg_flows.media import render  # noqa: E402
from gptimg_flows.testing.misspell import misspell_quotes  # noqa: E402
from gptimg_flows.textcheck.check import judge  # noqa: E402
from gptimg_flows.textcheck.expected import quoted  # noqa: E402
from gptimg_flows.textcheck.ocr import engine_name, read_lines  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS-text.md"
TEXTS = [
    "GRAND OPENING",
    "Summer Sale 2026",
    "Espresso $3.50",
    "Fresh Bread Daily",
    "50% OFF",
    "Open 7 Days",
    "Happy Birthday Mia",
    "Join Us Friday 8 PM",
    "Limited Edition",
    "Black Friday Deals",
    "Welcome Home",
    "New Arrivals",
    "Free Shipping",
    "Best Coffee in Town",
    "Team Offsite 2027",
    "Book Now",
    "Tickets $25",
    "Oct 14 to Oct 18",
    "Harbor Lights Festival",
    "Buy One Get One",
    "Hand Made Soap",
    "Closing Down Sale",
    "Vegan Burgers",
    "Park Street Market",
    "Winter Collection",
    "Call 555 0199",
    "Midnight Jazz",
    "Spring Into Savings",
    "Thank You",
    "Back to School",
]
TEMPLATES = [
    'a poster that says "{t}" in bold letters',
    "a shop sign reading '{t}' above the door",
    "a social post with the headline \u201c{t}\u201d over a photo",
    'a chalkboard menu with "{t}" written on it',
]
SIZES = [(1024, 1024), (1536, 1024), (1024, 1536), (512, 512)]
THRESHOLDS = [0.0, 0.05, 0.1, 0.15, 0.2]


def cases(first: int, count: int) -> list[tuple[str, str, int, int, int]]:
    """(prompt as asked, prompt as drawn misspelt, width, height, seed)."""
    out = []
    for n in range(first, first + count):
        rng = random.Random(n)
        prompt = rng.choice(TEMPLATES).format(t=rng.choice(TEXTS))
        w, h = rng.choice(SIZES)
        out.append((prompt, misspell_quotes(prompt, rng), w, h, n))
    return out


def measure(first: int, count: int) -> tuple[list[tuple[bool, float]], list[float]]:
    """(misspelt?, worst error rate) per image, and each read's seconds."""
    scores, seconds = [], []
    for prompt, wrong, w, h, seed in cases(first, count):
        for drawn, bad in ((prompt, False), (wrong, True)):
            data = render.encode(render.draw(drawn, w, h, seed), "png")
            started = time.perf_counter()
            read = read_lines(data)
            seconds.append(time.perf_counter() - started)
            scores.append((bad, judge(quoted(prompt), read, engine_name()).error_rate))
    return scores, seconds


def table(scores: list[tuple[bool, float]]) -> list[str]:
    lines = [
        "| flag when error rate > | precision | recall | false flags | missed |",
        "|---|---|---|---|---|",
    ]
    for t in THRESHOLDS:
        tp = sum(bad and e > t for bad, e in scores)
        fp = sum(not bad and e > t for bad, e in scores)
        fn = sum(bad and e <= t for bad, e in scores)
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        lines.append(f"| {t:.2f} | {precision:.3f} | {recall:.3f} | {fp} | {fn} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    read_lines(render.encode(render.draw('warm "UP"', 256, 256), "png"))
    load = time.perf_counter() - started
    tune, tune_s = measure(0, args.cases)
    held, held_s = measure(1000, args.cases)
    times = sorted(tune_s + held_s)
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {engine_name()}",
        "",
        f"- {2 * args.cases} cases ({4 * args.cases} images: each as asked and misspelt); engine "
        f"load and first read {load:.2f} s; a read: median {times[len(times) // 2]:.2f} s, "
        f"p90 {times[int(len(times) * 0.9)]:.2f} s (1 thread, sizes 512 to 1536 px)",
        "",
        f"Tuning set (seeds 0-{args.cases - 1}):",
        "",
        *table(tune),
        "",
        f"Held out (seeds 1000-{999 + args.cases}):",
        "",
        *table(held),
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        head = "" if RESULTS.exists() else "# The text check (issue #34)\n\n"
        with RESULTS.open("a") as fh:
            fh.write(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
