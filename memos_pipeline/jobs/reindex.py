"""Batch re-indexing: build a new BM25 generation from Postgres, check it, swap it in atomically, drop the old one.

A job is planned as keyset pages of memory ids (``memos_pipeline.jobs.runner``); each page is one
``memos.indexer.reindex_batch`` task. The
steps that touch the index run on the indexer queue, in the process that holds the index writer: a tantivy index
has one writer, so the new generation's writer lives in the indexer too, beside the live one, and batch tasks and
live upserts take turns on that one process (Elasticsearch has no such rule; the same tasks just parallelise).

Nothing written during the job is lost from the new generation, by two mechanisms:

* dual-write: from ``begin`` on, every live upsert/delete goes to the current *and* the new generation;
* catch-up: ``finalize`` re-syncs every memory changed since the job started (minus a margin for transactions
  that began earlier) from one Postgres snapshot, and counts that same snapshot. This closes the races dual-write
  alone leaves: a batch that read a row, then a live write of a newer state, then the batch writing the older one
  (possible with parallel Elasticsearch indexers), and a tenant-scoped copy racing live writes.

The checkpoint (``Checkpoint``: the job record with scope, generation and bounds, and the completed batches) and
the keyset planning are shared with ``reembed`` (``memos_pipeline.jobs.runner``). If the checkpoint were lost, the job
would start over and lose nothing but time (Postgres stays the source of truth, and the current generation keeps
serving).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from memos_pipeline.config import Settings
from memos_pipeline.jobs import runner as batchjob
from memos_pipeline.jobs.runner import CountMismatch, JobConflict, NotReady
from memos_pipeline.search import graph
from memos_pipeline.stages.index import bm25_doc
from memos_pipeline.storage.bm25 import Bm25Generations, Bm25Index, get_generations
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory, Tenant

log = logging.getLogger(__name__)

KINDS = ("raw", "fact")  # what the BM25 index holds (preferences are not in it)
# Rows whose transaction began up to this long before the job and committed after it are caught up too.
CATCH_UP_MARGIN_S = 60.0
COUNT_ATTEMPTS = 3


def default_window(settings: Settings) -> int:
    """Batch tasks per group. Embedded index: one writer process runs them one at a time, so more in flight
    gains nothing and only queues them ahead of live upserts; Elasticsearch: as many as indexer slots, say 4."""
    return 4 if settings.es_url else 1


# ---------------------------------------------------------------- the task payload that names the target


class ReindexAll(batchjob.JobStart):
    """memos.indexer.reindex_all: the whole job, or of one tenant (by name or id)."""

    tenant: str | None = Field(None, min_length=1, max_length=256)
    batch_size: int = Field(2000, ge=1, le=100_000)


# ---------------------------------------------------------------- the checkpoint


@dataclass
class Job:
    job_id: str
    tenant_id: str | None
    batch_size: int
    started_at: str  # Postgres clock, ISO
    status: str = "starting"  # starting -> building -> done | aborted
    generation: int | None = None
    previous: int | None = None
    bounds: list[str] | None = None
    planned_rows: int | None = None
    seeded: int | None = None  # documents copied from the current generation (tenant scope)
    result: dict[str, Any] | None = None

    @property
    def batches(self) -> int:
        return len(self.bounds or [])

    @property
    def finished(self) -> bool:
        return self.status in ("done", "aborted")


class Checkpoint(batchjob.Checkpoint[Job]):
    """The re-index job and its completed batches in Redis (``memos:<prefix>reindex``)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "reindex", Job)


# ---------------------------------------------------------------- Postgres side


def _scope(tenant_id: str | None) -> list[Any]:
    conds = [Memory.status == "activated", Memory.kind.in_(KINDS)]
    if tenant_id is not None:
        conds.append(Memory.tenant_id == uuid.UUID(tenant_id))
    return conds


