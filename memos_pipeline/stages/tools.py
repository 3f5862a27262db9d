"""The tools stage (``memos.chunker.tools``): an add's tool events (storage/tools.py) embedded and stored as
memories of kind ``tool``; the worker then publishes the indexer. Idempotent: rows are keyed by (ingest, event)."""

from __future__ import annotations

import logging
import uuid

import numpy as np

from memos_pipeline import embedders
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage import tools as tool_rows
from memos_pipeline.storage.db import session_scope

log = logging.getLogger(__name__)


def process_tools(settings: Settings, embedder: Embedder, ingest_id: uuid.UUID) -> list[str]:
    """Embed and store one add's tool memories; returns the stages to publish next (the indexer)."""
    with session_scope(settings) as s:
        ingest = ingests.get_ingest(s, ingest_id)
        if ingest is None:
            log.warning("tool ingest %s vanished; nothing to do", ingest_id)
            return []
        lifecycle.mark_stage(s, ingest_id, lifecycle.TOOLS, "running")
        events: list[dict[str, object]] = list(ingest.request.get("events", []))
    texts = [str(e["text"]) for e in events]

    def write(vectors: np.ndarray, model_version: int | None) -> list[str]:
        with session_scope(settings) as s:
            ingest = ingests.get_ingest(s, ingest_id)
            if ingest is None:
                return []
            rows = [
                {
                    "chunk_idx": int(str(e["idx"])),
                    "memory_key": str(e["tool_name"]),
                    "memory_value": str(e["text"]),
                    "sources": [str(x) for x in e.get("sources") or []],  # type: ignore[attr-defined]
                    "info": {k: v for k, v in e.items() if k not in ("idx", "text", "sources")},
                    "embedding": v.tolist(),
                    "content_hash": db.content_hash(str(e["text"])),
                }
                for e, v in zip(events, vectors, strict=True)
            ]
            tool_rows.upsert_tool_memories(s, ingest, rows)
            embedders.require_active(s, model_version)
            lifecycle.mark_stage(s, ingest_id, lifecycle.TOOLS, "done", memories=len(rows))
        return ["indexer"]

    return embedders.with_active_model(embedder, texts, write)
