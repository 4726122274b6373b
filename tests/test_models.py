"""The request model: what users can ask for, normalised once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gptimg_flows.models import EditRequest, ImageRequest
from gptimg_flows.sizes import dims_for, ratio_of, tier_for


def test_prompt_is_trimmed() -> None:
    assert ImageRequest(prompt="  a red kite \n").prompt == "a red kite"


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_or_whitespace_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(ValidationError, match="prompt is empty"):
        ImageRequest(prompt=prompt)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("1536x1024", "1536x1024"),
        (" 1024 X 1536 ", "1024x1536"),
        ("32:18", "16:9"),
        ("AUTO", "auto"),
    ],
)
def test_size_is_normalised(given: str, stored: str) -> None:
    assert ImageRequest(prompt="p", size=given).size == stored


@pytest.mark.parametrize("bad", ["big", "1024", "0:9", "16/9"])
def test_unparseable_size_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="size"):
        ImageRequest(prompt="p", size=bad)


def test_resolution_only_applies_to_ratios() -> None:
    with pytest.raises(ValidationError, match="resolution applies to an aspect-ratio size"):
        ImageRequest(prompt="p", size="1024x1024", resolution="2K")
    req = ImageRequest(prompt="p", size="16:9", resolution="2K")
    assert req.resolved_pixels() == (2048, 1152)


def test_ratio_arithmetic_is_exact() -> None:
    assert ratio_of(1536, 1024) == "3:2"
    assert dims_for("1:1", "1K") == (1024, 1024)
    assert dims_for("9:16", "4K") == (2160, 3840)
    assert tier_for(1536, 1024) == "2K"


def test_unknown_fields_are_refused_not_dropped() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ImageRequest(prompt="p", colour="blue")  # type: ignore[call-arg]


def test_edit_request_accepts_a_single_source_and_paths(tmp_path) -> None:
    req = EditRequest(prompt="p", images=tmp_path / "a.png", mask=tmp_path / "m.png")
    assert req.images == [str(tmp_path / "a.png")]
    assert req.mask == str(tmp_path / "m.png")
    with pytest.raises(ValidationError):
        EditRequest(prompt="p", images=[])


def test_fingerprint_excludes_inputs_and_unset_fields() -> None:
    fp = EditRequest(prompt="p", images=[b"\x89PNG"], mask=b"m", quality="high").fingerprint()
    assert fp == {"prompt": "p", "n": 1, "quality": "high", "extras": {}}
