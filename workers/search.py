"""Queue ``search``: fast recall (dense + BM25) and fusion. Read-only, so a redelivery is harmless."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from memos_pipeline.embedders import get_embedder, retry_on_model_switch
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search.recall import SearchOutput, fast_search
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope
from workers.base import PipelineTask
from workers.celery import app


# No retries: the caller waits on this result with a deadline, and a late answer is worth nothing.
@app.task(
    bind=True,
    base=PipelineTask,
    name="memos.search.fast",
    ignore_result=False,
    max_retries=0,
    autoretry_for=(),
    dead_letter=False,
)
def fast(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any]:
    job = SearchJob.model_validate(payload)
    settings = self.settings
    index = get_index(settings) if settings.bm25_call else None
    embedder = get_embedder(settings)

    def run() -> SearchOutput:
        with session_scope(settings) as s:
            return fast_search(
                s,
                embedder,
                index,
                job,
                fusion_method=settings.fusion,
                dedup_turns=settings.search_dedup_turns,
                graph=settings.fast_graph,
                history_turns=settings.api_search_history_turns,
                history_window=settings.api_search_window_size,
            )

    # Right at a reembed's swap the query may have been embedded by the outgoing model: once more with the new one.
    return asdict(retry_on_model_switch(embedder, run))
