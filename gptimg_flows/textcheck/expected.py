"""What text an image is expected to carry: the spans its prompt quotes, or a list given."""

from __future__ import annotations

import re

#: Most characters an image's expected text may hold, all lines together (spaces not counted).
#: The check flags an image on any one character read wrong, and OCR slips on about one
#: character in 2,000 of right text (bench/RESULTS-text.md); past this length a right image
#: would be flagged more than one time in 20, so a longer text is refused, not checked badly.
MAX_CHARS = 100
#: Most lines: each is matched on its own, and a poster's text past this many is body copy.
MAX_LINES = 8
#: Shortest side an image may have for its text to be checked: the OCR's detector finds text
#: about 10 px tall and up, and a model draws a headline at a fraction of the image, so on a
#: smaller image a right headline would be flagged for being too small to read.
MIN_SIDE = 256


class ExpectedTextError(ValueError):
    """An expected text the check cannot read reliably (empty, too long, not text)."""


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


def without_quotes(prompt: str) -> str:
    """The prompt with each quoted span's words left out (its quote marks around an ellipsis)."""
    return _QUOTED.sub(lambda m: m.group(0)[0] + "\u2026" + m.group(0)[-1], prompt)


def expected_lines(prompt: str, given: list[str] | None) -> list[str]:
    """`given` (an explicit `expected_text`) when set, else what the prompt quotes."""
    if given is not None:
        return [line.strip() for line in given if line.strip()]
    return quoted(prompt)


def check_expected(lines: object, *, quoted_from_prompt: bool = False) -> list[str]:
    """`lines` if a check can read them reliably; else ExpectedTextError saying why."""
    where = "the text the prompt quotes" if quoted_from_prompt else "expected_text"
    if isinstance(lines, str) or not isinstance(lines, list | tuple):
        raise ExpectedTextError(
            f"{where} must be a list of strings (one per line of text), got {type(lines).__name__}"
        )
    if not all(isinstance(line, str) for line in lines):
        raise ExpectedTextError(f"{where} must hold only strings, one per line of text")
    kept = [line.strip() for line in lines]
    if not kept or not all(kept):
        raise ExpectedTextError(
            f"{where} has an empty line; give the words to read, or leave expected_text out "
            "to check what the prompt quotes"
        )
    if not all(any(ch.isalnum() for ch in line) for line in kept):
        raise ExpectedTextError(f"{where} has a line with no letter or digit to read")
    if len(kept) > MAX_LINES:
        raise ExpectedTextError(
            f"{where} has {len(kept)} lines; the check reads at most {MAX_LINES}"
        )
    chars = sum(len("".join(line.split())) for line in kept)
    if chars > MAX_CHARS:
        raise ExpectedTextError(
            f"{where} is {chars} characters; the check reads at most {MAX_CHARS} reliably (one "
            "OCR slip flags an image, and slips add up with length): check the headline "
            "alone with expected_text, or turn text_check off for this request"
        )
    return kept


def check_size(width: int, height: int) -> None:
    """ExpectedTextError when an image this size is too small for its text to be read."""
    if min(width, height) < MIN_SIDE:
        raise ExpectedTextError(
            f"size {width}x{height} is too small for a text check (its text would be drawn "
            f"too small to read reliably): the check needs both sides at least {MIN_SIDE} px"
        )
