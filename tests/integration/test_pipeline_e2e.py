"""End to end on real services: API -> RabbitMQ -> chunker/indexer workers -> Postgres + BM25 -> search worker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from flask.testing import FlaskClient
from helpers import wait_for
from sqlalchemy import func, select

from cli.demo import CONVERSATION_ID, MESSAGES, QUERY, USER_ID
from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.stages import chunk as pipeline
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, Memory, OutboxItem
from memos_pipeline.text.chunking import Turn, window_turns

pytestmark = pytest.mark.integration

T = TypeVar("T")
MEMORY_FIELDS = {
    "id",
    "memory_key",
    "memory_value",
    "memory_type",
    "conversation_id",
    "tags",
    "create_time",
    "update_time",
    "relativity",
    "sources",
}


def add(client: FlaskClient, auth: dict[str, str], expect: int = 202, **body: Any) -> dict[str, Any]:
    resp = client.post("/add/message", json=body, headers=auth)
    assert resp.status_code == expect, resp.get_data(as_text=True)
    data: dict[str, Any] = resp.get_json()["data"]
    return data


def wait_done(client: FlaskClient, auth: dict[str, str], task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        resp = client.post("/get/status", json={"task_id": task_id}, headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        data: dict[str, Any] = resp.get_json()["data"]
        return data if data["status"] in ("done", "failed") else None

    data = wait_for(status, f"ingest {task_id} to finish", timeout)
    assert data["status"] == "done", data
    return data


def search(client: FlaskClient, auth: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    resp = client.post("/search/memory", json=body, headers=auth)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data = resp.get_json()["data"]
    assert set(data) >= {"memory_detail_list", "preference_detail_list", "preference_note"}
    items: list[dict[str, Any]] = data["memory_detail_list"]
    return items


def sync_add(client: FlaskClient, auth: dict[str, str], user_id: str, conversation_id: str, *texts: str) -> None:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    data = add(client, auth, 200, user_id=user_id, conversation_id=conversation_id, messages=msgs, async_mode="sync")
    assert data["status"] == "done", data


def n_windows(settings: Settings, n_turns: int) -> int:
    turns = [Turn(str(i), str(i), "user", "x") for i in range(n_turns)]
    return len(window_turns(turns, size=settings.chunk_turns, overlap=settings.chunk_overlap))


def new_tenant(settings: Settings) -> dict[str, str]:
    with session_scope(settings) as s:
        _, key = tenants.create_api_key(s, f"tenant-{uuid.uuid4().hex[:10]}")
    return {"Authorization": f"Token {key}"}


# ---------------------------------------------------------------- the demo conversation


def test_demo_conversation(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    client_ids = [f"demo-msg-{i}" for i in range(len(MESSAGES))]
    messages = [{**m, "id": cid} for m, cid in zip(MESSAGES, client_ids, strict=True)]
    data = add(client, auth, user_id=USER_ID, conversation_id=CONVERSATION_ID, messages=messages)
    assert data["published"] is True
    status = wait_done(client, auth, data["task_id"])

    stages = status["stages"]
    assert stages["chunker"]["status"] == "done"
    assert stages["chunker"]["windows"] == n_windows(workers, len(MESSAGES))  # 2 with the defaults (3 turns, 1 shared)
    assert stages["indexer"]["status"] == "done"
    if not workers.llm_enabled:
        for stage in ("memreader", "preference"):
            assert stages[stage]["status"] == "skipped"
            assert stages[stage]["reason"], stages[stage]
    assert status["finished_at"] is not None

    items = search(client, auth, user_id=USER_ID, conversation_id=CONVERSATION_ID, query=QUERY, top_k=5)
    assert 0 < len(items) <= 5
    for item in items:
        assert set(item) >= MEMORY_FIELDS, item
        assert item["conversation_id"] == CONVERSATION_ID
    hits = [m for m in items if "七天" in m["memory_value"]]
    assert hits, [m["memory_value"] for m in items]
    for m in hits:
        # sources are the client's ids of exactly the messages in that window, in order
        expected = [cid for cid, msg in zip(client_ids, MESSAGES, strict=True) if msg["content"] in m["memory_value"]]
        assert m["sources"] == expected
    assert [m["relativity"] for m in items] == sorted((m["relativity"] for m in items), reverse=True)


@pytest.mark.parametrize("mode", ["sync", False])
def test_sync_mode_returns_memories(workers: Settings, client: FlaskClient, auth: dict[str, str], mode: Any) -> None:
    data = add(
        client,
        auth,
        200,
        user_id="sync_user",
        conversation_id=f"sync-{mode}",
        async_mode=mode,
        messages=[
            {"role": "user", "content": "My sister Ana lives in Lisbon", "id": "s1"},
            {"role": "assistant", "content": "Lisbon is lovely", "id": "s2"},
        ],
    )
    assert data["status"] == "done"
    assert data["stages"]["chunker"]["status"] == "done"
    (memory,) = data["memory_detail_list"]
    assert set(memory) >= MEMORY_FIELDS
    assert memory["sources"] == ["s1", "s2"]
    assert "Lisbon" in memory["memory_value"]
    assert memory["memory_type"] == "RawMemory"


# ---------------------------------------------------------------- search scoping and recall


def test_search_isolation_between_tenants(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    sync_add(client, auth, "shared_user", "iso", "My passport number ends in 4471", "Noted")
    assert search(client, auth, user_id="shared_user", query="passport number")
    other = new_tenant(workers)
    assert search(client, other, user_id="shared_user", query="passport number") == []
    assert search(client, auth, user_id="another_user", query="passport number") == []


def test_filter_by_conversation(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    sync_add(client, auth, "pet_user", "conv-cat", "I adopted a cat named Miso", "Cats are great")
    sync_add(client, auth, "pet_user", "conv-dog", "I adopted a dog named Rex", "Dogs are great")
    unfiltered = search(client, auth, user_id="pet_user", query="which pet did I adopt?")
    assert {m["conversation_id"] for m in unfiltered} == {"conv-cat", "conv-dog"}
    for conv in ("conv-cat", "conv-dog"):
        items = search(
            client, auth, user_id="pet_user", query="which pet did I adopt?", filters={"conversation_id": conv}
        )
        assert items
        assert {m["conversation_id"] for m in items} == {conv}
    assert search(client, auth, user_id="pet_user", query="pet", filters={"conversation_id": "nope"}) == []


RARE = "qwvexlor"  # a made-up word: only BM25 can match it exactly
NEAR_MISSES = ["qwvexlar", "qwvexlur", "qwvexlir", "qwvexlon", "qwvexler", "qwvexlot"]


def test_bm25_recalls_an_exact_rare_token(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    user = "bm25_user"
    target = (
        f"We spent the afternoon in the garden planting tomatoes, basil and peppers, then cleaned the shed "
        f"and fixed the fence; the neighbour lent us her {RARE} for the afternoon"
    )
    sync_add(client, auth, user, "garden", target, "Sounds like a productive and relaxing day outdoors")
    for i, word in enumerate(NEAR_MISSES):
        sync_add(client, auth, user, f"near-{i}", f"What is {word}?", f"{word} is a word I do not know")

    # The premise: dense similarity alone ranks the target window below the near misses.
    query_vec = get_embedder(workers).embed([RARE])[0]
    with session_scope(workers) as s:
        rows = s.execute(select(Memory.memory_value, Memory.embedding).where(Memory.user_id == user)).all()
    dense = sorted(((float(np.asarray(emb) @ query_vec), text) for text, emb in rows), reverse=True)
    assert len(dense) == 1 + len(NEAR_MISSES)
    assert RARE not in dense[0][1], "premise broken: the dense model alone already ranks the target first"

    items = search(client, auth, user_id=user, query=RARE, top_k=3)
    assert RARE in items[0]["memory_value"], [m["memory_value"] for m in items]
    assert items[0]["conversation_id"] == "garden"


# ---------------------------------------------------------------- idempotency and durability


def test_chunk_ingest_twice_writes_no_duplicates(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    msgs = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn number {i} about gardening"} for i in range(7)
    ]
    data = add(client, auth, user_id="idem_user", conversation_id="idem", messages=msgs)
    ingest_id = uuid.UUID(data["ingest_id"])
    embedder = get_embedder(workers)
    # The worker chunks the same ingest concurrently: three runs in all must converge on one set of rows.
    first = pipeline.chunk_ingest(workers, embedder, ingest_id)
    second = pipeline.chunk_ingest(workers, embedder, ingest_id)
    assert first is not None
    assert second is not None
    assert first.memory_ids == second.memory_ids
    expected = n_windows(workers, len(msgs))  # 3 with the defaults: turns [0-2], [2-4], [4-6]
    assert len(first.memory_ids) == expected
    wait_done(client, auth, data["task_id"])

    with session_scope(workers) as s:
        rows = s.execute(
            select(Memory.chunk_idx, Memory.content_hash).where(Memory.ingest_id == ingest_id, Memory.kind == "raw")
        ).all()
        per_user = s.execute(
            select(func.count()).select_from(Memory).where(Memory.user_id == "idem_user", Memory.kind == "raw")
        ).scalar_one()
    assert sorted(r.chunk_idx for r in rows) == list(range(expected))
    assert len({r.content_hash for r in rows}) == expected
    assert per_user == expected


def test_add_is_accepted_while_the_broker_is_down(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    from api import create_app

    broken = create_app(workers.with_overrides(broker_url="amqp://guest:guest@127.0.0.1:1//")).test_client()
    health = broken.get("/health")
    assert health.status_code == 503
    assert health.get_json()["data"]["checks"]["broker"]["ok"] is False

    word = f"outboxword{uuid.uuid4().hex[:6]}"
    resp = broken.post(
        "/add/message",
        headers=auth,
        json={
            "user_id": "outbox_user",
            "conversation_id": "ob",
            "messages": [{"role": "user", "content": f"Remember the code {word}", "id": "ob1"}],
        },
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)
    data = resp.get_json()["data"]
    assert (data["status"], data["published"]) == ("accepted", False)
    ingest_id = uuid.UUID(data["ingest_id"])

    def outbox_row() -> OutboxItem:
        with session_scope(workers) as s:
            return s.execute(select(OutboxItem).where(OutboxItem.ingest_id == ingest_id)).scalar_one()

    row = outbox_row()
    # Not sent by the API; if already sent, then by the relay (which counts attempts and waits out its grace).
    assert row.sent_at is None or row.attempts >= 1
    with session_scope(workers) as s:
        ingest = s.get(Ingest, ingest_id)
        assert ingest is not None
        assert ingest.message_count == 1

    # The relay process (good broker) publishes it; the chunker and indexer then make it searchable.
    def relayed() -> OutboxItem | None:
        r = outbox_row()
        return r if r.sent_at is not None else None

    sent = wait_for(relayed, "the relay to publish the outbox row")
    assert sent.attempts >= 1
    assert sent.sent_at is not None
    assert (sent.sent_at - sent.created_at).total_seconds() >= workers.relay_grace_s
    wait_done(client, auth, data["task_id"])
    items = search(client, auth, user_id="outbox_user", query=word)
    assert items
    assert word in items[0]["memory_value"]
    assert items[0]["sources"] == ["ob1"]


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "a\x00b", "query": "q"},
        {"user_id": "u", "query": "q", "filters": {"conversation_id": "c\x00"}},
    ],
    ids=["user_id", "filters.conversation_id"],
)
def test_search_nul_is_a_422_not_a_500(
    workers: Settings, client: FlaskClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    resp = client.post("/search/memory", json=body, headers=auth)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.get_json()["code"] == 42201


def test_windows_are_keyword_searchable_before_their_vectors(settings: Settings, tmp_path: Path) -> None:
    """The chunk stage stores the windows first (the worker publishes the indexer then) and writes their vectors
    after embedding: in between, BM25 finds them, the dense recall skips them, and a search mixing both works."""
    from memos_pipeline.ingest import lifecycle
    from memos_pipeline.schemas import AddRequest, SearchJob
    from memos_pipeline.search.recall import fast_search
    from memos_pipeline.stages import index as index_stage
    from memos_pipeline.storage import ingests
    from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex

    with session_scope(settings) as s:
        tenant_id, _ = tenants.create_api_key(s, f"twostep-{uuid.uuid4().hex[:8]}")
    req = AddRequest(
        user_id="u",
        conversation_id="c",
        messages=[
            {"role": "user", "content": "My quokka Zanzibar sleeps in the laundry basket."},
            {"role": "assistant", "content": "A cosy spot for a quokka!"},
        ],
    )
    stages = lifecycle.initial_stages(llm=False, scheduler=False, preference=False)
    with session_scope(settings) as s:  # accepted but never published: this test runs the stages itself
        acc = ingests.accept_ingest(
            s, tenant_id, req, trace_id="twostep", stages=stages, task_name="memos.chunker.chunk"
        )
    index = TantivyIndex(tmp_path / "bm25", writer=True)
    embedder = get_embedder(settings)

    def found(channels: list[str]) -> list[str]:
        job = SearchJob(tenant_id=tenant_id, user_id="u", query="quokka Zanzibar", top_k=5, channels=channels)
        with session_scope(settings) as s:
            return [m["memory_value"] for m in fast_search(s, embedder, index, job).memories]

    seen: dict[str, Any] = {}

    def on_stored() -> None:
        with session_scope(settings) as s:
            seen["vectors"] = s.execute(
                select(func.count(Memory.embedding)).where(Memory.ingest_id == acc.ingest_id)
            ).scalar_one()
        index_stage.index_ingest(settings, index, acc.ingest_id)
        seen["bm25"], seen["dense"], seen["both"] = found(["bm25"]), found(["dense"]), found(["dense", "bm25"])

    result = pipeline.chunk_ingest(settings, embedder, acc.ingest_id, on_stored=on_stored)
    assert result is not None and result.next_stages == []  # the LLM stages are skipped here; no indexer again
    assert seen["vectors"] == 0
    assert seen["dense"] == [] and any("Zanzibar" in v for v in seen["bm25"]) and seen["both"] == seen["bm25"]
    with session_scope(settings) as s:
        assert s.execute(
            select(func.count(Memory.embedding)).where(Memory.ingest_id == acc.ingest_id)
        ).scalar_one() == len(result.memory_ids)
        assert ingests.get_ingest(s, acc.ingest_id).status == "done"  # type: ignore[union-attr]
    assert any("Zanzibar" in v for v in found(["dense"]))


def test_a_code_word_finds_the_one_memory_that_holds_it(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    """A made-up code looked up by itself means nothing to the model; BM25 finds the memory that holds it, and the
    fusion must rank it first even among memories closer by meaning to anything at all."""
    user = f"code_{uuid.uuid4().hex[:6]}"
    chat = [
        {"role": "user", "content": "We talked about gardening, tomatoes and the rain this spring."},
        {"role": "assistant", "content": "Tomatoes love warm soil; wait for the rain to stop."},
        {"role": "user", "content": "My locker combination at the gym is qzvrk7731, remember it please."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Also I planted basil next to the peppers and some mint in a pot."},
        {"role": "assistant", "content": "Mint spreads, the pot is wise."},
    ]
    wait_done(client, auth, add(client, auth, user_id=user, conversation_id="c", messages=chat)["task_id"])
    hits = search(client, auth, user_id=user, query="qzvrk7731", top_k=1, mode="fast")
    assert hits and "qzvrk7731" in hits[0]["memory_value"], hits
