"""Corral: LLM-powered batch data pipelines that are durable, budgeted and under control.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from __future__ import annotations

from corral import errors
from corral._eval import Evaluation, evaluate
from corral._result import RunResult
from corral.engine import make_model, run, run_async
from corral.errors import CorralError, UserError
from corral.io.base import Column
from corral.job import Budget, Job, ModelRef
from corral.models.base import Capabilities, Completion, Message, Model, Request, Usage
from corral.models.fake import FakeModel
from corral.store import SQLiteStore, Store, open_store
from corral.strategies.base import Outcome, Sample, Solver, Strategy
from corral.tasks.base import Step, Task
from corral.tasks.classify import ClassifyStep
from corral.tasks.extract import ExtractStep, FieldSpec

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Capabilities",
    "ClassifyStep",
    "Column",
    "Completion",
    "CorralError",
    "Evaluation",
    "ExtractStep",
    "FakeModel",
    "FieldSpec",
    "Job",
    "Message",
    "Model",
    "ModelRef",
    "Outcome",
    "Request",
    "RunResult",
    "SQLiteStore",
    "Sample",
    "Solver",
    "Step",
    "Store",
    "Strategy",
    "Task",
    "Usage",
    "UserError",
    "errors",
    "evaluate",
    "make_model",
    "open_store",
    "run",
    "run_async",
]
