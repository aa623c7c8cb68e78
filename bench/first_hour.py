"""The first-hour defects, measured as a new user meets them: each case runs the real `corral`
command of this checkout in a temporary folder and records what it did.

  .venv/bin/python bench/first_hour.py

Cases (the numbers are the items of the first-hour issue):
  1  a provider at a closed port, 3 rows, max_outage_s 3: exit code, seconds to the first
     "provider unreachable" line, seconds to give up, rows quarantined; then the same with the
     default max_outage_s and SIGINT (and SIGTERM) once the pause is reported: seconds to exit
  2  --limit 2 and --limit 0 after a full 3-row run: is the sink byte-identical, status
  3  empty/blank CSV cells: calls made for them, their state
  4  6 `corral run` started at once on a fresh store, 5 times: how many failed
  5  the same job run from its folder after the parent folder: calls made the second time
  6  a second worker while the first holds every row: its exit code and line
  7  a store with 4 KB overwritten in the middle: exit code and stderr lines of run/status/export
  8  stderr not a terminal: progress lines during a 4-second run
  9  `corral runs --store typo/x.db`: exit code, whether anything was created
  10 Parquet source with struct/list<struct>/timestamp/decimal/binary/map columns to a Parquet
     sink: are the source columns' Arrow types equal
  11 a `when:` over a step that did not run: the row's state
Writes bench/results/first_hour.json.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import CORRAL, RESULTS, machine

ENV = {k: v for k, v in os.environ.items() if k != "CORRAL_STORE"}
CLASSIFY = '  - {name: cat, task: classify, input: "{text}", labels: [a, b]}\n'


def job(folder: Path, rows: str, model: str = "fake", extra: str = "", steps: str = CLASSIFY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.csv").write_text(rows, encoding="utf-8")
    p = folder / "job.yaml"
    p.write_text(f"name: fh\nsource: in.csv\nkey: id\nmodel: {model}\n{extra}steps:\n{steps}sink: out/o.csv\n",
                 encoding="utf-8")
    return p


def corral(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def summary(*args: str, cwd: Path) -> dict[str, Any]:
    """`corral ARGS --json`'s summary (stops the benchmark with stderr when there is none)."""
    p = corral(*args, "--json", cwd=cwd)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"corral {' '.join(args)} in {cwd}: exit {p.returncode}\n{p.stderr[-2000:]}") from None


