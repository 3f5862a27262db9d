"""The shared body of the two LLM stages (memreader, preference): same lifecycle, different extractor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder, get_embedder
from memos_pipeline.llm import LLMClient, LLMOutputError
from memos_pipeline.schemas import IndexJob, IngestJob
from memos_pipeline.stages.llm import StageResult, finish_stage
from memos_pipeline.storage import store
from memos_pipeline.storage.db import session_scope
from workers.base import PipelineTask

Runner = Callable[[Settings, Embedder, LLMClient, uuid.UUID], StageResult | None]


def run_llm_stage(task: PipelineTask, payload: dict[str, Any], runner: Runner) -> dict[str, Any] | None:
    job = IngestJob.model_validate(payload)
    settings, stage = task.settings, task.stage or ""
    with session_scope(settings) as s:
        ingest = store.get_ingest(s, job.ingest_id)
        if ingest is None or ingest.stages.get(stage, {}).get("status") in ("done", "skipped"):
            return None  # vanished, or a redelivery of finished work
    t0 = time.perf_counter()
    try:
        res = runner(settings, get_embedder(settings), LLMClient(settings), job.ingest_id)
    except LLMOutputError as exc:
        # Retrying cannot fix a model that answers wrongly twice: fail the stage, keep the raw memories.
        with session_scope(settings) as s:
            store.mark_stage(s, job.ingest_id, stage, "failed", error=str(exc)[:1000])
        return None
    if res is None:
        return None
    finish_stage(settings, job.ingest_id, stage, res, t0)
    if stage == "memreader" and (res.new_ids or res.archived_ids):
        # Facts go to BM25; archived ones leave it. Preferences are searched by vector in Postgres.
        task.publish(
            "memos.indexer.upsert", IndexJob(memory_ids=res.new_ids + res.archived_ids).model_dump(mode="json")
        )
    return res.counts
