from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.store import open_store
from corral.store.base import Store


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the test's store, again at each call (another worker's connection): an SQLite file,
    or a fresh database on the throwaway PostgreSQL server."""
    where = str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened: list[Store] = []

    def make() -> Store:
        opened.append(open_store(where))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def integrity_error(make_store: Callable[[], Store]) -> type[Exception]:
    """What the store raises for a violated constraint (a bug of the caller): the driver's own."""
    s = make_store()
    if type(s).__name__ == "PostgresStore":
        import psycopg

        return psycopg.IntegrityError
    return sqlite3.IntegrityError
