"""Graph recall on real services: the indexer worker builds shared-entity edges, fast search follows them.

The adds go through the API and the real chunker/indexer workers; the searches call ``fast_search`` on the same
database and BM25 index the search worker reads, with the graph on and off (the session's workers run with
FAST_GRAPH's default, off, and MEMOS_GRAPH_EDGES on). BM25-only recall keeps the candidates to what the query's words match, so a memory
that does not contain them can only come back through an edge.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.jobs import reindex
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import graph
from memos_pipeline.search.recall import fast_search
from memos_pipeline.storage import ingests
from memos_pipeline.storage import tenants as tenant_rows
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory, MemoryEdge
from tests.integration.test_pipeline_e2e import add, wait_done

pytestmark = pytest.mark.integration

LESSON = [
    {"role": "user", "content": "I started theremin lessons last week with Oswaldo Quintero."},
    {"role": "assistant", "content": "Lovely! How do you find the instrument so far?"},
]
CONCERT = [
    {"role": "user", "content": "Oswaldo Quintero invited me to his concert in Valparaiso next month."},
    {"role": "assistant", "content": "What an invitation, enjoy it!"},
]
UNRELATED = [
    {"role": "user", "content": "My sister bought a bicycle from Hendrika Vos in Utrecht."},
    {"role": "assistant", "content": "Does she ride it to work?"},
]


def _ingest(client: FlaskClient, auth: dict[str, str], user: str, conv: str, messages: list[dict[str, Any]]) -> str:
    task_id = add(client, auth, user_id=user, conversation_id=conv, messages=messages)["task_id"]
    wait_done(client, auth, task_id)
    return str(task_id)


def _search(settings: Settings, tenant_id: uuid.UUID, user: str, query: str, on: bool) -> list[dict[str, Any]]:
    job = SearchJob(tenant_id=tenant_id, user_id=user, query=query, top_k=5, channels=["bm25"])
    with session_scope(settings) as s:
        out = fast_search(s, get_embedder(settings), get_index(settings), job, graph=on)
    return out.memories


def _ingest_ids(settings: Settings, tenant_id: uuid.UUID, task_ids: list[str]) -> list[uuid.UUID]:
    with session_scope(settings) as s:
        return [i.id for t in task_ids if (i := ingests.find_ingest(s, tenant_id, task_id=t)) is not None]


def test_graph_recalls_a_neighbour_through_a_rare_shared_entity(
    workers: Settings, client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str]
) -> None:
    user = f"graph_{uuid.uuid4().hex[:6]}"
    _ingest(client, auth, user, "lessons", LESSON)
    _ingest(client, auth, user, "concerts", CONCERT)
    _ingest(client, auth, user, "family", UNRELATED)

    off = _search(workers, tenant[0], user, "theremin", on=False)
    on = _search(workers, tenant[0], user, "theremin", on=True)
    assert any("theremin" in m["memory_value"] for m in off)
    assert not any("Valparaiso" in m["memory_value"] for m in off)
    neighbour = [m for m in on if "Valparaiso" in m["memory_value"]]
    assert len(neighbour) == 1, on
    # Ranked under the hit it was reached from; the memory sharing nothing is not pulled in.
    assert on[0]["memory_value"] == off[0]["memory_value"]
    assert 0 < neighbour[0]["relativity"] < on[0]["relativity"]
    assert not any("Utrecht" in m["memory_value"] for m in on)


def test_edges_never_cross_users_or_tenants_and_survive_redelivery(
    workers: Settings, client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str]
) -> None:
    user, other_user = f"graph_{uuid.uuid4().hex[:6]}", f"graph_{uuid.uuid4().hex[:6]}"
    with session_scope(workers) as s:
        other_tenant, other_key = tenant_rows.create_api_key(s, f"tenant-{uuid.uuid4().hex[:10]}", "test")
    other_auth = {"Authorization": f"Token {other_key}"}
    tasks = [_ingest(client, auth, user, "lessons", LESSON), _ingest(client, auth, user, "concerts", CONCERT)]
    # The same rare name for another user of the tenant and for the same user id in another tenant.
    _ingest(client, auth, other_user, "concerts", CONCERT)
    _ingest(client, other_auth, user, "concerts", CONCERT)
    tenants = [tenant[0], other_tenant]

    src, dst = aliased(Memory), aliased(Memory)
    edges_of = (
        select(src.tenant_id, src.user_id, dst.tenant_id, dst.user_id)
        .select_from(MemoryEdge)
        .join(src, src.id == MemoryEdge.src_id)
        .join(dst, dst.id == MemoryEdge.dst_id)
        .where(MemoryEdge.kind == graph.EDGE_KIND, src.tenant_id.in_(tenants))
    )
    with session_scope(workers) as s:
        edges = s.execute(edges_of).all()
    assert (tenant[0], user, tenant[0], user) in edges  # the pair of the first user exists ...
    assert all((st, su) == (dt_, du) for st, su, dt_, du in edges)  # ... and no edge leaves its tenant and user

    # The other tenant's copy is never a neighbour, whatever its edges.
    for m in _search(workers, tenant[0], user, "theremin", on=True):
        with session_scope(workers) as s:
            row = s.get(Memory, uuid.UUID(m["id"]))
            assert row is not None and (row.tenant_id, row.user_id) == (tenant[0], user)

    def counts() -> tuple[int, int, list[float]]:
        with session_scope(workers) as s:
            n_edges = s.execute(select(func.count()).select_from(edges_of.subquery())).scalar_one()
            n_entities = s.execute(
                select(func.count())
                .select_from(graph.memory_entities)
                .where(graph.memory_entities.c.tenant_id.in_(tenants))
            ).scalar_one()
            weights = (
                s.execute(
                    select(MemoryEdge.weight)
                    .join(Memory, Memory.id == MemoryEdge.src_id)
                    .where(MemoryEdge.kind == graph.EDGE_KIND, Memory.tenant_id.in_(tenants))
                    .order_by(MemoryEdge.id)
                )
                .scalars()
                .all()
            )
        return int(n_edges), int(n_entities), list(weights)

    before = counts()
    assert before[0] >= 1 and before[1] >= 1
    # A redelivered indexer task runs the same hook again for the same ingests.
    for ingest_id in _ingest_ids(workers, tenant[0], tasks):
        with session_scope(workers) as s:
            assert graph.link_ingest(s, ingest_id) >= 1
    assert counts() == before


def test_reindex_links_memories_stored_while_edges_were_off(
    workers: Settings, client: FlaskClient, auth: dict[str, str], tmp_path: Path
) -> None:
    """Edges are written only when wanted (MEMOS_GRAPH_EDGES, else FAST_GRAPH): switching them on later, a re-index
    of the tenant links what was stored before."""
    with session_scope(workers) as s:
        tenant_id, key = tenant_rows.create_api_key(s, f"graph-rx-{uuid.uuid4().hex[:8]}", "test")
    own_auth = {"Authorization": f"Token {key}"}
    user = f"graph_{uuid.uuid4().hex[:6]}"
    _ingest(client, own_auth, user, "lessons", LESSON)
    _ingest(client, own_auth, user, "concerts", CONCERT)
    with session_scope(workers) as s:  # as if the indexer had run with edges off
        mine = select(Memory.id).where(Memory.tenant_id == tenant_id)
        s.execute(delete(MemoryEdge).where(MemoryEdge.src_id.in_(mine)))
        s.execute(delete(graph.memory_entities).where(graph.memory_entities.c.tenant_id == tenant_id))
    assert not _search(workers, tenant_id, user, "theremin", on=True)[1:]  # no neighbour without edges

    cfg = workers.with_overrides(bm25_path=tmp_path / "bm25", queue_prefix=f"graphrx{uuid.uuid4().hex[:8]}.")
    gens = TantivyIndex(cfg.bm25_dir, writer=True)
    job, _ = reindex.start_or_resume(cfg, str(tenant_id), 100)
    job = reindex.plan(cfg, reindex.begin(cfg, gens, job.job_id))  # type: ignore[arg-type]
    try:
        for b in reindex.KIND.pending(cfg, job):
            reindex.run_batch(cfg, gens, job.job_id, b)
    finally:
        reindex.abort(cfg, gens, job.job_id)
    with session_scope(workers) as s:
        n_edges = s.execute(
            select(func.count()).select_from(MemoryEdge).where(MemoryEdge.src_id.in_(mine))
        ).scalar_one()
    assert n_edges >= 1
    assert any("Valparaiso" in m["memory_value"] for m in _search(workers, tenant_id, user, "theremin", on=True))