def rows(n: int) -> str:
    return "id,text\n" + "".join(f"r{i},message {i}\n" for i in range(n))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outage(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url = f"http://127.0.0.1:{closed_port()}/v1"
    model = f'{{name: "openai:qwen", base_url: "{url}", api_key: "sk-x", max_outage_s: 3}}'
    d = tmp / "outage"
    job(d, rows(3), model)
    t0 = time.monotonic()
    p = subprocess.Popen([CORRAL, "run", "job.yaml"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    first = None
    assert p.stderr is not None
    err_lines = []
    for line in p.stderr:
        err_lines.append(line.rstrip())
        if first is None and "provider unreachable" in line:
            first = time.monotonic() - t0
    p.wait(timeout=60)
    out["give_up"] = {
        "exit_code": p.returncode, "first_notice_s": round(first or -1, 2),
        "exit_s": round(time.monotonic() - t0, 2), "first_notice": next((x for x in err_lines if "unreachable" in x), None),
        "last_line": err_lines[-1] if err_lines else None,
        "summary_rows": next((x for x in (p.stdout.read() if p.stdout else "").splitlines() if x.startswith("Rows")), None),
    }
    for sig in (signal.SIGINT, signal.SIGTERM):
        d = tmp / f"outage-{sig.name}"
        job(d, rows(50), f'{{name: "openai:qwen", base_url: "{url}", api_key: "sk-x", max_retries: 1}}')
        p = subprocess.Popen([CORRAL, "run", "job.yaml"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
        seen = threading.Event()
        lines: list[str] = []

        def read(proc: subprocess.Popen[str] = p, lines: list[str] = lines,
                 seen: threading.Event = seen) -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                lines.append(line.rstrip())
                if "provider unreachable" in line:
                    seen.set()

        threading.Thread(target=read, daemon=True).start()
        seen.wait(60)
        time.sleep(1.0)
        t1 = time.monotonic()
        p.send_signal(sig)
        p.wait(timeout=60)
        stdout = p.stdout.read() if p.stdout else ""
        out[sig.name] = {
            "exit_code": p.returncode, "exit_after_signal_s": round(time.monotonic() - t1, 3),
            "summary_printed": stdout.startswith("Run "),
            "resume_line": next((x for x in lines if "Resume with" in x), None),
            "summary_rows": next((x for x in stdout.splitlines() if x.startswith("Rows")), None),
        }
    return out


def preview(tmp: Path) -> dict[str, Any]:
    d = tmp / "preview"
    job(d, rows(3))
    corral("run", "job.yaml", cwd=d)
    full = (d / "out" / "o.csv").read_bytes()
    out: dict[str, Any] = {}
    for limit in ("2", "0"):
        p = corral("run", "job.yaml", "--limit", limit, "--json", cwd=d)
        s = json.loads(p.stdout)
        st = json.loads(corral("status", "--json", cwd=d).stdout)
        out[f"limit_{limit}"] = {"exit_code": p.returncode, "status": s["status"], "stop_reason": s["stop_reason"],
                                 "sink_unchanged": (d / "out" / "o.csv").read_bytes() == full,
                                 "status_after": st["status"], "written_after": st["rows"]["written"]}
    return out


def empty_input(tmp: Path) -> dict[str, Any]:
    d = tmp / "empty"
    job(d, "id,text\nr1,hello there\nr2,\nr3,   \n")
    s = summary("run", "job.yaml", cwd=d)
    q = (d / "out" / "o.quarantine.csv").read_text(encoding="utf-8").splitlines()[1:]
    return {"rows": s["rows"], "calls_made": s["calls"]["made"], "quarantine_reasons": [x.rsplit(",", 1)[-1] for x in q]}


def race(tmp: Path, n: int = 6, tries: int = 5) -> dict[str, Any]:
    failed = 0
    messages: list[str] = []
    for t in range(tries):
        d = tmp / f"race-{t}"
        job(d, rows(5))
        procs = [subprocess.Popen([CORRAL, "run", "job.yaml", "--json"], cwd=d, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(n)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                failed += 1
                messages.append(err.strip()[-300:])
    return {"processes": n, "tries": tries, "failed": failed, "messages": messages[:3]}


def other_folder(tmp: Path) -> dict[str, Any]:
    d = tmp / "proj"
    job(d / "jobs", rows(4))
    a = summary("run", "jobs/job.yaml", cwd=d)
    b = summary("run", "job.yaml", cwd=d / "jobs")
    return {"first_calls": a["calls"], "second_calls": b["calls"], "same_store": a["store"] == b["store"],
            "store": Path(b["store"]).relative_to(tmp).as_posix()}


def second_worker(tmp: Path) -> dict[str, Any]:
    d = tmp / "workers"
    job(d, rows(30), "{name: fake, latency: 0.4}", extra="concurrency: 2\n")
    first = subprocess.Popen([CORRAL, "run", "job.yaml"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
    time.sleep(2.5)
    second = corral("run", "job.yaml", cwd=d)
    first.communicate(timeout=120)
    return {"first_exit": first.returncode, "second_exit": second.returncode,
            "second_line": next((x for x in second.stderr.splitlines() if "worker" in x), None)}


def damaged(tmp: Path) -> dict[str, Any]:
    d = tmp / "damaged"
    job(d, rows(400))
    corral("run", "job.yaml", cwd=d)
    db = d / ".corral" / "corral.db"
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(4096))
    out = {}
    for name, args in (("run", ["run", "job.yaml"]), ("status", ["status"]), ("export", ["export", "traces", "fh"])):
        p = corral(*args, cwd=d)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        out[name] = {"exit_code": p.returncode, "stderr_lines": len(lines), "traceback": "Traceback" in p.stderr,
                     "first_line": lines[0][:200] if lines else None}
    return out


def progress_off_terminal(tmp: Path) -> dict[str, Any]:
    d = tmp / "progress"
    job(d, rows(20), "{name: fake, latency: 0.4}", extra="concurrency: 2\n")
    t0 = time.monotonic()
    p = subprocess.run([CORRAL, "run", "job.yaml"], cwd=d, capture_output=True, text=True, timeout=120,
                       env={**ENV, "CORRAL_PROGRESS_S": "1"})
    lines = p.stderr.splitlines()
    return {"elapsed_s": round(time.monotonic() - t0, 1), "progress_lines": sum("/20 rows" in x for x in lines),
            "first": lines[0] if lines else None, "example": next((x for x in lines if "/20 rows" in x), None)}


def typo_store(tmp: Path) -> dict[str, Any]:
    d = tmp / "typo"
    d.mkdir()
    p = corral("runs", "--store", "typo/x.db", cwd=d)
    return {"exit_code": p.returncode, "stderr": p.stderr.strip(), "created": (d / "typo").exists()}


def parquet_types(tmp: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp / "parquet"
    d.mkdir()
    t = pa.table({
        "id": ["r1", "r2"], "text": ["hello", "world"],
        "st": pa.array([{"a": 1, "b": "x"}, None], pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "ls": pa.array([[{"k": 1}], []], pa.list_(pa.struct([("k", pa.int32())]))),
        "ts": pa.array([dt.datetime(2024, 3, 1, 9, 30), None], pa.timestamp("us", tz="UTC")),
        "dec": pa.array([decimal.Decimal("12.50"), decimal.Decimal("-3.01")], pa.decimal128(10, 2)),
        "bin": pa.array([b"\x00\xff", b""], pa.binary()),
        "mp": pa.array([[("x", 1)], None], pa.map_(pa.string(), pa.int64())),
    })
    pq.write_table(t, d / "in.parquet")
    (d / "job.yaml").write_text("name: pq\nsource: in.parquet\nkey: id\nmodel: fake\nsteps:\n" + CLASSIFY
                                + "sink: out/o.parquet\n", encoding="utf-8")
    p = corral("run", "job.yaml", cwd=d)
    back = pq.read_table(d / "out" / "o.parquet")
    t = pq.read_table(d / "in.parquet")  # as Parquet gives the source back (list and map field names)
    same = {c: str(back.schema.field(c).type) == str(t.schema.field(c).type) for c in t.column_names}
    values = back.select(t.column_names).to_pylist() == t.to_pylist()
    return {"exit_code": p.returncode, "types_equal": same, "values_equal": values}


def when_not_run(tmp: Path) -> dict[str, Any]:
    steps = (CLASSIFY
             + '  - {name: x, task: extract, input: "{text}", when: "cat == \'zzz\'", fields: {amount: number}}\n'
             + '  - {name: y, task: classify, input: "{text}", labels: [a, b], when: "x.amount > 10"}\n')
    d = tmp / "when"
    job(d, rows(3), steps=steps)
    s = summary("run", "job.yaml", cwd=d)
    return {"rows": s["rows"]}


def main() -> None:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="corral-first-hour-") as tmp:
        base = Path(tmp)
        for name, fn in (("1_outage", outage), ("2_preview", preview), ("3_empty_input", empty_input),
                         ("4_race", race), ("5_other_folder", other_folder), ("6_second_worker", second_worker),
                         ("7_damaged_store", damaged), ("8_progress_off_terminal", progress_off_terminal),
                         ("9_typo_store", typo_store), ("10_parquet_types", parquet_types),
                         ("11_when_not_run", when_not_run)):
            t0 = time.monotonic()
            results[name] = fn(base)
            print(name, json.dumps(results[name])[:400], f"({time.monotonic() - t0:.1f} s)", flush=True)
    out = RESULTS / "first_hour.json"
    out.write_text(json.dumps({"benchmark": "first_hour", "machine": machine(),
                               "command": ".venv/bin/python bench/first_hour.py", "results": results},
                              indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
