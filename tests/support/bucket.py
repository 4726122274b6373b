"""A provider's token bucket in this process, for the limiter's time-compressed simulations."""

from __future__ import annotations

import math
import time


class Bucket:
    """A provider's token bucket: `per_second`, `burst` held, honest Retry-After."""

    def __init__(self, per_second: float, burst: int, whole_seconds: bool) -> None:
        self.rate, self.burst, self.tokens = per_second, float(burst), float(burst)
        self.at = time.monotonic()
        self.whole_seconds = whole_seconds
        self.refused = 0

    def take(self) -> float | None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        self.refused += 1
        wait = (1 - self.tokens) / self.rate
        return float(math.ceil(wait)) if self.whole_seconds else wait
