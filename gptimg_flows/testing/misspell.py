"""Misspelt text, the way image models get it wrong: a letter dropped, doubled, swapped with its
neighbour, or replaced by one OCR does not confuse with it. Used by the emulator's `misspell`
fault and by bench/text_check.py's data set."""

from __future__ import annotations

import random

from gptimg_flows.textcheck.expected import quoted

KINDS = ("drop", "double", "swap", "replace")
#: Replacement letters, none in the same OCR-confusion class as another (see textcheck.match).
_LETTERS = "acdefhkmnprtuvwxy"


def misspell(text: str, rng: random.Random, kind: str | None = None) -> str:
    """`text` with one letter wrong (it must have two letters or more)."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(letters) < 2:
        return text
    kind = kind or rng.choice(KINDS)
    i = rng.choice(letters)
    if kind == "drop":
        return text[:i] + text[i + 1 :]
    if kind == "double":
        return text[:i] + text[i] + text[i:]
    if kind == "swap":
        pairs = [j for j in letters if j + 1 < len(text) and text[j + 1].isalpha()]
        pairs = [j for j in pairs if text[j].lower() != text[j + 1].lower()]
        if pairs:
            j = rng.choice(pairs)
            return text[:j] + text[j + 1] + text[j] + text[j + 2 :]
    choices = [c for c in _LETTERS if c != text[i].lower()]
    new = rng.choice(choices)
    return text[:i] + (new.upper() if text[i].isupper() else new) + text[i + 1 :]


def misspell_quotes(prompt: str, rng: random.Random) -> str:
    """The prompt with each quoted span misspelt (what a model that got the text wrong drew)."""
    out = prompt
    for text in quoted(prompt):
        out = out.replace(text, misspell(text, rng), 1)
    return out
