"""What the batch jobs over Postgres share (``reindex``: BM25 generations, ``reembed``: embedding models).

A job is planned once as keyset pages of ids (``[bounds[i], bounds[i+1])``, the last page open-ended, so every id
that could ever exist falls in exactly one page); each page is one batch task. The checkpoint lives in Redis: the
job record and the completed batches, each added only after its rows are committed, so a job killed at any point
resumes from what is done. Redis, not Postgres: it is already our coordination store (locks, Celery results,
which the chords need anyway), per-batch HSET from concurrent tasks is atomic without a schema migration, and the
checkpoint is derived state: if it were lost, the job would start over and lose nothing but time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from memos_pipeline.config import Settings
from memos_pipeline.storage.db import session_scope

log = logging.getLogger(__name__)

MIN_ID = "00000000-0000-0000-0000-000000000000"


class JobConflict(RuntimeError):
    """Another job of the same kind, for a different target, is unfinished: one at a time."""


class NotReady(RuntimeError):
    pass


class CountMismatch(RuntimeError):
    pass


class JobRecord(Protocol):
    job_id: str
    status: str

    @property
    def finished(self) -> bool: ...


J = TypeVar("J", bound=JobRecord)


class Checkpoint(Generic[J]):
    """A job record of type ``job_type`` and its completed batches in Redis, namespaced by ``MEMOS_QUEUE_PREFIX``
    and by ``name`` (``reindex``, ``reembed``: the two kinds run independently)."""

    def __init__(self, settings: Settings, name: str, job_type: Callable[..., J]) -> None:
        self.r = redis.Redis.from_url(settings.redis_url)
        self.key = f"memos:{settings.queue_prefix}{name}"
        self.job_type = job_type

    def _done_key(self, job_id: str) -> str:
        return f"{self.key}:{job_id}:done"

    def _parse(self, raw: bytes) -> J:
        return self.job_type(**json.loads(raw))

    def load(self) -> J | None:
        raw = self.r.get(f"{self.key}:job")
        return self._parse(raw) if raw else None  # type: ignore[arg-type]

    def save(self, job: J) -> None:
        self.r.set(f"{self.key}:job", json.dumps(dataclasses.asdict(job)))  # type: ignore[call-overload]

    def create(self, job: J) -> J:
        """Store ``job`` unless an unfinished one exists, which is returned instead (atomic: WATCH/MULTI)."""
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(f"{self.key}:job")
                    raw = p.get(f"{self.key}:job")
                    if raw and not (existing := self._parse(raw)).finished:  # type: ignore[arg-type]
                        p.unwatch()
                        return existing
                    p.multi()
                    p.set(f"{self.key}:job", json.dumps(dataclasses.asdict(job)))  # type: ignore[call-overload]
                    p.execute()
                    return job
                except redis.WatchError:
                    continue

    def mark_done(self, job_id: str, batch: int, rows: int) -> None:
        self.r.hset(self._done_key(job_id), str(batch), rows)

    def done(self, job_id: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.r.hgetall(self._done_key(job_id)).items()}  # type: ignore[union-attr]

    def lock(self, name: str, timeout: float = 300) -> Any:
        """Serialises a job's begin/finalize/abort steps. It expires on its own if its holder dies, after
        ``timeout``: the steps it guards take seconds."""
        return self.r.lock(f"{self.key}:lock:{name}", timeout=timeout, blocking_timeout=timeout)

    def close(self, job: J) -> None:
        """A finished job stays readable (``--status``) for a week."""
        self.save(job)
        self.r.expire(f"{self.key}:job", 7 * 86400)
        self.r.delete(self._done_key(job.job_id))

    def current(self, job_id: str) -> J | None:
        """The stored job if it is ``job_id`` (a task of a replaced job finds nothing to do)."""
        job = self.load()
        if job is None or job.job_id != job_id:
            log.warning("%s job %s is not the current one; nothing to do", self.key, job_id)
            return None
        return job

    def pending(self, job_id: str, batches: int) -> list[int]:
        done = self.done(job_id)
        return [i for i in range(batches) if i not in done]

    def forget_all(self) -> None:
        """Every key of this kind (tests and benchmarks clean up their namespace with it)."""
        for key in self.r.scan_iter(f"{self.key}*"):
            self.r.delete(key)


def db_clock(settings: Settings) -> str:
    """Postgres's clock, ISO: jobs compare it with ``updated_at`` columns, which Postgres stamps."""
    with session_scope(settings) as s:
        return str(s.execute(select(func.clock_timestamp())).scalar_one().isoformat())


def keyset_bounds(
    s: Session, id_col: InstrumentedAttribute[Any], conds: Sequence[Any], batch_size: int
) -> tuple[list[str], int]:
    """Lower bounds of keyset pages of ``batch_size`` ids (the first is the smallest possible id), and the rows."""
    numbered = select(id_col, func.row_number().over(order_by=id_col).label("rn")).where(*conds)
    sub = numbered.subquery()
    firsts = s.execute(select(sub.c.id).where((sub.c.rn - 1) % batch_size == 0).order_by(sub.c.id)).scalars().all()
    rows = int(s.execute(select(func.count()).select_from(id_col.class_).where(*conds)).scalar_one())
    return [MIN_ID, *(str(i) for i in firsts[1:])], rows


def page_conds(id_col: InstrumentedAttribute[Any], bounds: Sequence[str], page: int) -> list[Any]:
    """The id range of page ``page`` of ``bounds``; the last page is open-ended."""
    conds = [id_col >= uuid.UUID(bounds[page])]
    if page + 1 < len(bounds):
        conds.append(id_col < uuid.UUID(bounds[page + 1]))
    return conds
