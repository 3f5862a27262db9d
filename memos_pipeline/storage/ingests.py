"""Ingests, their messages and their outbox rows. Every read of customer data takes the tenant (and user) and
filters on it here, in the data layer, so that no caller can forget to; ids alone never reach another tenant's rows.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.schemas import AddRequest, IngestJob
from memos_pipeline.storage.db import content_hash
from memos_pipeline.storage.models import Ingest, Message, OutboxItem
from memos_pipeline.text.chunking import Turn

PENDING = ("accepted", "processing")  # an ingest's overall status until it is done or failed


@dataclass(frozen=True)
class Accepted:
    ingest_id: uuid.UUID
    task_id: str
    outbox_id: int
    duplicate: bool = False  # the same add was accepted before (same key, or same content lately): nothing written
    published: bool = False  # (duplicates only) whether that ingest's task was already published


def open_ingest(
    session: Session,
    tenant_id: uuid.UUID,
    user_id: str,
    conversation_id: str | None,
    *,
    trace_id: str,
    stages: dict[str, Any],
    task_name: str,
    payload: Callable[[uuid.UUID], dict[str, Any]],
    request: dict[str, Any],
    message_count: int = 0,
    idempotency_key: str | None = None,
    content_key: str | None = None,
    dedup_window_s: float = 0.0,
) -> Accepted:
    """Write an ingest row and the outbox row of its first task (``task_name``, ``payload(ingest_id)``) in the
    caller's transaction: once committed, the ingest is durable. Every kind of ingest opens here (adds, feedbacks,
    knowledge-base files, tool memories).

    With an ``idempotency_key`` already used by this tenant, nothing is written and the earlier ingest is
    returned (``duplicate=True``): retries and redeliveries stay one ingest. Without one, an ingest whose
    ``content_key`` matches one accepted less than ``dedup_window_s`` ago is taken for a retry of it, the same
    way: clients that retry without a key (the MemOS client) store their add once.
    """
    if idempotency_key is None and content_key is not None and dedup_window_s > 0:
        earlier = _recent_same(session, tenant_id, content_key, dedup_window_s)
        if earlier is not None:
            return earlier
    ingest_id, task_id = uuid.uuid4(), str(uuid.uuid4())
    inserted = session.execute(
        insert(Ingest)
        .values(
            id=ingest_id,
            tenant_id=tenant_id,
            user_id=user_id,
            conversation_id=conversation_id,
            task_id=task_id,
            trace_id=trace_id,
            status="accepted",
            stages=stages,
            message_count=message_count,
            request=request,
            idempotency_key=idempotency_key,
            content_key=content_key,
        )
        .on_conflict_do_nothing(constraint="uq_ingests_tenant_idempotency_key")
        .returning(Ingest.id)
    ).scalar_one_or_none()
    if inserted is None:  # this Idempotency-Key was used before: that ingest is the answer
        prev = _earlier(session, Ingest.tenant_id == tenant_id, Ingest.idempotency_key == idempotency_key)
        if prev is None:  # the insert waited for the conflicting row to commit, so it is there
            raise RuntimeError(f"Idempotency-Key {idempotency_key!r} conflicts with an ingest that cannot be read")
        return prev
    outbox_id = session.execute(
        insert(OutboxItem)
        .values(
            ingest_id=ingest_id,
            task_name=task_name,
            task_id=task_id,
            payload=payload(ingest_id),
            headers={"trace_id": trace_id},
        )
        .returning(OutboxItem.id)
    ).scalar_one()
    return Accepted(ingest_id, task_id, outbox_id)


def accept_ingest(
    session: Session,
    tenant_id: uuid.UUID,
    req: AddRequest,
    *,
    trace_id: str,
    stages: dict[str, Any],
    task_name: str,
    idempotency_key: str | None = None,
    content_key: str | None = None,
    dedup_window_s: float = 0.0,
) -> Accepted:
    """An add: its ingest (:func:`open_ingest`, whose duplicates it returns as they are) and its messages."""
    acc = open_ingest(
        session,
        tenant_id,
        req.user_id,
        req.conversation_id,
        trace_id=trace_id,
        stages=stages,
        task_name=task_name,
        payload=lambda ingest_id: IngestJob(ingest_id=ingest_id).model_dump(mode="json"),
        request={
            k: v for k, v in req.model_dump(include={"agent_id", "app_id", "source", "tags", "info"}).items() if v
        },
        message_count=len(req.messages),
        idempotency_key=idempotency_key,
        content_key=content_key,
        dedup_window_s=dedup_window_s,
    )
    if acc.duplicate:
        return acc
    # A Core executemany on the connection (one INSERT with every row's VALUES), without the ORM's bulk-insert
    # machinery around it: that path, round trip included, held 29% of accept_ingest's samples in a py-spy profile
    # of the API under a flood (no gain was measurable end to end; it is the plainer call).
    session.connection().execute(
        insert(Message),
        [
            {
                "ingest_id": acc.ingest_id,
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
    return acc


def add_content_key(req: AddRequest) -> str:
    """What makes two adds the same add: user, conversation and the messages, every field of each."""
    messages = [m.model_dump(mode="json") for m in req.messages]
    return content_hash(req.user_id, req.conversation_id, json.dumps(messages, sort_keys=True, ensure_ascii=False))


def _recent_same(session: Session, tenant_id: uuid.UUID, content_key: str, window_s: float) -> Accepted | None:
    """The ingest of the same add (or feedback) accepted within the window, if any.

    Identical adds racing each other (a client's retries sent at once) serialise on a transaction-scoped advisory
    lock on (tenant, content key): the second waits until the first commits or rolls back, and its next statement
    sees the committed row. Without the lock both would find nothing and both insert (the key is not unique: the
    same content after the window is a new add)."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"add/{tenant_id}/{content_key}"}
    )
    return _earlier(
        session,
        Ingest.tenant_id == tenant_id,
        Ingest.content_key == content_key,
        Ingest.created_at > func.clock_timestamp() - dt.timedelta(seconds=window_s),
    )


