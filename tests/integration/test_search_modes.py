"""Search modes fast / fine / mixture end to end: API -> search queue -> reranker queue -> a real rerank HTTP server.

The module runs its own stack (workers for chunker, indexer, search and reranker, and the relay) on its own queue
prefix and BM25 directory, with ``MOS_RERANKER_BACKEND=http_bge_strategy``, ``MOS_RERANKER_STRATEGY=single_turn``
against ``fakes/reranker.py`` (TEI ``/rerank``), and ``MIXTURE_DEADLINE_MS=500``.

The corpus is built so that the fast order and the reranker's order disagree: window A repeats the query's words
across its three turns (BM25 and the dense embedding rank it first) but none of its turns answers; window B has
one short turn that answers, between two long unrelated ones (the single_turn reranker ranks it first).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from cli.harness import running
from fakes.reranker import FakeReranker, relevance
from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES
from memos_pipeline.search.rerank import mixture_cache_key
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.chunking import turn_texts

pytestmark = pytest.mark.integration

DEADLINE_MS = 500  # the fine chain (search + rerank) must fit in it on 2 shared cores
# What the deadline cannot bound inside this process: the Flask test client, JSON, auth (a DB lookup), Redis GET.
# On 2 shared cores with other suites running, a generous margin; the mixture benchmark measures the real thing.
OVERHEAD_MS = 250
SLOW_S = 1.5
USER = "mix_user"
QUERY = "Which bike did Maria buy?"
WARMUP_QUERY = "tomatoes in the garden"

A_TURNS = [  # fast's favourite: every query word, repeated, but one per turn
    "Maria has been so stressed lately; Maria says work never ends for Maria.",
    "The bike shop downtown has a bike sale: every bike is half price, bike after bike.",
    "People buy and buy; buy now, they say.",
]
B_TURNS = [  # the reranker's favourite: one short turn answers, diluted by two long unrelated ones
    "The quarterly budget review covered the marketing spend, the new office lease in Porto, the hiring plan for "
    "the data team and the migration of the billing system to the new provider.",
    "In the end Maria decided to buy the green bike.",
    "Then we went through the travel policy, the expense reports from the conference in Berlin and the schedule "
    "for the security audit next quarter.",
]
DISTRACTORS = [
    ["I planted tomatoes and basil in the garden.", "Do they get enough sun?", "Six hours a day, more or less."],
    ["We booked a flight to Tokyo for April.", "Cherry blossom season!", "Exactly, and a ryokan for two nights."],
    ["My sister Ana adopted a grey cat.", "What is its name?", "Pixel, because it is tiny."],
]


# ---------------------------------------------------------------- fixtures: a stack of our own


@pytest.fixture(scope="module")
def reranker() -> Iterator[FakeReranker]:
    with FakeReranker() as fr:
        yield fr


@pytest.fixture(scope="module")
def cfg(settings: Settings, reranker: FakeReranker, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings.with_overrides(
        queue_prefix=f"mix{uuid.uuid4().hex[:8]}.",
        bm25_path=Path(tmp_path_factory.mktemp("bm25-mix")),
        mos_reranker_backend="http_bge_strategy",
        mos_reranker_url=reranker.url("/rerank"),
        mos_reranker_strategy="single_turn",
        mixture_deadline_ms=DEADLINE_MS,
        search_mode="fast",
    )


@pytest.fixture(scope="module")
def stack(cfg: Settings) -> Iterator[Settings]:
    assert "reranker" in CORE_QUEUES
    with running(cfg, CORE_QUEUES, relay=True):
        yield cfg


@pytest.fixture(scope="module")
def flask_app(stack: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(stack)
    yield app
    app.extensions["memos_celery"].close()


@pytest.fixture(scope="module")
def api(flask_app: Flask) -> FlaskClient:
    return flask_app.test_client()


@pytest.fixture(scope="module")
def mix_tenant(stack: Settings) -> tuple[uuid.UUID, dict[str, str]]:
    with session_scope(stack) as s:
        tenant_id, key = tenants.create_api_key(s, f"mix-{uuid.uuid4().hex[:10]}", "test_search_modes")
    return tenant_id, {"Authorization": f"Token {key}"}


@pytest.fixture(scope="module")
def corpus(api: FlaskClient, mix_tenant: tuple[uuid.UUID, dict[str, str]]) -> dict[str, str]:
    """The conversations, added synchronously (one window each); the ids of the windows A and B."""
    auth = mix_tenant[1]
    convs = {"conv-a": A_TURNS, "conv-b": B_TURNS} | {f"conv-d{i}": t for i, t in enumerate(DISTRACTORS)}
    ids: dict[str, str] = {}
    for conv, turns in convs.items():
        msgs = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t, "id": f"{conv}-{i}"}
            for i, t in enumerate(turns)
        ]
        resp = api.post(
            "/add/message",
            headers=auth,
            json={"user_id": USER, "conversation_id": conv, "messages": msgs, "async_mode": "sync"},
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)
        data = resp.get_json()["data"]
        assert data["status"] == "done", data
        (memory,) = data["memory_detail_list"]
        ids[conv] = memory["id"]
    # Warm every path once (model load in the search worker, BM25 reader, the reranker's HTTP session), unmeasured.
    # Its own query, so that a late warm-up rerank (a loaded machine) is not mistaken for a test's call.
    for mode in ("fast", "fine", "fast", "fine"):
        _search(api, auth, mode=mode, conversation_id="warmup", query=WARMUP_QUERY, timeout_ok=True)
    return ids


@pytest.fixture(autouse=True)
def _reranker_fast(reranker: FakeReranker) -> None:
    reranker.configure(delay_s=0.0, status=None, max_batch=None, reset=True)


# ---------------------------------------------------------------- helpers


def _search(api: FlaskClient, auth: dict[str, str], *, timeout_ok: bool = False, **body: Any) -> dict[str, Any]:
    """POST /search/memory; the response's ``data`` plus ``elapsed_ms`` (the whole in-process round trip)."""
    t0 = time.perf_counter()
    resp = api.post("/search/memory", headers=auth, json={"user_id": USER, "query": QUERY, "top_k": 5} | body)
    elapsed = (time.perf_counter() - t0) * 1000
    if timeout_ok and resp.status_code == 504:
        return {}
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data: dict[str, Any] = resp.get_json()["data"]
    data["elapsed_ms"] = elapsed
    return data


