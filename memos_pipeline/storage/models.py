"""SQLAlchemy 2 models: the source of truth for tenants, ingests, messages, memories and their graph.

Every row that belongs to a customer carries ``tenant_id`` and ``user_id``; the query helpers in
``memos_pipeline.storage.store`` always filter on both, so isolation does not depend on the API remembering to.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The width of the embedding columns as the first migration created them (all-MiniLM-L6-v2). ``reembed`` can
# switch to a model of another width: the database, not this model, then knows it (``embedding_models``), which is
# why the columns below are declared without one.
EMBEDDING_DIM = 384

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()"))


def _now() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = _now()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # sha256 of the key: keys are 256-bit random tokens, so a fast hash cannot be brute-forced and keeps the
    # per-request lookup cheap (a slow password hash would cost milliseconds on every call).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = _now()
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Ingest(Base):
    """One accepted add: the unit of durability, status and idempotency."""

    __tablename__ = "ingests"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(256))
    conversation_id: Mapped[str] = mapped_column(String(256))
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    trace_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="accepted")
    # {"chunker": {"status": "done", "started_at": ..., "finished_at": ..., "ms": ...}, ...}
    stages: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The client's key for this add (Idempotency-Key header, or the producer SDK's per-add key): a retried or
    # redelivered add with the same key is the same ingest, never a second one.
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # A hash of (user, conversation, messages): a client re-sending the same add without a key (the MemOS client
    # retries at once on any failure) gets this ingest back within MEMOS_ADD_DEDUP_WINDOW_S of its acceptance.
    content_key: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        Index("ix_ingests_tenant_user_created", "tenant_id", "user_id", "created_at"),
        Index("ix_ingests_tenant_content_key", "tenant_id", "content_key", "created_at"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_ingests_tenant_idempotency_key"),
    )


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[uuid.UUID] = _uuid_pk()
    ingest_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ingests.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str] = mapped_column(String(256))
    conversation_id: Mapped[str] = mapped_column(String(256))
    seq: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(256))
    content: Mapped[str] = mapped_column(Text)
    chat_time: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        UniqueConstraint("ingest_id", "seq"),
        Index("ix_messages_conversation", "tenant_id", "user_id", "conversation_id", "created_at"),
    )


class Memory(Base):
    """A raw window (kind=raw) or an extracted fact (kind=fact). Never overwritten: updates add a version."""

    __tablename__ = "memories"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str] = mapped_column(String(256))
    conversation_id: Mapped[str] = mapped_column(String(256))
    ingest_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingests.id", ondelete="SET NULL"))
    # A version written by /update/memory has no ingest (ingest_id names the add whose stage wrote the row) but
    # still belongs to its first version's add, whose agent, app and info filters and deletes by agent read.
    origin_ingest_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(String(16))
    # Raw windows are numbered within their ingest: (ingest_id, kind, chunk_idx) is the natural key that makes
    # a redelivered chunker task an upsert instead of a duplicate.
    chunk_idx: Mapped[int | None] = mapped_column(Integer)
    memory_key: Mapped[str] = mapped_column(Text, default="")
    memory_value: Mapped[str] = mapped_column(Text)
    memory_type: Mapped[str] = mapped_column(String(32), default="RawMemory")
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(String(16), default="activated")
    sources: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default=text("'{}'"))
    source_message_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), default=list, server_default=text("'{}'")
    )
    info: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    # Deferred: loaded only when asked for (or touched). Rows are read far more often than their vectors are
    # needed, and a statement that returns the column breaks when ``reembed`` swaps in a column of another width
    # (psycopg prepares repeated statements, and Postgres refuses to change a prepared result's type).
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True, deferred=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    event_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        UniqueConstraint("ingest_id", "kind", "chunk_idx", name="uq_memories_ingest_kind_chunk"),
        Index("ix_memories_scope", "tenant_id", "user_id", "status", "kind"),
        Index("ix_memories_hash", "tenant_id", "user_id", "content_hash"),
        Index(
            "ix_memories_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )


class Preference(Base):
    __tablename__ = "preferences"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str] = mapped_column(String(256))
    conversation_id: Mapped[str] = mapped_column(String(256))
    ingest_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingests.id", ondelete="SET NULL"))
    preference: Mapped[str] = mapped_column(Text)
    preference_type: Mapped[str] = mapped_column(String(32))
    reasoning: Mapped[str] = mapped_column(Text, default="")
    sources: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(String(16), default="activated")
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True, deferred=True)  # as Memory.embedding
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        Index("ix_preferences_scope", "tenant_id", "user_id", "status"),
        UniqueConstraint("tenant_id", "user_id", "content_hash", name="uq_preferences_hash"),
        Index(
            "ix_preferences_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )


class EmbeddingModel(Base):
    """The embedding models the vector columns hold, one row per version (``memos-pipeline reembed``).

    ``active``: ``embedding`` (what every process embeds with); ``building``: ``embedding_next``, being filled by a
    reembed; ``previous``: ``embedding_prev``, kept for a rollback until the next reembed; ``retired``/``aborted``:
    history. No row at all: nothing was ever re-embedded, and MEMOS_EMBEDDER is the model (version 0)."""

    __tablename__ = "embedding_models"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    spec: Mapped[str] = mapped_column(Text)  # local:all-MiniLM-L6-v2 | openai:<model>@<base_url>
    dims: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = _now()
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        Index(
            "uq_embedding_models_status",
            "status",
            unique=True,
            postgresql_where=text("status IN ('active', 'building', 'previous')"),
        ),
    )


class MemoryEdge(Base):
    """Graph edges: shared entity/tag, merged_from (version history), derived_from (fact -> raw)."""

    __tablename__ = "memory_edges"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    src_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    dst_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        UniqueConstraint("src_id", "dst_id", "kind", name="uq_memory_edges_src_dst_kind"),
        Index("ix_memory_edges_dst", "dst_id"),
    )


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _now()


class OutboxItem(Base):
    """A task to publish, committed in the same transaction as the rows it refers to (transactional outbox)."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ingest_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingests.id", ondelete="CASCADE"))
    task_name: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_outbox_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),)


