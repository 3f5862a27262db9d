"""Accepting an add: the one path shared by the HTTP API and the producer queue (memos.chunker.accept).

Commit ingest + messages + outbox row, then publish the chunker task with publisher confirms. A duplicate (same
idempotency key, or without one the same add again within MEMOS_ADD_DEDUP_WINDOW_S) writes and publishes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle, outbox
from memos_pipeline.schemas import AddRequest
from memos_pipeline.storage import ingests, knowledgebases, tools
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.tools import tool_events


@dataclass(frozen=True)
class AcceptResult:
    accepted: ingests.Accepted
    published: bool


def accept_add(
    settings: Settings,
    sender: outbox.TaskSender,
    tenant_id: uuid.UUID,
    req: AddRequest,
    *,
    trace_id: str,
    idempotency_key: str | None = None,
) -> AcceptResult:
    stages = lifecycle.initial_stages(
        llm=settings.llm_enabled, scheduler=settings.mos_enable_scheduler, preference=settings.enable_preference_memory
    )
    task = lifecycle.STAGE_TASKS["chunker"]
    with session_scope(settings) as s:
        if req.allow_knowledgebase_ids:
            # Named bases must be the tenant's (UnknownKnowledgebase otherwise: a 422 from the API, a dead letter
            # from the producer queue). Validated only: the add's memories are not written into them yet, which
            # data.ignored says.
            knowledgebases.require_bases(s, tenant_id, req.allow_knowledgebase_ids, "allow_knowledgebase_ids")
        acc = ingests.accept_ingest(
            s,
            tenant_id,
            req,
            trace_id=trace_id,
            stages=stages,
            task_name=task,
            idempotency_key=idempotency_key,
            content_key=ingests.add_content_key(req),
            dedup_window_s=settings.add_dedup_window_s,
        )
        # Tool calls and their results become tool memory (storage/tools.py): an ingest of their own, committed
        # with the add (a retried add, a duplicate, makes none).
        events = [] if acc.duplicate else tool_events([m.model_dump() for m in req.messages])
        tool_acc = tools.accept_tools(s, tenant_id, req, acc, events, trace_id) if events else None
    result = publish_accepted(settings, sender, acc, "chunker", trace_id)
    if tool_acc is not None:
        publish_accepted(settings, sender, tool_acc, lifecycle.TOOLS, trace_id)
    return result


def publish_accepted(
    settings: Settings, sender: outbox.TaskSender, acc: ingests.Accepted, stage: str, trace_id: str
) -> AcceptResult:
    """Publish the first stage of an ingest just committed (an add's chunker, a feedback's own stage)."""
    if acc.duplicate:
        # Never published again from here: the first request published right after its commit (its row may not be
        # marked sent yet: that happens off the hot path), or, had that failed, the relay publishes the row. A
        # re-publish per client retry would run every stage, LLM calls included, once per retry.
        return AcceptResult(acc, acc.published)
    published = outbox.try_publish_now(
        settings,
        sender,
        acc.outbox_id,
        lifecycle.STAGE_TASKS[stage],
        acc.task_id,
        lifecycle.stage_payload(stage, acc.ingest_id),
        {"trace_id": trace_id},
    )
    return AcceptResult(acc, published)
