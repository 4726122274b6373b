"""The command's console: its options (--debug), Prefect's console logs quieted to what a
user needs, stdout/stderr consoles, and running one command's coroutine (after checking that
a Prefect API can be had)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")
log = logging.getLogger("gptimg_flows.cli")


class Options:
    debug = False
    owns_process = False  # set by main(): nothing runs after the command but exit


OPTIONS = Options()


def require_prefect_api() -> None:
    """Before a command needs Prefect's API: name why it cannot be had, in one line, instead
    of waiting out the embedded server's startup timeout. With --debug, an embedded server
    that cannot start is started anyway for a few seconds, so its own log shows."""
    from gptimg_flows.cli.server_check import PrefectServerUnavailable, check_prefect_api

    try:
        check_prefect_api()
    except PrefectServerUnavailable:
        if OPTIONS.debug and not os.environ.get("PREFECT_API_URL"):
            show_embedded_server_log()
        raise


def show_embedded_server_log(seconds: int = 15) -> None:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        server.start(timeout=seconds)
    except Exception as exc:
        sys.stderr.write(f"(the embedded server did not start: {' '.join(str(exc).split())})\n")
    finally:
        server.stop()


class UserWarningsOnly(logging.Filter):
    """Console filter outside --debug: warnings from our code and from runs (a converted mask)
    reach the terminal; Prefect's progress chatter and error tracebacks do not: the command
    reports errors itself, and every log is still sent to the Prefect API (see the UI)."""

    _SOURCES = ("gptimg_flows", "prefect.flow_runs", "prefect.task_runs")

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno == logging.WARNING
            and not record.exc_info
            and record.name.startswith(self._SOURCES)
        )


@contextlib.contextmanager
def console_logs() -> Iterator[None]:
    """Outside --debug, filter Prefect's console handlers and silence a temporary server's own
    log (it prints shutdown races as tracebacks). When the process is ours (`main()`), the
    quiet stays until exit, which is when Prefect logs "Stopping temporary server"; embedded
    (tests, other programs) everything is put back."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler

    handlers: list[logging.Handler] = []
    set_env = False
    if not OPTIONS.debug:
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            handlers += [
                h for h in lg.handlers if isinstance(h, PrefectConsoleHandler) and h not in handlers
            ]
        if "PREFECT_SERVER_LOGGING_LEVEL" not in os.environ:
            os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "CRITICAL"
            set_env = True
    quiet = UserWarningsOnly()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        # Send queued logs and events now, while the filter holds: left to interpreter exit,
        # Prefect warns "Still processing items" on the console.
        EventsWorker.drain_all(timeout=10, at_exit=False)
        APILogWorker.drain_all(timeout=10, at_exit=False)
        if not OPTIONS.owns_process:
            for h in handlers:
                h.removeFilter(quiet)
            if set_env:
                os.environ.pop("PREFECT_SERVER_LOGGING_LEVEL", None)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    # Piped or captured: do not wrap table cells at 80 columns (paths must stay whole).
    return console if console.is_terminal else Console(highlight=False, width=200)


def run_command(work: Callable[[], Coroutine[Any, Any, T]], status: str | None = None) -> T:
    """Run a coroutine with Prefect's console quieted and, on a terminal, a spinner."""
    require_prefect_api()
    show = status is not None and not OPTIONS.debug and sys.stderr.isatty()
    spinner = stderr_console().status(status or "") if show else contextlib.nullcontext()
    with console_logs(), spinner:
        return asyncio.run(work())
