"""System 1: a cheap learned classifier that answers the rows it is sure of, with no call.

A ``classify`` or ``filter`` step with ``system1:`` trains a scikit-learn model (word and
character n-gram TF-IDF, logistic regression, probabilities calibrated by cross-validation) on
labeled rows, or distils it from the LLM's own answers to the first rows of the run. A held-out
slice (a fifth of the rows it learns from) picks the lowest probability threshold at which its
answers agree with the labels (or the LLM) at least ``target`` of the time; a row whose top
probability clears it is answered by System 1, for nothing, and says so in its trace (route,
probability, threshold). The rest go to the step's strategy. When no threshold meets the target,
System 1 takes no row, and the summary says so.

A threshold picked on one slice can be over-confident on the rows that follow, so ``audit`` of
the rows System 1 is sure of (chosen by a hash of the key, so a resumed run picks the same) go to
the LLM too: the LLM's answer is written, and the two are compared. A model learned from other
rows than this run's (a labels file, an earlier run) answers no row alone until
:data:`LEAST_AUDITS` of its sure rows have been audited so (all of them are, until then): labels
from one domain do not answer another's rows on the strength of their own slice. When the audits show the
agreement clearly under the target (the upper end of its 95% Wilson interval below it; with labels,
below ``2 * target - 1``, since the LLM errs too: see :meth:`System1.audit_bar`), the model stops
taking rows.

While distilling, the model is retrained (on a thread) each time the LLM's answers have grown by
half; rows wait for a training under way (between chunks of the run, as it were), and takes more rows as it earns them. Every trained model is kept in the store under
the job and step, and the next run of the job starts from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import math
import pickle
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import UserError

if TYPE_CHECKING:
    from corral.store.base import Store
    from corral.tasks.base import Step

#: the cross-validation folds of the probability calibration
FOLDS = 3
#: the share of the rows learned from that is held out to pick the threshold
HOLDOUT = 0.2
#: held-out rows above the threshold needed before it counts (fewer say nothing)
LEAST_COVERED = 10
#: retrain while distilling once the answers have grown by this factor since the last training
REGROW = 1.5
#: audits needed before their agreement can retire System 1
LEAST_AUDITS = 20
#: the blob format kept in the store (bumped when it changes; an older one is retrained)
FORMAT = 1
#: seconds a finishing run waits for a training under way
CLOSE_WAIT_S = 30.0
#: seconds a run waits for System 1 to learn from its labels file before it starts (then: no row)
LEARN_WAIT_S = 600.0
#: seconds a row waits for a retraining under way (then: the last model decides)
RETRAIN_WAIT_S = 30.0
T = TypeVar("T")
INSTALL_HINT = "make install, or pip install -e '.[learn]', in the Corral checkout (scikit-learn)"


class System1Spec(BaseModel):
    """A step's ``system1:`` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: str | None = Field(
        default=None,
        description="labeled rows (CSV, TSV or JSONL with the step's input columns and a column "
        "named after the step, or `label`); omit to distil from the LLM's answers",
    )
    target: float = Field(default=0.95, gt=0.5, lt=1.0, description="agreement to reach on the held-out slice")
    min_rows: int = Field(default=200, ge=20, description="answers to learn from before System 1 may take any row")
    audit: float = Field(
        default=0.02, ge=0.0, lt=1.0,
        description="share of the rows System 1 is sure of also sent to the LLM, to measure it",
    )
    label_column: str | None = Field(
        default=None, description="the labels file's answer column (default: the step's name, else `label`)"
    )


def check_available() -> None:
    """Raise (a job error) when scikit-learn, which System 1 is built on, is not installed."""
    if importlib.util.find_spec("sklearn") is None:
        raise ValueError(f"`system1:` needs scikit-learn; run: {INSTALL_HINT}")


# --- the model ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Trained:
    """A trained System 1 and what its held-out slice said about it."""

    pipeline: Any
    threshold: float | None  # None: no threshold meets the target; takes no row
    agreement: float | None  # on the held-out rows at or above the threshold
    covered: int  # held-out rows at or above the threshold
    held_out: int
    rows: int  # rows learned from (train + held out)
    source: str  # "labels" or "llm"
    best: float | None = None  # the best agreement any threshold reached, when none met the target

    def meta(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "agreement": self.agreement, "covered": self.covered,
                "held_out": self.held_out, "rows": self.rows, "source": self.source, "best": self.best}


