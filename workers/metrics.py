"""Prometheus metrics of the workers: task duration, retries, failures, dead letters, and ingest lag.

The task metrics come from Celery's signals, so every task is measured without a line in its body; dead letters
and the ingest lag are recorded where they happen (``PipelineTask._dead_letter``, the indexer's ``upsert_ingest``).
Each worker process serves them over HTTP from ``worker_init`` (``serve``) on ``MEMOS_WORKER_METRICS_PORT`` plus
its queue's position in ``QUEUES``, so one worker per queue shares a host without a port per process to configure.

The pool we run (threads) executes tasks in the process that serves the metrics. A prefork pool runs them in
child processes, whose metrics only reach the endpoint through prometheus_client's multiprocess mode: start such a
worker with ``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, Task
from celery.signals import task_failure, task_postrun, task_prerun, task_retry
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

from memos_pipeline.config import Settings
from memos_pipeline.queues import QUEUES, queue_of

log = logging.getLogger("memos.workers.metrics")

# From a 5 ms BM25 upsert to an LLM extraction retried against a slow provider.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Accepted -> searchable: well under a second when idle, minutes behind a backlog, hours during an outage.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

TASK_SECONDS = Histogram(
    "memos_worker_task_seconds",
    "Run time of each task execution (successful, failed or retried), by queue and task",
    ["queue", "task"],
    buckets=TASK_BUCKETS,
)
TASK_RETRIES = Counter("memos_worker_task_retries", "Task executions that scheduled a retry", ["queue", "task"])
TASK_FAILURES = Counter(
    "memos_worker_task_failures",
    "Task executions that failed for good (retries exhausted or not transient)",
    ["queue", "task", "exception"],
)
DEAD_LETTERED = Counter(
    "memos_worker_dead_lettered", "Failed tasks published to the dead-letter queue", ["queue", "task"]
)
INGEST_LAG = Histogram(
    "memos_ingest_lag_seconds",
    "From an add being accepted (ingests.created_at) to its indexer stage done (searchable by BM25 and vector)",
    buckets=LAG_BUCKETS,
)

# (task_id, thread) -> perf_counter at task_prerun. The thread too: a retry keeps its task id, and with a short
# countdown it can start on another thread of the pool before the failed run's postrun has fired.
_started: dict[tuple[str, int], float] = {}
_started_lock = threading.Lock()


def metrics_port(settings: Settings, queues: Iterable[str]) -> int | None:
    """The port a worker consuming ``queues`` (unprefixed names) serves on, or None when metrics are off."""
    if not settings.worker_metrics_port:
        return None
    offsets = [QUEUES[q].metrics_offset for q in queues if q in QUEUES]
    return settings.worker_metrics_port + min(offsets, default=0)


@task_prerun.connect
def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        with _started_lock:
            _started[task_id, threading.get_ident()] = time.perf_counter()


@task_postrun.connect
def _on_postrun(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    with _started_lock:
        t0 = _started.pop((task_id, threading.get_ident()), None) if task_id is not None else None
    if t0 is not None and task is not None:
        TASK_SECONDS.labels(queue_of(task.name), task.name).observe(time.perf_counter() - t0)


@task_retry.connect
def _on_retry(sender: Task | None = None, **_: Any) -> None:
    if sender is not None:
        TASK_RETRIES.labels(queue_of(sender.name), sender.name).inc()


@task_failure.connect
def _on_failure(sender: Task | None = None, exception: BaseException | None = None, **_: Any) -> None:
    if sender is not None:
        TASK_FAILURES.labels(queue_of(sender.name), sender.name, type(exception).__name__).inc()


def dead_lettered(task_name: str) -> None:
    DEAD_LETTERED.labels(queue_of(task_name), task_name).inc()


def ingest_searchable(accepted_at: dt.datetime, searchable_at: dt.datetime) -> float:
    """Record one ingest's lag; clocks of the database and worker hosts may differ slightly, never below 0."""
    lag = max(0.0, (searchable_at - accepted_at).total_seconds())
    INGEST_LAG.observe(lag)
    return lag


def serve(app: Celery, settings: Settings, consumed: Iterable[str], pool: str) -> int | None:
    """Start the /metrics endpoint of this worker process (a daemon thread); returns the port, None when off.

    ``consumed`` are the unprefixed queue names the worker consumes, ``pool`` its pool's name. A port already in
    use (a second worker for the same queue on one host) is logged, not fatal: the worker still does its work.
    """
    queues = [q for q in consumed if q in QUEUES]
    port = metrics_port(settings, queues)
    if port is None:
        return None
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    elif "prefork" in pool:
        log.warning("prefork pool without PROMETHEUS_MULTIPROC_DIR: task metrics of the child processes are lost")
    # Zero-valued series from the start, so that rate() and alerts on them work before the first event.
    for name in sorted(app.tasks):
        if queue_of(name) in queues:
            TASK_RETRIES.labels(queue_of(name), name)
            DEAD_LETTERED.labels(queue_of(name), name)
    try:
        start_http_server(port, addr=settings.worker_metrics_host, registry=registry)
    except OSError as exc:
        log.error("worker metrics not served: cannot listen on %s:%d (%s)", settings.worker_metrics_host, port, exc)
        return None
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, port)
    return port