def _earlier(session: Session, *conds: ColumnElement[bool]) -> Accepted | None:
    """The latest ingest matching ``conds``, as the answer to a repeat of it (duplicate; published or not yet)."""
    row = session.execute(
        select(Ingest.id, Ingest.task_id, OutboxItem.id, OutboxItem.sent_at)
        .join(OutboxItem, OutboxItem.ingest_id == Ingest.id)
        .where(*conds)
        .order_by(Ingest.created_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return Accepted(row[0], row[1], row[2], duplicate=True, published=row[3] is not None)


def get_ingest(session: Session, ingest_id: uuid.UUID, *, lock: bool = False) -> Ingest | None:
    """Workers only: load by id (the id came from our own committed outbox row). ``lock``: row-locked (FOR UPDATE)
    until the transaction ends, for a transaction that writes the ingest's memories before it marks a stage: taking
    the ingest first keeps the lock order of every stage transaction (ingest, then its memories), so a redelivered
    task running beside the original cannot deadlock with it."""
    if lock:
        return session.get(Ingest, ingest_id, with_for_update=True, populate_existing=True)
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


def mark_outbox_sent(session: Session, outbox_ids: int | Sequence[int]) -> None:
    ids = [outbox_ids] if isinstance(outbox_ids, int) else list(outbox_ids)
    session.execute(
        update(OutboxItem).where(OutboxItem.id.in_(ids), OutboxItem.sent_at.is_(None)).values(sent_at=func.now())
    )


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
    session: Session,
    tenant_id: uuid.UUID,
    user_id: str,
    conversation_id: str,
    page: int,
    size: int,
    source: str | None = None,
) -> tuple[list[Message], int]:
    """A page of one conversation's messages in the order they were said, and how many there are; ``source``:
    only those of adds sent with that source."""
    conds = _message_scope(tenant_id, user_id, source)
    conds.append(Message.conversation_id == conversation_id)
    total = int(
        session.execute(
            select(func.count()).select_from(Message).join(Ingest, Ingest.id == Message.ingest_id).where(*conds)
        ).scalar_one()
    )
    rows = session.execute(
        select(Message)
        .join(Ingest, Ingest.id == Message.ingest_id)
        .where(*conds)
        .order_by(Ingest.created_at, Message.seq)
        .offset((page - 1) * size)
        .limit(size)
    ).scalars()
    return list(rows), total


def latest_messages(
    session: Session,
    tenant_id: uuid.UUID,
    user_id: str,
    *,
    conversation_id: str | None,
    conversations: int,
    per_conversation: int,
    source: str | None = None,
) -> list[Message]:
    """The last ``per_conversation`` messages of the conversation, or of each of the user's ``conversations``
    most recently added to when none is named; in the order they were said (MemOS's get_message)."""
    conds = _message_scope(tenant_id, user_id, source)
    if conversation_id is not None:
        conds.append(Message.conversation_id == conversation_id)
    else:
        recent = (
            select(Message.conversation_id)
            .join(Ingest, Ingest.id == Message.ingest_id)
            .where(*conds)
            .group_by(Message.conversation_id)
            .order_by(func.max(Ingest.created_at).desc(), Message.conversation_id)
            .limit(conversations)
        )
        conds.append(Message.conversation_id.in_(recent.scalar_subquery()))
    newest_first = (Ingest.created_at.desc(), Message.seq.desc())
    rank = func.row_number().over(partition_by=Message.conversation_id, order_by=newest_first).label("rank")
    ranked = select(Message.id, rank).join(Ingest, Ingest.id == Message.ingest_id).where(*conds).subquery()
    rows = session.execute(
        select(Message)
        .join(ranked, ranked.c.id == Message.id)
        .join(Ingest, Ingest.id == Message.ingest_id)
        .where(ranked.c.rank <= per_conversation)
        .order_by(Ingest.created_at, Message.seq)
    ).scalars()
    return list(rows)


def _message_scope(tenant_id: uuid.UUID, user_id: str, source: str | None) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [Message.tenant_id == tenant_id, Message.user_id == user_id]
    if source is not None:
        conds.append(Ingest.request.contains({"source": source}))
    return conds


def pending_counts(session: Session, tenant_id: uuid.UUID, user_id: str | None) -> dict[str, int]:
    """Per user, how many of the tenant's ingests (that user's, when one is named) are not yet done or failed."""
    q = select(Ingest.user_id, func.count()).where(Ingest.tenant_id == tenant_id, Ingest.status.in_(PENDING))
    if user_id is not None:
        q = q.where(Ingest.user_id == user_id)
    return {u: int(n) for u, n in session.execute(q.group_by(Ingest.user_id)).all()}


def pending_ingests(session: Session, tenant_id: uuid.UUID, user_id: str | None, limit: int) -> list[Ingest]:
    """The oldest ``limit`` of those ingests."""
    q = select(Ingest).where(Ingest.tenant_id == tenant_id, Ingest.status.in_(PENDING))
    if user_id is not None:
        q = q.where(Ingest.user_id == user_id)
    return list(session.execute(q.order_by(Ingest.created_at).limit(limit)).scalars())
