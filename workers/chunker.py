"""Queue ``chunker``: window an ingest's messages, embed, store raw memories, then fan out."""

from __future__ import annotations

from typing import Any

from memos_pipeline import pipeline, store
from memos_pipeline.celery_app import STAGE_TASKS
from memos_pipeline.db import session_scope
from memos_pipeline.embedders import get_embedder
from memos_pipeline.ingest import accept_add
from memos_pipeline.schemas import AcceptJob, IndexJob, IngestJob
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app


@app.task(bind=True, base=PipelineTask, name="memos.chunker.chunk", max_retries=MAX_RETRIES, stage="chunker")
def chunk(self: PipelineTask, payload: dict[str, Any]) -> None:
    job = IngestJob.model_validate(payload)
    result = pipeline.chunk_ingest(self.settings, get_embedder(self.settings), job.ingest_id)
    if result is None:
        return
    ref = {"v": 1, "ingest_id": str(job.ingest_id)}
    # Raw memories are already searchable by vector; BM25 and the LLM stages proceed in parallel.
    self.publish(STAGE_TASKS["indexer"], IndexJob(ingest_id=job.ingest_id).model_dump(mode="json"))
    for stage in result.llm_stages:
        self.publish(STAGE_TASKS[stage], ref)


class UnknownTenant(ValueError):
    """Not transient: the message is dead-lettered with this reason until the tenant exists and it is replayed."""


@app.task(bind=True, base=PipelineTask, name="memos.chunker.accept", max_retries=MAX_RETRIES)
def accept(self: PipelineTask, payload: dict[str, Any]) -> str:
    """An add from a producer: made durable exactly like an HTTP add (idempotent by its key), then chunked."""
    settings = self.settings
    limits = {"max_messages": settings.max_messages_per_add, "max_content_chars": settings.max_content_chars}
    job = AcceptJob.model_validate(payload, context=limits)
    with session_scope(settings) as s:
        tenant_id = store.tenant_by_name(s, job.tenant)
    if tenant_id is None:
        raise UnknownTenant(f"tenant {job.tenant!r} does not exist (create it with `memos-pipeline create-key`)")
    trace_id = getattr(self.request, "trace_id", None) or self.request.id
    res = accept_add(settings, self.app, tenant_id, job.request, trace_id=trace_id, idempotency_key=job.idempotency_key)
    return str(res.accepted.ingest_id)
