"""Memories: raw windows, facts and preferences, their versions and their soft deletes. Every read of customer
data takes the tenant (and user) and filters on it here, so that ids alone never reach another tenant's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from memos_pipeline.storage.db import content_hash, now
from memos_pipeline.storage.models import AuditLog, Ingest, Memory, MemoryEdge, Preference


def insert_memories(
    session: Session,
    ingest: Ingest,
    rows: Sequence[dict[str, Any]],
    kind: str,
    memory_type: str,
    origin_ingest_id: uuid.UUID | None = None,
) -> int:
    """Insert an ingest's memories of one kind (raw windows, a file's passages, tool memories); one already stored
    for (ingest, kind, index) is kept as is, so a redelivered task converges to the same rows."""
    if rows:
        base = {"tenant_id": ingest.tenant_id, "user_id": ingest.user_id, "conversation_id": ingest.conversation_id}
        base |= {"ingest_id": ingest.id, "kind": kind, "memory_type": memory_type, "status": "activated"}
        if origin_ingest_id is not None:
            base["origin_ingest_id"] = origin_ingest_id
        stmt = insert(Memory).values([{**base, **r} for r in rows])
        session.execute(stmt.on_conflict_do_nothing(constraint="uq_memories_ingest_kind_chunk"))
    return len(rows)


def upsert_raw_memories(session: Session, ingest: Ingest, rows: Sequence[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert raw windows (redelivery-safe, :func:`insert_memories`); the ids of the ingest's windows in order."""
    insert_memories(session, ingest, rows, "raw", "RawMemory")
    ids = session.execute(
        select(Memory.id).where(Memory.ingest_id == ingest.id, Memory.kind == "raw").order_by(Memory.chunk_idx)
    ).scalars()
    return list(ids)


def set_raw_vectors(session: Session, ingest_id: uuid.UUID, vectors: dict[int, list[float]]) -> None:
    """The vectors of an ingest's raw windows, by chunk index (stored without them first: see stages/chunk.py)."""
    if vectors:
        stmt = (
            update(Memory)
            .where(Memory.ingest_id == ingest_id, Memory.kind == "raw", Memory.chunk_idx == bindparam("idx"))
            .values(embedding=bindparam("vec", type_=Memory.embedding.type))
        )
        # One statement executed for every window; on the connection: a plain UPDATE, not the ORM's bulk-by-key form.
        session.connection().execute(stmt, [{"idx": i, "vec": v} for i, v in vectors.items()])


def memories_of_ingest(session: Session, ingest_id: uuid.UUID) -> list[Memory]:
    return memories_of_ingests(session, [ingest_id])


def memories_of_ingests(
    session: Session, ingest_ids: Sequence[uuid.UUID], *, with_vectors: bool = True
) -> list[Memory]:
    """The memories of these ingests, by kind, then window order."""
    q = (
        select(Memory)
        .where(Memory.ingest_id.in_(ingest_ids))
        .order_by(Memory.kind, Memory.chunk_idx, Memory.created_at)
    )
    if not with_vectors:
        q = q.options(defer(Memory.embedding))
    return list(session.execute(q).scalars())


def memories_by_ids(session: Session, ids: Sequence[uuid.UUID]) -> list[Memory]:
    return list(session.execute(select(Memory).where(Memory.id.in_(ids))).scalars())


def count_memories(session: Session, tenant_id: uuid.UUID, user_id: str | None = None) -> int:
    q = select(func.count()).select_from(Memory).where(Memory.tenant_id == tenant_id)
    if user_id is not None:
        q = q.where(Memory.user_id == user_id)
    return int(session.execute(q).scalar_one())


