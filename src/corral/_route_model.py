"""The learned expert router: a classifier, trained on rows where it is known which expert
answers best, sends each row to an expert before the rules (``when:``) are asked.

A step with ``experts:`` may have ``route_by:``, naming a file of rows (the step's input columns)
with a column that names, for each, the expert that answered it best (a route name, or
``default`` for the step as written), as found by evaluating the experts on labeled rows. The
model is System 1's (:func:`corral._system1.train`): a held-out fifth picks the lowest
probability at which its routes agree with the file's at least ``target`` of the time. A row whose
top probability clears it goes to that expert; the rest are routed by the experts' ``when:``
rules, as without ``route_by:``. The trained model is kept in the store and reused by later runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from corral._system1 import (
    FORMAT,
    LEARN_WAIT_S,
    Predictor,
    Trained,
    _on_a_thread,
    check_available,
    train,
    wait_bounded,
)
from corral.errors import UserError

if TYPE_CHECKING:
    from corral._router import Routed
    from corral.store.base import Store
    from corral.tasks.base import Step


class RouteBySpec(BaseModel):
    """A step's ``route_by:`` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: str = Field(description="rows with the step's input columns and the best expert of each")
    column: str = Field(default="expert", description="the column naming each row's best expert (or `default`)")
    target: float = Field(default=0.9, gt=0.0, lt=1.0, description="agreement with the file's routes on a held-out slice")
    min_rows: int = Field(default=50, ge=20, description="rows needed to learn from")

    def model_post_init(self, __context: Any) -> None:
        try:
            check_available()
        except ValueError as e:
            raise ValueError(str(e).replace("`system1:`", "`route_by:`")) from None


class LearnedRouter:
    """One step's learned router in a run."""

    def __init__(self, step: Step, spec: RouteBySpec, routes: list[str], store: Store, job_name: str,
                 base_dir: Path, stop: asyncio.Event | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.step, self.spec, self.routes, self.store = step, spec, routes, store
        self.stop, self.say = stop, say or (lambda message: None)
        path = Path(spec.labels)
        self.path = path if path.is_absolute() else base_dir / path
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        except OSError:
            digest = "missing"
        self.name = f"router/{job_name}/{step.name}/{digest}/{spec.column}/{spec.target}"
        self.model: Trained | None = None
        self.learned_from = 0
        self.taken: dict[str, int] = {}
        self._predictor = Predictor()

    async def ready(self) -> None:
        """Load the stored model, or train one from the file (on a thread)."""
        if self.model is not None:
            return
        found = self.store.load_learned(self.name)
        if found is not None:
            try:
                blob = pickle.loads(found)  # noqa: S301 - the run's own store, written by Corral
                if blob.get("format") == FORMAT:
                    self.model, self.learned_from = blob["model"], blob["rows"]
                    return
            except Exception:  # another scikit-learn version, or damage: learn again
                pass
        texts, routes = self._rows()
        self.learned_from = len(texts)
        self.say(f"the learned router of step `{self.step.name}`: learning from {len(texts):,} rows "
                 f"(at most {LEARN_WAIT_S:.0f} s; Ctrl-C stops)")
        fut = _on_a_thread(train, texts, routes, self.spec.target, "labels")
        if not await wait_bounded(fut, self.stop, LEARN_WAIT_S):
            return  # stopped, or too long: the rules route every row
        self.model = fut.result()
        blob = pickle.dumps({"format": FORMAT, "model": self.model, "rows": len(texts)})
        self.store.save_learned(self.name, blob, self.model.meta())

    def _rows(self) -> tuple[list[str], list[str]]:
        from corral._labels import blank, read_table

        where = f"step `{self.step.name}`: route_by file {self.path.name}"
        cols, rows = read_table(self.path, UserError)
        if self.spec.column not in cols:
            raise UserError(f"{where} has no column `{self.spec.column}`; set `column:` under `route_by:` "
                            f"(its columns: {', '.join(cols)})")
        texts, routes = [], []
        for r in rows:
            route = r.get(self.spec.column)
            if blank(route):
                continue
            route = str(route).strip()
            if route not in self.routes:
                raise UserError(f"{where}: `{route}` is not a route of the step; use one of "
                                f"{', '.join(self.routes)}")
            texts.append(self.step.template.render(r))
            routes.append(route)
        if len(texts) < self.spec.min_rows:
            raise UserError(f"{where} has {len(texts):,} rows with a route; `route_by:` needs "
                            f"`min_rows: {self.spec.min_rows}`; add rows or lower min_rows")
        return texts, routes

    async def choose(self, text: str) -> tuple[str, float, float] | None:
        """(route, probability, threshold) when the model is sure of this row, else None."""
        m = self.model
        if m is None or m.pipeline is None or m.threshold is None:
            return None
        route, p = await self._predictor.top(m.pipeline, text)
        if p < m.threshold:
            return None
        self.taken[route] = self.taken.get(route, 0) + 1
        return route, p, m.threshold

    async def route(self, step: Step, context: dict[str, Any]) -> Routed | None:
        """The row's expert when the model is sure of it (None: the rules decide)."""
        from corral._router import Routed

        chosen = await self.choose(step.template.render(context))
        if chosen is None:
            return None
        name, p, threshold = chosen
        variant = next((e.step for e in step.routes() if e.route == name), step)
        return Routed(variant, name, f"expert `{name}`: learned router p {p:.3f} >= threshold {threshold:.3f}",
                      {"by": "learned", "p": round(p, 4), "threshold": round(threshold, 4)})

    def report(self) -> dict[str, Any]:
        m = self.model
        return {"step": self.step.name, "target": self.spec.target, "learned_from": self.learned_from,
                "met": bool(m and m.threshold is not None), "threshold": m.threshold if m else None,
                "agreement": m.agreement if m else None, "covered": m.covered if m else 0,
                "held_out": m.held_out if m else 0, "routed": dict(self.taken)}




def router_line(r: dict[str, Any]) -> str:
    """``412 rows routed by the model (bank 207, sms 205), target 0.95 met (0.983 on ...)``."""
    routed = r["routed"]
    n = sum(routed.values())
    each = ", ".join(f"{k} {v:,}" for k, v in sorted(routed.items()))
    if not r["met"]:
        return (f"learned from {r['learned_from']:,} rows, target {r['target']} not met on the held-out "
                "rows: the experts' when: rules routed every row")
    return (f"{n:,} rows routed by the model ({each or 'none'}), target {r['target']} met "
            f"({r['agreement']:.3f} on {r['covered']:,} of {r['held_out']:,} held-out rows); the rest by the rules")
