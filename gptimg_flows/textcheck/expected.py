"""What text an image is expected to carry: the spans its prompt quotes, or a list given."""

from __future__ import annotations

import re

#: A quoted span: straight double quotes, curly double quotes, guillemets, or single quotes
#: (straight or curly) where the quote opens and closes a word (so the apostrophes of "don't"
#: and "the cat's" never open one).
_QUOTED = re.compile(
    r'"([^"\n]+)"'
    r"|“([^”\n]+)”"
    r"|«([^»\n]+)»"
    r"|(?<![\w'])'([^'\n]+?)'(?![\w])"
    "|\u2018([^\u2019\n]+)\u2019"
)


def quoted(prompt: str) -> list[str]:
    """The text a prompt quotes, in order, each span stripped; empty spans skipped."""
    out: list[str] = []
    for match in _QUOTED.finditer(prompt):
        text = next(g for g in match.groups() if g is not None).strip()
        if text and any(ch.isalnum() for ch in text):
            out.append(text)
    return out


def expected_lines(prompt: str, given: list[str] | None) -> list[str]:
    """`given` (an explicit `expected_text`) when set, else what the prompt quotes."""
    if given is not None:
        return [line.strip() for line in given if line.strip()]
    return quoted(prompt)
