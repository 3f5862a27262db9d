"""The index stage: bring the BM25 index in line with Postgres (the source of truth) for one ingest or a few
memories. Upserts activated memories, deletes archived and deleted ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

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
    """Bring the BM25 index in line with the memories of one ingest; marks the indexer stage."""
    return index_ingests(settings, index, [ingest_id])[ingest_id]


def index_ingests(settings: Settings, index: Bm25Index, ingest_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Indexed]:
    """Index the first ingest and, in the same BM25 commit, those of the others that are free right now: a batch
    across ingests. Marks the indexer stage of each one indexed; returns what was done for each, in the order given
    (the first always).

    The first is waited for (its row may be locked by the chunker writing vectors); another whose row is locked is
    left to its own task (SKIP LOCKED), so a batch never waits on one. Two transactions for the whole batch: mark
    running and read the memories (vectors deferred: BM25 needs only the text), then, after the commit, mark done.
    A tantivy commit costs ~10 ms of CPU across its threads whatever it holds (strace, 12 documents), and it was
    half of an add's time to searchable: one per batch instead of one per ingest."""
    first, rest = ingest_ids[0], [i for i in dict.fromkeys(ingest_ids[1:]) if i != ingest_ids[0]]
    with session_scope(settings) as s:
        if lifecycle.mark_stage(s, first, "indexer", "running") == "missing":
            log.warning("ingest %s vanished before indexing", first)
            return {first: Indexed(0)}
        taken = [first]
        if rest:
            lock = select(Ingest.id).where(Ingest.id.in_(rest)).with_for_update(skip_locked=True)
            free = set(s.execute(lock).scalars())
            for ingest_id in (i for i in rest if i in free):  # in the order given, not the order Postgres found them
                lifecycle.mark_stage(s, ingest_id, "indexer", "running")
                taken.append(ingest_id)
        memories = memory_rows.memories_of_ingests(s, taken, with_vectors=False)
    t0 = time.perf_counter()
    index_memories(index, memories)
    bm25_ms = round((time.perf_counter() - t0) * 1000, 2)
    live = Counter(m.ingest_id for m in memories if m.status == "activated")
    out: dict[uuid.UUID, Indexed] = {}
    with session_scope(settings) as s:
        for ingest_id in taken:
            lifecycle.mark_stage(
                s, ingest_id, "indexer", "done", documents=live[ingest_id], bm25_ms=bm25_ms, batch=len(taken)
            )
            ingest = s.get(Ingest, ingest_id)  # the row mark_stage just locked: no second read
            finished = ingest.stages.get("indexer", {}).get("finished_at") if ingest is not None else None
            out[ingest_id] = (
                Indexed(live[ingest_id], ingest.created_at, dt.datetime.fromisoformat(finished))
                if ingest is not None and finished
                else Indexed(live[ingest_id])
            )
    return out
