"""Queue ``preference``: explicit and implicit preference extraction for one ingest, then the adder."""

from __future__ import annotations

from typing import Any

from memos_pipeline.stages.llm import run_preferences
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app
from workers.llm_task import run_llm_stage


@app.task(bind=True, base=PipelineTask, name="memos.preference.extract", max_retries=MAX_RETRIES, stage="preference")
def extract(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    return run_llm_stage(self, payload, run_preferences)