def page_memories(
    session: Session,
    tenant_id: uuid.UUID,
    user_id: str,
    *,
    conversation_id: str | None,
    memory_type: str | None,
    kind: str | None,
    status: str,
    page: int,
    size: int,
    where: ColumnElement[bool] | None = None,
) -> tuple[list[Memory], int]:
    """A page of the user's memories, newest first, and how many there are; ``where``: a compiled MemOS filter
    (:mod:`memos_pipeline.storage.filters`)."""
    conds = [Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.status == status]
    if where is not None:
        conds.append(where)
    if conversation_id is not None:
        conds.append(Memory.conversation_id == conversation_id)
    if memory_type is not None:
        conds.append(Memory.memory_type == memory_type)
    if kind is not None:
        conds.append(Memory.kind == kind)
    total = int(session.execute(select(func.count()).select_from(Memory).where(*conds)).scalar_one())
    rows = session.execute(
        select(Memory).where(*conds).order_by(Memory.created_at.desc(), Memory.id).offset((page - 1) * size).limit(size)
    ).scalars()
    return list(rows), total


def page_preferences(
    session: Session,
    tenant_id: uuid.UUID,
    user_id: str,
    *,
    conversation_id: str | None,
    status: str,
    page: int,
    size: int,
    where: ColumnElement[bool] | None = None,
) -> tuple[list[Preference], int]:
    """A page of the user's preferences, newest first, and how many there are."""
    conds = [Preference.tenant_id == tenant_id, Preference.user_id == user_id, Preference.status == status]
    if conversation_id is not None:
        conds.append(Preference.conversation_id == conversation_id)
    if where is not None:
        conds.append(where)
    total = int(session.execute(select(func.count()).select_from(Preference).where(*conds)).scalar_one())
    rows = session.execute(
        select(Preference)
        .where(*conds)
        .order_by(Preference.created_at.desc(), Preference.id)
        .offset((page - 1) * size)
        .limit(size)
    ).scalars()
    return list(rows), total


def user_memory(
    session: Session, tenant_id: uuid.UUID, user_id: str, memory_id: uuid.UUID, *, lock: bool = False
) -> Memory | None:
    return tenant_memory(session, tenant_id, memory_id, user_id=user_id, lock=lock)


def tenant_memory(
    session: Session, tenant_id: uuid.UUID, memory_id: uuid.UUID, *, user_id: str | None = None, lock: bool = False
) -> Memory | None:
    """A memory of the tenant (of that user, when one is named): an id alone never reaches another tenant's."""
    q = select(Memory).where(Memory.id == memory_id, Memory.tenant_id == tenant_id)
    if user_id is not None:
        q = q.where(Memory.user_id == user_id)
    q = q.with_for_update().execution_options(populate_existing=True) if lock else q
    return session.execute(q).scalar_one_or_none()


def tenant_preference(session: Session, tenant_id: uuid.UUID, preference_id: uuid.UUID) -> Preference | None:
    q = select(Preference).where(Preference.id == preference_id, Preference.tenant_id == tenant_id)
    return session.execute(q).scalar_one_or_none()


def audit(
    session: Session,
    tenant_id: uuid.UUID | None,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    **details: Any,
) -> None:
    session.add(
        AuditLog(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=details,
        )
    )


def soft_delete(
    session: Session,
    tenant_id: uuid.UUID,
    actor: str,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    where: ColumnElement[bool] | None = None,
) -> list[uuid.UUID]:
    """Mark deleted the tenant's memories that have one of ``ids`` and match ``where`` (a compiled filter; every
    condition given must hold), archived versions included: a deleted memory leaves no readable history. One audit
    row per memory. Ids of other tenants are never touched."""
    return _soft_delete(session, Memory, "memory", tenant_id, actor, ids, where)


def soft_delete_preferences(
    session: Session,
    tenant_id: uuid.UUID,
    actor: str,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    where: ColumnElement[bool] | None = None,
) -> list[uuid.UUID]:
    """As :func:`soft_delete`, for preferences (MemOS deletes them with the user's other memories)."""
    return _soft_delete(session, Preference, "preference", tenant_id, actor, ids, where)


