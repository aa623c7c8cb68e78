"""``corral eval --best-experts FILE``: which expert answers each labeled row best, as the rows a
learned router (``route_by:``) learns from.

For a step with ``experts:``, the labeled rows are run through each route in turn (each expert,
then the step as written, ``default``), each as a copy of the job whose step is that route's
variant on every row (answers the store holds are replayed, as ``corral eval`` does). A row's best
route is the one that answered it right (the rule of ``corral eval``) with the fewest calls, the
first listed on a tie; a row no route answered right is left out. The file holds the source
columns of each such row and an ``expert`` column.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from corral import _labels
from corral.errors import UserError
from corral.job import Job
from corral.models.base import Model
from corral.store.base import Store


class BestExpertsError(UserError):
    """A ``--best-experts`` request that cannot be answered (the fix is in the message)."""


def _variant(job: Job, step_name: str, route: str) -> Job:
    """The job with ``step_name`` replaced by its route's variant, on every row."""
    data = job.model_dump(mode="json")
    for i, s in enumerate(job.steps):
        if s.name != step_name:
            continue
        chosen = s if route == "default" else next(e.step for e in s.routes() if e.route == route)
        spec = chosen.model_dump(mode="json")
        spec.pop("experts", None)
        spec.pop("route_by", None)
        data["steps"][i] = spec
    data["name"] = f"{job.name}.route-{route}"
    return Job.from_dict(data, base_dir=job.base_dir, origin=f"the `{route}` route's copy of the job")


async def best_experts_async(
    job: Job, *, labels: Path, out: Path, st: Store, store_path: Path | None, model: Any,
    model_id: Model, key: str, step: str | None = None,
) -> dict[str, Any]:
    """Run the labeled rows through every route of the step and write ``out``; what was found."""
    from corral._eval import _labeled_run

    routed = [s for s in job.steps if s.routes() and (step is None or s.name == step)]
    if not routed:
        raise BestExpertsError(f"job `{job.name}` has no step with `experts:`{f' named `{step}`' if step else ''}; "
                               "--best-experts finds the best expert of such a step's rows")
    target = routed[0]
    _, gold = _labels.read_labels(labels, key, BestExpertsError)
    gold = {k: r for k, r in gold.items() if not _labels.blank(r.get(target.name))}
    if not gold:
        raise BestExpertsError(f"labels file {labels.name} has no `{target.name}` column with values; "
                               f"--best-experts scores the step `{target.name}` against it")
    columns, rows = _labels.source_rows(job, key, gold, labels.name, BestExpertsError)
    routes = [*(e.route for e in target.routes()), "default"]
    right: dict[str, dict[str, int]] = {}  # key -> route -> calls, for the routes that got it right
    per_route: dict[str, int] = {}
    for route in routes:
        info, _ = await _labeled_run(_variant(job, target.name, route), st, store_path, key, rows, columns,
                                     model, model_id, None, False)
        calls = {s.key: s.calls + s.replayed for s in st.record_spend(info.id, [target.name])}
        good = 0
        for chunk in st.iter_records(info.id, "done"):
            for rec in chunk:
                value = (rec.outputs or {}).get(target.name)
                shown = target.to_columns(value).get(target.name) if value is not None else None
                if rec.key in gold and _labels.matches(shown, gold[rec.key][target.name]):
                    right.setdefault(rec.key, {})[route] = calls.get(rec.key, 0)
                    good += 1
        per_route[route] = good
    best: dict[str, str] = {}
    for k, got in right.items():
        best[k] = min(got, key=lambda r: (got[r], routes.index(r)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[*columns, "expert"], extrasaction="ignore")
        w.writeheader()
        for k, r in rows.items():
            if k in best:
                w.writerow({**{c: r.get(c) for c in columns}, "expert": best[k]})
    chosen: dict[str, int] = {}
    for name in best.values():
        chosen[name] = chosen.get(name, 0) + 1
    return {"step": target.name, "labeled": len(rows), "right_by_route": per_route, "best": chosen,
            "written": len(best), "left_out": len(rows) - len(best), "file": str(out)}


async def best_experts_for(
    job: Job, *, labels: Path, out: Path, model: Any = None, store: Path | None = None,
    key_column: str | None = None, step: str | None = None,
) -> dict[str, Any]:
    """:func:`best_experts_async` with the job's store and model (as ``corral eval`` finds them)."""
    from corral._build_models import make_model
    from corral.engine import store_path_for
    from corral.store import open_store

    key = key_column or job.key
    if key is None:
        raise BestExpertsError(f"job `{job.name}` has no `key:` column to match labels to rows; give --key-column")
    path = store if store is not None else store_path_for(job)
    m = model if isinstance(model, Model) else make_model(model or job.model, job.base_dir)
    st = open_store(path)
    try:
        return await best_experts_async(job, labels=labels, out=out, st=st, store_path=path, model=model,
                                        model_id=m, key=key, step=step)
    finally:
        if not isinstance(model, Model):
            await m.aclose()
        st.close()


def best_experts_text(found: dict[str, Any]) -> str:
    """What ``corral eval --best-experts`` prints."""
    right = ", ".join(f"{r} {n:,}" for r, n in found["right_by_route"].items())
    best = ", ".join(f"{r} {n:,}" for r, n in sorted(found["best"].items())) or "none"
    return (f"step `{found['step']}`: {found['labeled']:,} labeled rows; answered right by route: {right}\n"
            f"best expert (right, fewest calls): {best}; {found['written']:,} rows written to {found['file']}"
            + (f", {found['left_out']:,} that no route answered right left out" if found["left_out"] else ""))
