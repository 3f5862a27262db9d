"""Ingests, their messages and their outbox rows. Every read of customer data takes the tenant (and user) and
filters on it here, in the data layer, so that no caller can forget to; ids alone never reach another tenant's rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.schemas import AddRequest, IngestJob
from memos_pipeline.storage.models import Ingest, Message, OutboxItem
from memos_pipeline.text.chunking import Turn


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
            payload=IngestJob(ingest_id=ingest_id).model_dump(mode="json"),
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
