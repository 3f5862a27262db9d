"""The transactional outbox: publish after commit, and a relay for what could not be published then.

The API commits ingest + messages + an outbox row, then publishes with publisher confirms and marks the row sent.
If the broker is down the add is still accepted; ``relay_once`` (run by ``memos-pipeline relay`` and by ``up``)
publishes rows left unsent past a grace period. The Celery app is passed in: this module stays free of Celery.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, Protocol

from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import OutboxItem

log = logging.getLogger(__name__)


class TaskSender(Protocol):
    def send_task(self, name: str, args: Any = ..., **options: Any) -> Any: ...


def publish(sender: TaskSender, task_name: str, task_id: str, payload: dict[str, Any], headers: dict[str, Any]) -> None:
    """Publish one task; raises when the broker did not confirm it."""
    # ignore_result: nobody reads these results, and without it the sender subscribes to the result backend,
    # so a Redis outage blocked every add (measured by the chaos suite: 5.3 s per add for a 5 s outage).
    sender.send_task(task_name, args=[payload], task_id=task_id, headers=headers, ignore_result=True)


def publish_quietly(sender: TaskSender, task_name: str, payload: dict[str, Any]) -> bool:
    """Publish a follow-up whose loss is repairable (a BM25 refresh: search filters by Postgres anyway, and the
    index can be rebuilt from Postgres); never fail the caller's request for it."""
    try:
        sender.send_task(task_name, args=[payload], ignore_result=True)
    except Exception as exc:
        log.warning("could not publish %s: %s", task_name, exc)
        return False
    return True


def publish_row(sender: TaskSender, row: OutboxItem) -> None:
    publish(sender, row.task_name, row.task_id, row.payload, row.headers or {})


def try_publish_now(
    settings: Settings,
    sender: TaskSender,
    outbox_id: int,
    task_name: str,
    task_id: str,
    payload: dict[str, Any],
    headers: dict[str, Any],
) -> bool:
    """Publish right after the commit; on any broker error leave the row for the relay. True if sent."""
    try:
        publish(sender, task_name, task_id, payload, headers)
    except Exception as exc:  # the broker being down must never turn an accepted add into an error
        log.warning("publish of %s deferred to the outbox relay: %s", task_id, exc)
        return False
    sent_marker(settings).mark(outbox_id)
    return True


class SentMarker:
    """Marks published outbox rows sent from a background thread, every row that queued up in one statement.

    The add's answer does not wait for this write: it only keeps the relay from publishing the row again. Should
    the process die before the write, the relay re-publishes the row after ``MEMOS_RELAY_GRACE_S``, which is
    harmless (every task is idempotent), exactly as for a crash between publish and mark before. The thread lingers
    ``LINGER_S`` after the first row of a batch so that a burst of adds is one UPDATE: taking whatever had queued at
    once, a flood of adds arriving a few ms apart made almost one transaction per add (a fifth of the API's CPU in
    a py-spy profile under load).
    """

    LINGER_S = 0.05  # far below MEMOS_RELAY_GRACE_S: the relay never sees a published row as unsent for this

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ids: list[int] = []
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="outbox-sent", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def mark(self, outbox_id: int) -> None:
        with self._cv:
            self._ids.append(outbox_id)
            self._cv.notify()

    def _take(self) -> list[int]:
        with self._cv:
            ids, self._ids = self._ids, []
        return ids

    def _write(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            with session_scope(self.settings) as s:
                ingests.mark_outbox_sent(s, ids)
        except Exception as exc:  # the relay will publish these rows again: wasteful, never wrong
            log.warning("could not mark %d outbox rows sent: %s", len(ids), exc)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ids:
                    self._cv.wait()
            # The rows stay in the shared list while we linger, so flush() still sees every one of them.
            time.sleep(self.LINGER_S)
            self._write(self._take())

    def flush(self) -> None:
        """Write what is queued now (at exit, and for callers that read the row right after an add)."""
        self._write(self._take())


_MARKERS: dict[str, SentMarker] = {}
_MARKERS_LOCK = threading.Lock()


def sent_marker(settings: Settings) -> SentMarker:
    """This process's marker for the database of ``settings`` (started on first use)."""
    with _MARKERS_LOCK:
        marker = _MARKERS.get(settings.sqlalchemy_url)
        if marker is None:
            marker = _MARKERS[settings.sqlalchemy_url] = SentMarker(settings)
        return marker


def relay_once(settings: Settings, sender: TaskSender, limit: int = 200) -> int:
    """Publish unsent outbox rows older than the grace period. Returns how many were published."""
    sent = 0
    with session_scope(settings) as s:
        for row in ingests.claim_unsent(s, settings.relay_grace_s, limit):
            try:
                publish_row(sender, row)
            except Exception as exc:
                row.attempts += 1
                row.last_error = str(exc)[:500]
                log.warning("relay could not publish %s: %s", row.task_id, exc)
                break  # the broker is still down: keep order, try again next round
            row.sent_at = db.now()
            row.attempts += 1
            sent += 1
    return sent


def sweep_stuck(settings: Settings, sender: TaskSender, limit: int = 100) -> int:
    """Re-publish the current stage of ingests that made no progress for ``MEMOS_SWEEP_AFTER_S``.

    Covers what acks_late cannot: a task lost between a commit and the next publish, or a broker that lost an
    unconfirmed message. Safe because every stage is idempotent; the window is far above the longest retry
    backoff, so a stage that is merely waiting to retry is not doubled.
    """
    sent = 0
    with session_scope(settings) as s:
        for ingest in ingests.stuck_ingests(s, settings.sweep_after_s, limit):
            stage = lifecycle.stage_to_resume(ingest.stages)
            if stage is None:
                continue
            try:
                payload = lifecycle.stage_payload(stage, ingest.id)
                sender.send_task(lifecycle.STAGE_TASKS[stage], args=[payload], ignore_result=True)
            except Exception as exc:
                log.warning("sweeper could not publish %s for %s: %s", stage, ingest.id, exc)
                break
            ingest.updated_at = db.now()  # do not sweep it again before another full window
            lifecycle.mark_stage(s, ingest.id, stage, ingest.stages.get(stage, {}).get("status", "pending"), swept=True)
            sent += 1
    return sent