def _soft_delete(
    session: Session,
    table: type[Memory] | type[Preference],
    target_type: str,
    tenant_id: uuid.UUID,
    actor: str,
    ids: Sequence[uuid.UUID] | None,
    where: ColumnElement[bool] | None,
) -> list[uuid.UUID]:
    conds: list[ColumnElement[bool]] = [table.tenant_id == tenant_id, table.status != "deleted"]
    if ids is not None:
        conds.append(table.id.in_(ids))
    if where is not None:
        conds.append(where)
    rows = session.execute(
        update(table).where(*conds).values(status="deleted", updated_at=func.now()).returning(table.id, table.user_id)
    ).all()
    if rows:
        session.execute(
            insert(AuditLog),
            [
                {
                    "tenant_id": tenant_id,
                    "actor": actor,
                    "action": f"delete_{target_type}",
                    "target_type": target_type,
                    "target_id": str(mid),
                    "details": {"user_id": user_id},
                }
                for mid, user_id in rows
            ],
        )
    return [mid for mid, _ in rows]


def retire(session: Session, memory: Memory, status: str, actor: str) -> None:
    """Archive or delete one memory without a successor (/update/memory with a status); audited."""
    if memory.status in (status, "deleted"):
        return  # already retired as asked, or further: a deleted memory is not archived again
    previous, memory.status, memory.updated_at = memory.status, status, now()
    action = "delete_memory" if status == "deleted" else "archive_memory"
    audit(session, memory.tenant_id, actor, action, "memory", str(memory.id), user_id=memory.user_id, previous=previous)


def new_version(
    session: Session,
    old: Memory,
    *,
    memory_value: str,
    memory_key: str,
    tags: list[str],
    embedding: Any,
    actor: str,
    reason: str,
) -> Memory:
    """Write ``old``'s successor and archive ``old``: history is kept, never overwritten."""
    new = Memory(
        tenant_id=old.tenant_id,
        user_id=old.user_id,
        conversation_id=old.conversation_id,
        ingest_id=None,
        origin_ingest_id=old.ingest_id or old.origin_ingest_id,
        kind=old.kind,
        memory_key=memory_key,
        memory_value=memory_value,
        memory_type=old.memory_type,
        tags=tags,
        status="activated",
        sources=list(old.sources or []),
        source_message_ids=list(old.source_message_ids or []),
        info={**(old.info or {}), "merged_from": str(old.id), "reason": reason},
        embedding=embedding,
        content_hash=content_hash(memory_key, memory_value),
        version=old.version + 1,
    )
    session.add(new)
    session.flush()
    old.status = "archived"
    old.updated_at = now()
    session.add(MemoryEdge(tenant_id=old.tenant_id, src_id=new.id, dst_id=old.id, kind="merged_from"))
    audit(session, old.tenant_id, actor, "update_memory", "memory", str(new.id), previous=str(old.id), reason=reason)
    return new


def history(session: Session, tenant_id: uuid.UUID, user_id: str, memory_id: uuid.UUID) -> list[Memory]:
    """The memory's versions, newest first: follow merged_from edges forward to successors and back."""
    start = user_memory(session, tenant_id, user_id, memory_id)
    if start is None:
        return []
    seen = {start.id}
    newer = _follow_merged(session, start.id, MemoryEdge.dst_id, MemoryEdge.src_id, seen)  # who replaced it
    older = _follow_merged(session, start.id, MemoryEdge.src_id, MemoryEdge.dst_id, seen)  # what it replaced
    chain = [*reversed(newer), start, *older]
    return [m for m in chain if m.tenant_id == tenant_id and m.user_id == user_id]


def _follow_merged(
    session: Session, start: uuid.UUID, from_col: Any, to_col: Any, seen: set[uuid.UUID]
) -> list[Memory]:
    """Walk merged_from edges from ``start`` (from_col -> to_col) until the chain ends or loops."""
    out: list[Memory] = []
    cur = start
    while True:
        nxt = session.execute(
            select(to_col).where(from_col == cur, MemoryEdge.kind == "merged_from")
        ).scalar_one_or_none()
        if nxt is None or nxt in seen:
            return out
        seen.add(nxt)
        cur = nxt
        out.append(session.get_one(Memory, nxt))
