"""The Job spec: what to run, declared in YAML or Python.

Unknown keys are rejected with the nearest valid key; every problem is reported as one line that
says where it is and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from corral._monitor import MonitorSpec
from corral._registry import suggest
from corral.errors import JobSpecError
from corral.io.spec import SinkSpec, SourceSpec
from corral.tasks import Step, StepSpecError, parse_step
from corral.tasks.base import name_rule

#: the keys of a model mapping that the engine reads (limits, retries); the others are the model's options
_ENGINE_KEYS = ("rpm", "tpm", "timeout_s", "max_retries", "max_outage_s", "batch_poll_s", "batch_resubmits")


#: the most records a run works on at once (the job's ``concurrency``, and the default's ceiling)
MAX_CONCURRENCY = 1024

class ModelRef(BaseModel):
    """A model by name: ``local``, ``local:/path/model.gguf``, ``fake``, or a mapping
    ``{name: fake, latency: 0.05}`` whose other keys are options for the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arg: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    rpm: float | None = Field(default=None, gt=0, description="requests per minute allowed")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute allowed")
    timeout_s: float | None = Field(default=None, gt=0, description="seconds one call may take")
    max_retries: int = Field(default=6, ge=0, le=100, description="retries of a call that failed transiently")
    max_outage_s: float = Field(
        default=300.0, gt=0, description="seconds the provider may stay unreachable before the run stops"
    )
    batch_poll_s: float = Field(default=30.0, gt=0, description="seconds between polls of a provider batch")
    batch_resubmits: int = Field(
        default=2, ge=0, le=20, description="new batches for requests that errored, expired or were cancelled"
    )

    @classmethod
    def parse(cls, value: Any) -> ModelRef:
        if isinstance(value, ModelRef):
            return value
        if isinstance(value, str):
            name, _, arg = value.partition(":")
            return cls(name=name.strip(), arg=arg.strip() or None)
        if isinstance(value, dict):
            if "name" not in value:
                raise ValueError("a model mapping needs `name:` (e.g. {name: fake, latency: 0.1})")
            ref = cls.parse(str(value["name"]))
            opts = {k: v for k, v in value.items() if k != "name" and k not in _ENGINE_KEYS}
            limits = {k: v for k, v in value.items() if k in _ENGINE_KEYS}
            return cls.model_validate(
                {"name": ref.name, "arg": ref.arg, "options": opts, **limits}
            )
        raise ValueError("model must be a name like `local` or a mapping with `name:`")

    def __str__(self) -> str:
        return self.name + (f":{self.arg}" if self.arg else "")

    @model_serializer(mode="plain")
    def _as_written(self) -> dict[str, Any]:
        """Serialized the way it is written in a job file, so a dump loads back as the same."""
        out: dict[str, Any] = {"name": str(self), **self.options}
        fields = type(self).model_fields
        for k in _ENGINE_KEYS:
            if getattr(self, k) != fields[k].default:
                out[k] = getattr(self, k)
        return out


class RecordBudget(BaseModel):
    """Limits on one record's calls, over all its steps. A record that would pass one goes to
    review with its best answer so far and reason ``budget``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(default=None, ge=1, description="calls one record may use")
    max_tokens: int | None = Field(default=None, ge=1, description="tokens (in + out) one record may use")
    max_cost: Decimal | None = Field(default=None, gt=0, description="USD one record may cost")

    def active(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_tokens, self.max_cost))


class Budget(BaseModel):
    """Run-wide limits. A run that reaches one stops cleanly and resumes with a larger one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cost_usd: Decimal | None = Field(default=None, ge=0, description="stop before spending more")
    max_tokens: int | None = Field(default=None, ge=0, description="stop before using more tokens")
    max_calls: int | None = Field(default=None, ge=0, description="stop before making more paid calls")
    per_record: RecordBudget = Field(
        default_factory=RecordBudget, description="limits on each record's calls, tokens and cost"
    )


_JOB_NAME = name_rule(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "job name `{}` must start with a letter or digit "
                      "and use only letters, digits, _, . and - (it names the run and its files)")


