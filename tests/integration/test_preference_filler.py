"""A stated preference among filler chats (issue 12; the PrefEval proxy's failure at 300 filler turns), on real
services: the adds go through the API and the real chunker/indexer workers, the searches call ``fast_search`` on
the database and BM25 index the search worker reads.

The fixture (``tests/fixtures/preference_filler.json``, written for this test) holds one preference and 80 filler
turns that share the question's common words ("suggest", "good", "options", "weekend") but not its topic. Weighted
fusion max-scales BM25, so those weak keyword matches count as perfect ones and push the preference out of the top
5; gated fusion (the default) lets BM25 count only for memories the embedder finds related.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

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

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "preference_filler.json"
PER_ADD = 50  # as the PrefEval harness sends them
TOP_K = 5


def _ranks(settings: Settings, tenant_id: uuid.UUID, user: str, query: str, method: str) -> list[list[str]]:
    job = SearchJob(tenant_id=tenant_id, user_id=user, query=query, top_k=TOP_K, include_preference=False)
    with session_scope(settings) as s:
        out = fast_search(s, get_embedder(settings), get_index(settings), job, fusion_method=method)
    return [list(m["sources"]) for m in out.memories]


def test_a_preference_among_keyword_filler_stays_in_the_top_5(
    workers: Settings, client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str]
) -> None:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    user = f"prefs_{uuid.uuid4().hex[:6]}"
    fillers = [{**m, "id": f"f{i:03d}"} for i, m in enumerate(data["fillers"])]
    batches = [[{"role": "user", "content": data["preference"], "id": "pref"}]]
    batches += [fillers[i : i + PER_ADD] for i in range(0, len(fillers), PER_ADD)]
    for messages in batches:  # in order: the chunker stitches each add to the turns before it
        task_id = add(client, auth, user_id=user, conversation_id="prefs", messages=messages)["task_id"]
        wait_done(client, auth, task_id)

    gated = _ranks(workers, tenant[0], user, data["question"], "gated")
    ungated = _ranks(workers, tenant[0], user, data["question"], "weighted")
    # The failure this guards against, reproduced: keyword-only filler outranks the preference when ungated.
    assert not any("pref" in sources for sources in ungated), ungated
    assert any("pref" in sources for sources in gated), gated
