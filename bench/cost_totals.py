"""Cost you can trust: on a fault-injected run against Corral's test server, the totals of
`corral cost`, of the run page and of the ledger against the server's own count.

  PYTHONPATH=src .venv/bin/python bench/cost_totals.py [--rows 300] [--seed 13]

A :class:`corral.testing.ProviderServer` on 127.0.0.1 speaks OpenAI's and Anthropic's wire
formats, with faults: 429s with a Retry-After, 500/503s, hung requests (the client's timeout
fires), answers that are not JSON and answers cut at max_tokens (both billed, so the step asks
again: a retry). The job classifies the first --rows messages of ../shared/data/sms_spam (read
from there; the identical messages among them are asked once, the others replay it) with a
cascade: a cheap `openai:` model with log-probabilities, and rows under the confidence
threshold escalate to a `vote` of a strong `anthropic:` model. Both models have prices given in
the job (USD per million tokens, chosen so a token costs a whole number of nano-dollars, so
sums are exact).

Run 1 (`corral run` in a subprocess) is then measured four ways, and the figures that must
agree are asserted equal:

- `corral cost RUN --json` (the total, and by kind),
- the run page: `corral report RUN --html F` (the figures in id="cost-total" and id="cost-line",
  the cost shown to 4 decimals) and `corral._run_page.cost_total` (exact),
- the ledger summed with plain SQL over the store file,
- the server: calls it answered 200 on the model routes and the tokens its answers reported
  (its cost = those tokens x the prices), apart from the requests it failed (429, 5xx, hung).

Run 2: the same job again (resumes the finished run: nothing to do), then run 3: the job renamed
(a new run in the same store, every call a replay): no new paid call, no new request at the
server. Writes bench/results/cost_totals.json.

With --late the hung requests give way to answers up to 1.25 s late against the models' 1 s
timeout: the server then counts (as a provider would bill) answers the client had given up on,
which no ledger can hold; the script reports that gap instead of asserting the server's count
(bench/results/cost_totals_late.json).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from _common import DATA, ROOT, write_result

from corral.testing import ProviderServer

TSV = DATA / "sms_spam" / "SMSSpamCollection.tsv"
#: USD per million tokens: a token costs 500, 2,000, 3,000 and 15,000 nano-dollars
PRICES = {"openai": {"input": "0.5", "output": "2"}, "anthropic": {"input": "3", "output": "15"}}
CHEAP, STRONG = "gpt-cheap", "claude-strong"
KEY = "sk-test-costbench-0123456789"
FAULTS: dict[str, Any] = {
    "ratelimit_rate": 0.04, "retry_after_s": 0.2,  # 429 with retry-after
    "error_rate": 0.04,  # 500 / 503
    "timeout_rate": 0.01, "hang_s": 2.5,  # no answer: the model's 1 s timeout fires
    "malformed_rate": 0.03, "truncation_rate": 0.02,  # billed answers the step cannot use
    "latency_s": (0.0, 0.01),
}
MODEL_ROUTES = {"openai": "POST /v1/chat/completions", "anthropic": "POST /v1/messages"}


def job_yaml(name: str, url: str, threshold: float) -> str:
    cheap = {"name": f"openai:{CHEAP}", "base_url": url + "/v1", "logprobs": True, "timeout": 1,
             "prices": PRICES["openai"]}
    strong = {"name": f"anthropic:{STRONG}", "base_url": url, "timeout": 1, "prices": PRICES["anthropic"]}
    spec = {
        "name": name, "source": "in.csv", "key": "id", "sink": "out/o.csv", "concurrency": 16,
        "model": cheap, "models": {"strong": strong},
        "steps": [{
            "name": "spam", "task": "classify", "input": "{text}", "labels": ["ham", "spam"],
            "strategy": {"name": "cascade", "threshold": threshold, "stages": [
                "single", {"name": "vote", "samples": 3, "model": "strong"}]},
        }],
    }
    return json.dumps(spec, indent=1)  # JSON is YAML


def corral(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CORRAL_STORE": str(tmp / "corral.db"),
           "OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY}
    p = subprocess.run([sys.executable, "-m", "corral", *args], cwd=tmp, env=env, capture_output=True,
                       text=True, timeout=300)
    if p.returncode not in (0, 7):
        raise SystemExit(f"corral {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def last_json(text: str) -> dict[str, Any]:
    return json.loads(next(ln for ln in reversed(text.strip().splitlines()) if ln.startswith("{")))


def run_summary(text: str) -> dict[str, Any]:
    """`corral run --json`'s summary, flattened to the figures compared here."""
    s = last_json(text)
    return {"run_id": s["run"], "status": s["status"], **{f"rows_{k}": v for k, v in s["rows"].items()},
            "calls_made": s["calls"]["made"], "calls_replayed": s["calls"]["replayed"],
            "input_tokens": s["tokens"]["input"], "output_tokens": s["tokens"]["output"],
            "cost_usd": s["cost_usd"]}


