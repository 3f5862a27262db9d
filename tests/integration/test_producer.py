"""The producer SDK publishes straight to RabbitMQ; adds become durable, searchable and are never doubled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from memos_pipeline.config import Settings
from memos_pipeline.producer import Producer
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, Memory, Message

pytestmark = pytest.mark.integration
N = int(os.environ.get("MEMOS_TEST_PRODUCER_ADDS", "1000"))


def _wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _count(settings: Settings, model, tenant_id: uuid.UUID, user: str, **where) -> int:  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        q = select(func.count()).select_from(model).where(model.tenant_id == tenant_id, model.user_id == user)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return int(s.execute(q).scalar_one())


def test_same_idempotency_key_twice_is_one_ingest(workers: Settings, tenant: tuple[uuid.UUID, str]) -> None:
    tenant_id, _ = tenant
    with session_scope(workers) as s:
        from memos_pipeline.storage.models import Tenant

        name = s.get_one(Tenant, tenant_id).name
    req = {"user_id": "u-idem", "messages": [{"role": "user", "content": "my dog is called Biscuit", "id": "d1"}]}
    with Producer(workers.broker_url, name, queue_prefix=workers.queue_prefix) as p:
        p.add(req, idempotency_key="k-1")
        p.add(req, idempotency_key="k-1")
    _wait(lambda: _count(workers, Ingest, tenant_id, "u-idem", status="done") == 1, 60, "the ingest")
    time.sleep(1.0)  # give a (wrong) second ingest the time to appear
    assert _count(workers, Ingest, tenant_id, "u-idem") == 1
    assert _count(workers, Message, tenant_id, "u-idem") == 1


def test_api_idempotency_key_header(client: FlaskClient, auth: dict[str, str]) -> None:
    body = {"user_id": "u-hdr", "messages": [{"role": "user", "content": "hello"}]}
    first = client.post("/add/message", json=body, headers={**auth, "Idempotency-Key": "abc"}).get_json()["data"]
    again = client.post("/add/message", json=body, headers={**auth, "Idempotency-Key": "abc"}).get_json()["data"]
    assert again["duplicate"] is True and first["duplicate"] is False
    assert again["task_id"] == first["task_id"] and again["ingest_id"] == first["ingest_id"]
    bad = client.post("/add/message", json=body, headers={**auth, "Idempotency-Key": "x" * 200})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.get_json()["message"]


@pytest.mark.timeout(1800)  # 2N real ingests through the chunker: minutes on 2 cores, not the default 300 s
def test_producer_process_and_api_together(
    workers: Settings, client: FlaskClient, tenant: tuple[uuid.UUID, str], auth: dict[str, str]
) -> None:
    """N adds from a producer in another process while the API adds N: all 2N searchable, none twice."""
    tenant_id, _ = tenant
    with session_scope(workers) as s:
        from memos_pipeline.storage.models import Tenant

        name = s.get_one(Tenant, tenant_id).name
    user = "u-mixed"
    script = Path(__file__).with_name("producer_script.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), workers.broker_url, workers.queue_prefix, name, user, str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    for i in range(N):
        r = client.post(
            "/add/message",
            headers=auth,
            json={
                "user_id": user,
                "conversation_id": f"api-conv-{i % 10}",
                "messages": [{"role": "user", "content": f"api message {i} about topic qa{i}y", "id": f"api-{i}"}],
            },
        )
        assert r.status_code == 202, r.get_json()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and '"published"' in out
    _wait(lambda: _count(workers, Ingest, tenant_id, user, status="done") == 2 * N, 900, "all ingests done")
    assert _count(workers, Ingest, tenant_id, user) == 2 * N
    with session_scope(workers) as s:
        client_ids = (
            s.execute(select(Message.client_id).where(Message.tenant_id == tenant_id, Message.user_id == user))
            .scalars()
            .all()
        )
        assert len(client_ids) == len(set(client_ids)) == 2 * N
        covered = set(
            s.execute(
                select(func.unnest(Memory.sources)).where(
                    Memory.tenant_id == tenant_id, Memory.user_id == user, Memory.kind == "raw"
                )
            ).scalars()
        )
        assert covered >= set(client_ids)
    # and through search: a sample of both kinds of adds by their unique token
    for i in range(0, N, max(1, N // 20)):
        for token, mid in ((f"zq{i}x", f"prod-{i}"), (f"qa{i}y", f"api-{i}")):
            r = client.post("/search/memory", headers=auth, json={"user_id": user, "query": token, "top_k": 5})
            sources = [src for m in r.get_json()["data"]["memory_detail_list"] for src in m["sources"]]
            assert mid in sources, (token, sources)
