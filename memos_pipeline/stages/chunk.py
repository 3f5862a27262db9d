"""The chunk stage: an ingest's turns cut into windows (the raw memories), stored, then embedded.

Two steps, two transactions. The windows are stored first, without vectors, and the caller's ``on_stored`` runs
(the worker publishes the indexer): BM25 makes them keyword-searchable while the model is still embedding them,
which is most of the stage's time (about 25 ms per turn on a core here). Then their vectors are written and they
are searchable by meaning too; the dense recall skips a row without one. The worker then publishes what comes next
(``lifecycle.next_stages``: the LLM stages, which read what this stage wrote).

Idempotent: it re-reads its ingest by id, computes what is missing and upserts on natural keys, so a redelivered
task (worker killed, broker restarted) converges to the same rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memos_pipeline import embedders
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage import memories as memory_rows
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.chunking import Window, render_turn, window_turns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    ingest_id: uuid.UUID
    memory_ids: list[uuid.UUID]
    next_stages: list[str]  # what the caller publishes now (lifecycle.next_stages): the pending LLM stages


def _raw_row(w: Window) -> dict[str, object]:
    return {
        "chunk_idx": w.chunk_idx,
        "memory_key": w.key,
        "memory_value": w.text,
        "sources": w.sources,
        "source_message_ids": [uuid.UUID(m) for m in w.message_ids],
        "info": w.info,
        "content_hash": db.content_hash(w.text),
    }


def chunk_ingest(
    settings: Settings, embedder: Embedder, ingest_id: uuid.UUID, on_stored: Callable[[], None] | None = None
) -> ChunkResult | None:
    """Window the ingest's messages and store them as raw memories; ``on_stored()``; embed the windows in one
    batch and write their vectors."""
    t0 = time.perf_counter()
    with session_scope(settings) as s:
        ingest = ingests.get_ingest(s, ingest_id)
        if ingest is None:
            log.warning("ingest %s vanished before chunking; nothing to do", ingest_id)
            return None
        lifecycle.mark_stage(s, ingest_id, "chunker", "running")
        turns, ctx = ingests.ingest_turns(s, ingest, settings.chunk_overlap)
        windows = window_turns(turns, size=settings.chunk_turns, overlap=settings.chunk_overlap, context=ctx)
        ids = memory_rows.upsert_raw_memories(s, ingest, [_raw_row(w) for w in windows])
    t_stored = time.perf_counter()
    if on_stored is not None:
        on_stored()
    # Embedding happens outside any transaction: no connection is held while the CPU works.
    t_embed = time.perf_counter()

    def write(vectors: np.ndarray, model_version: int | None) -> ChunkResult | None:
        embed_ms = (time.perf_counter() - t_embed) * 1000
        with session_scope(settings) as s:
            # Locked before the vectors are written: the storing transaction of a redelivered copy of this task
            # locks the ingest (mark_stage) and then its memories; the other order here deadlocked with it.
            ingest = ingests.get_ingest(s, ingest_id, lock=True)
            if ingest is None:
                return None
            memory_rows.set_raw_vectors(
                s, ingest_id, {w.chunk_idx: v.tolist() for w, v in zip(windows, vectors, strict=True)}
            )
            embedders.require_active(s, model_version)  # a reembed swapped meanwhile: embed again (below)
            lifecycle.mark_stage(
                s,
                ingest_id,
                "chunker",
                "done",
                windows=len(windows),
                embed_ms=round(embed_ms, 2),
                store_ms=round((t_stored - t0) * 1000, 2),
                on_stored_ms=round((t_embed - t_stored) * 1000, 2),
                work_ms=round((time.perf_counter() - t0) * 1000, 2),
            )
            after = lifecycle.next_stages(ingest.stages)
        return ChunkResult(ingest_id, ids, after)

    texts, combine = embedding_plan(windows, settings.window_vectors)
    return embedders.with_active_model(embedder, texts, write, combine)


def embedding_plan(windows: list[Window], mode: str) -> tuple[list[str], Callable[[np.ndarray], np.ndarray] | None]:
    """What to embed for ``windows`` and how the vectors become one per window.

    "turns": every distinct turn once, with its date line; a window's vector is the normalised length-weighted mean
    of its turns' vectors. Windows slide one turn at a time, so embedding whole windows would embed each turn three times (and
    attention cost grows faster than the text). "window": each window's text.
    """
    if mode == "window":
        return [w.text for w in windows], None
    position: dict[str, int] = {}
    texts: list[str] = []
    for w in windows:
        for turn in w.turns:
            if turn.message_id not in position:
                position[turn.message_id] = len(texts)
                texts.append(render_turn(turn))
    rows = [[position[turn.message_id] for turn in w.turns] for w in windows]
    # The model mean-pools over tokens, so a window's own vector leans towards its long turns: weigh each turn by its
    # length (characters, a stand-in for tokens) rather than counting "ok, thanks" as much as a paragraph.
    lengths = np.array([max(len(t), 1) for t in texts], dtype=np.float32)

    def combine(turn_vectors: np.ndarray) -> np.ndarray:
        if not rows:
            return turn_vectors[:0]
        means = np.stack([lengths[r] @ turn_vectors[r] for r in rows])
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.where(norms == 0, 1.0, norms)).astype(np.float32)

    return texts, combine