def server_counts(srv: ProviderServer) -> dict[str, Any]:
    """What the server answered on its model routes: per provider, the 200s and their tokens
    (what the provider bills), the failures by status (0: hung, no answer), and every request."""
    out: dict[str, Any] = {}
    for kind in ("openai", "anthropic"):
        by = srv.served_by_status(kind)
        ok = by.get(200)
        out[kind] = {
            "requests": srv.requests[MODEL_ROUTES[kind]],
            "ok": ok.calls if ok else 0,
            "input_tokens": ok.prompt_tokens if ok else 0,
            "output_tokens": ok.completion_tokens if ok else 0,
            "cached_tokens": ok.cached_tokens if ok else 0,
            "failed": {str(st): s.calls for st, s in by.items() if st != 200},
        }
    return out


def server_cost(counts: dict[str, Any]) -> Decimal:
    m = Decimal(1_000_000)
    return sum((Decimal(counts[k]["input_tokens"]) * Decimal(PRICES[k]["input"]) / m
                + Decimal(counts[k]["output_tokens"]) * Decimal(PRICES[k]["output"]) / m
                for k in ("openai", "anthropic")), Decimal(0))


def ledger(db: Path, run_id: str) -> dict[str, Any]:
    """The ledger of one run, summed with plain SQL (no Corral code)."""
    con = sqlite3.connect(db)
    try:
        paid = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), "
            "COALESCE(SUM(cost_nanos),0), SUM(cost_nanos IS NULL) FROM ledger WHERE run_id=? AND replayed=0",
            (run_id,)).fetchone()
        replayed = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0) "
            "FROM ledger WHERE run_id=? AND replayed=1", (run_id,)).fetchone()
        per_model = {m: (n, tin, tout) for m, n, tin, tout in con.execute(
            "SELECT model, COUNT(*), SUM(input_tokens), SUM(output_tokens) FROM ledger "
            "WHERE run_id=? AND replayed=0 GROUP BY model", (run_id,))}
        kinds = dict(con.execute(
            "SELECT COALESCE(kind, '?'), COUNT(*) FROM ledger WHERE run_id=? AND replayed=0 GROUP BY kind",
            (run_id,)).fetchall())
        zero = con.execute("SELECT COUNT(*) FROM ledger WHERE run_id=? AND replayed=0 AND "
                           "input_tokens=0 AND output_tokens=0", (run_id,)).fetchone()[0]
    finally:
        con.close()
    return {
        "calls": paid[0], "input_tokens": paid[1], "output_tokens": paid[2],
        "cost": Decimal(paid[3]) / Decimal(1_000_000_000), "unpriced": paid[4] or 0,
        "replayed": replayed[0], "replay_input_tokens": replayed[1], "replay_output_tokens": replayed[2],
        "per_model": per_model, "kinds": kinds, "zero_token_rows": zero,
    }