def _ids(data: dict[str, Any]) -> list[str]:
    return [m["id"] for m in data["memory_detail_list"]]


def _turn_score(window: str) -> float:
    """What the single_turn reranker gives a window: its best turn's relevance."""
    return max((relevance(QUERY, t) for t in turn_texts(window)), default=0.0)


def _redis(cfg: Settings) -> redis.Redis:
    return redis.Redis.from_url(cfg.redis_url)


def _wait_cached(cfg: Settings, key: str, timeout: float = 30.0) -> dict[str, Any]:
    """The late fine answer the reranker worker cached under ``key`` (a key no earlier search used)."""
    r = _redis(cfg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = r.get(key)
        if raw is not None:
            return json.loads(raw)  # type: ignore[no-any-return]
        time.sleep(0.05)
    pytest.fail(f"no late fine answer cached under {key} within {timeout}s")


# ---------------------------------------------------------------- the tests


def test_fast_mode_is_unchanged(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker
) -> None:
    data = _search(api, mix_tenant[1], mode="fast")
    assert data["search"] == {"mode": "fast", "reranked": False}
    ids = _ids(data)
    # The fast order: A (repeats the words) above B (answers in one line); no rerank scores, no reranker call.
    assert ids.index(corpus["conv-a"]) < ids.index(corpus["conv-b"]), data["memory_detail_list"]
    assert all("fast_relativity" not in m for m in data["memory_detail_list"])
    rel = [m["relativity"] for m in data["memory_detail_list"]]
    assert rel == sorted(rel, reverse=True)
    assert not [c for c in reranker.calls() if c["query"] == QUERY]
    # No mode in the body: SEARCH_MODE (fast here) decides.
    default = _search(api, mix_tenant[1])
    assert default["search"]["mode"] == "fast" and _ids(default) == ids


def test_fine_mode_returns_the_rerankers_order(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker
) -> None:
    fast = _search(api, mix_tenant[1], mode="fast")
    data = _search(api, mix_tenant[1], mode="fine")
    assert data["search"] == {"mode": "fine", "reranked": True}
    items = data["memory_detail_list"]
    assert items[0]["id"] == corpus["conv-b"] != _ids(fast)[0]
    assert _ids(data).index(corpus["conv-b"]) < _ids(data).index(corpus["conv-a"])
    # relativity is the reranker's score (best turn), in descending order; the fast score is kept beside it.
    for m in items:
        assert m["relativity"] == pytest.approx(_turn_score(m["memory_value"]), abs=1e-6), m
        assert "fast_relativity" in m
    rel = [m["relativity"] for m in items]
    assert rel == sorted(rel, reverse=True)
    # single_turn: the server got the candidate windows' turns in one call, never a whole window.
    (call,) = [c for c in reranker.calls() if c["query"] == QUERY]
    assert call["protocol"] == "tei"
    assert not any("\n" in t for t in call["texts"])
    assert "In the end Maria decided to buy the green bike." in " ".join(call["texts"])
    assert call["n"] >= len(items) + 2  # 3-turn windows: more turns than windows


def test_fine_mode_reranker_down_is_a_502(
    api: FlaskClient, mix_tenant: Any, corpus: Any, reranker: FakeReranker
) -> None:
    reranker.configure(status=503)
    resp = api.post("/search/memory", headers=mix_tenant[1], json={"user_id": USER, "query": QUERY, "mode": "fine"})
    assert resp.status_code == 502, resp.get_data(as_text=True)
    assert "503" in resp.get_json()["message"]


def test_mixture_with_a_fast_reranker_returns_fine(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker
) -> None:
    # Up to 3 tries: the fine chain (search + rerank) must fit in the wait on 2 cores shared with other test suites;
    # one try that makes it shows the merge, and a sustained miss still fails.
    tries: list[dict[str, Any]] = []
    for _ in range(3):
        data = _search(api, mix_tenant[1], mode="mixture", conversation_id="mix-fast")
        tries.append({"search": data["search"], "elapsed_ms": round(data["elapsed_ms"], 1)})
        if data["search"]["fine_arrived"]:
            break
    assert data["search"]["fine_arrived"] is True, tries
    assert data["search"]["mode"] == "mixture" and "merged_cached_fine" not in data["search"]
    items = data["memory_detail_list"]
    assert items[0]["id"] == corpus["conv-b"]  # the reranker's order first
    assert items[0]["relativity"] == pytest.approx(_turn_score(items[0]["memory_value"]), abs=1e-6)
    assert len(set(_ids(data))) == len(items) <= 5
    assert data["elapsed_ms"] <= DEADLINE_MS + OVERHEAD_MS, tries


def test_mixture_past_the_deadline_returns_fast_then_merges_the_late_fine(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker, stack: Settings
) -> None:
    tenant_id, auth = mix_tenant
    conv = f"mix-slow-{uuid.uuid4().hex[:6]}"
    key = mixture_cache_key(str(tenant_id), USER, conv)
    fast = _search(api, auth, mode="fast")
    reranker.configure(delay_s=SLOW_S)

    t_sent = time.time()
    first = _search(api, auth, mode="mixture", conversation_id=conv)
    assert first["search"] == {"mode": "mixture", "fine_arrived": False}
    assert _ids(first) == _ids(fast)  # the fast answer, in the fast order
    assert first["memory_detail_list"][0]["id"] == corpus["conv-a"]

    # The fine chain finishes anyway (the reranker answers after SLOW_S) and caches its answer for this conversation.
    cached = _wait_cached(stack, key, timeout=SLOW_S + 30)
    assert cached["query"] == QUERY and cached["memories"][0]["id"] == corpus["conv-b"]
    assert time.time() - t_sent >= SLOW_S * 0.9  # written late, by the worker, not during the request

    # The next mixture search of the same conversation, reranker still slow: the late fine answer ranks first.
    second = _search(api, auth, mode="mixture", conversation_id=conv)
    assert second["search"] == {"mode": "mixture", "fine_arrived": False, "merged_cached_fine": True}
    items = second["memory_detail_list"]
    assert items[0]["id"] == corpus["conv-b"] and items[0].get("stale") is True
    assert len(set(_ids(second))) == len(items) <= 5

    # Another conversation of the same user has no cached answer: fast only.
    other = _search(api, auth, mode="mixture", conversation_id=f"{conv}-other")
    assert other["search"] == {"mode": "mixture", "fine_arrived": False}
    assert _ids(other) == _ids(fast)

    # Reranker fast again: the fresh fine answer arrives and is what comes back (no stale items needed).
    reranker.configure(delay_s=0.0)
    time.sleep(SLOW_S + 0.5)  # the slow reranks still in flight finish before we measure
    for _ in range(3):
        third = _search(api, auth, mode="mixture", conversation_id=conv)
        if third["search"]["fine_arrived"]:
            break
    assert third["search"]["fine_arrived"] is True, third["search"]
    assert third["memory_detail_list"][0]["id"] == corpus["conv-b"]
    assert "stale" not in third["memory_detail_list"][0]


def test_mixture_deadline_is_a_hard_bound(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker
) -> None:
    reranker.configure(delay_s=SLOW_S)
    elapsed = []
    for _ in range(3):
        data = _search(api, mix_tenant[1], mode="mixture", conversation_id=f"mix-bound-{uuid.uuid4().hex[:6]}")
        assert data["search"]["fine_arrived"] is False
        elapsed.append(round(data["elapsed_ms"], 1))
    assert max(elapsed) <= DEADLINE_MS + OVERHEAD_MS, elapsed


def test_mixture_with_the_reranker_down_answers_fast(
    api: FlaskClient, mix_tenant: Any, corpus: dict[str, str], reranker: FakeReranker
) -> None:
    """A broken fine path must not break mixture: it answers with the fast results (fine_arrived false)."""
    fast = _search(api, mix_tenant[1], mode="fast")
    reranker.configure(status=503)
    resp = api.post(
        "/search/memory",
        headers=mix_tenant[1],
        json={
            "user_id": USER,
            "query": QUERY,
            "top_k": 5,
            "mode": "mixture",
            "conversation_id": f"mix-down-{uuid.uuid4().hex[:6]}",
        },
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data = resp.get_json()["data"]
    assert data["search"]["fine_arrived"] is False
    assert _ids(data) == _ids(fast)


@pytest.mark.parametrize("mode", ["slow", "", "FINE", 1])
def test_invalid_mode_is_a_422_naming_mode(api: FlaskClient, mix_tenant: Any, mode: Any) -> None:
    resp = api.post("/search/memory", headers=mix_tenant[1], json={"user_id": USER, "query": QUERY, "mode": mode})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == 42201
    assert body["message"].startswith("mode:"), body["message"]
    assert [e["field"] for e in body["data"]["errors"]] == ["mode"]
