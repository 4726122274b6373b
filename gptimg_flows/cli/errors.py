"""How a command ends when something goes wrong: one line on stderr, `error: <type>:
<message>`, with secrets redacted, and exit code 2 for bad input or 1 for anything else
(`--debug` adds the traceback)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

import click
import typer

from gptimg_flows.cli.console import OPTIONS

SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD)$")


def redact(text: str) -> str:
    """Defence in depth: errors are built without credentials, but scrub any value of a
    `*_KEY` / `*_SECRET` / `*_TOKEN` / `*_PASSWORD` variable before it is printed."""
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= 6 and value in text:
            text = text.replace(value, "***")
    return text


def bad_input(exc: BaseException) -> bool:
    """Exit 2: the user can fix it by changing what they typed (or the file they named)."""
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError
    from pydantic import ValidationError

    from gptimg_flows.errors import InvalidRequest

    bad = (InvalidRequest, ValidationError, ParameterTypeError, SignatureMismatchError)
    return isinstance(exc, (*bad, FileNotFoundError, IsADirectoryError))


def as_invalid(exc: Exception) -> Exception:
    """Pydantic's multi-line message as one InvalidRequest line, without its input echo."""
    from pydantic import ValidationError

    from gptimg_flows.models import invalid_request

    return invalid_request(exc) if isinstance(exc, ValidationError) else exc


def short_error(error_type: str, text: str) -> str:
    """A batch item's error on one line; pydantic's block (header, `loc` line, indented
    message, docs link) becomes `loc: message`."""
    if error_type != "ValidationError":
        return " ".join(text.split())
    parts: list[str] = []
    loc = ""
    for line in text.splitlines()[1:]:
        if not line.strip() or "For further information" in line:
            continue
        if not line.startswith(" "):
            loc = line.strip()
            continue
        msg = re.sub(r"\s*\[type=[^\]]*\]$", "", line.strip()).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    return "; ".join(parts) or " ".join(text.split())


def fail(exc: BaseException, original: BaseException | None = None) -> NoReturn:
    if OPTIONS.debug:
        tb = "".join(traceback.format_exception(original or exc))
        sys.stderr.write(redact(tb))
    message = " ".join(str(exc).split())
    line = f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}"
    typer.echo(redact(line), err=True)
    raise typer.Exit(2 if bad_input(exc) else 1)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Every command body runs in here: one line per error, exit 2 or 1."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except Exception as exc:
        from gptimg_flows.cli.server_check import explain_timeout

        fail(explain_timeout(exc) or as_invalid(exc), exc)
