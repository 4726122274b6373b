"""Image size arithmetic shared by the request model and the adapters.

Providers speak either pixels (`1536x1024`) or an aspect ratio plus a resolution tier
(`3:2` + `1K`); these helpers convert between the two exactly, so an adapter can refuse a size
it cannot express instead of silently picking a different one.
"""

from __future__ import annotations

import re
from math import gcd

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX\u00d7]\s*(\d{1,5})\s*$")
_RATIO_RE = re.compile(r"^\s*(\d{1,3})\s*:\s*(\d{1,3})\s*$")

#: Long side, in pixels, of each resolution tier.
TIER_LONG_SIDE: dict[str, int] = {"1K": 1024, "2K": 2048, "4K": 3840}


def parse_size(value: str) -> tuple[int, int] | None:
    """`"1536x1024"` → `(1536, 1024)`; anything else → None."""
    m = _SIZE_RE.match(value)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2))


def parse_ratio(value: str) -> tuple[int, int] | None:
    """`"16:9"` → `(16, 9)`; anything else → None."""
    m = _RATIO_RE.match(value)
    if not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    if a == 0 or b == 0:
        return None
    return a, b


def ratio_of(width: int, height: int) -> str:
    """Reduced aspect ratio of a pixel size: `(1536, 1024)` → `"3:2"`."""
    g = gcd(width, height)
    return f"{width // g}:{height // g}"


def normalise_ratio(value: str) -> str | None:
    """`"32:18"` → `"16:9"`; None when the value is not a ratio."""
    parsed = parse_ratio(value)
    return ratio_of(*parsed) if parsed else None


def dims_for(ratio: str, tier: str = "1K", multiple: int = 16) -> tuple[int, int]:
    """Pixel size for a ratio at a tier: the tier's long side, both sides `multiple`-aligned."""
    parsed = parse_ratio(ratio)
    if parsed is None:
        raise ValueError(f"not an aspect ratio: {ratio!r}")
    a, b = parsed
    long_side = TIER_LONG_SIDE[tier]
    w: float
    h: float
    if a >= b:
        w, h = long_side, long_side * b / a
    else:
        w, h = long_side * a / b, long_side
    return _align(w, multiple), _align(h, multiple)


def tier_for(width: int, height: int) -> str:
    """The smallest tier whose long side holds this size."""
    long_side = max(width, height)
    for tier, side in TIER_LONG_SIDE.items():
        if long_side <= side:
            return tier
    return "4K"


def _align(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)
