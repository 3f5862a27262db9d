"""The shim ``celery -A workers.celery`` loads: the app from the one factory, with every queue's module."""

from typing import Any

from celery.signals import worker_init

from memos_pipeline import logsafe
from memos_pipeline.celery_app import declare_topology, make_celery
from memos_pipeline.config import get_settings
from memos_pipeline.queues import EMBEDDING_QUEUES, QUEUES
from workers import metrics

settings = get_settings()
logsafe.install(settings)  # before Celery configures logging: no worker log record carries a secret
app = make_celery(settings, include=[f"workers.{name}" for name in QUEUES])
# Reconnect to the broker in 0.5-2 s steps instead of kombu's 2-30 s (workers/consumer.py).
app.conf.worker_consumer = "workers.consumer:QuickReconnectConsumer"
# Retries before a task is dead-lettered (MEMOS_TASK_MAX_RETRIES); each writing task passes it explicitly.
MAX_RETRIES = settings.task_max_retries


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    declare_topology(app)
    consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
    pool = getattr(sender, "pool_cls", None)
    pool_name = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}"
    # Before the model loads: the endpoint answers (with zeroes) while the worker warms up.
    metrics.serve(app, settings, [q for q in QUEUES if settings.queue(q) in consumed], pool_name)
    if consumed & {settings.queue(q) for q in EMBEDDING_QUEUES}:
        from memos_pipeline.embedders import get_embedder

        get_embedder(settings).embed(["warm up"])
