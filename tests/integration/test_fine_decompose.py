"""Fine mode's query decomposition end to end: API -> search worker -> the fake LLM (a real OpenAI-compatible server)
-> one search per part -> merged candidates -> reranker. The plumbing only: what a real model would split, and what
that gains, is not measurable here (README)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fakes.llm import FakeLLM
from memos_pipeline.config import Settings
from memos_pipeline.ingest.lifecycle import TERMINAL
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope

pytestmark = pytest.mark.integration

USER = "decompose_user"
TURNS = [
    ("user", "In May Caroline flew to Lisbon for the conference."),
    ("assistant", "How was the weather there?"),
    ("user", "Sunny. At the flea market Caroline bought a blue ceramic tile."),
    ("assistant", "A nice souvenir."),
    ("user", "My brother repaired the fence in the garden last weekend."),
    ("assistant", "Good to hear."),
]
QUESTION = "Where did Caroline fly and what did she buy at the flea market?"


@pytest.fixture(scope="module")
def app(llm_stack: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(llm_stack.with_overrides(fine_decompose=True))
    yield app
    app.extensions["memos_celery"].close()


@pytest.fixture(scope="module")
def api(app: Flask, llm_stack: Settings, fake_llm: FakeLLM) -> tuple[FlaskClient, dict[str, str]]:
    """A tenant with one conversation, every stage done (the LLM stages answered by the fake's capable model)."""
    if not fake_llm.alive():
        fake_llm.restart()
    fake_llm.script()
    with session_scope(llm_stack) as s:
        _, key = tenants.create_api_key(s, f"decompose-{uuid.uuid4().hex[:8]}", "test")
    client, auth = app.test_client(), {"Authorization": f"Token {key}"}
    messages = [{"role": r, "content": c} for r, c in TURNS]
    r = client.post("/add/message", headers=auth, json={"user_id": USER, "conversation_id": "c1", "messages": messages})
    assert r.status_code == 202, r.get_json()
    task_id = r.get_json()["data"]["task_id"]
    deadline = time.monotonic() + 60
    while True:
        st = client.post("/get/status", headers=auth, json={"task_id": task_id}).get_json()["data"]
        if all(v.get("status") in TERMINAL for v in st["stages"].values()):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    return client, auth


def search(api: tuple[FlaskClient, dict[str, str]], query: str, mode: str) -> dict[str, Any]:
    client, auth = api
    r = client.post("/search/memory", headers=auth, json={"user_id": USER, "query": query, "mode": mode})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]  # type: ignore[no-any-return]


def decompose_calls(llm: FakeLLM) -> list[dict[str, Any]]:
    return [c for c in llm.calls()["calls"] if c["route"] == "decompose"]


def test_fine_search_searches_each_part_the_llm_names(
    api: tuple[FlaskClient, dict[str, str]], fake_llm: FakeLLM
) -> None:
    fake_llm.script()
    data = search(api, QUESTION, "fine")
    assert data["search"]["sub_queries"] == ["Where did Caroline fly", "what did she buy at the flea market"]
    (call,) = decompose_calls(fake_llm)
    assert call["user"] == QUESTION
    timings = data["timings_ms"]
    assert timings["decompose"] > 0 and timings["sub_searches"] > 0  # the plumbing's cost, reported per search
    found = " ".join(m["memory_value"] for m in data["memory_detail_list"])
    assert "Lisbon" in found and "ceramic tile" in found


def test_a_simple_question_is_searched_alone(api: tuple[FlaskClient, dict[str, str]], fake_llm: FakeLLM) -> None:
    fake_llm.script()
    data = search(api, "What did Caroline buy?", "fine")
    assert "sub_queries" not in data["search"] and "sub_searches" not in data["timings_ms"]
    assert len(decompose_calls(fake_llm)) == 1
    assert any("ceramic tile" in m["memory_value"] for m in data["memory_detail_list"])


def test_a_failing_llm_leaves_the_question_searched_alone(
    api: tuple[FlaskClient, dict[str, str]], fake_llm: FakeLLM
) -> None:
    fake_llm.script(defaults={"decompose": {"status": 500}})
    data = search(api, QUESTION, "fine")
    assert data["memory_detail_list"] and "sub_queries" not in data["search"]
    assert len(decompose_calls(fake_llm)) >= 2  # tried, retried, then given up on


def test_fast_and_mixture_never_ask_the_llm(api: tuple[FlaskClient, dict[str, str]], fake_llm: FakeLLM) -> None:
    fake_llm.script()
    for mode in ("fast", "mixture"):
        data = search(api, QUESTION, mode)
        assert data["memory_detail_list"] and "sub_queries" not in data["search"]
    assert decompose_calls(fake_llm) == []
