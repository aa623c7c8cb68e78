"""Scoring a prompt's choices on a llama.cpp model: the prompt evaluated once, the choices' tokens
as a trie searched best first, many branches in one decode.

A choice's score is the log-probability that the answer is exactly that choice among the others:
the sum of its tokens' log-probabilities, plus, where another choice continues it (``card`` and
``card_arrival``), the log of the probability that the answer stops there rather than goes on
into one of those. No end-of-turn token is scored: what the model would write after the label
says little about the label (the tickets example's rows 41-243, calibrated: 62.1% right without
it, 52.2% with it; bench/eval/scoring_prompts.py).

Search. Every node of the trie (a prefix shared by some choices) has a bound: its prefix's
log-probability minus the smallest offset of the choices below it (the offsets are the calibration's
content-free scores; zero without calibration). The probability, after calibration, of all the
choices below a node together is at most ``exp(bound)``. Nodes are expanded best bound first, up to
:data:`NODES_PER_DECODE` of them in one batched decode, each in a sequence of its own that shares
the prompt's KV cache cells (and its ancestors'). The search stops as soon as the best finished
choice beats every open bound: the answer is the exact argmax. A choice left below an open node gets its share of the node's bound, so the
open branches' probability is never understated and the answer's normalised probability (its
confidence) never overstated. ``exhaustive`` scores every choice (a content-free prompt's, whose
scores are the offsets), decoding a chain of single children in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from corral.errors import PermanentModelError

__all__ = ["ChoiceScorer", "Scored"]

#: the most trie nodes expanded in one decode when searching: on a CPU a decode's time grows
#: with its tokens (the bundled model: 16 ms for one, 37 ms for four), so a narrow search that
#: stops early beats a wide one (77 labels: 4 a decode took 44-80 tokens, 16 with chains 290)
NODES_PER_DECODE = 4
#: the most sequences (branches in flight at once, the prompt's own included)
MAX_SEQUENCES = 64


@dataclass
class Scored:
    """What one scoring request got: each choice's log-probability (estimated for those in
    ``estimated``, whose branches the search left unexpanded), and what it cost."""

    scores: dict[str, float]
    estimated: frozenset[str]
    prompt_tokens: int
    #: the prompt's tokens evaluated (the rest were in the KV cache from the request before)
    prompt_evaluated: int
    choice_tokens: int
    decodes: int


@dataclass(eq=False)
class _Node:
    token: int
    depth: int  # position after the prompt
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    ends: str | None = None  # the choice whose last token this is
    below: list[str] = field(default_factory=list)  # every choice through this node
    cum: float = 0.0
    seq: int = -1  # the sequence holding this node's KV cell, once decoded
    waiting: int = 0  # children not yet decoded that need to be


class ChoiceScorer:
    """Scores choices after prompts on its own llama.cpp context (several sequences, one KV
    cache), made from an already loaded ``llama_cpp.Llama``. Not thread-safe: one caller."""

    def __init__(self, llama: Any, *, n_batch: int = 512) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        own = llama.context_params
        params = type(own).from_buffer_copy(own)  # the generating context's settings, then:
        self.n_batch = min(n_batch, int(own.n_ctx))
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # every sequence sees the prompt's cells: one cache, not 64
        params.no_perf = True
        self.n_ctx = int(own.n_ctx)
        self._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._n_vocab = llama.n_vocab()
        self._held: list[int] = []  # the prompt tokens sequence 0 holds in the cache

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()

    # -- the model's numbers -----------------------------------------------------------------

    def _logprobs(self, i: int) -> Any:
        import numpy as np

        raw = np.ctypeslib.as_array(
            self._llama_cpp.llama_get_logits_ith(self._ctx.ctx, i), shape=(self._n_vocab,)
        )
        x = raw.astype(np.float64)
        top = x.max()
        return x - top - math.log(float(np.exp(x - top).sum()))

    def _prompt(self, prompt: list[int]) -> tuple[Any, int]:
        """Evaluate ``prompt`` in sequence 0, reusing what the cache holds of it: the last
        token's log-probabilities, and how many tokens were evaluated."""
        same = 0
        for a, b in zip(self._held, prompt[:-1]):  # always evaluate the last token again
            if a != b:
                break
            same += 1
        self._ctx.kv_cache_seq_rm(-1, same, -1)
        self._held = self._held[:same]
        b = self._batch.batch
        pos = same
        while pos < len(prompt):
            chunk = prompt[pos: pos + self.n_batch]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos + i, 1, False
                b.seq_id[i][0] = 0
            b.logits[len(chunk) - 1] = True
            self._ctx.decode(self._batch)
            pos += len(chunk)
            self._held = list(prompt[:pos])
        return self._logprobs(b.n_tokens - 1), len(prompt) - same

    # -- the search --------------------------------------------------------------------------

    def score(
        self,
        prompt: list[int],
        tails: dict[str, list[int]],
        offsets: dict[str, float] | None = None,
        *,
        exhaustive: bool = False,
    ) -> Scored:
        """Each choice's log-probability after ``prompt``; ``tails`` holds each choice's tokens.
        ``offsets`` (calibration) order the search only; the scores returned are uncalibrated."""
        off = offsets or {}
        root = _Node(token=-1, depth=-1, parent=None, seq=0)
        for choice, toks in tails.items():
            node = root
            node.below.append(choice)
            for d, tok in enumerate(toks):
                node = node.children.setdefault(tok, _Node(token=tok, depth=d, parent=node))
                node.below.append(choice)
            node.ends = choice
        deepest = max((len(t) for t in tails.values()), default=0)
        if len(prompt) + deepest > self.n_ctx:
            raise PermanentModelError(
                f"prompt of {len(prompt) + deepest} tokens exceeds the model's context of "
                f"{self.n_ctx} tokens; shorten the input or raise the model's n_ctx option"
            )
        base = len(prompt)
        bound: dict[int, float] = {}  # each open node's bound
        low: dict[int, float] = {}  # the smallest offset below each node, computed once
        finished: dict[str, float] = {}
        frontier: list[_Node] = []
        free = list(range(MAX_SEQUENCES - 1, 0, -1))
        used: set[int] = set()
        tokens = decodes = 0

        def lowest(n: _Node) -> float:
            got = low.get(id(n))
            if got is None:
                got = low[id(n)] = min(off.get(c, 0.0) for c in n.below)
            return got

        def opened(n: _Node, lp: Any) -> None:
            """``n``'s next-token log-probabilities are known: score its children."""
            stay = 1.0
            for child in n.children.values():
                child.cum = n.cum + float(lp[child.token])
                stay -= math.exp(float(lp[child.token]))
                if child.children:
                    n.waiting += 1
                    bound[id(child)] = child.cum - lowest(child)
                    frontier.append(child)
                if child.ends is not None and not child.children:
                    finished[child.ends] = child.cum
            if n.ends is not None:  # a choice that others continue: it ends here
                finished[n.ends] = n.cum + math.log(max(stay, 1e-12))

        def release(n: _Node | None) -> None:
            while n is not None and n.seq > 0 and n.waiting == 0:
                self._ctx.kv_cache_seq_rm(n.seq, -1, -1)
                used.discard(n.seq)
                free.append(n.seq)
                n.seq = -1
                n = n.parent

        try:
            first, evaluated = self._prompt(prompt)
            opened(root, first)
            while frontier:
                frontier.sort(key=lambda n: bound[id(n)], reverse=True)
                if not exhaustive and finished:
                    best = max(s - off.get(c, 0.0) for c, s in finished.items())
                    if best >= bound[id(frontier[0])]:  # no open branch can beat it: settled
                        break
                picked: list[list[_Node]] = []
                n_tok = 0
                limit = len(frontier) if exhaustive else NODES_PER_DECODE
                for node in list(frontier):
                    if len(picked) >= limit or not free or len(picked) >= len(free):
                        break
                    chain = [node]
                    while (exhaustive and chain[-1].ends is None and len(chain[-1].children) == 1
                           and next(iter(chain[-1].children.values())).children):
                        chain.append(next(iter(chain[-1].children.values())))
                    if n_tok + len(chain) > self.n_batch:
                        break
                    picked.append(chain)
                    n_tok += len(chain)
                if not picked:  # out of sequences or batch room: the rest stays estimated
                    break
                b = self._batch.batch
                j = 0
                where = []
                for chain in picked:
                    head = chain[0]
                    frontier.remove(head)
                    seq = free.pop()
                    used.add(seq)
                    parent = head.parent
                    assert parent is not None and parent.seq >= 0
                    self._ctx.kv_cache_seq_cp(parent.seq, seq, -1, -1)
                    where.append(j)
                    for node in chain:
                        b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = node.token, base + node.depth, 1, True
                        b.seq_id[j][0] = seq
                        node.seq = seq
                        j += 1
                b.n_tokens = j
                self._ctx.decode(self._batch)
                decodes += 1
                tokens += j
                for chain, start in zip(picked, where):
                    for k, node in enumerate(chain):
                        lp = self._logprobs(start + k)
                        if k + 1 < len(chain):
                            nxt = chain[k + 1]
                            nxt.cum = node.cum + float(lp[nxt.token])
                        else:
                            opened(node, lp)
                    for node in chain[:-1]:  # the chain's inner nodes wait on nothing now
                        node.seq = -1
                    chain[0].parent.waiting -= 1  # type: ignore[union-attr]
                for chain in picked:
                    release(chain[-1])
                    release(chain[0].parent)
        finally:
            for seq in used:
                self._ctx.kv_cache_seq_rm(seq, -1, -1)
        scores = dict(finished)
        estimated: set[str] = set()
        for node in frontier:  # each open choice gets its share of its node's bound
            share = bound[id(node)] - math.log(len(node.below))
            for c in node.below:
                if c not in scores:
                    scores[c] = share + off.get(c, 0.0)
                    estimated.add(c)
        return Scored(
            scores={c: scores[c] for c in tails}, estimated=frozenset(estimated),
            prompt_tokens=len(prompt), prompt_evaluated=evaluated, choice_tokens=tokens, decodes=decodes,
        )

