"""The index stage: bring the BM25 index in line with Postgres (the source of truth) for one ingest or a few
memories. Upserts activated memories, deletes archived and deleted ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import memories as memory_rows
from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Index
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, Memory
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


@dataclass(frozen=True)
class Indexed:
    """What indexing one ingest did: its documents, and when it was accepted and became searchable (for the lag)."""

    documents: int
    accepted_at: dt.datetime | None = None  # None: the ingest vanished before it was indexed
    searchable_at: dt.datetime | None = None


def index_ingest(settings: Settings, index: Bm25Index, ingest_id: uuid.UUID) -> Indexed:
    """Bring the BM25 index in line with the memories of one ingest; marks the indexer stage.

    Two transactions, the least the stage machine allows: mark it running and read the memories (vectors deferred:
    BM25 needs only the text), then, after the index commit, mark it done. On a 2-core host each extra round trip was
    milliseconds on the path to searchable (py-spy: the ingest lookups and a separate lag read were a third of the
    task beside the BM25 commit)."""
    with session_scope(settings) as s:
        if lifecycle.mark_stage(s, ingest_id, "indexer", "running") == "missing":
            log.warning("ingest %s vanished before indexing", ingest_id)
            return Indexed(0)
        memories = memory_rows.memories_of_ingest(s, ingest_id, with_vectors=False)
    t0 = time.perf_counter()
    n = index_memories(index, memories)
    bm25_ms = round((time.perf_counter() - t0) * 1000, 2)
    with session_scope(settings) as s:
        lifecycle.mark_stage(s, ingest_id, "indexer", "done", documents=n, bm25_ms=bm25_ms)
        ingest = s.get(Ingest, ingest_id)  # the row mark_stage just locked: no second read
        stage = ingest.stages.get("indexer", {}) if ingest is not None else {}
        if ingest is None or "finished_at" not in stage:
            return Indexed(n)
        return Indexed(n, ingest.created_at, dt.datetime.fromisoformat(stage["finished_at"]))
