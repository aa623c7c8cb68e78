"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl
start`` on a free port of 127.0.0.1 (its unix socket in that folder too), stopped and deleted at
the end of the session. Each test that asks for :func:`pg_url` gets a fresh, empty database.

The server's binaries are looked up on PATH, then under ``/usr/lib/postgresql/*/bin``. Without
them (or without psycopg) the Postgres tests are skipped with a message that says what to
install, except under CI (env ``CI`` set), where they fail. As root (initdb refuses root), the
server runs as the ``postgres`` user, else ``nobody``.

Reusable outside the store's tests: :func:`postgres_server` is a context manager yielding a
:class:`PgServer`; the fixtures ``pg_server`` (session) and ``pg_url`` (one database per test)
are registered for every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "corral"
PASSWORD = "pg-test-secret"  # a real password (scram over TCP), so that tests can see it masked
_counter = itertools.count(1)


@dataclass
class PgServer:
    host: str
    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@{self.host}:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database on the server; its URL."""
        import psycopg

        name = f"{prefix}{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def find_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl), or None when PostgreSQL is not installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        i, p = Path(folder) / "initdb", Path(folder) / "pg_ctl"
        if i.exists() and p.exists():
            return str(i), str(p)
    return None


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: .ci/run installs PostgreSQL; the Postgres tests must run)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root, and no user postgres or nobody to run the test server as")


def _as(user: str | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *argv]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(argv)]


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """Start a throwaway server; yield it; stop it and delete its files."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed: make install, or pip install -e '.[postgres]' "
                     "in the Corral checkout, to run the Postgres tests")
    binaries = find_binaries()
    if binaries is None:
        _unavailable("PostgreSQL's initdb and pg_ctl are not on PATH nor under "
                     "/usr/lib/postgresql/*/bin: install PostgreSQL (apt-get install postgresql) "
                     "to run the Postgres tests")
        raise AssertionError  # not reached
    initdb, pg_ctl = binaries
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    data = folder / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    (folder / "pw").write_text(PASSWORD)
    if user is not None:
        os.chown(folder / "pw", pwd.getpwnam(user).pw_uid, -1)
    port = _free_port()

    def sh(argv: list[str], timeout: float = 120) -> None:
        p = subprocess.run(_as(user, argv), capture_output=True, text=True, timeout=timeout,
                           cwd=folder)
        if p.returncode != 0:
            log = (folder / "log").read_text() if (folder / "log").exists() else ""
            pytest.fail(f"{argv[0]} failed ({p.returncode}): {p.stderr.strip()} {log[-2000:]}")

    try:
        sh([initdb, "-D", str(data), "-U", USER, f"--pwfile={folder / 'pw'}", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
        opts = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        sh([pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "-t", "60",
            "start"])
        try:
            yield PgServer("127.0.0.1", port, folder)
        finally:
            subprocess.run(_as(user, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's throwaway PostgreSQL server (skips the test where there is none)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL (with its password) of a fresh, empty database on the session's server."""
    return pg_server.new_database()
