"""Queue ``memreader``: LLM fact extraction for one ingest, then merge/dedup against the user's facts."""

from __future__ import annotations

from typing import Any

from memos_pipeline.stages.llm import run_memreader
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app
from workers.llm_task import run_llm_stage


@app.task(bind=True, base=PipelineTask, name="memos.memreader.extract", max_retries=MAX_RETRIES, stage="memreader")
def extract(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    return run_llm_stage(self, payload, run_memreader)
