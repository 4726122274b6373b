"""Log lines a batch does not ship: Prefect's "Finished in state Completed()" of each image's
task run. The task run's state already says it in the UI, and at a line an image it was the
costliest thing a batch logged (a console render in the flow process, a request and a row on
the Prefect server: bench/RESULTS-overhead.md). A task run that fails, retries or crashes still
logs as Prefect does; so does every task of a user's own."""

from __future__ import annotations

import logging

#: Tasks that run once per image (engine/steps.py's names).
PER_IMAGE_TASKS = frozenset({"make-images", "run-job", "submit-job", "wait-for-job"})
_DONE = "Finished in state Completed()"


class _QuietCompleted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and getattr(record, "task_name", None) in PER_IMAGE_TASKS
            and record.msg == _DONE
        )


_FILTER = _QuietCompleted()


def quiet_per_image_completions() -> None:
    """Install the filter on Prefect's task-run logger (once; idempotent)."""
    logger = logging.getLogger("prefect.task_runs")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
