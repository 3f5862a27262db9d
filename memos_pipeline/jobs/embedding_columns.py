"""The vector columns a reembed works on, and the catalog changes it makes to them (``memos_pipeline.jobs.reembed``).

``memories`` and ``preferences`` each have ``embedding`` (the active model's vectors, what searches read),
during a job ``embedding_next`` (the new model's, filled in batches) and after one ``embedding_prev`` (the model
before, for a rollback). Their rows in ``embedding_models`` say which model each holds; a column and its row
always change in one transaction. Every statement that needs an ACCESS EXCLUSIVE lock waits for it briefly and is
retried: one queued behind a long transaction would hold up every search queued behind it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import sqlalchemy.exc
from sqlalchemy import case, func, literal_column, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause

from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder, default_model
from memos_pipeline.storage.db import get_engine, session_scope
from memos_pipeline.storage.models import EmbeddingModel, Memory, Preference

log = logging.getLogger(__name__)

T = TypeVar("T")
TABLES: dict[str, Any] = {"memories": Memory, "preferences": Preference}
EXCLUSIVE_WAIT = "1s"  # longest a statement waiting for ACCESS EXCLUSIVE holds up the searches queued behind it
WRITERS_WAIT = "10s"  # for SHARE ROW EXCLUSIVE (writers wait behind it, searches do not)
DDL_ATTEMPTS = 10
NEXT: ColumnClause[Any] = literal_column("embedding_next")
_INDEX_VALID = text("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n")


def row_text(table: str) -> Any:
    """What a row's vector embeds: the text its writer embedded (pipeline: the window; llm_stages and the API's
    update: "key: value" for a fact; the preference sentence)."""
    if table == "memories":
        return case((Memory.kind == "raw", Memory.memory_value), else_=Memory.memory_key + ": " + Memory.memory_value)
    return Preference.preference


def todo(table: str) -> Any:
    """(id, text) of the rows without a new vector, by id."""
    model = TABLES[table]
    return select(model.id, row_text(table)).where(NEXT.is_(None)).order_by(model.id)


def _vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in v.tolist()) + "]"


def store_vectors(s: Session, table: str, ids: list[uuid.UUID], vectors: np.ndarray) -> None:
    """One statement per batch. A row's text is never rewritten (an update writes a new row: llm_stages,
    store.new_version), so a vector computed from a row read a moment ago is still that row's."""
    s.execute(
        text(
            f"UPDATE {table} AS t SET embedding_next = v.e::vector FROM unnest(CAST(:ids AS uuid[]), "
            "CAST(:vecs AS text[])) AS v(id, e) WHERE t.id = v.id"
        ),
        {"ids": ids, "vecs": [_vector_text(v) for v in vectors]},
    )


def embed_into(s: Session, model: Embedder, table: str, rows: list[Any]) -> int:
    if rows:
        store_vectors(s, table, [r[0] for r in rows], model.embed([r[1] for r in rows]))
    return len(rows)


def vector_columns(s: Session) -> dict[tuple[str, str], int]:
    """(table, column) -> dimensions of every embedding column of the two tables, from the catalog."""
    rows = s.execute(
        text(
            "SELECT c.relname, a.attname, a.atttypmod FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE a.attrelid IN ('memories'::regclass, 'preferences'::regclass) AND a.attnum > 0 "
            "AND NOT a.attisdropped AND a.attname IN ('embedding', 'embedding_next', 'embedding_prev')"
        )
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def ddl(settings: Settings, fn: Callable[[Session], T]) -> T:
    """``fn(session)`` in one transaction, serialised with other reembed DDL, retried when a lock it waits for
    does not come (lock timeout) or a deadlock is detected: it gives way to the traffic and tries again."""
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            with session_scope(settings) as s:
                s.execute(text(f"SET LOCAL lock_timeout = '{EXCLUSIVE_WAIT}'"))
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext('memos.reembed.ddl'))"))
                return fn(s)
        except sqlalchemy.exc.OperationalError as exc:
            if attempt == DDL_ATTEMPTS:
                raise
            log.warning("reembed DDL attempt %d/%d: %s", attempt, DDL_ATTEMPTS, exc.orig)
            time.sleep(min(attempt, 5))
    raise AssertionError("unreachable")


