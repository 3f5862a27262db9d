"""MemOS's open-source server routes (api/product.py): /product/add, /search, /get_memory, /get_all, /delete_memory,
/feedback, /chat/complete and the scheduler routes, over real HTTP with bodies as MemOS's server models take them
(every field, the unset ones as null).

The API is the session's shared gunicorn (``http_stack``, on the session's LLM-less workers); each test gets a tenant
of its own, so no test sees another's memories. A cube id is a user_id in our model (memos_pipeline/product_schemas.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from cli.harness import Isolated
from fakes.llm import FakeLLM, answer
from memos_pipeline.config import Settings
from memos_pipeline.product_schemas import ProductAddRequest, ProductChatRequest, ProductSearchRequest

pytestmark = pytest.mark.integration

TIMEOUT_S = 300  # generous: nothing here asserts speed, and the first search loads the embedding model

TRIP = [
    {"role": "user", "content": "I am planning a trip to Lisbon in May and want to see the old tram lines."},
    {"role": "assistant", "content": "Tram 28 crosses the old town; ride it early in the morning."},
    {"role": "user", "content": "I will stay in Alfama, near the castle."},
]
NO_FACTS = answer({"memories": []})  # the fake LLM's answers: nothing extracted
NO_PREFS = answer({"explicit_preferences": [], "implicit_preferences": []})
PETS = [
    {"role": "user", "content": "My grey cat Pixel hates the vacuum cleaner."},
    {"role": "assistant", "content": "Many cats do; try running it while Pixel is in another room."},
]


def add_body(messages: Any, cube: str, **given: Any) -> dict[str, Any]:
    """APIADDRequest as MemOS's server takes it: every field, unset ones null."""
    body: dict[str, Any] = {
        "user_id": "caller",
        "session_id": None,
        "task_id": None,
        "writable_cube_ids": [cube],
        "async_mode": "async",
        "mode": None,
        "custom_tags": None,
        "info": None,
        "messages": messages,
        "chat_history": None,
        "is_feedback": False,
        "mem_cube_id": None,
        "memory_content": None,
        "doc_path": None,
        "source": None,
        "operation": None,
    }
    return {**body, **given}


def search_body(query: str, cubes: list[str] | None, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": query,
        "user_id": "caller",
        "readable_cube_ids": cubes,
        "mode": "fast",
        "session_id": None,
        "top_k": 10,
        "relativity": None,
        "dedup": None,
        "pref_top_k": 6,
        "include_preference": True,
        "search_tool_memory": None,
        "tool_mem_top_k": None,
        "include_skill_memory": None,
        "skill_mem_top_k": None,
        "filter": None,
        "internet_search": False,
        "threshold": None,
        "search_memory_type": "All",
        "chat_history": None,
        "mem_cube_id": None,
        "moscube": False,
        "operation": None,
        "source": None,
    }
    return {**body, **given}


def get_memory_body(cube: str, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mem_cube_id": cube,
        "user_id": None,
        "include_preference": True,
        "include_tool_memory": None,
        "include_skill_memory": None,
        "filter": None,
        "page": None,
        "page_size": None,
    }
    return {**body, **given}


def chat_body(cube: str, query: str, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "caller",
        "query": query,
        "readable_cube_ids": [cube],
        "writable_cube_ids": [cube],
        "history": None,
        "mode": "fast",
        "system_prompt": None,
        "top_k": 10,
        "session_id": None,
        "include_preference": True,
        "pref_top_k": 6,
        "model_name_or_path": None,
        "max_tokens": None,
        "temperature": None,
        "top_p": None,
        "add_message_on_answer": True,
        "filter": None,
        "internet_search": False,
        "threshold": 0.5,
        "mem_cube_id": None,
        "moscube": False,
    }
    return {**body, **given}


