"""Issue 3 end to end: the MemReader and preference stages through the real queues, against a scripted
OpenAI-compatible server running as a separate process (fakes/llm.py), talked to by the real ``openai``
client inside real Celery workers.

The session's LLM stack (``llm_stack`` in conftest.py: chunker, indexer, search, memreader, preference workers and
the relay) runs on its own queue prefix and BM25 directory, with the LLM configured and short timeouts, so it never
meets the session's LLM-less workers. Every wait polls ``/get/status`` against a deadline.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from cli import demo
from fakes.llm import FakeLLM, answer
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.ingest import lifecycle
from memos_pipeline.ingest.deadletter import list_dead, replay
from memos_pipeline.schemas import AddRequest
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Extraction, Memory, MemoryEdge, Preference

pytestmark = pytest.mark.integration

TERMINAL = {"done", "skipped", "failed", "dead_lettered"}
LLM_STAGES = ("memreader", "preference")

# ------------------------------------------------------------------------------------------------ the seed

SEED_IDS = [f"seed-{i}" for i in range(len(demo.MESSAGES))]
SEED = [{**m, "id": mid} for m, mid in zip(demo.MESSAGES, SEED_IDS, strict=True)]
SEED_FACTS = {
    "memories": [
        {
            "memory_key": "暑假广州旅游",
            "memory_value": "用户计划暑假去广州旅游",
            "memory_type": "UserMemory",
            "tags": ["旅游", "广州", "暑假"],
            "sources": ["m0"],
        },
        {
            "memory_key": "选择七天酒店",
            "memory_value": "用户在广州旅游住宿时选择了七天酒店",
            "memory_type": "UserMemory",
            "tags": ["酒店", "七天", "住宿"],
            "sources": ["m1", "m2"],
        },
    ]
}
SEED_FACT_SOURCES = {"用户计划暑假去广州旅游": ["seed-0"], "用户在广州旅游住宿时选择了七天酒店": ["seed-1", "seed-2"]}
SEED_PREFS = {
    "explicit_preferences": [{"preference": "用户选择了七天酒店", "sources": ["m2"]}],
    "implicit_preferences": [
        {
            "preference": "用户偏好经济型连锁酒店",
            "reasoning": "助手列出七天、全季、希尔顿后，用户选了其中最经济的七天，说明用户看重性价比、偏好经济型连锁酒店",
            "sources": ["m1", "m2"],
        }
    ],
}
ENGLISH_FACTS = {
    "memories": [
        {
            "memory_key": "Summer trip",
            "memory_value": "The user plans a summer trip to Guangzhou",
            "memory_type": "UserMemory",
            "tags": ["travel"],
            "sources": ["m0"],
        },
    ]
}
ENGLISH_PREFS = {"explicit_preferences": [{"preference": "The user chose Hotel 7 Days", "sources": ["m2"]}]}
EMPTY_PREFS = {"explicit_preferences": [], "implicit_preferences": []}


def seed_script(
    llm: FakeLLM,
    facts: list[dict[str, Any]] | None = None,
    prefs: list[dict[str, Any]] | None = None,
    **defaults: dict[str, Any],
) -> None:
    """The seed answered by a capable model (by content: the conversation mentions 七天), after any steps."""
    llm.script(
        routes={"facts": facts or [], "preferences": prefs or []},
        defaults={"facts": answer({"memories": []}), "preferences": answer(EMPTY_PREFS), **defaults},
        content_by_match=[
            {"route": "facts", "match": "七天", **answer(SEED_FACTS)},
            {"route": "preferences", "match": "七天", **answer(SEED_PREFS)},
        ],
    )


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _llm_alive(fake_llm: FakeLLM) -> None:
    """A test that failed mid-outage must not leave the next one without a model: same port, fresh process."""
    if not fake_llm.alive():
        fake_llm.restart()


@pytest.fixture(scope="module")
def llm_app(llm_stack: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(llm_stack)
    yield app
    app.extensions["memos_celery"].close()  # its broker connection pool


@pytest.fixture
def api(llm_app: Flask) -> FlaskClient:
    return llm_app.test_client()


# ------------------------------------------------------------------------------------------------ helpers


def add(
    api: FlaskClient,
    auth: dict[str, str],
    messages: list[dict[str, Any]],
    user: str = demo.USER_ID,
    conv: str = demo.CONVERSATION_ID,
) -> dict[str, Any]:
    r = api.post("/add/message", headers=auth, json={"user_id": user, "conversation_id": conv, "messages": messages})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["data"]  # type: ignore[no-any-return]


def get_status(api: FlaskClient, auth: dict[str, str], task_id: str) -> dict[str, Any]:
    r = api.post("/get/status", headers=auth, json={"task_id": task_id})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]  # type: ignore[no-any-return]


def all_terminal(st: dict[str, Any]) -> bool:
    return all(v.get("status") in TERMINAL for v in st["stages"].values())


def wait_until(
    api: FlaskClient, auth: dict[str, str], task_ids: list[str], pred: Any = all_terminal, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Poll /get/status until ``pred`` holds for every ingest; fail naming the stages if the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        sts = [get_status(api, auth, t) for t in task_ids]
        if all(pred(s) for s in sts):
            return sts
        if time.monotonic() > deadline:
            summary = [
                {k: (v.get("status"), v.get("error")) for k, v in s["stages"].items()} for s in sts if not pred(s)
            ]
            pytest.fail(f"not reached within {timeout}s: {summary}")
        time.sleep(0.1)


def search(
    api: FlaskClient, auth: dict[str, str], query: str, user: str = demo.USER_ID, **extra: Any
) -> dict[str, Any]:
    r = api.post("/search/memory", headers=auth, json={"user_id": user, "query": query, **extra})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]  # type: ignore[no-any-return]


def facts_of(cfg: Settings, tenant_id: uuid.UUID, user: str, status: str | None = "activated") -> list[Memory]:
    with session_scope(cfg) as s:
        q = select(Memory).where(Memory.tenant_id == tenant_id, Memory.user_id == user, Memory.kind == "fact")
        if status is not None:
            q = q.where(Memory.status == status)
        return list(s.execute(q.order_by(Memory.created_at)).scalars())


def prefs_of(cfg: Settings, tenant_id: uuid.UUID, user: str) -> list[Preference]:
    with session_scope(cfg) as s:
        return list(
            s.execute(select(Preference).where(Preference.tenant_id == tenant_id, Preference.user_id == user)).scalars()
        )


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


# ------------------------------------------------------------------------------------------------ (a) the seed


def test_seed_conversation_gives_facts_and_preferences_end_to_end(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(fake_llm)
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    assert st["status"] == "done", st["stages"]
    for stage in LLM_STAGES:
        entry = st["stages"][stage]
        assert entry["status"] == "done", entry
        usage = entry["usage"]
        assert usage["calls"] == 1 and usage["repairs"] == 0 and usage["retries"] == 0, usage
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
        assert entry["work_ms"] >= 0
    assert st["stages"]["memreader"]["counts"]["new"] == 2
    assert st["stages"]["preference"]["counts"]["new"] == 2
    assert fake_llm.calls()["counts"] == {"facts": 1, "preferences": 1}  # fast adder: no merge calls

    data = search(api, auth, demo.QUERY, conversation_id=demo.CONVERSATION_ID, top_k=10)
    facts = [m for m in data["memory_detail_list"] if m["kind"] == "fact"]
    assert {f["memory_value"]: f["sources"] for f in facts} == SEED_FACT_SOURCES
    for f in facts:
        assert f["memory_key"] and f["tags"] and f["memory_type"] == "UserMemory"
        assert f["conversation_id"] == demo.CONVERSATION_ID and f["relativity"] is not None
        assert f["info"]["extracted_by"] == "fake-model"
    by_value = {f["memory_value"]: f for f in facts}
    assert by_value["用户在广州旅游住宿时选择了七天酒店"]["tags"] == ["酒店", "七天", "住宿"]
    assert any(m["kind"] == "raw" and "七天" in m["memory_value"] for m in data["memory_detail_list"])

    prefs = data["preference_detail_list"]
    explicit = [p for p in prefs if p["preference_type"] == "explicit_preference"]
    implicit = [p for p in prefs if p["preference_type"] == "implicit_preference"]
    assert [p["preference"] for p in explicit] == ["用户选择了七天酒店"]
    assert explicit[0]["sources"] == ["seed-2"] and explicit[0]["conversation_id"] == demo.CONVERSATION_ID
    assert [p["preference"] for p in implicit] == ["用户偏好经济型连锁酒店"]
    assert "七天" in implicit[0]["reasoning"] and implicit[0]["sources"] == ["seed-1", "seed-2"]
    assert data["preference_note"]

    # Facts point back at the raw windows they came from (raw-text retrieval).
    with session_scope(llm_stack) as s:
        edges = s.execute(
            select(func.count())
            .select_from(MemoryEdge)
            .where(MemoryEdge.kind == "derived_from", MemoryEdge.src_id.in_([uuid.UUID(f["id"]) for f in facts]))
        ).scalar_one()
    assert edges >= 2


def test_parallel_stage_marks_are_not_lost(settings: Settings, tenant: tuple[uuid.UUID, str]) -> None:
    """memreader and preference (and the indexer) mark their stages on one ingest row at the same time. A worker
    that loaded the ingest before another committed its mark must not write the stale stages back: the other
    stage's ``running`` (with ``started_at`` and ``attempts``, hence ``ms`` when done) would be lost."""
    with session_scope(settings) as s:
        acc = ingests.accept_ingest(
            s,
            tenant[0],
            AddRequest(user_id="race_user", messages=[{"role": "user", "content": "hi"}]),
            trace_id="t",
            stages=lifecycle.initial_stages(llm=True, scheduler=True, preference=True),
            task_name="x",
        )
    with session_scope(settings) as s_pref:
        loaded = ingests.get_ingest(s_pref, acc.ingest_id)  # the preference worker holds its ingest...
        with session_scope(settings) as s_mr:  # ...the memreader worker marks its stage meanwhile...
            lifecycle.mark_stage(s_mr, acc.ingest_id, "memreader", "running")
        lifecycle.mark_stage(s_pref, acc.ingest_id, "preference", "running")  # ...then the preference worker marks
        assert loaded is not None
    with session_scope(settings) as s:
        stages = ingests.get_ingest(s, acc.ingest_id).stages  # type: ignore[union-attr]
    assert stages["preference"]["status"] == "running"
    assert stages["memreader"]["status"] == "running" and "started_at" in stages["memreader"], stages["memreader"]


