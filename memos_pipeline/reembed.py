"""Re-embedding: recompute every vector with another model into a new column, index it, swap it in atomically.

The vectors live in ``memories.embedding`` and ``preferences.embedding``. A job (``memos-pipeline reembed --model M``
or the ``memos.chunker.reembed_all`` task) runs on the chunker queue, where the embedding workers are:

1. begin: add a nullable ``embedding_next vector(D)`` column (a catalog change, instant) and record the model as
   version N ``building`` in ``embedding_models``. When M is the model of ``embedding_prev`` (the one before the
   last swap: a rollback), that column comes back instead and only rows written since need the model. A partial
   index on the rows still to do keeps every later catch-up cheap.
2. batches: keyset pages of ids (``memos_pipeline.batchjob``, checkpointed in Redis like ``reindex``): each fills
   ``embedding_next`` for the rows of its page that have none, with M.
3. index: ``CREATE INDEX CONCURRENTLY`` an HNSW index on ``embedding_next`` (reads and writes go on meanwhile).
4. finalize: catch up the rows written meanwhile (every insert leaves ``embedding_next`` empty: no margin or
   timestamp needed), then, in one short transaction, lock out writers (readers go on), catch up the last few,
   check that no row lacks a vector, then rename columns and indexes (``embedding`` -> ``embedding_prev``,
   ``embedding_next`` -> ``embedding``) and make N the active model.

Searches read ``embedding`` with the active model throughout and never see the new column before the swap. Every
process follows the active model (``embedders.get_embedder``); writers check it in the transaction that stores a
vector, so none is stored by a model that is no longer active (see ``embedders.require_active``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sqlalchemy.exc
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, literal_column, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause

from memos_pipeline import batchjob
from memos_pipeline.batchjob import CountMismatch, JobConflict, NotReady
from memos_pipeline.config import Settings
from memos_pipeline.db import get_engine, session_scope
from memos_pipeline.embedders import Embedder, default_model, model_for, parse_spec, refresh_all
from memos_pipeline.models import EmbeddingModel, Memory, Preference

log = logging.getLogger(__name__)

TABLES: dict[str, Any] = {"memories": Memory, "preferences": Preference}
DDL_ATTEMPTS = 5  # DDL waits at most LOCK_TIMEOUT for its lock, then gives way to the traffic and tries again
LOCK_TIMEOUT = "5s"
CATCH_UP_ROUNDS = 20
_NEXT: ColumnClause[Any] = literal_column("embedding_next")


def default_window(settings: Settings) -> int:
    """Batch tasks per group: one per chunker process is enough to keep them busy (the default stack runs one),
    and more would only queue ahead of live adds."""
    return 1


# ---------------------------------------------------------------- task payloads (ids and a schema version)


class ReembedAll(BaseModel):
    """memos.chunker.reembed_all: start or resume a job (``job_id`` set: a chord continuing one)."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    model: str = Field(min_length=1, max_length=1000)
    batch_size: int = Field(100, ge=1, le=100_000)
    window: int | None = Field(None, ge=1, le=256)  # None: default_window(settings)
    job_id: str | None = None


class ReembedStep(BaseModel):
    """memos.chunker.reembed_begin / reembed_finalize / reembed_abort."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=64)


class ReembedBatch(BaseModel):
    """memos.chunker.reembed_batch: one keyset page of a job."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=64)
    batch: int = Field(ge=0)


# ---------------------------------------------------------------- the checkpoint


@dataclass
class Job:
    job_id: str
    spec: str  # the target model, canonical (embedders.parse_spec)
    batch_size: int
    started_at: str  # Postgres clock, ISO
    status: str = "starting"  # starting -> building -> indexed -> done | aborted
    version: int | None = None
    dims: int | None = None
    previous: int | None = None  # the active version when the job began
    previous_spec: str | None = None
    reused: int | None = None  # rows whose vectors came back from embedding_prev
    bounds: dict[str, list[str]] | None = None  # per table
    planned_rows: dict[str, int] | None = None
    index_s: float | None = None
    result: dict[str, Any] | None = None

    @property
    def batches(self) -> int:
        return sum(len(b) for b in (self.bounds or {}).values())

    @property
    def finished(self) -> bool:
        return self.status in ("done", "aborted")

    def page(self, batch: int) -> tuple[str, int]:
        """Batch ``batch`` as (table, page of that table): the memories' pages first, then the preferences'."""
        for table in TABLES:
            pages = len((self.bounds or {}).get(table, []))
            if batch < pages:
                return table, batch
            batch -= pages
        raise IndexError(batch)


