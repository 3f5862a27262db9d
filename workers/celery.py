"""The shim ``celery -A workers.celery`` loads: the app from the one factory, with every queue's module."""

import logging
import os
from typing import Any

from celery.signals import worker_init, worker_process_init

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
    # Tasks may ask how many run at once here (the indexer batches only when it runs one at a time).
    app.conf.memos_worker_concurrency = getattr(sender, "concurrency", None)
    consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
    pool = getattr(sender, "pool_cls", None)
    pool_name = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}"
    # Before the model loads: the endpoint answers (with zeroes) while the worker warms up.
    mine = [q for q in QUEUES if settings.queue(q) in consumed]
    metrics.serve(app, settings, mine, pool_name)
    _lower_priority(mine)
    if consumed & {settings.queue(q) for q in EMBEDDING_QUEUES}:
        from memos_pipeline.embedders import get_embedder

        get_embedder(settings).embed(["warm up"])
    forks = "prefork" in pool_name  # "prefork" (-P), or the class once resolved
    if forks:
        from memos_pipeline.storage.db import get_engine

        # Reading the active model opened a database connection here; children forked with it in their pools would
        # share its socket. They open their own.
        get_engine(settings).dispose()
    if settings.queue("search") in consumed:
        # A database connection and the BM25 reader (its own threads) must not cross a fork: warm each child then.
        if forks:
            _WARM_IN_CHILDREN.add("search")
        else:
            _warm_search()


def _lower_priority(queues: list[str]) -> None:
    """Take the niceness of the queues this worker consumes (the most urgent one's, if it runs several): bulk
    embedding yields the cores to the latency-bound work (API, indexer, search) without a cap on its own rate."""
    nice = min((QUEUES[q].nice for q in queues), default=0)
    if nice > 0:
        os.nice(nice)  # before the pool starts: its threads and children inherit it


_WARM_IN_CHILDREN: set[str] = set()  # filled before the fork, read by each child
log = logging.getLogger("memos.workers")


@worker_process_init.connect
def _on_child_init(**_: Any) -> None:
    if "search" in _WARM_IN_CHILDREN:
        _warm_search()


def _warm_search() -> None:
    """A whole search before the first task, not during it."""
    from memos_pipeline.search.service import warm_up

    try:
        warm_up(settings)
    except Exception:
        # Only an optimisation: a database or index not reachable yet must not keep the worker from starting.
        log.warning("search warm-up failed; the first search will pay for it", exc_info=True)
