"""A batch's progress artifact in the Prefect UI."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact


class BatchProgress:
    """A progress artifact for a batch, updated at most once a second (the API is shared)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done = max(1, total), done
        self.artifact_id: UUID | None = None
        self._last = 0.0

    async def start(self) -> None:
        self.artifact_id = await acreate_progress_artifact(
            progress=100.0 * self.done / self.total, description="batch progress"
        )

    async def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.artifact_id is not None and now - self._last >= 1.0:
            self._last = now
            await aupdate_progress_artifact(self.artifact_id, 100.0 * self.done / self.total)

    async def finish(self) -> None:
        if self.artifact_id is not None:
            await aupdate_progress_artifact(self.artifact_id, 100.0)
