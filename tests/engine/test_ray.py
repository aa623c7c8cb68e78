"""`corral run --engine ray`: the run spread over a local Ray cluster (a head and two worker nodes
on this machine) ends with the same rows and values as in one process; a SIGKILLed Ray worker
loses nothing and pays nothing twice; Ctrl-C gives every held row back and the same command
resumes; the workers share a Postgres store too; bad input is one line with the fix (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..conftest import corral_bin, write

JOB = """\
name: rj
source: in.csv
key: id
model: {{name: fake, latency: {latency}}}
concurrency: 4
steps:
  - name: cat
    task: classify
    input: "{{text}}"
    labels: [a, b, c]
sink: out/rj.csv
"""


def need_ray() -> None:
    """Skip where Ray is not installed, except under CI (.ci/run), where it must be."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed (make install, or pip install -e '.[ray]' in the Corral checkout)")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray cluster on this machine: a head without CPUs and two worker nodes of two CPUs."""
    need_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    session = cluster.head_node.get_session_dir_path()
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        yield str(cluster.address)
    finally:
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)  # its logs and sockets


def setup(tmp: Path, rows: int, latency: float = 0.01, distinct: int | None = None) -> dict[str, str]:
    write(tmp / "job.yaml", JOB.format(latency=latency))
    with (tmp / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, f"text {i % distinct if distinct else i}") for i in range(rows))
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CORRAL_STORE", None)
    env.pop("RAY_ADDRESS", None)
    return env


def corral(tmp: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([corral_bin(), "run", "job.yaml", *args], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def owners_seen(proc: subprocess.Popen[str], db: Path, kill_one: bool = False) -> tuple[set[str], str, str]:
    """The lease owners seen in the store while ``proc`` runs (killing one Ray worker's process
    with SIGKILL once two hold rows, when asked), and its output."""
    seen: set[str] = set()
    killed = False
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                try:
                    rows = con.execute("SELECT DISTINCT lease_owner FROM records WHERE lease_owner IS NOT NULL").fetchall()
                finally:
                    con.close()
            except sqlite3.OperationalError:
                rows = []  # the tables are not made yet
            seen |= {r[0] for r in rows}
        workers = {int(o.split(":")[1]) for o in seen} - {proc.pid}
        if kill_one and not killed and len(workers) >= 2:
            os.kill(min(workers), signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert not kill_one or killed, err[-2000:]
    return seen, out, err


def ledger(db: Path) -> tuple[list[tuple[str, int]], dict[str, int]]:
    con = sqlite3.connect(db)
    try:
        paid = con.execute("SELECT request_hash, COUNT(*) FROM ledger WHERE replayed=0 GROUP BY 1").fetchall()
        states = dict(con.execute("SELECT state, COUNT(*) FROM records GROUP BY 1").fetchall())
    finally:
        con.close()
    return paid, states


def sink(tmp: Path) -> list[dict[str, str]]:
    with (tmp / "out" / "rj.csv").open() as f:
        return sorted(csv.DictReader(f), key=lambda r: int(r["id"]))


def test_the_job_on_a_ray_cluster_ends_like_the_single_process_run(tmp_path, ray_cluster):
    env = setup(tmp_path, rows=400, distinct=300)  # 100 prompts twice: each paid once
    alone = corral(tmp_path, env, "--store", "alone.db")
    out, err = alone.communicate(timeout=120)
    assert alone.returncode == 0, err[-2000:]
    expected = sink(tmp_path)
    (tmp_path / "out" / "rj.csv").unlink()

    proc = corral(tmp_path, env, "--engine", "ray", "--address", ray_cluster, "--store", "ray.db")
    seen, out, err = owners_seen(proc, tmp_path / "ray.db")
    assert proc.returncode == 0, err[-3000:]
    assert "starting 4 Ray workers" in err
    assert sink(tmp_path) == expected  # the same rows and values
    assert len({o.split(":")[1] for o in seen}) >= 2, seen  # the rows were spread over Ray workers
    paid, states = ledger(tmp_path / "ray.db")
    assert states == {"done": 400} and len(paid) == 300 and {n for _, n in paid} == {1}
    assert "400 in = 400 written" in out


def test_a_sigkilled_ray_worker_loses_nothing_and_pays_nothing_twice(tmp_path, ray_cluster):
    env = setup(tmp_path, rows=1200, latency=0.05, distinct=900)
    proc = corral(tmp_path, env, "--engine", "ray", "--address", ray_cluster, "--ray-workers", "3",
                  "--store", "s.db", "--json")
    seen, out, err = owners_seen(proc, tmp_path / "s.db", kill_one=True)
    assert proc.returncode == 0, err[-3000:]
    assert "was lost" in err and "went back to the queue" in err
    summary = json.loads(out)  # what Ray reports of the dead worker is kept off stdout
    assert summary["status"] == "finished" and summary["rows"]["written"] == 1200
    paid, states = ledger(tmp_path / "s.db")
    assert states == {"done": 1200}
    assert len(paid) == 900 and {n for _, n in paid} == {1}  # no completed call paid twice
    assert [r["id"] for r in sink(tmp_path)] == [str(i) for i in range(1200)]


def test_an_unreachable_address_is_one_line_with_the_fix(tmp_path):
    need_ray()
    env = setup(tmp_path, rows=5)
    r = subprocess.run([corral_bin(), "run", "job.yaml", "--engine", "ray", "--address", "127.0.0.1:9",
                        "--store", "s.db"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no Ray cluster answers at --address 127.0.0.1:9" in r.stderr and "ray start --head" in r.stderr
    assert "Traceback" not in r.stderr


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path):
    env = setup(tmp_path, rows=5)
    write(tmp_path / "noray" / "ray" / "__init__.py", "raise ImportError('No module named ray')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "noray"), env.get("PYTHONPATH", "")])
    r = subprocess.run([corral_bin(), "run", "job.yaml", "--engine", "ray", "--store", "s.db"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--engine ray needs Ray" in r.stderr and "pip install -e '.[ray]' in the Corral checkout" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()


def test_ray_options_without_the_ray_engine_are_refused(tmp_path):
    env = setup(tmp_path, rows=5)
    r = subprocess.run([corral_bin(), "run", "job.yaml", "--address", "127.0.0.1:6379"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--engine ray" in r.stderr


def test_ctrl_c_stops_the_ray_workers_and_the_same_command_resumes(tmp_path, ray_cluster):
    env = setup(tmp_path, rows=1200, latency=0.05)
    args = ("--engine", "ray", "--address", ray_cluster, "--ray-workers", "2", "--store", "s.db")
    proc = corral(tmp_path, env, *args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ledger_rows(tmp_path / "s.db") < 100:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err[-3000:]
    assert "stopping the Ray workers" in err and "Interrupted with" in err
    assert f"Resume with: corral run job.yaml --store s.db --engine ray --address {ray_cluster}" in err
    _, states = ledger(tmp_path / "s.db")
    assert "leased" not in states and states.get("pending", 0) > 0, states  # every held row went back

    again = corral(tmp_path, env, *args)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    paid, states = ledger(tmp_path / "s.db")
    assert states == {"done": 1200} and len(paid) == 1200 and {n for _, n in paid} == {1}


def ledger_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_the_ray_workers_share_a_postgres_store(tmp_path, ray_cluster, pg_url):
    env = setup(tmp_path, rows=300, distinct=200)
    proc = corral(tmp_path, env, "--engine", "ray", "--address", ray_cluster, "--store", pg_url, "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished" and summary["rows"]["written"] == 300
    assert summary["calls"] == {"made": 200, "replayed": 100}  # each distinct prompt paid once
    assert len(sink(tmp_path)) == 300
    password = urlsplit(pg_url).password
    assert password and password not in out + err  # masked wherever the store is shown


def test_a_ray_worker_refuses_a_run_its_node_does_not_share(tmp_path):
    """What each Ray worker checks before it works (run here in-process, without Ray): the store
    exists and holds the driver's run, and its own job and source make that very run."""
    import asyncio

    import corral
    from corral._ray import _Worker
    from corral.errors import StoreError, UserError

    setup(tmp_path, rows=5)
    job = str(tmp_path / "job.yaml")
    rid = corral.run(job, store=tmp_path / "s.db").run
    write(tmp_path / "other" / "job.yaml", JOB.format(latency=0).replace("sink: out/", "sink: ../out/other-"))
    write(tmp_path / "other" / "in.csv", "id,text\n1,another source\n")
    corral.run(tmp_path / "other" / "job.yaml", store=tmp_path / "o.db")
    worker = _Worker()
    with pytest.raises(UserError, match="differs from the driver's .*same job folder at the same path"):
        asyncio.run(worker.work(job, None, None, str(tmp_path / "s.db"), "0" * 12))
    with pytest.raises(UserError, match=f"does not hold run {rid}; the nodes must share one store"):
        asyncio.run(worker.work(job, None, None, str(tmp_path / "o.db"), rid))
    with pytest.raises(StoreError, match="no store"):
        asyncio.run(worker.work(job, None, None, str(tmp_path / "none.db"), rid))
    assert not (tmp_path / "none.db").exists()  # never a store of the node's own
    assert asyncio.run(worker.work(job, None, None, str(tmp_path / "s.db"), rid)) == "finished"
