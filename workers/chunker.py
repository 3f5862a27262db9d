"""Queue ``chunker``: window an ingest's messages, embed, store raw memories, then fan out; and re-embed everything
with another model in batches (``reembed_*``, see ``memos_pipeline.jobs.reembed``): these are the embedding workers.
"""

from __future__ import annotations

import logging
from typing import Any

from memos_pipeline.embedders import get_embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.ingest.accept import accept_add
from memos_pipeline.jobs import reembed
from memos_pipeline.schemas import AcceptJob, IngestJob
from memos_pipeline.stages import chunk as pipeline
from memos_pipeline.stages import document as document_stage
from memos_pipeline.stages import tools as tools_stage
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app
from workers.jobs import job_tasks

log = logging.getLogger("memos.workers.chunker")


@app.task(bind=True, base=PipelineTask, name="memos.chunker.chunk", max_retries=MAX_RETRIES, stage="chunker")
def chunk(self: PipelineTask, payload: dict[str, Any]) -> None:
    job = IngestJob.model_validate(payload)

    def index_now() -> None:  # the windows are stored: BM25 indexes them while they are being embedded
        self.publish(
            lifecycle.STAGE_TASKS[lifecycle.AFTER_STORE], lifecycle.stage_payload(lifecycle.AFTER_STORE, job.ingest_id)
        )

    result = pipeline.chunk_ingest(self.settings, get_embedder(self.settings), job.ingest_id, on_stored=index_now)
    if result is None:
        return
    for stage in result.next_stages:
        self.publish(lifecycle.STAGE_TASKS[stage], lifecycle.stage_payload(stage, job.ingest_id))


@app.task(bind=True, base=PipelineTask, name="memos.chunker.document", max_retries=MAX_RETRIES, stage="document")
def document(self: PipelineTask, payload: dict[str, Any]) -> None:
    """A knowledge-base file: read, split into passages, embed, store (memos_pipeline.stages.document); then BM25."""
    job = IngestJob.model_validate(payload)
    for stage in document_stage.process_file(self.settings, get_embedder(self.settings), job.ingest_id):
        self.publish(lifecycle.STAGE_TASKS[stage], lifecycle.stage_payload(stage, job.ingest_id))


@app.task(bind=True, base=PipelineTask, name="memos.chunker.tools", max_retries=MAX_RETRIES, stage="tools")
def tools(self: PipelineTask, payload: dict[str, Any]) -> None:
    """An add's tool calls and results as tool memories (memos_pipeline.stages.tools); then BM25."""
    job = IngestJob.model_validate(payload)
    for stage in tools_stage.process_tools(self.settings, get_embedder(self.settings), job.ingest_id):
        self.publish(lifecycle.STAGE_TASKS[stage], lifecycle.stage_payload(stage, job.ingest_id))


class UnknownTenant(ValueError):
    """Not transient: the message is dead-lettered with this reason until the tenant exists and it is replayed."""


@app.task(bind=True, base=PipelineTask, name="memos.chunker.accept", max_retries=MAX_RETRIES)
def accept(self: PipelineTask, payload: dict[str, Any]) -> str:
    """An add from a producer: made durable exactly like an HTTP add (idempotent by its key), then chunked."""
    settings = self.settings
    limits = {"max_messages": settings.max_messages_per_add, "max_content_chars": settings.max_content_chars}
    job = AcceptJob.model_validate(payload, context=limits)
    with session_scope(settings) as s:
        tenant_id = tenants.tenant_by_name(s, job.tenant)
    if tenant_id is None:
        raise UnknownTenant(f"tenant {job.tenant!r} does not exist (create it with `memos-pipeline create-key`)")
    trace_id = getattr(self.request, "trace_id", None) or self.request.id
    res = accept_add(settings, self.app, tenant_id, job.request, trace_id=trace_id, idempotency_key=job.idempotency_key)
    return str(res.accepted.ingest_id)


# memos.chunker.reembed_begin/_batch/_finalize/_abort/_all (workers/jobs.py; the job: memos_pipeline.jobs.reembed).
reembed_all = job_tasks(reembed.KIND)
