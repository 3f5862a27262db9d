"""The worker's broker consumer, reconnecting in short steps after a broker outage.

Celery reconnects with kombu's default backoff (2 s, growing by 2 s a try up to 30 s), so after a 30 s RabbitMQ
stop the first task ran 11 s after the broker was back (measured by the chaos suite). Accepted adds wait in the
outbox and queues meanwhile; reconnecting every 0.5-2 s costs a few failed connects and gets them moving at once.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer

RECONNECT_STEPS = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


class QuickReconnectConsumer(Consumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Any) -> Any:
        if not getattr(conn, "_memos_quick_reconnect", False):
            conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_STEPS)
            conn._memos_quick_reconnect = True
        return super().ensure_connected(conn)
