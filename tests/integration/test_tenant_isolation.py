"""Property tests: no read, search, status or delete ever crosses a tenant, whatever ids and strings are sent.

A pool of tenants, each with users sharing the same user ids across tenants (the dangerous case), is written
through our own write path (accept_ingest + upsert_raw_memories + the BM25 index). Hypothesis then lets any
tenant's key ask for any user id — another tenant's, injection strings, wildcards — through the real API and the
real fast search, and checks every id that comes back belongs to the asking tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import HashEmbedder, stored_add
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from memos_pipeline.config import Settings
from memos_pipeline.schemas import AddRequest, SearchJob
from memos_pipeline.search.recall import fast_search
from memos_pipeline.stages import index as index_stage
from memos_pipeline.storage import memories, tenants
from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex
from memos_pipeline.storage.db import session_scope

pytestmark = pytest.mark.integration

INJECTIONS = ["' OR '1'='1", "u1' --", "*", "%", "_", "tenant:*", '" OR ""="', "u1\\", "$where: 1", "id:*"]
USERS = ["u1", "u2", "shared"]


@dataclass
class World:
    keys: dict[uuid.UUID, str] = field(default_factory=dict)
    memories: dict[uuid.UUID, set[str]] = field(default_factory=dict)
    tasks: dict[uuid.UUID, list[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def index(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> TantivyIndex:
    return TantivyIndex(Path(tmp_path_factory.mktemp("iso-bm25")), writer=True)


@pytest.fixture(scope="module")
def world(settings: Settings, index: TantivyIndex) -> Iterator[World]:
    w = World()
    for t in range(4):
        with session_scope(settings) as s:
            tenant_id, key = tenants.create_api_key(s, f"iso-{uuid.uuid4().hex[:8]}-{t}")
        w.keys[tenant_id], w.memories[tenant_id], w.tasks[tenant_id] = key, set(), []
        for user in USERS:
            req = AddRequest(
                user_id=user,
                conversation_id="c",
                messages=[
                    {"role": "user", "content": f"secret of tenant {t} user {user}: the vault code is {t}{user}"},
                    {"role": "assistant", "content": "noted"},
                ],
            )
            acc = stored_add(settings, tenant_id, req, trace_id="iso")
            w.tasks[tenant_id].append(acc.task_id)
            index_stage.index_ingest(settings, index, acc.ingest_id)
            with session_scope(settings) as s:
                w.memories[tenant_id] |= {str(m.id) for m in memories.memories_of_ingest(s, acc.ingest_id)}
    yield w


user_ids = st.one_of(
    st.sampled_from(USERS + INJECTIONS),
    st.text(min_size=1, max_size=20).filter(lambda x: x.strip() and x.isprintable()),
)
queries = st.one_of(
    st.sampled_from(["vault code", "secret", "tenant", *INJECTIONS]),
    st.text(min_size=1, max_size=40).filter(lambda x: x.strip() and x.isprintable()),
)
SETTINGS = hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(asker=st.integers(0, 3), user=user_ids, query=queries)
def test_search_never_crosses_tenants(
    settings: Settings, world: World, index: TantivyIndex, asker: int, user: str, query: str
) -> None:
    tenant_id = list(world.keys)[asker]
    job = SearchJob(tenant_id=tenant_id, user_id=user, query=query, top_k=50)
    with session_scope(settings) as s:
        out = fast_search(s, HashEmbedder(), index, job)
    got = {m["id"] for m in out.memories}
    assert got <= world.memories[tenant_id]


@SETTINGS
@given(asker=st.integers(0, 3), owner=st.integers(0, 3), user=user_ids)
def test_api_reads_status_and_deletes_never_cross_tenants(
    client: FlaskClient, world: World, asker: int, owner: int, user: str
) -> None:
    tenants = list(world.keys)
    me, them = tenants[asker], tenants[owner]
    auth = {"Authorization": f"Token {world.keys[me]}"}
    listed = client.post("/get/memory", headers=auth, json={"user_id": user, "size": 200}).get_json()["data"]
    assert {m["id"] for m in listed["memory_detail_list"]} <= world.memories[me]
    for task_id in world.tasks[them]:
        r = client.post("/get/status", headers=auth, json={"task_id": task_id})
        assert r.status_code == (200 if me == them else 404)
    if me != them:
        theirs = sorted(world.memories[them])[:5]
        r = client.post("/delete/memory", headers=auth, json={"user_id": user, "memory_ids": theirs})
        assert r.status_code == 200 and r.get_json()["data"]["deleted"] == []
        for mid in theirs:  # still there for their owner
            own = {"Authorization": f"Token {world.keys[them]}"}
            hist = client.post(
                "/get/memory/history", headers=own, json={"user_id": _owner_user(client, own, mid), "memory_id": mid}
            )
            assert hist.status_code == 200 and hist.get_json()["data"]["history"][0]["status"] == "activated"


def _owner_user(client: FlaskClient, auth: dict[str, str], memory_id: str) -> str:
    for user in USERS:
        data = client.post("/get/memory", headers=auth, json={"user_id": user, "size": 200}).get_json()["data"]
        if any(m["id"] == memory_id for m in data["memory_detail_list"]):
            return user
    raise AssertionError(f"memory {memory_id} not found for its owner")
