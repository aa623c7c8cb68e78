"""``corral estimate``: the job's cost before it runs (see :mod:`corral._estimate`)."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from corral import report
from corral._cli_store import store_option
from corral._estimate import TIERS, Estimate, calibrate, estimate


def _usd(v: Any) -> str:
    return "unknown" if v is None else f"${float(v):,.4f}"


def _range(lo: Any, hi: Any) -> str:
    if lo is None or hi is None:
        return "unknown" if lo is None and hi is None else f"{_usd(lo)} – {_usd(hi)}"
    return f"{_usd(lo)} – {_usd(hi)}"


def _tier_factors(model: Any) -> dict[str, Decimal | None]:
    price = getattr(model, "price", None)
    discount = getattr(price, "batch_discount", None)
    batch = None if discount is None else 1 - discount
    flex = batch if model.id.startswith("openai:") else None
    return {"online": Decimal(1), "batch": batch, "flex": flex}


@click.command("estimate")
@click.argument("job_file", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--sample", metavar="N", type=click.IntRange(min=1), default=None,
              help="Run the first N rows for real (recorded: the later `corral run` does not pay for them again) and calibrate the estimate on them.")
@click.option("--model", "model_name", default=None, help="Estimate for this model instead of the job's, as in `corral run`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@store_option("the job's, found as `corral run` finds it: the --sample rows are recorded there")
def estimate_cmd(job_file: Path, sample: int | None, model_name: str | None, as_json: bool, store: Path | None) -> None:
    """Estimate what a job will cost: every prompt rendered and its tokens counted, times the
    calls per row its strategies are expected to make, times the model's prices; a low-high
    range online, in batch mode and on flex. Nothing is called without --sample."""
    from corral._build_models import make_model
    from corral.cli import _arun, _batch_gc, _err, _exit_codes, _fail, _parse_model_option
    from corral.engine import run_async
    from corral.job import Job
    from corral.store import open_store

    err = _err()
    model = _parse_model_option(model_name)
    with _exit_codes():
        job = Job.load(job_file)
        m = make_model(model or job.model, job.base_dir)
        est = estimate(job, m)
        if sample is not None:
            if sample > est.rows:
                _fail(f"--sample {sample} is more rows than the source has ({est.rows:,}); give --sample {est.rows} or fewer")
            view = report.PlainProgress(err)
            _batch_gc()
            with view:
                result = _arun(run_async(job_file, model=model, limit=sample, store=store,
                                         progress=view.update, handle_signals=True))
            if result.status not in ("preview", "finished"):
                _fail(f"the sample run ended {result.status}: {result.stop_reason}; fix it and run "
                      f"`corral estimate {job_file} --sample {sample}` again", 3)
            st = open_store(Path(result.store), create=False) if result.store else None
            try:
                spend: dict[str, Decimal | None] = {}
                if st is not None:
                    for r in st.record_spend(result.run):
                        cur = spend.get(r.key, Decimal(0))
                        spend[r.key] = None if cur is None or r.cost is None else cur + r.cost
            finally:
                if st is not None:
                    st.close()
            done = result.rows_in - result.pending
            per_row: list[Decimal | None] = list(spend.values()) + [Decimal(0)] * max(0, done - len(spend))
            cost = None if any(c is None for c in per_row) else sum((c for c in per_row if c is not None), Decimal(0))
            calibrate(est, per_row, cost, _tier_factors(m))
            est.sample = {**(est.sample or {}), "run": result.run}
    if as_json:
        click.echo(json.dumps(est.to_json()))
        return
    _print(est)
    sys.exit(0)


def _print(est: Estimate) -> None:
    out = _out_console()
    t = Table(title=f"{est.job}: {est.rows:,} rows")
    for name in ("step", "model", "calls/row", "input tok/call", "output tok/call", "tokenizer", "online $/row"):
        t.add_column(name, no_wrap=True)
    for step, legs in est.steps.items():
        for leg in legs:
            lo, hi = leg.cost["online"]
            t.add_row(step, leg.model, f"{leg.calls[0]:g}–{leg.calls[1]:g}", f"{leg.input_tokens:,.0f}",
                      f"{leg.output_tokens[0]}–{leg.output_tokens[1]}", leg.tokenizer, _range(lo, hi))
    out.print(t)
    for tier in TIERS:
        lo, hi = est.total[tier]
        out.print(f"{tier.capitalize():<7} {_range(lo, hi)}" + ("  (no flex tier for this provider)" if tier == "flex" and lo is None and hi is None else ""),
                  markup=False)
    s = est.sample
    if s is not None:
        if s.get("total_usd") is None:
            out.print(f"Sample  {s['rows']:,} rows: {s.get('note')}", markup=False)
        else:
            out.print(f"Sample  {s['rows']:,} rows cost {_usd(s['cost_usd'])} ({_usd(s['cost_per_row'])}/row, run {s['run']}); "
                      f"the other {s['rest_rows']:,} rows are estimated from them:", markup=False)
            for tier, v in s["total_usd"].items():
                out.print(f"  {tier:<7} {'n/a' if v is None else f'{_usd(v[1])} (95%: {_usd(v[0])} – {_usd(v[2])})'}", markup=False)
            out.print("The sampled rows are recorded: `corral run` will not pay for them again.", markup=False)
    for note in est.notes:
        out.print(f"note: {note}", markup=False)


def _out_console() -> Any:
    from corral.cli import _out

    return _out()
