"""Corral beside Curator, DocETL, LOTUS and a bare ``openai`` SDK loop, on one test server.

  .venv/bin/python bench/peers/run.py [--rows 2000] [--latencies 0,200]
      [--tools corral,sdk,curator,docetl,lotus] [--reps 1] [--kill/--no-kill]

The task: the first --rows SMS messages with distinct texts (bench/_common.SMS_TSV), each
classified spam or ham with one chat completion. Every tool runs as a subprocess of this script
(Corral from this repository's .venv, each peer from its own virtual environment under
bench/peers/.venvs/, built on first use from bench/peers/requirements-<tool>.txt) against a fresh
corral.testing.ProviderServer in this process, answering after --latencies milliseconds.

Per tool and latency: rows/s over the whole process's wall time (and over the tool's own elapsed
time where it reports one), CPU seconds and peak RSS of the process and its children (wait4),
the chat completions the server saw (by status) and the answers that parse to spam or ham.

Kill test (--kill, at the last latency): the tool is started, SIGKILLed (its whole process group)
once the server has answered half the rows, and the same command run again with the same state
folder (the tool's own cache or store). From the server's log: calls paid again (rerun answers for
rows the server had already answered before the kill), and from the final output: rows lost and
rows duplicated.

Writes bench/peers/results/peers.json and prints a table. bench/peers/README.md says what each
tool's figures mean and which settings each tool runs with.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "providers"))
from _util import KEY, MODEL, TimedServer, corral_env, write_job  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from _common import CORRAL, ROOT, SMS_TSV, cmdline, last_json_line, machine, wait_for_quiet  # noqa: E402

sys.path.insert(0, str(HERE))
import _peer  # noqa: E402
import _venvs  # noqa: E402

RESULTS = HERE / "results"
TOOLS = ("corral", "sdk", "curator", "docetl", "lotus")
#: How each tool resumes after a kill, as its documentation says (None: it does not).
RESUME = {
    "corral": "its store (CORRAL_STORE): the same `corral run` continues the run",
    "sdk": None,
    "curator": "its cache folder (CURATOR_CACHE_DIR): a rerun of the same LLM on the same rows "
               "reads the responses already written",
    "docetl": "its LLM call cache (DOCETL_HOME_DIR/.cache/docetl/llm): a rerun replays cached calls",
    "lotus": None,
}
PROCESS_TIMEOUT_S = 600
QUIET_WAIT_S = 10.0  # at most this long before each run for the CPUs to be idle (--quiet-wait)


class LoggedServer(TimedServer):
    """A TimedServer that also keeps the messages of every chat completion it answered 200, in
    order, so that answers can be traced back to rows (``answered``)."""

    def __init__(self, **kw: Any) -> None:
        self.answered: list[list[Any]] = []
        super().__init__(**kw)

    def _openai_chat(self, body: dict[str, Any], raw: bytes, route: str, **kw: Any) -> Any:
        out = super()._openai_chat(body, raw, route, **kw)
        if not kw.get("batch"):
            with self._lock:
                self.answered.append(body.get("messages") or [])
        return out

    def __enter__(self) -> LoggedServer:  # typed as this class, not ProviderServer
        return self.start()

    def start(self) -> LoggedServer:
        super().start()
        if self._httpd is not None:  # a killed client's reset connections are expected: no tracebacks
            vars(self._httpd)["handle_error"] = lambda request, client_address: None
        return self


# --- rows and answers ---------------------------------------------------------------------------


def sms_rows(n: int, source: Path = SMS_TSV) -> list[dict[str, str]]:
    """The first ``n`` messages with distinct texts (duplicates left out, so that every request
    is for one row and no tool's response cache answers a second row from the first)."""
    if not source.exists():
        raise SystemExit(f"missing data: {source} (see /work/shared/data/README.md; pass --sms PATH)")
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    with open(source, newline="") as f:
        for rec in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            text = (rec.get("SMS") or "").strip()
            if text and text not in seen:
                seen.add(text)
                rows.append({"id": f"m{len(rows)}", "text": text})
                if len(rows) == n:
                    return rows
    raise SystemExit(f"{source} has only {len(rows)} distinct messages; ask for --rows {len(rows)} or fewer")


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text"])
        w.writeheader()
        w.writerows(rows)


class RowIndex:
    """Finds the row a request was for: the longest row text found in its messages."""

    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.by_text = {r["text"]: r["id"] for r in rows}
        self.longest_first = sorted(self.by_text, key=len, reverse=True)

    def key_of(self, messages: list[Any]) -> str | None:
        texts = [m.get("content") if isinstance(m, dict) else None for m in messages]
        flat = "\n".join(t if isinstance(t, str) else json.dumps(t) for t in texts if t is not None)
        for t in texts:
            if isinstance(t, str) and t.strip() in self.by_text:
                return self.by_text[t.strip()]
        return next((self.by_text[t] for t in self.longest_first if t in flat), None)


def read_answers(tool: str, out: Path) -> list[tuple[str, str | None]] | None:
    """(key, label) of every row in the tool's final output, None when it wrote none."""
    if not out.exists():
        return None
    if tool == "corral":  # the sink: a CSV with the job's key column and the step's column
        with open(out, newline="") as f:
            return [(r["id"], _peer.parse_label(r.get("label"))) for r in csv.DictReader(f)]
    got = []
    for line in out.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            got.append((str(rec["key"]), rec.get("label")))
    return got


def output_facts(rows: list[dict[str, str]], answers: list[tuple[str, str | None]] | None) -> dict[str, Any]:
    if answers is None:
        return {"output_rows": 0, "parsed": 0, "rows_lost": len(rows), "rows_duplicated": 0}
    counts = Counter(k for k, _ in answers)
    keys = {r["id"] for r in rows}
    return {
        "output_rows": len(answers),
        "parsed": sum(1 for _, lab in answers if lab in _peer.LABELS),
        "labels": dict(Counter(lab or "unparsed" for _, lab in answers)),
        "rows_lost": len(keys - set(counts)),
        "rows_duplicated": sum(c - 1 for c in counts.values() if c > 1),
    }


# --- how each tool is started -------------------------------------------------------------------


def peer_env(tool: str, work: Path, url: str) -> dict[str, str]:
    """The environment a peer runs offline in: the server as its OpenAI endpoint, its caches and
    home in ``work``, no telemetry, no downloads at import (see README.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VIRTUAL_ENV"))}
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": url,
        "OPENAI_API_BASE": url,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TELEMETRY_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CURATOR_CACHE_DIR": str(work / "state"),  # the peer's --work: kept for the rerun
        "DOCETL_HOME_DIR": str(work / "state"),
    })
    tok = _venvs.tiktoken_dir(tool)
    if tok is not None:
        env["TIKTOKEN_CACHE_DIR"] = str(tok)
    return env


def command(tool: str, work: Path, rows_csv: Path, url: str) -> tuple[list[str], dict[str, str], Path]:
    """(argv, env, output file) for one run of ``tool`` with its state in ``work``."""
    if tool == "corral":
        spec = {
            "name": "peers", "source": str(rows_csv), "key": "id",
            "model": {"name": MODEL, "base_url": url, "api_key": KEY},
            "steps": [{"name": "label", "task": "classify", "input": "{text}", "labels": _peer.LABELS}],
            "sink": "out/answers.csv",
        }
        write_job(work / "job.yaml", spec)
        return [CORRAL, "run", "job.yaml", "--json"], corral_env(work / "corral.db"), work / "out" / "answers.csv"
    out = work / "answers.jsonl"
    argv = [str(_venvs.python(tool)), str(HERE / f"peer_{tool}.py"), "--rows", str(rows_csv),
            "--out", str(out), "--base-url", url, "--work", str(work / "state")]
    return argv, peer_env(tool, work, url), out


def spawn(argv: list[str], env: dict[str, str], cwd: Path, kill_when: Any = None) -> dict[str, Any]:
    """Run a command in its own process group to the end, or until ``kill_when()`` is true (then
    SIGKILL the group). Returns rc, wall seconds, CPU seconds and peak RSS (wait4: the process and
    the children it waited for), the tail of stderr and the last JSON line of stdout."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=so, stderr=se, text=True, start_new_session=True)
        killed, done = threading.Event(), threading.Event()

        every = 0.005 if kill_when is not None else 0.25  # a kill lands within 5 ms of its moment

        def watch() -> None:  # never p.poll(): that would reap the child before wait4 does
            while not done.is_set():
                late = time.monotonic() - t0 > PROCESS_TIMEOUT_S
                if late or (kill_when is not None and kill_when()):
                    killed.set()
                    _killpg(p.pid)
                    return
                done.wait(every)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        done.set()
        p.returncode = os.waitstatus_to_exitcode(status)
        watcher.join(timeout=5)
        _killpg(p.pid)  # whatever the group left (a killed tool's helpers)
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    try:
        own = last_json_line(out)
    except (ValueError, json.JSONDecodeError):
        own = None
    return {"rc": p.returncode, "killed": killed.is_set(), "wall_s": round(wall, 3),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "maxrss_mb": round(ru.ru_maxrss / 1024, 1),
            "own": own, "stderr_tail": err[-1500:] if p.returncode else ""}


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def own_elapsed(own: dict[str, Any] | None) -> float | None:
    """The tool's own elapsed seconds where it reports one (Corral's summary; the peer scripts'
    report, which says what it timed)."""
    if not own:
        return None
    v = own.get("elapsed_s")
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def chat_requests(srv: LoggedServer) -> dict[str, int]:
    by = {str(st): s.calls for st, s in srv.served_by_status().items()}
    return {"total": sum(by.values()), **by}


# --- the two experiments ------------------------------------------------------------------------


def throughput(tool: str, rows: list[dict[str, str]], rows_csv: Path, latency_ms: int,
               quiet_wait_s: float = QUIET_WAIT_S) -> dict[str, Any]:
    """One full run of ``tool`` with a fresh state folder and a fresh server, once the CPUs are
    idle (or ``quiet_wait_s`` has passed)."""
    waited, busy = wait_for_quiet(max_wait_s=quiet_wait_s)
    work = Path(tempfile.mkdtemp(prefix=f"peers-{tool}-"))
    with LoggedServer(latency_s=latency_ms / 1000) as srv:
        argv, env, out = command(tool, work, rows_csv, srv.openai_url)
        r = spawn(argv, env, work)
        requests = chat_requests(srv)
    n = len(rows)
    own = own_elapsed(r["own"])
    res = {
        "tool": tool, "latency_ms": latency_ms, "rows": n, **{k: r[k] for k in ("rc", "wall_s", "cpu_s", "maxrss_mb")},
        "rows_per_s_wall": round(n / r["wall_s"], 2) if r["wall_s"] else None,
        "own_elapsed_s": own, "rows_per_s_own": round(n / own, 2) if own else None,
        "cpu_s_per_1000_rows": round(1000 * r["cpu_s"] / n, 3),
        "requests": requests, **output_facts(rows, read_answers(tool, out)),
        "own_report": r["own"], "quiet_wait_s": round(waited, 1), "busy_share_before": round(busy, 3),
        "command": cmdline(argv),
    }
    if r["rc"]:
        res["stderr_tail"] = r["stderr_tail"]
    return res


def kill_test(tool: str, rows: list[dict[str, str]], rows_csv: Path, latency_ms: int) -> dict[str, Any]:
    """SIGKILL at half the rows answered, then the same command again with the same state."""
    work = Path(tempfile.mkdtemp(prefix=f"peers-kill-{tool}-"))
    index = RowIndex(rows)
    half = len(rows) // 2
    with LoggedServer(latency_s=latency_ms / 1000) as srv:
        argv, env, out = command(tool, work, rows_csv, srv.openai_url)
        at_kill: list[int] = []

        def kill_when() -> bool:
            if srv.served().calls < half:
                return False
            with srv._lock:
                at_kill.append(len(srv.answered))
            return True

        first = spawn(argv, env, work, kill_when=kill_when)
        time.sleep(latency_ms / 1000 + 0.5)  # calls the server was still answering finish (and are paid)
        with srv._lock:
            mark = len(srv.answered)
        paid_before = Counter(index.key_of(m) for m in srv.answered[:mark])
        second = spawn(argv, env, work)
        rerun_keys = [index.key_of(m) for m in srv.answered[mark:]]
        requests = chat_requests(srv)
    again = sum(1 for k in rerun_keys if k is not None and k in paid_before)
    before_kill = {index.key_of(m) for m in srv.answered[: at_kill[0] if at_kill else mark]}
    again_before_kill = sum(1 for k in rerun_keys if k is not None and k in before_kill)
    facts = output_facts(rows, read_answers(tool, out))
    return {
        "tool": tool, "latency_ms": latency_ms, "rows": len(rows), "resume": RESUME[tool] or "none: a rerun starts over",
        "killed": first["killed"], "first_rc": first["rc"], "rerun_rc": second["rc"],
        "answered_at_kill": at_kill[0] if at_kill else None, "answered_before_rerun": mark,
        "rerun_answers": len(rerun_keys), "calls_paid_again": again,
        "calls_paid_again_answered_before_kill": again_before_kill,
        "untraced_requests": sum(1 for k in rerun_keys if k is None) + paid_before.get(None, 0),
        "requests_total": requests, **facts,
        "first_wall_s": first["wall_s"], "rerun_wall_s": second["wall_s"],
        **({"rerun_stderr_tail": second["stderr_tail"]} if second["rc"] else {}),
        **({"first_stderr_tail": first["stderr_tail"]} if first["rc"] and not first["killed"] else {}),
    }


# --- the report ---------------------------------------------------------------------------------


def ratios(runs: list[dict[str, Any]], latencies: list[int]) -> dict[str, Any]:
    """The acceptance figures, where both sides ran."""
    def get(tool: str, lat: int, field: str) -> float | None:
        xs = [r[field] for r in runs if r["tool"] == tool and r["latency_ms"] == lat and not r["rc"] and r.get(field)]
        return sorted(xs)[len(xs) // 2] if xs else None

    hi, lo = max(latencies), min(latencies)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    cpu = [ratio(get("corral", lat, "cpu_s_per_1000_rows"), get("sdk", lat, "cpu_s_per_1000_rows")) for lat in latencies]
    def both(a: tuple[str, int], b: tuple[str, int]) -> dict[str, float | None]:
        """The ratio of rows/s over the whole process (``value``) and over the tools' own clocks."""
        return {"value": ratio(get(*a, "rows_per_s_wall"), get(*b, "rows_per_s_wall")),
                "value_own_clock": ratio(get(*a, "rows_per_s_own"), get(*b, "rows_per_s_own"))}

    return {
        f"corral_{hi}ms_over_corral_{lo}ms_rows_per_s": {**both(("corral", hi), ("corral", lo)), "goal_min": 0.9},
        f"corral_over_curator_at_{hi}ms_rows_per_s": {**both(("corral", hi), ("curator", hi)), "goal_min": 1.5},
        "corral_over_sdk_cpu_s_per_1000_rows": {
            "by_latency_ms": dict(zip(map(str, latencies), cpu, strict=True)), "goal_max": 1.1},
    }


def table(runs: list[dict[str, Any]], kills: list[dict[str, Any]]) -> str:
    lines = ["tool     lat_ms  rc  rows/s(wall)  rows/s(own)  cpu_s  cpu_s/1k  rss_MB  requests  parsed  lost"]
    for r in runs:
        lines.append(
            f"{r['tool']:<8} {r['latency_ms']:>6} {r['rc']:>3} {r['rows_per_s_wall'] or 0:>13.1f} "
            f"{r['rows_per_s_own'] or 0:>12.1f} {r['cpu_s']:>6.1f} {r['cpu_s_per_1000_rows']:>9.2f} "
            f"{r['maxrss_mb']:>7.0f} {r['requests']['total']:>9} {r['parsed']:>7} {r['rows_lost']:>5}")
    if kills:
        lines += ["", "kill at 50%: tool  lat_ms  answered_at_kill  rerun_answers  paid_again  lost  duplicated  resume"]
        for k in kills:
            lines.append(
                f"  {k['tool']:<8} {k['latency_ms']:>6} {k['answered_at_kill'] or 0:>16} {k['rerun_answers']:>14} "
                f"{k['calls_paid_again']:>11} {k['rows_lost']:>5} {k['rows_duplicated']:>11}  {k['resume']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="Corral beside Curator, DocETL, LOTUS and a bare SDK loop.")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--latencies", default="0,200", help="server latencies in milliseconds, comma-separated")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True,
                    help="also SIGKILL each tool at 50%% and rerun it (at the last latency)")
    ap.add_argument("--sms", type=Path, default=SMS_TSV, help="the SMS spam collection (TSV: Label, SMS)")
    ap.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    ap.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S,
                    help="seconds to wait at most, before each run, for the CPUs to be idle")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        raise SystemExit(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    latencies = [int(x) for x in args.latencies.split(",")]
    rows = sms_rows(args.rows, args.sms)
    rows_csv = Path(tempfile.mkdtemp(prefix="peers-rows-")) / "sms.csv"
    write_rows(rows_csv, rows)

    t_start = time.monotonic()
    unavailable: dict[str, str] = {}
    for tool in tools:
        if tool != "corral":
            problem = _venvs.ensure(tool)
            if problem:
                unavailable[tool] = problem
                print(f"{tool}: not run: {problem}", flush=True)
    runnable = [t for t in tools if t not in unavailable]
    build_s = time.monotonic() - t_start

    runs: list[dict[str, Any]] = []
    for _ in range(args.reps):
        for lat in latencies:
            for tool in runnable:
                r = throughput(tool, rows, rows_csv, lat, args.quiet_wait)
                runs.append(r)
                print(f"{tool} at {lat} ms: {r['rows_per_s_wall']} rows/s (wall), rc {r['rc']}, "
                      f"{r['parsed']}/{len(rows)} parsed, {r['requests']['total']} requests", flush=True)
    kills: list[dict[str, Any]] = []
    if args.kill:
        for tool in runnable:
            k = kill_test(tool, rows, rows_csv, latencies[-1])
            kills.append(k)
            print(f"{tool} kill: {k['calls_paid_again']} calls paid again, {k['rows_lost']} lost, "
                  f"{k['rows_duplicated']} duplicated", flush=True)

    result = {
        "benchmark": "peers", "machine": machine(), "load_avg_at_start": os.getloadavg(),
        "script": "bench/peers/run.py " + " ".join(sys.argv[1:]),
        "task": f"the first {len(rows)} distinct SMS messages of {args.sms.name}, spam or ham, one call each",
        "server": "corral.testing.ProviderServer, one per run, latency as given, no faults, no rate limit",
        "tools": {t: _venvs.describe(t) for t in tools}, "unavailable": unavailable,
        "venv_build_s": round(build_s, 1), "measure_s": round(time.monotonic() - t_start - build_s, 1),
        "acceptance": ratios(runs, latencies), "runs": runs, "kill": kills,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(runs, kills))
    print(json.dumps(result["acceptance"], indent=2))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
