"""The document stage: a knowledge-base file read (text, Markdown, HTML, PDF), split into passages, embedded and
stored as memories of kind ``document``; the worker then publishes the indexer (BM25), as the chunk stage does.

All of a file's passages are written in one transaction, after the whole file was read and embedded: a file is
searchable whole or not at all. A file that cannot be read (a corrupt PDF, a scanned one without text) fails its
stage with the reason, which /get/knowledgebase-file shows; that is not retried (the bytes will not change). A file
deleted meanwhile gets no passages (``lock_file_for_write``).

Idempotent: passages are keyed by (ingest, passage index) and the split is a pure function of the bytes, so a
redelivered task writes nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from memos_pipeline import embedders
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage import knowledgebases as kb
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.documents import Passage, split_document
from memos_pipeline.text.readers import DocumentError, read_blocks

log = logging.getLogger(__name__)
STAGE = lifecycle.DOCUMENT


def passage_key(file_name: str, p: Passage) -> str:
    """The memory_key of a passage: the section it is in, else its file's name (BM25 reads key and value)."""
    return p.title or file_name


def _fail(settings: Settings, ingest_id: uuid.UUID, reason: str) -> None:
    with session_scope(settings) as s:
        lifecycle.mark_stage(s, ingest_id, STAGE, "failed", error=reason)
        lifecycle.mark_stage(s, ingest_id, "indexer", "skipped", reason="the document stage failed")


def _finish_deleted(settings: Settings, ingest_id: uuid.UUID) -> list[str]:
    with session_scope(settings) as s:
        lifecycle.mark_stage(s, ingest_id, STAGE, "done", passages=0, deleted=True)
        lifecycle.mark_stage(s, ingest_id, "indexer", "skipped", reason="the file was deleted")
    return []


def process_file(settings: Settings, embedder: Embedder, ingest_id: uuid.UUID) -> list[str]:
    """Read, split, embed and store one file's passages; returns the stages to publish next (the indexer)."""
    t0 = time.perf_counter()
    with session_scope(settings) as s:
        ingest = ingests.get_ingest(s, ingest_id)
        f = kb.file_of_ingest(s, ingest_id) if ingest is not None else None
        if ingest is None or f is None:
            log.warning("knowledge-base ingest %s has no file; nothing to do", ingest_id)
            return []
        name, fmt, data = f.name, f.format, f.content
        deleted = f.status != "active"
        if not deleted:
            lifecycle.mark_stage(s, ingest_id, STAGE, "running")
    if deleted:
        return _finish_deleted(settings, ingest_id)
    try:
        blocks = read_blocks(fmt, data)
    except DocumentError as exc:
        _fail(settings, ingest_id, f"file: {exc}")
        return []
    passages = split_document(blocks)
    if not passages:
        _fail(settings, ingest_id, "file: no text to index")
        return []
    pages = max((p.page_end or 0 for p in passages), default=0) or None
    read_ms = (time.perf_counter() - t0) * 1000
    # The section title is embedded with the text: "Refunds" says what a passage of bare numbers is about.
    texts = [f"{passage_key(name, p)}\n{p.text}" for p in passages]
    t_embed = time.perf_counter()

    def write(vectors: np.ndarray, model_version: int | None) -> list[str] | None:
        embed_ms = (time.perf_counter() - t_embed) * 1000
        with session_scope(settings) as s:
            if kb.lock_file_for_write(s, ingest_id) is None:
                return None  # deleted while it was read: nothing written (finished below, outside this lock)
            ingest = ingests.get_ingest(s, ingest_id)
            if ingest is None:
                return []
            rows = [
                {
                    "chunk_idx": p.idx,
                    "memory_key": passage_key(name, p),
                    "memory_value": p.text,
                    "info": {"knowledgebase_id": ingest.request.get("knowledgebase_id"), "file_name": name, **p.info()},
                    "embedding": v.tolist(),
                    "content_hash": db.content_hash(p.text),
                }
                for p, v in zip(passages, vectors, strict=True)
            ]
            kb.upsert_passages(s, ingest, rows)
            embedders.require_active(s, model_version)
            lifecycle.mark_stage(
                s,
                ingest_id,
                STAGE,
                "done",
                passages=len(passages),
                pages=pages,
                read_ms=round(read_ms, 2),
                embed_ms=round(embed_ms, 2),
                work_ms=round((time.perf_counter() - t0) * 1000, 2),
            )
        return ["indexer"]

    after = embedders.with_active_model(embedder, texts, write)
    return _finish_deleted(settings, ingest_id) if after is None else after
