"""Accepting a feedback (POST /add/feedback): durable and idempotent exactly as an add (``ingest.accept``).

A feedback is an ingest of its own kind: one stage, ``feedback`` (no chunker: there are no messages to window),
run by ``memos.memreader.feedback`` on the memreader queue. The ingest row holds the feedback in ``request``; it
commits with its outbox row in one transaction, then the task is published with publisher confirms (the relay
publishes it later if the broker is down; the sweeper re-publishes it if it stalls: ``lifecycle.stage_to_resume``).
``/get/status`` shows it by its task_id like any add.

Retries are recognised as for adds: the same ``Idempotency-Key``, or without one the same feedback (user,
conversation, text, time) within ``MEMOS_ADD_DEDUP_WINDOW_S``, answer with the first one's task_id.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle, outbox
from memos_pipeline.ingest.accept import AcceptResult, publish_accepted
from memos_pipeline.schemas import FeedbackRequest
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import content_hash, session_scope
from memos_pipeline.storage.models import Ingest, OutboxItem


def feedback_content_key(req: FeedbackRequest) -> str:
    # "feedback" first: a feedback never matches an add whose content happens to hash alike.
    return content_hash(
        "feedback", req.user_id, req.conversation_id, req.feedback_content, req.feedback_time or "", req.agent_id or ""
    )


def accept_feedback(
    settings: Settings,
    sender: outbox.TaskSender,
    tenant_id: uuid.UUID,
    req: FeedbackRequest,
    *,
    trace_id: str,
    idempotency_key: str | None = None,
) -> AcceptResult:
    task = lifecycle.STAGE_TASKS[lifecycle.FEEDBACK]
    content_key = feedback_content_key(req)
    with session_scope(settings) as s:
        acc = None
        if idempotency_key is None and settings.add_dedup_window_s > 0:
            # The add's retry detection, reused as is: it looks for this content key among recent ingests.
            acc = ingests._recent_same_add(s, tenant_id, content_key, settings.add_dedup_window_s)
        if acc is None:
            acc = _insert(s, tenant_id, req, trace_id, task, idempotency_key, content_key)
    return publish_accepted(settings, sender, acc, lifecycle.FEEDBACK, trace_id)


def _insert(
    s: Session,
    tenant_id: uuid.UUID,
    req: FeedbackRequest,
    trace_id: str,
    task: str,
    idempotency_key: str | None,
    content_key: str,
) -> ingests.Accepted:
    ingest_id, task_id = uuid.uuid4(), str(uuid.uuid4())
    # agent_id and app_id where an add keeps them: memories the feedback writes are then that agent's (filters).
    meta: dict[str, Any] = {k: v for k, v in {"agent_id": req.agent_id, "app_id": req.app_id}.items() if v}
    meta["feedback"] = {"content": req.feedback_content, "time": req.feedback_time}
    inserted = s.execute(
        insert(Ingest)
        .values(
            id=ingest_id,
            tenant_id=tenant_id,
            user_id=req.user_id,
            conversation_id=req.conversation_id,
            task_id=task_id,
            trace_id=trace_id,
            status="accepted",
            stages=lifecycle.feedback_stages(),
            message_count=0,
            request=meta,
            idempotency_key=idempotency_key,
            content_key=content_key,
        )
        .on_conflict_do_nothing(constraint="uq_ingests_tenant_idempotency_key")
        .returning(Ingest.id)
    ).scalar_one_or_none()
    if inserted is None:  # this Idempotency-Key was used before: that ingest is the answer
        prev = s.execute(
            select(Ingest.id, Ingest.task_id, OutboxItem.id, OutboxItem.sent_at)
            .join(OutboxItem, OutboxItem.ingest_id == Ingest.id)
            .where(Ingest.tenant_id == tenant_id, Ingest.idempotency_key == idempotency_key)
        ).one()
        return ingests.Accepted(prev[0], prev[1], prev[2], duplicate=True, published=prev[3] is not None)
    outbox_id = s.execute(
        insert(OutboxItem)
        .values(
            ingest_id=ingest_id,
            task_name=task,
            task_id=task_id,
            payload=lifecycle.stage_payload(lifecycle.FEEDBACK, ingest_id),
            headers={"trace_id": trace_id},
        )
        .returning(OutboxItem.id)
    ).scalar_one()
    return ingests.Accepted(ingest_id, task_id, outbox_id)
