"""System 1: a learned classifier that answers the rows it is sure of, with no call."""

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
from corral._system1 import LEAST_AUDITS, pick_threshold, summary_line, wilson_upper
from corral.errors import UserError

from ..conftest import write_csv

pytest.importorskip("sklearn")

TOPICS = {
    "billing": ["invoice", "refund", "charged", "payment", "bill", "price", "receipt"],
    "shipping": ["package", "delivery", "tracking", "courier", "shipment", "parcel", "arrived"],
    "account": ["password", "login", "profile", "username", "email", "signin", "locked"],
}


def texts(n: int, seed: int, topics: dict[str, list[str]] = TOPICS) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        label = rnd.choice(sorted(topics))
        words = rnd.sample(topics[label], 3)
        out.append((f"message {i} {seed}: my {words[0]} and the {words[1]} {words[2]} please", label))
    return out


def make(tmp: Path, rows: list[tuple[str, str]], system1: dict[str, Any] | None,
         labels: list[tuple[str, str]] | None = None, name: str = "s1") -> Job:
    write_csv(tmp / "in.csv", ["id", "text"], [(f"r{i}", t) for i, (t, _) in enumerate(rows)])
    with open(tmp / "truth.csv", "w", newline="") as f:  # what the fake LLM knows
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    if labels is not None:
        write_csv(tmp / "labels.csv", ["text", "topic"], labels)
    step: dict[str, Any] = {"name": "topic", "task": "classify", "input": "{text}", "labels": sorted(TOPICS)}
    if system1 is not None:
        step["system1"] = system1
    return Job.from_dict({
        "name": name, "source": "in.csv", "key": "id",
        "model": {"name": "fake", "truth": "truth.csv", "accuracy": 0.97, "price_per_call": 0.001},
        "steps": [step], "sink": "out/o.csv", "concurrency": 8,
    }, base_dir=tmp)


def routes(store: str | None) -> list[dict[str, Any]]:
    assert store is not None
    db = sqlite3.connect(store)
    try:
        return [dict(json.loads(d), key=k, detail=t) for k, t, d in
                db.execute("SELECT key, detail, data FROM attempts WHERE outcome='route' ORDER BY id")]
    finally:
        db.close()


def test_pick_threshold_takes_the_lowest_that_meets_the_target():
    top = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.5, 0.4]
    correct = [True] * 10 + [False, False]
    assert pick_threshold(top, correct, 0.95) == (0.90, 1.0, 10)
    assert pick_threshold(top, correct, 0.9) == (0.5, 10 / 11, 11)  # the lowest that still meets it
    assert pick_threshold(top, [True] * 9 + [False] * 3, 0.95) is None  # 9/10 at best
    assert pick_threshold(top[:5], [True] * 5, 0.9) is None  # too few rows to say anything


def test_wilson_upper_bound():
    assert wilson_upper(4, 20) < 0.5
    assert wilson_upper(19, 20) > 0.95
    assert wilson_upper(0, 0) == 1.0


def test_labeled_rows_let_system1_answer_most_rows_for_no_call_and_say_so(tmp_path):
    rows = texts(400, seed=1)
    rnd = random.Random(0)  # a few labels wrong, as in any labeled set: probabilities spread out
    lab = [(t, rnd.choice(sorted(TOPICS)) if rnd.random() < 0.08 else k) for t, k in texts(600, seed=2)]
    job = make(tmp_path, rows, {"labels": "labels.csv", "label_column": "topic", "min_rows": 100}, labels=lab)
    r = corral.run(job)
    assert r.rows_in == 400 and r.written == 400 and r.accounted
    (s1,) = r.system1
    assert s1["met"] and s1["taken"] > 200, json.dumps(s1)  # most rows, for nothing
    assert r.calls_made == 400 - s1["taken"]
    assert s1["audited"] >= LEAST_AUDITS  # it earned trust on this run's rows first
    ev = routes(r.store)
    assert len(ev) == 400 and {e["route"] for e in ev} <= {"system1", "audit", "default"}
    taken = [e for e in ev if e["route"] == "system1"]
    assert len(taken) == s1["taken"] and all(e["p"] >= e["threshold"] for e in taken)
    assert "no call" in taken[0]["detail"]
    with open(tmp_path / "out" / "o.csv", newline="") as f:
        out = {row["id"]: row["topic"] for row in csv.DictReader(f)}
    gold = {f"r{i}": lab for i, (_, lab) in enumerate(rows)}
    right = sum(out[e["key"]] == gold[e["key"]] for e in taken)
    assert right / len(taken) >= 0.95
    assert "rows" in summary_line(s1) and "met" in summary_line(s1)


def test_labels_that_disagree_with_this_runs_rows_are_retired_by_the_audits_before_answering_any(tmp_path):
    """Labels from elsewhere, where the same words mean another label: System 1 is sure of
    itself on its held-out slice, the audits on this run's rows say otherwise, and it answers
    none of them alone."""
    shifted = dict(zip(sorted(TOPICS), sorted(TOPICS)[1:] + sorted(TOPICS)[:1]))
    lab = [(t, shifted[k]) for t, k in texts(600, seed=4)]
    job = make(tmp_path, texts(300, seed=3), {"labels": "labels.csv", "label_column": "topic", "min_rows": 100},
               labels=lab)
    r = corral.run(job)
    (s1,) = r.system1
    assert s1["met"] and s1["taken"] == 0 and r.calls_made == 300
    assert s1["retired"] and "clearly under 0.900" in s1["retired"]  # 2 x 0.95 - 1: the LLM errs too
    assert "stopped" in summary_line(s1)


