"""MemOS's server search (/product/search) answers the user's tool memories in ``tool_mem`` when
``search_tool_memory`` asks for them, per readable cube, formatted as its other memories."""

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


def test_product_search_fills_tool_mem(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    user = f"ptool-{uuid.uuid4().hex[:6]}"
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18, "sky": "cloudy"}'},
    ]
    resp = client.post("/add/message", json={"user_id": user, "messages": messages}, headers=auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    with session_scope(workers) as s:
        tool_task = s.execute(select(Ingest.task_id).where(Ingest.user_id == f"tool:{user}")).scalar_one()

    def done(task: str) -> bool:
        st = client.post("/get/status", json={"task_id": task}, headers=auth).get_json()["data"]
        return bool(st["status"] == "done")

    for task in (resp.get_json()["data"]["task_id"], tool_task):
        wait_for(lambda t=task: done(t), task)

    body = {"user_id": user, "query": "weather in Rome", "search_tool_memory": True, "mode": "fast"}
    out = client.post("/product/search", json=body, headers=auth)
    assert out.status_code == 200, out.get_data(as_text=True)
    [cube] = out.get_json()["data"]["tool_mem"]
    assert cube["cube_id"] == user
    [tool] = cube["memories"]
    assert tool["tool_name"] == "get_weather" and tool["success"] is True
    assert tool["metadata"]["type"] == "tool" and tool["memory"]
    # Not asked for: an empty list, as before.
    plain = client.post("/product/search", json={**body, "search_tool_memory": False}, headers=auth)
    assert plain.get_json()["data"]["tool_mem"] == []
