"""The index stage's batch across ingests (stages/index.py ``index_ingests``), on real Postgres and tantivy.

One BM25 commit for several ingests, each marked done with the batch size; an ingest whose row another stage holds
locked is left to its own task instead of making the batch wait; the one-ingest form is the same code.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from helpers import stored_add
from sqlalchemy import select

from memos_pipeline.config import Settings
from memos_pipeline.schemas import AddRequest
from memos_pipeline.stages import index as index_stage
from memos_pipeline.storage import ingests, tenants
from memos_pipeline.storage.bm25 import Bm25Query
from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest
from memos_pipeline.text.tokenizer import analyzed

pytestmark = pytest.mark.integration


@pytest.fixture()
def index(tmp_path: Path) -> TantivyIndex:
    return TantivyIndex(tmp_path / "bm25", writer=True)


@pytest.fixture()
def tenant(settings: Settings) -> uuid.UUID:
    with session_scope(settings) as s:
        tenant_id, _ = tenants.create_api_key(s, f"batch-{uuid.uuid4().hex[:8]}")
    return tenant_id


def stored_ingest(settings: Settings, tenant_id: uuid.UUID, user: str, word: str) -> uuid.UUID:
    """An add whose windows are stored and embedded (the chunk stage done), waiting for the indexer."""
    req = AddRequest(
        user_id=user,
        conversation_id="c",
        messages=[
            {"role": "user", "content": f"my locker code word is {word}"},
            {"role": "assistant", "content": "I will remember it"},
        ],
    )
    return stored_add(settings, tenant_id, req, trace_id="batch").ingest_id


def indexer_stage(settings: Settings, ingest_id: uuid.UUID) -> dict[str, object]:
    with session_scope(settings) as s:
        ingest = ingests.get_ingest(s, ingest_id)
        assert ingest is not None
        return dict(ingest.stages.get("indexer", {}))


def found(index: TantivyIndex, tenant_id: uuid.UUID, user: str, word: str) -> bool:
    return bool(index.search(Bm25Query(str(tenant_id), user, tuple(analyzed(word).split()))))


def test_one_commit_indexes_every_ingest_of_the_batch(
    settings: Settings, index: TantivyIndex, tenant: uuid.UUID
) -> None:
    words = {f"user{i}": f"zephyr{i}quartz" for i in range(3)}
    ids = [stored_ingest(settings, tenant, user, word) for user, word in words.items()]
    assert not any(found(index, tenant, user, word) for user, word in words.items())

    done = index_stage.index_ingests(settings, index, ids)

    assert list(done) == ids
    assert all(found(index, tenant, user, word) for user, word in words.items())
    stages = [indexer_stage(settings, i) for i in ids]
    assert [st["status"] for st in stages] == ["done"] * 3
    assert [st["batch"] for st in stages] == [3] * 3
    assert len({st["bm25_ms"] for st in stages}) == 1  # one commit, timed once for all three
    for i, indexed in done.items():
        assert indexed.documents == 1  # two turns: one window each
        assert indexed.accepted_at is not None and indexed.searchable_at is not None
        assert indexed.searchable_at >= indexed.accepted_at, i


def test_an_ingest_locked_by_another_stage_is_left_to_its_own_task(
    settings: Settings, index: TantivyIndex, tenant: uuid.UUID
) -> None:
    first = stored_ingest(settings, tenant, "u-first", "obsidianfalcon")
    held = stored_ingest(settings, tenant, "u-held", "tungstenheron")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # as the chunker does while it writes vectors: the ingest row locked in a transaction
        with session_scope(settings) as s:
            s.execute(select(Ingest.id).where(Ingest.id == held).with_for_update()).one()
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        done = index_stage.index_ingests(settings, index, [first, held])
    finally:
        release.set()
        holder.join()

    assert list(done) == [first]
    assert found(index, tenant, "u-first", "obsidianfalcon")
    assert not found(index, tenant, "u-held", "tungstenheron")
    assert indexer_stage(settings, held).get("status") != "done"

    alone = index_stage.index_ingest(settings, index, held)  # its own task, later
    assert alone.documents == 1
    assert found(index, tenant, "u-held", "tungstenheron")
    assert indexer_stage(settings, held)["batch"] == 1


def test_a_vanished_first_ingest_indexes_nothing(settings: Settings, index: TantivyIndex) -> None:
    gone = uuid.uuid4()
    assert index_stage.index_ingests(settings, index, [gone]) == {gone: index_stage.Indexed(0)}
