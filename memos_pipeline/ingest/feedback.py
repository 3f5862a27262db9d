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

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle, outbox
from memos_pipeline.ingest.accept import AcceptResult, publish_accepted
from memos_pipeline.schemas import FeedbackRequest
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import content_hash, session_scope


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
    # agent_id and app_id where an add keeps them: memories the feedback writes are then that agent's (filters).
    meta: dict[str, Any] = {k: v for k, v in {"agent_id": req.agent_id, "app_id": req.app_id}.items() if v}
    meta["feedback"] = {"content": req.feedback_content, "time": req.feedback_time}
    with session_scope(settings) as s:
        acc = ingests.open_ingest(
            s,
            tenant_id,
            req.user_id,
            req.conversation_id,
            trace_id=trace_id,
            stages=lifecycle.feedback_stages(),
            task_name=lifecycle.STAGE_TASKS[lifecycle.FEEDBACK],
            payload=lambda ingest_id: lifecycle.stage_payload(lifecycle.FEEDBACK, ingest_id),
            request=meta,
            idempotency_key=idempotency_key,
            content_key=feedback_content_key(req),
            dedup_window_s=settings.add_dedup_window_s,
        )
    return publish_accepted(settings, sender, acc, lifecycle.FEEDBACK, trace_id)
