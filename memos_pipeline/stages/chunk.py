"""The write path, as plain functions the workers call and the tests call directly.

Each function is idempotent: it re-reads its ingest by id, computes what is missing and upserts on natural keys,
so a redelivered task (worker killed, broker restarted) converges to the same rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np

from memos_pipeline import embedders
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.storage import store
from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Index
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory
from memos_pipeline.text.chunking import Window, window_turns
from memos_pipeline.text.tokenizer import analyzed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    ingest_id: uuid.UUID
    memory_ids: list[uuid.UUID]
    llm_stages: list[str]  # stages still pending that the caller must enqueue (memreader, preference)


def _raw_row(w: Window, vector: list[float]) -> dict[str, object]:
    return {
        "chunk_idx": w.chunk_idx,
        "memory_key": w.key,
        "memory_value": w.text,
        "sources": w.sources,
        "source_message_ids": [uuid.UUID(m) for m in w.message_ids],
        "info": w.info,
        "embedding": vector,
        "content_hash": store.content_hash(w.text),
    }


def chunk_ingest(settings: Settings, embedder: Embedder, ingest_id: uuid.UUID) -> ChunkResult | None:
    """Window the ingest's messages, embed the windows in one batch, store them as raw memories."""
    t0 = time.perf_counter()
    with session_scope(settings) as s:
        ingest = store.get_ingest(s, ingest_id)
        if ingest is None:
            log.warning("ingest %s vanished before chunking; nothing to do", ingest_id)
            return None
        store.mark_stage(s, ingest_id, "chunker", "running")
        turns, ctx = store.ingest_turns(s, ingest, settings.chunk_overlap)
    windows = window_turns(turns, size=settings.chunk_turns, overlap=settings.chunk_overlap, context=ctx)
    # Embedding happens outside any transaction: no connection is held while the CPU works.
    t_embed = time.perf_counter()

    def write(vectors: np.ndarray, model_version: int | None) -> ChunkResult | None:
        embed_ms = (time.perf_counter() - t_embed) * 1000
        with session_scope(settings) as s:
            ingest = store.get_ingest(s, ingest_id)
            if ingest is None:
                return None
            ids = store.upsert_raw_memories(
                s, ingest, [_raw_row(w, v.tolist()) for w, v in zip(windows, vectors, strict=True)]
            )
            embedders.require_active(s, model_version)  # a reembed swapped meanwhile: embed again (below)
            store.mark_stage(
                s,
                ingest_id,
                "chunker",
                "done",
                windows=len(windows),
                embed_ms=round(embed_ms, 2),
                work_ms=round((time.perf_counter() - t0) * 1000, 2),
            )
            pending = [st for st in ("memreader", "preference") if ingest.stages.get(st, {}).get("status") == "pending"]
        return ChunkResult(ingest_id, ids, pending)

    return embedders.with_active_model(embedder, [w.text for w in windows], write)


def bm25_doc(m: Memory) -> Bm25Doc:
    text = f"{m.memory_key}\n{m.memory_value}" if m.kind != "raw" else m.memory_value
    return Bm25Doc(str(m.id), str(m.tenant_id), m.user_id, m.conversation_id, m.kind, analyzed(text))


def index_memories(index: Bm25Index, memories: list[Memory]) -> int:
    """Upsert activated memories into BM25 and delete the others (archived/deleted) from it."""
    live = [m for m in memories if m.status == "activated"]
    gone = [m for m in memories if m.status != "activated"]
    if live:
        index.upsert([bm25_doc(m) for m in live])
    if gone:
        # routing: Elasticsearch shards by user; without it a delete must look each document up first.
        index.delete([str(m.id) for m in gone], routing=[m.user_id for m in gone])
    return len(live)


def index_ingest(settings: Settings, index: Bm25Index, ingest_id: uuid.UUID) -> int:
    """Bring the BM25 index in line with the memories of one ingest; marks the indexer stage."""
    with session_scope(settings) as s:
        if store.get_ingest(s, ingest_id) is None:
            log.warning("ingest %s vanished before indexing", ingest_id)
            return 0
        store.mark_stage(s, ingest_id, "indexer", "running")
        memories = store.memories_of_ingest(s, ingest_id)
    n = index_memories(index, memories)
    with session_scope(settings) as s:
        store.mark_stage(s, ingest_id, "indexer", "done", documents=n)
    return n
