"""Rerankers behind one interface (``MOS_RERANKER_BACKEND``), used by fine and mixture search.

- ``http_bge``: POST to a rerank service. TEI style (``/rerank``: {"query", "texts"} -> [{"index", "score"}]) or
  the OpenAI/Infinity/Jina style (``/v1/rerank``: {"query", "documents"} -> {"results": [{"index",
  "relevance_score"}]}), chosen by the URL's path.
- ``http_bge_strategy`` with ``MOS_RERANKER_STRATEGY=single_turn``: raw windows are split into their turns, every
  turn is scored, and a window scores as its best turn (a 3-turn window is as relevant as its best line; scoring
  it whole dilutes that line with the other two).
- ``cosine_local``: the local embedding model as a bi-encoder (no service needed; weaker than a cross-encoder).
- ``none``: no reranking; fine search then says so (``reranked: false``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import requests

from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.text.chunking import turn_texts


class Reranker(Protocol):
    name: str

    def scores(self, query: str, docs: Sequence[str]) -> list[float]: ...


class HttpReranker:
    name = "http_bge"
    # TEI rejects a request with more texts than its --max-client-batch-size (default 32).
    max_batch = 32

    def __init__(self, url: str, model: str = "bge-reranker", timeout: float = 10.0) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self._session = requests.Session()

    def scores(self, query: str, docs: Sequence[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(docs), self.max_batch):
            out += self._batch(query, docs[i : i + self.max_batch])
        return out

    def _batch(self, query: str, docs: Sequence[str]) -> list[float]:
        if self.url.rstrip("/").endswith("/v1/rerank"):
            body: dict[str, Any] = {"model": self.model, "query": query, "documents": list(docs)}
        else:
            body = {"query": query, "texts": list(docs), "raw_scores": False}
        resp = self._session.post(self.url, json=body, timeout=self.timeout)
        resp.raise_for_status()
        data = resp.json()
        items = data["results"] if isinstance(data, dict) else data
        out = [0.0] * len(docs)
        for item in items:
            out[int(item["index"])] = float(item.get("relevance_score", item.get("score", 0.0)))
        return out


class SingleTurnReranker:
    """Scores each turn of a window and keeps the best (``http_bge_strategy`` + ``single_turn``). Documents
    without a newline (facts, one-turn windows) are scored whole; a turn shared by overlapping windows is sent
    once."""

    name = "http_bge_strategy"

    def __init__(self, inner: Reranker) -> None:
        self.inner = inner

    def scores(self, query: str, docs: Sequence[str]) -> list[float]:
        unique: dict[str, int] = {}
        owners: list[list[int]] = []
        for doc in docs:
            turns = turn_texts(doc)
            owners.append([unique.setdefault(t, len(unique)) for t in turns])
        turn_scores = self.inner.scores(query, list(unique)) if unique else []
        return [max((turn_scores[i] for i in idx), default=0.0) for idx in owners]  # a blank document scores 0


class CosineReranker:
    name = "cosine_local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def scores(self, query: str, docs: Sequence[str]) -> list[float]:
        if not docs:
            return []
        vecs = get_embedder(self.settings).embed([query, *docs])
        return [float(x) for x in np.asarray(vecs[1:]) @ vecs[0]]


def build_reranker(settings: Settings) -> Reranker | None:
    backend = settings.mos_reranker_backend
    if backend == "none":
        return None
    if backend == "cosine_local":
        return CosineReranker(settings)
    if not settings.mos_reranker_url:
        raise ValueError(f"MOS_RERANKER_BACKEND={backend} needs MOS_RERANKER_URL")
    http = HttpReranker(settings.mos_reranker_url)
    if backend == "http_bge_strategy":
        if settings.mos_reranker_strategy != "single_turn":
            raise ValueError(f"MOS_RERANKER_STRATEGY={settings.mos_reranker_strategy!r}: only single_turn exists")
        return SingleTurnReranker(http)
    return http


def rerank_items(reranker: Reranker, query: str, items: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """Reorder search items by the reranker's scores; ``relativity`` becomes the rerank score."""
    texts = [
        it["memory_value"] if it.get("kind") == "raw" else f"{it['memory_key']}: {it['memory_value']}" for it in items
    ]
    scored = sorted(zip(reranker.scores(query, texts), range(len(items)), strict=True), key=lambda t: (-t[0], t[1]))
    return [
        {**items[i], "relativity": round(s, 6), "fast_relativity": items[i]["relativity"]} for s, i in scored[:top_k]
    ]


def merge_fine_into_fast(fast: list[dict[str, Any]], fine: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """Mixture: the reranked (fine) order first, then fast results the fine list did not hold."""
    seen = {it["id"] for it in fine}
    return (fine + [it for it in fast if it["id"] not in seen])[:top_k]


def mixture_cache_key(tenant_id: str, user_id: str, conversation_id: str | None) -> str:
    """Redis key of the late fine results of a conversation (mixture mode)."""
    return f"memos:mixture:{tenant_id}:{user_id}:{conversation_id or '-'}"
