"""`corral report RUN --html FILE` and `corral serve`: real runs (the engine, the SQLite store, the
fake model, a check that holds rows), the page's figures checked against `corral cost --json`
and the store, and the server driven over real HTTP (urllib) -- its safety checks (the Host
header, the token, the form secret) and the decisions it takes landing in the run's sink."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral import Job, _run_page, _serve
from corral.cli import main
from corral.store import open_store
from corral.store.base import ActivityBin
from tests.conftest import ROOT, write, write_csv

ROWS = [
    ("t1", "my invoice is wrong"),
    ("t2", "the parcel never arrived"),
    ("t3", "cannot log in to my account"),
    ("t4", "refund please"),
    ("t5", "app crashes on start"),
    ("t6", "where is my order"),
]
#: the fake model answers `shipping` for these rows, which the check holds for review
HELD = ["t1", "t2", "t4", "t5"]
STEP = """  - name: category
    task: classify
    input: "{text}"
    labels: [billing, shipping, technical, account]
    checks: ["label != 'shipping'"]
"""


def make_job(tmp: Path, rows: Any = ROWS, name: str = "tickets", model: str = "fake") -> Path:
    write_csv(tmp / f"{name}.csv", ["id", "text"], rows)
    return write(tmp / f"{name}.yaml", f"name: {name}\nsource: {name}.csv\nkey: id\nmodel: {model}\n"
                 f"tags: {{team: support}}\nsteps:\n{STEP}sink: out/{name}.csv\n")


def cli(*args: str, code: int = 0) -> Any:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == code, (r.output, r.stderr)
    return r


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


@pytest.fixture
def held_run(tmp_path: Path) -> tuple[Path, str]:
    job = make_job(tmp_path)
    res = corral.run(job)
    assert res.status == "finished" and res.review == len(HELD)
    return job, res.run


def cost_total(run: str) -> Any:
    return json.loads(cli("cost", run, "--json").stdout)["total"]["cost"]


def self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "src=" not in html and "@import" not in html
    assert "https://" not in html and html.count("http://") == html.count('xmlns="http://www.w3.org/2000/svg"')


def report(run: str, tmp: Path, name: str = "run.html") -> str:
    page = tmp / "pages" / name
    r = cli("report", run, "--html", str(page))
    assert f"run page: {page} (run " in r.stderr
    return page.read_text(encoding="utf-8")


# --- corral report ---------------------------------------------------------------------------


def test_report_is_one_self_contained_page_of_the_run(tmp_path, held_run):
    job, run = held_run
    html = report(run, tmp_path)
    self_contained(html)
    assert f"<h1>Run {run} · job tickets</h1>" in html
    assert ">6 in = 2 written + 0 quarantined + 4 review + 0 skipped + 0 pending</p>" in html
    assert "<svg" in html and 'aria-label="rows by state"' in html
    # cost by step, by tag and by kind; the total is corral cost's
    for cls in ("cost-by-step", "cost-by-tag", "cost-by-kind"):
        assert f'class="{cls}"' in html
    assert "<td>team=support</td>" in html and "<td>category</td>" in html
    assert f'id="cost-total" data-usd="{cost_total(run)}">$0.0000<' in html
    # the label mix of this run alone (the job's first), the held rows with their reasons
    assert "no previous finished run of this job to compare with" in html
    assert 'aria-label="label mix of category"' in html
    assert "Rows held for review (4)" in html
    held = html.split('class="rows-review"')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(t\d)</td>", held) == HELD
    assert "check `label != &#x27;shipping&#x27;` failed" in held
    assert "/record/" not in html  # a written page links nowhere
    assert "Throughput" in html and "6 paid calls" in html


def test_report_cost_equals_corral_cost_and_mix_is_against_the_previous_run(tmp_path):
    rows = [(f"r{i}", f"ticket number {i} about things") for i in range(40)]
    spec = {"name": "nightly", "source": "in.csv", "key": "id", "tags": {"team": "a"},
            "model": {"name": "fake", "price_per_call": 0.0015},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["x", "y", "z"]}],
            "sink": "out/n.csv"}
    write_csv(tmp_path / "in.csv", ["id", "text"], rows)
    first = corral.run(Job.from_dict(spec, base_dir=tmp_path))
    write_csv(tmp_path / "in.csv", ["id", "text"], rows[:25] + [(f"s{i}", f"other {i}") for i in range(10)])
    second = corral.run(Job.from_dict(spec, base_dir=tmp_path))
    assert first.run != second.run and second.calls_replayed == 25 and second.calls_made == 10
    html = report(second.run, tmp_path)
    total = cost_total(second.run)
    assert Decimal(total) == Decimal("0.015") and f'data-usd="{total}">$0.0150<' in html
    st = open_store()
    try:
        assert _run_page.cost_total(st, second.run) == Decimal(total)
    finally:
        st.close()
    assert f"against the previous run of job nightly: run {first.run}, finished" in html
    assert "previous (40)" in html and "this run (35)" in html and "distance from the previous run" in html
    assert "10 paid calls, 25 replayed from the store" in html
    assert "<td>replay</td>" in html  # the kind of call


def test_report_of_a_run_with_no_calls_all_replayed(tmp_path, held_run):
    job, run = held_run
    other = make_job(tmp_path, name="again")  # the same prompts: every answer is in the store
    res = corral.run(other)
    assert (res.calls_made, res.calls_replayed) == (0, len(ROWS))
    html = report(res.run, tmp_path)
    self_contained(html)
    assert "0 paid calls, 6 replayed from the store" in html
    assert f'data-usd="{cost_total(res.run)}">$0.0000<' in html


def test_report_of_an_unknown_price_says_unknown_never_zero(tmp_path):
    write_csv(tmp_path / "in.csv", ["id", "text"], [("a", "one"), ("b", "two")])
    spec = {"name": "free", "source": "in.csv", "key": "id", "model": {"name": "fake", "price_per_call": None},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["x", "y"]}],
            "sink": "out/f.csv"}
    res = corral.run(Job.from_dict(spec, base_dir=tmp_path))
    assert res.cost_usd is None and cost_total(res.run) is None
    html = report(res.run, tmp_path)
    assert 'id="cost-total" data-usd="unknown">unknown<' in html and 'id="fig-cost-total">unknown<' in html
    assert "$0.0000" not in html and "2 paid calls without a price" in html
    r = cli("report", res.run, "--html", str(tmp_path / "f.html"))
    assert "cost unknown" in r.stderr


def test_report_draws_confidences_and_throughput(tmp_path):
    rows = [(f"r{i}", f"message {i} " + ("win a prize now" if i % 4 == 0 else "see you at lunch")) for i in range(60)]
    write_csv(tmp_path / "in.csv", ["id", "text"], rows)
    write_csv(tmp_path / "truth.csv", ["text", "label"], [(t, "spam" if "prize" in t else "ham") for _, t in rows])
    spec = {"name": "sms", "source": "in.csv", "key": "id",
            "model": {"name": "fake", "truth": "truth.csv", "accuracy": 0.8, "logprobs": True},
            "steps": [{"name": "label", "task": "classify", "input": "{text}", "labels": ["ham", "spam"],
                       "min_confidence": 0.5}],
            "sink": "out/s.csv"}
    res = corral.run(Job.from_dict(spec, base_dir=tmp_path))
    assert res.review > 0 and res.written > 0
    st = open_store()
    try:
        info = st.get_run(res.run)
        assert info is not None
        pg = _run_page.build(st, info)
    finally:
        st.close()
    html = _run_page.render(pg)
    self_contained(html)
    fig = html.split('<figure class="confidence">')[1].split("</figure>")[0]
    assert 'aria-label="confidence histogram, step label"' in fig and "not accepted by the run" in fig
    assert f"step label: {res.written:,} accepted answers, mean confidence" in fig
    assert f"{res.review:,} not accepted" in fig
    # a run over ten seconds: its throughput is drawn (the bins as the store counts them)
    assert pg.activity and "too short a run to plot" in html
    pg.activity = [ActivityBin(1000.0 + i, 1.0, answers=6, calls=6, replayed=0) for i in range(10)]
    html = _run_page.render(pg)
    plot = html.split('<figure class="throughput">')[1].split("</figure>")[0]
    assert plot.count("<polyline") == 2 and "answers per s" in plot and "paid calls per s" in plot
    assert "60 answers accepted and 60 paid calls" in plot and "over 10 s" in plot


def test_report_failures_are_one_line_with_the_fix_and_exit_2(tmp_path, held_run):
    job, run = held_run
    blocker = write(tmp_path / "afile", "not a folder")
    cases = [
        (["report", run], "--html FILE is required"),
        (["report", "no-such-run", "--html", "x.html"], "no run matches `no-such-run`"),
        (["report", run, "--html", str(blocker / "run.html")], "give --html a writable path"),
        (["report", run, "--html", "x.html", "--store", str(tmp_path / "nope.db")], "nope.db"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, (args, err)
    assert not (tmp_path / "x.html").exists()


# --- corral serve over HTTP ---------------------------------------------------------------------


class Client:
    """urllib against a server: no redirects followed, cookies kept, the status and body returned."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie = ""

    def request(self, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=dict(headers or {}))
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=10) as r:
                status, text, hdrs = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as err:
            status, text, hdrs = err.code, err.read().decode(), err.headers
        cookie = hdrs.get("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return status, text, hdrs

    def get(self, path: str, **kw: Any) -> tuple[int, str]:
        status, text, _ = self.request(path, **kw)
        return status, text

    def form_secret(self, run: str, key: str) -> str:
        status, text = self.get(f"/run/{run}/record/{key}")
        assert status == 200, text
        m = re.search(r'name="secret" value="([^"]+)"', text)
        assert m, text
        return m.group(1)

    def decide(self, run: str, key: str, action: str, who: str = "alice", **form: str) -> tuple[int, str, Any]:
        data = {"secret": self.form_secret(run, key), "action": action, "who": who, **form}
        return self.request(f"/run/{run}/record/{key}", data=data)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def start(**settings: Any) -> tuple[_serve.PagesServer, threading.Thread]:
    s = _serve.Settings(store=Path(open_store().path), port=0, log=lambda line: None, **settings)
    server = _serve.PagesServer(s)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return server, t


@pytest.fixture
def served(held_run) -> Iterator[tuple[Client, str, Path]]:
    job, run = held_run
    server, t = start(who="tester")
    try:
        yield Client(f"http://127.0.0.1:{server.port}"), run, job.parent
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_served_pages_link_the_runs_the_queue_and_the_records(served):
    c, run, _ = served
    status, index = c.get("/")
    assert status == 200 and f'<a href="/run/{run}">{run}</a>' in index and f'href="/run/{run}/review">4</a>' in index
    status, page = c.get(f"/run/{run}")
    assert status == 200 and f'href="/run/{run}/record/t1">t1</a>' in page and f'href="/run/{run}/review"' in page
    assert "6 in = 2 written + 0 quarantined + 4 review" in page
    status, queue = c.get(f"/run/{run}/review")
    assert status == 200 and ">4 rows held for review" in queue
    assert re.findall(r'/record/(t\d)">', queue) == HELD
    status, rec = c.get(f"/run/{run}/record/t1")
    assert status == 200 and "state <b>review</b>" in rec and 'id="decide"' in rec
    assert "my invoice is wrong" in rec and "Trace (1 call)" in rec and "prompt [user]" in rec
    assert 'value="tester"' in rec  # who, as the form suggests it
    assert c.get("/run/no-such-run")[0] == 404
    assert c.get(f"/run/{run}/record/nope")[0] == 404
    assert c.get("/nothing/here")[0] == 404
    assert c.get("/favicon.ico")[0] == 204


def test_accept_edit_reject_over_http_land_in_the_sink(served):
    c, run, folder = served
    status, _, hdrs = c.decide(run, "t1", "accept", who="alice")
    assert status == 303 and hdrs["Location"].startswith(f"/run/{run}/review?done=")
    status, queue = c.get(hdrs["Location"])
    assert status == 200 and "Record t1: accepted by alice." in queue
    status, _, _ = c.decide(run, "t2", "edit", who="bob", answer='{"category": "billing"}', note="an invoice")
    assert status == 303
    status, _, _ = c.decide(run, "t4", "reject", who="carol", note="spam")
    assert status == 303
    out = folder / "out"
    sink = read_csv(out / "tickets.csv")
    assert set(sink) == {"t1", "t2", "t3", "t6"}
    assert sink["t1"]["category"] == "shipping" and sink["t2"]["category"] == "billing"
    assert set(read_csv(out / "tickets.review.csv")) == {"t5"}
    assert set(read_csv(out / "tickets.quarantine.csv")) == {"t4"}
    # who decided and when, as `corral review list` shows them
    listed = json.loads(cli("review", "list", run, "--json").stdout)
    decided = {d["key"]: d["decision"] for d in listed["decided"]}
    assert {k: (d["action"], d["who"]) for k, d in decided.items()} == {
        "t1": ("accept", "alice"), "t2": ("edit", "bob"), "t4": ("reject", "carol")}
    assert all(d["when"] and time.time() - d["at"] < 60 for d in decided.values())
    status, queue = c.get(f"/run/{run}/review")
    assert ">1 row held for review" in queue and 'class="decisions"' in queue and "<td class=\"text\">bob</td>" in queue
    # a decided record shows its decision and no form
    status, rec = c.get(f"/run/{run}/record/t2")
    assert "state <b>done</b>" in rec and 'id="decide"' not in rec and '<td class="text">an invoice</td>' in rec
    assert '<td class="text">{&quot;category&quot;: &quot;billing&quot;}</td>' in rec
    # deciding it again says who did, the record unchanged
    status, text, _ = c.request(f"/run/{run}/record/t2", data={
        "secret": c.form_secret(run, "t5"), "action": "accept", "who": "dave"})
    assert status == 200 and "was edited by bob at" in text


def test_long_lists_are_paged(tmp_path):
    rows = [(f"k{i:03d}", f"message {i}") for i in range(230)]
    write_csv(tmp_path / "in.csv", ["id", "text"], rows)
    write(tmp_path / "all.yaml", "name: all\nsource: in.csv\nkey: id\nmodel: fake\nsink: out/all.csv\nsteps:\n"
          "  - name: topic\n    task: classify\n    input: \"{text}\"\n    labels: [a, b]\n"
          "    checks: [\"label == 'none'\"]\n")
    res = corral.run(tmp_path / "all.yaml")
    assert res.review == 230
    html = report(res.run, tmp_path)
    assert "rows 1–200 of 230" in html and f"and 30 more: <code>corral review list {res.run}</code>" in html
    server, t = start()
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        status, page = c.get(f"/run/{res.run}")
        assert status == 200 and "rows 1–200 of 230" in page
        assert f'href="/run/{res.run}?review=200#review">next 30 of the 30 more</a>' in page
        status, page = c.get(f"/run/{res.run}?review=200")
        assert "rows 201–230 of 230" in page and "k200" in page and ">k199<" not in page
        status, queue = c.get(f"/run/{res.run}/review")
        assert "230 rows held for review · rows 1–100" in queue and 'review?offset=100">next 100</a>' in queue
        status, queue = c.get(f"/run/{res.run}/review?offset=200")
        assert "rows 201–230" in queue and "next " not in queue
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_an_invalid_edit_shows_the_form_again_with_the_reason(served):
    c, run, folder = served
    for answer, reason in [('{"category": "nonsense"}', "breaks the schema at label: &#x27;nonsense&#x27; is not one of"),
                           ('{"category": "shipping"}', "does not pass the step&#x27;s checks"),
                           ("{not json", "the edited answers are not JSON"),
                           ('["billing"]', "must be a JSON object of step: answer")]:
        status, text, _ = c.decide(run, "t2", "edit", who="bob", answer=answer, note="kept")
        assert status == 200, text
        error = re.search(r'<p class="error" id="error">(.*?)</p>', text)
        assert error and reason in error.group(1), (answer, text)
        # the form again, what was typed back in it
        assert f'<textarea name="answer" id="answer">{html.escape(answer)}</textarea>' in text
        assert 'id="note" size="48" value="kept"' in text and 'value="bob"' in text
    assert "t2" in read_csv(folder / "out" / "tickets.review.csv")
    assert json.loads(cli("review", "list", run, "--json").stdout)["decided"] == []


def test_a_post_without_the_form_secret_is_refused(served):
    c, run, folder = served
    before = (folder / "out" / "tickets.csv").read_text()
    for secret in (None, "", "guessed"):
        data = {"action": "accept", "who": "mallory"}
        if secret is not None:
            data["secret"] = secret
        status, text, _ = c.request(f"/run/{run}/record/t1", data=data)
        assert status == 403 and "not one this server served" in text
    status, text, _ = c.request(f"/run/{run}/record/t1", data={
        "secret": c.form_secret(run, "t1"), "action": "approve", "who": "x"})
    assert status == 400 and "unknown action `approve`" in text
    status, text, _ = c.request(f"/run/{run}/record/t1", data={
        "secret": c.form_secret(run, "t1"), "action": "accept", "who": " "})
    assert status == 400 and "say who decides" in text
    assert c.request(f"/run/{run}", data={"x": "y"})[0] == 405
    assert (folder / "out" / "tickets.csv").read_text() == before
    assert json.loads(cli("review", "list", run, "--json").stdout)["decided"] == []


def test_a_request_for_another_host_name_is_refused(served):
    c, run, _ = served
    for host in ("evil.example", "evil.example:8321", "127.0.0.1.evil.example"):
        status, text = c.get(f"/run/{run}", headers={"Host": host})
        assert status == 403 and "127.0.0.1 or localhost only" in text, host
    for host in ("localhost:1", "127.0.0.1", "[::1]:8321"):
        assert c.get("/", headers={"Host": host})[0] == 200, host


def test_with_a_token_every_request_needs_it(held_run):
    job, run = held_run
    server, t = start(token="s3cret-token")
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        status, text = c.get(f"/run/{run}")
        assert status == 403 and "needs its token" in text and "s3cret" not in text
        assert c.get("/?token=wrong")[0] == 403
        assert c.get("/", headers={"Cookie": "corral_token=wrong"})[0] == 403
        status, _ = c.get("/?token=s3cret-token")
        assert status == 200 and c.cookie == "corral_token=s3cret-token"
        assert c.get(f"/run/{run}")[0] == 200  # the cookie carries it
        assert c.decide(run, "t1", "accept")[0] == 303
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_a_server_off_loopback_without_a_token_is_refused(held_run):
    with pytest.raises(corral.errors.UserError, match="needs a token"):
        start(host="0.0.0.0")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_command_makes_a_token_off_loopback_and_stops_at_once(tmp_path, held_run, sig):
    job, run = held_run
    p = subprocess.Popen([sys.executable, "-m", "corral", "serve", "--host", "0.0.0.0", "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        m = re.match(r"corral serve: http://[^:/]+:(\d+)/\?token=(\S+)  \(store .*; Ctrl-C stops it\)$", line)
        assert m, line
        port, token = m.groups()
        c = Client(f"http://127.0.0.1:{port}")
        assert c.get("/")[0] == 403
        assert c.get(f"/?token={token}")[0] == 200
        t0 = time.monotonic()
        p.send_signal(sig)
        assert p.wait(5) == 0 and time.monotonic() - t0 < 2
        assert p.stdout.read().strip() == "corral serve: stopped"
        err = p.stderr.read() if p.stderr else ""
        assert token not in err and "GET / 200" in err  # the log leaves the token out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_serve_failures_are_one_line_and_exit_2(tmp_path, held_run):
    server, t = start()
    try:
        cases = [
            (["serve", "--port", str(server.port)], "is in use"),
            (["serve", "--token", " "], "--token is empty"),
            (["serve", "--store", str(tmp_path / "nope.db")], "nope.db"),
            (["serve", "--host", "no.such.host.invalid", "--port", "0"], "check --host and --port"),
        ]
        for args, message in cases:
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 2, (args, r.output)
            err = r.stderr.strip()
            assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, (args, err)
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