# ------------------------------------------------------------------------------------------------ (b) malformed JSON


def test_malformed_json_is_fixed_by_the_repair_round(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(fake_llm, facts=[{"content": "not json {"}, answer(SEED_FACTS)])
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    mr = st["stages"]["memreader"]
    assert mr["status"] == "done", mr
    assert mr["usage"]["repairs"] == 1 and mr["usage"]["calls"] == 2, mr["usage"]
    assert st["stages"]["preference"]["usage"]["repairs"] == 0
    facts_calls = [c for c in fake_llm.calls()["calls"] if c["route"] == "facts"]
    assert len(facts_calls) == 2
    # The repair round shows the model its own answer and the error.
    assert facts_calls[1]["n_messages"] == 4 and "Your answer was invalid" in facts_calls[1]["last"]
    assert {f.memory_value for f in facts_of(llm_stack, tenant[0], demo.USER_ID)} == set(SEED_FACT_SOURCES)


def test_malformed_json_twice_fails_the_stage_and_keeps_raw_memories(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(fake_llm, facts=[{"content": "not json {"}, {"content": '{"memories": [{"memory_key": 1}]}'}])
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    mr = st["stages"]["memreader"]
    assert mr["status"] == "failed", mr
    assert "invalid LLM output" in mr["error"] and "memories.0" in mr["error"], mr["error"]
    assert st["status"] == "failed"
    assert st["stages"]["chunker"]["status"] == "done" and st["stages"]["preference"]["status"] == "done"
    assert fake_llm.calls()["counts"]["facts"] == 2  # not retried: a wrong answer is not transient
    assert facts_of(llm_stack, tenant[0], demo.USER_ID, status=None) == []
    # The raw memories keep serving search.
    data = search(api, auth, "七天 酒店", top_k=5)
    raws = [m for m in data["memory_detail_list"] if m["kind"] == "raw"]
    assert raws and any("我选七天" in m["memory_value"] for m in raws)
    assert set().union(*(m["sources"] for m in raws)) == set(SEED_IDS)


# ------------------------------------------------------------------------------------------------ (c) 429 / 5xx


def test_rate_limit_and_server_error_are_retried(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(
        fake_llm,
        facts=[{"status": 429}, answer(SEED_FACTS)],
        prefs=[{"status": 500}, {"status": 503}, answer(SEED_PREFS)],
    )
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    mr, pr = st["stages"]["memreader"], st["stages"]["preference"]
    assert mr["status"] == "done" and pr["status"] == "done", st["stages"]
    assert mr["usage"]["retries"] == 1 and mr["usage"]["calls"] == 1, mr["usage"]
    assert pr["usage"]["retries"] == 2 and pr["usage"]["calls"] == 1, pr["usage"]
    statuses = [(c["route"], c["status"]) for c in fake_llm.calls()["calls"]]
    assert statuses.count(("facts", 429)) == 1 and statuses.count(("preferences", 500)) == 1
    assert len(facts_of(llm_stack, tenant[0], demo.USER_ID)) == 2
    assert len(prefs_of(llm_stack, tenant[0], demo.USER_ID)) == 2


# ------------------------------------------------------------------------------------------------ (d) slow


def test_slow_response_past_the_timeout_is_retried(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    assert llm_stack.llm_timeout_s == 2.0
    seed_script(fake_llm, facts=[{"delay": 3.0, **answer(SEED_FACTS)}, answer(SEED_FACTS)])
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    mr = st["stages"]["memreader"]
    assert mr["status"] == "done", mr
    assert mr["usage"]["retries"] == 1 and mr["usage"]["calls"] == 1, mr["usage"]
    assert mr["work_ms"] >= 2000  # it did wait for the timeout
    assert len(facts_of(llm_stack, tenant[0], demo.USER_ID)) == 2
    # The server saw the client hang up on the slow answer.
    deadline = time.monotonic() + 5
    while True:
        first = next(c for c in fake_llm.calls()["calls"] if c["route"] == "facts")
        if first["outcome"] != "answered" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert first["delay"] == 3.0 and first["outcome"] == "client_gone"


def test_llm_failing_for_good_ends_dead_lettered_with_the_reason(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    fake_llm.script(
        defaults={"facts": {"status": 500}},
        content_by_match=[{"route": "preferences", "match": "七天", **answer(SEED_PREFS)}],
    )
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]], timeout=120)
    mr = st["stages"]["memreader"]
    assert mr["status"] == "dead_lettered", mr
    assert "Error code: 500" in mr["error"], mr
    assert st["status"] == "failed" and st["stages"]["preference"]["status"] == "done"
    dead = [d for d in list_dead(llm_stack) if d.get("args") and d["args"][0].get("ingest_id") == acc["ingest_id"]]
    assert len(dead) == 1 and dead[0]["task"] == "memos.memreader.extract", dead
    assert "Error code: 500" in dead[0]["reason"] and dead[0]["retries"] >= 1  # retried with backoff first
    # Raw memories are untouched by the dead LLM.
    data = search(api, auth, "七天", top_k=5, filters={"kind": "raw"})
    assert any("我选七天" in m["memory_value"] for m in data["memory_detail_list"])


# ------------------------------------------------------------------------------------------------ (e) empty


def test_empty_extraction_is_done_with_nothing_written(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    fake_llm.script(defaults={"facts": answer({"memories": []}), "preferences": answer(EMPTY_PREFS)})
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    assert st["status"] == "done"
    for stage in LLM_STAGES:
        entry = st["stages"][stage]
        assert entry["status"] == "done" and entry["usage"]["calls"] == 1, entry
        assert entry["counts"] == {"new": 0, "duplicate": 0, "update": 0, "conflict": 0}
    assert facts_of(llm_stack, tenant[0], demo.USER_ID, status=None) == []
    assert prefs_of(llm_stack, tenant[0], demo.USER_ID) == []
    data = search(api, auth, demo.QUERY, top_k=10)
    assert data["memory_detail_list"] and {m["kind"] for m in data["memory_detail_list"]} == {"raw"}
    assert data["preference_detail_list"] == [] and data["preference_note"] == ""


# ------------------------------------------------------------------------------------------------ (f) language


def test_wrong_language_is_repaired(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(
        fake_llm, facts=[answer(ENGLISH_FACTS), answer(SEED_FACTS)], prefs=[answer(ENGLISH_PREFS), answer(SEED_PREFS)]
    )
    acc = add(api, auth, SEED)
    (st,) = wait_until(api, auth, [acc["task_id"]])
    for stage in LLM_STAGES:
        entry = st["stages"][stage]
        assert entry["status"] == "done" and entry["usage"]["repairs"] == 1 and entry["usage"]["calls"] == 2, entry
    repairs = [c for c in fake_llm.calls()["calls"] if c["n_messages"] == 4]
    assert len(repairs) == 2 and all("Chinese" in c["last"] for c in repairs), repairs
    values = [f.memory_value for f in facts_of(llm_stack, tenant[0], demo.USER_ID)]
    assert sorted(values) == sorted(SEED_FACT_SOURCES)
    assert not any("user" in v.lower() for v in values)
    assert {p.preference for p in prefs_of(llm_stack, tenant[0], demo.USER_ID)} == {
        "用户选择了七天酒店",
        "用户偏好经济型连锁酒店",
    }


# ------------------------------------------------------------------------------------------------ (g) idempotent adds


def test_same_conversation_twice_creates_no_duplicates(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    seed_script(fake_llm)
    # The same messages in three conversations (an identical add in the same conversation is one ingest: the
    # accept step answers a retry with the first add's task), so three ingests whose LLM stages extract the same
    # facts of one user. Two at once (their LLM stages race under the per-user lock), then a third after them.
    convs = [f"{demo.CONVERSATION_ID}-{i}" for i in range(3)]
    first = [add(api, auth, SEED, conv=convs[0])["task_id"], add(api, auth, SEED, conv=convs[1])["task_id"]]
    assert add(api, auth, SEED, conv=convs[0])["task_id"] == first[0]  # a retry: the same ingest
    sts = wait_until(api, auth, first)
    third = add(api, auth, SEED, conv=convs[2])["task_id"]
    sts += wait_until(api, auth, [third])
    assert all(s["status"] == "done" for s in sts), [s["stages"] for s in sts]

    facts = facts_of(llm_stack, tenant[0], demo.USER_ID, status=None)
    assert sorted(f.memory_value for f in facts) == sorted(SEED_FACT_SOURCES)
    assert all(f.status == "activated" for f in facts)
    prefs = prefs_of(llm_stack, tenant[0], demo.USER_ID)
    assert sorted((p.preference_type, p.preference) for p in prefs) == [
        ("explicit_preference", "用户选择了七天酒店"),
        ("implicit_preference", "用户偏好经济型连锁酒店"),
    ]
    for stage in LLM_STAGES:
        counts = [s["stages"][stage]["counts"] for s in sts]
        assert sum(c["new"] for c in counts) == 2, counts
        assert sum(c["duplicate"] for c in counts) == 4, counts
    # Each ingest still has its own raw windows: only derived memories are deduplicated.
    with session_scope(llm_stack) as s:
        raw_ingests = s.execute(
            select(func.count(func.distinct(Memory.ingest_id))).where(
                Memory.tenant_id == tenant[0], Memory.user_id == demo.USER_ID, Memory.kind == "raw"
            )
        ).scalar_one()
    assert raw_ingests == 3


# ------------------------------------------------------------------------------------------------ fine adder


def test_fine_adder_versions_a_conflicting_fact_and_keeps_its_history(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    """MEMOS_MEMORY_ADDER_MODE=fine, run in this process (the same code the memreader worker runs): the LLM's
    "conflict" writes version 2 and archives version 1 with a merged_from edge; "duplicate" writes nothing; a
    replayed stage asks the model nothing and writes nothing."""
    from memos_pipeline.embedders import get_embedder
    from memos_pipeline.llm import LLMClient
    from memos_pipeline.stages.facts import run_memreader

    cfg = llm_stack.with_overrides(memory_adder_mode="fine")
    user = "fine_user"

    def accepted(content: str, cid: str) -> uuid.UUID:
        req = AddRequest(
            user_id=user, conversation_id="fine_conv", messages=[{"role": "user", "content": content, "id": cid}]
        )
        with session_scope(cfg) as s:
            return ingests.accept_ingest(
                s,
                tenant[0],
                req,
                trace_id="t",
                task_name="x",
                stages=lifecycle.initial_stages(llm=True, scheduler=True, preference=True),
            ).ingest_id

    def one_fact(value: str) -> dict[str, str]:
        return answer(
            {
                "memories": [
                    {
                        "memory_key": "居住城市",
                        "memory_value": value,
                        "memory_type": "UserMemory",
                        "tags": ["居住"],
                        "sources": ["m0"],
                    }
                ]
            }
        )

    merged = "用户现在住在上海（此前住在北京）"
    fake_llm.script(
        routes={
            "merge": [
                answer({"action": "conflict", "target": "e0", "merged_value": merged}),
                answer({"action": "duplicate", "target": "e0", "merged_value": None}),
            ]
        },
        content_by_match=[
            {"route": "facts", "match": "北京", **one_fact("用户住在北京")},
            {"route": "facts", "match": "搬到", **one_fact("用户搬到了上海")},
            {"route": "facts", "match": "还住", **one_fact("用户住在上海")},
        ],
    )
    embedder = get_embedder(cfg)
    first, second, third = (
        accepted("我住在北京", "f-0"),
        accepted("我上个月搬到上海了", "f-1"),
        accepted("我还住在上海", "f-2"),
    )
    r1 = run_memreader(cfg, embedder, LLMClient(cfg), first)
    r2 = run_memreader(cfg, embedder, LLMClient(cfg), second)
    assert r1 is not None and r2 is not None
    assert r1.counts["new"] == 1 and r2.counts["conflict"] == 1, (r1.counts, r2.counts)
    (merge_call,) = [c for c in fake_llm.calls()["calls"] if c["route"] == "merge"]
    assert merge_call["user"] == "NEW: 用户搬到了上海\nEXISTING:\n[e0] 用户住在北京"

    (old,) = facts_of(cfg, tenant[0], user, status="archived")
    (new,) = facts_of(cfg, tenant[0], user)
    assert (old.memory_value, old.version) == ("用户住在北京", 1)
    assert (new.memory_value, new.version, new.sources) == (merged, 2, ["f-1"])
    assert new.info["merged_from"] == str(old.id) and new.info["reason"] == "conflict"
    assert r2.archived_ids == [old.id] and r2.new_ids == [new.id]
    with session_scope(cfg) as s:
        edges = s.execute(
            select(MemoryEdge.src_id, MemoryEdge.dst_id).where(
                MemoryEdge.kind == "merged_from", MemoryEdge.dst_id == old.id
            )
        ).all()
    assert [tuple(e) for e in edges] == [(new.id, old.id)]
    r = api.post("/get/memory/history", headers=auth, json={"user_id": user, "memory_id": str(old.id)})
    assert r.status_code == 200, r.get_json()
    history = r.get_json()["data"]["history"]
    assert [(h["memory_value"], h["version"], h["status"]) for h in history] == [
        (merged, 2, "activated"),
        ("用户住在北京", 1, "archived"),
    ]

    # The model calls it a duplicate: nothing is written.
    r3 = run_memreader(cfg, embedder, LLMClient(cfg), third)
    assert r3 is not None and r3.counts["duplicate"] == 1 and r3.new_ids == []
    assert len(facts_of(cfg, tenant[0], user, status=None)) == 2

    # A redelivered stage replays its stored extraction: no model call, no second version.
    calls = fake_llm.calls()["total"]
    r2_again = run_memreader(cfg, embedder, LLMClient(cfg), second)
    assert r2_again is not None and r2_again.new_ids == [] and r2_again.usage.calls == 0
    assert fake_llm.calls()["total"] == calls
    assert len(facts_of(cfg, tenant[0], user, status=None)) == 2


# ------------------------------------------------------------------------------------------------ (h) outage

PLACES = [
    "Lisbon",
    "Kyoto",
    "Nairobi",
    "Oslo",
    "Lima",
    "Hanoi",
    "Tbilisi",
    "Quebec",
    "Perth",
    "Seville",
    "Bergen",
    "Cusco",
    "Porto",
    "Krakow",
    "Dakar",
    "Tallinn",
    "Valparaiso",
]
ACTIVITIES = [
    "went hiking",
    "learned pottery",
    "ran a half marathon",
    "tasted street food",
    "visited a museum",
    "sang karaoke",
    "rented a kayak",
    "took a cooking class",
    "watched an opera",
    "played chess",
    "went birdwatching",
    "bought vinyl records",
    "climbed a volcano",
]
PEOPLE = [
    "my sister Ana",
    "my colleague Raj",
    "my neighbour Li",
    "my dentist",
    "my old roommate",
    "my uncle Tom",
    "my daughter",
    "my chess club",
    "my manager Eva",
    "my cousin Omar",
    "my yoga teacher",
]
THINGS = ["the weather", "the trains", "the prices", "the noise", "the views", "the food", "the crowds"]


def token(i: int) -> str:
    """A made-up word unique to message i (letters only, so every analyzer keeps it whole)."""
    a, b, c = i // 676, (i // 26) % 26, i % 26
    return "zq" + "".join(chr(97 + d) for d in (a, b, c)) + "x"


def conversation(n: int, offset: int = 0) -> list[dict[str, Any]]:
    out = []
    for k in range(n):
        i = offset + k
        if i % 2 == 0:
            text = (
                f"Last week I {ACTIVITIES[i % 13]} in {PLACES[i % 17]} with {PEOPLE[i % 11]}; "
                f"note the code word {token(i)}."
            )
            out.append({"role": "user", "content": text, "id": f"msg-{i}"})
        else:
            text = f"Got it ({token(i)}). How was {THINGS[i % 7]} in {PLACES[(i * 5) % 17]}?"
            out.append({"role": "assistant", "content": text, "id": f"msg-{i}"})
    return out


def usage_numbers(sts: list[dict[str, Any]], n_messages: int) -> dict[str, Any]:
    calls = sum(s["stages"][st].get("usage", {}).get("calls", 0) for s in sts for st in LLM_STAGES)
    tokens = sum(
        s["stages"][st].get("usage", {}).get("prompt_tokens", 0)
        + s["stages"][st].get("usage", {}).get("completion_tokens", 0)
        for s in sts
        for st in LLM_STAGES
    )
    out: dict[str, Any] = {
        "messages": n_messages,
        "ingests": len(sts),
        "llm_calls_per_100_messages": round(calls * 100 / n_messages, 2),
        "llm_tokens_per_100_messages": round(tokens * 100 / n_messages, 1),
        "retries": sum(s["stages"][st].get("usage", {}).get("retries", 0) for s in sts for st in LLM_STAGES),
        "repairs": sum(s["stages"][st].get("usage", {}).get("repairs", 0) for s in sts for st in LLM_STAGES),
    }
    for st in LLM_STAGES:
        u = [s["stages"][st].get("usage", {}) for s in sts]
        out[f"{st}_calls_per_100_messages"] = round(sum(x.get("calls", 0) for x in u) * 100 / n_messages, 2)
        out[f"{st}_prompt_tokens_per_100_messages"] = round(
            sum(x.get("prompt_tokens", 0) for x in u) * 100 / n_messages
        )
        out[f"{st}_completion_tokens_per_100_messages"] = round(
            sum(x.get("completion_tokens", 0) for x in u) * 100 / n_messages
        )
        ms = [
            float(s["stages"][st]["ms"])
            for s in sts
            if s["stages"][st].get("status") == "done" and "ms" in s["stages"][st]
        ]
        work = [float(s["stages"][st]["work_ms"]) for s in sts if s["stages"][st].get("status") == "done"]
        out[f"{st}_ms_p50"], out[f"{st}_ms_p99"] = pct(ms, 50), pct(ms, 99)
        out[f"{st}_work_ms_p50"], out[f"{st}_work_ms_p99"] = pct(work, 50), pct(work, 99)
    return out


def report(name: str, numbers: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[{name}] {json.dumps(numbers)}")
    path = os.environ.get("MEMOS_LLM_NUMBERS_OUT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, **numbers}) + "\n")


def test_llm_outage_mid_ingest_keeps_raw_memories_and_writes_no_fact_twice(
    api: FlaskClient,
    auth: dict[str, str],
    tenant: tuple[uuid.UUID, str],
    fake_llm: FakeLLM,
    llm_stack: Settings,
    llm_app: Flask,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, conv, n, per_add = "outage_user", "outage_conv", 200, 50
    # A capable but slow model (0.5 s a call), so that the outage lands in the middle of the stages.
    fake_llm.script(defaults={"facts": {"auto": True, "delay": 0.5}, "preferences": {"auto": True, "delay": 0.5}})
    msgs = conversation(n)
    tasks = [add(api, auth, msgs[i : i + per_add], user, conv)["task_id"] for i in range(0, n, per_add)]

    # The server dies (SIGKILL: in-flight requests are cut) once the extraction is under way.
    deadline = time.monotonic() + 60
    while fake_llm.calls()["total"] < 4:
        assert time.monotonic() < deadline, "the LLM stages never called the model"
        time.sleep(0.05)
    fake_llm.kill()
    t_down = time.monotonic()
    sts = [get_status(api, auth, t) for t in tasks]
    unfinished = [s for s in sts for st in LLM_STAGES if s["stages"][st]["status"] not in TERMINAL]
    assert unfinished, "the outage came too late: every LLM stage had already finished"

    # While the model is down, every raw memory is stored and searchable (vector and BM25).
    sts = wait_until(
        api, auth, tasks, lambda s: all(s["stages"][x]["status"] == "done" for x in ("chunker", "indexer"))
    )
    raw_ready_s = time.monotonic() - t_down
    windows = sum(s["stages"]["chunker"]["windows"] for s in sts)
    with session_scope(llm_stack) as s:
        raw = s.execute(
            select(func.count())
            .select_from(Memory)
            .where(
                Memory.tenant_id == tenant[0],
                Memory.user_id == user,
                Memory.kind == "raw",
                Memory.status == "activated",
            )
        ).scalar_one()
    assert raw == windows > 0

    def findable(i: int) -> bool:  # API threads, as gunicorn's gthread workers would run them
        query = f"code word {token(i)}" if i % 2 == 0 else token(i)
        data = search(llm_app.test_client(), auth, query, user, top_k=3, filters={"kind": "raw"})
        return any(token(i) in m["memory_value"] and f"msg-{i}" in m["sources"] for m in data["memory_detail_list"])

    t_search = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        missing = [i for i, ok in zip(range(n), pool.map(findable, range(n)), strict=True) if not ok]
    search_s = time.monotonic() - t_search
    assert missing == [], f"messages not found by their unique token while the LLM was down: {missing}"
    still_waiting = [
        s
        for s in (get_status(api, auth, t) for t in tasks)
        if any(s["stages"][x]["status"] not in TERMINAL for x in LLM_STAGES)
    ]
    down_s = time.monotonic() - t_down

    # The model comes back on the same port: each stage either finishes through its retries (backoff), or ran out
    # of retries while the model was down and is dead-lettered with the reason in /get/status.
    fake_llm.restart()
    sts = wait_until(api, auth, tasks, timeout=150)
    dead: dict[tuple[str, str], dict[str, Any]] = {}
    for s in sts:
        for st in LLM_STAGES:
            entry = s["stages"][st]
            assert entry["status"] in ("done", "dead_lettered"), entry
            if entry["status"] == "dead_lettered":
                assert "Error" in entry["error"], entry  # the reason, e.g. "...: Connection error."
                dead[s["ingest_id"], st] = entry
    done_by_retry = 2 * len(sts) - len(dead)
    retried = [s["stages"][st] for s in sts for st in LLM_STAGES if s["stages"][st].get("attempts", 0) > 1]
    if dead:
        # They are parked in the dead-letter queue with the same reason; replaying them finishes the work.
        letters = [
            d for d in list_dead(llm_stack) if d.get("args") and d["args"][0].get("ingest_id") in {i for i, _ in dead}
        ]
        assert sorted((d["args"][0]["ingest_id"], d["task"].split(".")[1]) for d in letters) == sorted(dead)
        assert all(d["reason"] for d in letters)
        sender = make_celery(llm_stack)
        try:
            replayed = sum(replay(llm_stack, sender, task_id=d["task_id"]) for d in letters)
        finally:
            sender.close()
        assert replayed == len(letters)
        sts = wait_until(
            api, auth, tasks, lambda s: all(s["stages"][x]["status"] == "done" for x in LLM_STAGES), timeout=90
        )
    assert all(s["status"] == "done" for s in sts), [s["stages"] for s in sts]
    assert fake_llm.calls()["total"] > 0  # the work resumed against the restarted server

    ingest_ids = [uuid.UUID(s["ingest_id"]) for s in sts]
    with session_scope(llm_stack) as s:
        scope = (Memory.tenant_id == tenant[0], Memory.user_id == user, Memory.kind == "fact")
        same_hash = s.execute(
            select(Memory.content_hash, func.count())
            .where(*scope, Memory.status == "activated")
            .group_by(Memory.content_hash)
            .having(func.count() > 1)
        ).all()
        same_key = s.execute(
            select(Memory.ingest_id, Memory.chunk_idx, func.count())
            .where(*scope)
            .group_by(Memory.ingest_id, Memory.chunk_idx)
            .having(func.count() > 1)
        ).all()
        facts = s.execute(select(Memory.memory_value, Memory.ingest_id, Memory.sources).where(*scope)).all()
        batches = s.execute(
            select(Extraction.ingest_id, Extraction.stage, func.count())
            .where(Extraction.ingest_id.in_(ingest_ids))
            .group_by(Extraction.ingest_id, Extraction.stage)
        ).all()
        prefs = s.execute(
            select(Preference.content_hash, func.count())
            .where(Preference.tenant_id == tenant[0], Preference.user_id == user)
            .group_by(Preference.content_hash)
        ).all()
    assert same_hash == [] and same_key == [], (same_hash, same_key)
    # One fact per user message (the scripted model's answer): none lost to the outage, none written twice.
    assert len({v for v, _, _ in facts}) == len(facts) == n // 2
    by_id = {m["id"]: m for m in msgs}
    for value, _, sources in facts:  # every fact is grounded in the message it cites
        assert len(sources) == 1 and value == f"The user said: {by_id[sources[0]]['content']}"
    for _, _, count in batches:
        assert count <= 3  # 50 messages in batches of 20: at most one stored output per batch
    assert all(c == 1 for _, c in prefs)

    numbers = usage_numbers(sts, n)
    numbers.update(
        down_s=round(down_s, 1),
        raw_ready_after_s=round(raw_ready_s, 1),
        searches_s=round(search_s, 1),
        stages_waiting_at_restart=sum(
            1 for x in still_waiting for st in LLM_STAGES if x["stages"][st]["status"] not in TERMINAL
        ),
        stages_retried=len(retried),
        stages_done_by_retry=done_by_retry,
        stages_dead_lettered_then_replayed=len(dead),
        facts=len(facts),
    )
    report("outage-200", numbers, capsys)


# ------------------------------------------------------------------------------------------------ cost


def test_cost_and_latency_per_100_messages(
    api: FlaskClient,
    auth: dict[str, str],
    tenant: tuple[uuid.UUID, str],
    fake_llm: FakeLLM,
    llm_stack: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The closing note's numbers: 200 messages in 10 adds of 20, a capable model answering at once."""
    fake_llm.script(defaults={"facts": {"auto": True}, "preferences": {"auto": True}})
    msgs = conversation(200, offset=1000)
    tasks = [add(api, auth, msgs[i : i + 20], "cost_user", "cost_conv")["task_id"] for i in range(0, 200, 20)]
    sts = wait_until(api, auth, tasks, timeout=120)
    assert all(s["status"] == "done" for s in sts), [s["stages"] for s in sts]
    numbers = usage_numbers(sts, 200)
    calls = fake_llm.calls()
    assert sum(s["stages"][st]["usage"]["calls"] for s in sts for st in LLM_STAGES) == calls["total"] == 20
    assert numbers["llm_calls_per_100_messages"] == 10.0
    numbers["facts"] = len(facts_of(llm_stack, tenant[0], "cost_user"))
    report("cost-200", numbers, capsys)
