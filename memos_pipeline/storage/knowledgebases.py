"""Knowledge bases, their files and their passages. Every read takes the tenant and filters on it here, so a base or
file id of another tenant is simply not found.

A base is a search scope of its own: its passages are memories of kind ``document`` whose ``user_id`` is
``kb:<base id>`` and whose ``conversation_id`` is the file's id. Search then reads a base exactly as it reads a
user (search/recall.py is unchanged; the API searches each base asked for and merges, as it does for MemOS cubes).
A file's processing is an ingest with the stages ``document`` and ``indexer`` (ingest/lifecycle.py), accepted the
way an add is: file row (its bytes) + ingest + outbox row in one transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, undefer

from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import ingests, memories
from memos_pipeline.storage.db import now
from memos_pipeline.storage.ingests import Accepted
from memos_pipeline.storage.models import Ingest, KnowledgeBase, KnowledgeBaseFile, Memory, OutboxItem

SCOPE_PREFIX = "kb:"
DOCUMENT_KIND = "document"
DOCUMENT_TYPE = "DocumentMemory"


def scope(kb_id: uuid.UUID | str) -> str:
    """The ``user_id`` a base's passages are stored and searched under."""
    return f"{SCOPE_PREFIX}{kb_id}"


def _uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


class UnknownKnowledgebase(LookupError):
    """Ids that name no active base of the tenant; ``field`` is the request field that named them."""

    def __init__(self, field: str, ids: Sequence[str]) -> None:
        super().__init__(f"{field}: no knowledge base {', '.join(ids)}")
        self.field, self.ids = field, list(ids)


# ---------------------------------------------------------------- bases


def create_base(session: Session, tenant_id: uuid.UUID, name: str, description: str) -> KnowledgeBase:
    base = KnowledgeBase(tenant_id=tenant_id, name=name, description=description, status="active")
    session.add(base)
    session.flush()
    session.refresh(base)
    return base


def get_base(session: Session, tenant_id: uuid.UUID, kb_id: str | uuid.UUID) -> KnowledgeBase | None:
    """The tenant's active base of this id (an id that is no uuid names none)."""
    kid = _uuid(kb_id)
    if kid is None:
        return None
    return session.execute(
        select(KnowledgeBase).where(
            KnowledgeBase.id == kid, KnowledgeBase.tenant_id == tenant_id, KnowledgeBase.status == "active"
        )
    ).scalar_one_or_none()


