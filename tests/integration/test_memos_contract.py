"""The MemOS client's contract (../shared/MEMOS_API_CONTRACT.md), call by call, over real HTTP.

Every request here is built the way MemOS's own Python client builds it: every key it sends, the ones its caller
did not set as JSON null, posted with ``data=json.dumps(body)``, ``Content-Type: application/json`` and
``Authorization: Token <key>``. Every answer must be a 2xx whose body the client's response model accepts
(``tests/memos_client_models.py``): if it did not, the client would send the same request again, twice.

The API is a real gunicorn process on the session's database, queues and workers (``workers`` fixture), as in
test_schemathesis.py; each test gets its own tenant, so the data of one test never meets another's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import requests
from live_api import run_api
from memos_client_models import (
    AddResponse,
    ChatResponse,
    DeleteResponse,
    FeedbackResponse,
    GetMemoryResponse,
    GetMessagesResponse,
    RawResponse,
    SearchResponse,
    TaskStatusEnvelope,
    UpdateResponse,
)
from pydantic import BaseModel
from sqlalchemy import func, select, update

from fakes.llm import FakeLLM
from fakes.reranker import FakeReranker
from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import AuditLog, Ingest, Memory, Message

pytestmark = pytest.mark.integration

M = TypeVar("M", bound=BaseModel)
# Generous: no assertion here is about speed, and an update embeds in the API process, whose first one loads the
# embedding model (tens of seconds on 2 busy cores).
REQUEST_TIMEOUT_S = 300

TRIP = [
    {"role": "user", "content": "I am planning a trip to Lisbon in May and want to see the old tram lines."},
    {"role": "assistant", "content": "Tram 28 crosses the old town; ride it early in the morning."},
    {"role": "user", "content": "I will stay in Alfama, near the castle."},
    {"role": "assistant", "content": "Alfama is hilly, so bring comfortable shoes."},
]
PETS = [
    {"role": "user", "content": "My grey cat Pixel hates the vacuum cleaner."},
    {"role": "assistant", "content": "Many cats do; try running it while Pixel is in another room."},
    {"role": "user", "content": "Pixel also loves sleeping on the radiator."},
]
WORK = [
    {"role": "user", "content": "I switched jobs and now write Rust for a robotics startup."},
    {"role": "assistant", "content": "Congratulations! Robotics and Rust go well together."},
]


# ---------------------------------------------------------------- the client's requests


def add_body(
    messages: list[dict[str, Any]],
    user_id: str,
    conversation_id: str,
    info: dict[str, Any] | None = None,
    source: str | None = None,
    app_id: str | None = None,
    agent_id: str | None = None,
    allow_public: bool = False,
    allow_knowledgebase_ids: list[str] | None = None,
    allow_memory_view: bool = False,
    tags: list[str] | None = None,
    async_mode: bool = True,
) -> dict[str, Any]:
    """add_message's payload: every key, the caller's defaults included."""
    return {
        "messages": messages,
        "user_id": user_id,
        "conversation_id": conversation_id,
        "info": info,
        "source": source,
        "app_id": app_id,
        "agent_id": agent_id,
        "allow_public": allow_public,
        "allow_knowledgebase_ids": allow_knowledgebase_ids,
        "allow_memory_view": allow_memory_view,
        "tags": tags,
        "async_mode": async_mode,
    }


def search_body(query: str, user_id: str, conversation_id: str | None, **given: Any) -> dict[str, Any]:
    """search_memory's payload with the client's defaults (limits 6, include_preference true, context_format
    "memory"); the fields without a documented default are sent as null."""
    body: dict[str, Any] = {
        "query": query,
        "user_id": user_id,
        "conversation_id": conversation_id,
        "agent_id": None,
        "memory_limit_number": 6,
        "include_preference": True,
        "knowledgebase_ids": None,
        "filter": None,
        "preference_limit_number": 6,
        "tool_memory_limit_number": 6,
        "relativity": None,
        "include_skill": False,
        "skill_limit_number": None,
        "include_memory_view": False,
        "context_format": "memory",
        "source": None,
        "include_tool_memory": False,
    }
    body.update(given)
    return body


def get_memory_body(user_id: str, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": user_id,
        "include_preference": True,
        "agent_id": None,
        "include_tool_memory": False,
        "include_memory_view": False,
        "filter": None,
        "page": 1,
        "size": 10,
    }
    body.update(given)
    return body


def get_message_body(user_id: str, conversation_id: str | None, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "conversation_limit_number": 6,
        "message_limit_number": 6,
        "source": None,
    }
    body.update(given)
    return body


def update_body(
    memory_id: str, content: str | None = None, title: str | None = None, status: str | None = None
) -> dict[str, Any]:
    """update_memory's payload: no user_id, the key alone says whose memory it may be."""
    return {"memory_id": memory_id, "content": content, "title": title, "status": status}


# ---------------------------------------------------------------- HTTP, as the client does it


