"""``embed``: one vector per row, from a model's embeddings API.

The step's ``input`` is rendered as plain text (no tags: an embedding model follows no
instructions, so the text is not set off as data, and the injection gate does not read it) and
sent as an embeddings request (:attr:`Request.embed`). Its answer is the vector and the model that
made it; the sink gets two columns, the vector (``{name}``: a fixed-size list of float32 in
Parquet, ``FLOAT[n]`` in DuckDB, a JSON array elsewhere) and ``{name}_model``. Each row's request
is its own cache entry, so a rerun over a table with new or changed rows embeds only those.
Rows are sent ``pack`` to a request (64 by default): :meth:`EmbedStep.pack_request` puts their
texts in one embeddings request, :meth:`EmbedStep.unpack` gives each row its vector back, and
the packer (:mod:`corral._pack`) records each row under its own request, with its share of the
call's tokens and cost.

An embedding is not sampled: an answer that cannot be used (no vector, the wrong length) comes
back the same when asked again, so the step tries once by default (``max_attempts: 1``); a
transient provider error is retried by the request layer as for any call. The trace keeps the
vector's length, norm and model, not the vector (which the record's outputs hold).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from corral.errors import InvalidOutput
from corral.io.base import Column
from corral.models.base import Completion, Message, Request
from corral.tasks.base import Step

__all__ = ["EmbedStep"]

#: the most numbers one vector may have (OpenAI's largest model has 3072)
MAX_DIMENSIONS = 16_384


class EmbedStep(Step):
    """One vector per row: ``input`` embedded by the step's model (``dimensions`` long when
    set). The sink gets ``{name}`` (the vector) and ``{name}_model`` (the model that made it)."""

    task: Literal["embed"] = "embed"
    dimensions: int | None = Field(
        default=None, ge=1, le=MAX_DIMENSIONS,
        description="the vectors' length, on models that shorten theirs (text-embedding-3-*); "
        "default the model's own. An answer of another length is quarantined",
    )
    max_attempts: int = Field(
        default=1, ge=1, le=20,
        description="tries per record before it is quarantined (an embedding comes back the same "
        "when asked again: one by default)",
    )

    pack: int = Field(
        default=64, ge=1, le=2048,
        description="rows embedded in one request (OpenAI takes up to 2048 texts in one); each row "
        "keeps its own cache entry, ledger row (its share of the call) and trace",
    )

    #: an embedding model reads the input as text, not as instructions
    sends_prompt: ClassVar[bool] = False
    can_pack: ClassVar[bool] = True

    @model_validator(mode="after")
    def _fits_embed(self) -> EmbedStep:
        if self.strategy.name != "single":
            raise ValueError(
                f"an embed step asks for one vector per row; strategy `{self.strategy.name}` has "
                "nothing to vote on or repair: use `strategy: single` (or remove `strategy:`)"
            )
        if self.reasoning is not False:
            raise ValueError("an embed step writes no answer to reason about; remove `reasoning:`")
        if self.checks:
            raise ValueError("an embed step's answer is a vector, which `checks:` cannot test; remove them")
        if self.min_confidence is not None:
            raise ValueError("an embed step's vectors have no confidence; remove `min_confidence:`")
        return self

    def output_schema(self) -> dict[str, Any]:
        vector: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
        if self.dimensions is not None:
            vector["minItems"] = vector["maxItems"] = self.dimensions
        return {
            "type": "object",
            "properties": {"vector": vector, "model": {"type": "string"}},
            "required": ["vector", "model"],
        }

    def system_prompt(self) -> str:
        return ""  # an embeddings request has no system message

    def data_tags(self) -> tuple[str, ...]:
        return ()  # the text is sent as it is, in no tags

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        """The embeddings request of one row: its rendered ``input`` as the one text."""
        return Request(
            messages=(Message("user", self._tpl.render(context)),),
            max_tokens=0,  # an embedding has no output tokens (rate limits count prompts alone)
            sample=sample,
            embed=True,
            dimensions=self.dimensions,
        )

    def parse(self, completion: Completion, request: Request | None = None) -> dict[str, Any]:
        """The row's vector (and the model that made it), or :class:`InvalidOutput` naming what
        is wrong with it."""
        vectors = completion.vectors
        if not vectors or len(vectors) != 1:
            got = "no vector" if not vectors else f"{len(vectors)} vectors"
            raise InvalidOutput(f"the embeddings answer has {got} for one text")
        vector = vectors[0]
        if not vector or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            raise InvalidOutput("the embedding is not a list of numbers")
        if not all(math.isfinite(x) for x in vector):
            raise InvalidOutput("the embedding holds a number that is not finite (NaN or infinity)")
        want = request.dimensions if request is not None else self.dimensions
        if want is not None and len(vector) != want:
            raise InvalidOutput(
                f"the embedding has {len(vector)} numbers, not the {want} of `dimensions: {want}` "
                "(the model ignores `dimensions`: remove it, or set it to the model's length)"
            )
        return {"vector": vector, "model": completion.model}

    def pack_request(self, requests: list[Request]) -> Request:
        """One embeddings request for several rows: their texts, in order."""
        first = requests[0]
        texts = tuple(m for r in requests for m in r.messages if m.role == "user")
        return Request(messages=texts, max_tokens=0, sample=first.sample, embed=True, dimensions=first.dimensions)

    def unpack(self, packed: Request, completion: Completion, n: int) -> list[Completion | None]:
        """One completion per row, each with its own vector (``None`` for a row the answer has
        no vector for: it is asked alone)."""
        vectors = completion.vectors or []
        out: list[Completion | None] = [
            Completion(text="", finish_reason=completion.finish_reason, model=completion.model,
                       latency_s=completion.latency_s, vectors=[v])
            for v in vectors[:n]
        ]
        return out + [None] * (n - len(out))

    def traced(self, answer: dict[str, Any]) -> dict[str, Any]:
        vector = answer.get("vector") or []
        norm = math.sqrt(sum(x * x for x in vector))
        return {"dimensions": len(vector), "norm": round(norm, 4), "model": answer.get("model")}

    def columns(self) -> list[Column]:
        return [Column(self.name, "vector", size=self.dimensions), Column(f"{self.name}_model", "string")]

    def to_columns(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {}
        return {self.name: value.get("vector"), f"{self.name}_model": value.get("model")}
