"""Queue ``memreader``: LLM fact extraction for one ingest, then merge/dedup against the user's facts; and a user's
feedback applied to their facts (POST /add/feedback)."""

from __future__ import annotations

from typing import Any

from memos_pipeline.embedders import get_embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.llm import LLMClient
from memos_pipeline.schemas import IndexJob, IngestJob
from memos_pipeline.stages.facts import run_memreader
from memos_pipeline.stages.feedback import run_feedback
from memos_pipeline.stages.llm_stage import run_stage
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app


@app.task(bind=True, base=PipelineTask, name="memos.memreader.extract", max_retries=MAX_RETRIES, stage="memreader")
def extract(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    job = IngestJob.model_validate(payload)
    settings = self.settings
    res = run_stage(settings, "memreader", job.ingest_id, run_memreader, get_embedder(settings), LLMClient(settings))
    if res is None:
        return None
    if res.new_ids or res.archived_ids:
        # New facts go to BM25 and archived ones leave it (preferences are searched by vector in Postgres).
        self.publish(
            "memos.indexer.upsert", IndexJob(memory_ids=res.new_ids + res.archived_ids).model_dump(mode="json")
        )
    return res.counts


@app.task(bind=True, base=PipelineTask, name="memos.memreader.feedback", max_retries=MAX_RETRIES, stage="feedback")
def feedback(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    job = IngestJob.model_validate(payload)
    settings = self.settings
    res = run_stage(
        settings, lifecycle.FEEDBACK, job.ingest_id, run_feedback, get_embedder(settings), LLMClient(settings)
    )
    if res is None:
        return None
    if res.new_ids or res.archived_ids:
        self.publish(
            "memos.indexer.upsert", IndexJob(memory_ids=res.new_ids + res.archived_ids).model_dump(mode="json")
        )
    return res.counts