def page(tmp: Path, run_id: str) -> dict[str, Any]:
    """The run page as `corral report` writes it: its cost and its calls/tokens line."""
    f = tmp / f"{run_id}.html"
    corral(tmp, "report", run_id, "--html", str(f))
    text = f.read_text(encoding="utf-8")
    total = re.search(r'id="cost-total"[^>]*>([^<]*)<', text)
    exact_attr = re.search(r'id="cost-total" data-usd="([^"]*)"', text)
    line = re.search(r'id="cost-line">(.*?)</p>', text, re.S)
    plain = html.unescape(re.sub(r"<[^>]+>", "", line.group(1))) if line else ""
    nums = {k: int(v.replace(",", "")) for v, k in re.findall(
        r"([\d,]+) (paid calls|replayed|input|output)", plain)}
    from corral._run_page import cost_total
    from corral.store import open_store

    st = open_store(tmp / "corral.db", create=False)
    try:
        exact = cost_total(st, run_id)
    finally:
        st.close()
    return {"shown": html.unescape(total.group(1)) if total else None, "line": plain,
            "data_usd": Decimal(exact_attr.group(1)) if exact_attr else None,
            "calls": nums.get("paid calls"), "replayed": nums.get("replayed"),
            "input_tokens": nums.get("input"), "output_tokens": nums.get("output"), "cost_total": exact}


def measure(tmp: Path, run_id: str) -> dict[str, Any]:
    cost = last_json(corral(tmp, "cost", run_id, "--by", "kind", "--json").stdout)
    t = cost["total"]
    return {
        "cost": {"calls": t["calls"], "input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"],
                 "cost": Decimal(t["cost"]) if t["cost"] is not None else None, "replayed": t["replayed"],
                 "replay_value": Decimal(t["replay_value"]) if t["replay_value"] is not None else None,
                 "kinds": {k["kind"]: k["calls"] + k["replayed"] for k in cost["kinds"]}},
        "page": page(tmp, run_id),
        "ledger": ledger(tmp / "corral.db", run_id),
    }


def dollars(x: Decimal | None) -> str:
    return "unknown" if x is None else f"${x:.9f}".rstrip("0").rstrip(".")


def show(title: str, summary: dict[str, Any], m: dict[str, Any], srv: dict[str, Any] | None,
         srv_cost: Decimal | None) -> None:
    c, p, lg = m["cost"], m["page"], m["ledger"]
    rows = [
        ("corral run --json (summary)", summary.get("calls_made"), summary.get("input_tokens"),
         summary.get("output_tokens"), f"{summary['cost_usd']!r} (a float)",
         summary.get("calls_replayed")),
        ("corral cost RUN --json", c["calls"], c["input_tokens"], c["output_tokens"], dollars(c["cost"]), c["replayed"]),
        ("run page (HTML, cost-line)", p["calls"], p["input_tokens"], p["output_tokens"], p["shown"], p["replayed"]),
        ("_run_page.cost_total", "", "", "", dollars(p["cost_total"]), ""),
        ("ledger, SQL (replayed=0)", lg["calls"], lg["input_tokens"], lg["output_tokens"], dollars(lg["cost"]), lg["replayed"]),
    ]
    if srv is not None:
        ok = sum(srv[k]["ok"] for k in srv)
        rows.append(("server: 200s on model routes", ok, sum(srv[k]["input_tokens"] for k in srv),
                     sum(srv[k]["output_tokens"] for k in srv), dollars(srv_cost), "-"))
    print(f"\n{title}")
    head = ("source", "paid calls", "input tok", "output tok", "cost", "replayed")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{x:,}" if isinstance(x, int) else str(x) for x in r) + " |")


