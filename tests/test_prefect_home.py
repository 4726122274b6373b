"""A Prefect home this checkout's Prefect cannot use is named in one line, with the fix.

The case users met: `~/.prefect/prefect.db` migrated by a newer Prefect (alembic revision
unknown to this venv's), where Prefect's embedded server dies at start and the command used to
wait out the startup timeout and end with "Timed out while attempting to connect…".
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gptimg_flows.cli.server_check import database_problem, known_revisions

ROOT = Path(__file__).resolve().parents[1]
NEWER = "ffffffffffff"  # no Prefect has it: what a database a newer Prefect migrated looks like


def newer_home(home: Path) -> Path:
    """A PREFECT_HOME whose database a newer Prefect migrated."""
    home.mkdir(parents=True, exist_ok=True)
    db = home / "prefect.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values (?)", (NEWER,))
    return db


def run_gptimg(
    *args: str, home: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # Were the check missing, the command would wait this long for the server: the
    # subprocess timeout below would then fail the test.
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600")
    env.update(extra or {})
    return subprocess.run(
        [sys.executable, "-m", "gptimg_flows.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_revision_is_unknown_to_this_prefect() -> None:
    assert NEWER not in known_revisions() and len(known_revisions()) > 100


@pytest.mark.parametrize("command", [["demo"], ["generate", "a kite", "--size", "256x256"]])
def test_a_database_from_a_newer_prefect_fails_fast_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    db = newer_home(tmp_path / "home")
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    done = run_gptimg(*command, "--archive", str(tmp_path / "archive"), home=tmp_path / "home")

    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "Timed out" not in done.stderr
    line = lines[0]
    assert line.startswith("error: PrefectServerUnavailable: the Prefect database "), line
    assert f"{db} was migrated by a newer Prefect (revision {NEWER}" in line, line
    assert "upgrade this environment's Prefect" in line and "another PREFECT_HOME" in line
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, "the database was changed"
    assert not (tmp_path / "archive").exists()


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "prefect.db").write_text("not a database, but notes someone kept here\n" * 200)
    problem = database_problem(home / "prefect.db")
    assert problem is not None and "is not a readable SQLite database" in problem, problem

    done = run_gptimg("demo", "--archive", str(tmp_path / "archive"), home=home)

    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is not a readable SQLite database" in done.stderr


def test_a_locked_database_is_named(tmp_path: Path) -> None:
    db = tmp_path / "prefect.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("create table alembic_version (version_num varchar(32) primary key)")
    holder.execute("insert into alembic_version values (?)", (sorted(known_revisions())[0],))
    holder.execute("begin exclusive")
    try:
        problem = database_problem(db)
    finally:
        holder.execute("rollback")
        holder.close()
    assert problem is not None and "is locked by another process" in problem, problem
    assert database_problem(db) is None, "once released, the database is usable"


def test_an_api_url_nobody_serves_is_named(tmp_path: Path) -> None:
    from .conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    done = run_gptimg("generate", "a kite", home=tmp_path / "home", extra={"PREFECT_API_URL": url})

    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"cannot reach the Prefect API at PREFECT_API_URL={url}" in done.stderr


@pytest.mark.slow
def test_debug_still_shows_the_servers_own_log(tmp_path: Path) -> None:
    newer_home(tmp_path / "home")

    done = run_gptimg("--debug", "demo", "--archive", str(tmp_path / "a"), home=tmp_path / "home")

    assert done.returncode == 1
    assert f"Can't locate revision identified by '{NEWER}'" in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: PrefectServerUnavailable: ")


@pytest.mark.slow
def test_make_demo_from_a_fresh_clone_leaves_the_users_home_alone(tmp_path: Path) -> None:
    """`make demo` in a clone, for a user whose ~/.prefect a newer Prefect migrated: the demo
    runs on the clone's own .prefect/, and `make ui` serves that same home."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    user_home = tmp_path / "user"
    db = newer_home(user_home / ".prefect")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    venv = ROOT / ".venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(user_home)
    # The checkout's installed venv stands in for the clone's (`-o`: not reinstalled).
    make = ["make", "-C", str(clone), f"VENV={venv}", "-o", f"{venv}/.installed"]

    done = subprocess.run([*make, "demo"], env=env, capture_output=True, text=True, timeout=400)

    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "edited:" in done.stdout and "sidecar:" in done.stdout, done.stdout
    assert (clone / ".prefect" / "prefect.db").is_file(), "the demo used the clone's own home"
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, "the user's home was touched"
    assert list((clone / "gptimg-archive").glob("images/*/*.png"))
    ui = subprocess.run([*make, "-n", "ui"], env=env, capture_output=True, text=True, timeout=60)
    assert f"PREFECT_HOME={clone}/.prefect" in ui.stdout, ui.stdout
    assert "make ui" in done.stdout, "the demo says how to see its runs"