def _pipeline() -> Any:
    """Word (1-2) and character (2-5, within words) n-gram TF-IDF into a linear SVM whose scores
    are turned into probabilities by Platt's logistic calibration over :data:`FOLDS` folds. A
    logistic regression over the same features agrees as often on the held-out rows, but fits
    five times slower with many labels (banking77, 77 labels, 3,000 rows: 9.7 s against 2 s)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    features = FeatureUnion([
        ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                                  max_features=100_000)),
    ])
    return make_pipeline(features, CalibratedClassifierCV(LinearSVC(C=0.5), method="sigmoid", cv=FOLDS))


def pick_threshold(top: list[float], correct: list[bool], target: float) -> tuple[float, float, int] | None:
    """The lowest threshold whose held-out rows at or above it agree at least ``target`` of the
    time, with at least :data:`LEAST_COVERED` of them: (threshold, agreement, rows covered)."""
    order = sorted(range(len(top)), key=lambda i: -top[i])
    best: tuple[float, float, int] | None = None
    right = 0
    for k, i in enumerate(order, 1):
        right += correct[i]
        if k < len(order) and top[order[k]] == top[i]:
            continue  # a threshold takes every row of its probability or none
        if k >= LEAST_COVERED and right / k >= target:
            best = (top[i], right / k, k)
    return best


def train(texts: list[str], labels: list[str], target: float, source: str, seed: int = 0) -> Trained:
    """Fit on four fifths of the rows, pick the threshold on the rest (CPU-bound: run on a thread)."""
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    cut = max(1, int(len(idx) * HOLDOUT))
    held, fit = idx[:cut], idx[cut:]
    counts: dict[str, int] = {}
    for i in fit:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
    # a class with fewer rows than folds cannot be calibrated: System 1 does not answer it
    fit = [i for i in fit if counts[labels[i]] >= FOLDS]
    if len({labels[i] for i in fit}) < 2:  # nothing to tell apart
        return Trained(None, None, None, 0, len(held), len(texts), source)
    pipe = _pipeline()
    pipe.fit([texts[i] for i in fit], [labels[i] for i in fit])
    probs = pipe.predict_proba([texts[i] for i in held])
    classes = list(pipe.classes_)
    top, correct = [], []
    for row, i in zip(probs, held):
        j = max(range(len(classes)), key=lambda c: row[c])
        top.append(float(row[j]))
        correct.append(classes[j] == labels[i])
    found = pick_threshold(top, correct, target)
    if found is None:
        return Trained(pipe, None, None, 0, len(held), len(texts), source, _best_agreement(top, correct))
    thr, agree, covered = found
    return Trained(pipe, thr, agree, covered, len(held), len(texts), source)


def _best_agreement(top: list[float], correct: list[bool]) -> float | None:
    order = sorted(range(len(top)), key=lambda i: -top[i])
    right, best = 0, None
    for k, i in enumerate(order, 1):
        right += correct[i]
        if k >= LEAST_COVERED:
            best = max(best or 0.0, right / k)
    return best


def wilson_upper(agree: int, n: int, z: float = 1.96) -> float:
    """The upper end of the Wilson score interval of ``agree`` out of ``n``."""
    if n == 0:
        return 1.0
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


class Predictor:
    """A model's top class and its probability for each text asked; the texts asked for at once
    (in one turn of the event loop) are predicted together, which costs about what one does."""

    def __init__(self) -> None:
        self._queue: list[tuple[Any, str, asyncio.Future[tuple[str, float]]]] = []

    async def top(self, pipeline: Any, text: str) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, float]] = loop.create_future()
        self._queue.append((pipeline, text, fut))
        if len(self._queue) == 1:
            loop.call_soon(self._predict_waiting)
        return await fut

    def _predict_waiting(self) -> None:
        batch, self._queue = self._queue, []
        by_model: dict[int, list[tuple[Any, str, asyncio.Future[tuple[str, float]]]]] = {}
        for item in batch:  # a model retrained meanwhile answers its own askers
            by_model.setdefault(id(item[0]), []).append(item)
        for items in by_model.values():
            pipeline = items[0][0]
            try:
                probs = pipeline.predict_proba([t for _, t, _ in items])
                classes = list(pipeline.classes_)
            except BaseException as e:
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for row, (_, _, fut) in zip(probs, items):
                j = max(range(len(classes)), key=lambda c: row[c])
                if not fut.done():
                    fut.set_result((str(classes[j]), float(row[j])))


# --- one step's System 1 during a run -------------------------------------------------------------


@dataclass(slots=True)
class Decision:
    """What System 1 says about one row: ``route`` is ``system1`` (it answers), ``audit`` (it is
    sure, but the LLM answers too) or ``None`` (the LLM answers)."""

    route: str | None
    label: str | None = None
    p: float | None = None
    threshold: float | None = None


@dataclass
class Stats:
    taken: int = 0
    audited: int = 0
    audit_agree: int = 0
    seen: int = 0
    retired: str | None = None  # why the current model stopped taking rows
    retirements: int = 0
    trainings: int = 0
    notes: list[str] = field(default_factory=list)


class System1:
    """One step's System 1 in a run (see the module's docstring)."""

    def __init__(self, step: Step, spec: System1Spec, store: Store, job_name: str, base_dir: Path,
                 stop: asyncio.Event | None = None, say: Callable[[str], None] | None = None) -> None:
        self.step = step
        self.stop = stop
        self.say = say or (lambda message: None)
        self.spec = spec
        self.store = store
        self.base_dir = base_dir
        self.name = f"system1/{job_name}/{step.name}/{_step_hash(step, spec, base_dir)}"
        self.model: Trained | None = None
        self.stats = Stats()
        self._texts: list[str] = []
        self._labels: list[str] = []
        self._trained_on = 0
        self._training: asyncio.Task[None] | None = None
        self._ready: asyncio.Lock | None = None
        self._loaded = False
        self._predictor = Predictor()
        self._audits = [0, 0]  # the current model's audits: rows, agreements
        self._texts_from_labels = 0
        #: whether the model was learned from rows other than this run's (labels, an earlier run)
        self._proving = True

    # --- start: the stored model, or one trained on the labels file ---------------------------

    async def ready(self) -> None:
        if self._loaded:
            return
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._loaded:
                return
            self._load_stored()
            if self.model is None and self.spec.labels is not None:
                texts, labels = self._labeled_rows()
                if len(texts) >= self.spec.min_rows:
                    self.say(f"System 1 of step `{self.step.name}`: learning from {len(texts):,} labeled rows "
                             f"(at most {LEARN_WAIT_S:.0f} s; Ctrl-C stops)")
                    fut = _on_a_thread(train, texts, labels, self.spec.target, "labels")
                    if await wait_bounded(fut, self.stop, LEARN_WAIT_S):
                        self.model = fut.result()
                        self.stats.trainings += 1
                        self._save()
                    elif not (self.stop and self.stop.is_set()):
                        self.stats.notes.append(f"learning from the labels took over {LEARN_WAIT_S:.0f} s: no row taken")
                else:
                    self.stats.notes.append(f"{len(texts):,} labeled rows, under min_rows {self.spec.min_rows:,}")
                self._texts_from_labels = len(texts)
            self._loaded = True

    def _load_stored(self) -> None:
        found = self.store.load_learned(self.name)
        if found is None:
            return
        try:
            blob = pickle.loads(found)  # noqa: S301 - the run's own store, written by Corral
            if blob.get("format") != FORMAT:
                raise ValueError("an older format")
            self.model = blob["model"]
            self._texts, self._labels = list(blob["texts"]), list(blob["labels"])
            self._trained_on = len(self._texts)
        except Exception as e:  # another scikit-learn version, or damage: learn again
            self.stats.notes.append(f"the stored System 1 could not be read ({type(e).__name__}); learning again")
            self.model, self._texts, self._labels, self._trained_on = None, [], [], 0

    def _save(self) -> None:
        if self.model is None:
            return
        blob = pickle.dumps({"format": FORMAT, "model": self.model, "texts": self._texts, "labels": self._labels})
        self.store.save_learned(self.name, blob, self.model.meta())

    def _labeled_rows(self) -> tuple[list[str], list[str]]:
        from corral._labels import blank, read_table

        assert self.spec.labels is not None
        path = Path(self.spec.labels)
        if not path.is_absolute():
            path = self.base_dir / path
        cols, rows = read_table(path, UserError)
        col = self.spec.label_column or (self.step.name if self.step.name in cols else "label")
        where = f"step `{self.step.name}`: system1 labels file {path.name}"
        if col not in cols:
            raise UserError(f"{where} has no column `{col}`; name the answer column after the step, "
                            f"`label`, or set `label_column:` (its columns: {', '.join(cols)})")
        texts, labels, foreign = [], [], 0
        for r in rows:
            y = r.get(col)
            if blank(y):
                continue
            label = self.step.system1_label_of(y)
            if label is None:  # an answer the step does not have: nothing System 1 may say
                foreign += 1
                continue
            texts.append(self.step.template.render(r))
            labels.append(label)
        if foreign:
            self.stats.notes.append(f"{foreign:,} labeled rows name answers the step does not have; left out")
        return texts, labels

    # --- per row --------------------------------------------------------------------------

    async def decide(self, key: str, text: str) -> Decision:
        """Whether System 1 answers this row (or audits it), from its current model."""
        await self.ready()
        if self._training is not None and not self._training.done():
            # the model learned from the answers so far, for a while; else the last one decides
            await wait_bounded(self._training, self.stop, RETRAIN_WAIT_S)
        m = self.model
        self.stats.seen += 1
        if m is None or m.threshold is None or m.pipeline is None or self.stats.retired:
            return Decision(None)
        label, p = await self._predict(text)
        if self.stats.retired or self.model is not m:  # audits retired it while this row waited
            return Decision(None, label, p, m.threshold)
        if p < m.threshold:
            return Decision(None, label, p, m.threshold)
        if self.spec.audit and ((self._proving and self._audits[0] < LEAST_AUDITS) or _share(key) < self.spec.audit):
            # a model learned elsewhere (labels, an earlier run) earns trust on this run's rows
            # first: until LEAST_AUDITS of its sure rows have been answered by the LLM too, it
            # answers none alone
            return Decision("audit", label, p, m.threshold)
        self.stats.taken += 1
        return Decision("system1", label, p, m.threshold)

    async def _predict(self, text: str) -> tuple[str, float]:
        assert self.model is not None
        return await self._predictor.top(self.model.pipeline, text)

    def idle_reason(self) -> str:
        """Why System 1 takes no row now."""
        m, s = self.model, self.stats
        if s.retired:
            return f"stopped: {s.retired}"
        if m is None:
            return f"learning: {len(self._texts):,} of {self.spec.min_rows:,} answers"
        return f"target {self.spec.target} not met on the held-out rows"

    def audited(self, system1_label: str, llm_label: str | None) -> None:
        """An audited row's two answers: the current model retires when they agree clearly too
        seldom (a model trained later starts its own count)."""
        s = self.stats
        agree = int(system1_label == llm_label)
        s.audited += 1
        s.audit_agree += agree
        self._audits[0] += 1
        self._audits[1] += agree
        n, k = self._audits
        bar = self.audit_bar()
        if s.retired is None and n >= LEAST_AUDITS and wilson_upper(k, n) < bar:
            s.retired = f"audits agreed {k} of {n} times ({k / n:.3f}), clearly under {bar:.3f}"
            s.retirements += 1

    def audit_bar(self) -> float:
        """The agreement with the LLM that audits must not fall clearly under. Distilling, the
        target is agreement with the LLM itself. From labels, the target is agreement with the
        labels, and the LLM errs too: if System 1 and the LLM each meet the target on these rows,
        they agree at least ``2 * target - 1`` of the time (each is wrong at most ``1 - target``
        of it), so only less than that says System 1 does not meet it here."""
        t = self.spec.target
        return t if self.spec.labels is None else 2 * t - 1

    def learn(self, text: str, label: str | None) -> None:
        """The LLM's answer to a row, while distilling: retrain once enough new answers arrived."""
        if self.spec.labels is not None or label is None:
            return
        self._texts.append(text)
        self._labels.append(label)
        n = len(self._texts)
        due = n >= self.spec.min_rows and (self._trained_on == 0 or n >= self._trained_on * REGROW)
        if due and (self._training is None or self._training.done()):
            self._trained_on = n
            self._training = asyncio.create_task(self._retrain(list(self._texts), list(self._labels)))

    async def _retrain(self, texts: list[str], labels: list[str]) -> None:
        try:
            model = await _on_a_thread(train, texts, labels, self.spec.target, "llm")
        except Exception as e:  # never the run's end: System 1 keeps its last model
            self.stats.notes.append(f"System 1 training failed: {type(e).__name__}: {e}")
            return
        self.model = model
        self.stats.trainings += 1
        # a new model earns its own trust; its held-out slice was this run's own answers
        self.stats.retired, self._audits, self._proving = None, [0, 0], False
        self._save()

    async def close(self, stopping: bool = False) -> None:
        """Let a training under way finish (so the next run starts from it), for at most
        :data:`CLOSE_WAIT_S`; at once when the run is stopping (Ctrl-C, SIGTERM)."""
        t = self._training
        if t is None or t.done():
            return
        if not stopping:
            self.say(f"System 1 of step `{self.step.name}`: finishing its training on {self._trained_on:,} "
                     f"answers, for the next run (at most {CLOSE_WAIT_S:.0f} s; Ctrl-C stops)")
            await wait_bounded(t, self.stop, CLOSE_WAIT_S)
        if not t.done():
            self.stats.notes.append("a training under way was left unfinished")
            t.cancel()

    # --- the summary -------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        m, s = self.model, self.stats
        out: dict[str, Any] = {
            "step": self.step.name, "target": self.spec.target, "taken": s.taken, "seen": s.seen,
            "audited": s.audited, "audit_agreement": round(s.audit_agree / s.audited, 4) if s.audited else None,
            "retired": s.retired, "trainings": s.trainings, "source": "labels" if self.spec.labels else "llm",
            "learned_from": len(self._texts) if self.spec.labels is None else self._texts_from_labels,
            "notes": list(s.notes),
        }
        if m is not None:
            out.update({"met": m.threshold is not None, "threshold": m.threshold, "agreement": m.agreement,
                        "held_out": m.held_out, "covered": m.covered, "best": m.best})
        else:
            out.update({"met": False, "threshold": None, "agreement": None, "held_out": 0, "covered": 0,
                        "best": None})
        return out


