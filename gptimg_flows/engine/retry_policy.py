"""The Prefect side of retries: which failures a task run retries (only RetryableError), after
how long (backoff with jitter that never undercuts a provider's Retry-After), and the log line
of a free read tried again in place. The timing itself is retry.py's (no Prefect).

Every wait has a deadline: a task run with a `timeout_seconds` parameter ends by its start plus
that; a delay never runs past it, and a Retry-After that cannot be honoured before it is not
retried at all (the error stands, saying why)."""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, SupportsIndex, overload

from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.tasks import Task

from gptimg_flows.engine.retry import READ_ATTEMPTS, backoff_delay
from gptimg_flows.errors import (
    ProviderError,
    RateLimited,
    RetryableError,
    can_move_on,
    is_retryable,
)
from gptimg_flows.media.headers import RETRY_AFTER_CAP

#: Task retries of a transient error, unless the credentials block says otherwise.
RETRIES = 5


@dataclass(frozen=True)
class _Hint:
    """What the retry condition leaves for the delay Prefect reads next."""

    #: the failure's Retry-After (capped), when it gave one
    retry_after: float | None = None
    #: seconds left before the task run's deadline (None: it has none)
    left: float | None = None


_NO_HINT = _Hint()
_retry_hint: contextvars.ContextVar[_Hint | None] = contextvars.ContextVar(
    "gptimg_retry_hint", default=None
)


def retry_on_retryable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect `retry_condition_fn`: retry only transient errors, and only when a Retry-After
    can be honoured before the task run's deadline; remember both for the delay."""
    exc = _raised(state)
    if exc is None or not is_retryable(exc):
        _retry_hint.set(None)
        return False
    hint = _Hint(_retry_after_of(exc), _time_left(task_run))
    _retry_hint.set(hint)
    if hint.retry_after is not None and hint.left is not None and hint.retry_after > hint.left:
        _not_retried(exc, hint.retry_after, hint.left)
        return False
    return True


def retry_unless_moving(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A route member's `retry_condition_fn`: a submit refused before anything was created
    goes to the next member at once instead of waiting out retries here."""
    exc = _raised(state)
    if exc is not None and can_move_on(exc):
        _retry_hint.set(None)
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


def _parameters() -> dict[str, Any]:
    context = TaskRunContext.get()
    return dict(context.parameters or {}) if context is not None else {}


def _retry_after_of(exc: BaseException) -> float | None:
    """A 429's Retry-After, at most the provider block's `max_retry_after_seconds`."""
    value = exc.retry_after if isinstance(exc, RateLimited) else None
    if value is None or math.isnan(value):
        return None
    cap = getattr(_parameters().get("provider"), "max_retry_after_seconds", None)
    if not isinstance(cap, int | float) or cap <= 0:
        cap = RETRY_AFTER_CAP
    return max(0.0, min(float(value), float(cap), RETRY_AFTER_CAP))


def _time_left(task_run: TaskRun | None) -> float | None:
    """Seconds to the task run's deadline: its (first) start plus its `timeout_seconds`
    parameter; None for a task run without one."""
    timeout = _parameters().get("timeout_seconds")
    start = getattr(task_run, "start_time", None)
    if start is None or isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return None
    return float(timeout) - float((datetime.now(UTC) - start).total_seconds())


def _not_retried(exc: BaseException, retry_after: float, left: float) -> None:
    """Say, in the error and the run's log, why a transient error is not retried."""
    why = (
        f"not retried: the provider asked to wait {retry_after:g} s (Retry-After), past "
        f"this run's timeout_seconds ({max(0.0, left):.0f} s left)"
    )
    if isinstance(exc, ProviderError) and why not in exc.message:
        exc.message = f"{exc.message}; {why}"
        exc.about()
    _logger().warning("%s: %s", type(exc).__name__, why)


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # the step functions called outside a task run
        return logging.getLogger(__name__)


class _Backoff(list[float]):
    """The delays Prefect indexes by attempt; each read adds jitter, honours Retry-After and
    ends by the task run's deadline.

    Prefect reads `retry_delay_seconds[attempt]` right after calling the retry condition in
    the same context, which is where the hint was left.
    """

    @overload
    def __getitem__(self, i: SupportsIndex) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> float | list[float]:
        if isinstance(i, slice):
            return list(self)[i]
        hint = _retry_hint.get() or _NO_HINT
        _retry_hint.set(None)
        delay = backoff_delay(int(i), retry_after=hint.retry_after)
        return delay if hint.left is None else min(delay, max(0.0, hint.left))


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
        _logger().warning(
            "%s failed (%s: %s); trying again in %.1f s (%d/%d)",
            what,
            type(exc).__name__,
            exc,
            delay,
            attempt,
            READ_ATTEMPTS - 1,
        )

    return log
