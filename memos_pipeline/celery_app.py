"""The one Celery app factory and the one table of queues and routes (DESIGN.md section 4).

Every worker, the API and the producer SDK build their app here from the shared ``Settings``; nothing else in
the code base configures Celery. Queue names get ``MEMOS_QUEUE_PREFIX`` so that two deployments can share a broker.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from memos_pipeline.config import Settings
from memos_pipeline.queues import DEAD_LETTER, QUEUES


def exchange(settings: Settings) -> Exchange:
    return Exchange(settings.queue("memos"), type="direct", durable=True)


def dead_letter_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.queue("memos.dlx"), type="direct", durable=True)


def declared_queues(settings: Settings) -> list[Queue]:
    dlx = dead_letter_exchange(settings)
    work = [
        Queue(
            settings.queue(name),
            exchange(settings),
            routing_key=name,
            durable=True,
            # A message a worker rejects (poison, unparseable) lands in the dead-letter queue, not in /dev/null.
            queue_arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": DEAD_LETTER},
        )
        for name in QUEUES
    ]
    return [*work, dead_letter_queue(settings)]


def dead_letter_queue(settings: Settings) -> Queue:
    """Where failed tasks are parked with their reason (``memos-pipeline dlq`` lists and replays them)."""
    return Queue(settings.queue(DEAD_LETTER), dead_letter_exchange(settings), routing_key=DEAD_LETTER, durable=True)


def routes(settings: Settings) -> dict[str, dict[str, str]]:
    return {f"memos.{name}.*": {"queue": settings.queue(name), "routing_key": name} for name in QUEUES}


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    app = Celery("memos", broker=settings.broker_url, backend=settings.redis_url, include=include or [])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=declared_queues(settings),
        task_routes=routes(settings),
        # A task name without a route is a bug: park it in the dead-letter queue where it is visible.
        task_default_queue=settings.queue(DEAD_LETTER),
        task_default_exchange=dead_letter_exchange(settings).name,
        task_default_routing_key=DEAD_LETTER,
        task_create_missing_queues=False,
        # Every task is idempotent, so redelivery after a crash is safe: ack only when done.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_expires=3600,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_heartbeat=30,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        redis_backend_health_check_interval=10,
        # Remote control (inspect, ping: what Flower uses) and events on exchanges of this deployment's prefix:
        # otherwise every deployment sharing a broker answers, and Flower turns events on for all of them.
        control_exchange=settings.queue("celery"),
        event_exchange=settings.queue("celeryev"),
    )
    app.conf.memos_settings = settings
    return app


def declare_topology(app: Celery) -> None:
    """Declare every exchange and queue (idempotent), including the dead-letter queue no worker consumes."""
    settings = app.conf.memos_settings
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in declared_queues(settings):
            queue(channel).declare()
