"""The learned expert router (`route_by:`): a classifier trained on rows labeled with their best
expert sends the rows it is sure of to that expert; the experts' `when:` rules route the rest."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import corral
from corral import Job

from ..conftest import write_csv

pytest.importorskip("sklearn")

WORDS = {
    "money": ["invoice", "refund", "charged", "payment", "bill", "price", "receipt", "fee"],
    "parcel": ["package", "delivery", "tracking", "courier", "shipment", "parcel", "arrived", "box"],
}


def texts(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        route = rnd.choice(sorted(WORDS))
        w = rnd.sample(WORDS[route], 3)
        out.append((f"note {seed}-{i}: the {w[0]}, my {w[1]} and a {w[2]}", route))
    return out


def make(tmp: Path, rows: list[tuple[str, str]], train: list[tuple[str, str]], **route_by: Any) -> Job:
    write_csv(tmp / "in.csv", ["id", "text"], [(f"r{i}", t) for i, (t, _) in enumerate(rows)])
    write_csv(tmp / "routes.csv", ["text", "expert"], train)
    step = {"name": "label", "task": "classify", "input": "{text}", "labels": ["x", "y"],
            "experts": [{"name": "money", "when": "false", "labels": ["billing", "other"]},
                        {"name": "parcel", "when": "'parcel' in text", "labels": ["shipping", "other"]}],
            "route_by": {"labels": "routes.csv", **route_by}}
    return Job.from_dict({"name": "lr", "source": "in.csv", "key": "id", "model": "fake",
                          "steps": [step], "sink": "out/o.csv"}, base_dir=tmp)


def routes(store: str | None) -> dict[str, dict[str, Any]]:
    assert store is not None
    db = sqlite3.connect(store)
    try:
        return {k: json.loads(d) for k, d in db.execute("SELECT key, data FROM attempts WHERE outcome='route'")}
    finally:
        db.close()


def test_the_learned_router_sends_rows_to_their_expert_from_the_text_alone(tmp_path):
    rows = texts(200, seed=1)
    r = corral.run(make(tmp_path, rows, texts(300, seed=2)))
    assert r.written == 200
    (rep,) = r.routers
    assert rep["met"] and sum(rep["routed"].values()) > 100  # more than half, each sure
    ev = routes(r.store)
    learned = {k: e for k, e in ev.items() if e.get("by") == "learned"}
    assert len(learned) == sum(rep["routed"].values())
    gold = {f"r{i}": route for i, (_, route) in enumerate(rows)}
    assert all(e["route"] == gold[k] for k, e in learned.items())  # the `money` rule is never true
    assert all(e["p"] >= e["threshold"] for e in learned.values())
    # the rest went by the rules: `parcel` where the word is in the text, else the step as written
    for k, e in ev.items():
        if k not in learned:
            assert e["route"] in ("parcel", "default")
    with open(tmp_path / "out" / "o.csv", newline="") as f:
        labels = {row["id"]: row["label"] for row in csv.DictReader(f)}
    assert all(labels[k] in ("billing", "other") for k, e in learned.items() if e["route"] == "money")


def test_route_by_needs_experts_and_a_file_that_names_routes(tmp_path):
    with pytest.raises(Exception, match="route_by"):
        Job.from_dict({"name": "x", "source": "in.csv", "model": "fake", "sink": "o.csv", "steps": [
            {"name": "t", "task": "classify", "input": "{text}", "labels": ["a", "b"],
             "route_by": {"labels": "r.csv"}}]}, base_dir=tmp_path)
    job = make(tmp_path, texts(20, seed=3), [(t, "nobody") for t, _ in texts(60, seed=4)])
    with pytest.raises(corral.UserError, match="`nobody` is not a route of the step"):
        corral.run(job)
    job = make(tmp_path, texts(20, seed=3), texts(60, seed=4), column="best")
    with pytest.raises(corral.UserError, match="no column `best`"):
        corral.run(job)


def test_eval_best_experts_writes_the_rows_route_by_learns_from(tmp_path):
    """`corral eval --best-experts`: each labeled row through every route; each row's best is the
    one that answered it right (here the expert whose labels hold its gold label), and the file
    trains a `route_by:` that sends new rows there."""
    from click.testing import CliRunner

    from corral.cli import main as cli_main

    rows = texts(120, seed=11)
    gold = {"money": "billing", "parcel": "shipping"}
    write_csv(tmp_path / "in.csv", ["id", "text"], [(f"r{i}", t) for i, (t, _) in enumerate(rows)])
    write_csv(tmp_path / "truth.csv", ["text", "label"], [(t, gold[r]) for t, r in rows])
    write_csv(tmp_path / "labels.csv", ["id", "label"], [(f"r{i}", gold[r]) for i, (_, r) in enumerate(rows)])
    job = {"name": "be", "source": "in.csv", "key": "id",
           "model": {"name": "fake", "truth": "truth.csv", "accuracy": 0.99},
           "steps": [{"name": "label", "task": "classify", "input": "{text}", "labels": ["x", "y"],
                      "experts": [{"name": "money", "when": "false", "labels": ["billing", "other"]},
                                  {"name": "parcel", "when": "false", "labels": ["shipping", "other"]}]}],
           "sink": "out/o.csv"}
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    res = CliRunner().invoke(cli_main, ["eval", str(tmp_path / "job.yaml"), "--labels", str(tmp_path / "labels.csv"),
                                        "--best-experts", str(tmp_path / "routes.csv"), "--json",
                                        "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert found["right_by_route"]["default"] == 0  # x/y: never the gold label
    with open(tmp_path / "routes.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == found["written"] >= 100
    by_text = dict(rows)
    assert all(r["expert"] == by_text[r["text"]] for r in written)  # each row's own expert
    assert set(written[0]) == {"id", "text", "expert"}
    # a job without experts: one line with the fix
    job["steps"][0].pop("experts")
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    res = CliRunner().invoke(cli_main, ["eval", str(tmp_path / "job.yaml"), "--labels", str(tmp_path / "labels.csv"),
                                        "--best-experts", str(tmp_path / "r2.csv"), "--store", str(tmp_path / "s.db")])
    assert res.exit_code != 0 and "no step with `experts:`" in res.output
