"""POST /add/message and POST /get/status."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, request

from api import ok
from api.common import body, celery, settings
from api.errors import INVALID_BODY, NOT_FOUND, ApiError
from memos_pipeline.ingest.accept import AcceptResult, accept_add
from memos_pipeline.schemas import AddRequest, StatusRequest
from memos_pipeline.search.recall import memory_item
from memos_pipeline.storage import ingests
from memos_pipeline.storage import memories as memory_rows
from memos_pipeline.storage.db import session_scope

bp = Blueprint("ingest", __name__)


@bp.post("/add/message")
def add_message() -> tuple[Response, int]:
    cfg = settings()
    req = body(AddRequest, {"max_messages": cfg.max_messages_per_add, "max_content_chars": cfg.max_content_chars})
    data, status = accept(cfg, req, idempotency_key())
    return ok(data, status)


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header, checked (None when not given)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 128 and key.isprintable()):
        raise ApiError(400, INVALID_BODY, "Idempotency-Key: 1 to 128 printable characters")
    return key


def accepted_data(res: AcceptResult, ignored: list[str]) -> dict[str, Any]:
    """The answer to an add or a feedback accepted durably. success/task_id/status: what MemOS's client requires
    (without them it sends the request again). duplicate: a retry of one accepted before (same Idempotency-Key, or
    the same content within MEMOS_ADD_DEDUP_WINDOW_S)."""
    acc = res.accepted
    return {
        "success": True,
        "task_id": acc.task_id,
        "ingest_id": str(acc.ingest_id),
        "status": "accepted",
        "published": res.published,
        "duplicate": acc.duplicate,
        "ignored": ignored,
    }


def accept(cfg: Any, req: AddRequest, key: str | None) -> tuple[dict[str, Any], int]:
    """An add accepted durably (and, in sync mode, waited for): the answer's data and status. Shared with MemOS's
    server route /product/add (api/product.py)."""
    res = accept_add(cfg, celery(), g.tenant_id, req, trace_id=g.request_id, idempotency_key=key)
    acc = res.accepted
    data = accepted_data(res, req.ignored())
    if (req.async_mode or cfg.async_mode) == "sync":
        data.update(_wait_for(cfg, acc.ingest_id, g.tenant_id))
        return data, 200
    return data, 202


def _wait_for(cfg: Any, ingest_id: Any, tenant_id: Any) -> dict[str, Any]:
    """ASYNC_MODE=sync: wait (bounded) for the whole chain, then return the memories it made."""
    deadline = time.monotonic() + cfg.sync_timeout_s
    delay = 0.01
    while True:
        with session_scope(cfg) as s:
            ingest = ingests.find_ingest(s, tenant_id, ingest_id=ingest_id)
            assert ingest is not None
            if ingest.status in ("done", "failed") or time.monotonic() > deadline:
                memories = [memory_item(m) for m in memory_rows.memories_of_ingest(s, ingest_id)]
                timed_out = ingest.status not in ("done", "failed")
                return {
                    "status": "timeout" if timed_out else ingest.status,
                    "stages": ingest.stages,
                    "memory_detail_list": memories,
                }
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


@bp.post("/get/status")
def get_status() -> tuple[Response, int]:
    req = body(StatusRequest)
    with session_scope(settings()) as s:
        ingest = ingests.find_ingest(s, g.tenant_id, task_id=req.task_id, ingest_id=req.ingest_id)
        if ingest is None:
            which = f"task_id {req.task_id}" if req.task_id else f"ingest_id {req.ingest_id}"
            raise ApiError(404, NOT_FOUND, f"{'task_id' if req.task_id else 'ingest_id'}: no ingest with {which}")
        return ok(
            {
                "task_id": ingest.task_id,
                "ingest_id": str(ingest.id),
                "status": ingest.status,
                "user_id": ingest.user_id,
                "conversation_id": ingest.conversation_id,
                "message_count": ingest.message_count,
                "stages": ingest.stages,
                "created_at": ingest.created_at.isoformat(),
                "finished_at": ingest.finished_at.isoformat() if ingest.finished_at else None,
            }
        )
