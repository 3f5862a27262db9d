"""Issue 9's calls end to end: /rerank, /extract/memory, /chat and /add/feedback.

The API is the real Flask app over the session's LLM stack (``llm_stack`` in conftest.py: every worker, the fake
LLM of fakes/llm.py configured, its own queues); the reranker is the rerank server of fakes/reranker.py. Both are
real HTTP servers in their own processes: the only fakes are the models. Without an LLM (the session's plain
``client``) the LLM-backed calls answer 503 and write nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from fakes.llm import FakeLLM, answer
from fakes.reranker import FakeReranker, relevance
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.schemas import IngestJob
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Extraction, Ingest, Memory, MemoryEdge

pytestmark = pytest.mark.integration

TRIP = [
    {"role": "user", "content": "I am planning a trip to Lisbon in May and want to see the old tram lines."},
    {"role": "assistant", "content": "Tram 28 crosses the old town; ride it early in the morning."},
    {"role": "user", "content": "I will stay in Alfama, near the castle."},
    {"role": "assistant", "content": "Alfama is hilly, so bring comfortable shoes."},
]
NO_PREFS = answer({"explicit_preferences": [], "implicit_preferences": []})
NO_FACTS = answer({"memories": []})


@pytest.fixture(autouse=True)
def _llm_alive(fake_llm: FakeLLM) -> None:
    if not fake_llm.alive():
        fake_llm.restart()


@pytest.fixture(scope="module")
def reranker() -> Iterator[FakeReranker]:
    with FakeReranker() as fr:
        yield fr


@pytest.fixture(scope="module")
def assist_app(llm_stack: Settings, reranker: FakeReranker) -> Iterator[Flask]:
    from api import create_app

    cfg = llm_stack.with_overrides(mos_reranker_backend="http_bge", mos_reranker_url=reranker.url("/v1/rerank"))
    app = create_app(cfg)
    yield app
    app.extensions["memos_celery"].close()


@pytest.fixture
def api(assist_app: Flask) -> FlaskClient:
    return assist_app.test_client()


def post(api: FlaskClient, auth: dict[str, str], path: str, body: dict[str, Any], status: int = 200) -> Any:
    r = api.post(path, headers=auth, json=body)
    assert r.status_code == status, r.get_data(as_text=True)[:2000]
    return r.get_json()["data"]


def wait_done(api: FlaskClient, auth: dict[str, str], task_id: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = post(api, auth, "/get/status", {"task_id": task_id})
        if st["status"] in ("done", "failed"):
            assert st["status"] == "done", st["stages"]
            return st  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} not done within {timeout}s: {st['stages']}")
        time.sleep(0.1)


def add(api: FlaskClient, auth: dict[str, str], user: str, conv: str, messages: list[dict[str, Any]]) -> str:
    data = post(api, auth, "/add/message", {"user_id": user, "conversation_id": conv, "messages": messages}, 202)
    wait_done(api, auth, data["task_id"])
    return data["task_id"]  # type: ignore[no-any-return]


def calls(llm: FakeLLM, route: str) -> list[dict[str, Any]]:
    return [c for c in llm.calls()["calls"] if c["route"] == route]


def rows(cfg: Settings, tenant_id: uuid.UUID, table: Any) -> int:
    with session_scope(cfg) as s:
        return int(s.execute(select(func.count()).select_from(table).where(table.tenant_id == tenant_id)).scalar_one())


# ------------------------------------------------------------------------------------------------ /rerank


def test_rerank_ranks_documents_with_the_configured_reranker(
    api: FlaskClient, auth: dict[str, str], reranker: FakeReranker
) -> None:
    query = "Which tram crosses the old town of Lisbon?"
    docs: list[Any] = [
        "The grey cat sleeps on the radiator.",
        {"text": "Tram 28 crosses the old town of Lisbon.", "id": "d2"},
        "Bring comfortable shoes for the hills of the old town.",
    ]
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    expected = sorted(range(3), key=lambda i: (-relevance(query, texts[i]), i))
    reranker.configure(reset=True)
    data = post(api, auth, "/rerank", {"query": query, "documents": docs, "model": None, "top_n": None})
    assert [r["index"] for r in data["results"]] == expected
    assert [r["relevance_score"] for r in data["results"]] == [round(relevance(query, texts[i]), 6) for i in expected]
    assert data["results"][0]["document"] == {"text": texts[1], "id": "d2"}  # the caller's object, as sent
    assert [(c["protocol"], c["n"]) for c in reranker.calls()] == [("v1", 3)]  # one call to the service
    top = post(api, auth, "/product/rerank", {"query": query, "documents": docs, "top_n": 1, "model": "bge-x"})
    assert [r["index"] for r in top["results"]] == expected[:1]
    assert top["ignored"] == ["model"]  # the configured reranker answered, not the model asked for


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "q", "documents": None}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": ["a"] * 501}, "documents"),
        ({"query": "q", "documents": [{"id": 1}]}, "documents[0].text"),
        ({"query": "q", "documents": ["a", ""]}, "documents[1].text"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ],
    ids=["empty-query", "no-documents", "empty-documents", "too-many", "object-without-text", "blank", "top_n-0"],
)
def test_rerank_rejects_bad_input_naming_the_field(
    api: FlaskClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    r = api.post("/rerank", headers=auth, json=body)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["message"].split(":", 1)[0] == field


def test_rerank_without_a_reranker_is_503(client: FlaskClient, auth: dict[str, str]) -> None:
    r = client.post("/rerank", headers=auth, json={"query": "q", "documents": ["a"]})
    assert r.status_code == 503 and "MOS_RERANKER_BACKEND" in r.get_json()["message"]


# ------------------------------------------------------------------------------------------------ /extract/memory


def test_extract_memory_uses_the_stage_prompts_and_stores_nothing(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM, llm_stack: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    fake_llm.script()  # a capable model: one fact per user message, one explicit and one implicit preference
    messages = [
        {"role": "user", "content": "I adopted a grey cat called Pixel.", "id": "c1"},
        {"role": "assistant", "content": "Lovely! How old is Pixel?"},
        {"role": "user", "content": "Two years old. I live in Lisbon."},
    ]
    data = post(api, auth, "/extract/memory", {"messages": messages, "extraction_types": None, "model": None})
    facts = data["memory_detail_list"]
    assert [(f["memory_value"], f["sources"]) for f in facts] == [
        ("The user said: I adopted a grey cat called Pixel.", ["c1"]),
        ("The user said: Two years old. I live in Lisbon.", ["m2"]),  # no id given: its position
    ]
    assert {p["preference_type"] for p in data["preference_detail_list"]} == {
        "explicit_preference",
        "implicit_preference",
    }
    assert data["usage"]["calls"] == 2 and data["model"] == "fake-model"
    # The MemReader's prompt (routed as "facts" by its system prompt) and the preference stage's.
    assert len(calls(fake_llm, "facts")) == 1 and len(calls(fake_llm, "preferences")) == 1
    assert rows(llm_stack, tenant[0], Memory) == 0 and rows(llm_stack, tenant[0], Ingest) == 0

    fake_llm.script()
    only = post(api, auth, "/extract/memory", {"messages": messages, "extraction_types": ["preference"], "model": "m2"})
    assert only["memory_detail_list"] == [] and len(only["preference_detail_list"]) == 2
    assert [c["model"] for c in fake_llm.calls()["calls"]] == ["m2"]  # one call, preferences, with that model


def test_extract_memory_rejects_bad_input_naming_the_field(api: FlaskClient, auth: dict[str, str]) -> None:
    one = [{"role": "user", "content": "hi"}]
    for body, field in (
        ({"messages": one, "extraction_types": ["facts", "skills"]}, "extraction_types[1]"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ):
        r = api.post("/extract/memory", headers=auth, json=body)
        assert r.status_code == 422 and r.get_json()["message"].split(":", 1)[0] == field, r.get_json()


def test_an_unusable_extraction_is_a_502(api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [{"content": "not json"}, {"content": "still not json"}]})
    r = api.post("/extract/memory", headers=auth, json={"messages": [{"role": "user", "content": "I like tea."}]})
    assert r.status_code == 502 and r.get_json()["message"].startswith("extract: the LLM failed"), r.get_json()


# ------------------------------------------------------------------------------------------------ no LLM


def test_llm_calls_without_an_llm_are_503_and_write_nothing(
    client: FlaskClient, auth: dict[str, str], settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    for path, body in (
        ("/chat", {"user_id": "u1", "query": "hello"}),
        ("/product/chat", {"user_id": "u1", "query": "hello", "stream": True}),
        ("/extract/memory", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/add/feedback", {"user_id": "u1", "feedback_content": "I moved to Paris"}),
    ):
        r = client.post(path, headers=auth, json=body)
        assert r.status_code == 503, (path, r.get_data(as_text=True))
        out = r.get_json()
        assert out["code"] != 0 and "MEMOS_LLM_BASE_URL" in out["message"], out
    assert rows(settings, tenant[0], Ingest) == 0


# ------------------------------------------------------------------------------------------------ /chat


def test_chat_answers_from_the_users_memories(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM, llm_stack: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    # Raw memories only: they are in BM25 once the ingest is done (facts reach it later, which would move the
    # ranking between the chat's search and the one compared with it below).
    fake_llm.script(defaults={"facts": NO_FACTS, "preferences": NO_PREFS})
    add(api, auth, "u1", "trip", TRIP)
    fake_llm.script()
    body = {
        "user_id": "u1",
        "conversation_id": "trip",
        "query": "Where will I stay in Lisbon?",
        "model_name": "chat-model",
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "memory_limit_number": 3,
        "system_prompt": "You are a travel assistant.",
    }
    data = post(api, auth, "/chat", body)
    memories = data["memory_detail_list"]
    assert 0 < len(memories) <= 3
    assert any("Alfama" in m["memory_value"] for m in memories)
    # The search's own answer for the same query: the chat used the search path, not a copy of it.
    found = post(
        api, auth, "/search/memory", {"user_id": "u1", "query": body["query"], "conversation_id": "trip", "top_k": 3}
    )
    assert [m["id"] for m in memories] == [m["id"] for m in found["memory_detail_list"]]
    assert data["response"].startswith("From what I remember: ")  # the fake quotes the first memory it was shown
    assert data["model"] == "chat-model" and data["usage"]["total_tokens"] > 0
    (call,) = calls(fake_llm, "chat")
    assert call["system"].startswith("You are a travel assistant.") and "Alfama" in call["system"]
    assert (call["model"], call["max_tokens"], call["temperature"], call["top_p"]) == ("chat-model", 64, 0.3, 0.9)
    assert call["n_messages"] == 1 + len(TRIP) + 1  # system, the conversation's turns, the query
    assert call["last"] == body["query"]
    assert rows(llm_stack, tenant[0], Ingest) == 1  # no write-back unless asked for


def test_chat_writes_the_exchange_back_once(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM, llm_stack: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    reply = "You will stay in Alfama."
    fake_llm.script(defaults={"chat": {"content": reply}, "preferences": NO_PREFS})
    body = {"user_id": "u2", "conversation_id": "c1", "query": "Where do I stay?", "add_message_on_answer": True}
    first = post(api, auth, "/product/chat", body)
    assert first["response"] == reply and first["add"]["success"] is True and first["add"]["duplicate"] is False
    wait_done(api, auth, first["add"]["task_id"])
    msgs = post(api, auth, "/get/message", {"user_id": "u2", "conversation_id": "c1"})["message_detail_list"]
    assert [(m["role"], m["content"]) for m in msgs] == [("user", body["query"]), ("assistant", reply)]
    # The client's retry (same exchange) is the same add: the /add/message accept path recognises it.
    again = post(api, auth, "/chat", body)
    assert again["add"]["task_id"] == first["add"]["task_id"] and again["add"]["duplicate"] is True
    keyed = [
        api.post("/chat", headers={**auth, "Idempotency-Key": "k1"}, json={**body, "conversation_id": "c2"})
        for _ in range(2)
    ]
    adds = [r.get_json()["data"]["add"] for r in keyed]
    assert adds[0]["task_id"] == adds[1]["task_id"] and [a["duplicate"] for a in adds] == [False, True]
    with session_scope(llm_stack) as s:
        stored = s.execute(
            select(Ingest.conversation_id, func.count())
            .where(Ingest.tenant_id == tenant[0])
            .group_by(Ingest.conversation_id)
        ).all()
    assert dict(stored) == {"c1": 1, "c2": 1}


def events(raw: str) -> list[dict[str, Any]]:
    lines = [line for line in raw.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), raw[:500]
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_chat_streams_server_sent_events(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM, llm_stack: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    reply = "You will stay in Alfama, near the castle, so bring comfortable shoes."
    fake_llm.script(defaults={"chat": {"content": reply}, "preferences": NO_PREFS})
    body = {
        "user_id": "u3",
        "conversation_id": "c1",
        "query": "Where do I stay?",
        "stream": True,
        "add_message_on_answer": True,
    }
    r = api.post("/chat", headers=auth, json=body)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    evs = events(r.get_data(as_text=True))
    assert evs[0]["type"] == "reference" and evs[-1]["type"] == "end"
    pieces = [e["data"] for e in evs if e["type"] == "text"]
    assert len(pieces) > 1 and "".join(pieces) == reply  # the model's chunks, passed on as they came
    assert evs[-1]["data"]["response"] == reply
    wait_done(api, auth, evs[-1]["data"]["add"]["task_id"])
    assert [c["stream"] for c in calls(fake_llm, "chat")] == [True]
    assert rows(llm_stack, tenant[0], Ingest) == 1


def test_chat_llm_failures_are_clear_errors(api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM) -> None:
    body = {"user_id": "u4", "query": "hello", "memory_limit_number": 0, "include_preference": False}
    fake_llm.script(routes={"chat": [{"status": 500}] * 3})  # every try fails (MEMOS_LLM_MAX_RETRIES=2 in the stack: 3)
    r = api.post("/chat", headers=auth, json=body)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.get_json()
    assert r.get_json()["message"].startswith("chat: the LLM is unavailable")
    assert len(calls(fake_llm, "chat")) == 3
    fake_llm.script(routes={"chat": [{"status": 400}]})  # the model refuses the request: retrying cannot help
    r = api.post("/chat", headers=auth, json={**body, "stream": True})
    assert r.status_code == 502 and r.get_json()["message"].startswith("chat: the LLM failed"), r.get_json()


def test_chat_rejects_bad_input_naming_the_field(api: FlaskClient, auth: dict[str, str]) -> None:
    for body, field in (
        ({"user_id": "u1", "query": ""}, "query"),
        ({"query": "hi"}, "user_id"),
        ({"user_id": "u1", "query": "hi", "temperature": 3}, "temperature"),
        ({"user_id": "u1", "query": "hi", "filter": {"and": {"x": 1}}}, "filter.and"),
    ):
        r = api.post("/chat", headers=auth, json=body)
        assert r.status_code == 422 and r.get_json()["message"].split(":", 1)[0] == field, r.get_json()


# ------------------------------------------------------------------------------------------------ /add/feedback

HOME_AND_PET = {
    "memories": [
        {
            "memory_key": "Home city",
            "memory_value": "The user lives in Berlin",
            "memory_type": "UserMemory",
            "tags": ["home"],
            "sources": ["m0"],
        },
        {
            "memory_key": "Pet",
            "memory_value": "The user has a dog called Rex",
            "memory_type": "UserMemory",
            "tags": ["pet"],
            "sources": ["m1"],
        },
    ]
}
DECISION = {
    "add": [
        {"memory_key": "Job", "memory_value": "The user works as a nurse", "memory_type": "UserMemory", "tags": ["job"]}
    ],
    "update": [{"target": "e0", "memory_value": "The user lives in Paris"}],
    "archive": [{"target": "e1", "reason": "no longer true"}],
}
FEEDBACK = "I moved to Paris, I no longer have a dog, and I work as a nurse now."


def facts(cfg: Settings, tenant_id: uuid.UUID, user: str) -> dict[str, Memory]:
    with session_scope(cfg) as s:
        q = select(Memory).where(Memory.tenant_id == tenant_id, Memory.user_id == user, Memory.kind == "fact")
        return {str(m.id): m for m in s.execute(q).scalars()}


def test_feedback_updates_archives_and_adds_facts_as_new_versions(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM, llm_stack: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    fake_llm.script(defaults={"facts": answer(HOME_AND_PET), "preferences": NO_PREFS})
    add(
        api,
        auth,
        "fb",
        "c0",
        [{"role": "user", "content": "I live in Berlin."}, {"role": "user", "content": "My dog is called Rex."}],
    )
    before = facts(llm_stack, tenant[0], "fb")
    assert sorted(m.memory_value for m in before.values()) == sorted(
        f["memory_value"] for f in HOME_AND_PET["memories"]
    )

    fake_llm.script(routes={"feedback": [{"json": DECISION}]})
    body = {
        "user_id": "fb",
        "conversation_id": "c1",
        "feedback_content": FEEDBACK,
        "agent_id": None,
        "app_id": None,
        "feedback_time": "2025-06-01",
        "allow_public": False,
        "allow_knowledgebase_ids": None,
    }
    answers = [post(api, auth, "/add/feedback", body, 202) for _ in range(3)]  # the MemOS client's retries
    assert answers[0]["success"] is True and answers[0]["status"] == "accepted" and answers[0]["ignored"] == []
    assert len({a["task_id"] for a in answers}) == 1 and [a["duplicate"] for a in answers] == [False, True, True]
    task_id = answers[0]["task_id"]
    st = wait_done(api, auth, task_id)
    assert st["stages"]["feedback"]["counts"] == {"add": 1, "update": 1, "archive": 1, "duplicate": 0, "stale": 0}
    (call,) = calls(fake_llm, "feedback")
    assert call["user"].startswith(f"FEEDBACK (2025-06-01): {FEEDBACK}")

    with session_scope(llm_stack) as s:
        ingest_id = s.execute(select(Ingest.id).where(Ingest.task_id == task_id)).scalar_one()
        stored = s.execute(
            select(Extraction.output).where(Extraction.ingest_id == ingest_id, Extraction.stage == "feedback")
        ).scalar_one()
    e0, e1 = stored["candidates"]  # the facts as the model saw them: e0, e1
    assert {e0, e1} == set(before)
    after = facts(llm_stack, tenant[0], "fb")
    assert after[e0].status == "archived" and after[e1].status == "archived"
    live = {m.memory_value: m for m in after.values() if m.status == "activated"}
    assert set(live) == {"The user lives in Paris", "The user works as a nurse"}
    successor = live["The user lives in Paris"]
    assert successor.version == before[e0].version + 1 and successor.memory_key == before[e0].memory_key
    assert successor.info["merged_from"] == e0 and successor.info["feedback_task_id"] == task_id
    assert live["The user works as a nurse"].ingest_id == ingest_id
    history = post(api, auth, "/get/memory/history", {"user_id": "fb", "memory_id": str(successor.id)})["history"]
    assert [h["id"] for h in history] == [str(successor.id), e0]
    with session_scope(llm_stack) as s:
        edges = s.execute(
            select(MemoryEdge.src_id, MemoryEdge.dst_id).where(
                MemoryEdge.kind == "merged_from", MemoryEdge.dst_id == uuid.UUID(e1)
            )
        ).all()
    assert edges == []  # archived without a successor
    found = post(api, auth, "/search/memory", {"user_id": "fb", "query": "Where does the user live?", "top_k": 10})
    values = [m["memory_value"] for m in found["memory_detail_list"]]
    assert "The user lives in Paris" in values and "The user lives in Berlin" not in values

    # A redelivery after the stage finished (the worker died before its ack) changes nothing, and asks no model.
    with session_scope(llm_stack) as s:
        lifecycle.mark_stage(s, ingest_id, "feedback", "pending")
    celery = make_celery(llm_stack)
    try:
        celery.send_task(
            lifecycle.STAGE_TASKS["feedback"], args=[IngestJob(ingest_id=ingest_id).model_dump(mode="json")]
        )
    finally:
        celery.close()
    st = wait_done(api, auth, task_id)
    assert st["stages"]["feedback"]["counts"] == {"add": 0, "update": 0, "archive": 0, "duplicate": 1, "stale": 2}
    again = facts(llm_stack, tenant[0], "fb")
    assert {k: (m.status, m.memory_value) for k, m in again.items()} == {
        k: (m.status, m.memory_value) for k, m in after.items()
    }
    assert len(calls(fake_llm, "feedback")) == 1


def test_feedback_rejects_bad_input_naming_the_field(api: FlaskClient, auth: dict[str, str]) -> None:
    for body, field in (
        ({"user_id": "u1", "feedback_content": ""}, "feedback_content"),
        ({"feedback_content": "x"}, "user_id"),
        ({"user_id": "u1", "feedback_content": "x", "allow_public": "yes please"}, "allow_public"),
    ):
        r = api.post("/add/feedback", headers=auth, json=body)
        assert r.status_code == 422 and r.get_json()["message"].split(":", 1)[0] == field, r.get_json()


def test_a_stuck_feedback_is_resumed_by_its_own_task() -> None:
    """The sweeper asks the lifecycle what moves a stuck ingest on: for a feedback, its one stage (there is no
    chunker to wait for, and an add's stages must not be sent for it)."""
    stages = lifecycle.feedback_stages()
    assert lifecycle.stage_to_resume(stages) == "feedback"
    assert lifecycle.STAGE_TASKS["feedback"] == "memos.memreader.feedback"
    assert lifecycle.stage_payload("feedback", uuid.UUID(int=1)) == IngestJob(ingest_id=uuid.UUID(int=1)).model_dump(
        mode="json"
    )
    for status in ("done", "failed", "dead_lettered"):
        assert lifecycle.stage_to_resume({"feedback": {"status": status}}) is None
    assert lifecycle.overall_status({"feedback": {"status": "retrying"}}) == "processing"