class Checkpoint(batchjob.Checkpoint[Job]):
    """The reembed job and its completed batches in Redis (``memos:<prefix>reembed``)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "reembed", Job)


# ---------------------------------------------------------------- Postgres side


def _text(table: str) -> Any:
    """What a row's vector embeds: the text its writer embedded (pipeline: the window; llm_stages and the API's
    update: "key: value" for a fact; the preference sentence)."""
    if table == "memories":
        return case((Memory.kind == "raw", Memory.memory_value), else_=Memory.memory_key + ": " + Memory.memory_value)
    return Preference.preference


def _todo(table: str) -> Any:
    model = TABLES[table]
    return select(model.id, _text(table)).where(_NEXT.is_(None)).order_by(model.id)


def _vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in v.tolist()) + "]"


def store_vectors(s: Session, table: str, ids: list[uuid.UUID], vectors: np.ndarray) -> None:
    """One statement per batch. The text itself is never rewritten (an update is a new row, llm_stages and
    store.new_version), so a vector computed from a row read a moment ago is still that row's."""
    s.execute(
        text(f"UPDATE {table} AS t SET embedding_next = v.e::vector FROM unnest(CAST(:ids AS uuid[]), "
             "CAST(:vecs AS text[])) AS v(id, e) WHERE t.id = v.id"),
        {"ids": ids, "vecs": [_vector_text(v) for v in vectors]},
    )  # fmt: skip


def _embed_into(s: Session, model: Embedder, table: str, rows: list[Any]) -> int:
    if rows:
        store_vectors(s, table, [r[0] for r in rows], model.embed([r[1] for r in rows]))
    return len(rows)


def vector_columns(s: Session) -> dict[tuple[str, str], int]:
    """(table, column) -> dimensions of every embedding column of the two tables, from the catalog."""
    rows = s.execute(text(
        "SELECT c.relname, a.attname, a.atttypmod FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE a.attrelid IN ('memories'::regclass, 'preferences'::regclass) AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attname IN ('embedding', 'embedding_next', 'embedding_prev')"
    )).all()  # fmt: skip
    return {(r[0], r[1]): int(r[2]) for r in rows}