async def wait_bounded(fut: asyncio.Future[Any], stop: asyncio.Event | None, timeout: float) -> bool:
    """Wait for ``fut`` for at most ``timeout`` seconds, and no longer than the run goes on (its
    ``stop`` event: Ctrl-C, SIGTERM). ``fut`` itself is never cancelled. Whether it ended."""
    if fut.done():
        return True
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.shield(fut))]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return fut.done()


def _on_a_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a daemon thread of its own: a run that is stopped leaves at once, never
    waiting for a training to end (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as e:
            value, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name="corral-system1", daemon=True).start()
    return fut


def _share(key: str) -> float:
    """A number in [0, 1) from the key: the same key always gets the same."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _step_hash(step: Step, spec: System1Spec, base_dir: Path) -> str:
    """What a stored model was learned for: the step (without its system1 settings other than
    its labels) and the labels file's content."""
    body = step.model_dump(mode="json", exclude={"system1"})
    labels = None
    if spec.labels is not None:
        p = Path(spec.labels)
        p = p if p.is_absolute() else base_dir / p
        try:
            labels = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            labels = spec.labels
    blob = json.dumps({"step": body, "labels": labels, "column": spec.label_column}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def summary_line(r: dict[str, Any]) -> str:
    """``1,912 of 3,080 rows (62%), target 0.95 met (0.962 on 616 held-out rows)``."""
    seen, taken = r["seen"], r["taken"]
    share = f" ({taken / seen:.0%})" if seen else ""
    if r["met"]:
        held = f"{r['agreement']:.3f} on {r['covered']:,} of {r['held_out']:,} held-out rows"
        line = f"{taken:,} of {seen:,} rows{share}, target {r['target']} met ({held})"
    elif r["learned_from"] < 1 or r["held_out"] == 0:
        line = (f"took no row: {r['learned_from']:,} answers to learn from so far"
                if r["source"] == "llm" else "took no row")
    else:
        best = f"best {r['best']:.3f}" if r.get("best") is not None else "no threshold"
        line = f"{taken:,} of {seen:,} rows{share}; target {r['target']} not met ({best} on {r['held_out']:,} held-out rows)"
    if r["audited"]:
        line += f"; audits agreed {r['audit_agreement']:.3f} on {r['audited']:,}"
    if r["retired"]:
        line += f"; stopped: {r['retired']}"
    for note in r.get("notes") or ():
        line += f"; {note}"
    return line

