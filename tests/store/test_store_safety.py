"""The store under a new user's accidents: several processes creating it at once, a damaged file,
a mistyped --store. Real SQLite files and real processes throughout."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from corral import run as run_job
from corral.errors import SourceError, StoreError
from corral.store import SQLiteStore, open_store
from corral.store.base import RunInfo
from corral.store.sqlite import MIGRATIONS

from ..conftest import corral_bin, write

JOB = """\
name: safety
source: data/in.csv
key: id
model: fake
steps:
  - name: cat
    task: classify
    input: "{text}"
    labels: [a, b]
sink: out/o.csv
"""


def data(n: int) -> str:
    return "id,text\n" + "".join(f"r{i},row number {i} with some words to make the row longer\n" for i in range(n))


def corral(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [corral_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def one_line_error(p: subprocess.CompletedProcess, *expected: str) -> str:
    """The command failed with exit 2 and exactly one line on stderr, with no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "sqlite3." not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: "), p.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def new_run(rid: str) -> RunInfo:
    now = time.time()
    return RunInfo(rid, "job", "h", "f", {}, "created", None, now, now, 0, False, {})


# --- item 4: several processes creating (or migrating) the store at once -------------------------


def _open_and_write(paths: list[str], rid: str, barrier: Any, out: Any) -> None:
    """One worker: for each store in turn, wait for the others, then open it and write a run."""
    for path in paths:
        try:
            barrier.wait(timeout=60)
            st = open_store(path)
            st.create_run(new_run(rid))
            st.close()
            out.put((path, rid, "ok"))
        except BaseException as e:  # reported to the test, which names it
            out.put((path, rid, f"{type(e).__name__}: {e}"))