def _light() -> Any:
    # Everything bm25_doc reads and nothing more: the 384-float embedding would dominate the transfer.
    m = Memory
    return load_only(m.tenant_id, m.user_id, m.conversation_id, m.kind, m.memory_key, m.memory_value, m.status)


def resolve_tenant(settings: Settings, tenant: str | None) -> str | None:
    """A tenant by id or name, as its id; ValueError naming it when there is none."""
    if tenant is None:
        return None
    with session_scope(settings) as s:
        try:
            row = s.get(Tenant, uuid.UUID(tenant))
        except ValueError:
            row = s.execute(select(Tenant).where(Tenant.name == tenant)).scalar_one_or_none()
        if row is None:
            raise ValueError(f"no tenant {tenant!r}")
        return str(row.id)


def plan_bounds(s: Session, tenant_id: str | None, batch_size: int) -> tuple[list[str], int]:
    """Lower bounds of keyset pages of ``batch_size`` ids (the first is the smallest possible id), and the rows."""
    return batchjob.keyset_bounds(s, Memory.id, _scope(tenant_id), batch_size)


def batch_memories(s: Session, job: Job, batch: int) -> list[Memory]:
    conds = [*_scope(job.tenant_id), *batchjob.page_conds(Memory.id, job.bounds or [], batch)]
    return list(s.execute(select(Memory).options(_light()).where(*conds).order_by(Memory.id)).scalars())


def sync(index: Bm25Index, memories: Sequence[Memory]) -> int:
    """Make ``index`` agree with these rows: activated ones upserted, the others deleted (routed by user)."""
    live = [m for m in memories if m.status == "activated" and m.kind in KINDS]
    gone = [m for m in memories if not (m.status == "activated" and m.kind in KINDS)]
    if live:
        index.upsert([bm25_doc(m) for m in live])
    if gone:
        index.delete([str(m.id) for m in gone], routing=[m.user_id for m in gone])
    return len(live)


# ---------------------------------------------------------------- the steps


def start_or_resume(settings: Settings, tenant_id: str | None, batch_size: int) -> tuple[Job, bool]:
    """The unfinished job (resumed, if it has the same scope) or a new one. Returns (job, resumed)."""
    new = Job(uuid.uuid4().hex, tenant_id, batch_size, batchjob.db_clock(settings))
    job = Checkpoint(settings).create(new)
    if job is not new and job.tenant_id != tenant_id:
        scope = f"tenant {job.tenant_id}" if job.tenant_id else "all tenants"
        raise JobConflict(f"an unfinished re-index of {scope} (job {job.job_id}) must finish or be aborted first")
    return job, job is not new


def begin(settings: Settings, gens: Bm25Generations, job_id: str) -> Job | None:
    """Indexer: create the job's generation (dual-write starts) and, for one tenant, copy in the others."""
    cp = Checkpoint(settings)
    with cp.lock("step"):
        job = cp.current(job_id)
        if job is None or job.finished:
            return job
        if job.generation is None:
            stale = gens.generations().building
            if stale is not None:  # left by a job that was aborted or lost: nothing will ever swap it in
                log.warning("dropping stale building BM25 generation %s", stale)
                gens.abort_generation(stale)
            job.previous, job.generation = gens.generations().current, gens.next_generation()
            gens.begin_generation(job.generation)
            cp.save(job)
        gens.begin_generation(job.generation)  # idempotent: re-opens it after a restart
    # Outside the lock (it can take long): copying twice is harmless, every copy is an upsert by id.
    if job.tenant_id is not None and job.seeded is None:
        job.seeded = gens.copy_into(job.generation, exclude_tenant=job.tenant_id)
        cp.save(job)
    return job


def plan(settings: Settings, job: Job) -> Job:
    """Fix the job's pages (once; a resumed job keeps its pages, so completed batches stay meaningful)."""
    if job.bounds is None:
        with session_scope(settings) as s:
            job.bounds, job.planned_rows = plan_bounds(s, job.tenant_id, job.batch_size)
        job.status = "building"
        Checkpoint(settings).save(job)
    return job


