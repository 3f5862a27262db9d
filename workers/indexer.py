"""Queue ``indexer``: keep the BM25 index in line with Postgres, and rebuild it in batches (``reindex_*``).

The embedded index allows one writer, held by this process for its lifetime: run it with concurrency 1. A re-index
builds the next generation through the same process (its batch tasks take turns with live upserts, which also
go to the new generation meanwhile); see ``memos_pipeline.jobs.reindex``.

Batches across ingests: the worker runs one task at a time on a pool thread while its consumer keeps taking the
next messages (prefetch). An ``upsert_ingest`` indexes its own ingest together with those of the upserts already
waiting in this process, in one BM25 commit; their own tasks then find them done and return. Nothing is acked
early: each message is acked when its own task returns, after its ingest was committed by this batch or an earlier
one, so a crash anywhere redelivers it and the upsert, idempotent, is done again.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery.worker import state as worker_state
from sqlalchemy.orm import Session

from memos_pipeline.jobs import reindex
from memos_pipeline.schemas import IndexJob
from memos_pipeline.search import graph
from memos_pipeline.stages import index as index_stage
from memos_pipeline.storage import memories as memory_rows
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope
from workers import metrics
from workers.base import TRANSIENT, PipelineTask
from workers.celery import MAX_RETRIES, app
from workers.jobs import job_tasks

log = logging.getLogger("memos.workers.indexer")

try:  # index timeouts and connection drops are transient too (the client is optional on a single machine)
    from elasticsearch import ConnectionError as EsConnectionError
    from elasticsearch import ConnectionTimeout as EsConnectionTimeout

    RETRY_ON: tuple[type[BaseException], ...] = (*TRANSIENT, EsConnectionError, EsConnectionTimeout)
except ImportError:  # pragma: no cover
    RETRY_ON = TRANSIENT


@app.task(
    bind=True,
    base=PipelineTask,
    name="memos.indexer.upsert_ingest",
    max_retries=MAX_RETRIES,
    stage="indexer",
    autoretry_for=RETRY_ON,
)
def upsert_ingest(self: PipelineTask, payload: dict[str, Any]) -> int:
    job = IndexJob.model_validate(payload)
    if job.ingest_id is None:
        raise ValueError("upsert_ingest needs ingest_id")
    if _BATCHED.pop(job.ingest_id, None) is not None:
        return 0  # indexed, and marked done, with an earlier task's batch while this message waited here
    # Only a worker running one task at a time batches: with several, another thread could be running the task of
    # an ingest taken into this batch, and the bookkeeping below would then skip a later message for it.
    alone = self.app.conf.get("memos_worker_concurrency") == 1
    batch = [job.ingest_id, *(_waiting_ingests(job.ingest_id, BATCH_MAX - 1) if alone else [])]
    for ingest_id in batch:
        # Graph edges first: once the indexer stage reads done, the add is searchable with FAST_GRAPH too.
        _link(self, f"ingest {ingest_id}", functools.partial(graph.link_ingest, ingest_id=ingest_id))
    done = index_stage.index_ingests(self.settings, get_index(self.settings, writer=True), batch)
    now = time.monotonic()
    for ingest_id, indexed in done.items():
        if ingest_id != job.ingest_id:
            _BATCHED[ingest_id] = now
        if indexed.accepted_at is not None and indexed.searchable_at is not None:
            # Accepted -> searchable: once the indexer stage is done the add's raw memories are found by BM25 as
            # well as by vector (facts from the LLM stages come later, on their own).
            metrics.ingest_searchable(indexed.accepted_at, indexed.searchable_at)
    for ingest_id, at in list(_BATCHED.items()):
        if now - at > BATCHED_FORGET_S:  # its message never came here (requeued elsewhere): it re-indexes if it does
            del _BATCHED[ingest_id]
    return done[job.ingest_id].documents


BATCH_MAX = 32  # ingests in one BM25 commit: the indexer's prefetch is 16, so a batch is what this process holds
BATCHED_FORGET_S = 600.0
# Ingests indexed with another task's batch whose own message is still to run here, by when (monotonic). A worker
# restart forgets them: their redelivered messages then index them again, which is idempotent.
_BATCHED: dict[uuid.UUID, float] = {}


def _waiting_ingests(own: uuid.UUID, limit: int) -> list[uuid.UUID]:
    """The ingests of the ``upsert_ingest`` messages this worker holds and has not started (its prefetch)."""
    try:
        waiting = [r for r in list(worker_state.reserved_requests) if r not in worker_state.active_requests]
    except RuntimeError:  # the consumer thread changed the set while we copied it: no batch this time
        return []
    out: list[uuid.UUID] = []
    for request in waiting:
        if request.name != upsert_ingest.name or not request.args:
            continue
        try:
            ingest_id = IndexJob.model_validate(request.args[0]).ingest_id
        except ValueError:  # a malformed message fails in its own task, not in someone else's batch
            continue
        if ingest_id is not None and ingest_id != own and ingest_id not in _BATCHED and ingest_id not in out:
            out.append(ingest_id)
            if len(out) >= limit:
                break
    return out


def _link(task: PipelineTask, what: str, fn: Callable[[Session], int]) -> int:
    """Build graph edges when they are wanted (``Settings.builds_graph``: FAST_GRAPH, or MEMOS_GRAPH_EDGES to
    build them ahead of switching it on). A database hiccup retries the task; a bug in the graph only logs, since
    keyword search must not wait on an optional feature."""
    if not task.settings.builds_graph:
        return 0
    try:
        with session_scope(task.settings) as s:
            return fn(s)
    except RETRY_ON:
        raise
    except Exception:
        log.exception("graph edges for %s failed; indexing goes on without them", what)
        return 0


@app.task(bind=True, base=PipelineTask, name="memos.indexer.upsert", max_retries=MAX_RETRIES, autoretry_for=RETRY_ON)
def upsert(self: PipelineTask, payload: dict[str, Any]) -> int:
    """Re-index given memories by id (after an update or delete: archived/deleted ones leave the index)."""
    job = IndexJob.model_validate(payload)
    with session_scope(self.settings) as s:
        memories = memory_rows.memories_by_ids(s, job.memory_ids)
    # New facts (memreader) arrive here: link them by their entities and tags (archived ones are skipped).
    _link(self, f"{len(job.memory_ids)} memories", lambda s: graph.link_memories(s, job.memory_ids))
    return index_stage.index_memories(get_index(self.settings, writer=True), memories)


# memos.indexer.reindex_begin/_batch/_finalize/_abort/_all (workers/jobs.py; the job: memos_pipeline.jobs.reindex).
reindex_all = job_tasks(reindex.KIND, autoretry_for=RETRY_ON)