def test_distilling_learns_from_the_llm_and_a_later_run_starts_from_the_stored_model(tmp_path):
    rows = texts(900, seed=5)
    r = corral.run(make(tmp_path, rows, {"min_rows": 150}))
    (s1,) = r.system1
    assert s1["source"] == "llm" and s1["trainings"] >= 1 and s1["learned_from"] >= 150
    assert r.written == 900 and r.calls_made == 900 - s1["taken"]
    first_taken = s1["taken"]
    # new rows, the same job: the stored model answers from the first row on
    tmp2 = tmp_path / "next"
    tmp2.mkdir()
    r2 = corral.run(make(tmp2, texts(300, seed=6), {"min_rows": 150}), store=r.store)
    (s2,) = r2.system1
    assert s2["learned_from"] > 900 - first_taken - 1  # the stored answers, and this run's
    assert s2["taken"] > 0


def test_a_labels_file_without_the_answer_column_is_one_clear_error(tmp_path):
    job = make(tmp_path, texts(50, seed=7), {"labels": "labels.csv", "label_column": "nope"},
               labels=texts(50, seed=8))
    with pytest.raises(UserError, match="no column `nope`"):
        corral.run(job)


def test_system1_spec_errors_name_the_fix(tmp_path):
    with pytest.raises(Exception, match="multi_label"):
        Job.from_dict({"name": "x", "source": "in.csv", "model": "fake", "sink": "o.csv", "steps": [
            {"name": "t", "task": "classify", "input": "{text}", "labels": ["a", "b"], "multi_label": True,
             "system1": {}}]}, base_dir=tmp_path)
    with pytest.raises(Exception, match="target"):
        Job.from_dict({"name": "x", "source": "in.csv", "model": "fake", "sink": "o.csv", "steps": [
            {"name": "t", "task": "classify", "input": "{text}", "labels": ["a", "b"],
             "system1": {"target": 1.5}}]}, base_dir=tmp_path)


def test_a_stopping_run_leaves_a_training_under_way_at_once(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM: close(stopping=True) returns at once although a training (here one
    that sleeps 30 s) is under way on its own thread; its result is never waited for."""
    import asyncio
    import time as _time

    import corral._system1 as s1mod

    def slow_train(*_: Any) -> Any:
        _time.sleep(30)

    monkeypatch.setattr(s1mod, "train", slow_train)
    job = make(tmp_path, texts(10, seed=9), {"min_rows": 20})
    step = job.steps[0]
    from corral.store import open_store

    st = open_store(tmp_path / "s.db")

    async def go() -> float:
        sys1 = s1mod.System1(step, step.system1, st, job.name, tmp_path)
        for t, k in texts(20, seed=10):
            sys1.learn(t, k)  # the 20th answer starts a training
        assert sys1._training is not None and not sys1._training.done()
        t0 = _time.monotonic()
        await sys1.close(stopping=True)
        assert "left unfinished" in sys1.stats.notes[-1]
        return _time.monotonic() - t0

    try:
        assert asyncio.run(go()) < 1.0
    finally:
        st.close()


def test_trainings_on_their_thread_give_their_result_or_their_error():
    import asyncio

    from corral._system1 import _on_a_thread

    def boom() -> None:
        raise ValueError("no")

    async def go() -> None:
        assert await _on_a_thread(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="no"):
            await _on_a_thread(boom)

    asyncio.run(go())


def test_learning_from_labels_says_so_and_ends_on_a_stop(tmp_path, monkeypatch):
    """The wait for System 1 to learn from its labels is announced, and a stop (Ctrl-C,
    SIGTERM) ends it at once: no model, no row taken, the training left on its thread."""
    import asyncio
    import time as _time

    import corral._system1 as s1mod

    monkeypatch.setattr(s1mod, "train", lambda *_: _time.sleep(30))
    job = make(tmp_path, texts(10, seed=12), {"labels": "labels.csv", "label_column": "topic", "min_rows": 20},
               labels=texts(40, seed=13))
    step = job.steps[0]
    from corral.store import open_store

    st = open_store(tmp_path / "s.db")
    said: list[str] = []

    async def go() -> float:
        stop = asyncio.Event()
        sys1 = s1mod.System1(step, step.system1, st, job.name, tmp_path, stop, said.append)
        asyncio.get_running_loop().call_later(0.2, stop.set)
        t0 = _time.monotonic()
        await sys1.ready()
        assert sys1.model is None
        assert (await sys1.decide("k", "a text")).route is None
        return _time.monotonic() - t0

    try:
        assert asyncio.run(go()) < 2.0
    finally:
        st.close()
    assert said and "learning from 40 labeled rows" in said[0] and "Ctrl-C" in said[0]
