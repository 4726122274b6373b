"""The `gptimg` Typer app, its global options and the console script's `main`; the commands
register themselves on it from their modules (commands, batch, blocks).

Settings that must be in place before Prefect is imported are set first: the embedded server
needs more than Prefect's default 20 s to create its database on a fresh machine, and with no
internet its telemetry only logs errors. (Where Prefect was imported before this module, the
callback also applies them to Prefect's settings for the command's run.)

Errors end a command with one line on stderr, `error: <type>: <message>`, and exit code 2 for
bad input (`InvalidRequest`, an unreadable file) or 1 for anything else; `--debug` adds the
traceback and Prefect's own console logs.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
#: For a Prefect server this process starts (the embedded one): its task-run recorder writes
#: each task run's state events 200 at a time instead of one by one, which halves the server's
#: CPU an image of a batch (bench/RESULTS-overhead.md). A server of your own: set them there.
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "200")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE", "200")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import typer

from gptimg_flows.cli.console import (
    OPTIONS,
)

if TYPE_CHECKING:
    pass


app = typer.Typer(
    add_completion=False,
    help="GPT Image 2 pipelines on Prefect.",
    no_args_is_help=True,
    # Rich tracebacks print local variables, which may hold a key: we print plain ones.
    pretty_exceptions_enable=False,
    # Plain help: flags read `--strict` (not `--strict <bool>`) and text wraps at the terminal
    # width as written, not inside narrow table cells (#33).
    rich_markup_mode=None,
)
blocks_app = typer.Typer(help="Prefect blocks: register the types, create them from env vars.")
app.add_typer(blocks_app, name="blocks", no_args_is_help=True)


@app.callback()
def _main_options(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help="On error, print the traceback; show Prefect's console logs."
    ),
) -> None:
    """GPT Image 2 pipelines on Prefect."""
    OPTIONS.debug = debug
    ctx.with_resource(_env_defaults_applied())


def _env_defaults_applied() -> contextlib.AbstractContextManager[Any]:
    """Where Prefect was imported before this module's `os.environ.setdefault`s (a program
    that runs the app in its own process, tests), it read its settings without them: apply
    them (the user's own values win) for this command. Otherwise Prefect, imported later by
    the commands that need it, reads them from the environment."""
    if "prefect.settings" not in sys.modules:
        return contextlib.nullcontext()
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    return temporary_settings(
        updates={
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: os.environ[
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ],
            PREFECT_SERVER_ANALYTICS_ENABLED: os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"],
        }
    )


PROVIDER_HELP = (
    "A saved credentials block name (see `gptimg blocks create`), `offline`, a saved "
    "ProviderRoute, or a route as names with commas (`runware-prod,scenario-prod`)."
)
ARCHIVE_HELP = (
    "A saved ImageArchive block name, a folder (./name for a new one) or an fsspec URL "
    "(default: $GPTIMG_ARCHIVE or ./gptimg-archive)."
)
SIZE_HELP = "WxH (1536x1024), an aspect ratio (16:9, with --resolution) or auto."
MAX_COST_HELP = (
    "Budget in the provider's cost unit: refused before paying if the estimate is over it "
    "(a batch stops submitting at it)."
)
DRY_RUN_HELP = "Print the cost estimate and exit: nothing is run or paid."


def main() -> None:
    """The console script: exit 130 on Ctrl-C, not a traceback (a command's first Ctrl-C
    waits for its paid calls already sent to be recorded: see console.Stop). A SIGTERM during
    a flow run (Prefect's handler raises TerminationSignal) exits 143 once the closing event
    loop has let those calls end recorded."""
    OPTIONS.owns_process = True
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:  # Prefect's signals are BaseExceptions
        # Only a command that imported Prefect can meet its TerminationSignal; `--help`
        # imports none of it (2-3 s)
        prefect_exceptions = sys.modules.get("prefect.exceptions")
        if prefect_exceptions is None or not isinstance(exc, prefect_exceptions.TerminationSignal):
            raise
        sys.stderr.write("stopped by a termination signal\n")
        sys.exit(128 + exc.signal)
