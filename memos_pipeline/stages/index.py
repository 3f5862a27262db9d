"""The index stage: bring the BM25 index in line with Postgres (the source of truth) for one ingest or a few
memories. Upserts activated memories, deletes archived and deleted ones.
"""

from __future__ import annotations

import logging
import time
import uuid

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import memories as memory_rows
from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Index
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.ingests import get_ingest
from memos_pipeline.storage.models import Memory
from memos_pipeline.text.tokenizer import analyzed

log = logging.getLogger(__name__)


def indexed_text(m: Memory) -> str:
    """What BM25 indexes of a memory: a raw window's text; a fact's (or other kind's) key and value."""
    return f"{m.memory_key}\n{m.memory_value}" if m.kind != "raw" else m.memory_value


def bm25_doc(m: Memory) -> Bm25Doc:
    return Bm25Doc(str(m.id), str(m.tenant_id), m.user_id, m.conversation_id, m.kind, analyzed(indexed_text(m)))


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
        if get_ingest(s, ingest_id) is None:
            log.warning("ingest %s vanished before indexing", ingest_id)
            return 0
        lifecycle.mark_stage(s, ingest_id, "indexer", "running")
        memories = memory_rows.memories_of_ingest(s, ingest_id)
    t0 = time.perf_counter()
    n = index_memories(index, memories)
    bm25_ms = round((time.perf_counter() - t0) * 1000, 2)
    with session_scope(settings) as s:
        lifecycle.mark_stage(s, ingest_id, "indexer", "done", documents=n, bm25_ms=bm25_ms)
    return n