def run_batch(settings: Settings, gens: Bm25Generations, job_id: str, batch: int) -> int:
    """Indexer: index one page into the new generation; checkpoint it only once committed."""
    cp = Checkpoint(settings)
    job = cp.current(job_id)
    if job is None or job.status != "building" or job.generation is None or batch >= job.batches:
        return 0
    with session_scope(settings) as s:
        rows = batch_memories(s, job, batch)
        if settings.builds_graph:  # links what was stored while edges were off (upserts: a re-link is harmless)
            graph.link_memories(s, [m.id for m in rows])
    n = sync(gens.generation(job.generation), rows)
    cp.mark_done(job_id, batch, n)
    return n


def finalize(settings: Settings, gens: Bm25Generations, job_id: str) -> dict[str, Any]:
    """Indexer: catch up, check the count against Postgres, swap, drop the old generation. Idempotent."""
    cp = Checkpoint(settings)
    with cp.lock("step"):
        job = cp.current(job_id)
        if job is None:
            raise NotReady(f"re-index job {job_id} is not the current one")
        if job.status == "done" and job.result is not None:
            return job.result
        missing = set(range(job.batches)) - set(cp.done(job_id))
        if job.status != "building" or job.generation is None or missing:
            raise NotReady(f"job {job_id}: {len(missing)} batch(es) not done, status {job.status}")
        new = gens.generation(job.generation)
        since = dt.datetime.fromisoformat(job.started_at) - dt.timedelta(seconds=CATCH_UP_MARGIN_S)
        for attempt in range(1, COUNT_ATTEMPTS + 1):
            with session_scope(settings) as s:
                # One snapshot for the catch-up and the count: what we sync is exactly what we count.
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                changed = list(s.execute(select(Memory).options(_light()).where(Memory.updated_at >= since)).scalars())
                expected = int(
                    s.execute(select(func.count()).select_from(Memory).where(*_scope(job.tenant_id))).scalar_one()
                )
            sync(new, changed)
            docs = new.count(job.tenant_id)
            if docs == expected:
                break
            log.warning(
                "re-index %s count check %d/%d: %d documents, %d rows", job_id, attempt, COUNT_ATTEMPTS, docs, expected
            )
        else:
            raise CountMismatch(f"generation {job.generation} has {docs} documents, Postgres {expected} rows")
        previous = gens.activate_generation(job.generation)
        if previous is not None:
            gens.drop_generation(previous)
        job.status = "done"
        job.result = {
            "status": "done",
            "job_id": job.job_id,
            "tenant_id": job.tenant_id,
            "generation": job.generation,
            "previous": job.previous,
            "docs": docs,
            "pg_rows": expected,
            "batches": job.batches,
            "caught_up": len(changed),
            "copied": job.seeded,
            "started_at": job.started_at,
        }
        cp.close(job)
        return job.result


def abort(settings: Settings, gens: Bm25Generations, job_id: str) -> Job | None:
    """Indexer: give up on a job: its generation is dropped, the current one never stopped serving."""

    def drop(job: Job) -> None:
        if job.generation is not None:
            gens.abort_generation(job.generation)

    return Checkpoint(settings).abort(job_id, drop)


KIND = batchjob.JobKind(
    name="reindex",
    queue="indexer",
    start_model=ReindexAll,
    checkpoint=Checkpoint,
    start=lambda settings, req: start_or_resume(settings, resolve_tenant(settings, req.tenant), req.batch_size),
    begin=lambda settings, job_id: begin(settings, get_generations(settings), job_id),
    plan=plan,
    run_batch=lambda settings, job_id, batch: run_batch(settings, get_generations(settings), job_id, batch),
    finalize=lambda settings, job_id: finalize(settings, get_generations(settings), job_id),
    abort=lambda settings, job_id: abort(settings, get_generations(settings), job_id),
    default_window=default_window,
)
