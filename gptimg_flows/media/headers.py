"""What an HTTP answer says about waiting: its Retry-After, read once for every caller (the
providers' API clients, downloads, the spend limit's server). No Prefect.

A provider's header is input we do not control: junk, a negative or non-finite number, or a
date decades away must neither raise nor hold anything for longer than RETRY_AFTER_CAP."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC

import httpx

#: The longest wait any Retry-After is taken to ask for (seconds); a credentials block's
#: `max_retry_after_seconds` may lower it for its account.
RETRY_AFTER_CAP = 300.0


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date), capped at
    RETRY_AFTER_CAP; None when neither says anything usable (a junk header is no header)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return min(RETRY_AFTER_CAP, ms / 1000)
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    # A number (however bad) is never a date: an HTTP date starts with its day's name.
    seconds = _seconds(value) if value[0] in "+-.0123456789" else _until_date(value)
    return None if seconds is None else min(RETRY_AFTER_CAP, seconds)


def _seconds(value: str | None) -> float | None:
    """A finite, non-negative number, or None."""
    try:
        seconds = float(value) if value else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _until_date(value: str) -> float | None:
    """Seconds from now until an HTTP date (0 for a past one), or None for no date."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # `-0000`: UTC, said without commitment (RFC 5322)
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, when.timestamp() - time.time())
    except (OverflowError, OSError, ValueError):
        return None