class Api:
    """One tenant's client: the MemOS client's headers and body encoding."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.headers = {"Content-Type": "application/json", "Authorization": f"Token {key}"}

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(
            f"{self.base}{path}",
            data=json.dumps(body),
            headers={**self.headers, **(headers or {})},
            timeout=REQUEST_TIMEOUT_S,
        )

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base}{path}", headers=self.headers, timeout=REQUEST_TIMEOUT_S)

    def ok(self, path: str, body: dict[str, Any], model: type[M], headers: dict[str, str] | None = None) -> M:
        """A 2xx whose body the client's model accepts (what the client needs to not retry)."""
        resp = self.post(path, body, headers)
        return parse(resp, model)

    def add(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        out = self.ok("/add/message", body, AddResponse, headers)
        assert out.data.success is True
        return out.model_dump()["data"]  # type: ignore[no-any-return]

    def wait_done(self, task_ids: list[str], timeout: float = 120.0) -> None:
        """Poll /get/status until every ingest finished (a bounded wait, not a timing assertion)."""
        for task_id in task_ids:
            final = wait_for(lambda t=task_id: self._finished(t), f"ingest {task_id} to finish", timeout)
            assert final == "done", final

    def _finished(self, task_id: str) -> str | None:
        status = self.ok("/get/status", {"task_id": task_id}, TaskStatusEnvelope).data.status
        return status if status in ("done", "failed") else None

    def memories(self, user_id: str, **given: Any) -> list[dict[str, Any]]:
        out = self.ok("/get/memory", get_memory_body(user_id, size=200, **given), GetMemoryResponse)
        return [m.model_dump() for m in out.data.memory_detail_list]

    def search_ids(self, user_id: str, query: str, **given: Any) -> set[str]:
        body = search_body(query, user_id, None, memory_limit_number=50, **given)
        out = self.ok("/search/memory", body, SearchResponse)
        return {str(m.model_dump()["id"]) for m in out.data.memory_detail_list}


def parse(resp: requests.Response, model: type[M]) -> M:
    assert 200 <= resp.status_code < 300, f"{resp.status_code} {resp.text[:2000]}"
    return model.model_validate(resp.json())


T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def base_url(workers: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # No per-key rate limit: the module sends many requests per tenant within a minute.
    cfg = workers.with_overrides(rate_limit_per_min=0)
    with run_api(cfg, log=tmp_path_factory.mktemp("contract") / "api.log") as base:
        yield base


def new_tenant(settings: Settings) -> tuple[uuid.UUID, str]:
    with session_scope(settings) as s:
        return tenants.create_api_key(s, f"contract-{uuid.uuid4().hex[:10]}", "contract")


@pytest.fixture
def api(base_url: str, tenant: tuple[uuid.UUID, str]) -> Api:
    return Api(base_url, tenant[1])


@pytest.fixture
def seeded(api: Api) -> dict[str, str]:
    """Three conversations of two users, processed: u1/trip (agent a1, tagged travel, info.scene=chat),
    u1/pets (agent a2), u2/work. Returns their task ids."""
    tasks = {
        "trip": api.add(
            add_body(TRIP, "u1", "trip", agent_id="a1", app_id="app1", tags=["travel"], info={"scene": "chat"})
        )["task_id"],
        "pets": api.add(add_body(PETS, "u1", "pets", agent_id="a2"))["task_id"],
        "work": api.add(add_body(WORK, "u2", "work"))["task_id"],
    }
    api.wait_done(list(tasks.values()))
    return tasks


def counts(settings: Settings, tenant_id: uuid.UUID, user_id: str, conversation_id: str) -> tuple[int, int, int]:
    """(ingests, messages, raw memories) of one conversation."""
    with session_scope(settings) as s:
        scope = (Ingest.tenant_id == tenant_id, Ingest.user_id == user_id, Ingest.conversation_id == conversation_id)
        ingests = s.execute(select(func.count()).select_from(Ingest).where(*scope)).scalar_one()
        messages = s.execute(
            select(func.count())
            .select_from(Message)
            .where(
                Message.tenant_id == tenant_id,
                Message.user_id == user_id,
                Message.conversation_id == conversation_id,
            )
        ).scalar_one()
        raw = s.execute(
            select(func.count())
            .select_from(Memory)
            .where(
                Memory.tenant_id == tenant_id,
                Memory.user_id == user_id,
                Memory.conversation_id == conversation_id,
                Memory.kind == "raw",
            )
        ).scalar_one()
        return int(ingests), int(messages), int(raw)


# ---------------------------------------------------------------- add_message


def test_add_message_exactly_as_the_client_sends_it(
    api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    """Nulls for info, source, app_id, agent_id, allow_knowledgebase_ids and tags mean "not given"; the answer
    has success, task_id and status; the conversation is stored once."""
    data = api.add(add_body(TRIP, "u1", "c1"))
    assert data["status"] == "accepted" and data["task_id"]
    assert data["ignored"] == []  # the client's defaults ask for nothing we do not do
    assert data["duplicate"] is False
    assert counts(settings, tenant[0], "u1", "c1")[:2] == (1, len(TRIP))


def test_add_message_with_every_field_set(api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]) -> None:
    """Fields we do not implement (public memories, writing into knowledge bases, memory views) are accepted and
    reported in data.ignored, never applied (a named base must exist); the ones we do are stored with the ingest.
    async_mode false waits for the chain."""
    kb_id = api.post("/create/knowledgebase", {"knowledgebase_name": "kb1", "knowledgebase_description": None}).json()
    body = add_body(
        TRIP,
        "u1",
        "c1",
        info={"scene": "chat", "biz_id": "b1"},
        source="web",
        app_id="app1",
        agent_id="a1",
        allow_public=True,
        allow_knowledgebase_ids=[kb_id["data"]["id"]],
        allow_memory_view=True,
        tags=["travel"],
        async_mode=False,
    )
    data = api.add(body)
    assert set(data["ignored"]) == {"allow_public", "allow_knowledgebase_ids", "allow_memory_view"}
    assert data["status"] == "done"  # sync: the whole chain ran before the answer
    assert data["memory_detail_list"]
    with session_scope(settings) as s:
        ingest = s.execute(select(Ingest).where(Ingest.tenant_id == tenant[0])).scalar_one()
        assert ingest.request == {
            "agent_id": "a1",
            "app_id": "app1",
            "source": "web",
            "tags": ["travel"],
            "info": {"scene": "chat", "biz_id": "b1"},
        }


def test_add_reports_keys_it_does_not_know(api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]) -> None:
    """Other MemOS client releases send other keys: an add takes them (it does not fail the client's call) and says
    it did not apply them; a key it knows under another name (asyncMode) is applied."""
    body = {**add_body(WORK, "u1", "c1"), "bogus": 1, "allow_public": None}
    del body["async_mode"]
    data = api.add({**body, "asyncMode": False})
    assert data["ignored"] == ["bogus"]
    assert data["status"] == "done"  # asyncMode false: sync
    assert counts(settings, tenant[0], "u1", "c1")[:2] == (1, len(WORK))


def test_the_seed_snippet_add_then_search(api: Api) -> None:
    """The README's requests snippet: add, wait, search, all with data=json.dumps and the Token header."""
    task = api.add(add_body(PETS, "u1", "c1"))["task_id"]
    api.wait_done([task])
    out = api.ok("/search/memory", search_body("What is the name of my cat?", "u1", "c1"), SearchResponse)
    assert any("Pixel" in str(m.model_dump()["memory_value"]) for m in out.data.memory_detail_list)


# ---------------------------------------------------------------- retries: one add, however often it is sent


@pytest.mark.parametrize("variant", ["no-ids", "client-ids", "idempotency-key"])
def test_three_identical_adds_in_sequence_are_one_ingest(
    api: Api, settings: Settings, tenant: tuple[uuid.UUID, str], variant: str
) -> None:
    """The client's own retry pattern: the same body again at once, 3 attempts in all."""
    messages = [{**m, "id": f"m{i}"} for i, m in enumerate(TRIP)] if variant == "client-ids" else TRIP
    headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"} if variant == "idempotency-key" else None
    answers = [api.add(add_body(messages, "u1", "c1"), headers) for _ in range(3)]
    assert len({a["task_id"] for a in answers}) == 1
    assert len({a["ingest_id"] for a in answers}) == 1
    assert [a["duplicate"] for a in answers] == [False, True, True]
    api.wait_done([answers[0]["task_id"]])
    ingests, messages_stored, raw = counts(settings, tenant[0], "u1", "c1")
    assert (ingests, messages_stored) == (1, len(TRIP))
    assert raw == len(TRIP) - 2  # the 3-turn windows of one copy of the conversation


def test_three_identical_adds_at_once_are_one_ingest(
    api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    """Three threads release the same add together: one is accepted, the others answer with its task_id."""
    body = add_body(PETS, "u1", "c1")
    barrier = threading.Barrier(3)

    def send(_: int) -> requests.Response:
        barrier.wait()
        return api.post("/add/message", body)

    with ThreadPoolExecutor(3) as pool:
        answers = [parse(r, AddResponse).model_dump()["data"] for r in pool.map(send, range(3))]
    assert len({a["task_id"] for a in answers}) == 1
    assert sorted(a["duplicate"] for a in answers) == [False, True, True]
    assert counts(settings, tenant[0], "u1", "c1")[:2] == (1, len(PETS))


def test_a_retry_is_recognised_only_for_the_same_add(
    api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    """Another user, another conversation or other messages are another add, and so is the same add once the
    window (MEMOS_ADD_DEDUP_WINDOW_S) has passed since the first: a user may say the same thing twice."""
    first = api.add(add_body(WORK, "u1", "c1"))
    assert api.add(add_body(WORK, "u2", "c1"))["task_id"] != first["task_id"]
    assert api.add(add_body(WORK, "u1", "c2"))["task_id"] != first["task_id"]
    assert api.add(add_body(WORK[:1], "u1", "c1"))["task_id"] != first["task_id"]
    with session_scope(settings) as s:  # the first add, as if accepted 11 minutes ago
        s.execute(
            update(Ingest)
            .where(Ingest.task_id == first["task_id"])
            .values(created_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 11))
        )
    later = api.add(add_body(WORK, "u1", "c1"))
    assert later["task_id"] != first["task_id"] and later["duplicate"] is False
    assert counts(settings, tenant[0], "u1", "c1")[0] == 3


# ---------------------------------------------------------------- search_memory


@pytest.mark.parametrize("nulls", [False, True], ids=["client-defaults", "all-optional-null"])
def test_search_memory_exactly_as_the_client_sends_it(api: Api, seeded: dict[str, str], nulls: bool) -> None:
    body = search_body("Where will I stay in Lisbon?", "u1", "trip")
    if nulls:
        body = {k: (v if k in ("query", "user_id") else None) for k, v in body.items()}
    out = api.ok("/search/memory", body, SearchResponse)
    assert isinstance(out.data.preference_note, str)
    items = [m.model_dump() for m in out.data.memory_detail_list]
    assert items and "Alfama" in items[0]["memory_value"]
    assert len(items) <= 6  # memory_limit_number's default
    assert out.model_dump()["data"]["ignored"] == []


def test_search_reports_what_it_ignored(api: Api, seeded: dict[str, str]) -> None:
    body = search_body(
        "Lisbon",
        "u1",
        None,
        include_tool_memory=True,
        include_skill=True,
        include_memory_view=True,
    )
    data = api.ok("/search/memory", body, SearchResponse).model_dump()["data"]
    assert set(data["ignored"]) == {"include_skill", "include_memory_view"}  # tool memory is served (none here)
    assert data["tool_memory_detail_list"] == [] and data["skill_detail_list"] == []


def test_search_filter_object(api: Api, seeded: dict[str, str]) -> None:
    """MemOS's filter: conversation, memory type, tags (of the add), agent, info fields, creation time, and/or."""
    q = "cat tram Lisbon Pixel radiator"
    both = api.search_ids("u1", q)
    trip = api.search_ids("u1", q, filter={"conversation_id": "trip"})
    pets = api.search_ids("u1", q, filter={"and": [{"agent_id": "a2"}, {"create_time": {"gte": "2000-01-01"}}]})
    assert trip and pets and not trip & pets and trip | pets == both
    assert api.search_ids("u1", q, filter={"tags": {"contains": "travel"}}) == trip
    assert api.search_ids("u1", q, filter={"scene": "chat"}) == trip
    assert api.search_ids("u1", q, filter={"or": [{"conversation_id": "trip"}, {"agent_id": "a2"}]}) == both
    assert api.search_ids("u1", q, filter={"memory_type": "LongTermMemory"}) == set()
    assert api.search_ids("u1", q, filter={"create_time": {"lt": "2000-01-01"}}) == set()
    assert api.search_ids("u1", q, filter={"create_time": {"lte": "2999-12-31T23:59:59Z"}}) == both


def test_search_relativity_is_a_minimum_score(api: Api, seeded: dict[str, str]) -> None:
    body = search_body("Where will I stay in Lisbon?", "u1", None, relativity=0.0)
    everything = [m.model_dump() for m in api.ok("/search/memory", body, SearchResponse).data.memory_detail_list]
    assert len(everything) >= 2
    cut = sorted(m["relativity"] for m in everything)[-1]  # only the best one reaches it
    body["relativity"] = cut
    best = [m.model_dump() for m in api.ok("/search/memory", body, SearchResponse).data.memory_detail_list]
    assert best and all(m["relativity"] >= cut for m in best)
    assert {m["id"] for m in best} < {m["id"] for m in everything}


# ---------------------------------------------------------------- get_memory, get_memory_by_id


def test_get_memory_exactly_as_the_client_sends_it(api: Api, seeded: dict[str, str]) -> None:
    out = api.ok("/get/memory", get_memory_body("u1"), GetMemoryResponse)
    raw_windows = (len(TRIP) - 2) + (len(PETS) - 2)
    assert (out.data.total, out.data.size, out.data.current) == (raw_windows, 10, 1)
    assert out.data.pages == 1 and len(out.data.memory_detail_list) == raw_windows
    assert out.data.preference_detail_list == []  # asked for; none without an LLM
    page2 = api.ok("/get/memory", get_memory_body("u1", page=2, size=2), GetMemoryResponse)
    assert (page2.data.current, page2.data.size, page2.data.pages) == (2, 2, 2)


def test_get_memory_filter_and_agent(api: Api, seeded: dict[str, str]) -> None:
    trip = {m["id"] for m in api.memories("u1", filter={"conversation_id": "trip"})}
    assert trip and {m["id"] for m in api.memories("u1", agent_id="a1")} == trip
    assert {m["id"] for m in api.memories("u1", filter={"tags": {"contains": "travel"}})} == trip
    assert api.memories("u1", filter={"and": [{"agent_id": "a1"}, {"agent_id": "a2"}]}) == []


def test_get_memory_by_id(api: Api, base_url: str, settings: Settings, seeded: dict[str, str]) -> None:
    memory = api.memories("u1")[0]
    out = parse(api.get(f"/get/memory/{memory['id']}"), RawResponse).model_dump()["data"]
    assert out["id"] == memory["id"] and out["memory_value"] == memory["memory_value"]
    assert api.get(f"/get/memory/{uuid.uuid4()}").status_code == 404
    other = Api(base_url, new_tenant(settings)[1])
    assert other.get(f"/get/memory/{memory['id']}").status_code == 404


# ---------------------------------------------------------------- get_message, get_task_status


def test_get_message_exactly_as_the_client_sends_it(api: Api, seeded: dict[str, str]) -> None:
    out = api.ok("/get/message", get_message_body("u1", "trip"), GetMessagesResponse)
    got = [m.model_dump() for m in out.data.message_detail_list]
    assert [(m["role"], m["content"]) for m in got] == [(m["role"], m["content"]) for m in TRIP]
    last = api.ok("/get/message", get_message_body("u1", "trip", message_limit_number=2), GetMessagesResponse)
    assert [m.model_dump()["content"] for m in last.data.message_detail_list] == [m["content"] for m in TRIP[-2:]]


def test_get_message_without_a_conversation(api: Api, seeded: dict[str, str]) -> None:
    """conversation_id null: the user's latest conversations (conversation_limit_number), the latest
    message_limit_number messages of each."""
    out = api.ok("/get/message", get_message_body("u1", None), GetMessagesResponse)
    got = [m.model_dump() for m in out.data.message_detail_list]
    assert {m["conversation_id"] for m in got} == {"trip", "pets"}
    assert len(got) == len(TRIP) + len(PETS)
    one = api.ok(
        "/get/message",
        get_message_body("u1", None, conversation_limit_number=1, message_limit_number=1),
        GetMessagesResponse,
    )
    assert [m.model_dump()["content"] for m in one.data.message_detail_list] == [PETS[-1]["content"]]


def test_get_task_status_exactly_as_the_client_sends_it(api: Api) -> None:
    task_id = api.add(add_body(WORK, "u1", "c1"))["task_id"]
    out = api.ok("/get/status", {"task_id": task_id}, TaskStatusEnvelope)
    assert out.data.task_id == task_id and out.data.status in ("accepted", "processing", "done")


# ---------------------------------------------------------------- update_memory


def test_update_memory_exactly_as_the_client_sends_it(api: Api, seeded: dict[str, str]) -> None:
    """No user_id: the key's tenant is the scope. content is the new value; the old version is archived."""
    old = api.memories("u1", filter={"conversation_id": "trip"})[0]
    out = api.ok(
        "/update/memory", update_body(old["id"], content="I will stay in Belém, not Alfama."), UpdateResponse
    ).model_dump()["data"]
    assert out["success"] is True and out["memory_value"] == "I will stay in Belém, not Alfama."
    assert out["id"] != old["id"] and out["ignored"] == []
    live = {m["id"]: m for m in api.memories("u1")}
    assert old["id"] not in live and live[out["id"]]["memory_value"] == out["memory_value"]
    assert old["id"] in {m["id"] for m in api.memories("u1", status="archived")}


def test_update_memory_title_is_the_key(api: Api, seeded: dict[str, str]) -> None:
    old = api.memories("u1")[0]
    out = api.ok("/update/memory", update_body(old["id"], title="lodging"), UpdateResponse).model_dump()["data"]
    assert out["memory_key"] == "lodging" and out["memory_value"] == old["memory_value"]


def test_update_memory_status_retires_it(api: Api, seeded: dict[str, str]) -> None:
    first, second = api.memories("u1")[:2]
    out = api.ok("/update/memory", update_body(first["id"], status="archived"), UpdateResponse).model_dump()["data"]
    assert out["success"] is True and out["id"] == first["id"] and out["status"] == "archived"
    api.ok("/update/memory", update_body(second["id"], status="deleted"), UpdateResponse)
    assert {first["id"], second["id"]}.isdisjoint(m["id"] for m in api.memories("u1"))
    assert first["id"] in {m["id"] for m in api.memories("u1", status="archived")}
    assert second["id"] in {m["id"] for m in api.memories("u1", status="deleted")}
    resp = api.post("/update/memory", update_body(second["id"], content="back from the dead"))
    assert resp.status_code == 404 and resp.json()["message"].startswith("memory_id")


# ---------------------------------------------------------------- delete_memory, every form


def test_delete_by_memory_ids_alone(
    api: Api, seeded: dict[str, str], settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    gone = api.memories("u1", filter={"conversation_id": "trip"})[0]["id"]
    out = api.ok("/delete/memory", {"memory_ids": [gone]}, DeleteResponse).model_dump()["data"]
    assert out["success"] is True and out["deleted"] == [gone]
    assert gone not in {m["id"] for m in api.memories("u1")}
    assert gone not in api.search_ids("u1", "Lisbon Alfama tram castle")  # at once: no wait for the index
    with session_scope(settings) as s:
        assert (
            s.execute(
                select(func.count())
                .select_from(AuditLog)
                .where(
                    AuditLog.tenant_id == tenant[0],
                    AuditLog.action == "delete_memory",
                    AuditLog.target_id == gone,
                )
            ).scalar_one()
            == 1
        )


@pytest.mark.parametrize(
    ("body", "removed"),
    [
        ({"user_id": "u1"}, {"trip", "pets"}),
        ({"agent_id": "a1"}, {"trip"}),
        ({"user_id": "u1", "conversation_id": "pets"}, {"pets"}),
        ({"filter": {"conversation_id": "work"}}, {"work"}),
        ({"filter": {"or": [{"tags": {"contains": "travel"}}, {"conversation_id": "work"}]}}, {"trip", "work"}),
        ({"user_id": "u1", "memory_type": "RawMemory"}, {"trip", "pets"}),
        ({"user_id": "u1", "memory_type": "LongTermMemory"}, set()),
    ],
    ids=["user", "agent", "conversation", "filter", "filter-or", "user-raw", "user-other-type"],
)
def test_delete_by_scope(api: Api, seeded: dict[str, str], body: dict[str, Any], removed: set[str]) -> None:
    """Soft delete of everything in the scope, gone from get and search at once; nothing outside it."""
    before = {u: api.memories(u) for u in ("u1", "u2")}
    out = api.ok("/delete/memory", body, DeleteResponse).model_dump()["data"]
    assert out["success"] is True
    expect_gone = {m["id"] for ms in before.values() for m in ms if m["conversation_id"] in removed}
    assert set(out["deleted"]) == expect_gone
    for user, ms in before.items():
        left = {m["id"] for m in api.memories(user)}
        assert left == {m["id"] for m in ms} - expect_gone
        assert not api.search_ids(user, "Lisbon tram Pixel cat Rust robotics") & expect_gone


def test_delete_by_agent_reaches_updated_versions(api: Api, seeded: dict[str, str]) -> None:
    """A version written by /update/memory still belongs to its first version's add (and so to its agent)."""
    old = api.memories("u1", agent_id="a1")[0]
    new = api.ok("/update/memory", update_body(old["id"], content="Belém, not Alfama."), UpdateResponse)
    new_id = new.model_dump()["data"]["id"]
    assert new_id in {m["id"] for m in api.memories("u1", agent_id="a1")}
    out = api.ok("/delete/memory", {"agent_id": "a1"}, DeleteResponse).model_dump()["data"]
    assert {new_id, old["id"]} <= set(out["deleted"])  # the archived version goes too: no readable history
    assert api.memories("u1", agent_id="a1") == [] and api.memories("u1", status="archived") == []


# ---------------------------------------------------------------- the key's tenant is the scope


def test_id_only_update_and_delete_stay_in_the_keys_tenant(
    api: Api, base_url: str, settings: Settings, seeded: dict[str, str]
) -> None:
    mine = api.memories("u1")[0]
    thief = Api(base_url, new_tenant(settings)[1])
    resp = thief.post("/update/memory", update_body(mine["id"], content="overwritten"))
    assert resp.status_code == 404 and resp.json()["message"].startswith("memory_id")
    out = thief.ok("/delete/memory", {"memory_ids": [mine["id"]]}, DeleteResponse).model_dump()["data"]
    assert out["deleted"] == [] and out["not_found"] == [mine["id"]]
    for body in ({"user_id": "u1"}, {"filter": {"conversation_id": mine["conversation_id"]}}):
        assert thief.ok("/delete/memory", body, DeleteResponse).model_dump()["data"]["deleted"] == []
    still = {m["id"]: m for m in api.memories("u1")}
    assert still[mine["id"]]["memory_value"] == mine["memory_value"]
    assert still[mine["id"]]["status"] == "activated"


# ---------------------------------------------------------------- real errors stay errors


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/add/message", add_body([{"role": "user", "content": ""}], "u1", "c1"), "messages[0].content"),
        ("/add/message", {**add_body(TRIP, "u1", "c1"), "tags": "travel"}, "tags"),
        ("/add/message", {**add_body(TRIP, "u1", "c1"), "allow_public": [1]}, "allow_public"),
        ("/get/memory", {**get_memory_body("u1"), "bogus": 1}, "bogus"),
        ("/search/memory", search_body("q", "u1", None, relativity="high"), "relativity"),
        ("/search/memory", search_body("q", "u1", None, filter="trip"), "filter"),
        (
            "/search/memory",
            search_body("q", "u1", None, filter={"create_time": {"gte": "someday"}}),
            "filter.create_time.gte",
        ),
        ("/search/memory", search_body("q", "u1", None, filter={"and": {"conversation_id": "x"}}), "filter.and"),
        ("/get/memory", get_memory_body("u1", size=0), "size"),
        ("/get/message", get_message_body("u1", "c1", message_limit_number=-1), "message_limit_number"),
        ("/update/memory", update_body("not-a-uuid", content="x"), "memory_id"),
        ("/update/memory", update_body(str(uuid.uuid4())), "body"),
        ("/delete/memory", {"memory_ids": None}, "body"),
        ("/delete/memory", {"filter": {}}, "filter"),
    ],
    ids=[
        "empty-content",
        "tags-not-list",
        "bool-not-bool",
        "unknown-key",
        "relativity-type",
        "filter-type",
        "filter-date",
        "filter-and-not-list",
        "size-0",
        "limit-negative",
        "bad-id",
        "update-nothing",
        "delete-nothing",
        "delete-empty-filter",
    ],
)
def test_real_errors_are_422_naming_the_field(api: Api, path: str, body: dict[str, Any], field: str) -> None:
    resp = api.post(path, body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["message"].split(":", 1)[0] == field, resp.json()


# ---------------------------------------------------------------- MemOS server routes: the scheduler


def test_scheduler_wait_blocks_until_the_users_ingests_are_done(api: Api) -> None:
    tasks = [api.add(add_body(m, "u1", f"c{i}"))["task_id"] for i, m in enumerate((TRIP, PETS, WORK))]
    resp = api.post("/product/scheduler/wait?user_name=u1&timeout_seconds=120", {})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["timed_out"] is False and data["running_tasks"] == 0 and data["user_name"] == "u1"
    for task_id in tasks:
        assert api.ok("/get/status", {"task_id": task_id}, TaskStatusEnvelope).data.status == "done"
    status = api.post("/product/scheduler/status", {"user_id": "u1"})
    assert status.status_code == 200 and status.json()["data"]["running_tasks"] == 0
    # Newer MemOS clients ask about one task in the query string: its status comes back beside the counts.
    one = api.get(f"/product/scheduler/status?user_name=u1&task_id={tasks[0]}")
    assert one.status_code == 200, one.text
    assert one.json()["data"]["task_id"] == tasks[0] and one.json()["data"]["status"] == "done"
    missing = api.get("/product/scheduler/status?task_id=no-such-task")
    assert missing.status_code == 404 and "task_id" in missing.json()["message"]


def test_scheduler_wait_times_out_while_work_is_pending(
    api: Api, settings: Settings, tenant: tuple[uuid.UUID, str]
) -> None:
    """An ingest that cannot finish (we hold its row as if a stage were still running) keeps the user busy."""
    task_id = api.add(add_body(WORK, "u1", "c1"))["task_id"]
    api.wait_done([task_id])
    held = update(Ingest).where(Ingest.task_id == task_id)
    with session_scope(settings) as s:
        s.execute(held.values(status="processing"))
    try:
        resp = api.post("/product/scheduler/wait", {"user_id": "u1", "timeout_seconds": 0.2})
        assert resp.status_code == 200, resp.text
        assert resp.json()["message"] == "timeout"
        data = resp.json()["data"]
        assert data["timed_out"] is True and data["running_tasks"] == 1
        status = api.get("/product/scheduler/status?user_name=u1").json()["data"]
        assert status["running_tasks"] == 1 and [t["task_id"] for t in status["tasks"]] == [task_id]
        other_user = api.post("/product/scheduler/wait", {"user_id": "u2", "timeout_seconds": 0.2}).json()
        assert other_user["message"] == "idle" and other_user["data"]["timed_out"] is False
    finally:  # the sweeper must not find an ingest stuck in "processing" and re-run its stages
        with session_scope(settings) as s:
            s.execute(held.values(status="done"))


# ---------------------------------------------------------------- chat, add_feedback, extract_memory, rerank
# These need a model: a second API over the session's LLM stack (fakes/llm.py), with the rerank server of
# fakes/reranker.py configured. Without an LLM (the module's first API) they answer a 503 the client can read.


def chat_body(user_id: str, conversation_id: str, query: str, **given: Any) -> dict[str, Any]:
    """chat's payload: every key, the client's defaults included (max_tokens 8192, limits 6)."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "query": query,
        "internet_search": False,
        "force_stop": False,
        "use_mem_os_cube": False,
        "source": None,
        "system_prompt": None,
        "model_name": None,
        "knowledgebase_ids": None,
        "filter": None,
        "add_message_on_answer": False,
        "app_id": None,
        "agent_id": None,
        "async_mode": True,
        "tags": None,
        "info": None,
        "allow_public": False,
        "max_tokens": 8192,
        "temperature": None,
        "top_p": None,
        "include_preference": True,
        "preference_limit_number": 6,
        "memory_limit_number": 6,
        "stream": False,
    }
    body.update(given)
    return body


def feedback_body(user_id: str, conversation_id: str, feedback_content: str, **given: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "feedback_content": feedback_content,
        "user_id": user_id,
        "conversation_id": conversation_id,
        "agent_id": None,
        "app_id": None,
        "feedback_time": None,
        "allow_public": False,
        "allow_knowledgebase_ids": None,
    }
    body.update(given)
    return body


@pytest.fixture(scope="module")
def llm_base_url(llm_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with FakeReranker() as reranker:
        cfg = llm_stack.with_overrides(
            rate_limit_per_min=0, mos_reranker_backend="http_bge", mos_reranker_url=reranker.url("/v1/rerank")
        )
        with run_api(cfg, log=tmp_path_factory.mktemp("contract-llm") / "api.log") as base:
            yield base


@pytest.fixture
def llm_api(llm_base_url: str, tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM) -> Api:
    if not fake_llm.alive():
        fake_llm.restart()
    fake_llm.script()  # a capable model (see fakes/llm.py), whatever an earlier test scripted
    return Api(llm_base_url, tenant[1])


def test_chat_exactly_as_the_client_sends_it(llm_api: Api) -> None:
    llm_api.wait_done([llm_api.add(add_body(TRIP, "u1", "trip"))["task_id"]])
    out = llm_api.ok("/chat", chat_body("u1", "trip", "Where will I stay in Lisbon?"), ChatResponse)
    assert out.data.response.startswith("From what I remember:")
    data = out.model_dump()["data"]
    assert data["ignored"] == [] and 0 < len(data["memory_detail_list"]) <= 6 and "add" not in data
    written = llm_api.ok(
        "/chat", chat_body("u1", "trip", "And the tram?", add_message_on_answer=True), ChatResponse
    ).model_dump()["data"]
    llm_api.wait_done([written["add"]["task_id"]])
    msgs = llm_api.ok("/get/message", get_message_body("u1", "trip", message_limit_number=2), GetMessagesResponse)
    assert [m.model_dump()["content"] for m in msgs.data.message_detail_list] == ["And the tram?", written["response"]]


def test_chat_stream_sends_data_lines(llm_api: Api) -> None:
    resp = llm_api.post("/chat", chat_body("u1", "c1", "Hello?", stream=True))
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in resp.text.split("\n") if line]
    assert lines and all(line.startswith("data: ") for line in lines)
    kinds = [json.loads(line[6:])["type"] for line in lines]
    assert kinds[0] == "reference" and kinds[-1] == "end" and "text" in kinds


def test_add_feedback_exactly_as_the_client_sends_it(llm_api: Api) -> None:
    """Answered like an add (success, task_id, status; the client's retries are one feedback), and its task_id
    reads in get_task_status until the memreader has applied it."""
    body = feedback_body("u1", "c1", "I moved from Lisbon to Porto last week.")
    answers = [llm_api.ok("/add/feedback", body, FeedbackResponse).model_dump()["data"] for _ in range(3)]
    assert len({a["task_id"] for a in answers}) == 1 and answers[0]["ignored"] == []
    llm_api.wait_done([answers[0]["task_id"]])
    out = llm_api.ok("/get/status", {"task_id": answers[0]["task_id"]}, TaskStatusEnvelope)
    assert out.data.status == "done" and out.model_dump()["data"]["stages"]["feedback"]["counts"]["add"] == 1


def test_extract_memory_and_rerank_exactly_as_the_client_sends_them(llm_api: Api) -> None:
    body = {"messages": PETS, "extraction_types": None, "model": None}
    data = llm_api.ok("/extract/memory", body, RawResponse).model_dump()["data"]
    assert len(data["memory_detail_list"]) == 2 and data["preference_detail_list"]
    docs = [m["content"] for m in TRIP]
    body = {"query": "Which tram crosses the old town?", "documents": docs, "model": None, "top_n": None}
    ranked = llm_api.ok("/rerank", body, RawResponse).model_dump()["data"]["results"]
    assert sorted(r["index"] for r in ranked) == list(range(len(docs))) and ranked[0]["index"] == 1


def test_model_calls_without_a_model_answer_503(api: Api) -> None:
    """The module's first API has no LLM and no reranker: a JSON error saying what to configure, never a 500."""
    for path, body in (
        ("/chat", chat_body("u1", "c1", "Hello?")),
        ("/add/feedback", feedback_body("u1", "c1", "I moved.")),
        ("/extract/memory", {"messages": PETS, "extraction_types": None, "model": None}),
        ("/rerank", {"query": "q", "documents": ["a"], "model": None, "top_n": None}),
    ):
        resp = api.post(path, body)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json()["code"] != 0 and "configured" in resp.json()["message"]
