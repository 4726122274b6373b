"""A throwaway PostgreSQL 15 server for tests that need Prefect on PostgreSQL.

Debian's server binaries (`postgresql-15`, with contrib for `pg_trgm`) run as the system user
`postgres` when the tests run as root (PostgreSQL refuses to run as root). The cluster lives
in a temporary directory, listens on 127.0.0.1 only, trusts local connections, and is stopped
and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("GPTIMG_PG_BIN", "/usr/lib/postgresql/15/bin"))
REQUIRE_ENV = "GPTIMG_REQUIRE_POSTGRES"


def _missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres", "psql"):
        binary = PG_BIN / tool if tool != "psql" else _psql()
        if not binary or not Path(binary).is_file():
            return f"{tool} not found in {PG_BIN} (install Debian's postgresql-15)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no system user 'postgres' to run the server as"
        if not shutil.which("runuser"):
            return "running as root and `runuser` is missing"
    return None


def _psql() -> str | None:
    local = PG_BIN / "psql"
    return str(local) if local.is_file() else shutil.which("psql")


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the system user `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], what: str, timeout: float = 120) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """Start PostgreSQL 15 on 127.0.0.1:`port` with a `prefect` database (pg_trgm enabled);
    yield its `postgresql+asyncpg://` URL; stop and delete it afterwards.

    Without the binaries the test is skipped, unless GPTIMG_REQUIRE_POSTGRES=1 (CI), where a
    silent skip would hide that the PostgreSQL tests never ran.
    """
    problem = _missing()
    if problem:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {problem}")
        pytest.skip(f"no PostgreSQL server: {problem}")
    # Not under pytest's tmp_path: the `postgres` user must be able to reach the directory,
    # and pytest's base directory is private to root.
    root = Path(tempfile.mkdtemp(prefix="gptimg-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
    log = root / "server.log"
    started = False
    try:
        _run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                ]
            ),
            "initdb",
        )
        _run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-o",
                    f"-p {port} -k {data} -h 127.0.0.1",
                    "start",
                ]
            ),
            "pg_ctl start",
        )
        started = True
        psql = [
            str(_psql()),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
        ]
        _run([*psql, "-d", "postgres", "-c", "create database prefect"], "create database")
        _run([*psql, "-d", "prefect", "-c", "create extension pg_trgm"], "create extension")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        if started:
            subprocess.run(
                _as_postgres(
                    [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
