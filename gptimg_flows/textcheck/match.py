"""Matching that knows OCR's habits (the character error rate of the STRICT benchmark, against
the best-matching region of what was read).

Tolerant of case, spacing, line breaks and Unicode forms (all normalised away), and of the
characters OCR confuses with each other (O/0, I/l/1/|, S/5, B/8, Z/2) where the expected text
has one of them; strict on every letter dropped, added, swapped or replaced.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

_CONFUSED = ("o0", "il1|!", "s5$", "b8", "z2", "g9")
_CLASS = {ch: i for i, group in enumerate(_CONFUSED) for ch in group}
#: Quotes and dashes OCR reads in many forms: one form each.
_FOLD = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u2013": "-",
        "\u2014": "-",
    }
)


def normalize(text: str) -> str:
    """NFKC, case-folded, with every space and line break removed."""
    return "".join(ch for ch in _folded(text) if not ch.isspace())


def _folded(text: str) -> str:
    """NFKC and case-folded, each run of spaces and line breaks one space."""
    folded = unicodedata.normalize("NFKC", text).translate(_FOLD).casefold()
    return " ".join(folded.split())


def _same(a: str, b: str) -> bool:
    return a == b or (a in _CLASS and _CLASS.get(b) == _CLASS[a])


@dataclass(frozen=True)
class Match:
    error_rate: float  # edits / expected characters (0 = read exactly)
    edits: int
    region: str  # the stretch of what was read that matched best (normalised)


def best_match(expected: str, read: list[str]) -> Match:
    """The expected text against the best-matching stretch of everything read (its lines
    joined: a headline wrapped over two lines still matches; lines of one character, which
    are mostly shapes read as letters, left out), by edit distance with free ends in what was
    read and spaces free on both sides. The stretch then takes in any letters glued
    to its first or last letter (the same word), so "GRAND OPENINGG" is one edit, not none."""
    want = normalize(expected)
    text = _folded(" ".join(line for line in read if len(normalize(line)) > 1))
    if not want:
        return Match(0.0, 0, "")
    start, end = _region(want, text)
    while start > 0 and text[start].isalpha() and text[start - 1].isalpha():
        start -= 1
    while 0 < end < len(text) and text[end - 1].isalpha() and text[end].isalpha():
        end += 1
    region = text[start:end]
    edits = _distance(want, region.replace(" ", ""))
    return Match(round(edits / len(want), 4), edits, region)


def _region(want: str, text: str) -> tuple[int, int]:
    """Where in `text` `want` matches with the fewest edits (free ends; spaces in `text` cost
    nothing)."""
    cost = [0] * (len(text) + 1)
    begin = list(range(len(text) + 1))
    for i, ch in enumerate(want, 1):
        prev_cost, prev_begin = cost[:], begin[:]
        cost[0], begin[0] = i, 0
        for j in range(1, len(text) + 1):
            if text[j - 1] == " ":  # a space read: skipped for free, or an expected char missed
                cost[j], begin[j] = min(
                    (cost[j - 1], begin[j - 1]), (prev_cost[j] + 1, prev_begin[j])
                )
                continue
            cost[j], begin[j] = min(
                (prev_cost[j - 1] + (0 if _same(ch, text[j - 1]) else 1), prev_begin[j - 1]),
                (prev_cost[j] + 1, prev_begin[j]),  # an expected character not read
                (cost[j - 1] + 1, begin[j - 1]),  # a character read that is not expected
            )
    end = min(range(len(text) + 1), key=lambda j: (cost[j], j))
    start = begin[end]
    while start < end and text[start] == " ":
        start += 1
    return start, end


def _distance(want: str, got: str) -> int:
    """Edit distance, OCR's confusions free."""
    row = list(range(len(got) + 1))
    for i, ch in enumerate(want, 1):
        prev, row = row, [i] + [0] * len(got)
        for j in range(1, len(got) + 1):
            row[j] = min(
                prev[j - 1] + (0 if _same(ch, got[j - 1]) else 1), prev[j] + 1, row[j - 1] + 1
            )
    return row[-1]
