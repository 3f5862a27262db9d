"""Memory management: /get/memory, /delete/memory, /update/memory, /get/memory/history, /get/message."""

from __future__ import annotations

from flask import Blueprint, Response, g

from api import ok
from api.common import body, celery, settings
from api.errors import NOT_FOUND, ApiError
from memos_pipeline.embedders import get_embedder
from memos_pipeline.ingest import outbox
from memos_pipeline.schemas import (
    DeleteMemoryRequest,
    GetMemoryRequest,
    GetMessageRequest,
    IndexJob,
    MemoryHistoryRequest,
    UpdateMemoryRequest,
)
from memos_pipeline.search.recall import memory_item
from memos_pipeline.storage import ingests, memories
from memos_pipeline.storage.db import session_scope

bp = Blueprint("memories", __name__)


def _actor() -> str:
    return f"api:{g.tenant_id}:{g.request_id}"


def _reindex(ids: list) -> None:  # type: ignore[type-arg]
    """BM25 follows Postgres. Search already hides these ids at once (it re-reads status from Postgres)."""
    if ids:
        outbox.publish_quietly(celery(), "memos.indexer.upsert", IndexJob(memory_ids=ids).model_dump(mode="json"))


@bp.post("/get/memory")
def get_memory() -> tuple[Response, int]:
    req = body(GetMemoryRequest)
    with session_scope(settings()) as s:
        rows, total = memories.page_memories(
            s,
            g.tenant_id,
            req.user_id,
            conversation_id=req.conversation_id,
            memory_type=req.memory_type,
            kind=req.kind,
            status=req.status,
            page=req.page,
            size=req.size,
        )
        return ok(
            {"memory_detail_list": [memory_item(m) for m in rows], "page": req.page, "size": req.size, "total": total}
        )


@bp.post("/delete/memory")
def delete_memory() -> tuple[Response, int]:
    req = body(DeleteMemoryRequest)
    with session_scope(settings()) as s:
        deleted = memories.soft_delete(s, g.tenant_id, req.user_id, req.memory_ids, _actor())
    _reindex(deleted)
    missing = sorted({str(i) for i in req.memory_ids} - {str(i) for i in deleted})
    return ok({"deleted": [str(i) for i in deleted], "not_found": missing})


@bp.post("/update/memory")
def update_memory() -> tuple[Response, int]:
    req = body(UpdateMemoryRequest)
    cfg = settings()
    with session_scope(cfg) as s:
        old = memories.user_memory(s, g.tenant_id, req.user_id, req.memory_id, lock=True)
        if old is None or old.status != "activated":
            raise ApiError(404, NOT_FOUND, f"memory_id: no active memory {req.memory_id} for this user")
        value = req.memory_value or old.memory_value
        key = req.memory_key or old.memory_key
        text = value if old.kind == "raw" else f"{key}: {value}"
        # Embedding in the API process: updates are rare and the caller expects the new version back.
        vec = (
            get_embedder(cfg).embed([text])[0].tolist()
            if (value, key) != (old.memory_value, old.memory_key)
            else old.embedding
        )
        new = memories.new_version(
            s,
            old,
            memory_value=value,
            memory_key=key,
            tags=req.tags if req.tags is not None else list(old.tags or []),
            embedding=vec,
            actor=_actor(),
            reason="user_update",
        )
        item, ids = memory_item(new), [new.id, old.id]
    _reindex(ids)
    return ok(item)


@bp.post("/get/memory/history")
def memory_history() -> tuple[Response, int]:
    req = body(MemoryHistoryRequest)
    with session_scope(settings()) as s:
        chain = memories.history(s, g.tenant_id, req.user_id, req.memory_id)
        if not chain:
            raise ApiError(404, NOT_FOUND, f"memory_id: no memory {req.memory_id} for this user")
        return ok({"history": [{**memory_item(m), "version": m.version} for m in chain]})


@bp.post("/get/message")
def get_message() -> tuple[Response, int]:
    req = body(GetMessageRequest)
    with session_scope(settings()) as s:
        rows, total = ingests.page_messages(s, g.tenant_id, req.user_id, req.conversation_id, req.page, req.size)
        items = [
            {
                "id": m.client_id or str(m.id),
                "message_id": str(m.id),
                "role": m.role,
                "name": m.name,
                "content": m.content,
                "chat_time": m.chat_time,
                "ingest_id": str(m.ingest_id),
                "create_time": m.created_at.isoformat(),
            }
            for m in rows
        ]
        return ok({"messages": items, "page": req.page, "size": req.size, "total": total})
