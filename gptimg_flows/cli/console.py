"""The command's console: its options (--debug), Prefect's console logs quieted to what a
user needs, stdout/stderr consoles, and running one command's coroutine (after checking that
a Prefect API can be had), where Ctrl-C stops without losing what was paid for (`Stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
    """Run a coroutine with Prefect's console quieted and, on a terminal, a spinner; Ctrl-C
    is a `Stop`."""
    require_prefect_api()
    show = status is not None and not OPTIONS.debug and sys.stderr.isatty()
    spinner = stderr_console().status(status or "") if show else contextlib.nullcontext()
    with console_logs(), spinner:
        return asyncio.run(Stop().run(work()))


class RunCancelled(Exception):
    """The command's flow run was cancelled in Prefect (the UI, the API): exit 1."""


class Stop:
    """How a command stops without losing what was paid for.

    The first Ctrl-C (a SIGTERM; or `request`, when the run is cancelled in Prefect) cancels
    the work and waits until every paid call already sent has its answer recorded (the job,
    on record in the archive, which the same command resumes), then exits 130 (143 after a
    SIGTERM, RunCancelled after a cancel). A Ctrl-C while it waits cuts those calls at once
    and names them (each may have been billed: a re-run stops on it with SubmitUncertain).
    One more is Python's own KeyboardInterrupt.

    During a flow run Prefect's own SIGTERM handler raises TerminationSignal wherever Python
    is; whatever it stops, the paid calls in flight refuse the closing loop's cancellation,
    and ours is the handler Prefect hands the signal back to when its engine exits."""

    current: Stop | None = None  # the stop of the command running, for its work to request

    def __init__(self) -> None:
        self.reason: str | None = None
        self.presses = 0
        self.cut = False
        self._main: asyncio.Task[Any] | None = None

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        import signal

        from prefect.exceptions import TerminationSignal

        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        ours = contextvars.copy_context()  # not a run's: a flow with log_prints logs print()

        def on_sigint(signum: int, frame: Any) -> None:
            self.presses += 1
            at_once = self.presses >= 2 or self.reason is not None
            if at_once:  # the next is a KeyboardInterrupt wherever Python is
                signal.signal(signal.SIGINT, signal.default_int_handler)
            then = self._at_once if at_once else self._ctrl_c
            loop.call_soon_threadsafe(then, context=ours)

        def on_sigterm(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(self.request, "SIGTERM", context=ours)

        previous: dict[int, Any] = {}
        for signum, handler in ((signal.SIGINT, on_sigint), (signal.SIGTERM, on_sigterm)):
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: signals are not ours to handle
                break
        Stop.current = self
        try:
            return await work
        except asyncio.CancelledError:
            if self.reason is None:
                raise
            await self._recorded()
            if self.reason == "SIGTERM":
                raise TerminationSignal(signal.SIGTERM) from None
            if self.reason != "Ctrl-C":
                raise RunCancelled(self.reason) from None
            raise KeyboardInterrupt from None  # exit 130, as Ctrl-C ends any command
        except TerminationSignal:  # Prefect's handler, in the work's own task: it has stopped
            _stop_paying()  # what it left running sends nothing new while this waits
            await self._recorded()
            raise
        finally:
            Stop.current = None
            for number, was in previous.items():
                signal.signal(number, was)

    def request(self, reason: str) -> None:
        """Stop as a first Ctrl-C does (from the command's own loop)."""
        if self.reason is not None or self._main is None:
            return
        self.reason = reason
        sent = _stop_paying()
        waiting = (
            f"waiting for {len(sent)} paid call(s) already sent to be recorded"
            if sent
            else "no paid call is in flight"
        )
        again = " again" if reason == "Ctrl-C" else ""
        _say(f"stopping ({reason}): {waiting} (Ctrl-C{again} to stop at once)")
        self._main.cancel()

    def _ctrl_c(self) -> None:
        self.request("Ctrl-C")

    def _at_once(self) -> None:
        if self.reason is None:
            self.request("Ctrl-C")
        self.cut = True
        cut = _stop_paying(at_once=True)
        if cut:
            _say(
                f"stopping at once: {len(cut)} paid call(s) were cut before their answers "
                "were recorded; each may have been billed, and a re-run stops on it with "
                "SubmitUncertain (look it up in the provider's dashboard; --remake-uncertain "
                "pays for just those again):\n" + "\n".join(f"  {what}" for what in cut)
            )
        else:
            _say("stopping at once: no paid call was in flight")

    async def _recorded(self) -> None:
        """Until every paid call of this process has ended, its answer recorded (or cut)."""
        steps = sys.modules.get("gptimg_flows.engine.steps")
        while pending := {call for call in getattr(steps, "PAID_CALLS", ()) if not call.done()}:
            await asyncio.wait(pending)
        if not self.cut:
            _say("stopped: every paid call is recorded; the same command again resumes them")


def _stop_paying(at_once: bool = False) -> list[str]:
    """engine/steps' `stop_paying`, when a paid call can have been made (steps is loaded)."""
    steps = sys.modules.get("gptimg_flows.engine.steps")
    return [] if steps is None else list(steps.stop_paying(at_once=at_once))


def _say(line: str) -> None:
    """One line on stderr, above a progress bar if one is drawn."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
