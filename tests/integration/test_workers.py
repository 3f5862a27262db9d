"""Each queue's worker at the task level: tasks published by name with a Celery app from the one factory."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from celery import Celery
from helpers import insert_fact, wait_for
from kombu import Connection
from sqlalchemy import update

from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.ingest import deadletter
from memos_pipeline.storage.bm25 import Bm25Query
from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory
from memos_pipeline.text.tokenizer import analyzed, tokenize

pytestmark = pytest.mark.integration

T = TypeVar("T")
CHUNK = "memos.chunker.chunk"


@pytest.fixture(scope="module")
def celery_app(workers: Settings) -> Iterator[Celery]:
    app = make_celery(workers)
    yield app
    app.close()


@pytest.fixture(scope="module")
def bm25(workers: Settings) -> TantivyIndex:
    return TantivyIndex(workers.bm25_dir, writer=False)


def upsert(app: Celery, memory_id: uuid.UUID) -> int:
    """Run memos.indexer.upsert on the indexer worker and wait for its result (documents upserted)."""
    result = app.send_task("memos.indexer.upsert", args=[{"v": 1, "memory_ids": [str(memory_id)]}], ignore_result=False)
    try:
        return int(result.get(timeout=30))
    finally:
        result.forget()


def dead_letters(settings: Settings, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Take the dead letter of ``task_id`` from the dead-letter queue (others are left in place)."""
    deadline = time.monotonic() + timeout
    with Connection(settings.broker_url) as conn:
        channel = conn.channel()
        try:
            while time.monotonic() < deadline:
                msg = channel.basic_get(settings.queue("dead_letter"), no_ack=False)
                if msg is None:
                    # Nothing (more) there yet: put back what we held and look again shortly.
                    channel.close()
                    channel = conn.channel()
                    time.sleep(0.1)
                    continue
                body = json.loads(msg.body)
                if isinstance(body, dict) and body.get("task_id") == task_id:
                    channel.basic_ack(msg.delivery_tag)
                    return body
        finally:
            channel.close()
    pytest.fail(f"no dead letter for task {task_id} within {timeout}s")


# ---------------------------------------------------------------- indexer


def test_indexer_upsert_by_memory_ids(
    workers: Settings, celery_app: Celery, bm25: TantivyIndex, tenant: tuple[uuid.UUID, str]
) -> None:
    tenant_id = tenant[0]
    word = f"zyglor{uuid.uuid4().hex[:6]}"
    memory_id = insert_fact(workers, tenant_id, "idx_user", f"The user keeps a {word} in the attic")
    query = Bm25Query(str(tenant_id), "idx_user", tuple(tokenize(word)))
    assert bm25.search(query) == []

    assert upsert(celery_app, memory_id) == 1
    hits = wait_for(lambda: bm25.search(query), "the reader to see the indexer's commit")
    assert [h[0] for h in hits] == [str(memory_id)]
    assert hits[0][1] > 0
    assert bm25.count(str(tenant_id)) == 1
    # scoped: another user of the tenant, or another tenant, does not see it
    assert bm25.search(Bm25Query(str(tenant_id), "someone_else", query.tokens)) == []
    assert bm25.search(Bm25Query(str(uuid.uuid4()), "idx_user", query.tokens)) == []

    # Re-sending is idempotent: still one document.
    assert upsert(celery_app, memory_id) == 1
    assert bm25.count(str(tenant_id)) == 1
    # A deleted memory leaves the index on the next upsert of its id.
    with session_scope(workers) as s:
        s.execute(update(Memory).where(Memory.id == memory_id).values(status="deleted"))
    assert upsert(celery_app, memory_id) == 0
    wait_for(lambda: bm25.search(query) == [], "the indexer to drop the deleted memory")
    assert bm25.count(str(tenant_id)) == 0


def test_indexed_text_is_the_analyzed_text(
    workers: Settings, celery_app: Celery, bm25: TantivyIndex, tenant: tuple[uuid.UUID, str]
) -> None:
    """Chinese text is found by a jieba token of the query, as the analyzer segments both sides."""
    text = "我最喜欢的酒店品牌是七天"
    memory_id = insert_fact(workers, tenant[0], "cjk_user", text)
    assert "七天" in analyzed(text).split()
    assert upsert(celery_app, memory_id) == 1
    query = Bm25Query(str(tenant[0]), "cjk_user", tuple(tokenize("没住过的酒店品牌")))
    hits = wait_for(lambda: bm25.search(query), "the CJK memory in BM25")
    assert hits[0][0] == str(memory_id)


# ---------------------------------------------------------------- chunker: poison and vanished ingests


def test_poison_chunk_payload_is_dead_lettered_with_reason(workers: Settings, celery_app: Celery) -> None:
    task_id = f"poison-{uuid.uuid4()}"
    payload = {"v": 1, "ingest_id": "not-a-uuid"}
    celery_app.send_task(CHUNK, args=[payload], task_id=task_id)
    letter = dead_letters(workers, task_id)
    assert letter["task"] == CHUNK
    assert letter["args"] == [payload]
    assert "ValidationError" in letter["reason"]
    assert "ingest_id" in letter["reason"]
    assert letter["retries"] == 0  # not transient: no retries before parking it
    assert letter["failed_at"]


def test_vanished_ingest_simply_completes(workers: Settings, celery_app: Celery) -> None:
    task_id = f"vanished-{uuid.uuid4()}"
    result = celery_app.send_task(
        CHUNK, args=[{"v": 1, "ingest_id": str(uuid.uuid4())}], task_id=task_id, ignore_result=False
    )
    try:
        assert result.get(timeout=30) is None
        assert result.state == "SUCCESS"
    finally:
        result.forget()
    # A poison message sent after it is processed after it (one solo chunker, prefetch 1): once the poison is
    # in the dead-letter queue, the vanished one would be there too had it failed.
    poison_id = f"poison-{uuid.uuid4()}"
    celery_app.send_task(CHUNK, args=[{"v": 1, "ingest_id": "x"}], task_id=poison_id)
    dead_letters(workers, poison_id)
    # deadletter.list_dead reads both forms a dead letter takes (our record, or a raw task message the broker
    # dead-lettered on a reject) and puts every message back.
    seen = [d["task_id"] for d in deadletter.list_dead(workers)]
    assert task_id not in seen