def _open_at_once(paths: list[Path], n: int) -> dict[str, dict[str, str]]:
    """n processes open each store at the same moment: store -> {run id the worker wrote: outcome}."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate `corral run`s are
    barrier, out = ctx.Barrier(n), ctx.Queue()
    args = [str(p) for p in paths]
    procs = [ctx.Process(target=_open_and_write, args=(args, f"r{i}", barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results: dict[str, dict[str, str]] = {str(p): {} for p in paths}
    for _ in range(n * len(paths)):
        path, rid, outcome = out.get(timeout=120)
        results[path][rid] = outcome
    for p in procs:
        p.join(timeout=60)
    return results


def test_processes_creating_a_fresh_store_at_once_all_succeed(tmp_path):
    paths = [tmp_path / f"fresh{i}" / "corral.db" for i in range(25)]
    results = _open_at_once(paths, 8)
    failed = {p: r for p, r in results.items() if set(r.values()) != {"ok"}}
    assert not failed, f"{len(failed)} of {len(paths)} stores: {next(iter(failed.values()))}"
    for path in paths:
        st = SQLiteStore(path)
        assert st.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert sorted(r.id for r in st.list_runs()) == [f"r{i}" for i in range(8)]
        st.close()


def test_processes_migrating_an_older_store_at_once_migrate_it_once(tmp_path):
    """`CREATE TABLE IF NOT EXISTS` would hide this race for table creation, not for migrations
    such as `ALTER TABLE ADD COLUMN`: the version must be read again under the write lock."""
    paths = [tmp_path / f"old{i}.db" for i in range(10)]
    for path in paths:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        MIGRATIONS[0](db)  # a store written by a Corral that had the first migration only
        db.execute("PRAGMA user_version=1")
        db.close()
    results = _open_at_once(paths, 6)
    failed = {p: r for p, r in results.items() if set(r.values()) != {"ok"}}
    assert not failed, f"{len(failed)} of {len(paths)} stores: {next(iter(failed.values()))}"
    for path in paths:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert [r[1] for r in db.execute("PRAGMA table_info(attempts)")].count("data") == 1
        db.close()


def test_two_corral_runs_on_a_fresh_store(tmp_path):
    """Two workers started at once on the job's first run both finish it, one run between them."""
    write(tmp_path / "job.yaml", JOB)
    write(tmp_path / "data" / "in.csv", data(60))
    for repeat in range(3):
        store = tmp_path / f"s{repeat}" / "corral.db"
        args = [corral_bin(), "run", "job.yaml", "--json", "--store", str(store)]
        procs = [
            subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert "already exists" not in err
        summaries = [json.loads(out) for out, _ in outs]
        assert summaries[0]["run"] == summaries[1]["run"]
        p = corral("status", summaries[0]["run"], "--json", "--store", str(store), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        status = json.loads(p.stdout)
        assert status["status"] == "finished"
        assert status["rows"]["written"] == 60


# --- item 7: a damaged store ---------------------------------------------------------------------


def _damage(path: Path, seed: int | None = None) -> None:
    """Overwrite 4 KB in the middle of the file with garbage, as a bad disk sector or a bad copy
    does: at the very middle, or (with a seed) anywhere in the middle half."""
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    size = path.stat().st_size
    assert size > 20 * 4096, size  # big enough that the middle is table and index pages
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(size // 2 if seed is None else rng.randrange(size // 4, 3 * size // 4))
        f.write(rng.randbytes(4096))


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, str, Path]:
    """(store, run id, job folder): a finished run of 400 rows whose store file is then damaged."""
    write(tmp_path / "job.yaml", JOB)
    write(tmp_path / "data" / "in.csv", data(400))
    p = corral("run", "job.yaml", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)["run"]
    store = Path(os.environ["CORRAL_STORE"])
    _damage(store)
    return store, run, tmp_path


def test_every_command_refuses_a_damaged_store_in_one_line(damaged):
    store, run, cwd = damaged
    commands = [
        ("run", "job.yaml"),
        ("run", "job.yaml", "--json"),
        ("status",),
        ("status", run, "--json"),
        ("runs",),
        ("runs", "--json"),
        ("show", run, "r200"),
        ("export", "traces", run),
    ]
    for args in commands:
        line = one_line_error(corral(*args, cwd=cwd), f"the store at {store}", "damaged", "backup", "move it away")
        assert "finished" not in line
    assert "cannot open the store" in line and "--store" in line


def test_reads_of_a_damaged_store_raise_store_error(damaged):
    """Past the open (here with the check turned off), a read that meets the damage raises the
    same one-line StoreError, not sqlite3's DatabaseError."""
    store, run, _ = damaged
    st = open_store(store, create=False, check=False)

    def read_everything() -> None:
        st.list_runs()
        st.counts(run)
        st.totals(run)
        st.breakdown(run)
        st.run_spend(run)
        for chunk in st.iter_records(run, "done", chunk=50):
            for rec in chunk:
                st.record(run, rec.key)
                st.record_calls(run, rec.key)
        for i in range(400):
            st.cached(f"v1:{i}")
        st.db.execute("SELECT COUNT(*), SUM(LENGTH(response)) FROM responses").fetchall()

    with pytest.raises(StoreError, match=f"cannot use the store at {store}: it is damaged .* backup"):
        read_everything()
    st.close()


def test_damage_met_while_a_command_reads_ends_it_in_one_line(damaged, tmp_path, monkeypatch):
    """Damage the open-time check cannot see (here: the check turned off) still ends `runs`,
    `status` and `export traces` with the one-line error and exit 2 when a read meets it."""
    from click.testing import CliRunner

    from corral import cli

    cwd = damaged[2]
    store = tmp_path / "ledger-damaged.db"
    run = run_job(cwd / "job.yaml", store=store).run
    db = sqlite3.connect(store)
    try:
        pages = [n for (n,) in db.execute("SELECT pageno FROM dbstat WHERE name='ledger' AND pagetype='leaf'")]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find the ledger's pages")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(store, "r+b") as f:  # every call of the run is counted from the ledger: a read meets it
        f.seek((pages[len(pages) // 2] - 1) * page_size)
        f.write(random.Random(3).randbytes(page_size))
    monkeypatch.setattr(cli, "open_store", lambda path, **kw: open_store(path, **{**kw, "check": False}))
    for args in (["runs"], ["status"], ["status", run, "--json"], ["export", "traces", run]):
        result = CliRunner().invoke(cli.main, [*args, "--store", str(store)])
        assert result.exit_code == 2, (args, result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: cannot use the store at {store}: it is damaged"), lines[0]


def test_quick_check_refuses_a_damaged_store_at_open(damaged, tmp_path):
    store, _, _ = damaged
    with pytest.raises(StoreError, match="cannot open the store at .* it is damaged"):
        open_store(store)
    with pytest.raises(StoreError, match="it is damaged"):
        open_store(store, create=False)
    # wherever the damage lands (SQLite reports some as rows of problems, some as an error)
    good = tmp_path / "good.db"
    run_job(tmp_path / "job.yaml", store=good)
    for seed in range(12):
        copy = tmp_path / f"copy{seed}.db"
        copy.write_bytes(good.read_bytes())
        _damage(copy, seed)
        with pytest.raises(StoreError, match=r"it is damaged \(.+\) — restore the file from a backup"):
            open_store(copy)


def test_a_lock_held_too_long_is_a_store_error(tmp_path, monkeypatch):
    monkeypatch.setattr("corral.store.sqlite.BUSY_TIMEOUT_S", 0.2)
    st = SQLiteStore(tmp_path / "s.db")
    st.create_run(new_run("r1"))
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="another process kept it locked .* run the command again"):
        st.update_run("r1", status="running")
    other.execute("ROLLBACK")
    st.update_run("r1", status="running")  # the store works again once the lock is gone
    assert st.get_run("r1").status == "running"
    other.close()
    st.close()


# --- item 9: commands that only read never create a store ---------------------------------------


@pytest.mark.parametrize(
    "args",
    [("runs",), ("runs", "--json"), ("status",), ("status", "abc"), ("show", "abc", "k1"), ("export", "traces", "abc")],
)
def test_read_commands_refuse_a_missing_store_and_create_nothing(tmp_path, args):
    p = corral(*args, "--store", "typo/x.db", cwd=tmp_path)
    one_line_error(p, "no store at typo/x.db", "run a job first", "--store", "CORRAL_STORE")
    assert not (tmp_path / "typo").exists()
    # the default store (here $CORRAL_STORE) too
    p = corral(*args, cwd=tmp_path)
    one_line_error(p, f"no store at {os.environ['CORRAL_STORE']}")
    assert not Path(os.environ["CORRAL_STORE"]).parent.exists()


def test_open_store_without_create(tmp_path):
    path = tmp_path / "a" / "b" / "s.db"
    with pytest.raises(StoreError, match=r"no store at .*s\.db — run a job first"):
        open_store(path, create=False)
    assert not (tmp_path / "a").exists()
    st = open_store(path)  # may create: but only when first used
    assert not (tmp_path / "a").exists()
    assert st.list_runs() == []
    assert path.exists()
    st.create_run(new_run("r1"))
    st.close()
    st = open_store(path, create=False)
    assert [r.id for r in st.list_runs()] == ["r1"]
    st.close()


def test_a_run_that_fails_before_writing_leaves_no_store(tmp_path):
    write(tmp_path / "job.yaml", JOB)  # its source data/in.csv does not exist
    store = tmp_path / "st" / "corral.db"
    with pytest.raises(SourceError, match="source file not found"):
        run_job(tmp_path / "job.yaml", store=store)
    assert not (tmp_path / "st").exists()