def base_by_name(session: Session, tenant_id: uuid.UUID, name: str) -> KnowledgeBase | None:
    """The newest active base of this name (names are not unique: MemOS does not make them so)."""
    return session.execute(
        select(KnowledgeBase)
        .where(KnowledgeBase.tenant_id == tenant_id, KnowledgeBase.name == name, KnowledgeBase.status == "active")
        .order_by(KnowledgeBase.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def require_bases(session: Session, tenant_id: uuid.UUID, ids: Sequence[str], field: str) -> list[KnowledgeBase]:
    """The tenant's active bases of ``ids`` in the order given (duplicates once); any other id raises
    :class:`UnknownKnowledgebase` naming ``field``: a search or add never silently skips a base it was asked for."""
    wanted = {i: _uuid(i) for i in dict.fromkeys(ids)}
    valid = [u for u in wanted.values() if u is not None]
    found = {
        b.id: b
        for b in session.execute(
            select(KnowledgeBase).where(
                KnowledgeBase.tenant_id == tenant_id, KnowledgeBase.status == "active", KnowledgeBase.id.in_(valid)
            )
        ).scalars()
    }
    missing = [i for i, u in wanted.items() if u not in found]
    if missing:
        raise UnknownKnowledgebase(field, missing)
    return [found[u] for u in wanted.values() if u is not None]


def delete_base(session: Session, tenant_id: uuid.UUID, base: KnowledgeBase, actor: str) -> list[uuid.UUID]:
    """Mark the base and its files deleted and soft-delete its passages (audited); returns the passages' ids, which
    the caller removes from BM25. Search filters by status in Postgres, so they are gone from search at commit."""
    base.status = "deleted"
    base.updated_at = now()
    session.execute(
        update(KnowledgeBaseFile)
        .where(KnowledgeBaseFile.knowledgebase_id == base.id, KnowledgeBaseFile.status != "deleted")
        .values(status="deleted", updated_at=func.now())
    )
    memories.audit(session, tenant_id, actor, "delete_knowledgebase", "knowledgebase", str(base.id), name=base.name)
    return memories.soft_delete(session, tenant_id, actor, where=Memory.user_id == scope(base.id))


def base_item(base: KnowledgeBase, files: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": str(base.id),
        "knowledgebase_id": str(base.id),
        "knowledgebase_name": base.name,
        "knowledgebase_description": base.description,
        "status": base.status,
        "create_time": base.created_at.isoformat() if base.created_at else None,
    }
    if files is not None:
        item["file_count"] = files
    return item


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class FileUpload:
    """A file as the API received and checked it."""

    name: str
    format: str  # text | markdown | html | pdf (memos_pipeline.text.readers)
    content_type: str
    data: bytes


def file_key(upload: FileUpload) -> str:
    """What makes two uploads the same file: its name and its bytes."""
    return hashlib.sha256(upload.name.encode() + b"\x1f" + hashlib.sha256(upload.data).digest()).hexdigest()


def accept_file(
    session: Session, tenant_id: uuid.UUID, base: KnowledgeBase, upload: FileUpload, *, trace_id: str
) -> tuple[KnowledgeBaseFile, Accepted]:
    """File row (its bytes) + ingest + outbox row in the caller's transaction: committed, the upload is durable.

    The same file (name and bytes) again in the same base, while the first is not deleted, is that first file
    (``duplicate=True``, nothing written): a client that retries an upload it got no answer for (the MemOS client
    does, at once) stores it once. Concurrent identical uploads serialise on an advisory lock on the key."""
    key = file_key(upload)
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"kbfile/{base.id}/{key}"})
    prev = session.execute(
        select(KnowledgeBaseFile, Ingest.id, Ingest.task_id, OutboxItem.id, OutboxItem.sent_at)
        .join(Ingest, Ingest.id == KnowledgeBaseFile.ingest_id)
        .join(OutboxItem, OutboxItem.ingest_id == Ingest.id)
        .where(
            KnowledgeBaseFile.tenant_id == tenant_id,
            KnowledgeBaseFile.content_hash == key,
            KnowledgeBaseFile.knowledgebase_id == base.id,
            KnowledgeBaseFile.status == "active",
        )
        .limit(1)
    ).first()
    if prev is not None:
        f, ingest_id, task_id, outbox_id, sent_at = prev
        return f, Accepted(ingest_id, task_id, outbox_id, duplicate=True, published=sent_at is not None)
    file_id = uuid.uuid4()
    acc = ingests.open_ingest(
        session,
        tenant_id,
        scope(base.id),
        str(file_id),
        trace_id=trace_id,
        stages=lifecycle.document_stages(),
        task_name=lifecycle.STAGE_TASKS[lifecycle.DOCUMENT],
        payload=lambda ingest_id: lifecycle.stage_payload(lifecycle.DOCUMENT, ingest_id),
        request={"knowledgebase_id": str(base.id), "file_id": str(file_id), "file_name": upload.name},
    )
    f = KnowledgeBaseFile(
        id=file_id,
        tenant_id=tenant_id,
        knowledgebase_id=base.id,
        ingest_id=acc.ingest_id,
        name=upload.name,
        format=upload.format,
        content_type=upload.content_type,
        size_bytes=len(upload.data),
        content=upload.data,
        content_hash=key,
        status="active",
    )
    session.add(f)
    session.flush()
    return f, acc


def file_status(ingest: Ingest | None) -> tuple[str, str | None]:
    """A file's processing status as /get/knowledgebase-file shows it: processing, done or failed (with why)."""
    if ingest is None:
        return "failed", "its processing record is gone"
    if ingest.status == "failed":
        errors = [
            f"{name}: {st.get('error') or st.get('reason') or st.get('status')}"
            for name, st in (ingest.stages or {}).items()
            if st.get("status") in lifecycle.FAILED
        ]
        return "failed", "; ".join(errors) or "failed"
    return ("done", None) if ingest.status == "done" else ("processing", None)


def file_item(f: KnowledgeBaseFile, ingest: Ingest | None) -> dict[str, Any]:
    status, reason = file_status(ingest)
    document = (ingest.stages or {}).get(lifecycle.DOCUMENT, {}) if ingest is not None else {}
    return {
        "id": str(f.id),
        "file_id": str(f.id),
        "knowledgebase_id": str(f.knowledgebase_id),
        "name": f.name,
        "file_name": f.name,
        "type": "document",  # MemOS's file types are document and skill; every file here is a document
        "format": f.format,
        "content_type": f.content_type,
        "size": f.size_bytes,
        "status": status,
        "reason": reason,
        "passages": document.get("passages"),
        "pages": document.get("pages"),
        "task_id": ingest.task_id if ingest is not None else None,
        "create_time": f.created_at.isoformat() if f.created_at else None,
        "update_time": (ingest.updated_at if ingest is not None else f.updated_at).isoformat(),
    }


