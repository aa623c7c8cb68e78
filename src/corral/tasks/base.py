"""The Step extension point (a *task* is a kind of step: ``task: classify``).

A step is a pydantic model (its fields are the step's keys in a job file) that says what to ask
and what shape the answer must have. Subclasses implement one abstract method,
:meth:`Step.output_schema`, and override the hooks listed in :class:`Step`'s docstring where
the defaults do not fit. Register a subclass under the ``corral.tasks`` entry-point group with
the name used in ``task:``. ``Task`` is the same class, under the name it had first.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from corral._delimit import data_note
from corral._expr import Condition, ConditionError
from corral._pack_prompt import pack_request, unpack_answers
from corral._route_model import RouteBySpec
from corral._schema_check import validator as _validator
from corral._template import Template, lookup
from corral.errors import InvalidOutput, Refused, Truncated
from corral.io.base import Column
from corral.io.spec import SourceSpec
from corral.models.base import Capabilities, Completion, Message, Request
from corral.strategies import parse_strategy
from corral.strategies.base import Strategy
from corral.strategies.single import Single
from corral.tasks._experts import Expert, build_experts


def yaml_null(v: Any) -> Any:
    """A ``null`` choice of a step key: YAML reads a bare ``key: null`` as None."""
    return "null" if v is None else v


def name_rule(pattern: str, rule: str) -> AfterValidator:
    """The validator of a name key: the name when ``pattern`` matches all of it, else a
    ``ValueError`` of ``rule`` (``{}`` stands for the name) that says what a good one looks like."""
    whole = re.compile(pattern)

    def check(value: str) -> str:
        if not whole.fullmatch(value):
            raise ValueError(rule.format(value))
        return value

    return AfterValidator(check)


_STEP_NAME = name_rule(r"[A-Za-z_][A-Za-z0-9_]*", "step name `{}` must start with a letter or _ and "
                       "use only letters, digits and _ (it becomes a column name and a {{placeholder}})")

#: what a step does with a row whose input is empty (see :meth:`Step.empty_input`):
#: quarantine the row, skip it, give the step a null output without a call, or ask anyway
OnEmpty = Annotated[Literal["quarantine", "skip", "null", "ask"], BeforeValidator(yaml_null)]

_ON_EMPTY_HELP = (
    "a row whose input is empty (every placeholder missing, null or blank): `quarantine` it "
    "(default), `skip` it, give the step a `null` output without a call, or `ask` the model anyway"
)

#: how a step reaches its answer: a label's likelihood, or generated JSON (see ``scoring:``)
Scoring = Literal["auto", "likelihood", "generate"]
Calibrate = Literal["auto", "contextual", "none"]
#: what replaces the input's placeholders in the content-free prompts of contextual calibration;
#: a label's offset is the mean of its log-probabilities over these (Zhao et al. 2021 average
#: several content-free inputs too; three beat `N/A` alone on the demo's tickets)
CONTENT_FREE = ("N/A", "", "[MASK]")
#: keys added after jobs had run ids, dropped from a step's spec while they hold their default
_LATER_KEYS = ("on_empty", "scoring", "calibrate", "min_confidence", "route_by", "pack")
#: `scoring: auto` scores by likelihood on exact scorers up to this many choices in a row's prompt
#: (measured on the bundled model, one thread: 5 labels score faster than one generated answer;
#: banking77's 77 labels, searched, take 1.42-1.48 times as long, at the same accuracy and with a
#: confidence), and up to this many yes/no questions a row (each a prompt of its own)
AUTO_SCORING_MAX_CHOICES = 100
AUTO_SCORING_MAX_QUESTIONS = 10


class Step(BaseModel):
    """Common keys of every step, and the hooks a task overrides.

    ===========================  ==============================================================
    hook                         what it decides (default)
    ===========================  ==============================================================
    ``output_schema()``          the JSON schema every answer satisfies (abstract)
    ``system_prompt()``          the system message (the schema, as JSON)
    ``render(context, sample)``  the :class:`Request` for one row (system + ``input`` with the
                                 row's values in tags, :meth:`Template.prompt`; build it with
                                 :meth:`request`)
    ``data_tags()``              the tags row text is put in, named in the system prompt
                                 (the ``input`` template's)
    ``columns()``                the sink columns the step adds (one, named after the step)
    ``value(answer)``            what later steps see as ``{name}`` (the answer)
    ``traced(answer)``           what the trace keeps of an answer (all of it)
    ``to_columns(value)``        the sink values, keyed like ``columns()``
    ``shortcut(context)``        an answer reached without a call (none)
    ``split`` / ``combine``      one call per chunk of a long input, merged (one call)
    ``skip(value)``              a reason to end the row as ``skipped`` (none; see ``can_skip``)
    ``input_names()``            the placeholders whose emptiness makes the input empty
    ``empty_answer()``           the answer to an empty input under ``on_empty: null`` (null)
    ``ground(answer, context)``  where grounded fields were found in the input (none)
    ``checks_fields()``          whether ``field_problems`` can find anything (False)
    ``field_problems(...)``      the answer's broken field rules (none)
    ``validation_schema(s)``     the schema an answer is parsed against (``s``)
    ``identity()``               what else the step computes from, e.g. a file's content
    ``bind(base_dir, source)``   read files the step needs, once before a run
    ``score_requests`` and       answer by likelihood (``can_score``, ``scoring_choices``,
    ``from_scores``              ``scoring_prompts``)
    ``system1_*``                System 1's classes, an answer's class and back (classify, filter)
    ===========================  ==============================================================
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, _STEP_NAME] = Field(description="step name; also the output column name")
    task: str = Field(description="which task this step runs")
    input: str = Field(description="template of the text sent to the model: {column} or {step.field}")
    instructions: str | None = Field(default=None, description="extra guidance appended to the prompt")
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="tries per record before it is quarantined"
    )
    max_tokens: int = Field(default=256, ge=1, le=100_000, description="output token limit per call")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="sampling temperature")
    when: str | None = Field(
        default=None, description="run this step only for rows where this expression is true"
    )
    mode: Literal["online", "batch"] = Field(
        default="online", description="`batch` sends the step's calls through the provider's batch API"
    )
    strategy: Annotated[SerializeAsAny[Strategy], BeforeValidator(parse_strategy)] = Field(
        default_factory=Single,
        description="how much to think per record: single, vote, refine, best_of or cascade",
    )
    checks: list[str] = Field(
        default_factory=list,
        description="expressions every answer must satisfy (answer fields and row columns by name)",
    )
    reasoning: bool | Literal["low", "medium", "high"] = Field(
        default=False,
        description="true: the model writes its reasoning before the answer; low/medium/high: "
        "the provider's reasoning setting. Kept in the trace, not the sink",
    )
    on_empty: OnEmpty = Field(default="quarantine", description=_ON_EMPTY_HELP)
    scoring: Scoring = Field(
        default="auto",
        description="`likelihood`: pick the label the model finds most probable (classify, "
        "filter) instead of generating JSON; `generate`: a JSON answer; `auto` (default): "
        "likelihood on models that score exactly (local) for up to 100 labels (10 with multi_label), generate elsewhere",
    )
    calibrate: Calibrate = Field(
        default="auto",
        description="`contextual`: divide each label's probability by what the prompt gives a "
        "content-free input (N/A, empty, [MASK]); `none`: raw scores; `auto` (default): contextual with "
        "likelihood scoring on models that score exactly",
    )
    min_confidence: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="hold an answer whose confidence is under this for review, never written to the sink",
    )
    route_by: RouteBySpec | None = Field(
        default=None,
        description="a classifier trained on rows labeled with their best expert routes the rows it "
        "is sure of before the experts' `when:` rules are asked",
    )
    pack: int = Field(
        default=1, ge=1, le=100,
        description="rows answered in one call (classify, filter, extract): N rows numbered in one "
        "prompt, each row's answer read and checked on its own; a row left out or answered twice is "
        "asked alone",
    )
    experts: list[dict[str, Any]] = Field(
        default_factory=list, exclude=True,  # serialized as built (see _serialize)
        description="variants of the step, each with a route `name`, a `when:` and the step keys it "
        "changes (or `model:`): the first whose `when:` is true takes the row, the step as written the rest",
    )

    #: the task's own keys added after jobs had run ids (see :meth:`_without_later_defaults`)
    later_keys: ClassVar[tuple[str, ...]] = ()

    _template: Template = PrivateAttr()
    _condition: Condition | None = PrivateAttr(default=None)
    _checks: list[Condition] = PrivateAttr(default_factory=list)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _experts: tuple[Expert, ...] = PrivateAttr(default=())

    @field_validator("input")
    @classmethod
    def _check_template(cls, v: str) -> str:
        try:
            Template.parse(v)
        except ValueError as e:
            raise ValueError(f"bad template: {e}") from None
        return v

    @field_validator("when")
    @classmethod
    def _check_when(cls, v: str | None) -> str | None:
        if v is not None:
            Condition.parse(v)
        return v

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = self._without_later_defaults(handler(self))
        experts = self._experts
        if experts and isinstance(data, dict):  # none: the key is left out, as it was before experts
            data["experts"] = [e.spec(info.mode) for e in experts]
        return data

    @field_validator("experts", mode="before")
    @classmethod
    def _experts_listed(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise ValueError("`experts:` is a list of mappings, each with `name:`, `when:` and the "
                             "step keys it changes")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _with_experts(cls, data: Any, handler: ModelWrapValidatorHandler[Step]) -> Step:
        """The step, with its ``experts:`` built into full steps of its class (see
        :mod:`corral.tasks._experts`)."""
        step = handler(data)
        if isinstance(data, dict) and data.get("experts"):
            step._experts = build_experts(type(step), data, step)
        if step.route_by is not None and not step._experts:
            raise ValueError("`route_by:` routes rows among the step's `experts:`; list them, or remove `route_by:`")
        return step

    def _without_later_defaults(self, data: Any) -> Any:
        """``data`` (this step serialized) without keys added after jobs had run ids
        (``_LATER_KEYS`` and the task's :attr:`later_keys`) while they hold the task's default,
        so a job that does not set them keeps its spec hash."""
        if isinstance(data, dict):
            fields = type(self).model_fields
            for key in (*_LATER_KEYS, *self.later_keys):
                if key in data and data[key] == fields[key].default:
                    del data[key]
        return data

    @field_validator("checks", mode="before")
    @classmethod
    def _check_checks(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            for c in v:
                if not isinstance(c, str):
                    raise ValueError("each check is an expression string, e.g. `total >= 0`")
                Condition.parse(c)
        return v

    def model_post_init(self, __context: Any) -> None:
        self._template = Template.parse(self.input)
        if self.when is not None:
            self._condition = Condition.parse(self.when)
        self._checks = [Condition.parse(c) for c in self.checks]

    def routes(self) -> tuple[Expert, ...]:
        """The step's experts (``experts:``) in order, each with the full step it runs."""
        return self._experts

    def variants(self) -> list[Step]:
        """The step as written and its experts' steps: what a check of the models, files and
        keys a step uses goes over."""
        return [self, *(e.step for e in self._experts)]

    def stages(self) -> list[Strategy]:
        """The strategies the step runs: a cascade's stages, else its one strategy."""
        return getattr(self.strategy, "stages", None) or [self.strategy]

    @model_validator(mode="after")
    def _strategies_fit(self) -> Step:
        for st in self.stages():
            st.check_step(self)
        return self

    @model_validator(mode="after")
    def _scoring_fits(self) -> Step:
        if self.scoring == "likelihood":
            if not self.can_score:
                raise ValueError(
                    f"`scoring: likelihood` picks a label by its probability, which task `{self.task}` "
                    "has none of; use it on classify or filter steps, or remove it"
                )
            if self.reasoning is True:
                raise ValueError("`reasoning: true` writes reasoning before the answer, which "
                                 "`scoring: likelihood` does not generate; use one or the other")
            if self.mode == "batch":
                raise ValueError("`scoring: likelihood` calls are scored online; remove `mode: batch`")
        if self.calibrate == "contextual" and (self.scoring == "generate" or not self.can_score):
            raise ValueError("`calibrate: contextual` corrects likelihood scores; it needs "
                             "`scoring: likelihood` (or auto) on a classify or filter step")
        return self

    @model_validator(mode="after")
    def _pack_fits(self) -> Step:
        if self.pack == 1:
            return self
        if not self.can_pack:
            raise ValueError(f"`pack:` answers several rows in one call on classify, filter and "
                             f"extract steps; task `{self.task}` asks one row a call: remove `pack:`")
        if self.scoring == "likelihood":
            raise ValueError("`scoring: likelihood` scores each row's labels in a call of its own; "
                             "with `pack:` use `scoring: generate` (or auto), or remove `pack:`")
        return self

    @model_validator(mode="after")
    def _reasoning_free(self) -> Step:
        if self.reasoning is True and "reasoning" in (self.output_schema().get("properties") or {}):
            raise ValueError(
                "`reasoning: true` adds a `reasoning` field, but this step's answer already has "
                "one; rename that field"
            )
        return self

    # --- System 1's view of the step (classify and filter have one) ------------------------

    def system1_classes(self) -> tuple[str, ...]:
        """The classes System 1 tells apart (none: the step cannot have ``system1:``)."""
        return ()

    def system1_label(self, value: Any) -> str | None:
        """The class of an answer's value (what System 1 learns from the LLM), or None."""
        return None

    def system1_label_of(self, cell: Any) -> str | None:
        """The class a labels file's cell names, or None."""
        return None

    def system1_answer(self, label: str, p: float) -> dict[str, Any]:
        """The step's answer for a class System 1 is sure of (with probability ``p``)."""
        raise NotImplementedError(f"task `{self.task}` has no System 1")

    # --- the extension point -------------------------------------------------------------

    @abstractmethod
    def output_schema(self) -> dict[str, Any]:
        """JSON schema that every accepted answer satisfies (an object schema)."""

    # --- overridable defaults ------------------------------------------------------------

    def system_prompt(self) -> str:
        """Instructions sent as the system message."""
        return "Answer with a JSON object that matches this schema:\n" + json.dumps(
            self.output_schema()
        )

    def columns(self) -> list[Column]:
        """Columns this step adds to the sink."""
        return [Column(self.name, "any")]

    #: whether the step's input is a prompt the model follows (``embed``'s is text to embed:
    #: the injection gate does not read it)
    sends_prompt: ClassVar[bool] = True

    def traced(self, answer: dict[str, Any]) -> dict[str, Any]:
        """What the trace keeps of an answer: all of it (``embed`` keeps a vector's summary)."""
        return answer

    def value(self, answer: dict[str, Any]) -> Any:
        """What later steps see as ``{name}`` and what :meth:`to_columns` starts from."""
        return answer

    def to_columns(self, value: Any) -> dict[str, Any]:
        """The sink values of this step, keyed like :meth:`columns`."""
        return {self.name: value}

    def shortcut(self, context: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """An answer reached without asking the model, and why (e.g. a pair blocked as too
        dissimilar to be a match); ``None`` to ask the model."""
        return None

    def split(self, context: dict[str, Any]) -> list[dict[str, Any]]:
        """The contexts of the calls this step makes for a row: one, or one per chunk of a long
        document. Each is rendered and answered on its own, then :meth:`combine` merges them."""
        return [context]

    def combine(self, answers: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Merge the answers of :meth:`split`'s parts into the step's answer."""
        return answers[0]

    #: whether :meth:`skip` can end rows as ``skipped`` (the run then writes a skipped output)
    can_skip: ClassVar[bool] = False

    #: whether the step may answer several rows in one call (``pack:``)
    can_pack: ClassVar[bool] = False

    def pack_request(self, requests: list[Request]) -> Request:
        """The one request that answers these rows' requests (:meth:`render`'s, in order): by
        default the rows numbered in one prompt, for an array of answers (corral._pack_prompt)."""
        return pack_request(requests)

    def unpack(self, packed: Request, completion: Completion, n: int) -> list[Completion | None]:
        """One completion per row of :meth:`pack_request`'s answer, in order; ``None`` where the
        answer has none for that row (the row is then asked alone). Each row's usage is set by
        the engine (its share of the call's)."""
        return unpack_answers(completion, n)

    def skip(self, value: Any) -> str | None:
        """A reason to end the row here in the ``skipped`` state (filters), or ``None``."""
        return None

    def names_used(self) -> list[tuple[str, ...]]:
        """Row names this step reads: its template's placeholders and its condition's names."""
        return list(self._template.names) + [(n,) for n in self.when_names()]

    def when_names(self) -> list[str]:
        """The names its ``when:`` condition reads (columns and earlier steps), sorted."""
        return sorted(self._condition.names) if self._condition is not None else []

    def input_names(self) -> list[tuple[str, ...]]:
        """The placeholders whose values are the step's input: when every one of them is empty
        for a row, the row's input is empty (see :meth:`empty_input`)."""
        return list(self._template.names)

    def empty_input(self, context: dict[str, Any]) -> str | None:
        """Why this row's input is empty (``{text} is empty``), or ``None`` when it is not.

        The input is empty when every placeholder of :meth:`input_names` is missing, null,
        whitespace-only text or an empty list or object; the template's constant text does not
        count. A row with at least one non-empty placeholder is not empty (the empty ones render
        as nothing); a template without placeholders is never empty.
        """
        names = self._inputs
        if not names:
            return None
        for name in names:
            if not _blank(lookup(context, name)):
                return None
        shown = ["{" + ".".join(n) + "}" for n in dict.fromkeys(names)]
        if len(shown) == 1:
            return f"{shown[0]} is empty"
        return f"{', '.join(shown[:-1])} and {shown[-1]} are empty"

    def empty_answer(self) -> dict[str, Any] | None:
        """The answer a step gives an empty input with ``on_empty: null``, without a call;
        ``None`` (the default): the step's output is null, as when its ``when:`` is false."""
        return None

    def ground(self, answer: dict[str, Any], context: dict[str, Any]) -> dict[str, Any] | None:
        """Look for the answer's ``grounded`` fields in the step's rendered input, right after
        the answer is parsed: what the trace keeps of it (where each value was found), or
        ``None`` when the step has no grounded field. Under ``on_ungrounded: null`` the values
        that do not occur are set to null in ``answer``; under ``quarantine`` they raise an
        :class:`~corral.errors.OutputError` (the answer is unusable)."""
        return None

    def checks_fields(self) -> bool:
        """Whether :meth:`field_problems` can find anything (a field has a rule or is grounded):
        then `refine` and `best_of` have something to check answers with besides ``checks:``."""
        return False

    def field_problems(self, answer: dict[str, Any], context: dict[str, Any]) -> list[str]:
        """The answer's fields' problems: broken field rules (``pattern``, ``minimum``,
        ``maximum``, a real date) and grounded values that do not occur in the input."""
        return []

    def validation_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema an answer is parsed against, from the one sent to the model: a task whose
        field rules are checked as problems (:meth:`field_problems`) leaves them out here."""
        return schema

    def failed_checks(self, answer: dict[str, Any], context: dict[str, Any]) -> list[str]:
        """The problems of this answer: its fields' (:meth:`field_problems`), then the
        ``checks:`` it fails, as readable problems (empty when it passes)."""
        fields = self.field_problems(answer, context)
        if not self.checks:  # a plain field: private attributes are slow to read on a model
            return fields
        names = {**context, **answer, "answer": answer}
        out = fields
        for c in self._checks:
            try:
                ok = c(names)
            except ConditionError as e:
                out.append(f"check {e}")
                continue
            if not ok:  # say what the answer had, so a repair (and a reader) sees why
                shown = [f"{k} = {json.dumps(answer[k], ensure_ascii=False)}" for k in sorted(c.names) if k in answer]
                out.append(f"check `{c.source}` failed" + (f" ({', '.join(shown)})" if shown else ""))
        return out

    def identity(self) -> dict[str, Any]:
        """What the step computes from besides its keys, known once bound (e.g. the content of a
        reference file): part of the run's identity, so editing that file starts a new run."""
        return {}

    def applies(self, context: dict[str, Any], absent: frozenset[str] | set[str] = frozenset()) -> bool:
        """Whether the step runs for this row (its ``when:`` condition).

        ``absent`` names the earlier steps that gave this row no answer (their own ``when:`` was
        false, or their input was empty with ``on_empty: null``): a condition that reads one of
        them is false, whatever else it says.
        """
        if self.when is None:
            return True
        if absent and not absent.isdisjoint(self._when_names):
            return False
        return self._condition(context)  # type: ignore[misc]

    # --- used by the engine --------------------------------------------------------------

    def bind(self, base_dir: Path, source: SourceSpec | None = None) -> None:
        """Called once before a run with the job file's folder (for files a step reads) and the
        job's source (for steps that read the data itself, such as normalize's ``clean``)."""
        self._base_dir = base_dir

    @property
    def template(self) -> Template:
        return self._template

    @cached_property
    def _schema(self) -> dict[str, Any]:
        return self.output_schema()

    @cached_property
    def _system(self) -> str:
        return self.with_instructions(self.system_prompt())

    def with_instructions(self, system: str, tags: tuple[str, ...] | None = None) -> str:
        """A system prompt of the step, then the sentence saying that the text in its tags is
        data (``tags``, default :meth:`data_tags`), then its ``instructions``."""
        note = self._data_note if tags is None else data_note(tags)
        if note:
            system = system + "\n\n" + note
        return system + "\n\n" + self.instructions.strip() if self.instructions else system

    def data_tags(self) -> tuple[str, ...]:
        """The tags the step's user messages put row text in (see :mod:`corral._delimit`)."""
        return self._template.tags

    @cached_property
    def _data_note(self) -> str:
        return data_note(self.data_tags())

    @cached_property
    def _tpl(self) -> Template:
        return self._template  # read once: private attributes are slow to read on a model

    @cached_property
    def _inputs(self) -> tuple[tuple[str, ...], ...]:
        return tuple(self.input_names())

    @cached_property
    def _when_names(self) -> frozenset[str]:
        return frozenset(self.when_names())

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        """The request that asks the model about one row: the system prompt (with the step's
        ``instructions``) and the ``input`` with the row's values in tags, for the step's schema."""
        return self.request(self._system, self._tpl.prompt(context), self._schema, sample)

    def request(
        self, system: str, user: str, schema: dict[str, Any] | None, sample: int = 0
    ) -> Request:
        """A request of this step: ``system`` and ``user`` messages, the answer's ``schema``,
        and the step's output limit and temperature (what every :meth:`render` sends)."""
        return Request(
            messages=(Message("system", system), Message("user", user)),
            schema=schema,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            sample=sample,
        )

    # --- likelihood scoring (``scoring:``, ``calibrate:``) ----------------------------------

    #: whether the task can pick its answer by likelihood (:meth:`score_requests`)
    can_score: ClassVar[bool] = False

    def scoring_choices(self) -> int:
        """How many continuations a row's scoring evaluates (its cost grows with them)."""
        return 2

    def scoring_prompts(self) -> int:
        """How many scoring requests (prompts) a row takes."""
        return 1

    def uses_likelihood(self, caps: Capabilities) -> bool:
        """Whether this step's calls to a model with these capabilities score choices. ``auto``
        scores on exact scorers up to AUTO_SCORING_MAX_CHOICES choices and AUTO_SCORING_MAX_QUESTIONS
        prompts a row: past those, generating one answer is cheaper."""
        if self.scoring == "generate" or not self.can_score:
            return False
        if self.scoring == "likelihood":
            return caps.supports_scoring
        return (caps.exact_scoring and self.reasoning is False and self.mode == "online" and self.pack == 1
                and self.scoring_choices() <= AUTO_SCORING_MAX_CHOICES
                and self.scoring_prompts() <= AUTO_SCORING_MAX_QUESTIONS)

    def calibrates(self, caps: Capabilities) -> bool:
        """Whether likelihood scores on a model with these capabilities are calibrated."""
        if self.calibrate == "auto":
            return caps.exact_scoring
        return self.calibrate == "contextual"

    def score_requests(self, context: dict[str, Any], sample: int = 0) -> list[Request]:
        """The scoring requests (``Request.choices``) that answer this row by likelihood."""
        raise NotImplementedError(f"task `{self.task}` cannot score by likelihood")

    def from_scores(
        self, scores: list[dict[str, float]], content_free: list[dict[str, float]] | None
    ) -> tuple[dict[str, Any], float, dict[str, Any]]:
        """The answer, its confidence and the (calibrated) probabilities shown in the trace,
        from the log-probabilities of :meth:`score_requests`' choices (and of the same requests
        for a content-free input, when calibrated)."""
        raise NotImplementedError(f"task `{self.task}` cannot score by likelihood")

    def content_free(self, context: dict[str, Any], filler: str) -> dict[str, Any]:
        """``context`` with every input placeholder replaced by ``filler``, one of
        :data:`CONTENT_FREE` (contextual calibration)."""
        out = dict(context)
        for name in self._inputs:
            node = out
            for part in name[:-1]:
                inner = node.get(part)
                node[part] = dict(inner) if isinstance(inner, dict) else {}
                node = node[part]
            node[name[-1]] = filler
        return out

    def parse(self, completion: Completion, request: Request | None = None) -> dict[str, Any]:
        """Turn a completion into an accepted answer or raise an :class:`OutputError`.

        The answer is checked against the request's schema (a task may give each row its own,
        e.g. the candidates of a reference list), else against :meth:`output_schema`.
        """
        if completion.finish_reason == "length":
            limit = request.max_tokens if request is not None else self.max_tokens
            raise Truncated(f"truncated: the answer hit the {limit}-token output limit")
        if completion.finish_reason in ("refused", "content_filter"):
            raise Refused(f"refused by the model ({completion.finish_reason})")
        try:
            data = json.loads(completion.text, strict=False)
        except json.JSONDecodeError as e:
            raise InvalidOutput(f"response is not JSON ({e.msg} at char {e.pos})") from None
        except ValueError as e:  # e.g. an integer too long to convert
            raise InvalidOutput(f"response is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise InvalidOutput(f"response is JSON {type(data).__name__}, expected an object")
        schema = request.schema if request is not None and request.schema else self._schema
        validator, valid = _validator(self.validation_schema(schema))
        text = completion.text
        if text in valid:  # this exact text already passed this schema (labels repeat a lot)
            return data
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            where = "/".join(str(p) for p in err.path) or "answer"
            raise InvalidOutput(f"response breaks the schema at {where}: {err.message}")
        if len(text) <= 512 and len(valid) < 4096:
            valid.add(text)
        return data


#: the name the Step class had first; plugins written against it keep working
Task = Step


def distinct_strings(values: list[Any], not_text: str, repeated: str) -> list[str]:
    """``values`` when they are distinct strings, else a ``ValueError`` saying ``not_text`` (one
    is not a string) or ``repeated`` (one is there twice)."""
    if not all(isinstance(x, str) for x in values):
        raise ValueError(not_text)
    if len(set(values)) != len(values):
        raise ValueError(repeated)
    return values


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict)):
        return not value
    return False