def drop_next(s: Session) -> None:
    for table in TABLES:
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_next_hnsw"))
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_todo"))
        s.execute(text(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_next"))


def set_status(s: Session, old: str, new: str) -> None:
    s.execute(update(EmbeddingModel).where(EmbeddingModel.status == old).values(status=new))


def _has(cols: dict[tuple[str, str], int], column: str, dims: int) -> bool:
    return all(cols.get((t, column)) == dims for t in TABLES)


@dataclass(frozen=True)
class Prepared:
    version: int
    previous: int
    previous_spec: str
    reused: int


def prepare(s: Session, settings: Settings, spec: str, dims: int) -> Prepared:
    """Make ``embedding_next`` the column of ``spec`` (kept from an earlier job for it, brought back from
    ``embedding_prev``, or new and empty) and record it as the ``building`` version."""
    rows = {m.status: m for m in s.execute(select(EmbeddingModel)).scalars() if m.status != "retired"}
    cols = vector_columns(s)
    top = s.execute(select(func.max(EmbeddingModel.version))).scalar_one()
    active = rows.get("active")
    if active is None:  # the first reembed records what the database held so far
        top = 0 if top is None else top + 1
        active = EmbeddingModel(
            version=top,
            spec=default_model(settings).spec,
            dims=cols["memories", "embedding"],
            status="active",
            activated_at=func.now(),
        )
        s.add(active)
        s.flush()
    building = rows.get("building")
    if building is not None and (building.spec, building.dims) == (spec, dims) and _has(cols, "embedding_next", dims):
        return Prepared(building.version, active.version, active.spec, 0)
    drop_next(s)  # another model's, or a stray one
    set_status(s, "building", "aborted")
    previous = rows.get("previous")
    reused = 0
    if previous is not None and (previous.spec, previous.dims) == (spec, dims) and _has(cols, "embedding_prev", dims):
        for table in TABLES:  # a rollback: the previous model's vectors are still there
            s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding_prev TO embedding_next"))
            reused += int(s.execute(text(f"SELECT count(embedding_next) FROM {table}")).scalar_one())
    else:
        for table in TABLES:  # dropped now, so that the rows the batches rewrite no longer carry its vectors
            s.execute(text(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_prev"))
            s.execute(text(f"ALTER TABLE {table} ADD COLUMN embedding_next vector({int(dims)})"))
    set_status(s, "previous", "retired")
    s.add(EmbeddingModel(version=int(top) + 1, spec=spec, dims=dims, status="building"))
    return Prepared(int(top) + 1, active.version, active.spec, reused)


def ensure_index(settings: Settings, name: str, ddl: str) -> bool:
    """``CREATE INDEX CONCURRENTLY`` unless a valid ``name`` exists (an invalid one, left by a crash, is rebuilt).
    Returns whether it built one. Raises RuntimeError if another session is building it right now."""
    engine = get_engine(settings)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # A session lock: it goes with the connection, so a build whose process died never blocks the next one.
        if not conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:n))"), {"n": name}).scalar_one():
            raise RuntimeError(f"index {name} is being built by another process")
        try:
            valid = conn.execute(_INDEX_VALID, {"n": name}).scalar_one_or_none()
            if valid:
                return False
            if valid is not None:
                conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            # If this client dies, the server stops building (else it would go on for nobody, holding the lock).
            conn.execute(text("SET client_connection_check_interval = '2s'"))
            conn.execute(text(ddl))
            return True
        finally:
            conn.execute(text("RESET client_connection_check_interval"))
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": name})


def index_todo(settings: Settings) -> None:
    """A partial index of the rows still without a new vector: every catch-up, and the check under the swap's
    lock, then read a few index entries instead of the whole table."""
    for t in TABLES:
        ensure_index(
            settings,
            f"ix_{t}_embedding_todo",
            f"CREATE INDEX CONCURRENTLY ix_{t}_embedding_todo ON {t} (id) WHERE embedding_next IS NULL",
        )


def index_next(settings: Settings) -> None:
    for t in TABLES:
        ensure_index(
            settings,
            f"ix_{t}_embedding_next_hnsw",
            f"CREATE INDEX CONCURRENTLY ix_{t}_embedding_next_hnsw ON {t} USING hnsw "
            "(embedding_next vector_cosine_ops)",
        )


def lock_out_writers(s: Session) -> None:
    s.execute(text(f"SET LOCAL lock_timeout = '{WRITERS_WAIT}'"))
    s.execute(text("LOCK TABLE memories, preferences IN SHARE ROW EXCLUSIVE MODE"))


def missing(s: Session) -> dict[str, int]:
    """Rows without a new vector, per table (by the partial index)."""
    return {
        t: int(s.execute(text(f"SELECT count(*) FROM {t} WHERE embedding_next IS NULL")).scalar_one()) for t in TABLES
    }


def rename_next_to_active(s: Session, version: int) -> None:
    """The swap itself: ``embedding`` -> ``embedding_prev`` (its HNSW index dropped: a rollback rebuilds it, and
    keeping it would cost every write an insertion nobody reads), ``embedding_next`` -> ``embedding``, and
    ``version`` active. Catalog changes only: milliseconds, once the lock is granted."""
    valid = s.execute(
        text(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname IN ('ix_memories_embedding_next_hnsw', 'ix_preferences_embedding_next_hnsw') AND i.indisvalid"
        )
    ).scalar_one()
    if valid != len(TABLES):
        raise RuntimeError("the HNSW indexes on embedding_next are missing or invalid")
    # Searches take memories' lock, then preferences': the same order, so no deadlock with them.
    s.execute(text(f"SET LOCAL lock_timeout = '{EXCLUSIVE_WAIT}'"))
    s.execute(text("LOCK TABLE memories, preferences IN ACCESS EXCLUSIVE MODE"))
    for table in TABLES:
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_hnsw"))
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_todo"))
        s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding TO embedding_prev"))
        s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding_next TO embedding"))
        s.execute(text(f"ALTER INDEX ix_{table}_embedding_next_hnsw RENAME TO ix_{table}_embedding_hnsw"))
    set_status(s, "active", "previous")
    s.execute(
        update(EmbeddingModel).where(EmbeddingModel.version == version).values(status="active", activated_at=func.now())
    )


def models(settings: Settings) -> list[dict[str, Any]]:
    """The rows of ``embedding_models``, newest first (for ``--status``)."""
    with session_scope(settings) as s:
        rows = s.execute(select(EmbeddingModel).order_by(EmbeddingModel.version.desc())).scalars().all()
        return [
            {
                "version": m.version,
                "model": m.spec,
                "dims": m.dims,
                "status": m.status,
                "activated_at": m.activated_at.isoformat() if m.activated_at else None,
            }
            for m in rows
        ]
