"""``PipelineTask``: the one base class that owns retry policy, stage status and dead-lettering for every task.

Tasks only declare their ``stage`` (the ingest stage they advance, if any). Transient errors (database, broker,
LLM 429/5xx/timeouts) are retried with exponential backoff and jitter; when retries run out, or the error is not
transient (a payload that fails validation), the stage is marked ``dead_lettered`` with the reason and the message
is parked in the dead-letter queue, where ``memos-pipeline dlq`` can show and replay it.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from typing import Any

import kombu
import openai
import psycopg
import redis
import sqlalchemy.exc
from celery import Task

from memos_pipeline.celery_app import DEAD_LETTER, dead_letter_exchange, dead_letter_queue
from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import db
from memos_pipeline.storage.db import session_scope
from workers import metrics

log = logging.getLogger("memos.workers")

TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.RateLimitError,
    openai.InternalServerError,
    ConnectionError,
    TimeoutError,
)


def _ingest_id(args: tuple[Any, ...]) -> uuid.UUID | None:
    payload = args[0] if args else None
    if isinstance(payload, dict) and payload.get("ingest_id"):
        try:
            return uuid.UUID(str(payload["ingest_id"]))
        except ValueError:
            return None
    return None


class PipelineTask(Task):  # type: ignore[misc]
    abstract = True
    stage: str | None = None
    dead_letter = True  # False for read-only tasks (search): a failed read is answered, not parked
    autoretry_for = TRANSIENT
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5  # tasks pass MEMOS_TASK_MAX_RETRIES explicitly (workers/celery.py)
    acks_late = True

    @property
    def settings(self) -> Settings:
        return self.app.conf.memos_settings  # type: ignore[no-any-return]

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        """Enqueue a follow-up task, carrying the trace id along."""
        trace_id = getattr(self.request, "trace_id", None)
        # ignore_result: a fire-and-forget publish must not wait on the result backend (Redis) being up.
        self.app.send_task(
            name, args=[payload], headers={"trace_id": trace_id} if trace_id else None, ignore_result=True
        )

    def on_retry(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        log.warning("task %s %s retrying after %r", self.name, task_id, exc)
        self._mark(args, "retrying", error=f"{type(exc).__name__}: {exc}"[:500])

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        # einfo.type: the original class (openai's exceptions do not pickle, so exc may be a base class).
        reason = f"{(einfo.type if einfo else type(exc)).__name__}: {exc}"[:1000]
        log.error("task %s %s failed: %s", self.name, task_id, reason)
        if not self.dead_letter:
            return
        self._mark(args, "dead_lettered", error=reason, task_id=task_id)
        self._dead_letter(task_id, args, kwargs, reason, einfo)

    def _mark(self, args: tuple[Any, ...], status: str, **fields: Any) -> None:
        ingest_id = _ingest_id(args)
        if self.stage is None or ingest_id is None:
            return
        try:
            with session_scope(self.settings) as s:
                lifecycle.mark_stage(s, ingest_id, self.stage, status, **fields)
        except Exception:  # status is best effort here: the database may be the thing that failed
            log.exception("could not record %s for ingest %s", status, ingest_id)

    def _dead_letter(
        self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str, einfo: Any
    ) -> None:
        body = {
            "task": self.name,
            "task_id": task_id,
            "args": list(args),
            "kwargs": kwargs,
            "reason": reason,
            "traceback": "".join(traceback.format_exception(einfo.exception))[-4000:] if einfo else None,
            "failed_at": db.now().isoformat(),
            "retries": self.request.retries,
        }
        dlx = dead_letter_exchange(self.settings)
        try:
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    json.loads(json.dumps(body, default=str)),
                    exchange=dlx,
                    routing_key=DEAD_LETTER,
                    serializer="json",
                    delivery_mode=2,
                    retry=True,
                    declare=[dead_letter_queue(self.settings)],
                )
        except Exception:
            log.exception("could not publish task %s to the dead-letter queue", task_id)
            return  # counted by memos_worker_task_failures, not as a dead letter: there is none to replay
        metrics.dead_lettered(self.name)
