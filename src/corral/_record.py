"""Record processing: one leased record through the job's steps, to exactly one final state.

For each step: its ``when:`` (a step that does not run gives ``None``), its route (an expert of
the step takes the row, see :mod:`corral._router`), its empty-input rule,
its shortcut, else its strategy on each part (chunk) of the input through a
:class:`~corral._solver.StepSolver`; then the gates: an answer missing is quarantined, one that
fails its checks or the record's budget goes to review with the best answer, one under
``min_confidence`` is used by the later steps but holds the row for review. The final state is
committed with the outputs paid for so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from corral._client import Counts, RequestLayer
from corral._commit import GroupCommitter, dumps
from corral._expr import ConditionError
from corral._injection import InjectionGate
from corral._route_model import LearnedRouter
from corral._router import Routed, pick
from corral._solver import OutOfBudget, RecordUse, StepSolver, low_confidence
from corral._system1 import Decision, System1
from corral.errors import OutputError
from corral.job import Job
from corral.store.base import AttemptRecord, FinalRecord, LeasedRecord
from corral.strategies.base import Outcome
from corral.tasks._experts import DEFAULT_ROUTE
from corral.tasks.base import Task

Result = Outcome | OutOfBudget | BaseException


class RecordProcessor:
    """Takes records through the job's steps (see the module's docstring); one per run."""

    def __init__(self, job: Job, layer: RequestLayer, counts: Counts) -> None:
        self.steps: list[Task] = job.steps
        self.layer = layer
        self.run_id = layer.run_id
        self.counts = counts
        self.per_record = layer.budget.per_record
        #: holds the rows that read like instructions to the model (``injection: hold``)
        self.gate = InjectionGate(job.steps) if job.injection == "hold" else None
        #: the steps' learned expert routers (``route_by:``), by step name
        self.routers: dict[str, LearnedRouter] = {
            s.name: LearnedRouter(s, spec, [*(e.route for e in s.routes()), DEFAULT_ROUTE],
                                  layer.store, job.name, job.base_dir, layer.stop, layer.say)
            for s in job.steps if (spec := s.route_by) is not None
        }
        #: the steps' System 1, by step name
        self.system1: dict[str, System1] = {
            s.name: System1(s, spec, layer.store, job.name, job.base_dir, layer.stop, layer.say)
            for s in job.steps if (spec := getattr(s, "system1", None)) is not None
        }

    async def process(self, committer: GroupCommitter, rec: LeasedRecord) -> None:
        """Work one record to its final state. Raises a stop or a deferral (the record stays
        leased and is released when the pass ends)."""
        context: dict[str, Any] = dict(rec.data)
        outputs: dict[str, Any] = {}
        tries = 0
        use = RecordUse()
        absent: set[str] = set()  # steps that gave this row no answer: a `when:` over one is false
        # why the row is held for review although its later steps still run: an answer under its
        # step's min_confidence is used by the steps after it, so the reviewer sees a whole row;
        # so is a row the injection gate flags (it never reaches the sink, nor leaves unseen, skipped)
        unsure: list[str] = []
        final = self.final

        def held_because(reason: str) -> str:
            return "; ".join([*unsure, reason])

        def so_far() -> str | None:  # the answers already paid for, kept with a quarantined row
            return dumps(outputs) if outputs else None

        def note(step: str, outcome: str, detail: str) -> None:
            committer.add(attempt=AttemptRecord(self.run_id, rec.key, step, 0, None, outcome, detail))

        injected = self.gate.check(rec.data) if self.gate is not None else None
        if injected is not None:  # held, with the answers reached (System 1 learns nothing from it)
            unsure.append(injected)
            note(self.steps[0].name, "injection", injected)
        for step in self.steps:
            try:
                runs = step.applies(context, absent)
            except ConditionError as e:
                final(committer, rec, "quarantined", so_far(), f"step `{step.name}`: when {e}", tries)
                return
            if not runs:
                context[step.name] = outputs[step.name] = None
                gone = [n for n in step.when_names() if n in absent]
                detail = (f"when: {step.when} reads {', '.join(f'`{n}`' for n in gone)}, which did not run"
                          if gone else f"when: {step.when} is false")
                absent.add(step.name)
                note(step.name, "not run", detail)
                continue
            if step.experts:  # the learned router, else the rules: the row's expert, or the step as written
                try:
                    learned = self.routers.get(step.name)
                    expert = (await learned.route(step, context) if learned is not None else None) \
                        or pick(step, context, absent)
                except ConditionError as e:
                    final(committer, rec, "quarantined", so_far(), f"step `{step.name}`: {e}", tries)
                    return
                committer.add(attempt=expert.event(self.run_id, rec.key))
                step = expert.step
            short = None
            if step.on_empty != "ask":
                empty = step.empty_input(context)
                if empty is not None:
                    why = f"empty input ({empty})"
                    if step.on_empty != "null":
                        note(step.name, "empty", f"{why}; no call")
                        state = "skipped" if step.on_empty == "skip" else "quarantined"
                        final(committer, rec, state, so_far(), f"step `{step.name}`: {why}", tries)
                        return
                    empty_answer = step.empty_answer()
                    if empty_answer is None:
                        context[step.name] = outputs[step.name] = None
                        absent.add(step.name)
                        note(step.name, "empty", f"{why}; no call, the step's output is null")
                        continue
                    short = (empty_answer, why)
            if short is None:
                short = step.shortcut(context)
            routed: tuple[System1, Decision, str] | None = None
            # (an expert's row is the expert's: System 1 knows the step's own labels only)
            if short is None and step.name in self.system1 and getattr(step, "system1", None) is not None:
                routed = await self._system1(committer, rec, step, context)
                s1, said, _ = routed
                if said.route == "system1" and said.label is not None and said.p is not None:
                    short = (step.system1_answer(said.label, said.p), "System 1")
            was_unsure = len(unsure)
            if short is not None:
                answer, why = short
                if routed is None:
                    note(step.name, "shortcut", f"{why}; answer {json.dumps(answer, ensure_ascii=False)}")
            else:
                parts = step.split(context)
                n = len(parts)
                audit = routed is not None and routed[1].route == "audit"  # its calls: kind System 1
                solvers = [
                    StepSolver(self.layer, committer, rec, step, part,
                               step.name if n == 1 else f"{step.name}[{i + 1}/{n}]", use, audit=audit)
                    for i, part in enumerate(parts)
                ]
                results: list[Result] = []
                if n > 1 and self.per_record is None:
                    # the chunks of a long document are independent (each has its own sample
                    # numbers): ask them at once; with a per-record budget they go in order so
                    # a resumed record spends the same way
                    results = list(await asyncio.gather(
                        *(_solve(step, sv) for sv in solvers), return_exceptions=True))
                else:
                    for sv in solvers:
                        one = await _solve(step, sv)
                        results.append(one)
                        if isinstance(one, OutOfBudget) or one.answer is None or one.problems:
                            break
                failed = next((r for r in results if isinstance(r, BaseException)
                               and not isinstance(r, OutOfBudget)), None)
                if failed is not None:  # a stop, a deferral to a provider batch, or a bug
                    for sv in solvers:
                        sv.flush()  # what was learned before it is kept in the trace
                    raise failed
                tries += sum(sv.seq for sv in solvers)
                answers = []
                for sv, part, got in zip(solvers, parts, results):
                    label = sv.label
                    if isinstance(got, OutOfBudget):
                        best = sv.best
                        sv.note("budget", str(got), answer=best[0] if best else None)
                        held = _with_best(outputs, step, best[0] if best else None, part)
                        final(committer, rec, "review", held, held_because(f"step `{label}`: {got}"), tries)
                        return
                    assert isinstance(got, Outcome)
                    if got.answer is None or got.problems:
                        for other in solvers:
                            other.flush()
                    if got.answer is None:
                        final(committer, rec, "quarantined", so_far(), f"step `{label}`: {got.error}", tries)
                        return
                    if got.problems:
                        held = _with_best(outputs, step, got.answer, part)
                        final(committer, rec, "review", held,
                              held_because(f"step `{label}`: {'; '.join(got.problems)}"), tries)
                        return
                    doubt = low_confidence(step, got.confidence)
                    if doubt is not None:  # held for a person, never written to the sink
                        sv.note("review", doubt, answer=got.answer, confidence=got.confidence,
                                threshold=step.min_confidence)
                        unsure.append(f"step `{label}`: {doubt}")
                        answers.append(got.answer)
                        continue
                    sv.accepted(got)
                    answers.append(got.answer)
                try:
                    answer = step.combine(answers, parts)
                except OutputError as e:
                    final(committer, rec, "quarantined", so_far(), f"step `{step.name}`: {e}", tries)
                    return
            value = step.value(answer)
            if routed is not None and routed[1].route != "system1" and len(unsure) == was_unsure and not injected:
                s1, said, text = routed  # the LLM's accepted answer: System 1 learns from it
                llm_label = step.system1_label(value)
                if said.route == "audit" and said.label is not None:
                    s1.audited(said.label, llm_label)
                s1.learn(text, llm_label)
            context[step.name] = value
            outputs[step.name] = value
            skip = step.skip(value)
            if skip:  # held rows go to the reviewer even when an unsure answer filtered them out
                final(committer, rec, "review" if unsure else "skipped", dumps(outputs),
                      held_because(f"step `{step.name}`: {skip}"), tries)
                return
        if unsure:
            final(committer, rec, "review", dumps(outputs), "; ".join(unsure), tries)
            return
        final(committer, rec, "done", dumps(outputs), None, tries)

    async def _system1(
        self, committer: GroupCommitter, rec: LeasedRecord, step: Task, context: dict[str, Any]
    ) -> tuple[System1, Decision, str]:
        """What the step's System 1 says about the row, written to its trace as its route."""
        s1 = self.system1[step.name]
        text = step.template.render(context)
        said = await s1.decide(rec.key, text)
        sure = "" if said.p is None or said.threshold is None else (
            f"p {said.p:.3f} {'>=' if said.p >= said.threshold else '<'} threshold {said.threshold:.3f}, "
            f"answer {said.label}")
        if said.route == "system1":
            detail = f"system1: {sure}; no call"
        elif said.route == "audit":
            detail = f"audit: System 1 is sure ({sure}); the LLM answers too, to measure it"
        else:
            detail = f"default: {sure}" if sure else f"default: System 1 takes no row ({s1.idle_reason()})"
        data = {"p": said.p, "threshold": said.threshold, "answer": said.label}
        committer.add(attempt=Routed(step, said.route or DEFAULT_ROUTE, detail, data).event(self.run_id, rec.key))
        return s1, said, text

    async def prepare(self) -> None:
        """Train (or load) the steps' System 1 before any row is taken: a bad labels file is the
        run's error, not a row's."""
        for s1 in self.system1.values():
            await s1.ready()
        for r in self.routers.values():
            await r.ready()

    def reports(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What each step's System 1 and learned router did, for the run's summary."""
        return [s.report() for s in self.system1.values()], [r.report() for r in self.routers.values()]

    async def close(self, stopping: bool = False) -> None:
        """Let System 1 trainings under way finish, so the next run starts from them (not when
        the run is stopping)."""
        for s1 in self.system1.values():
            await s1.close(stopping)

    def final(
        self, committer: GroupCommitter, rec: LeasedRecord, state: str, outputs: str | None,
        reason: str | None, tries: int,
    ) -> None:
        """Commit the record's final state (with its outputs so far and why)."""
        committer.add(final=FinalRecord(self.run_id, rec.key, state, outputs, reason, tries))
        self.counts.move("leased", state)


async def _solve(step: Task, solver: StepSolver) -> Outcome | OutOfBudget:
    """The step's strategy on one part: its outcome, or the budget stop that ended it."""
    try:
        return await step.strategy.solve(solver)
    except OutOfBudget as e:
        return e
    except BaseException:
        solver.flush()  # what was learned before a stop is kept in the trace
        raise


def _with_best(
    outputs: dict[str, Any], step: Task, answer: dict[str, Any] | None, part: dict[str, Any]
) -> str:
    """Step outputs so far plus the best answer of the step a record is held at, for review."""
    held = dict(outputs)
    if answer is not None:
        with contextlib.suppress(Exception):  # a chunk's answer may not stand for the whole
            held[step.name] = step.value(step.combine([answer], [part]))
    return dumps(held)
