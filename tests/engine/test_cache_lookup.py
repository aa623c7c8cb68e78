"""The response cache looked up for a turn's rows in one store query (Store.cached_many,
through corral._per_turn)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from corral._per_turn import PerTurn
from corral.errors import StoreError
from corral.store import open_store
from corral.store.base import CallRecord, NewRecord, RunInfo, Store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """A store holding 600 recorded responses, ``v1:0`` … ``v1:599``: an SQLite file, or a
    database on the throwaway PostgreSQL server."""
    where = str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    st = open_store(where)
    now = time.time()
    st.create_run(RunInfo("r1", "j", "h", "f", {}, "running", None, now, now, 0, False, {}))
    st.ingest("r1", [NewRecord(f"k{i}", i, i + 1, "{}") for i in range(600)], 600)
    st.commit([CallRecord("r1", f"k{i}", "cat", 1, f"v1:{i}", "fake", False, 1, 1, 0, 0, Decimal(0), 0.01,
                          request_json="{}", response_json=f'{{"text": "{i}"}}') for i in range(600)], [], [])
    yield st
    st.close()


def test_cached_many_finds_each_recorded_hash_once_over_many_statements(store):
    asked = [f"v1:{i}" for i in range(0, 1200, 2)] + ["v1:4", "v1:4"]  # past one statement's 500
    found = store.cached_many(asked)
    assert found == {f"v1:{i}": f'{{"text": "{i}"}}' for i in range(0, 600, 2)}
    assert store.cached("v1:7") == '{"text": "7"}' and store.cached("v1:700") is None
    assert store.cached_many([]) == {}


class Counting:
    """A store's cache look-ups, counted, as the request layer makes them: a value for every
    hash asked, None where nothing is recorded."""

    def __init__(self, store: Store, fail: bool = False) -> None:
        self.store = store
        self.fail = fail
        self.queries: list[list[str]] = []

    def __call__(self, request_hashes: list[str]) -> dict[str, str | None]:
        self.queries.append(list(request_hashes))
        if self.fail:
            raise StoreError("the store is gone")
        found = self.store.cached_many(request_hashes)
        return {h: found.get(h) for h in request_hashes}


def test_the_look_ups_of_one_turn_are_one_query_and_each_asker_gets_its_answer(store):
    counting = Counting(store)

    async def main() -> list[str | None]:
        lookups = PerTurn(counting)
        first = await asyncio.gather(*(lookups.get(f"v1:{i}") for i in [1, 2, 2, 900]))
        second = await lookups.get("v1:3")  # a later turn: a query of its own
        return [*first, second]

    assert asyncio.run(main()) == ['{"text": "1"}', '{"text": "2"}', '{"text": "2"}', None, '{"text": "3"}']
    assert counting.queries == [["v1:1", "v1:2", "v1:900"], ["v1:3"]]


def test_a_failed_look_up_reaches_every_asker_of_its_turn(store):
    counting = Counting(store, fail=True)

    async def main() -> list[BaseException | str | None]:
        lookups = PerTurn(counting)
        return await asyncio.gather(lookups.get("v1:1"), lookups.get("v1:2"), return_exceptions=True)

    out = asyncio.run(main())
    assert [type(e) for e in out] == [StoreError, StoreError] and len(counting.queries) == 1
