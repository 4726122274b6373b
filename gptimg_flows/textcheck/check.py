"""One image's text check: what was expected, what was read, how far apart (public: it is kept
on each `ArchivedImage` and in its sidecar as `text_check`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gptimg_flows.textcheck.match import best_match
from gptimg_flows.textcheck.ocr import engine_name, read_text

#: "off": no check; "flag": every image kept, a failed one marked; "remake": a request none of
#: whose images passed is made again (up to `text_check_attempts` more times).
TextCheckMode = Literal["off", "flag", "remake"]

#: An expected line passes at or under this character error rate. Chosen on bench/text_check.py's
#: data set (bench/RESULTS-text.md): at 0, 100 % of 60 misspelt images were caught and 0.6 % of
#: 180 right ones flagged; at 0.05 already half the one-letter slips in a long line got through
#: (one wrong letter in a 20-letter headline is 0.05).
MAX_ERROR_RATE = 0.0


class TextLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    expected: str
    error_rate: float = Field(description="character error rate against the best-matching region")
    matched: str = Field(description="that region, normalised (case, spaces and Unicode)")
    passed: bool


class TextCheck(BaseModel):
    """The words an image was expected to carry, read back by OCR."""

    model_config = ConfigDict(frozen=True)

    expected: list[str]
    read: list[str] = Field(description="the lines the OCR engine read, top to bottom")
    lines: list[TextLine]
    error_rate: float = Field(description="the worst line's character error rate")
    passed: bool
    engine: str = Field(description="the OCR engine and its version")
    max_error_rate: float = MAX_ERROR_RATE


def judge(expected: list[str], read: list[str], engine: str) -> TextCheck:
    lines = []
    for text in expected:
        match = best_match(text, read)
        lines.append(
            TextLine(
                expected=text,
                error_rate=match.error_rate,
                matched=match.region,
                passed=match.error_rate <= MAX_ERROR_RATE,
            )
        )
    worst = max((line.error_rate for line in lines), default=0.0)
    return TextCheck(
        expected=expected,
        read=read,
        lines=lines,
        error_rate=worst,
        passed=all(line.passed for line in lines),
        engine=engine,
    )


#: A failed reading is read again at this scale, and the better of the two kept: OCR's slips
#: (a line not found, a letter grown from a neighbouring shape) change with scale, while a
#: misspelling the model drew is there at every scale. On bench/text_check.py's images this
#: turned about half the false flags into passes and missed no misspelt image.
SECOND_READING_SCALE = 0.75


async def check_image(data: bytes, expected: list[str]) -> TextCheck:
    """Read the image (off the event loop) and judge each expected line; a failed reading is
    read once more at another scale."""
    first = judge(expected, await read_text(data), engine_name())
    if first.passed:
        return first
    second = judge(expected, await read_text(data, SECOND_READING_SCALE), engine_name())
    return second if second.error_rate < first.error_rate else first
