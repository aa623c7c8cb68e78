"""The fake model's noisy-labeler mode (``truth=``): a simulated classifier whose accuracy,
difficulty, confusions and confidences follow the documented model."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest

from corral.errors import ModelConfigError, TransientModelError
from corral.models.base import Completion, Message, Request
from corral.models.fake import FakeModel

LABELS = [f"label_{i}" for i in range(10)]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}
N = 3000


def difficulty(text: str) -> float:
    """The documented formula, computed here independently of the model's code."""
    return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 11) / 2**53


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    rng = random.Random(7)
    rows = {f"ticket {i}: card {rng.randint(0, 10**6)} does not work": rng.choice(LABELS) for i in range(N)}
    path = tmp_path_factory.mktemp("truth") / "truth.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows(rows.items())
    return path, rows


def request(text: str, *, temperature: float = 0.0, sample: int = 0, schema=SCHEMA) -> Request:
    return Request(
        messages=(Message("system", "Choose exactly one label."), Message("user", text)),
        schema=schema,
        temperature=temperature,
        sample=sample,
    )


def complete_all(model: FakeModel, requests: list[Request]) -> list[Completion]:
    async def go() -> list[Completion]:
        return [await model.complete(r) for r in requests]

    return asyncio.run(go())


def labels_of(model: FakeModel, texts: list[str], **kw) -> list[str]:
    return [json.loads(c.text)["label"] for c in complete_all(model, [request(t, **kw) for t in texts])]


def model(path: Path, **kw) -> FakeModel:
    return FakeModel(truth=str(path), truth_label="category", **kw)


@pytest.mark.parametrize("accuracy", [0.7, 0.95])
def test_single_answer_accuracy_matches_the_option(truth, accuracy):
    path, rows = truth
    texts = list(rows)
    got = labels_of(model(path, accuracy=accuracy), texts)
    measured = sum(g == rows[t] for g, t in zip(got, texts)) / len(texts)
    assert abs(measured - accuracy) < 0.03, measured
    assert set(got) <= set(LABELS)


def test_temperature_zero_is_deterministic_across_samples(truth):
    path, rows = truth
    texts = list(rows)[:500]
    m = model(path, accuracy=0.6)
    first = labels_of(m, texts, sample=0)
    assert labels_of(m, texts, sample=1) == first
    assert labels_of(m, texts, sample=5) == first
    assert labels_of(model(path, accuracy=0.6), texts) == first  # a new instance: same answers


def test_samples_disagree_more_on_hard_rows(truth):
    path, rows = truth
    texts = sorted(rows, key=difficulty)
    q = len(texts) // 4
    easy, hard = texts[:q], texts[-q:]
    m = model(path, accuracy=0.7)

    def disagreement(group: list[str]) -> float:
        a = labels_of(m, group, temperature=0.7, sample=0)
        b = labels_of(m, group, temperature=0.7, sample=1)
        return sum(x != y for x, y in zip(a, b)) / len(group)

    d_easy, d_hard = disagreement(easy), disagreement(hard)
    assert d_hard > 0.3, d_hard  # hard rows: independent draws from a spread-out distribution
    assert d_easy < 0.1, d_easy
    assert d_hard > 4 * d_easy


def test_wrong_answers_concentrate_on_the_confusers(truth):
    path, rows = truth
    hard = sorted(rows, key=difficulty)[-100:]  # rows wrong often enough to see the confusers
    for confusers in (1, 2, 3):
        wrong: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for seed in (0, 1):  # another seed confuses the same labels: they come from the text
            m = model(path, accuracy=0.7, confusers=confusers, seed=seed)
            for s in range(8):
                for t, g in zip(hard, labels_of(m, hard, temperature=1.0, sample=s)):
                    if g != rows[t]:
                        wrong[t].add(g)
                        counts[t] += 1
        assert sum(counts.values()) > 800  # enough mistakes to test
        assert max(len(v) for v in wrong.values()) == confusers
        assert all(len(v) <= confusers for v in wrong.values())


def test_logprobs_are_the_mass_of_the_answered_label(truth):
    path, rows = truth
    a = 0.8
    g = a / (1 - a)
    texts = list(rows)[:1500]
    m = model(path, accuracy=a, confusers=2, logprobs=True)
    assert m.capabilities.supports_logprobs
    right = wrong = 0
    for t, c in zip(texts, complete_all(m, [request(t, temperature=1.0, sample=3) for t in texts])):
        assert c.logprobs is not None and len(c.logprobs) == 1
        q = math.exp(c.logprobs[0])
        p = 1 - difficulty(t) ** g
        if json.loads(c.text)["label"] == rows[t]:
            right += 1
            assert q == pytest.approx(p, rel=1e-9, abs=1e-12)
        else:
            wrong += 1
            assert q == pytest.approx((1 - p) * 2 / 3, rel=1e-9) or q == pytest.approx((1 - p) / 3, rel=1e-9)
    assert right > 0 and wrong > 100
    plain = complete_all(model(path, accuracy=a), [request(texts[0])])[0]
    assert plain.logprobs is None  # only when asked


