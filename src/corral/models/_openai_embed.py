"""OpenAI's embeddings API (``POST /v1/embeddings``), online and in Batch API lines.

An embeddings request (:attr:`Request.embed`) sends its texts as ``input`` (many texts in one
call), with ``encoding_format: float`` (the vectors come back as the JSON numbers the server
wrote, kept as they are) and ``dimensions`` when the request names one (``text-embedding-3-*``
shorten their vectors; other models reject it). The answer's ``data[i].embedding`` are put back
in the order of ``data[i].index``; its ``usage.prompt_tokens`` is priced at the model's input
price (batch discount included for Batch API lines). The same body is a Batch API line for
``/v1/embeddings``.
"""

from __future__ import annotations

from typing import Any

from corral.errors import PermanentModelError, TransientModelError
from corral.models._prices import Price
from corral.models.base import Completion, Request, Usage

__all__ = ["EMBEDDINGS_ENDPOINT", "embed_params", "embeddings_completion", "is_embeddings_body"]

#: the Batch API endpoint of embeddings requests
EMBEDDINGS_ENDPOINT = "/v1/embeddings"


def embed_params(name: str, request: Request) -> dict[str, Any]:
    """The ``/v1/embeddings`` body of an embeddings request for model ``name``."""
    texts = request.texts()
    if not texts:
        raise PermanentModelError("an embeddings request needs at least one text")
    p: dict[str, Any] = {"model": name, "input": texts, "encoding_format": "float"}
    if request.dimensions is not None:
        p["dimensions"] = request.dimensions
    return p


def is_embeddings_body(body: Any) -> bool:
    """Whether a response body is an embeddings answer (a ``list`` of ``embedding`` objects)."""
    return isinstance(body, dict) and body.get("object") == "list" and isinstance(body.get("data"), list)


def embeddings_completion(
    where: str, body: Any, wanted: int, price: Price | None, latency: float, batch: bool = False
) -> Completion:
    """The completion of an embeddings answer: ``wanted`` vectors in input order, or a model
    error saying what the server got wrong."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise TransientModelError(f"{where}: the server's answer is not an embeddings list")
    vectors: list[list[float] | None] = [None] * wanted
    for i, item in enumerate(data):
        index = item.get("index", i) if isinstance(item, dict) else None
        vec = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < wanted or not isinstance(vec, list):
            raise PermanentModelError(f"{where}: the embeddings answer has a bad item at {i}")
        vectors[index] = vec
    missing = sum(v is None for v in vectors)
    if missing:
        raise PermanentModelError(
            f"{where}: the server returned {wanted - missing} embeddings for {wanted} inputs"
        )
    u = body.get("usage") or {}
    prompt = int(u.get("prompt_tokens") or 0) if isinstance(u, dict) else 0
    cost = None if price is None or not u else price.cost(prompt, 0, batch=batch)
    return Completion(
        text="",
        usage=Usage(input_tokens=prompt, cost=cost),
        model=str(body.get("model") or ""),
        latency_s=latency,
        vectors=[v for v in vectors if v is not None],
    )
