"""Tool memory on real services: an add's tool calls and results (role tool) become tool memories, processed on the
queues (memos.chunker.tools, then the indexer) and returned as tool_memory_detail_list when a search asks for them
(include_tool_memory, tool_memory_limit_number), never mixed into memory_detail_list."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from helpers import wait_for
from sqlalchemy import select

from memos_pipeline.config import Settings
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest

pytestmark = pytest.mark.integration


def post(client: FlaskClient, auth: dict[str, str], path: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = client.post(path, json=body, headers=auth)
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["data"]


def conversation() -> list[dict[str, Any]]:
    weather = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    flight = {"id": "c2", "type": "function", "function": {"name": "book_flight", "arguments": '{"to": "Oslo"}'}}
    return [
        {"role": "user", "content": "What is the weather in Paris, and book me a flight to Oslo."},
        {"role": "assistant", "content": None, "tool_calls": [weather, flight], "chat_time": "2025-03-01T09:00:00"},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21, "sky": "sunny"}'},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: no seats left on that date"},
        {"role": "assistant", "content": "It is sunny and 21C in Paris; the Oslo flight is full."},
    ]


def test_tool_calls_become_tool_memories_searched_on_request(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    user = f"tooluser-{uuid.uuid4().hex[:6]}"
    add = post(
        client, auth, "/add/message", {"user_id": user, "agent_id": "travel-bot", "messages": conversation()}, 202
    )
    with session_scope(workers) as s:
        tool_task = s.execute(select(Ingest.task_id).where(Ingest.user_id == f"tool:{user}")).scalar_one()
    for task_id in (add["task_id"], tool_task):
        wait_for(lambda t=task_id: post(client, auth, "/get/status", {"task_id": t})["status"] == "done", task_id)

    body = {"user_id": user, "query": "what did the weather tool say about Paris", "include_tool_memory": True}
    data = post(client, auth, "/search/memory", body)
    tools = data["tool_memory_detail_list"]
    assert {t["tool_name"] for t in tools} == {"get_weather", "book_flight"}
    by_name = {t["tool_name"]: t for t in tools}
    weather, flight = by_name["get_weather"], by_name["book_flight"]
    assert (
        weather["success"] is True
        and weather["tool_input"] == '{"city": "Paris"}'
        and "sunny" in weather["tool_result"]
    )
    assert flight["success"] is False and "no seats" in flight["tool_result"]
    assert weather["time"] == "2025-03-01T09:00:00" and weather["kind"] == "tool"
    assert tools[0]["tool_name"] == "get_weather"  # ranked by the query
    assert "include_tool_memory" not in data["ignored"]
    # the user's memories are the conversation's windows only; the call-only message shows its calls there
    assert data["memory_detail_list"] and all(m["kind"] == "raw" for m in data["memory_detail_list"])
    shown = " ".join(m["memory_value"] for m in data["memory_detail_list"])
    assert 'calls get_weather({"city": "Paris"})' in shown

    # BM25 has them too (the indexer ran on the tool ingest)
    keyword = post(client, auth, "/search/memory", {**body, "query": "seats", "channels": ["bm25"]})
    assert [t["tool_name"] for t in keyword["tool_memory_detail_list"]] == ["book_flight"]
    limited = post(client, auth, "/search/memory", {**body, "tool_memory_limit_number": 1})
    assert len(limited["tool_memory_detail_list"]) == 1
    assert "tool_memory_detail_list" not in post(client, auth, "/search/memory", {**body, "include_tool_memory": False})
    # filters apply to them as to the add they came from
    other_agent = post(client, auth, "/search/memory", {**body, "agent_id": "another-bot"})
    assert other_agent["tool_memory_detail_list"] == []
    same_agent = post(client, auth, "/search/memory", {**body, "agent_id": "travel-bot"})
    assert len(same_agent["tool_memory_detail_list"]) == 2


def test_an_add_without_tool_calls_makes_no_tool_ingest_and_a_retry_makes_one(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    user = f"tooluser-{uuid.uuid4().hex[:6]}"
    post(client, auth, "/add/message", {"user_id": user, "messages": [{"role": "user", "content": "hello"}]}, 202)
    again = {"user_id": user, "messages": conversation()}
    first = post(client, auth, "/add/message", again, 202)
    retry = post(client, auth, "/add/message", again, 202)  # the same add again: a duplicate, stored once
    assert retry["duplicate"] is True and retry["task_id"] == first["task_id"]
    with session_scope(workers) as s:
        n = len(s.execute(select(Ingest.id).where(Ingest.user_id == f"tool:{user}")).all())
    assert n == 1
    err = client.post(
        "/add/message",
        json={"user_id": user, "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]}]},
        headers=auth,
    )
    assert err.status_code == 422 and err.get_json()["message"].startswith("messages[0].tool_calls[0].function")


def test_a_user_id_of_the_longest_length_has_tool_memory_too(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    user = uuid.uuid4().hex + "u" * 224  # 256 characters: "tool:" + it would not fit the column
    msgs = [{"role": "tool", "content": "42 results", "name": "search_docs"}]
    add = post(client, auth, "/add/message", {"user_id": user, "messages": msgs}, 202)
    wait_for(lambda: post(client, auth, "/get/status", {"task_id": add["task_id"]})["status"] == "done", "the add")

    def found() -> list[dict[str, Any]]:
        body = {"user_id": user, "query": "search results", "include_tool_memory": True}
        items: list[dict[str, Any]] = post(client, auth, "/search/memory", body)["tool_memory_detail_list"]
        return items

    [item] = wait_for(found, "the tool memory")
    assert item["tool_name"] == "search_docs" and item["success"] is True
