"""Why a command's Prefect API would not answer, found before it waits for one.

Without `PREFECT_API_URL`, Prefect starts an embedded server on the SQLite database in
`PREFECT_HOME`. When that server cannot start (a database migrated by a newer Prefect, a
file that is not a database, one locked by another process) Prefect waits out its whole
startup timeout and says only "Timed out…"; these checks name the cause and the fix in one
line, in a fraction of a second. With `PREFECT_API_URL` set, the check is that it answers.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

_TIMEOUT_TEXT = "Timed out while attempting to connect to ephemeral Prefect API server"


class PrefectServerUnavailable(RuntimeError):
    """The Prefect API this command needs cannot be reached or started (the message says why)."""


def check_prefect_api() -> None:
    """Raise `PrefectServerUnavailable` if the API cannot be had; return quietly otherwise."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        _check_reachable(settings.api.url)
        return
    url = settings.server.database.connection_url
    raw = url.get_secret_value() if url is not None else ""
    path = sqlite_path(raw)
    if path is not None:
        problem = database_problem(path)
        if problem:
            raise PrefectServerUnavailable(problem)


def explain_timeout(exc: BaseException) -> PrefectServerUnavailable | None:
    """Prefect's "Timed out…" as a one-line cause and fix (None for any other error)."""
    if not isinstance(exc, RuntimeError) or _TIMEOUT_TEXT not in str(exc):
        return None
    try:
        check_prefect_api()
    except PrefectServerUnavailable as found:
        return found
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    waited = settings.server.ephemeral.startup_timeout_seconds
    return PrefectServerUnavailable(
        f"the embedded Prefect server (database under {settings.home}) did not answer within "
        f"{waited} s; `--debug` shows its own log. Start a server yourself (`make ui` or "
        "`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api, or raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    )


def sqlite_path(connection_url: str) -> Path | None:
    """The database file of a `sqlite+aiosqlite:///…` URL (None for PostgreSQL, `:memory:`)."""
    if not connection_url.startswith("sqlite"):
        return None
    path = unquote(urlsplit(connection_url).path)
    if path in ("", "/", "/:memory:") or ":memory:" in connection_url:
        return None
    return Path(path[1:] if path.startswith("//") else path)


def database_problem(path: Path) -> str | None:
    """What stops Prefect's server from starting on this SQLite file, with the fix."""
    if not path.exists():
        return None  # a first run: Prefect creates it
    from prefect import __version__ as prefect_version

    other_home = "or use another PREFECT_HOME (`make demo` and `make ui` use ./.prefect)"
    if path.is_dir():
        return f"the Prefect database {path} is a directory, not a file; {other_home}"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error as exc:
        return f"cannot open the Prefect database {path} ({exc}); check its rights, {other_home}"
    try:
        try:
            row = conn.execute("select version_num from alembic_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # created but never migrated: Prefect migrates it
            if "locked" in str(exc):
                return _locked(path, other_home)
            return f"cannot read the Prefect database {path} ({exc}); {other_home}"
        except sqlite3.DatabaseError as exc:
            return f"{path} is not a readable SQLite database ({exc}); {other_home}"
    finally:
        conn.close()
    revision = row[0] if row else None
    if revision and revision not in known_revisions():
        return (
            f"the Prefect database {path} was migrated by a newer Prefect (revision {revision}, "
            f"unknown to this environment's Prefect {prefect_version}): upgrade this "
            f"environment's Prefect (`pip install -U 'prefect>=3.8,<4'`) {other_home}"
        )
    return _write_lock_problem(path, other_home)


def _write_lock_problem(path: Path, other_home: str) -> str | None:
    try:
        conn = sqlite3.connect(path, timeout=2)
    except sqlite3.Error as exc:
        return f"cannot open the Prefect database {path} for writing ({exc}); {other_home}"
    try:
        conn.execute("begin immediate")
        conn.rollback()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return _locked(path, other_home)
        return f"cannot write the Prefect database {path} ({exc}); check its rights, {other_home}"
    finally:
        conn.close()
    return None


def _locked(path: Path, other_home: str) -> str:
    return (
        f"the Prefect database {path} is locked by another process (a `prefect server` on "
        "this home? point PREFECT_API_URL at it instead), " + other_home
    )


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every alembic revision this environment's Prefect ships for SQLite."""
    import prefect.server.database as database

    versions = Path(database.__file__).parent / "_migrations" / "versions" / "sqlite"
    found = set()
    for script in versions.glob("*.py"):
        match = re.search(r'^revision\s*=\s*["\']([0-9a-f]+)["\']', script.read_text(), re.M)
        if match:
            found.add(match.group(1))
    return frozenset(found)


def _check_reachable(api_url: str) -> None:
    try:
        response = httpx.get(api_url.rstrip("/") + "/health", timeout=5)
    except httpx.HTTPError as exc:
        raise PrefectServerUnavailable(
            f"cannot reach the Prefect API at PREFECT_API_URL={api_url} ({type(exc).__name__}); "
            "start it (`make ui`, or `prefect server start`) or unset PREFECT_API_URL to use an "
            "embedded server"
        ) from None
    if response.status_code != 200:
        raise PrefectServerUnavailable(
            f"the Prefect API at PREFECT_API_URL={api_url} answered HTTP {response.status_code} "
            "to /health; is it a Prefect server's /api URL?"
        )