class Extraction(Base):
    """An LLM stage's validated output for one batch of an ingest, stored before anything is written from it:
    a redelivered task replays the same output instead of asking the model again (which could answer
    differently and so write different facts twice)."""

    __tablename__ = "extractions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ingest_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ingests.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    batch_idx: Mapped[int] = mapped_column(Integer)
    output: Mapped[dict[str, Any]] = mapped_column(JSONB)
    usage: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _now()
    __table_args__ = (UniqueConstraint("ingest_id", "stage", "batch_idx", name="uq_extractions_ingest_stage_batch"),)


class KnowledgeBase(Base):
    """A tenant's knowledge base (MemOS's /create/knowledgebase). Its passages are memories of kind ``document``
    whose ``user_id`` is the base's scope (``kb:<id>``, storage/knowledgebases.py), so search reads a base the way
    it reads a user."""

    __tablename__ = "knowledgebases"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | deleted
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (Index("ix_knowledgebases_tenant", "tenant_id", "status", "created_at"),)


class KnowledgeBaseFile(Base):
    """A file of a knowledge base, its bytes kept as received: the durable half of an upload. Its processing is an
    ingest (``ingest_id``: stages ``document`` and ``indexer``), whose status is the file's."""

    __tablename__ = "knowledgebase_files"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    knowledgebase_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("knowledgebases.id", ondelete="CASCADE"))
    ingest_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingests.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(512))
    format: Mapped[str] = mapped_column(String(16))  # text | markdown | html | pdf
    content_type: Mapped[str] = mapped_column(String(128), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only by the document stage
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | deleted
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        Index("ix_knowledgebase_files_base", "knowledgebase_id", "status", "created_at"),
        Index("ix_knowledgebase_files_tenant_hash", "tenant_id", "content_hash"),
    )


class ProfileTemplate(Base):
    """A tenant's profile template (MemOS /bind/profile_template): the slots a bound profile has."""

    __tablename__ = "profile_templates"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    template_id: Mapped[str] = mapped_column(String(256))
    slots: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)  # [{name, description, group, algorithm_updatable}]
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (UniqueConstraint("tenant_id", "template_id", name="uq_profile_templates_tenant_template"),)


class ProfileInstance(Base):
    """That a user (or a user's agent, ``agent_id``; "" for the user's own) has a profile, and its template."""

    __tablename__ = "profile_instances"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(256))
    agent_id: Mapped[str] = mapped_column(String(256), default="", server_default="")
    template_id: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (UniqueConstraint("tenant_id", "user_id", "agent_id", name="uq_profile_instances_owner"),)


class ProfileSlot(Base):
    """One version of one profile slot. A change writes a new version and archives the old (never an overwrite);
    ``sources`` are the facts/preferences it came from ([{"type", "id"}]); ``origin`` llm | rule | edit."""

    __tablename__ = "profile_slots"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(256))
    agent_id: Mapped[str] = mapped_column(String(256), default="", server_default="")
    slot: Mapped[str] = mapped_column(String(128))
    slot_group: Mapped[str] = mapped_column(String(128), default="", server_default="")
    value: Mapped[Any] = mapped_column(JSONB)  # a string, or a list of strings (languages)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="activated")  # activated | archived | deleted
    origin: Mapped[str] = mapped_column(String(16))
    algorithm_updatable: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
    ingest_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingests.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        Index("ix_profile_slots_owner", "tenant_id", "user_id", "agent_id", "slot", "version"),
        Index(
            "uq_profile_slots_active",
            "tenant_id",
            "user_id",
            "agent_id",
            "slot",
            unique=True,
            postgresql_where=text("status = 'activated'"),
        ),
    )
