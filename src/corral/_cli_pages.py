"""``corral report`` and ``corral serve``: a run's page written to a file, and every run's page
served live with the review queue. The pages are :mod:`corral._run_page`'s; the server is
:mod:`corral._serve`'s. Registered in :mod:`corral.cli` (whose helpers are imported when a
command runs, so the two modules do not import each other at load time)."""

from __future__ import annotations

import errno
import secrets
from pathlib import Path

import click

from corral._cli_store import store_option

_store_option = store_option()


@click.command("report")
@click.argument("run")
@click.option("--html", "html", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Required. Write the run's page to FILE: one self-contained HTML file (no script, nothing fetched).")
@_store_option
def report_cmd(run: str, html: Path | None, store: Path | None) -> None:
    """Write a run's page (RUN: an id, a prefix of one, or a job name): rows by state, cost by
    step and tag, a histogram of the accepted answers' confidence, the label mix against the
    previous run of the job, throughput over time, and the quarantined and held rows with their
    reasons. The page is one HTML file that opens offline."""
    from corral import _run_page
    from corral.cli import _err, _fail, _run_of

    if html is None:
        _fail("--html FILE is required: where to write the run's page (e.g. --html run.html)")
    with _run_of(store, run) as (st, info):
        try:
            pg = _run_page.write(st, info, html)
        except OSError as e:
            _fail(f"cannot write {html}: {e.strerror or e}; give --html a writable path")
    total = "unknown" if pg.cost_total is None else f"${float(pg.cost_total):,.4f}"
    _err().print(f"run page: {html} (run {info.id}, {pg.summary.rows_in:,} rows, cost {total})", markup=False)


@click.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=8321, show_default=True,
              help="The port to listen on (0: any free port; the URL printed says which).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to bind. Anything but a loopback address needs a token (see --token).")
@click.option("--token", default=None, metavar="T",
              help="Require this token on every request (made for you when --host is not a loopback address); the URL printed carries it.")
@_store_option
def serve_cmd(port: int, host: str, token: str | None, store: Path | None) -> None:
    """Serve every run's page live, with each run's review queue, where a person reads a held
    record's trace and accepts, edits or rejects its answer. Bound to 127.0.0.1 unless --host;
    Ctrl-C stops it."""
    from corral import _serve
    from corral.cli import EXIT_USAGE, _fail, _reading
    from corral.store import default_store_path

    with _reading(store) as st:  # the store must exist and open: a mistyped --store is one line
        path = Path(getattr(st, "path", store or default_store_path()))
    if token is not None and not token.strip():
        _fail("--token is empty: give a token, or leave --token out to have one made")
    if token is None and not _serve.is_loopback(host):
        token = secrets.token_urlsafe(18)
    try:
        server = _serve.PagesServer(_serve.Settings(store=path, host=host, port=port, token=token))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            _fail(f"port {port} on {host} is in use (another corral serve?): pick another with --port N, "
                  "or --port 0 for any free one", EXIT_USAGE)
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e}; check --host and --port", EXIT_USAGE)

    def announce(line: str) -> None:
        click.echo(line)  # stdout: the URL, for a script to read

    _serve.serve(server, announce)