def test_confidence_separates_right_from_wrong_answers(truth):
    path, rows = truth
    texts = list(rows)[:2000]
    m = model(path, accuracy=0.75, logprobs=True)
    scored = sorted(
        (math.exp(c.logprobs[0]), json.loads(c.text)["label"] == rows[t])
        for c, t in zip(complete_all(m, [request(t) for t in texts]), texts)
    )
    low, high = scored[: len(scored) // 2], scored[len(scored) // 2 :]
    acc_low = sum(ok for _, ok in low) / len(low)
    acc_high = sum(ok for _, ok in high) / len(high)
    assert acc_high > 0.95 and acc_low < 0.65, (acc_low, acc_high)  # what a cascade relies on


def test_seeds_and_model_ids_share_difficulty(truth):
    """Rows that are hard for one model are hard for all: mistakes of two models coincide far
    more often than independent draws would."""
    path, rows = truth
    texts = list(rows)[:2000]
    a = 0.7

    def wrong(m: FakeModel) -> list[bool]:
        return [g != rows[t] for g, t in zip(labels_of(m, texts), texts)]

    base = wrong(model(path, accuracy=a, seed=1))
    other_seed = model(path, accuracy=a, seed=2)
    other_id = FakeModel("b", truth=str(path), truth_label="category", accuracy=a, seed=1)
    for other in (other_seed, other_id):
        two = wrong(other)
        assert base != two  # a different seed or id does make different draws
        both = sum(x and y for x, y in zip(base, two))
        independent = sum(base) * sum(two) / len(texts)
        # E[both wrong] = n * E[d**2g] = n / (2g + 1): about 1.9x what independence predicts
        assert both > 1.5 * independent, (both, independent)
        assert both == pytest.approx(len(texts) / (2 * a / (1 - a) + 1), rel=0.15)


def test_multi_label_schema_gets_a_list(truth):
    path, rows = truth
    schema = {
        "type": "object",
        "properties": {"labels": {"type": "array", "items": {"enum": LABELS}, "uniqueItems": True}},
        "required": ["labels"],
    }
    texts = list(rows)[:500]
    m = model(path, accuracy=0.9, logprobs=True)
    cs = complete_all(m, [request(t, schema=schema) for t in texts])
    answers = [json.loads(c.text)["labels"] for c in cs]
    assert all(len(x) == 1 for x in answers)
    assert 0.84 < sum(x == [rows[t]] for x, t in zip(answers, texts)) / len(texts) < 0.96
    assert all(c.logprobs is not None for c in cs)


def test_unknown_rows_and_labels_fall_back_to_derived_answers(truth):
    path, rows = truth
    plain, noisy = FakeModel(), model(path, accuracy=0.7, logprobs=True)
    unknown = request("a text that is not in the truth file")
    assert noisy.answer(unknown) == plain.answer(unknown)
    other = {"type": "object", "properties": {"label": {"enum": ["x", "y"]}}, "required": ["label"]}
    t = next(iter(rows))
    assert noisy.answer(request(t, schema=other)) == plain.answer(request(t, schema=other))
    c = complete_all(noisy, [request(t, schema=other)])[0]
    assert c.logprobs is None
    # the text matches after stripping; a template that adds words does not
    assert noisy.answer(request("  " + t + "\n"))["label"] in LABELS
    assert noisy.answer(request("Text: " + t)) == plain.answer(request("Text: " + t))


def test_script_wins_and_failures_still_apply(truth):
    path, rows = truth
    t = next(iter(rows))
    scripted = model(path, accuracy=0.7, script=lambda r: {"label": "scripted"})
    assert scripted.answer(request(t)) == {"label": "scripted"}
    failing = model(path, accuracy=0.7, error_rate=1.0)
    with pytest.raises(TransientModelError):
        complete_all(failing, [request(t)])
    cut = complete_all(model(path, accuracy=0.7, truncation_rate=1.0, price_per_call=0.01), [request(t)])[0]
    assert cut.finish_reason == "length" and str(cut.usage.cost) == "0.01"
    refused = complete_all(model(path, accuracy=0.7, refusal_rate=1.0, logprobs=True), [request(t)])[0]
    assert refused.finish_reason == "refused" and refused.logprobs is None


def test_jsonl_and_tsv_truth_files(tmp_path, truth):
    _, rows = truth
    items = list(rows.items())[:300]
    jl = tmp_path / "t.jsonl"
    jl.write_text("".join(json.dumps({"q": t, "y": y}) + "\n" for t, y in items), encoding="utf-8")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("q\ty\n" + "".join(f"{t}\t{y}\n" for t, y in items), encoding="utf-8")
    results = []
    for p in (jl, tsv):
        m = FakeModel(truth=str(p), truth_text="q", truth_label="y", accuracy=0.7)
        assert len(m.labels) == 300
        results.append(labels_of(m, [t for t, _ in items]))
    assert results[0] == results[1]


def test_bad_truth_files_and_options_say_how_to_fix(tmp_path, truth):
    path, _ = truth
    with pytest.raises(ValueError, match=r"no truth file at .*missing\.csv; fix the truth: path"):
        FakeModel(truth=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"no column 'label' \(it has 'text', 'category'\); set truth_label:"):
        FakeModel(truth=str(path))
    with pytest.raises(ValueError, match=r"no column 'body'.*set truth_text:"):
        FakeModel(truth=str(path), truth_text="body", truth_label="category")
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"text": "a", "label": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"cannot read truth file"):
        FakeModel(truth=str(bad))
    with pytest.raises(ValueError, match=r"\.csv, \.tsv or \.jsonl"):
        FakeModel(truth=str(tmp_path / "t.xlsx"))
    for a in (0, 1, 1.5, -0.1):
        with pytest.raises(ModelConfigError, match="accuracy must be"):
            FakeModel(accuracy=a)
    with pytest.raises(ModelConfigError, match="confusers must be"):
        FakeModel(confusers=0)
    with pytest.raises(ValueError) as e:
        FakeModel(truth=str(path), truth_label="nope")
    assert "\n" not in str(e.value)  # one line


def test_path_options_are_declared():
    assert FakeModel.path_options == ("truth", "call_log")
