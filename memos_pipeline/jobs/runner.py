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
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import redis
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from memos_pipeline.config import Settings
from memos_pipeline.storage.db import session_scope

log = logging.getLogger(__name__)

MIN_ID = "00000000-0000-0000-0000-000000000000"


class JobConflict(RuntimeError):
    """Another job of the same kind, for a different target, is unfinished: one at a time."""


class NothingToDo(RuntimeError):
    """The job asked for would change nothing (``status`` says why); not an error for a schedule firing again."""

    status = "nothing_to_do"


class NotReady(RuntimeError):
    pass


class CountMismatch(RuntimeError):
    pass


class JobRecord(Protocol):
    job_id: str
    status: str
    batch_size: int

    @property
    def batches(self) -> int: ...

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

    def abort(self, job_id: str, drop: Callable[[J], Any]) -> J | None:
        """Give up on the job (``drop``: remove what it built; what serves now never stopped). Idempotent."""
        with self.lock("step"):
            job = self.current(job_id)
            if job is None or job.finished:
                return job
            drop(job)
            job.status = "aborted"
            self.close(job)
            return job

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


# ---------------------------------------------------------------- task payloads (ids and a schema version)


class JobStep(BaseModel):
    """memos.<queue>.<kind>_begin / _finalize / _abort."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=64)


class JobBatch(JobStep):
    """memos.<queue>.<kind>_batch: one keyset page of a job."""

    batch: int = Field(ge=0)


class JobStart(BaseModel):
    """memos.<queue>.<kind>_all: start or resume a job (``job_id`` set: a chord continuing one). Each kind adds
    what names its target and its default batch size."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    batch_size: int = Field(ge=1, le=100_000)
    window: int | None = Field(None, ge=1, le=256)  # None: the kind's default_window(settings)
    job_id: str | None = None


@dataclass(frozen=True)
class JobKind(Generic[J]):
    """One kind of batch job as the job-control tasks (``memos.<queue>.<name>_<step>``) and the CLI drive it:
    start or resume, begin, plan, batches, finalize (after ``before_finalize``, if any), abort. Every step is
    idempotent and keyed by the job id; the checkpoint says which batches are done."""

    name: str
    queue: str
    start_model: type[JobStart]
    checkpoint: Callable[[Settings], Checkpoint[J]]
    start: Callable[[Settings, Any], tuple[J, bool]]  # (job, resumed) from a start_model payload
    begin: Callable[[Settings, str], J | None]
    plan: Callable[[Settings, J], J]
    run_batch: Callable[[Settings, str, int], int]
    finalize: Callable[[Settings, str], dict[str, Any]]
    abort: Callable[[Settings, str], J | None]
    default_window: Callable[[Settings], int]
    before_finalize: Callable[[Settings, str], Any] | None = None

    def task(self, step: str) -> str:
        return f"memos.{self.queue}.{self.name}_{step}"

    def pending(self, settings: Settings, job: J) -> list[int]:
        return self.checkpoint(settings).pending(job.job_id, job.batches)


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
