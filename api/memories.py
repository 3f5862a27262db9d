"""Memory management: /get/memory (and GET /get/memory/<id>), /delete/memory, /update/memory, /get/memory/history,
/get/message.

Every lookup goes through the key's tenant (``g.tenant_id``): MemOS's client updates and deletes by memory id alone,
without a user_id, and an id of another tenant must read as "not found", never act.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from flask import Blueprint, Response, g
from sqlalchemy import ColumnElement

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
    and_filters,
)
from memos_pipeline.search import filters
from memos_pipeline.search.recall import memory_item, preference_item
from memos_pipeline.storage import ingests, memories, profiles
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.filters import Target, compile_filter, memory_target, preference_target
from memos_pipeline.storage.models import Message

bp = Blueprint("memories", __name__)
REINDEX_BATCH = 500  # memory ids per indexer task: a bulk delete stays many small messages, not one huge one


def _actor() -> str:
    return f"api:{g.tenant_id}:{g.request_id}"


def _reindex(ids: list[uuid.UUID]) -> None:
    """BM25 follows Postgres. Search already hides these ids at once (it re-reads status from Postgres)."""
    for i in range(0, len(ids), REINDEX_BATCH):
        job = IndexJob(memory_ids=ids[i : i + REINDEX_BATCH])
        outbox.publish_quietly(celery(), "memos.indexer.upsert", job.model_dump(mode="json"))


def _where(scope: dict[str, Any] | None, target: Target) -> ColumnElement[bool] | None:
    """A MemOS filter (already checked by the request model) as SQL over ``target``, in the key's tenant."""
    return compile_filter(filters.parse(scope), target, g.tenant_id) if scope else None


@bp.post("/get/memory")
def get_memory() -> tuple[Response, int]:
    return ok(memory_page(body(GetMemoryRequest)))


def memory_page(req: GetMemoryRequest) -> dict[str, Any]:
    """A page as /get/memory answers it (its data); also MemOS's server routes /product/get_memory and get_all."""
    scope = req.scope_filter()
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
            where=_where(scope, memory_target()),
        )
        data: dict[str, Any] = {
            "memory_detail_list": [memory_item(m) for m in rows],
            "total": total,
            "size": req.size,
            "current": req.page,
            "page": req.page,
            "pages": math.ceil(total / req.size),
            "ignored": req.ignored(),
        }
        if req.include_preference:
            # Preferences have no kind of ours (raw/fact) and their memory_type is their preference_type.
            prefs_scope = and_filters(scope, {"memory_type": req.memory_type} if req.memory_type else None)
            prefs, pref_total = (
                ([], 0)
                if req.kind is not None
                else memories.page_preferences(
                    s,
                    g.tenant_id,
                    req.user_id,
                    conversation_id=req.conversation_id,
                    status=req.status,
                    page=req.page,
                    size=req.size,
                    where=_where(prefs_scope, preference_target()),
                )
            )
            data["preference_detail_list"] = [preference_item(p) for p in prefs]
            data["preference_total"] = pref_total
        if req.include_tool_memory:
            data["tool_memory_detail_list"] = []
        # The user's profile (api/profile.py) when there is one, as /search/memory answers it.
        found = profiles.profile_items(s, g.tenant_id, req.user_id, req.agent_id)
        if found:
            data["profile_detail_list"] = found
        return data


@bp.get("/get/memory/<uuid:memory_id>")
def get_memory_by_id(memory_id: uuid.UUID) -> tuple[Response, int]:
    with session_scope(settings()) as s:
        m = memories.tenant_memory(s, g.tenant_id, memory_id)
        if m is not None:
            return ok({**memory_item(m), "user_id": m.user_id, "version": m.version})
        p = memories.tenant_preference(s, g.tenant_id, memory_id)
        if p is not None:
            return ok({**preference_item(p), "user_id": p.user_id, "status": p.status})
    raise ApiError(404, NOT_FOUND, f"memory_id: no memory {memory_id}")


@bp.post("/delete/memory")
def delete_memory() -> tuple[Response, int]:
    return ok(delete(body(DeleteMemoryRequest)))


