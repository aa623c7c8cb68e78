"""The Postgres store: what several workers on one database rely on (rows leased to one worker
at a time, leases that expire, one cache and one exact ledger for all), the same reads as the
SQLite store for the same run, whole runs through ``corral.run`` and the CLI, and its errors.
A real PostgreSQL server throughout (tests/_postgres.py)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral.cli import main
from corral.errors import StoreError
from corral.job import Job
from corral.models.fake import FakeModel
from corral.store import open_store
from corral.store._migrations import MIGRATIONS
from corral.store.base import CallRecord, NewRecord, RunInfo, Store
from corral.store.postgres import PostgresStore

from .._postgres import PASSWORD
from ..cli.test_cost import cascade_job
from ..conftest import scripted_models, write_csv


def new_run(store: Store, rid: str = "r1", n: int = 0) -> RunInfo:
    now = time.time()
    run = store.create_run(RunInfo(rid, "job", "h", "f", {}, "created", None, now, now, 0, False, {}))
    if n:
        store.ingest(run.id, [NewRecord(f"k{i}", i, i + 2, '{"x": 1}') for i in range(n)], n)
    return run


def paid(run_id: str, key: str, h: str, cost: str = "0.001") -> CallRecord:
    return CallRecord(run_id, key, "cat", 0, h, "fake", False, 5, 1, 0, 0, Decimal(cost), 0.01,
                      '{"q": 1}', json.dumps({"text": key, "usage": {"cost": float(cost)}}))


def raw(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


# --- leases --------------------------------------------------------------------------------


def test_a_lease_skips_rows_another_transaction_is_taking(pg_url):
    s = PostgresStore(pg_url)
    run = new_run(s, n=10)
    other = raw(pg_url)
    with other.transaction():  # another worker in the middle of taking k0..k2
        other.execute("SELECT key FROM records WHERE run_id=%s AND ordinal < 3 FOR UPDATE", (run.id,))
        t = time.monotonic()
        got = s.lease(run.id, "w2", 3, 300)
        assert time.monotonic() - t < 2  # not waiting for the other transaction
    assert [r.key for r in got] == ["k3", "k4", "k5"]
    assert [r.key for r in s.lease(run.id, "w3", 10, 300)] == ["k0", "k1", "k2", "k6", "k7", "k8", "k9"]


def test_workers_leasing_at_once_get_disjoint_records(pg_url):
    stores = [PostgresStore(pg_url) for _ in range(6)]
    run = new_run(stores[0], n=300)
    got: dict[int, list[str]] = {i: [] for i in range(len(stores))}
    start = threading.Barrier(len(stores))

    def work(i: int) -> None:
        start.wait()
        while batch := stores[i].lease(run.id, f"w{i}", 7, 300):
            got[i] += [r.key for r in batch]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    keys = [k for ks in got.values() for k in ks]
    assert sorted(keys) == sorted(f"k{i}" for i in range(300))  # each record to one worker, once
    assert sum(1 for ks in got.values() if ks) > 1  # they did take turns
    assert stores[0].counts(run.id) == {"leased": 300}
    assert sorted(stores[0].lease_owners(run.id)) == sorted(f"w{i}" for i, ks in got.items() if ks)


def test_an_expired_lease_returns_to_the_queue_and_a_renewed_one_does_not(pg_url):
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    run = new_run(a, n=6)
    stalled = a.lease(run.id, "host-a:1:x", 3, 0.3)  # a worker that then stops renewing
    alive = a.lease(run.id, "host-b:2:y", 3, 0.3)
    b.renew(run.id, "host-b:2:y", 300)  # renewed while its calls are in flight
    assert b.reclaim(run.id, lambda owner: False) == 0  # nothing expired yet
    time.sleep(0.5)
    assert b.lease_owners(run.id) == ["host-b:2:y"]
    assert b.reclaim(run.id, lambda owner: False) == 3  # the stalled worker's rows come back
    retaken = b.lease(run.id, "host-c:3:z", 10, 300)
    assert [r.key for r in retaken] == [r.key for r in stalled]
    assert b.release(run.id, "host-b:2:y") == len(alive)
    assert b.counts(run.id) == {"leased": 3, "pending": 3}


def test_leases_are_timed_by_the_servers_clock(pg_url, monkeypatch):
    """A worker on a machine whose clock runs an hour ahead neither expires the leases of the
    others nor takes leases that look expired to them."""
    import corral.store._sql as sql

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    run = new_run(a, n=4)
    a.lease(run.id, "host-a:1:x", 2, 300)
    real = time.time
    monkeypatch.setattr(sql.time, "time", lambda: real() + 3600)  # this machine's clock, wrong
    assert b.reclaim(run.id, lambda owner: False) == 0
    assert b.lease_owners(run.id) == ["host-a:1:x"]
    b.lease(run.id, "host-b:2:y", 2, 300)
    monkeypatch.setattr(sql.time, "time", real)
    assert a.reclaim(run.id, lambda owner: False) == 0
    assert sorted(a.lease_owners(run.id)) == ["host-a:1:x", "host-b:2:y"]


# --- one cache, one ledger -----------------------------------------------------------------


def test_two_workers_caching_the_same_answer_at_once_keep_one_cache_row_and_both_ledger_rows(pg_url):
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    run = new_run(a, n=2)
    done = threading.Event()
    with a._tx() as db:  # worker a's commit, not committed yet
        a._write(db, [paid(run.id, "k0", "v1:same")], [], [])
        t = threading.Thread(target=lambda: (b.commit([paid(run.id, "k1", "v1:same")], [], []), done.set()))
        t.start()
        time.sleep(0.3)
        assert not done.is_set()  # b waits on a's row in the cache...
    t.join(10)
    assert done.is_set()  # ...and then keeps it as it is
    n_cache = a.db.execute("SELECT COUNT(*) FROM responses WHERE request_hash='v1:same'").fetchone()[0]
    assert n_cache == 1
    totals = a.totals(run.id)
    assert (totals.made, totals.replayed, totals.cost) == (2, 0, Decimal("0.002"))  # both were paid
    assert json.loads(a.cached("v1:same") or "")["text"] == "k0"


def test_many_workers_committing_overlapping_answers_keep_the_ledger_exact(pg_url):
    stores = [PostgresStore(pg_url) for _ in range(4)]
    run = new_run(stores[0], n=40)
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        start.wait()
        try:
            for j in range(10):  # hashes shared between workers, in different orders
                hashes = [f"v1:{(j + i * d) % 12}" for d in (1, 5)]
                stores[i].commit([paid(run.id, f"k{i * 10 + j}", h) for h in hashes], [], [])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    db = stores[0].db
    assert db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 80
    distinct = db.execute("SELECT COUNT(DISTINCT request_hash) FROM ledger").fetchone()[0]
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == distinct
    assert stores[0].totals(run.id).cost == Decimal("0.080")


def test_a_stalled_worker_and_its_successor_writing_the_same_records_at_once_do_not_deadlock(pg_url):
    """A worker that stalled past its lease comes back and commits the records another worker
    took over, at the moment that one commits them too: both calls stay in the ledger, each
    record stays one row, and neither commit fails."""
    from corral.store.base import FinalRecord

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    run = new_run(a, n=8)
    keys = [f"k{i}" for i in range(8)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def commit(s: Store, order: list[str], who: str) -> None:
        start.wait()
        try:
            for rnd in range(15):
                s.commit([paid(run.id, k, f"v1:{who}{rnd}{k}") for k in order], [],
                         [FinalRecord(run.id, k, "done", json.dumps({"cat": who}), None, 1) for k in order])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=commit, args=(a, keys, "a")),
               threading.Thread(target=commit, args=(b, keys[::-1], "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert a.counts(run.id) == {"done": 8}
    assert a.totals(run.id).made == 2 * 15 * 8


# --- schema --------------------------------------------------------------------------------


def test_workers_opening_a_fresh_database_at_once_migrate_it_once(pg_url):
    opened: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(open_store(pg_url))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 6
    assert opened[0].db.execute("SELECT version FROM corral_schema").fetchall() == [(len(MIGRATIONS),)]
    new_run(opened[1])
    assert [r.id for r in opened[2].list_runs()] == ["r1"]


def test_a_newer_schema_is_refused(pg_url):
    PostgresStore(pg_url).close()
    with raw(pg_url) as c:
        c.execute("UPDATE corral_schema SET version=999")
    with pytest.raises(StoreError, match="newer Corral") as e:
        open_store(pg_url)
    assert PASSWORD not in str(e.value) and "corral:***@" in str(e.value)


def test_reading_a_database_without_a_store_creates_nothing(pg_url):
    with pytest.raises(StoreError, match="no store at postgresql://corral:\\*\\*\\*@") as e:
        open_store(pg_url, create=False)
    assert PASSWORD not in str(e.value)
    with raw(pg_url) as c:
        assert c.execute("SELECT to_regclass('corral_schema')").fetchone()[0] is None


# --- errors --------------------------------------------------------------------------------


def test_a_server_that_does_not_answer_is_one_line_with_the_fix():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as e:
        open_store(f"postgresql://corral:{PASSWORD}@127.0.0.1:{port}/corral")
    msg = str(e.value)
    assert f"cannot connect to the Postgres store at 127.0.0.1:{port}" in msg
    assert "is the server running? check the URL" in msg
    assert PASSWORD not in msg and "\n" not in msg


def test_without_psycopg_the_error_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"make install, or pip install -e '\.\[postgres\]' in the Corral checkout"):
        open_store("postgresql://corral@127.0.0.1:1/corral")


def test_a_lost_server_is_a_store_error(pg_server, pg_url):
    s = PostgresStore(pg_url)
    new_run(s)
    with raw(pg_server.url()) as c:  # the server drops the store's connection
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name='corral'")
    with pytest.raises(StoreError, match="cannot use the store at postgresql://corral:\\*\\*\\*@") as e:
        s.get_run("r1")
    assert PASSWORD not in str(e.value) and "is the server" in str(e.value)


# --- whole runs ----------------------------------------------------------------------------

ROWS = {f"T{i}": f"ticket number {i} about order {1000 + i}" for i in range(1, 31)}


def ticket_job(tmp: Path, rows: dict[str, str] = ROWS) -> Job:
    write_csv(tmp / "in.csv", ["id", "text"], rows.items())
    step = {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"]}
    return Job.from_dict({"name": "tickets", "source": "in.csv", "key": "id", "steps": [step],
                          "sink": "out/o.csv"}, base_dir=tmp)


def test_a_run_on_postgres_finishes_and_its_rerun_pays_nothing(tmp_path, pg_url):
    job = ticket_job(tmp_path)
    fake = FakeModel()
    first = corral.run(job, model=fake, store=pg_url)
    assert (first.status, first.written, first.calls_made, fake.calls) == ("finished", 30, 30, 30)
    assert first.store is not None and PASSWORD in first.store  # kept whole, to open it again
    assert PASSWORD not in json.dumps(first.to_json()) and "corral:***@" in first.to_json()["store"]
    again = FakeModel()
    second = corral.run(job, model=again, store=pg_url)
    assert (second.run, second.written, again.calls) == (first.run, 30, 0)
    # a new run of changed input replays every answer the first run paid for
    grown = ticket_job(tmp_path, {**ROWS, "T99": "a brand new ticket"})
    third_model = FakeModel()
    third = corral.run(grown, model=third_model, store=pg_url)
    assert (third.written, third.calls_made, third.calls_replayed, third_model.calls) == (31, 1, 30, 1)
    assert (tmp_path / "out" / "o.csv").read_text().count("\n") == 32


def reads(s: Store, run_id: str) -> dict[str, Any]:
    """Every read of a run that does not depend on the clock."""
    keys = [r.key for chunk in s.iter_records(run_id, "done") for r in chunk]
    rollup = s.ledger_rollup([run_id])
    return {
        "counts": s.counts(run_id), "outcomes": s.outcome_counts(run_id), "totals": s.totals(run_id),
        "breakdown": s.breakdown(run_id), "spend": s.run_spend(run_id), "routes": s.routes(run_id),
        "record_spend": s.record_spend(run_id), "confidences": s.answer_confidences(run_id),
        "rollup": (rollup.groups, rollup.written), "keys": keys,
        "records": [s.record(run_id, k) for k in keys],
        "calls": [s.record_calls(run_id, k) for k in keys],
        "activity": sum(b.calls + b.replayed + b.answers for b in s.activity(run_id)),
        "runs": [(r.id, r.status, r.spec, r.tags, r.ingested_rows) for r in s.find_runs("costs")],
    }


def test_the_same_run_reads_the_same_from_postgres_and_sqlite(tmp_path, pg_url, monkeypatch):
    job = cascade_job(tmp_path, scripted_models(monkeypatch))  # votes, a retry, an escalation
    on_sqlite = corral.run(job, model=FakeModel(), store=tmp_path / "s.db")
    on_pg = corral.run(job, model=FakeModel(), store=pg_url)
    assert on_pg.run == on_sqlite.run and on_pg.calls_made == on_sqlite.calls_made == 9
    sq, pg = open_store(tmp_path / "s.db"), open_store(pg_url)
    a, b = reads(sq, on_sqlite.run), reads(pg, on_pg.run)
    assert a["totals"].cost == Decimal("0.018") and a["activity"] > 0
    for name in a:
        assert a[name] == b[name], name


# --- the CLI -------------------------------------------------------------------------------


def cli(*args: str) -> Any:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res


def test_the_cli_runs_and_reads_a_postgres_store_and_never_shows_its_password(tmp_path, pg_url, monkeypatch):
    ticket_job(tmp_path)
    (tmp_path / "job.yaml").write_text(
        "name: tickets\nsource: in.csv\nkey: id\nmodel: fake\nsink: out/o.csv\nsteps:\n"
        "  - name: cat\n    task: classify\n    input: \"{text}\"\n    labels: [a, b, c]\n")
    res = cli("run", str(tmp_path / "job.yaml"), "--store", pg_url)
    masked = pg_url.replace(PASSWORD, "***")
    assert masked in res.output and PASSWORD not in res.output
    [run] = json.loads(cli("runs", "--store", pg_url, "--json").stdout)
    status = cli("status", run["run"], "--store", pg_url, "--json")
    assert json.loads(status.stdout)["rows"]["written"] == 30 and PASSWORD not in status.output
    cost = json.loads(cli("cost", "--store", pg_url, "--json").stdout)
    assert cost["total"]["calls"] == 30
    monkeypatch.setenv("CORRAL_STORE", pg_url)  # the same through the environment
    assert run["run"] in cli("runs").output
    rerun = cli("run", str(tmp_path / "job.yaml"), "--json")
    assert json.loads(rerun.stdout)["store"] == masked and PASSWORD not in rerun.output


def test_a_wrong_password_or_database_is_one_line_with_its_fix(pg_url):
    wrong_pw = CliRunner().invoke(main, ["runs", "--store", pg_url.replace(PASSWORD, "not-it")])
    assert wrong_pw.exit_code == 2
    [line] = wrong_pw.output.strip().splitlines()
    assert "password authentication failed" in line and "check the user and password in the URL" in line
    assert "not-it" not in line and PASSWORD not in line
    no_db = CliRunner().invoke(main, ["runs", "--store", pg_url + "_gone"])
    assert no_db.exit_code == 2
    [line] = no_db.output.strip().splitlines()
    assert "does not exist" in line and "create the database (createdb)" in line and PASSWORD not in line


def test_two_corral_runs_at_once_on_a_fresh_postgres_store_share_the_work(tmp_path, pg_url):
    """Two processes started at once on a fresh database: one migration, one run between them,
    every record written once and paid for once."""
    import os
    import subprocess

    from ..conftest import corral_bin

    rows = {f"r{i}": f"row number {i} with some words to make the row longer" for i in range(200)}
    write_csv(tmp_path / "in.csv", ["id", "text"], rows.items())
    (tmp_path / "job.yaml").write_text(
        "name: shared\nsource: in.csv\nkey: id\nsink: out/o.csv\n"
        "model:\n  name: fake\n  latency: 0.01\n"
        "steps:\n  - name: cat\n    task: classify\n    input: \"{text}\"\n    labels: [a, b]\n")
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_STORE"}
    args = [corral_bin(), "run", "job.yaml", "--json", "--store", pg_url]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert PASSWORD not in err
    summaries = [json.loads(out) for out, _ in outs]
    assert summaries[0]["run"] == summaries[1]["run"]
    s = open_store(pg_url)
    assert s.counts(summaries[0]["run"]) == {"done": 200}
    assert s.totals(summaries[0]["run"]).made == 200  # no record paid for twice
    assert (tmp_path / "out" / "o.csv").read_text().count("\n") == 201


def test_eval_on_a_postgres_store_keeps_its_copies_beside_the_job(tmp_path, pg_url, monkeypatch):
    """`corral eval` runs a copy of the job on the labeled rows, in a folder beside the store: for
    a Postgres store, `.corral` beside the job, never a folder named after the URL."""
    import shutil

    from ..conftest import ROOT

    for name in ("tickets.yaml", "data/tickets.csv", "data/tickets_labels.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "examples" / name, tmp_path / name)
    monkeypatch.delenv("CORRAL_STORE")
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "tickets.yaml"), "--labels",
                                    str(tmp_path / "data" / "tickets_labels.csv"), "--model", "fake",
                                    "--json", "--store", pg_url])
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output
    made = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert not [p for p in made if "postgres" in p or PASSWORD in p], made
    assert not list(Path.cwd().glob("postgres*"))
    assert open_store(pg_url).list_runs()  # the copy's run is in the database
    # the job's own run, scored as it is (--no-run): the store is the database, not a file
    assert CliRunner().invoke(main, ["run", str(tmp_path / "tickets.yaml"), "--model", "fake",
                                     "--store", pg_url]).exit_code == 0
    scored = CliRunner().invoke(main, ["eval", str(tmp_path / "tickets.yaml"), "--labels",
                                       str(tmp_path / "data" / "tickets_labels.csv"), "--model", "fake",
                                       "--no-run", "--json", "--store", pg_url])
    assert scored.exit_code == 0, scored.output


def test_without_postgresql_the_tests_skip_except_under_ci(monkeypatch):
    from .. import _postgres

    monkeypatch.setattr(_postgres, "find_binaries", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install PostgreSQL"):
        with _postgres.postgres_server():
            pass
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        with _postgres.postgres_server():
            pass


def test_workers_claiming_the_same_calls_at_once_get_each_claim_once(pg_url):
    """Four workers claim overlapping request hashes in the same moment, round after round: each
    hash is claimed by one of them, the others are told who holds it."""
    stores = [PostgresStore(pg_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    got: dict[int, list[list[Any]]] = {i: [] for i in range(len(stores))}

    def work(i: int) -> None:
        for rnd in range(20):
            hashes = [f"v1:{rnd}:{j}" for j in range(i, i + 6)]  # each overlaps its neighbours'
            start.wait()
            got[i].append(list(zip(hashes, stores[i].claim_calls(hashes, f"w{i}", 60, lambda o: False))))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    owners: dict[str, set[str]] = {}
    for i, rounds in got.items():
        for pairs in rounds:
            for h, c in pairs:
                owners.setdefault(h, set()).add(f"w{i}" if c.holder is None else c.holder)
    assert len(owners) == 20 * 9
    assert all(len(o) == 1 for o in owners.values()), {h: o for h, o in owners.items() if len(o) > 1}
    held = dict(stores[0].db.execute("SELECT request_hash, owner FROM call_claims").fetchall())
    assert held == {h: next(iter(o)) for h, o in owners.items()}


# --- corral worker -------------------------------------------------------------------------


def pg_ledger(url: str) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(paid request hash, times paid) and record state -> count, read from the database."""
    with raw(url) as c:
        paid = c.execute("SELECT request_hash, COUNT(*) FROM ledger WHERE replayed=0 GROUP BY 1").fetchall()
        states = dict(c.execute("SELECT state, COUNT(*) FROM records GROUP BY 1").fetchall())
    return paid, states