class Server:
    """One tenant's caller of the MemOS server routes: JSON bodies posted as MemOS's callers post them."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.headers = {"Content-Type": "application/json", "Authorization": f"Token {key}"}

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.base}{path}", data=json.dumps(body), headers=self.headers, timeout=TIMEOUT_S)

    def ok(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        """MemOS's server envelope with the expected status: code 200, a message, data."""
        resp = self.post(path, body)
        assert resp.status_code == status, f"{path}: {resp.status_code} {resp.text[:2000]}"
        out: dict[str, Any] = resp.json()
        assert out["code"] == 200 and isinstance(out["message"], str) and "data" in out, out
        return out

    def wait_done(self, task_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.post("/get/status", {"task_id": task_id}).json()["data"]["status"]
            if status in ("done", "failed"):
                assert status == "done", status
                return
            assert time.monotonic() < deadline, f"ingest {task_id} did not finish in {timeout}s"
            time.sleep(0.05)

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self.ok("/product/add", body, 202)
        assert out["data"] == [] and out["task_id"] and out["detail"]["status"] == "accepted"
        self.wait_done(out["task_id"])
        return out

    def memory_ids(self, query: str, cube: str) -> set[str]:
        data = self.ok("/product/search", search_body(query, [cube]))["data"]
        return {m["id"] for m in data["text_mem"][0]["memories"]}


@pytest.fixture
def server(http_stack: Isolated, tenant: tuple[uuid.UUID, str]) -> Server:
    return Server(http_stack.stack.base_url, tenant[1])


def test_add_then_search_finds_it(server: Server) -> None:
    """An add into a cube is the cube's memory: MemOS's search answers it in text_mem under that cube, each item
    with MemOS's memory and metadata; our own /search/memory of that user_id finds the same."""
    out = server.add(add_body(TRIP, "cube1", custom_tags=["travel"], info={"scene": "chat"}, session_id="s1"))
    assert out["detail"]["ignored"] == []
    data = server.ok("/product/search", search_body("Which tram crosses the old town of Lisbon?", ["cube1"]))["data"]
    assert [t["cube_id"] for t in data["text_mem"]] == ["cube1"]
    found = data["text_mem"][0]["memories"]
    assert found and any("Tram 28" in m["memory"] for m in found), found
    first = found[0]
    assert first["metadata"]["user_id"] == "cube1" and first["metadata"]["session_id"] == "s1"
    assert first["metadata"]["id"] == first["id"] and first["ref_id"] == f"[{first['id'].split('-')[0]}]"
    # the add's info, with who wrote into the cube, filters the search (custom_tags are tags)
    for where in ({"scene": "chat"}, {"memos_user_id": "caller"}, {"tags": {"contains": "travel"}}):
        hits = server.ok("/product/search", search_body("tram", ["cube1"], filter=where))["data"]["text_mem"]
        assert hits[0]["memories"], where
    assert isinstance(data["pref_note"], str) and data["ignored"] == []
    ours = server.post("/search/memory", {"user_id": "cube1", "query": "tram old town", "top_k": 50}).json()["data"]
    assert first["id"] in {m["id"] for m in ours["memory_detail_list"]}
    # another cube (user) sees nothing of it
    other = server.ok("/product/search", search_body("tram", ["cube2"]))["data"]
    assert other["text_mem"] == [{"cube_id": "cube2", "memories": []}]


def test_add_sync_answers_the_memories_made(server: Server) -> None:
    out = server.ok("/product/add", add_body(PETS, "cube1", async_mode="sync"), 200)
    assert out["detail"]["status"] == "done"
    assert out["data"] and all(m["memory_id"] == m["id"] and m["memory"] for m in out["data"])


def test_add_task_id_names_the_add_and_text_forms(server: Server) -> None:
    """The same task_id again is a retry (stored once); a string of messages and memory_content are user
    messages; several writable cubes are a 422 (one add, one cube), not copies."""
    body = add_body("I keep bees on my balcony.", "cube1", task_id="t-1", mem_cube_id="cube1")
    first = server.add(body)
    again = server.ok("/product/add", body, 202)
    assert again["task_id"] == first["task_id"] and again["detail"]["duplicate"] is True
    server.add(add_body(None, "cube1", memory_content="My sister lives in Porto."))
    assert server.memory_ids("bees balcony", "cube1") and server.memory_ids("sister Porto", "cube1")
    resp = server.post("/product/add", add_body(PETS, "cube1", writable_cube_ids=["cube1", "cube2"]))
    assert resp.status_code == 422 and "one cube" in resp.json()["message"], resp.text
    resp = server.post("/product/add", add_body(None, "cube1"))
    assert resp.status_code == 422 and "messages" in resp.json()["message"], resp.text


def test_search_reads_each_readable_cube_and_names_what_it_ignored(server: Server) -> None:
    server.add(add_body(TRIP, "cube1"))
    server.add(add_body(PETS, "cube2"))
    body = search_body("cat Pixel vacuum", ["cube1", "cube2"], dedup="mmr", internet_search=True, colour="red")
    data = server.ok("/product/search", body)["data"]
    assert [t["cube_id"] for t in data["text_mem"]] == ["cube1", "cube2"]
    assert any("Pixel" in m["memory"] for m in data["text_mem"][1]["memories"])
    assert all(m["metadata"]["user_id"] == "cube1" for m in data["text_mem"][0]["memories"])
    assert data["ignored"] == ["colour", "dedup", "internet_search"]
    # mem_cube_id alone (MemOS's deprecated form), and no cube at all: the user_id is the scope
    assert server.ok("/product/search", search_body("cat", None, mem_cube_id="cube2"))["data"]["text_mem"][0][
        "memories"
    ]
    assert server.ok("/product/search", search_body("cat", None, user_id="cube2"))["data"]["text_mem"][0]["memories"]


def test_get_memory_exports_or_pages(server: Server) -> None:
    server.add(add_body(TRIP, "cube1"))
    data = server.ok("/product/get_memory", get_memory_body("cube1"))["data"]
    text = data["text_mem"][0]
    assert text["cube_id"] == "cube1" and text["total_nodes"] >= 1
    assert len(text["memories"]["nodes"]) == text["total_nodes"] and data["truncated"] is False
    assert data["pref_mem"][0]["cube_id"] == "cube1"
    page = server.ok("/product/get_memory", get_memory_body("cube1", page=1, page_size=1))["data"]
    assert len(page["text_mem"][0]["memories"]["nodes"]) == 1 and page["page_size"] == 1
    empty = server.ok("/product/get_memory", get_memory_body("nobody"))["data"]
    assert empty["text_mem"][0]["memories"]["nodes"] == [] and empty["text_mem"][0]["total_nodes"] == 0


def test_get_all_lists_the_users_memories(server: Server) -> None:
    server.add(add_body(TRIP, "cube1"))
    server.add(add_body(PETS, "cube1"))
    body = {"user_id": "cube1", "memory_type": "text_mem", "mem_cube_ids": None, "search_query": None}
    out = server.ok("/product/get_all", body)
    [entry] = out["data"]
    nodes = entry["memories"][0]["nodes"]
    assert entry["cube_id"] == "cube1" and len(nodes) == out["detail"]["total"] >= 2
    assert sum(entry["memory_statistics"].values()) == len(nodes)
    assert any("Pixel" in n["memory"] for n in nodes) and any("Alfama" in n["memory"] for n in nodes)
    queried = server.ok(
        "/product/get_all", {**body, "user_id": "caller", "mem_cube_ids": ["cube1"], "search_query": "cat"}
    )
    assert any("Pixel" in n["memory"] for n in queried["data"][0]["memories"][0]["nodes"])
    assert server.ok("/product/get_all", {**body, "memory_type": "act_mem"})["data"] == []


def test_delete_memory_removes_it_from_search(server: Server) -> None:
    server.add(add_body(PETS, "cube1"))
    ids = server.memory_ids("cat Pixel vacuum", "cube1")
    assert ids
    gone = next(iter(ids))
    body = {"writable_cube_ids": ["cube2"], "memory_ids": [gone], "file_ids": None, "filter": None}
    data = server.ok("/product/delete_memory", body)["data"]  # another cube: not its memory
    assert data["deleted"] == [] and data["not_found"] == [gone]
    data = server.ok("/product/delete_memory", {**body, "writable_cube_ids": ["cube1"]})["data"]
    assert data["status"] == "success" and data["deleted"] == [gone]
    assert gone not in server.memory_ids("cat Pixel vacuum", "cube1")
    # by filter, inside the cube
    data = server.ok("/product/delete_memory", {**body, "memory_ids": None, "filter": {"kind": "raw"}})
    assert gone not in data["data"]["deleted"]
    resp = server.post("/product/delete_memory", {**body, "filter": {"kind": "raw"}})
    assert resp.status_code == 422 and "exactly one" in resp.json()["message"], resp.text


def test_feedback_and_chat_without_an_llm_answer_503(server: Server) -> None:
    """The session's shared API has no LLM: a JSON error saying what to configure, never a 500."""
    feedback = {
        "user_id": "caller",
        "session_id": "default_session",
        "task_id": None,
        "history": None,
        "retrieved_memory_ids": None,
        "feedback_content": "I moved to Porto last month.",
        "feedback_time": None,
        "writable_cube_ids": ["cube1"],
        "async_mode": "async",
        "corrected_answer": False,
        "info": None,
        "mem_cube_id": None,
    }
    for path, body in (("/product/feedback", feedback), ("/product/chat/complete", chat_body("cube1", "Hello?"))):
        resp = server.post(path, body)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json()["code"] == 50301 and "no LLM configured" in resp.json()["message"]
    resp = server.post("/product/chat/complete", chat_body("cube1", "Hello?", writable_cube_ids=["cube2"]))
    assert resp.status_code == 422 and "one cube" in resp.json()["message"]


def test_scheduler_routes_answer_under_memos_paths(server: Server) -> None:
    task_id = server.ok("/product/add", add_body(PETS, "cube1"), 202)["task_id"]
    resp = requests.post(
        f"{server.base}/product/scheduler/wait?user_name=cube1&timeout_seconds=120",
        headers={"Authorization": server.headers["Authorization"]},
        timeout=TIMEOUT_S,
    )
    assert resp.status_code == 200 and resp.json()["message"] == "idle", resp.text
    server.wait_done(task_id)
    status = requests.get(f"{server.base}/product/scheduler/status?user_id=cube1", headers=server.headers, timeout=30)
    assert status.status_code == 200 and status.json()["data"]["running_tasks"] == 0, status.text


# ---------------------------------------------------------------- the mapping alone (no services)


def test_mapping_onto_our_models() -> None:
    add = ProductAddRequest.model_validate(add_body(TRIP, "c1", session_id="s", custom_tags=["x"], source="web"))
    assert add.to_add() == {
        "user_id": "c1",
        "conversation_id": "s",
        "messages": TRIP,
        "async_mode": "async",
        "tags": ["x"],
        "info": {"memos_user_id": "caller"},
        "source": "web",
    }
    search = ProductSearchRequest.model_validate(search_body("q", ["a", "b", "a"], session_id="s", top_k=3))
    assert search.cubes() == ["a", "b"]
    mapped = search.to_search("b")
    assert (mapped["user_id"], mapped["conversation_id"], mapped["top_k"]) == ("b", "s", 3)
    chat = ProductChatRequest.model_validate(chat_body("c1", "q", base_prompt="Be brief.", system_prompt=None))
    assert chat.to_chat()["system_prompt"] == "Be brief." and chat.to_chat()["user_id"] == "c1"
    assert chat.ignored() == ["threshold"]  # MemOS's 0.5 given, not applied; mode "fast" is what we do


# ---------------------------------------------------------------- with a model: the session's LLM stack (fake LLM)


@pytest.fixture(scope="module")
def llm_app(llm_stack: Settings) -> Iterator[Flask]:
    """The app in process over the session's LLM stack (as test_memos_assist.py), not a server of its own."""
    from api import create_app

    app = create_app(llm_stack)
    yield app
    app.extensions["memos_celery"].close()


def test_chat_complete_and_feedback_with_a_model(
    llm_app: Flask, fake_llm: FakeLLM, tenant: tuple[uuid.UUID, str]
) -> None:
    """chat/complete answers from the cube's memories (references in MemOS's format) and, MemOS's default, adds
    the exchange to the cube; a feedback is accepted (202) and applied by the memreader."""
    api, auth = llm_app.test_client(), {"Authorization": f"Token {tenant[1]}"}
    fake_llm.script(defaults={"facts": NO_FACTS, "preferences": NO_PREFS, "chat": {"content": "In Alfama."}})

    def done(task_id: str) -> None:
        deadline = time.monotonic() + 90
        while (status := api.post("/get/status", headers=auth, json={"task_id": task_id}).get_json())["data"][
            "status"
        ] not in ("done", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["data"]["status"] == "done", status

    added = api.post("/product/add", headers=auth, json=add_body(TRIP, "cube1", session_id="trip"))
    assert added.status_code == 202, added.get_data(as_text=True)
    done(added.get_json()["task_id"])
    resp = api.post("/product/chat/complete", headers=auth, json=chat_body("cube1", "Where will I stay?"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()
    assert out["code"] == 200 and out["data"]["response"] == "In Alfama."
    refs = out["data"]["references"]
    assert refs and any("Alfama" in r["memory"] for r in refs) and refs[0]["metadata"]["user_id"] == "cube1"
    assert out["data"]["add"]["success"] is True  # add_message_on_answer: MemOS's default true
    done(out["data"]["add"]["task_id"])
    fake_llm.script()
    fb = api.post(
        "/product/feedback",
        headers=auth,
        json={
            "user_id": "caller",
            "writable_cube_ids": ["cube1"],
            "feedback_content": "I moved to Porto.",
            "history": None,
            "session_id": "trip",
            "info": {"agent_id": "a1"},
        },
    )
    assert fb.status_code == 202, fb.get_data(as_text=True)
    assert fb.get_json()["code"] == 200 and fb.get_json()["detail"]["ignored"] == []
    done(fb.get_json()["task_id"])