def delete(req: DeleteMemoryRequest) -> dict[str, Any]:
    """A delete as /delete/memory answers it (its data); also MemOS's server route /product/delete_memory."""
    scope = req.scope_filter()
    with session_scope(settings()) as s:
        deleted = memories.soft_delete(
            s, g.tenant_id, _actor(), ids=req.memory_ids, where=_where(scope, memory_target())
        )
        # MemOS deletes a user's preferences with the rest of their memories; an id may be a preference's too.
        deleted_prefs = memories.soft_delete_preferences(
            s, g.tenant_id, _actor(), ids=req.memory_ids, where=_where(scope, preference_target())
        )
    _reindex(deleted)
    gone = {str(i) for i in (*deleted, *deleted_prefs)}
    return {
        # The call did what it was asked: an id already deleted (a retry) or not ours is listed in not_found.
        "success": True,
        "deleted": [str(i) for i in deleted],
        "deleted_preferences": [str(i) for i in deleted_prefs],
        "not_found": sorted({str(i) for i in req.memory_ids or ()} - gone),
        "ignored": req.ignored(),
    }


@bp.post("/update/memory")
def update_memory() -> tuple[Response, int]:
    req = body(UpdateMemoryRequest)
    cfg = settings()
    whose = "for this user" if req.user_id else "in this tenant"
    with session_scope(cfg) as s:
        old = memories.tenant_memory(s, g.tenant_id, req.memory_id, user_id=req.user_id, lock=True)
        if old is None:
            raise ApiError(404, NOT_FOUND, f"memory_id: no memory {req.memory_id} {whose}")
        if req.status in ("archived", "deleted"):
            memories.retire(s, old, req.status, _actor())
            item, ids = memory_item(old), [old.id]
        elif old.status != "activated":
            raise ApiError(404, NOT_FOUND, f"memory_id: no active memory {req.memory_id} {whose}")
        elif req.new_value is None and req.new_key is None and req.tags is None:
            item, ids = memory_item(old), []  # status "activated" of an active memory: nothing to do
        else:
            value = req.new_value or old.memory_value
            key = req.new_key or old.memory_key
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
    return ok({**item, "success": True, "ignored": req.ignored()})


@bp.post("/get/memory/history")
def memory_history() -> tuple[Response, int]:
    req = body(MemoryHistoryRequest)
    with session_scope(settings()) as s:
        chain = memories.history(s, g.tenant_id, req.user_id, req.memory_id)
        if not chain:
            raise ApiError(404, NOT_FOUND, f"memory_id: no memory {req.memory_id} for this user")
        return ok({"history": [{**memory_item(m), "version": m.version} for m in chain]})


def _message(m: Message) -> dict[str, Any]:
    return {
        "id": m.client_id or str(m.id),
        "message_id": str(m.id),
        "role": m.role,
        "name": m.name,
        "content": m.content,
        "chat_time": m.chat_time,
        "conversation_id": m.conversation_id,
        "ingest_id": str(m.ingest_id),
        "create_time": m.created_at.isoformat(),
    }


@bp.post("/get/message")
def get_message() -> tuple[Response, int]:
    req = body(GetMessageRequest)
    data: dict[str, Any] = {"ignored": req.ignored()}
    with session_scope(settings()) as s:
        if req.latest:
            rows = ingests.latest_messages(
                s,
                g.tenant_id,
                req.user_id,
                conversation_id=req.conversation_id,
                conversations=req.conversation_limit_number,
                per_conversation=req.message_limit_number or 6,
                source=req.source,
            )
            data["total"] = len(rows)
        else:
            assert req.conversation_id is not None  # req.latest otherwise
            rows, data["total"] = ingests.page_messages(
                s, g.tenant_id, req.user_id, req.conversation_id, req.page, req.size, source=req.source
            )
            data.update(page=req.page, size=req.size)
        # message_detail_list: the name MemOS's client reads (under any other name it sees no messages).
        return ok({"message_detail_list": [_message(m) for m in rows], **data})
