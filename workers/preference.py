"""Queue ``preference``: explicit and implicit preference extraction for one ingest, then the preference adder."""

from __future__ import annotations

from typing import Any

from memos_pipeline.embedders import get_embedder
from memos_pipeline.llm import LLMClient
from memos_pipeline.schemas import IngestJob
from memos_pipeline.stages.llm_stage import run_stage
from memos_pipeline.stages.preferences import run_preferences
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app


@app.task(bind=True, base=PipelineTask, name="memos.preference.extract", max_retries=MAX_RETRIES, stage="preference")
def extract(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    job = IngestJob.model_validate(payload)
    settings = self.settings
    res = run_stage(settings, "preference", job.ingest_id, run_preferences, get_embedder(settings), LLMClient(settings))
    return None if res is None else res.counts
