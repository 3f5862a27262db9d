"""Queue ``chunker``: window an ingest's messages, embed, store raw memories, then fan out; and re-embed everything
with another model in batches (``reembed_*``, see ``memos_pipeline.jobs.reembed``): these are the embedding workers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import chord, group

from memos_pipeline.embedders import get_embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.ingest.accept import accept_add
from memos_pipeline.jobs import reembed
from memos_pipeline.schemas import AcceptJob, IngestJob
from memos_pipeline.stages import chunk as pipeline
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app

log = logging.getLogger("memos.workers.chunker")
REEMBED = {"bind": True, "base": PipelineTask, "max_retries": MAX_RETRIES, "ignore_result": False}


@app.task(bind=True, base=PipelineTask, name="memos.chunker.chunk", max_retries=MAX_RETRIES, stage="chunker")
def chunk(self: PipelineTask, payload: dict[str, Any]) -> None:
    job = IngestJob.model_validate(payload)
    result = pipeline.chunk_ingest(self.settings, get_embedder(self.settings), job.ingest_id)
    if result is None:
        return
    # Raw memories are already searchable by vector; BM25 and the LLM stages proceed in parallel.
    for stage in result.next_stages:
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


@app.task(name="memos.chunker.reembed_begin", **REEMBED)
def reembed_begin(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    step = reembed.ReembedStep.model_validate(payload)
    job = reembed.begin(self.settings, step.job_id)
    return dataclasses.asdict(job) if job else None


@app.task(name="memos.chunker.reembed_batch", **REEMBED)
def reembed_batch(self: PipelineTask, payload: dict[str, Any]) -> int:
    b = reembed.ReembedBatch.model_validate(payload)
    return reembed.run_batch(self.settings, b.job_id, b.batch)


@app.task(name="memos.chunker.reembed_finalize", **REEMBED)
def reembed_finalize(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any]:
    step = reembed.ReembedStep.model_validate(payload)
    return reembed.finalize(self.settings, step.job_id)


@app.task(name="memos.chunker.reembed_abort", **REEMBED)
def reembed_abort(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
    step = reembed.ReembedStep.model_validate(payload)
    job = reembed.abort(self.settings, step.job_id)
    return dataclasses.asdict(job) if job else None


@app.task(name="memos.chunker.reembed_all", **REEMBED)
def reembed_all(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any]:
    """The whole job without a client waiting (beat, another system), like ``memos.indexer.reindex_all``: start
    or resume it, then a chord of ``window`` batch tasks whose callback is this task again, until the index build
    and the swap (both run here, on this chunker)."""
    req = reembed.ReembedAll.model_validate(payload)
    settings = self.settings
    if req.job_id is None:
        try:
            job, _ = reembed.start_or_resume(settings, req.model, req.batch_size, req.force)
        except reembed.AlreadyActive as exc:  # a schedule firing again: nothing to do
            return {"status": "already_active", "reason": str(exc)}
        except (reembed.JobConflict, ValueError) as exc:  # not transient: retrying cannot help
            log.warning("reembed_all: %s", exc)
            return {"status": "refused", "reason": str(exc)}
        req = req.model_copy(update={"job_id": job.job_id})
    began = reembed.begin(settings, str(req.job_id))
    if began is None or began.finished:
        return {"status": began.status if began else "gone", "job_id": req.job_id}
    job = reembed.plan(settings, began)
    todo = reembed.pending(settings, job)[: req.window or reembed.default_window(settings)]
    if todo:
        batches = [reembed_batch.s(reembed.ReembedBatch(job_id=job.job_id, batch=i).model_dump()) for i in todo]
        chord(group(batches))(reembed_all.si(req.model_dump()))
        return {"status": "dispatched", "job_id": job.job_id, "batches": todo}
    reembed.build_index(settings, job.job_id)
    return reembed.finalize(settings, job.job_id)
