"""Re-embedding: recompute every vector with another model into a new column, index it, swap it in atomically.

The vectors live in ``memories.embedding`` and ``preferences.embedding``. A job (``memos-pipeline reembed --model M``
or the ``memos.chunker.reembed_all`` task) runs on the chunker queue, where the embedding workers are:

1. begin: add a nullable ``embedding_next vector(D)`` column (a catalog change, instant) and record the model as
   version N ``building`` in ``embedding_models``. When M is the model of ``embedding_prev`` (the one before the
   last swap: a rollback), that column comes back instead and only rows written since need the model. A partial
   index on the rows still to do keeps every later catch-up cheap.
2. batches: keyset pages of ids (``memos_pipeline.jobs.runner``, checkpointed in Redis like ``reindex``): each fills
   ``embedding_next`` for the rows of its page that have none, with M.
3. index: ``CREATE INDEX CONCURRENTLY`` an HNSW index on ``embedding_next`` (reads and writes go on meanwhile).
4. finalize: catch up the rows written meanwhile (every insert leaves ``embedding_next`` empty: no margin or
   timestamp needed), then, in one short transaction, lock out writers (readers go on), catch up the last few,
   check that no row lacks a vector, then rename columns and indexes (``embedding`` -> ``embedding_prev``,
   ``embedding_next`` -> ``embedding``) and make N the active model.

The columns and the catalog changes are in ``memos_pipeline.jobs.embedding_columns``; this module runs the job.
Searches read ``embedding`` with the active model throughout and never see the new column before the swap. Every
process follows the active model (``embedders.get_embedder``); writers check it in the transaction that stores a
vector, so none is stored by a model that is no longer active (see ``embedders.require_active``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder, model_for, parse_spec, read_active, refresh_all
from memos_pipeline.jobs import embedding_columns as cols
from memos_pipeline.jobs import runner as batchjob
from memos_pipeline.jobs.runner import CountMismatch, JobConflict, NotReady
from memos_pipeline.storage.db import session_scope

CATCH_UP_ROUNDS = 20


def default_window(settings: Settings) -> int:
    """Batch tasks per group: one per chunker process is enough to keep them busy (the default stack runs one),
    and more would only queue ahead of live adds."""
    return 1


# ---------------------------------------------------------------- the task payload that names the target


class ReembedAll(batchjob.JobStart):
    """memos.chunker.reembed_all: every vector recomputed with ``model``."""

    model: str = Field(min_length=1, max_length=1000)
    batch_size: int = Field(100, ge=1, le=100_000)
    force: bool = False  # recompute even if the model is already the active one


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
        for table in cols.TABLES:
            pages = len((self.bounds or {}).get(table, []))
            if batch < pages:
                return table, batch
            batch -= pages
        raise IndexError(batch)


class Checkpoint(batchjob.Checkpoint[Job]):
    """The reembed job and its completed batches in Redis (``memos:<prefix>reembed``)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "reembed", Job)


# ---------------------------------------------------------------- the steps


class AlreadyActive(batchjob.NothingToDo):
    """The model asked for is the active one (and no job for it is unfinished): nothing to do without force."""

    status = "already_active"


def start_or_resume(settings: Settings, model: str, batch_size: int, force: bool = False) -> tuple[Job, bool]:
    """The unfinished job (resumed, if it is for the same model) or a new one. Returns (job, resumed).

    A new job for the model that is already active is refused unless ``force`` (the weights behind a name
    changed): running the same command twice, or a schedule, must not recompute every vector again."""
    spec = str(parse_spec(model, settings))
    cp = Checkpoint(settings)
    current = cp.load()
    if not force and (current is None or current.finished or current.spec != spec):
        with session_scope(settings) as s:
            if read_active(s, settings).spec == spec:
                raise AlreadyActive(f"{spec} is already the active embedding model (--force to recompute)")
    new = Job(uuid.uuid4().hex, spec, batch_size, batchjob.db_clock(settings))
    job = cp.create(new)
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
            prep = cols.ddl(settings, lambda s: cols.prepare(s, settings, job.spec, dims))
            job.version, job.dims, job.reused = prep.version, dims, prep.reused
            job.previous, job.previous_spec = prep.previous, prep.previous_spec
            cp.save(job)
    cols.index_todo(settings)  # outside the lock: it can take a while, and it is idempotent
    return job


def plan(settings: Settings, job: Job) -> Job:
    """Fix the job's pages (once; a resumed job keeps its pages, so completed batches stay meaningful)."""
    if job.bounds is None:
        bounds, rows = {}, {}
        with session_scope(settings) as s:
            for table, model in cols.TABLES.items():
                bounds[table], rows[table] = batchjob.keyset_bounds(s, model.id, [], job.batch_size)
        job.bounds, job.planned_rows, job.status = bounds, rows, "building"
        Checkpoint(settings).save(job)
    return job


