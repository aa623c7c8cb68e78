"""``corral serve``: the run pages live, for every run in the store, and the review queue as
pages where a person reads a held record's trace and accepts, edits or rejects its answer.

Routes (all GET but the decision):

  /                              the runs, newest first
  /run/RUN[?quarantined=N&review=N]   the run's page (:mod:`corral._run_page`), paged from row N
  /run/RUN/review[?offset=N]     the rows held for review, with their reasons and answers
  /run/RUN/record/KEY            the record: input, state, every call's prompt, response and
                                 answer, the strategy's decisions; held: the decision form
  POST /run/RUN/record/KEY       a decision (accept, edit, reject) through :mod:`corral._review`

Safety:

- bound to 127.0.0.1 by default, and then only requests naming a loopback host (``Host:``) are
  answered, so a web page elsewhere cannot reach the server through a DNS name it controls;
- bound elsewhere, a token is required (one is made when ``--token`` is not given): a request
  carries it as ``?token=`` (the URL printed at start) or in the cookie that URL sets; anything
  else gets 403. The token is never written to the log;
- a decision is a POST whose form carries the server's secret (made at start, put in the
  forms it serves): a page of another site cannot post one (it cannot read the secret);
- every request opens the store on its own and closes it; decisions are made one at a time.

Ctrl-C or SIGTERM stops the server at once (a decision being written finishes first, 5 s at most).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from corral import _review, _run_page
from corral._html import e, page, table
from corral._result import summarize
from corral.errors import CorralError, RunNotFoundError, StoreError, UserError
from corral.report import decision_lines, money
from corral.store import Store, open_store
from corral.store.base import ReviewDecision, RunInfo, TraceEvent
from corral.store.leases import live_status

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8321
#: the cookie a valid ``?token=`` sets, so the pages' links need not carry it
COOKIE = "corral_token"
#: the largest decision form read (an edited answer included)
MAX_FORM_BYTES = 1 << 20
#: runs listed on the index
RUNS_LISTED = 200
#: held rows per page of the review queue
QUEUE_PAGE = 100
#: how long a stop waits for a decision being written
STOP_WAIT_S = 5.0
ACTIONS = ("accept", "edit", "reject")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Settings:
    """What the server was started with."""

    store: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    #: the secret each decision form carries (made at start)
    form_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: who decides, as the forms suggest it before the person types their name
    who: str = field(default_factory=lambda: _review.reviewer())
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


class PagesServer(ThreadingHTTPServer):
    """The HTTP server; its request threads are daemons (a stop never waits for a client)."""

    daemon_threads = True
    allow_reuse_address = True  # a port a stopped server left in TIME_WAIT is free at once

    def __init__(self, settings: Settings) -> None:
        if settings.token is None and not is_loopback(settings.host):
            # its Host check alone would not do: a client elsewhere can name 127.0.0.1 in its request
            raise UserError(f"a server bound to {settings.host} needs a token: give --token T (or "
                            "Settings(token=...)), or bind 127.0.0.1")
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.address_family = family
        super().__init__((settings.host, settings.port), Handler)
        self.settings = settings
        self.deciding = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Reply(Exception):
    """A reply other than a page: a redirect, or an error page with its status."""

    def __init__(self, status: int, message: str = "", location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.location = location


_ROUTE = re.compile(r"^/run/(?P<run>[^/]+)(?:/(?P<what>review|record)(?:/(?P<key>.+))?)?/?$")


class Handler(BaseHTTPRequestHandler):
    server: PagesServer
    server_version = "corral-serve"
    sys_version = ""
    timeout = 60  # a client that stops sending is dropped

    # --- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # one line per request is logged by _done, without the query (it may hold the token)

    def _done(self, status: int) -> None:
        self.server.settings.log(f"{self.command} {urlsplit(self.path).path} {status}")

    def _send(self, status: int, body: str, *, headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._done(status)  # logged before the body goes: a client that has the answer finds it logged
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        title = f"{status} {HTTPStatus(status).phrase}"
        self._send(status, page(f"corral serve · {title}", [
            f"<h1>{e(title)}</h1>", f'<p class="error">{e(message)}</p>', '<p><a href="/">all runs</a></p>']))

    def _authorized(self, query: dict[str, list[str]]) -> tuple[bool, str | None]:
        """(whether the request may be answered, the cookie to set). Without a token: any request
        naming a loopback host. With one: a request carrying it, in the query or the cookie."""
        s = self.server.settings
        if s.token is None:
            return is_loopback(_host_name(self.headers.get("Host") or "")), None
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode(), s.token.encode()):
            return True, f"{COOKIE}={s.token}; Path=/; HttpOnly; SameSite=Strict"
        jar = SimpleCookie()
        with contextlib.suppress(Exception):
            jar.load(self.headers.get("Cookie") or "")
        held = jar.get(COOKIE)
        return bool(held and hmac.compare_digest(held.value.encode(), s.token.encode())), None

    def _handle(self, post: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ok, cookie = self._authorized(query)
        if not ok:
            why = ("this server needs its token: open the URL `corral serve` printed (it ends in ?token=...)"
                   if self.server.settings.token else
                   "this server answers requests for 127.0.0.1 or localhost only")
            self._error(403, why)
            return
        headers = {"Set-Cookie": cookie} if cookie else {}
        try:
            body = self._post(url.path) if post else self._get(url.path, query)
        except Reply as r:
            if r.location or r.status == 204:
                self.send_response(r.status)
                if r.location:
                    self.send_header("Location", r.location)
                self.send_header("Content-Length", "0")
                for k, v in headers.items():
                    self.send_header(k, v)
                self._done(r.status)
                self.end_headers()
            else:
                self._error(r.status, r.message)
            return
        except (UserError, StoreError) as err:
            self._error(404 if isinstance(err, RunNotFoundError) else 400, str(err))
            return
        except CorralError as err:
            self._error(500, str(err))
            return
        except Exception as err:  # a bug: one line in the log and a page saying so, the server goes on
            self.server.settings.log(f"error: {self.command} {url.path}: {type(err).__name__}: {err}")
            self._error(500, f"Corral failed on this page ({type(err).__name__}: {err}); please report it")
            return
        self._send(200, body, headers=headers)

    def do_GET(self) -> None:  # noqa: N802 (the base's name)
        self._handle(post=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(post=False)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(post=True)

    @contextlib.contextmanager
    def _store(self) -> Iterator[Store]:
        st = open_store(self.server.settings.store, create=False, check=False)
        try:
            yield st
        finally:
            st.close()

    # --- routes --------------------------------------------------------------------------

    def _get(self, path: str, query: dict[str, list[str]]) -> str:
        if path == "/favicon.ico":
            raise Reply(204)  # no icon: an empty answer, not an error in the browser's console
        if path in ("", "/"):
            with self._store() as st:
                return index_page(st)
        m = _ROUTE.match(path)
        if m is None:
            raise Reply(404, f"no page at {path}: start from the list of runs at /")
        with self._store() as st:
            info = _run(st, unquote(m["run"]))
            if m["what"] is None:
                offsets = {s: _int(query, s) for s in ("quarantined", "review")}
                return _run_page.render(_run_page.build(st, info, offsets=offsets), _run_page.served_links())
            if m["what"] == "review" and m["key"] is None:
                return queue_page(st, info, _int(query, "offset"), _flash(query))
            if m["what"] == "record" and m["key"]:
                return record_page(st, info, unquote(m["key"]), self.server.settings)
        raise Reply(404, f"no page at {path}")

    def _post(self, path: str) -> str:
        m = _ROUTE.match(path)
        if m is None or m["what"] != "record" or not m["key"]:
            raise Reply(405, "only a record's page takes a decision (POST /run/RUN/record/KEY)")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise Reply(400, "the request's Content-Length is not a number") from None
        if n > MAX_FORM_BYTES:
            raise Reply(413, f"the form is larger than {MAX_FORM_BYTES:,} bytes")
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        s = self.server.settings
        if not hmac.compare_digest(form.get("secret", "").encode(), s.form_secret.encode()):
            raise Reply(403, "this form is not one this server served (reload the record's page and decide again)")
        key = unquote(m["key"])
        action = form.get("action", "")
        who = form.get("who", "").strip()
        if action not in ACTIONS:
            raise Reply(400, f"unknown action `{action}`: one of {', '.join(ACTIONS)}")
        if not who:
            raise Reply(400, "say who decides: fill in the `who` field")
        with self._store() as st:
            info = _run(st, unquote(m["run"]))
            try:
                decision = _decide(self.server, st, info, key, action, who, form)
            except UserError as err:  # an edit that does not validate: the form again, with why
                return record_page(st, info, key, s, error=str(err), form=form)
        done = f"{action}:{key}:{decision.who}"
        raise Reply(303, location=f"/run/{quote(info.id)}/review?done={quote(done, safe='')}")


def _host_name(header: str) -> str:
    """The host of a ``Host:`` header, without its port: ``[::1]:8321`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0]


def _decide(server: PagesServer, st: Store, info: RunInfo, key: str, action: str, who: str,
            form: dict[str, str]) -> ReviewDecision:
    answer: Any = None
    if action == "edit":
        text = form.get("answer", "")
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"the edited answers are not JSON ({err.msg} at character {err.pos}): "
                            'write them as a JSON object of step: answer, e.g. {"category": "billing"}') from None
        if not isinstance(answer, dict):
            raise UserError('the edited answers must be a JSON object of step: answer, e.g. {"category": "billing"}')
    note = form.get("note", "").strip() or None
    with server.deciding:
        return _review.decide(st, info, key, action, who=who, answer=answer, note=note)


def _int(query: dict[str, list[str]], name: str) -> int:
    try:
        return max(0, int((query.get(name) or ["0"])[0]))
    except ValueError:
        return 0


def _flash(query: dict[str, list[str]]) -> str | None:
    done = (query.get("done") or [""])[0]
    if not done:
        return None
    action, _, rest = done.partition(":")
    key, _, who = rest.rpartition(":")
    verb = {"accept": "accepted", "edit": "edited and written", "reject": "rejected"}.get(action, action)
    return f"Record {key}: {verb} by {who}."


def _run(st: Store, run: str) -> RunInfo:
    from corral._eval import resolve_run

    info = st.get_run(run)
    return info if info is not None else resolve_run(st, run)


# --- pages -----------------------------------------------------------------------------------


def _nav(*links: tuple[str, str]) -> str:
    return "<nav>" + "".join(f'<a href="{e(href)}">{e(text)}</a>' for href, text in links) + "</nav>"


def index_page(st: Store) -> str:
    """The runs in the store, newest first, each linked to its page and its review queue."""
    rows = []
    for info in st.list_runs(RUNS_LISTED):
        r = summarize(st, info, status=live_status(st, info))
        run = f'<a href="/run/{e(quote(info.id))}">{e(info.id)}</a>'
        review = (f'<a href="/run/{e(quote(info.id))}/review">{r.review:,}</a>' if r.review else "0")
        rows.append((run, e(r.job), e(r.status), f"{r.rows_in:,}", f"{r.written:,}", f"{r.quarantined:,}",
                     review, f"{r.skipped:,}", f"{r.pending:,}", f"{r.calls_made:,}",
                     e("unknown" if r.cost_usd is None else f"${float(r.cost_usd):,.4f}"),
                     e(time.strftime("%Y-%m-%d %H:%M", time.localtime(info.updated_at)))))
    body = ["<h1>Corral · runs</h1>"]
    if not rows:
        body.append('<p class="meta">No runs in this store yet: start one with <code>corral run JOB.yaml</code>.</p>')
    else:
        body.append(table("", ("run", "job", "status", "in", "written", "quarantined", "review", "skipped",
                               "pending", "calls", "cost", "updated"), rows, raw=True, cls="runs"))
    return page("corral · runs", body)


def queue_page(st: Store, info: RunInfo, offset: int, flash: str | None = None) -> str:
    """The run's rows held for review (a page of :data:`QUEUE_PAGE`), each linked to its record,
    and the latest decisions made on the run (who, when)."""
    items = _review.held(st, info)
    run_url = f"/run/{quote(info.id)}"
    body = [_nav(("/", "all runs"), (run_url, f"run {info.id}")),
            f"<h1>Review queue · run {e(info.id)} · job {e(info.job_name)}</h1>"]
    if flash:
        body.append(f'<p class="flash" id="flash">{e(flash)}</p>')
    shown = items[offset:offset + QUEUE_PAGE]
    body.append(f'<p class="meta" id="held-count">{len(items):,} row{"" if len(items) == 1 else "s"} held for review'
                + (f" · rows {offset + 1:,}–{offset + len(shown):,}" if shown else "") + "</p>")
    rows = []
    for it in shown:
        link = f'<a href="{e(run_url)}/record/{e(quote(it.key, safe=""))}">{e(it.key)}</a>'
        missing = f" (no answer yet: {', '.join(it.missing)})" if it.missing else ""
        rows.append((link, e(it.reason or ""), e(_short(it.answers) + missing)))
    if rows:
        body.append(table("", ("key", "reason", "held answers"), rows, raw=True, cls="queue", text_cols=(1, 2)))
    if offset + QUEUE_PAGE < len(items):
        body.append(f'<p><a class="more" href="{e(run_url)}/review?offset={offset + QUEUE_PAGE}">'
                    f"next {min(QUEUE_PAGE, len(items) - offset - QUEUE_PAGE):,}</a></p>")
    decided = _review.decisions(st, info)
    if decided:
        body.append(_decisions_table(f"Decisions ({len(decided):,}, latest first)", decided[-50:][::-1]))
    return page(f"corral · review · {info.id}", body)


def _decisions_table(title: str, decided: list[ReviewDecision]) -> str:
    """Who decided what and when; each key linked to its record, an edit with what it wrote."""
    rows = []
    for d in decided:
        link = f'<a href="/run/{e(quote(d.run_id))}/record/{e(quote(d.key, safe=""))}">{e(d.key)}</a>'
        wrote = _short(d.outputs) if d.action == "edit" and d.outputs else ""
        rows.append((link, e(d.action), e(d.who), e(_review.when(d.at)), e(d.state), e(wrote), e(d.note or "")))
    return table(title, ("key", "action", "who", "when", "now", "wrote", "note"), rows, raw=True,
                 cls="decisions", text_cols=(1, 2, 4, 5, 6))


def _short(v: Any, n: int = 160) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return text if len(text) <= n else text[: n - 1] + "…"


def _pre(text: Any, cls: str = "") -> str:
    shown = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=2)
    return f'<pre{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{e(shown)}</pre>'


def _call_html(c: TraceEvent) -> str:
    d = c.info
    tag = "replayed" if c.replayed else "paid call" if c.replayed is False else "no response"
    head = [f"step {c.step}", f"attempt {c.attempt + 1}"] + ([str(d["role"])] if d.get("role") else []) + [c.outcome, tag]
    about = []
    if d.get("strategy"):
        about.append(f"strategy {d['strategy']}")
    model = d.get("model") or (c.response or {}).get("model")
    if model:
        about.append(f"model {model}")
    if d.get("confidence") is not None:
        about.append(f"confidence {float(d['confidence']):.2f}")
    if c.cost_usd is not None and c.replayed is False:
        about.append(f"cost {money(c.cost_usd)}")
    out = [f'<div class="call"><h3>{e(" · ".join(head))}</h3>']
    if about:
        out.append(f'<p class="meta">{e(" · ".join(about))}</p>')
    if c.detail:
        out.append(f'<p class="meta">detail: {e(c.detail)}</p>')
    for m in (c.request or {}).get("messages") or []:
        out.append(f'<p class="meta">prompt [{e(m.get("role"))}]</p>' + _pre(m.get("content", ""), "prompt"))
    if c.response:
        usage = c.response.get("usage") or {}
        out.append(f'<p class="meta">response · finish {e(c.response.get("finish_reason"))} · '
                   f'{e(usage.get("input_tokens"))} in / {e(usage.get("output_tokens"))} out tokens</p>'
                   + _pre(c.response.get("text", ""), "response"))
    if d.get("answer") is not None:
        out.append('<p class="meta">parsed answer</p>' + _pre(d["answer"], "answer"))
    reasoning = d.get("reasoning") or (c.response or {}).get("reasoning")
    if reasoning:
        out.append('<p class="meta">reasoning</p>' + _pre(str(reasoning)))
    problems = d.get("problems") or []
    if problems:
        out.append('<p class="meta">failed checks</p><ul>' + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>")
    out.append("</div>")
    return "".join(out)


def _trace_html(trace: list[TraceEvent]) -> list[str]:
    out = []
    for c in trace:
        if c.kind == "decision":
            lines = decision_lines(c)
            out.append(f'<div class="decision">» {e(lines[0])}'
                       + "".join(f"<br>{e(x)}" for x in lines[1:]) + "</div>")
            continue
        out.append(_call_html(c))
        if c.info.get("accepted") is True:
            import dataclasses

            line = decision_lines(dataclasses.replace(c, outcome="accepted"))[0]
            out.append(f'<div class="decision">» {e(line)}</div>')
    return out


def record_page(st: Store, info: RunInfo, key: str, settings: Settings, *, error: str | None = None,
                form: dict[str, str] | None = None) -> str:
    """A record: its input, state, outputs and trace; when it is held, the decision form."""
    rec = st.record(info.id, key)
    if rec is None:
        raise Reply(404, f"run {info.id} has no record with key `{key}`")
    trace = st.record_calls(info.id, key)
    body = [_nav(("/", "all runs"), (f"/run/{quote(info.id)}", f"run {info.id}"),
                 (f"/run/{quote(info.id)}/review", "review queue")),
            f"<h1>Record {e(key)} · run {e(info.id)}</h1>",
            f'<p class="meta" id="state">state <b>{e(rec.state)}</b>'
            + (f" · reason: {e(rec.reason)}" if rec.reason else "")
            + (f" · source line {rec.line}" if rec.line else "") + "</p>"]
    if error:
        body.append(f'<p class="error" id="error">{e(error)}</p>')
    if rec.state == "review":
        body.append(_decision_form(info, _review.held_row(st, info, key), settings, form or {}))
    decided = _review.decisions(st, info, key)
    if decided:
        body.append(_decisions_table("Decisions on this record", decided))
    body.append("<h2>Input</h2>")
    body.append(table("", ("column", "value"), [(k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
                                               for k, v in (rec.data or {}).items()], text_cols=(1,)))
    if rec.outputs:
        body.append("<h2>Outputs</h2>" + _pre(rec.outputs, "outputs"))
    calls = sum(c.kind == "call" for c in trace)
    body.append(f"<h2>Trace ({calls:,} call{'' if calls == 1 else 's'})</h2>")
    body += _trace_html(trace)
    return page(f"corral · {info.id} · {key}", body)


def _decision_form(info: RunInfo, rec: _review.HeldRow, s: Settings, form: dict[str, str]) -> str:
    """One form, three buttons: accept the held answers, write the edited ones (the JSON object
    of step -> answer in the text box, prefilled with the held ones), or reject the row."""
    answer = form.get("answer") or json.dumps(rec.answers, ensure_ascii=False, indent=2)
    action = f"/run/{quote(info.id)}/record/{quote(rec.key, safe='')}"
    return (
        f'<h2>Decide</h2><form class="decide" id="decide" method="post" action="{e(action)}">'
        f'<input type="hidden" name="secret" value="{e(s.form_secret)}">'
        f'<p><label>who <input name="who" id="who" required value="{e(form.get("who", s.who))}"></label></p>'
        '<p><label>answers (a JSON object of step: answer; used by edit)<br>'
        f'<textarea name="answer" id="answer">{e(answer)}</textarea></label></p>'
        f'<p><label>note <input name="note" id="note" size="48" value="{e(form.get("note", ""))}"></label></p>'
        '<p><button type="submit" name="action" value="accept" id="accept">Accept the held answer</button> '
        '<button type="submit" name="action" value="edit" id="edit">Write the edited answer</button> '
        '<button type="submit" name="action" value="reject" id="reject">Reject (quarantine)</button></p>'
        "</form>"
    )


# --- running ---------------------------------------------------------------------------------


def url_of(server: PagesServer) -> str:
    """The URL to open: the bound host (this machine's name when bound to every address), the
    port, and the token when there is one."""
    s = server.settings
    host = s.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/" + (f"?token={s.token}" if s.token else "")


def serve(server: PagesServer, announce: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM; ``announce`` gets the lines to print (the URL first)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    announce(f"corral serve: {url_of(server)}  (store {server.settings.store}; Ctrl-C stops it)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.deciding.acquire(timeout=STOP_WAIT_S):  # a decision being written finishes
            server.deciding.release()
        server.server_close()
    announce("corral serve: stopped")