def _ddl(settings: Settings, fn: Any) -> Any:
    """``fn(session)`` in a transaction whose locks wait at most LOCK_TIMEOUT (then retried): DDL queued behind a
    long transaction would hold up every query queued behind it."""
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            with session_scope(settings) as s:
                s.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext('memos.reembed.ddl'))"))
                return fn(s)
        except sqlalchemy.exc.OperationalError as exc:  # lock timeout, deadlock: give way, try again
            if attempt == DDL_ATTEMPTS:
                raise
            log.warning("reembed DDL attempt %d/%d: %s", attempt, DDL_ATTEMPTS, exc.orig)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _drop_next(s: Session) -> None:
    for table in TABLES:
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_next_hnsw"))
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_todo"))
        s.execute(text(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_next"))


def _set_status(s: Session, old: str, new: str) -> None:
    s.execute(update(EmbeddingModel).where(EmbeddingModel.status == old).values(status=new))


def _has(cols: dict[tuple[str, str], int], column: str, dims: int) -> bool:
    return all(cols.get((t, column)) == dims for t in TABLES)


@dataclass(frozen=True)
class Prepared:
    version: int
    previous: int
    previous_spec: str
    reused: int


def prepare_columns(s: Session, settings: Settings, spec: str, dims: int) -> Prepared:
    """Make ``embedding_next`` the column of ``spec`` (kept, brought back from ``embedding_prev``, or new) and
    record it as the ``building`` version. One transaction: the columns and their rows change together."""
    rows = {m.status: m for m in s.execute(select(EmbeddingModel)).scalars() if m.status != "retired"}
    cols = vector_columns(s)
    top = s.execute(select(func.max(EmbeddingModel.version))).scalar_one()
    active = rows.get("active")
    if active is None:  # the first reembed records what the database held so far
        version = 0 if top is None else top + 1
        active = EmbeddingModel(version=version, spec=default_model(settings).spec, dims=cols["memories", "embedding"],
                                status="active", activated_at=func.now())  # fmt: skip
        s.add(active)
        s.flush()
        top = version
    building = rows.get("building")
    if building is not None and (building.spec, building.dims) == (spec, dims) and _has(cols, "embedding_next", dims):
        return Prepared(building.version, active.version, active.spec, 0)  # a job for this model left it: resume
    _drop_next(s)  # another model's, or a stray one
    _set_status(s, "building", "aborted")
    previous = rows.get("previous")
    reused = 0
    if previous is not None and (previous.spec, previous.dims) == (spec, dims) and _has(cols, "embedding_prev", dims):
        for table in TABLES:  # a rollback: the previous model's vectors are still there
            s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding_prev TO embedding_next"))
            reused += int(s.execute(text(f"SELECT count(embedding_next) FROM {table}")).scalar_one())
    else:
        for table in TABLES:  # dropped now, so that the batches' rewritten rows no longer carry its vectors
            s.execute(text(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_prev"))
            s.execute(text(f"ALTER TABLE {table} ADD COLUMN embedding_next vector({int(dims)})"))
    _set_status(s, "previous", "retired")
    version = int(top) + 1
    s.add(EmbeddingModel(version=version, spec=spec, dims=dims, status="building"))
    return Prepared(version, active.version, active.spec, reused)


_INDEX_VALID = text("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n")


def ensure_index(settings: Settings, name: str, ddl: str) -> bool:
    """``CREATE INDEX CONCURRENTLY`` unless a valid ``name`` exists (an invalid one, left by a crash, is rebuilt).
    Returns whether it built one. Raises NotReady if another session is building it right now."""
    engine = get_engine(settings)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # A session lock: it goes with the connection, so a build whose process died never blocks the next one.
        if not conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:n))"), {"n": name}).scalar_one():
            raise NotReady(f"index {name} is being built by another process")
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


def _todo_indexes(settings: Settings) -> None:
    for table in TABLES:
        ensure_index(settings, f"ix_{table}_embedding_todo",
                     f"CREATE INDEX CONCURRENTLY ix_{table}_embedding_todo ON {table} (id) WHERE embedding_next IS NULL")  # fmt: skip


# ---------------------------------------------------------------- the steps


def start_or_resume(settings: Settings, model: str, batch_size: int) -> tuple[Job, bool]:
    """The unfinished job (resumed, if it is for the same model) or a new one. Returns (job, resumed)."""
    spec = str(parse_spec(model, settings))
    new = Job(uuid.uuid4().hex, spec, batch_size, batchjob.db_clock(settings))
    job = Checkpoint(settings).create(new)
    if job is not new and job.spec != spec:
        raise JobConflict(f"an unfinished reembed to {job.spec} (job {job.job_id}) must finish or be aborted first")
    return job, job is not new


def begin(settings: Settings, job_id: str) -> Job | None:
    """Chunker: learn the model's width (one embedding), prepare ``embedding_next``, index the rows to do."""
    cp = Checkpoint(settings)
    with cp.lock("step"):
        job = cp.current(job_id)
        if job is None or job.finished:
            return job
        if job.version is None:
            dims = model_for(settings, job.spec).dim
            prep = _ddl(settings, lambda s: prepare_columns(s, settings, job.spec, dims))
            job.version, job.dims, job.reused = prep.version, dims, prep.reused
            job.previous, job.previous_spec = prep.previous, prep.previous_spec
            cp.save(job)
    _todo_indexes(settings)  # outside the lock: it can take a while, and it is idempotent
    return job


def plan(settings: Settings, job: Job) -> Job:
    """Fix the job's pages (once; a resumed job keeps its pages, so completed batches stay meaningful)."""
    if job.bounds is None:
        bounds, rows = {}, {}
        with session_scope(settings) as s:
            for table, model in TABLES.items():
                bounds[table], rows[table] = batchjob.keyset_bounds(s, model.id, [], job.batch_size)
        job.bounds, job.planned_rows, job.status = bounds, rows, "building"
        Checkpoint(settings).save(job)
    return job


def pending(settings: Settings, job: Job) -> list[int]:
    return Checkpoint(settings).pending(job.job_id, job.batches)


def run_batch(settings: Settings, job_id: str, batch: int) -> int:
    """Chunker: embed the rows of one page that have no new vector yet; checkpoint it only once committed."""
    cp = Checkpoint(settings)
    job = cp.current(job_id)
    if job is None or job.status != "building" or job.dims is None or batch >= job.batches:
        return 0
    table, page = job.page(batch)
    model = model_for(settings, job.spec, job.dims)
    query = _todo(table).where(*batchjob.page_conds(TABLES[table].id, (job.bounds or {})[table], page))
    with session_scope(settings) as s:
        rows = list(s.execute(query).all())
    vectors = model.embed([r[1] for r in rows]) if rows else None  # no transaction open while the model works
    with session_scope(settings) as s:
        if vectors is not None:
            store_vectors(s, table, [r[0] for r in rows], vectors)
    cp.mark_done(job_id, batch, len(rows))
    return len(rows)


def build_index(settings: Settings, job_id: str) -> Job:
    """The HNSW index on ``embedding_next``, built concurrently (minutes on millions of rows: the CLI runs this in
    its own process, so no chunker is tied up; the ``reembed_all`` task runs it on the chunker)."""
    cp = Checkpoint(settings)
    job = cp.current(job_id)
    if job is None:
        raise NotReady(f"reembed job {job_id} is not the current one")
    if job.status in ("indexed", "done"):
        return job
    missing = set(range(job.batches)) - set(cp.done(job_id))
    if job.status != "building" or missing:
        raise NotReady(f"job {job_id}: {len(missing)} batch(es) not done, status {job.status}")
    t0 = time.perf_counter()
    for table in TABLES:
        ensure_index(settings, f"ix_{table}_embedding_next_hnsw", f"CREATE INDEX CONCURRENTLY "
                     f"ix_{table}_embedding_next_hnsw ON {table} USING hnsw (embedding_next vector_cosine_ops)")  # fmt: skip
    job.status, job.index_s = "indexed", round(time.perf_counter() - t0, 3)
    cp.save(job)
    return job


def catch_up(settings: Settings, model: Embedder, batch_size: int) -> int:
    """Embed the rows written since the batches read their pages, in rounds, until a round finds less than a
    batch (the writers are not outrunning us); the swap catches up the rest under its lock."""
    total = 0
    for _ in range(CATCH_UP_ROUNDS):
        found = 0
        for table in TABLES:
            with session_scope(settings) as s:
                rows = list(s.execute(_todo(table).limit(batch_size)).all())
            vectors = model.embed([r[1] for r in rows]) if rows else None
            if vectors is not None:
                with session_scope(settings) as s:
                    store_vectors(s, table, [r[0] for r in rows], vectors)
            found = max(found, len(rows))
            total += len(rows)
        if found < batch_size:
            break
    return total


def swap(s: Session, job: Job, model: Embedder) -> int:
    """In one transaction: writers locked out (readers go on), the last rows caught up, checked, then the columns
    and indexes renamed and the model made active. Returns the rows caught up under the lock."""
    s.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    s.execute(text("LOCK TABLE memories, preferences IN SHARE ROW EXCLUSIVE MODE"))
    # Embedding with a lock held: only rows committed in the seconds since the last catch-up round, and a writer
    # that waits here is one whose vector would otherwise be stored by the outgoing model.
    caught = sum(_embed_into(s, model, t, list(s.execute(_todo(t)).all())) for t in TABLES)
    missing = {t: int(s.execute(text(f"SELECT count(*) FROM {t} WHERE embedding_next IS NULL")).scalar_one())
               for t in TABLES}  # fmt: skip
    if any(missing.values()):
        raise CountMismatch(f"rows without a vector of {job.spec} at the swap: {missing}")
    valid = s.execute(text(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname IN ('ix_memories_embedding_next_hnsw', 'ix_preferences_embedding_next_hnsw') AND i.indisvalid"
    )).scalar_one()  # fmt: skip
    if valid != len(TABLES):
        raise NotReady("the HNSW indexes on embedding_next are missing or invalid: run the job again")
    # Same order as the searches take their locks (memories, then preferences): no deadlock with them.
    s.execute(text("LOCK TABLE memories, preferences IN ACCESS EXCLUSIVE MODE"))
    for table in TABLES:
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_hnsw"))
        s.execute(text(f"DROP INDEX IF EXISTS ix_{table}_embedding_todo"))
        s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding TO embedding_prev"))
        s.execute(text(f"ALTER TABLE {table} RENAME COLUMN embedding_next TO embedding"))
        s.execute(text(f"ALTER INDEX ix_{table}_embedding_next_hnsw RENAME TO ix_{table}_embedding_hnsw"))
    _set_status(s, "active", "previous")
    s.execute(update(EmbeddingModel).where(EmbeddingModel.version == job.version)
              .values(status="active", activated_at=func.now()))  # fmt: skip
    return caught


def finalize(settings: Settings, job_id: str) -> dict[str, Any]:
    """Chunker: catch up, check, swap (retried when the locks are busy), report. Idempotent."""
    cp = Checkpoint(settings)
    with cp.lock("step"):
        job = cp.current(job_id)
        if job is None:
            raise NotReady(f"reembed job {job_id} is not the current one")
        if job.status == "done" and job.result is not None:
            return job.result
        if job.status != "indexed" or job.dims is None:
            raise NotReady(f"job {job_id}: status {job.status}, the index on embedding_next is not built")
        model = model_for(settings, job.spec, job.dims)
        caught = catch_up(settings, model, job.batch_size)
        with session_scope(settings) as s:
            s.execute(text("ANALYZE memories, preferences"))  # the planner then finds the few rows to do by index
            rows = {t: int(s.execute(select(func.count()).select_from(m)).scalar_one()) for t, m in TABLES.items()}
        t0 = time.perf_counter()
        in_lock = _ddl(settings, lambda s: swap(s, job, model))
        lock_ms = round((time.perf_counter() - t0) * 1000, 1)
        refresh_all()  # this process embeds with the new model from now on; the others within ACTIVE_MODEL_TTL_S
        done = cp.done(job_id)
        job.status = "done"
        job.result = {
            "status": "done", "job_id": job.job_id, "model": job.spec, "version": job.version, "dims": job.dims,
            "previous": job.previous, "previous_model": job.previous_spec, "rows": rows,
            "embedded": sum(done.values()) + caught + in_lock, "reused": job.reused, "caught_up": caught,
            "caught_up_in_lock": in_lock, "batches": job.batches, "index_s": job.index_s, "swap_ms": lock_ms,
            "started_at": job.started_at,
        }  # fmt: skip
        cp.close(job)
        return job.result


def abort(settings: Settings, job_id: str) -> Job | None:
    """Give up on a job: ``embedding_next`` and its indexes are dropped; the active model never stopped serving."""
    cp = Checkpoint(settings)
    with cp.lock("step"):
        job = cp.current(job_id)
        if job is None or job.finished:
            return job

        def drop(s: Session) -> None:
            _drop_next(s)
            _set_status(s, "building", "aborted")

        _ddl(settings, drop)
        job.status = "aborted"
        cp.close(job)
        return job


def models(settings: Settings) -> list[dict[str, Any]]:
    """The rows of ``embedding_models``, newest first (for ``--status``)."""
    with session_scope(settings) as s:
        rows = s.execute(select(EmbeddingModel).order_by(EmbeddingModel.version.desc())).scalars().all()
        return [{"version": m.version, "model": m.spec, "dims": m.dims, "status": m.status,
                 "activated_at": m.activated_at.isoformat() if m.activated_at else None} for m in rows]  # fmt: skip
