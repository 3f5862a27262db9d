"""Worker /metrics over HTTP: real workers (chunker, indexer, memreader) with MEMOS_WORKER_METRICS_PORT set, a real
add through the API and the queues, a task retried on an LLM 500 (the fake LLM server, a separate process), and a
poison message dead-lettered; each scraped from the worker that ran it.

The module runs its own workers on its own queue prefix and BM25 directory (the session's indexer holds the session
index's only writer), on the session's database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from cli import demo
from cli.harness import running
from fakes.llm import FakeLLM
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.ingest.lifecycle import STAGE_TASKS
from memos_pipeline.queues import QUEUES
from memos_pipeline.storage import ingests, tenants
from memos_pipeline.storage.db import session_scope
from workers.metrics import metrics_port

pytestmark = pytest.mark.integration

WORKER_QUEUES = ("chunker", "indexer", "memreader")
RUNS, RUN_SECONDS = "memos_worker_task_seconds_count", "memos_worker_task_seconds_sum"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_base(host: str = "127.0.0.1") -> int:
    """A base port with all six per-queue ports after it free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        if base > 65535 - len(QUEUES):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for i in range(len(QUEUES)):
                    sock = stack.enter_context(socket.socket())
                    sock.bind((host, base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free range of ports for the worker metrics")


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture(scope="module")
def metered(settings: Settings, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    cfg = settings.with_overrides(
        queue_prefix=f"metrics{uuid.uuid4().hex[:8]}.",
        bm25_path=tmp_path_factory.mktemp("bm25-metrics"),
        worker_metrics_port=_free_base(),
        # One HTTP call per task attempt: an LLM 500 becomes a Celery retry of the task, which is what we count.
        llm_base_url=fake_llm.base_url,
        llm_model="fake-model",
        llm_api_key="test",
        llm_max_retries=0,
        llm_timeout_s=5.0,
        enable_preference_memory=False,
        memory_adder_mode="fast",
    )
    with running(cfg, WORKER_QUEUES):
        yield cfg


@pytest.fixture(scope="module")
def api(metered: Settings) -> Iterator[FlaskClient]:
    from api import create_app

    app = create_app(metered)
    yield app.test_client()
    app.extensions["memos_celery"].close()


def scrape(settings: Settings, queue: str) -> Samples:
    port = metrics_port(settings, [queue])
    resp = requests.get(f"http://{settings.worker_metrics_host}:{port}/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_scrape(settings: Settings, queue: str, ok: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until ``ok`` holds: a counter moves just after the event it counts (a publish, a status commit)."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(settings, queue)
        if ok(samples):
            return samples
        if time.monotonic() > deadline:
            ours = {f"{n}{dict(labels)}": v for (n, labels), v in samples.items() if n.startswith("memos_")}
            pytest.fail(f"{queue} worker metrics: {what} not seen within 30 s; last scrape: {ours}")
        time.sleep(0.1)


def wait_done(api: FlaskClient, auth: dict[str, str], task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        resp = api.post("/get/status", json={"task_id": task_id}, headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        data: dict[str, Any] = resp.get_json()["data"]
        if data["status"] in ("done", "failed"):
            assert data["status"] == "done", data
            return data
        if time.monotonic() > deadline:
            pytest.fail(f"ingest {task_id} not done within 90 s: {data}")
        time.sleep(0.1)


def test_each_worker_serves_its_own_port(metered: Settings) -> None:
    ports = {q: metrics_port(metered, [q]) for q in WORKER_QUEUES}
    assert ports == {q: metered.worker_metrics_port + list(QUEUES).index(q) for q in WORKER_QUEUES}
    for queue in WORKER_QUEUES:
        samples = scrape(metered, queue)
        # The tasks of the worker's own queue, and only those, have their counters from the start (at zero).
        dead = {dict(k[1])["task"]: v for k, v in samples.items() if k[0] == "memos_worker_dead_lettered_total"}
        assert STAGE_TASKS[queue] in dead, dead
        assert all(t.startswith(f"memos.{queue}.") for t in dead), dead


def test_an_add_is_timed_per_queue_retried_and_its_lag_recorded(
    metered: Settings, api: FlaskClient, fake_llm: FakeLLM
) -> None:
    with session_scope(metered) as s:
        _, key = tenants.create_api_key(s, f"metrics-{uuid.uuid4().hex[:8]}", "test")
    auth = {"Authorization": f"Token {key}"}
    before = {q: scrape(metered, q) for q in WORKER_QUEUES}
    fake_llm.script(routes={"facts": [{"status": 500}, {"auto": True}]})

    body = {"user_id": demo.USER_ID, "conversation_id": f"metrics-{uuid.uuid4().hex[:6]}", "messages": demo.MESSAGES}
    resp = api.post("/add/message", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    status = wait_done(api, auth, resp.get_json()["data"]["task_id"])
    assert status["stages"]["memreader"]["status"] == "done"
    assert status["stages"]["memreader"]["attempts"] == 2  # the 500, then the retry

    def runs(queue: str, task: str, at_least: int) -> Samples:
        """The worker's scrape once ``task`` has run ``at_least`` more times than before the add."""
        labels = {"queue": queue, "task": task}
        return wait_scrape(metered, queue, lambda s: delta(s, before[queue], RUNS, **labels) >= at_least, task)

    chunker = runs("chunker", "memos.chunker.chunk", 1)
    assert delta(chunker, before["chunker"], RUNS, queue="chunker", task="memos.chunker.chunk") == 1
    assert delta(chunker, before["chunker"], RUN_SECONDS, queue="chunker", task="memos.chunker.chunk") > 0

    indexer = runs("indexer", "memos.indexer.upsert_ingest", 1)
    assert delta(indexer, before["indexer"], RUNS, queue="indexer", task="memos.indexer.upsert_ingest") == 1
    # One lag sample, this ingest's: accepted (ingests.created_at) to its indexer stage done, as the database has it.
    assert delta(indexer, before["indexer"], "memos_ingest_lag_seconds_count") == 1
    with session_scope(metered) as s:
        ingest = ingests.get_ingest(s, uuid.UUID(status["ingest_id"]))
        assert ingest is not None
        searchable_at = dt.datetime.fromisoformat(ingest.stages["indexer"]["finished_at"])
        expected = (searchable_at - ingest.created_at).total_seconds()
    lag = delta(indexer, before["indexer"], "memos_ingest_lag_seconds_sum")
    assert 0 < lag < 90
    assert lag == pytest.approx(expected, abs=1e-3)
    inf = value(indexer, "memos_ingest_lag_seconds_bucket", le="+Inf")
    assert inf == value(indexer, "memos_ingest_lag_seconds_count")

    # The failed run is timed too; it scheduled a retry and is no failure.
    extract = {"queue": "memreader", "task": "memos.memreader.extract"}
    memreader = runs("memreader", extract["task"], 2)
    assert delta(memreader, before["memreader"], RUNS, **extract) == 2
    assert delta(memreader, before["memreader"], "memos_worker_task_retries_total", **extract) == 1
    assert not [k for k in memreader if k[0] == "memos_worker_task_failures_total"]


def test_a_dead_lettered_task_is_counted(metered: Settings) -> None:
    chunk = {"queue": "chunker", "task": "memos.chunker.chunk"}
    before = scrape(metered, "chunker")
    task_id = f"poison-{uuid.uuid4()}"
    app = make_celery(metered)
    try:
        app.send_task(chunk["task"], args=[{"v": 1, "ingest_id": "not-a-uuid"}], task_id=task_id)
    finally:
        app.close()
    letter = take_dead_letter(metered, task_id)
    assert "ValidationError" in letter["reason"]

    dead = "memos_worker_dead_lettered_total"
    after = wait_scrape(metered, "chunker", lambda s: delta(s, before, dead, **chunk) > 0, "the dead letter")
    assert delta(after, before, dead, **chunk) == 1
    assert delta(after, before, "memos_worker_task_failures_total", **chunk, exception="ValidationError") == 1
    assert delta(after, before, "memos_worker_task_retries_total", **chunk) == 0  # not transient: parked at once
    assert delta(after, before, RUNS, **chunk) == 1


def take_dead_letter(settings: Settings, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Connection(settings.broker_url) as conn:
        while time.monotonic() < deadline:
            channel = conn.channel()
            try:
                while (msg := channel.basic_get(settings.queue("dead_letter"), no_ack=False)) is not None:
                    body = json.loads(msg.body)
                    if isinstance(body, dict) and body.get("task_id") == task_id:
                        channel.basic_ack(msg.delivery_tag)
                        return body
            finally:
                channel.close()  # the others (unacked) go back to the queue
            time.sleep(0.1)
    pytest.fail(f"no dead letter for {task_id} within {timeout}s")
