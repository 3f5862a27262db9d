"""Data access. Every read of customer data takes the tenant (and user) and filters on it here, in the data layer,
so that no caller can forget to; ids alone never reach another tenant's rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.schemas import AddRequest
from memos_pipeline.storage.models import ApiKey, AuditLog, Ingest, Memory, MemoryEdge, Message, OutboxItem, Tenant
from memos_pipeline.text.chunking import Turn

STAGES = ("chunker", "indexer", "memreader", "preference")
TERMINAL = frozenset({"done", "skipped", "failed", "dead_lettered"})
FAILED = frozenset({"failed", "dead_lettered"})


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def content_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- tenants and keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant_name: str, key_name: str = "") -> tuple[uuid.UUID, str]:
    """Create the tenant if needed and a new key for it. Returns (tenant_id, key); only the hash is stored."""
    session.execute(insert(Tenant).values(name=tenant_name).on_conflict_do_nothing(index_elements=["name"]))
    tenant_id = session.execute(select(Tenant.id).where(Tenant.name == tenant_name)).scalar_one()
    key = "mp_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, name=key_name, key_hash=hash_key(key), key_prefix=key[:10]))
    return tenant_id, key


def tenant_by_name(session: Session, name: str) -> uuid.UUID | None:
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one_or_none()


def tenant_for_key(session: Session, key: str) -> uuid.UUID | None:
    row = session.execute(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    return row[0] if row else None


# ---------------------------------------------------------------- ingests


def initial_stages(*, llm: bool, scheduler: bool, preference: bool) -> dict[str, dict[str, Any]]:
    def llm_stage(enabled: bool, off_reason: str) -> dict[str, Any]:
        if not scheduler:
            return {"status": "skipped", "reason": "MOS_ENABLE_SCHEDULER=false: raw memories only"}
        if not enabled:
            return {"status": "skipped", "reason": off_reason}
        if not llm:
            return {"status": "skipped", "reason": "no LLM configured (MEMOS_LLM_BASE_URL/MEMOS_LLM_MODEL unset)"}
        return {"status": "pending"}

    return {
        "chunker": {"status": "pending"},
        "indexer": {"status": "pending"},
        "memreader": llm_stage(True, ""),
        "preference": llm_stage(preference, "ENABLE_PREFERENCE_MEMORY=false"),
    }


@dataclass(frozen=True)
class Accepted:
    ingest_id: uuid.UUID
    task_id: str
    outbox_id: int
    duplicate: bool = False  # the idempotency key named an ingest accepted before: nothing new was written
    published: bool = False  # (duplicates only) whether that ingest's task was already published


def accept_ingest(
    session: Session,
    tenant_id: uuid.UUID,
    req: AddRequest,
    *,
    trace_id: str,
    stages: dict[str, Any],
    task_name: str,
    idempotency_key: str | None = None,
) -> Accepted:
    """Write ingest + messages + outbox row in the caller's transaction: once committed, the add is durable.

    With an ``idempotency_key`` already used by this tenant, nothing is written and the earlier ingest is
    returned (``duplicate=True``): retries and redeliveries of one add stay one ingest.
    """
    ingest_id, task_id = uuid.uuid4(), str(uuid.uuid4())
    request_meta = {
        k: v for k, v in req.model_dump(include={"agent_id", "app_id", "source", "tags", "info"}).items() if v
    }
    inserted = session.execute(
        insert(Ingest)
        .values(
            id=ingest_id,
            tenant_id=tenant_id,
            user_id=req.user_id,
            conversation_id=req.conversation_id,
            task_id=task_id,
            trace_id=trace_id,
            status="accepted",
            stages=stages,
            message_count=len(req.messages),
            request=request_meta,
            idempotency_key=idempotency_key,
        )
        .on_conflict_do_nothing(constraint="uq_ingests_tenant_idempotency_key")
        .returning(Ingest.id)
    ).scalar_one_or_none()
    if inserted is None:
        prev = session.execute(
            select(Ingest.id, Ingest.task_id, OutboxItem.id, OutboxItem.sent_at)
            .join(OutboxItem, OutboxItem.ingest_id == Ingest.id)
            .where(Ingest.tenant_id == tenant_id, Ingest.idempotency_key == idempotency_key)
        ).one()
        return Accepted(prev[0], prev[1], prev[2], duplicate=True, published=prev[3] is not None)
    session.execute(
        insert(Message),
        [
            {
                "ingest_id": ingest_id,
                "tenant_id": tenant_id,
                "user_id": req.user_id,
                "conversation_id": req.conversation_id,
                "seq": i,
                "client_id": m.id,
                "role": m.role,
                "name": m.name,
                "content": m.content,
                "chat_time": m.chat_time,
            }
            for i, m in enumerate(req.messages)
        ],
    )
    outbox_id = session.execute(
        insert(OutboxItem)
        .values(
            ingest_id=ingest_id,
            task_name=task_name,
            task_id=task_id,
            payload={"v": 1, "ingest_id": str(ingest_id)},
            headers={"trace_id": trace_id},
        )
        .returning(OutboxItem.id)
    ).scalar_one()
    return Accepted(ingest_id, task_id, outbox_id)


def get_ingest(session: Session, ingest_id: uuid.UUID) -> Ingest | None:
    """Workers only: load by id (the id came from our own committed outbox row)."""
    return session.get(Ingest, ingest_id)


def find_ingest(
    session: Session, tenant_id: uuid.UUID, *, task_id: str | None = None, ingest_id: uuid.UUID | None = None
) -> Ingest | None:
    q = select(Ingest).where(Ingest.tenant_id == tenant_id)
    q = q.where(Ingest.id == ingest_id) if ingest_id else q.where(Ingest.task_id == task_id)
    return session.execute(q).scalar_one_or_none()


def overall_status(stages: dict[str, Any]) -> str:
    states = [s.get("status", "pending") for s in stages.values()]
    if any(s in FAILED for s in states):
        return "failed"
    if all(s in TERMINAL for s in states):
        return "done"
    if any(s in ("running", "done", "retrying") for s in states):
        return "processing"
    return "accepted"


def mark_stage(session: Session, ingest_id: uuid.UUID, stage: str, status: str, **fields: Any) -> str:
    """Record a stage transition (row-locked read-modify-write) and return the ingest's overall status."""
    # populate_existing: the session may hold this ingest from earlier in the task; without it the locked re-read
    # returns that stale copy and we would write back stages another worker changed meanwhile (lost update).
    ingest = session.execute(
        select(Ingest).where(Ingest.id == ingest_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if ingest is None:
        return "missing"
    stages = dict(ingest.stages or {})
    entry = dict(stages.get(stage, {}))
    t = now()
    if status == "running":
        entry.setdefault("started_at", t.isoformat())
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
    elif status in TERMINAL:
        entry["finished_at"] = t.isoformat()
        if "started_at" in entry:
            started = dt.datetime.fromisoformat(entry["started_at"])
            entry["ms"] = round((t - started).total_seconds() * 1000, 2)
    if status in ("running", "done") and "error" in entry:
        entry["last_error"] = entry.pop("error")  # a recovered stage keeps its history, not a current error
    entry.update(status=status, **fields)
    stages[stage] = entry
    overall = overall_status(stages)
    ingest.stages = stages
    ingest.status = overall
    ingest.updated_at = t
    if overall in ("done", "failed") and ingest.finished_at is None:
        ingest.finished_at = t
    return overall


def ingest_turns(session: Session, ingest: Ingest, context: int) -> tuple[list[Turn], list[Turn]]:
    """The ingest's turns, and up to ``context`` turns of the same conversation accepted before it."""
    rows = session.execute(select(Message).where(Message.ingest_id == ingest.id).order_by(Message.seq)).scalars()
    turns = [turn_of(m) for m in rows]
    ctx: list[Turn] = []
    if context > 0:
        prev = session.execute(
            select(Message)
            .join(Ingest, Ingest.id == Message.ingest_id)
            .where(
                Message.tenant_id == ingest.tenant_id,
                Message.user_id == ingest.user_id,
                Message.conversation_id == ingest.conversation_id,
                Ingest.created_at < ingest.created_at,
            )
            .order_by(Ingest.created_at.desc(), Message.seq.desc())
            .limit(context)
        ).scalars()
        ctx = [turn_of(m) for m in reversed(list(prev))]
    return turns, ctx


def turn_of(m: Message) -> Turn:
    """A stored message as the chunker sees it."""
    return Turn(str(m.id), m.client_id or str(m.id), m.role, m.content, m.name, m.chat_time)


# ---------------------------------------------------------------- memories


def upsert_raw_memories(session: Session, ingest: Ingest, rows: Sequence[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert raw windows; a window already stored for (ingest, chunk_idx) is kept as is (redelivery-safe)."""
    if rows:
        stmt = insert(Memory).values(
            [
                {
                    "tenant_id": ingest.tenant_id,
                    "user_id": ingest.user_id,
                    "conversation_id": ingest.conversation_id,
                    "ingest_id": ingest.id,
                    "kind": "raw",
                    "memory_type": "RawMemory",
                    "status": "activated",
                    **r,
                }
                for r in rows
            ]
        )
        session.execute(stmt.on_conflict_do_nothing(constraint="uq_memories_ingest_kind_chunk"))
    ids = session.execute(
        select(Memory.id).where(Memory.ingest_id == ingest.id, Memory.kind == "raw").order_by(Memory.chunk_idx)
    ).scalars()
    return list(ids)


def memories_of_ingest(session: Session, ingest_id: uuid.UUID) -> list[Memory]:
    q = select(Memory).where(Memory.ingest_id == ingest_id).order_by(Memory.kind, Memory.chunk_idx, Memory.created_at)
    return list(session.execute(q).scalars())


def memories_by_ids(session: Session, ids: Sequence[uuid.UUID]) -> list[Memory]:
    return list(session.execute(select(Memory).where(Memory.id.in_(ids))).scalars())


def count_memories(session: Session, tenant_id: uuid.UUID, user_id: str | None = None) -> int:
    q = select(func.count()).select_from(Memory).where(Memory.tenant_id == tenant_id)
    if user_id is not None:
        q = q.where(Memory.user_id == user_id)
    return int(session.execute(q).scalar_one())


# ---------------------------------------------------------------- outbox


def stuck_ingests(session: Session, older_than_s: float, limit: int) -> list[Ingest]:
    q = (
        select(Ingest)
        .where(
            Ingest.status.in_(("accepted", "processing")),
            Ingest.updated_at < func.now() - dt.timedelta(seconds=older_than_s),
        )
        .order_by(Ingest.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(q).scalars())


def mark_outbox_sent(session: Session, outbox_id: int) -> None:
    session.execute(update(OutboxItem).where(OutboxItem.id == outbox_id).values(sent_at=func.now()))


def claim_unsent(session: Session, older_than_s: float, limit: int = 100) -> list[OutboxItem]:
    """Unsent rows older than the grace period, locked so that parallel relays never publish the same row twice
    at once (publishing twice anyway would be harmless: every task is idempotent)."""
    q = (
        select(OutboxItem)
        .where(OutboxItem.sent_at.is_(None), OutboxItem.created_at < func.now() - dt.timedelta(seconds=older_than_s))
        .order_by(OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(q).scalars())


# ---------------------------------------------------------------- memory management (API)


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
) -> tuple[list[Memory], int]:
    conds = [Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.status == status]
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


def user_memory(
    session: Session, tenant_id: uuid.UUID, user_id: str, memory_id: uuid.UUID, *, lock: bool = False
) -> Memory | None:
    q = select(Memory).where(Memory.id == memory_id, Memory.tenant_id == tenant_id, Memory.user_id == user_id)
    q = q.with_for_update().execution_options(populate_existing=True) if lock else q
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
    session: Session, tenant_id: uuid.UUID, user_id: str, ids: Sequence[uuid.UUID], actor: str
) -> list[uuid.UUID]:
    """Mark the user's memories deleted (only theirs: other ids are ignored) and audit each."""
    rows = session.execute(
        update(Memory)
        .where(Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.id.in_(ids), Memory.status != "deleted")
        .values(status="deleted", updated_at=func.now())
        .returning(Memory.id)
    ).scalars()
    deleted = list(rows)
    for mid in deleted:
        audit(session, tenant_id, actor, "delete_memory", "memory", str(mid), user_id=user_id)
    return deleted


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


def page_messages(
    session: Session, tenant_id: uuid.UUID, user_id: str, conversation_id: str, page: int, size: int
) -> tuple[list[Message], int]:
    conds = [Message.tenant_id == tenant_id, Message.user_id == user_id, Message.conversation_id == conversation_id]
    total = int(session.execute(select(func.count()).select_from(Message).where(*conds)).scalar_one())
    rows = session.execute(
        select(Message)
        .join(Ingest, Ingest.id == Message.ingest_id)
        .where(*conds)
        .order_by(Ingest.created_at, Message.seq)
        .offset((page - 1) * size)
        .limit(size)
    ).scalars()
    return list(rows), total
