"""The Prefect side of retries: which failures a task run retries (only RetryableError), after
how long (backoff with jitter that never undercuts a provider's Retry-After), and the log line
of a free read tried again in place. The timing itself is retry.py's (no Prefect)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, SupportsIndex, overload

from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.tasks import Task

from gptimg_flows.engine.retry import READ_ATTEMPTS, backoff_delay
from gptimg_flows.errors import RateLimited, RetryableError, can_move_on, is_retryable

#: Task retries of a transient error, unless the credentials block says otherwise.
RETRIES = 5


_retry_after_hint: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "gptimg_retry_after", default=None
)


def retry_on_retryable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect `retry_condition_fn`: retry only transient errors; remember any Retry-After."""
    exc = _raised(state)
    retry = exc is not None and is_retryable(exc)
    _retry_after_hint.set(exc.retry_after if isinstance(exc, RateLimited) else None)
    return retry


def retry_unless_moving(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A route member's `retry_condition_fn`: a submit refused before anything was created
    goes to the next member at once instead of waiting out retries here."""
    exc = _raised(state)
    if exc is not None and can_move_on(exc):
        _retry_after_hint.set(None)
        return False
    return retry_on_retryable(task, task_run, state)


def _raised(state: State[Any]) -> BaseException | None:
    if isinstance(state.data, BaseException):
        return state.data
    try:
        state.result(raise_on_failure=True)
    except BaseException as raised:
        return raised
    return None


class _Backoff(list[float]):
    """The delays Prefect indexes by attempt; each read adds jitter and honours Retry-After.

    Prefect reads `retry_delay_seconds[attempt]` right after calling the retry condition in
    the same context, which is where the Retry-After hint was left.
    """

    @overload
    def __getitem__(self, i: SupportsIndex) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> float | list[float]:
        if isinstance(i, slice):
            return list(self)[i]
        hint = _retry_after_hint.get()
        _retry_after_hint.set(None)
        return backoff_delay(int(i), retry_after=hint)


def retry_delays(retries: int) -> list[float]:
    """`retry_delay_seconds` callable form: Prefect calls it with the retry count."""
    return _Backoff([0.0] * max(1, retries))


RETRY_OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": retry_delays,
    "retry_condition_fn": retry_on_retryable,
    "cache_policy": NO_CACHE,
}


def log_read_retry(what: str) -> Callable[[RetryableError, float, int], None]:
    def log(exc: RetryableError, delay: float, attempt: int) -> None:
        try:
            logger: Any = get_run_logger()
        except MissingContextError:  # the step functions called outside a task run
            logger = logging.getLogger(__name__)
        logger.warning(
            "%s failed (%s: %s); trying again in %.1f s (%d/%d)",
            what,
            type(exc).__name__,
            exc,
            delay,
            attempt,
            READ_ATTEMPTS - 1,
        )

    return log