def page_files(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    kb_id: uuid.UUID | None = None,
    file_ids: Sequence[str] | None = None,
    page: int = 1,
    size: int = 20,
) -> tuple[list[tuple[KnowledgeBaseFile, Ingest | None]], int]:
    """A page of the tenant's active files (of one base, or of the ids given; unknown ids are left out)."""
    conds = [KnowledgeBaseFile.tenant_id == tenant_id, KnowledgeBaseFile.status == "active"]
    if kb_id is not None:
        conds.append(KnowledgeBaseFile.knowledgebase_id == kb_id)
    if file_ids is not None:
        conds.append(KnowledgeBaseFile.id.in_([u for u in map(_uuid, file_ids) if u is not None]))
    total = int(session.execute(select(func.count()).select_from(KnowledgeBaseFile).where(*conds)).scalar_one())
    rows = session.execute(
        select(KnowledgeBaseFile, Ingest)
        .outerjoin(Ingest, Ingest.id == KnowledgeBaseFile.ingest_id)
        .where(*conds)
        .order_by(KnowledgeBaseFile.created_at, KnowledgeBaseFile.id)
        .offset((page - 1) * size)
        .limit(size)
    ).all()
    return [(f, i) for f, i in rows], total


def delete_files(
    session: Session, tenant_id: uuid.UUID, file_ids: Sequence[str], actor: str
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Mark the tenant's files of ``file_ids`` deleted and soft-delete their passages; returns (files deleted,
    passages deleted). The update takes each file's row lock, which the document stage holds while it writes
    passages: a passage is never written for a file deleted before (see :func:`lock_file_for_write`)."""
    ids = [u for u in map(_uuid, file_ids) if u is not None]
    rows = session.execute(
        update(KnowledgeBaseFile)
        .where(
            KnowledgeBaseFile.tenant_id == tenant_id,
            KnowledgeBaseFile.id.in_(ids),
            KnowledgeBaseFile.status != "deleted",
        )
        .values(status="deleted", updated_at=func.now())
        .returning(KnowledgeBaseFile.id, KnowledgeBaseFile.ingest_id)
    ).all()
    for fid, _ in rows:
        memories.audit(session, tenant_id, actor, "delete_knowledgebase_file", "knowledgebase_file", str(fid))
    ingest_ids = [i for _, i in rows if i is not None]
    deleted = (
        memories.soft_delete(session, tenant_id, actor, where=Memory.ingest_id.in_(ingest_ids)) if ingest_ids else []
    )
    return [fid for fid, _ in rows], deleted


def file_of_ingest(session: Session, ingest_id: uuid.UUID) -> KnowledgeBaseFile | None:
    """Workers only: the file an ingest processes, its bytes loaded."""
    return session.execute(
        select(KnowledgeBaseFile)
        .options(undefer(KnowledgeBaseFile.content))
        .where(KnowledgeBaseFile.ingest_id == ingest_id)
    ).scalar_one_or_none()


def lock_file_for_write(session: Session, ingest_id: uuid.UUID) -> KnowledgeBaseFile | None:
    """The file of this ingest, row-locked until the transaction ends, if it is still active. Holding the lock
    while the passages are inserted orders the write and any delete of the file: a delete that committed first is
    seen here (nothing is written), one that comes later waits and then deletes what was written."""
    f = session.execute(
        select(KnowledgeBaseFile)
        .where(KnowledgeBaseFile.ingest_id == ingest_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return f if f is not None and f.status == "active" else None


def upsert_passages(
    session: Session,
    ingest: Ingest,
    rows: Sequence[dict[str, Any]],
    *,
    kind: str = DOCUMENT_KIND,
    memory_type: str = DOCUMENT_TYPE,
    origin_ingest_id: uuid.UUID | None = None,
) -> int:
    """Insert an ingest's derived memories (a file's passages; an add's tool memories, storage/tools.py), each
    pointing back at the ingest it came from; redelivery-safe (memories.insert_memories)."""
    return memories.insert_memories(session, ingest, rows, kind, memory_type, origin_ingest_id or ingest.id)
