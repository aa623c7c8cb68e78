"""What the bundled model's embeddings are good for: nearest-neighbour spam/ham agreement on a
seeded sample of ../shared/data/sms_spam, against the fake model's word-hash vectors and the
majority class.

  .venv/bin/python bench/embed_local.py [--rows 300] [--seed 0] [--no-extra-bufts]

Each message is embedded (the bundled SmolLM2-135M-Instruct through `local`: mean pooling,
unit length; `fake`: the sum of one pseudo-random vector per word, 256 numbers); a row's label
is predicted from its nearest other row by cosine similarity (1-NN) and from the majority of its
5 nearest (5-NN), leave-one-out. `--no-extra-bufts` loads llama.cpp's weights without its extra
(AMX-repacked) buffers, for machines where that path crashes. Writes
bench/results/embed_local.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS, SMS_TSV, cmdline, machine  # noqa: E402

from corral.models.base import Message, Request  # noqa: E402
from corral.models.fake import FakeModel  # noqa: E402


def sample(rows: int, seed: int) -> list[tuple[str, str]]:
    with open(SMS_TSV, encoding="utf-8", newline="") as f:
        data = [(r[0], r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2][1:]
    return random.Random(seed).sample(data, rows)


async def embed_all(model: Any, texts: list[str], per_call: int = 16) -> list[list[float]]:
    out: list[list[float]] = []
    try:
        for i in range(0, len(texts), per_call):
            part = texts[i : i + per_call]
            req = Request(messages=tuple(Message("user", t) for t in part), max_tokens=0, embed=True)
            c = await model.complete(req)
            assert c.vectors is not None and len(c.vectors) == len(part)
            out.extend(c.vectors)
    finally:
        await model.aclose()
    return out


def agreement(vectors: list[list[float]], labels: list[str], k: int) -> float:
    import numpy as np

    x = np.asarray(vectors, dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    right = 0
    for i, row in enumerate(sim):
        near = np.argsort(-row)[:k]
        vote = Counter(labels[j] for j in near).most_common(1)[0][0]
        right += vote == labels[i]
    return right / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-extra-bufts", action="store_true")
    a = ap.parse_args()
    if a.no_extra_bufts:
        import llama_cpp

        default = llama_cpp.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_model_default_params = params
    from corral.models.local import LocalModel

    rows = sample(a.rows, a.seed)
    texts, labels = [t for _, t in rows], [label for label, _ in rows]
    out: dict[str, Any] = {"command": cmdline(sys.argv), "machine": machine(), "rows": a.rows, "seed": a.seed,
                           "spam": labels.count("spam"), "majority_class": max(Counter(labels).values()) / len(labels)}
    for name, model in (("local", LocalModel()), ("fake (word hashes, 256)", FakeModel(None, dimensions=256))):
        t = time.monotonic()
        vectors = asyncio.run(embed_all(model, texts))
        wall = time.monotonic() - t
        out[name] = {"dimensions": len(vectors[0]), "seconds": round(wall, 1),
                     "1nn": round(agreement(vectors, labels, 1), 4), "5nn": round(agreement(vectors, labels, 5), 4)}
        print(f"{name}: {len(vectors[0])} numbers, 1-NN {out[name]['1nn']:.1%}, 5-NN {out[name]['5nn']:.1%}, "
              f"{wall:.1f} s", flush=True)
    print(f"majority class: {out['majority_class']:.1%} ({out['spam']} spam of {a.rows})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed_local.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
