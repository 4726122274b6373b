"""Retry timing as pure functions: exponential backoff with jitter, never sooner than asked.

Prefect's own jitter can shorten a delay below its mean, which would break a provider's
Retry-After; these delays only ever lengthen.
"""

from __future__ import annotations

import random

BASE_DELAY = 1.0
MAX_DELAY = 60.0
JITTER = 0.25


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    jitter: float = JITTER,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `attempt` (0-based): base·2^attempt, capped, +0..jitter·delay.

    A provider's Retry-After is a floor: we wait at least that long (plus jitter, so that many
    clients told the same time do not all return at once).
    """
    delay = float(min(cap, base * (2.0**attempt)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    spread = float((rng or random).uniform(0.0, jitter)) * delay
    return round(delay + spread, 3)


def poll_delays(
    *,
    first: float = 0.5,
    factor: float = 1.5,
    cap: float = 10.0,
) -> list[float]:
    """The default polling rhythm before any hint: fast at first, then backing off."""
    out, d = [], first
    while d < cap:
        out.append(round(d, 3))
        d *= factor
    out.append(cap)
    return out