def test_three_workers_on_a_postgres_store_write_each_row_once_and_pay_each_prompt_once(tmp_path, pg_url):
    import subprocess

    from ..cli.test_worker import setup, sink_keys
    from ..conftest import corral_bin

    env = {**setup(tmp_path, rows=900, distinct=450), "CORRAL_STORE": pg_url}  # every prompt twice
    procs = [subprocess.Popen([corral_bin(), "worker", "job.yaml", "--json"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    assert not [o for o in outs if PASSWORD in o[0] + o[1]]
    paid, states = pg_ledger(pg_url)
    assert states == {"done": 900}
    assert len(paid) == 450 and {n for _, n in paid} == {1}  # no prompt paid twice
    assert sorted(sink_keys(tmp_path), key=int) == [str(i) for i in range(900)]
    runs = [json.loads(o[0])["runs"] for o in outs]
    assert len({r[0]["run"] for r in runs}) == 1  # one shared run


def test_a_worker_finishes_a_killed_run_from_a_postgres_store(tmp_path, pg_url):
    import signal
    import subprocess

    from ..cli.test_worker import setup, sink_keys, worker
    from ..conftest import corral_bin

    env = {**setup(tmp_path, rows=1500), "CORRAL_STORE": pg_url}
    proc = subprocess.Popen([corral_bin(), "run", "job.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until it has answered some rows
        time.sleep(0.2)
        with contextlib.suppress(Exception):
            if pg_ledger(pg_url)[1].get("done", 0) > 100:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pg_ledger(pg_url)[1].get("done", 0) < 1500
    done = worker(tmp_path, env, "--json")  # no job file: the open run is read back from the store
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in json.loads(done.stdout)["runs"]] == ["finished"]
    paid, states = pg_ledger(pg_url)
    assert states == {"done": 1500} and len(paid) == 1500 and {n for _, n in paid} == {1}
    assert len(sink_keys(tmp_path)) == 1500