def run_batch(settings: Settings, job_id: str, batch: int) -> int:
    """Chunker: embed the rows of one page that have no new vector yet; checkpoint it only once committed."""
    cp = Checkpoint(settings)
    job = cp.current(job_id)
    if job is None or job.status != "building" or job.dims is None or batch >= job.batches:
        return 0
    table, page = job.page(batch)
    model = model_for(settings, job.spec, job.dims)
    query = cols.todo(table).where(*batchjob.page_conds(cols.TABLES[table].id, (job.bounds or {})[table], page))
    with session_scope(settings) as s:
        rows = list(s.execute(query).all())
    vectors = model.embed([r[1] for r in rows]) if rows else None  # no transaction open while the model works
    if vectors is not None:
        with session_scope(settings) as s:
            cols.store_vectors(s, table, [r[0] for r in rows], vectors)
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
    try:
        cols.index_next(settings)
    except RuntimeError as exc:  # another process is building it
        raise NotReady(str(exc)) from exc
    job.status, job.index_s = "indexed", round(time.perf_counter() - t0, 3)
    cp.save(job)
    return job


def catch_up(settings: Settings, model: Embedder, batch_size: int) -> int:
    """Embed the rows written since the batches read their pages, in rounds, until a round finds less than a
    batch (the writers are not outrunning us); the swap catches up the rest under its lock."""
    total = 0
    for _ in range(CATCH_UP_ROUNDS):
        found = 0
        for table in cols.TABLES:
            with session_scope(settings) as s:
                rows = list(s.execute(cols.todo(table).limit(batch_size)).all())
            vectors = model.embed([r[1] for r in rows]) if rows else None
            if vectors is not None:
                with session_scope(settings) as s:
                    cols.store_vectors(s, table, [r[0] for r in rows], vectors)
            found, total = max(found, len(rows)), total + len(rows)
        if found < batch_size:
            break
    return total


def swap(s: Session, job: Job, model: Embedder) -> int:
    """In one transaction: writers locked out (searches go on), the last rows caught up, none left without a
    vector, then the columns renamed and the model made active. Returns the rows caught up under the lock."""
    cols.lock_out_writers(s)
    # Embedding with a lock held: only rows committed in the seconds since the last catch-up round, and a writer
    # that waits here is one whose vector would otherwise be stored by the outgoing model.
    caught = sum(cols.embed_into(s, model, t, list(s.execute(cols.todo(t)).all())) for t in cols.TABLES)
    if any((left := cols.missing(s)).values()):
        raise CountMismatch(f"rows without a vector of {job.spec} at the swap: {left}")
    cols.rename_next_to_active(s, int(job.version or 0))
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
            s.execute(text("ANALYZE memories, preferences"))  # the planner then finds the few rows left by index
            rows = {t: int(s.execute(select(func.count()).select_from(m)).scalar_one()) for t, m in cols.TABLES.items()}
        t0 = time.perf_counter()
        in_lock = cols.ddl(settings, lambda s: swap(s, job, model))
        swap_ms = round((time.perf_counter() - t0) * 1000, 1)
        refresh_all()  # this process embeds with the new model from now on; the others within ACTIVE_MODEL_TTL_S
        job.status = "done"
        job.result = {
            "status": "done",
            "job_id": job.job_id,
            "model": job.spec,
            "version": job.version,
            "dims": job.dims,
            "previous": job.previous,
            "previous_model": job.previous_spec,
            "rows": rows,
            "embedded": sum(cp.done(job_id).values()) + caught + in_lock,
            "reused": job.reused,
            "caught_up": caught,
            "caught_up_in_lock": in_lock,
            "batches": job.batches,
            "index_s": job.index_s,
            "swap_ms": swap_ms,
            "started_at": job.started_at,
        }
        cp.close(job)
        return job.result


def abort(settings: Settings, job_id: str) -> Job | None:
    """Give up on a job: ``embedding_next`` and its indexes are dropped; the active model never stopped serving.
    (After a rollback's begin, that column holds the previous model's vectors: they go too.)"""

    def drop(s: Session) -> None:
        cols.drop_next(s)
        cols.set_status(s, "building", "aborted")

    return Checkpoint(settings).abort(job_id, lambda _: cols.ddl(settings, drop))


KIND = batchjob.JobKind(
    name="reembed",
    queue="chunker",
    start_model=ReembedAll,
    checkpoint=Checkpoint,
    start=lambda settings, req: start_or_resume(settings, req.model, req.batch_size, req.force),
    begin=begin,
    plan=plan,
    run_batch=run_batch,
    finalize=finalize,
    abort=abort,
    default_window=default_window,
    # The HNSW index on the new column, before the swap: the CLI builds it from its own process (no chunker is tied
    # up for minutes), the reembed_all task on the chunker.
    before_finalize=build_index,
)
