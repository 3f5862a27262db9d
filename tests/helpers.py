"""Small helpers the integration tests share (not fixtures: ``from helpers import wait_for``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.schemas import AddRequest
from memos_pipeline.stages import chunk as chunk_stage
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import content_hash, session_scope
from memos_pipeline.storage.models import Memory

T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.02) -> T:
    """Poll ``fn`` until it returns something truthy, or fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def insert_fact(settings: Settings, tenant_id: uuid.UUID, user_id: str, text: str, axis: int = 0) -> uuid.UUID:
    """A fact memory written straight to Postgres (as the memreader, a restore or a migration would leave it: not
    in BM25), its embedding the unit vector along ``axis``."""
    vec = np.zeros(384, dtype=np.float32)
    vec[axis] = 1.0
    memory_id = uuid.uuid4()
    with session_scope(settings) as s:
        s.add(
            Memory(
                id=memory_id,
                tenant_id=tenant_id,
                user_id=user_id,
                conversation_id="w",
                kind="fact",
                memory_key="fact",
                memory_value=text,
                memory_type="UserMemory",
                status="activated",
                sources=[],
                info={},
                embedding=vec.tolist(),
                content_hash=content_hash(text),
            )
        )
    return memory_id


class HashEmbedder:
    """Deterministic unit vectors (per text, within a run): for tests whose property must not depend on what the
    model ranks."""

    name, dim = "hash", 384

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def stored_add(settings: Settings, tenant_id: uuid.UUID, req: AddRequest, trace_id: str) -> ingests.Accepted:
    """An add accepted (no LLM stages) and chunked with :class:`HashEmbedder`: its windows stored with vectors,
    waiting for the indexer."""
    stages = lifecycle.initial_stages(llm=False, scheduler=False, preference=False)
    with session_scope(settings) as s:
        acc = ingests.accept_ingest(
            s, tenant_id, req, trace_id=trace_id, stages=stages, task_name="memos.chunker.chunk"
        )
    chunk_stage.chunk_ingest(settings, HashEmbedder(), acc.ingest_id)
    return acc
