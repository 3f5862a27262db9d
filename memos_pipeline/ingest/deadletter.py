"""Reading and replaying the dead-letter queue (``memos-pipeline dlq``).

AMQP has no "peek": listing takes every message without acknowledging it and then rejects them all with
requeue, so they stay in the queue. Replay re-publishes a task under its original name and payload, then acks
the dead letter; the task is idempotent, so a replay of something that meanwhile succeeded is harmless.
"""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection

from memos_pipeline.celery_app import dead_letter_queue
from memos_pipeline.config import Settings
from memos_pipeline.ingest.outbox import TaskSender


def _body(message: Any) -> dict[str, Any]:
    try:
        body = message.decode()
    except Exception:
        body = json.loads(message.body) if isinstance(message.body, str | bytes) else message.body
    # Messages a queue rejected (x-dead-letter-exchange) are raw Celery messages; ours carry "task" and "reason".
    if isinstance(body, dict) and "task" in body:
        return body
    headers = message.headers or {}
    args = body[0] if isinstance(body, list) and body else []
    return {
        "task": headers.get("task"),
        "task_id": headers.get("id"),
        "args": args,
        "kwargs": {},
        "reason": f"rejected by the broker ({(headers.get('x-death') or [{}])[0].get('reason', 'unknown')})",
    }


def list_dead(settings: Settings, limit: int = 1000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with Connection(settings.broker_url) as conn:
        queue = dead_letter_queue(settings)(conn.default_channel)
        queue.declare()
        held: list[Any] = []
        while len(held) < limit:
            msg = queue.get(no_ack=False, accept=["json"])
            if msg is None:
                break
            held.append(msg)
            out.append(_body(msg))
        for msg in held:
            msg.requeue()
    return out


def replay(settings: Settings, sender: TaskSender, task_id: str | None = None) -> int:
    """Re-publish dead letters (all, or the one with ``task_id``). Returns how many were replayed."""
    n = 0
    with Connection(settings.broker_url) as conn:
        queue = dead_letter_queue(settings)(conn.default_channel)
        queue.declare()
        keep: list[Any] = []
        while True:
            msg = queue.get(no_ack=False, accept=["json"])
            if msg is None:
                break
            body = _body(msg)
            if (task_id is not None and body.get("task_id") != task_id) or not body.get("task"):
                keep.append(msg)
                continue
            sender.send_task(body["task"], args=body.get("args") or [], kwargs=body.get("kwargs") or {})
            msg.ack()
            n += 1
        for msg in keep:
            msg.requeue()
    return n