def check(m: dict[str, Any], summary: dict[str, Any], srv: dict[str, Any] | None, srv_cost: Decimal | None) -> list[str]:
    """The equalities that must hold; returns what was checked."""
    c, p, lg = m["cost"], m["page"], m["ledger"]
    trio = ("calls", "input_tokens", "output_tokens")
    done = []
    for name, other in (("corral cost", c), ("run page", p)):
        for k in trio:
            assert other[k] == lg[k], f"{name} {k} {other[k]} != ledger {lg[k]}"
        done.append(f"{name} calls/tokens == ledger")
    assert c["replayed"] == lg["replayed"] == p["replayed"], (c["replayed"], lg["replayed"], p["replayed"])
    assert (summary["calls_made"], summary["input_tokens"], summary["output_tokens"]) == tuple(lg[k] for k in trio)
    assert lg["unpriced"] == 0, "a paid call without a price"
    assert c["cost"] == lg["cost"] == p["cost_total"], (c["cost"], lg["cost"], p["cost_total"])
    assert summary["cost_usd"] == float(lg["cost"]), (summary["cost_usd"], lg["cost"])  # JSON float
    assert p["shown"] == f"${float(lg['cost']):,.4f}", (p["shown"], lg["cost"])
    assert p["data_usd"] == lg["cost"], (p["data_usd"], lg["cost"])  # the page's exact figure
    done.append("cost: corral cost == _run_page.cost_total == ledger == summary (exact); page shows it to 4 places")
    if srv is not None:
        assert lg["calls"] == sum(srv[k]["ok"] for k in srv), "ledger paid calls != server 200s"
        assert lg["input_tokens"] == sum(srv[k]["input_tokens"] for k in srv)
        assert lg["output_tokens"] == sum(srv[k]["output_tokens"] for k in srv)
        for kind, model in (("openai", CHEAP), ("anthropic", STRONG)):
            # the ledger's model id is `provider:name@options-hash`
            mine = [v for k, v in lg["per_model"].items() if k.split("@")[0] == f"{kind}:{model}"]
            n, tin, tout = (sum(x[i] for x in mine) for i in range(3))
            assert (n, tin, tout) == (srv[kind]["ok"], srv[kind]["input_tokens"], srv[kind]["output_tokens"]), (
                kind, (n, tin, tout), srv[kind])
        assert lg["cost"] == srv_cost, (lg["cost"], srv_cost)
        done.append("ledger == server 200s, per provider, calls and tokens; cost == server tokens x prices (exact)")
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--late", action="store_true", help="answers up to 1.25 s late against the models' 1 s "
                    "timeout, instead of hung requests: the server counts (and a provider would bill) answers "
                    "the client gave up on; the gap is reported, not asserted")
    a = ap.parse_args()
    faults = {**FAULTS, "latency_s": (0.0, 1.25), "timeout_rate": 0.0} if a.late else FAULTS
    with open(TSV, newline="", encoding="utf-8") as f:
        texts = [r["SMS"] for _, r in zip(range(a.rows), csv.DictReader(f, delimiter="\t"))]
    out: dict[str, Any] = {"rows": len(texts), "distinct_texts": len(set(texts)), "seed": a.seed,
                           "threshold": a.threshold, "late": a.late, "faults": faults, "prices_per_million": PRICES}
    with tempfile.TemporaryDirectory() as d, ProviderServer(seed=a.seed, **faults) as srv:
        tmp = Path(d)
        with open(tmp / "in.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows((f"m{i:04d}", t) for i, t in enumerate(texts))
        (tmp / "job.yaml").write_text(job_yaml("sms-cost", srv.url, a.threshold), encoding="utf-8")
        t0 = time.perf_counter()
        p = corral(tmp, "run", "job.yaml", "--json")
        wall = time.perf_counter() - t0
        s1 = run_summary(p.stdout)
        run1 = s1["run_id"]
        sc = server_counts(srv)
        scost = server_cost(sc)
        m1 = measure(tmp, run1)
        show(f"Run 1 ({run1}, exit {p.returncode}, {wall:.1f} s): {s1['rows_in']} rows, "
             f"{s1['rows_written']} written, {s1['rows_quarantined']} quarantined, {s1['rows_review']} review", s1, m1, sc, scost)
        checked = check(m1, s1, None if a.late else sc, scost)
        if a.late:
            ok = sum(v["ok"] for v in sc.values())
            gap = ok - m1["ledger"]["calls"]
            print(f"\n--late: the server answered {ok} calls 200, the ledger has {m1['ledger']['calls']}: {gap} answers "
                  f"came after the client's timeout (not asserted), {dollars(scost - m1['ledger']['cost'])} of tokens "
                  "Corral never received")
            out["late_gap"] = {"server_200": ok, "ledger_paid": m1["ledger"]["calls"], "gap": gap,
                               "gap_cost": scost - m1["ledger"]["cost"]}
        print("\nserver, per provider (model routes):")
        for k, v in sc.items():
            print(f"  {k}: {v['requests']} requests = {v['ok']} answered 200 (paid) + failed "
                  f"{v['failed'] or {}} (status 0: hung, no answer); "
                  f"{v['input_tokens']:,} in / {v['output_tokens']:,} out tokens in the 200s")
            assert v["requests"] == v["ok"] + sum(v["failed"].values())
        print(f"corral cost by kind (paid + replayed): {m1['cost']['kinds']}")
        print(f"ledger rows with 0 tokens (a failed attempt recorded as a call): {m1['ledger']['zero_token_rows']}")

        # run 2: the same job again resumes its finished run; run 3: renamed, a new run that replays
        before = srv.requests.copy()
        p2 = corral(tmp, "run", "job.yaml", "--json")
        s2 = run_summary(p2.stdout)
        m2 = measure(tmp, s2["run_id"])
        job3 = job_yaml("sms-cost-rerun", srv.url, a.threshold)
        (tmp / "job.yaml").write_text(job3, encoding="utf-8")
        p3 = corral(tmp, "run", "job.yaml", "--json")
        s3 = run_summary(p3.stdout)
        m3 = measure(tmp, s3["run_id"])
        new_requests = sum((srv.requests - before).values())
        show(f"Run 2: the same job again ({s2['run_id']}: the same run resumed, exit {p2.returncode})", s2, m2, None, None)
        show(f"Run 3: the job renamed ({s3['run_id']}: a new run in the same store, exit {p3.returncode}), "
             f"server requests meanwhile: {new_requests}", s3, m3, None, None)
        check(m3, s3, None, None)
        assert s2["run_id"] == run1 and m2["ledger"]["calls"] == m1["ledger"]["calls"]
        assert m3["ledger"]["calls"] == 0 and m3["cost"]["cost"] == 0, "a rerun paid for a call"
        assert m3["ledger"]["replayed"] == m1["ledger"]["calls"] + m1["ledger"]["replayed"], (
            m3["ledger"]["replayed"], m1["ledger"]["calls"], m1["ledger"]["replayed"])
        assert (m3["ledger"]["replay_input_tokens"], m3["ledger"]["replay_output_tokens"]) == (
            m1["ledger"]["input_tokens"] + m1["ledger"]["replay_input_tokens"],
            m1["ledger"]["output_tokens"] + m1["ledger"]["replay_output_tokens"])
        # what run 3's replays cost when first paid for: run 1's calls (its own replays at their first price)
        assert m3["cost"]["replay_value"] == m1["cost"]["cost"] + m1["cost"]["replay_value"], (
            m3["cost"]["replay_value"], m1["cost"]["cost"], m1["cost"]["replay_value"])
        print(f"run 3's replays, at the price first paid (corral cost replay_value): {dollars(m3['cost']['replay_value'])}"
              f" = run 1's cost {dollars(m1['cost']['cost'])} + run 1's own replays {dollars(m1['cost']['replay_value'])}")
        assert new_requests == 0, f"the reruns sent {new_requests} requests"
        checked.append("rerun: 0 paid calls, $0, replays == run 1's calls + replays (tokens too), 0 new server requests")
    print("\nasserted:\n- " + "\n- ".join(checked))
    out.update({"wall_s_run1": round(wall, 2), "run1": {"summary": s1, **m1}, "server": sc,
                "server_cost": scost, "run2": {"summary": s2, **m2}, "run3": {"summary": s3, **m3},
                "server_requests_during_reruns": new_requests, "asserted": checked})
    print(f"\nwrote {write_result('cost_totals_late' if a.late else 'cost_totals', out)}")


if __name__ == "__main__":
    main()
