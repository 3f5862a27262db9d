"""Query enrichment from the conversation's recent turns, on real Postgres, BM25 and the local embedder."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient

from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search.recall import fast_search
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope
from tests.integration.test_pipeline_e2e import add, wait_done

pytestmark = pytest.mark.integration

PETS = [  # earlier sessions: three pets, each with its favourite place, apart from each other by small talk
    "My neighbour's cat Whiskers loves sleeping in the garden shed.",
    "Tom's parrot Kiwi loves sitting on the balcony railing.",
    "My sister Ingrid's greyhound Pickle loves running on Brighton beach.",
]
FILLER = [{"role": "user", "content": f"Unrelated chat about the weather, item {i}."} for i in range(4)]
RECENT = [  # the turns right before the follow-up question
    {"role": "user", "content": "Tom says his parrot has been restless all week."},
    {"role": "assistant", "content": "Parrots need a good perch to watch from."},
]
FOLLOW_UP = "where does it love to go?"  # fits every pet: only the history says which one


def test_history_turns_make_a_follow_up_find_its_memory(
    workers: Settings, client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str]
) -> None:
    user, conv = f"u-{uuid.uuid4().hex[:8]}", "c-history"
    for messages in (*([{"role": "user", "content": pet}, *FILLER] for pet in PETS), RECENT):
        wait_done(client, auth, add(client, auth, user_id=user, conversation_id=conv, messages=messages)["task_id"])
    job = SearchJob(
        tenant_id=tenant[0],
        user_id=user,
        query=FOLLOW_UP,
        conversation_id=conv,
        top_k=3,
        include_preference=False,
        pref_top_k=0,
    )
    embedder, index = get_embedder(workers), get_index(workers)

    def kiwi_rank_and_score(history_turns: int) -> tuple[int, float]:
        with session_scope(workers) as s:
            out = fast_search(s, embedder, index, job, history_turns=history_turns, history_window=5)
        for rank, m in enumerate(out.memories):
            if "Kiwi" in m["memory_value"]:
                return rank, float(m["relativity"])
        return len(out.memories), 0.0

    plain, enriched = kiwi_rank_and_score(0), kiwi_rank_and_score(2)
    # The recent turns (Tom, the parrot) pull the follow-up to the memory that answers it, and the recent turns
    # themselves are not returned (the caller has them).
    assert enriched[0] == 0, (plain, enriched)
    # The question alone fits every pet; without the history another pet's memory comes first (the greyhound's,
    # today's model prefers "running on the beach" for "love to go").
    assert plain[0] > 0, plain
    # Scoped like every read: another user's conversation with the same id lends no history.
    other = job.model_copy(update={"user_id": f"{user}-other"})
    with session_scope(workers) as s:
        assert fast_search(s, embedder, index, other, history_turns=2, history_window=5).memories == []
