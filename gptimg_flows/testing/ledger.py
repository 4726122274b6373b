"""What the emulator saw and charged: the ground truth tests and benchmarks assert against.

Thread-safe, because benchmarks read it while requests are being served.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

REQUEST_KINDS = ("submit", "poll", "upload", "resolve", "download", "cancel", "other")


class Ledger:
    """Submissions, charges, refunds, request counts, faults, rejections and peak concurrency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._empty()

    def clear(self) -> None:
        with self._lock:
            self._empty()

    def _empty(self) -> None:
        self._submissions: list[dict[str, Any]] = []
        self._charges: list[dict[str, Any]] = []
        self._refunds: list[dict[str, Any]] = []
        self._credits: dict[str, float] = defaultdict(float)
        self._requests: dict[str, dict[str, int]] = {}
        self._peak: dict[str, int] = defaultdict(int)
        self._faults: list[dict[str, Any]] = []
        self._rejected: dict[str, dict[str, int]] = {}
        self._rate_limited: dict[str, int] = {}
        self._batches: list[dict[str, Any]] = []

    # -- writers ---------------------------------------------------------------------------

    def request(self, provider: str, kind: str) -> None:
        with self._lock:
            counts = self._requests.setdefault(provider, dict.fromkeys(REQUEST_KINDS, 0))
            counts[kind] = counts.get(kind, 0) + 1

    def submission(
        self,
        provider: str,
        job_id: str,
        n: int,
        body_sha256: str,
        *,
        key: str | None = None,
        task_uuid: str | None = None,
        path: str = "",
        prompt: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "provider": provider,
            "job_id": job_id,
            "n": n,
            "body_sha256": body_sha256,
            "path": path,
            "at": time.time(),
        }
        if prompt is not None:  # which request was paid, whatever the provider's wire format
            entry["prompt"] = prompt
        if key is not None:
            entry["key"] = key
        if task_uuid is not None:
            entry["task_uuid"] = task_uuid
        with self._lock:
            self._submissions.append(entry)

    def batch(self, provider: str, batch_id: str, lines: int, metadata: dict[str, Any]) -> None:
        """A batch created (OpenAI's Batch API): each is one create call, however many lines."""
        with self._lock:
            self._batches.append(
                {
                    "provider": provider,
                    "batch_id": batch_id,
                    "lines": lines,
                    "metadata": dict(metadata),
                    "at": time.time(),
                }
            )

    def charge(self, provider: str, job_id: str, amount: float) -> None:
        with self._lock:
            self._credits[provider] += amount
            self._charges.append(
                {"provider": provider, "job_id": job_id, "amount": amount, "at": time.time()}
            )

    def refund(self, provider: str, job_id: str, amount: float, reason: str) -> None:
        with self._lock:
            self._credits[provider] -= amount
            self._refunds.append(
                {
                    "provider": provider,
                    "job_id": job_id,
                    "amount": amount,
                    "reason": reason,
                    "at": time.time(),
                }
            )

    def credits_of(self, provider: str) -> float:
        with self._lock:
            return self._credits.get(provider, 0.0)

    def running(self, provider: str, running: int, running_all: int) -> None:
        """Record the number of running jobs just after one started (peaks only rise then)."""
        with self._lock:
            self._peak[provider] = max(self._peak[provider], running)
            self._peak["all"] = max(self._peak["all"], running_all)

    def fault(self, kind: str, provider: str, path: str) -> None:
        with self._lock:
            self._faults.append(
                {"kind": kind, "provider": provider, "path": path, "at": time.time()}
            )

    def rejected(self, provider: str, status: int) -> None:
        with self._lock:
            counts = self._rejected.setdefault(provider, {})
            counts[str(status)] = counts.get(str(status), 0) + 1

    def rate_limited(self, provider: str) -> None:
        """A paid submit refused by the account's rate limit (no job, nothing charged)."""
        with self._lock:
            self._rate_limited[provider] = self._rate_limited.get(provider, 0) + 1

    # -- reader ----------------------------------------------------------------------------

    def snapshot(self, running_now: dict[str, int] | None = None) -> dict[str, Any]:
        """A JSON-safe copy of everything."""
        with self._lock:
            return {
                "submissions": [dict(s) for s in self._submissions],
                "credits": {p: round(v, 6) for p, v in self._credits.items()},
                "charges": [dict(c) for c in self._charges],
                "refunds": [dict(r) for r in self._refunds],
                "requests": {p: dict(c) for p, c in self._requests.items()},
                "peak_concurrent_jobs": dict(self._peak),
                "running_jobs": dict(running_now or {}),
                "faults": [dict(f) for f in self._faults],
                "rejected": {p: dict(c) for p, c in self._rejected.items()},
                "rate_limited": dict(self._rate_limited),
                "batches": [dict(b) for b in self._batches],
            }