class Job(BaseModel):
    """A batch job: a source of rows, steps that ask a model about each row, and a sink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, _JOB_NAME] = Field(description="job name")
    source: SourceSpec = Field(description="input file or table")
    key: str | None = Field(default=None, description="column with a unique id per row (else a content hash)")
    steps: list[SerializeAsAny[Step]] = Field(
        min_length=1, description="what to ask about each row, in order (see `task:`)"
    )
    model: ModelRef = Field(default_factory=lambda: ModelRef(name="local"), description="model name")
    models: dict[str, ModelRef] = Field(
        default_factory=dict,
        description="more models by name, for strategies (`model: NAME` in a strategy)",
    )
    sink: SinkSpec = Field(description="output file or table")
    budget: Budget = Field(default_factory=Budget, description="run-wide limits")
    tags: dict[str, str] = Field(default_factory=dict, description="labels kept with the run's costs")
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY, description="calls in flight at once")
    monitor: MonitorSpec = Field(
        default_factory=MonitorSpec, description="compare each finished run with the job's previous one"
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        """Each step mapping as the class its ``task:`` names (see :func:`parse_step`)."""
        if not isinstance(v, list):
            return v
        steps: list[Any] = []
        failed: list[tuple[int, StepSpecError]] = []
        for i, item in enumerate(v):
            try:
                steps.append(parse_step(item))
            except StepSpecError as e:
                failed.append((i, e))
        if failed:
            raise _StepsError(failed)
        return steps

    @field_validator("source", "sink", mode="before")
    @classmethod
    def _path_shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("model", mode="before")
    @classmethod
    def _model_ref(cls, v: Any) -> Any:
        return ModelRef.parse(v)

    @field_validator("models", mode="before")
    @classmethod
    def _model_refs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ModelRef.parse(x) for k, x in v.items()}
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_values(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _unique_steps(self) -> Job:
        seen: set[str] = set()
        for s in self.steps:
            if s.name in seen:
                raise ValueError(f"two steps are named `{s.name}`; step names must be unique")
            seen.add(s.name)
        from corral._registry import model_names

        known = model_names()
        for s in self.steps:  # the step's strategy, and each expert's (its own or `model:`)
            named = [(f"step `{s.name}`: strategy model", s)]
            named += [(f"step `{s.name}`: expert `{e.route}`: model", e.step) for e in s.routes()]
            for who, variant in named:
                for name in variant.strategy.models():
                    if name in self.models:
                        continue
                    base = name.partition(":")[0].strip()
                    if base not in known:
                        choices = sorted(self.models) + known
                        raise ValueError(
                            f"{who} `{name}` is neither a key of `models:` "
                            f"nor an installed model{suggest(name, choices) or '.'} Choose from: "
                            f"{', '.join(choices)}."
                        )
        return self

    def can_review(self) -> bool:
        """Whether rows can be held for review (checks, per-record budgets, deliberation)."""
        return self.budget.per_record.active() or any(
            v.checks or v.strategy.name != "single" for s in self.steps for v in s.variants()
        )

    def model_ref(self, name: str | None) -> ModelRef:
        """The model a strategy names: a key of ``models:``, a model name, or the job's model."""
        if name is None:
            return self.model
        if name in self.models:
            return self.models[name]
        return ModelRef.parse(name)

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: Path | None = None, origin: str = "job") -> Job:
        if not isinstance(data, dict):
            raise JobSpecError(f"{origin}: a job must be a mapping with name, source, steps, sink")
        try:
            job = cls.model_validate(data)
        except ValidationError as e:
            raise JobSpecError(f"{origin}: {_describe(e, data)}") from None
        if base_dir is not None:
            job._base_dir = base_dir.resolve()
        return job

    @classmethod
    def load(cls, path: str | Path) -> Job:
        """Read a YAML job file. Paths inside it are relative to the file's folder."""
        p = Path(path)
        if p.is_dir():
            shown = str(path).rstrip("/\\") + "/"
            found = sorted(q.name for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
            if not found:
                raise JobSpecError(f"{shown} is a folder, with no .yaml file in it; give the job file, "
                                   "e.g. examples/tickets.yaml")
            listed = ", ".join(found[:10]) + (", ..." if found[10:] else "")
            raise JobSpecError(f"{shown} is a folder; give the job file, e.g. {shown}{found[0]} "
                               f"(YAML files in it: {listed})")
        if not p.is_file():
            raise JobSpecError(f"job file not found: {p} — check the path (e.g. examples/tickets.yaml)")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise JobSpecError(f"{p}: the job file is not UTF-8 text; save it as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise JobSpecError(f"{p}{where}: not valid YAML ({problem}); check indentation and quoting") from None
        return cls.from_dict(data, base_dir=p.parent, origin=str(p))

    # --- derived ---------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def with_model(self, model: str | dict[str, Any] | ModelRef) -> Job:
        job = self.model_copy(update={"model": ModelRef.parse(model)})
        job._base_dir = self._base_dir
        return job

    def spec_hash(self) -> str:
        """Identity of what the job computes, less the model (the run id adds the model's id).

        Where the job writes, its budget and tags are left out: changing them resumes the run.
        """
        ident: dict[str, Any] = {
            "name": self.name,
            "key": self.key,
            "source": self.source.model_dump(mode="json"),
            "steps": [_step_identity(s) for s in self.steps],
        }
        if self.models:  # what strategies call is part of what the job computes (not credentials)
            ident["models"] = {
                k: {"name": str(r), **{o: v for o, v in r.options.items() if not _secret(o)}}
                for k, r in sorted(self.models.items())
            }
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


#: step keys added after jobs already had run ids: left out of the identity at their defaults, so
#: a job that does not use them keeps the run id it had
_LATER_DEFAULTS: dict[str, Any] = {
    "strategy": {"name": "single", "model": None},
    "checks": [],
    "reasoning": False,
}


def _step_identity(step: Step) -> dict[str, Any]:
    d = step.model_dump(mode="json", exclude={"mode"})
    for k, default in _LATER_DEFAULTS.items():
        if d.get(k) == default:
            d.pop(k, None)
    bound = step.identity()  # e.g. a reference file's content
    if bound:
        d["_bound"] = bound
    experts = {e.route: e.step.identity() for e in step.routes()}  # (their keys are in `experts`)
    if any(experts.values()):
        d["_bound_experts"] = experts
    return d


def _secret(option: str) -> bool:
    return any(w in option.lower() for w in ("key", "token", "secret", "password"))


# --- error messages ------------------------------------------------------------------------


class _StepsError(ValueError):
    """The steps of ``steps:`` that did not validate, by index (see :func:`_problems`)."""

    def __init__(self, failed: list[tuple[int, StepSpecError]]) -> None:
        super().__init__(f"steps[{failed[0][0]}]: {failed[0][1]}")
        self.failed = failed


#: one problem of a job document: pydantic's error dict, located from the top of the document,
#: with the model class its location starts from (``Job``, or the step class for a step's keys)
#: and how many leading parts of the location that class is below
_Problem = tuple[dict[str, Any], type[BaseModel], int]


def _problems(exc: ValidationError) -> list[_Problem]:
    """The errors of ``exc``, with those of each step mapping located inside ``steps[i]``."""
    out: list[_Problem] = []
    for e in exc.errors():
        failed = (e.get("ctx") or {}).get("error")
        if not isinstance(failed, _StepsError):
            out.append((dict(e), Job, 0))
            continue
        for i, se in failed.failed:
            loc: tuple[Any, ...] = ("steps", i)
            if se.errors is None or se.step_class is None:
                problem = {"type": "step_task", "loc": loc, "msg": str(se), "ctx": {"error": se}}
                out.append((problem, Job, 0))
                continue
            for inner in se.errors.errors():
                out.append(({**inner, "loc": loc + tuple(inner["loc"])}, se.step_class, len(loc)))
    return out


def _model_in(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model class a field's annotation holds, and whether it is inside a list or a dict
    (then a location skips the index or key after the field)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, dict) and args:
        return _model_in(args[-1])[0], True
    if origin is Annotated and args:
        return _model_in(args[0])
    if origin in (Union, UnionType):
        for a in args:
            found = _model_in(a)
            if found[0] is not None:
                return found
    return None, False


def _fields_of(cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the mapping at ``loc`` below a mapping that ``cls`` validates."""
    i = 0
    while i < len(loc) and cls is not None:
        field = cls.model_fields.get(str(loc[i]))
        if field is None:
            break
        cls, contained = _model_in(field.annotation)
        i += 2 if contained else 1
    return sorted(cls.model_fields) if cls is not None else []


def _where(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """``loc`` as a reader finds it: ``steps[0] (step `mood`).fields.total``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            if out == f"steps[{part}]":
                steps = data.get("steps")
                if isinstance(steps, list) and part < len(steps) and isinstance(steps[part], dict):
                    name = steps[part].get("name")
                    if name:
                        out += f" (step `{name}`)"
        elif not str(part).startswith("function-"):
            out += ("." if out else "") + str(part)
    return out


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    order = {"step_task": 0, "extra_forbidden": 1}
    problems = sorted(_problems(exc), key=lambda p: order.get(p[0]["type"], 2))
    e, root, depth = problems[0]
    loc = tuple(e["loc"])
    kind = e["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = loc[:-1]
        valid = _fields_of(root, parent[depth:])
        where = _where(parent, data)
        msg = f"unknown key `{key}`" + (f" in {where}" if where else "")
        msg += suggest(key, valid)
        if valid:
            msg += f" Valid keys: {', '.join(valid)}."
    elif kind == "step_task":
        msg = _task_problem(e["ctx"]["error"], _where(loc, data))
    elif kind == "missing":
        where = _where(loc[:-1], data)
        msg = f"missing `{loc[-1]}`" + (f" in {where}" if where else " at the top level")
    else:
        where = _where(loc, data)
        text = e["msg"].removeprefix("Value error, ")
        msg = f"{where}: {text}" if where else text
    if len(problems) > 1:
        msg += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return msg


def _task_problem(error: StepSpecError, where: str) -> str:
    """A step without a (known) ``task:``, or not a mapping, said at ``where``."""
    text = str(error)
    if text.startswith("unknown task "):  # `unknown task `x` in steps[0]; did you mean ...`
        head, _, rest = text.partition("`")
        name, _, tail = rest.partition("`")
        return f"{head}`{name}` in {where}{tail}"
    return f"{where} {text}" if text.startswith("needs ") else f"{where}: {text}"
