"""Rerankers (memos_pipeline.search.rerank): HTTP in both protocols against a real local rerank server process, the
single_turn strategy, the local cosine reranker, and the helpers fine and mixture search are built from."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import requests

from fakes.reranker import FakeReranker, relevance
from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.search.rerank import (
    CosineReranker,
    HttpReranker,
    SingleTurnReranker,
    build_reranker,
    merge_fine_into_fast,
    mixture_cache_key,
    rerank_items,
)
from memos_pipeline.text.chunking import turn_texts

pytestmark = pytest.mark.unit

PROTOCOLS = {"tei": "/rerank", "v1": "/v1/rerank"}
QUERY = "Which bike did Maria buy?"
DOCS = [
    "We talked about the weather in Lisbon and the traffic on the bridge.",
    "Maria bought a red bike.",
    "Bikes, bikes everywhere: the city loves bikes, says the mayor, and so does everyone else in town.",
    "",
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeReranker]:
    with FakeReranker() as fr:
        yield fr


@pytest.fixture
def fake(server: FakeReranker) -> FakeReranker:
    """The shared server, healed and with an empty call log."""
    server.reset()
    return server


@pytest.fixture(params=sorted(PROTOCOLS))
def http(request: pytest.FixtureRequest, fake: FakeReranker) -> tuple[str, HttpReranker]:
    protocol: str = request.param
    return protocol, HttpReranker(fake.url(PROTOCOLS[protocol]), timeout=5.0)


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


class Recorder:
    """A reranker with known scores (by text) that records what it was asked: for the pure helpers."""

    name = "recorder"

    def __init__(self, by_text: dict[str, float]) -> None:
        self.by_text = by_text
        self.asked: list[tuple[str, list[str]]] = []

    def scores(self, query: str, docs: Sequence[str]) -> list[float]:
        self.asked.append((query, list(docs)))
        return [self.by_text.get(d, 0.0) for d in docs]


# ---------------------------------------------------------------- the fake server itself


def test_relevance_is_a_normalised_content_word_overlap() -> None:
    assert relevance("Which bike did Maria buy?", "Maria bought a red bike.") == pytest.approx(
        2 / math.sqrt(3 * 4)  # {bike, maria, buy} vs {maria, bought, red, bike}
    )
    assert relevance("bikes", "bike") == 1.0
    assert relevance("the and of", "anything") == 0.0  # stopwords only
    assert relevance("x", "") == 0.0
    for d in DOCS:
        assert 0.0 <= relevance(QUERY, d) <= 1.0


# ---------------------------------------------------------------- HttpReranker, both protocols


def test_http_scores_follow_index_not_answer_order(http: tuple[str, HttpReranker], fake: FakeReranker) -> None:
    protocol, reranker = http
    got = reranker.scores(QUERY, DOCS)
    # The server answers best first; the client must put each score back at its document's index.
    assert got == pytest.approx([relevance(QUERY, d) for d in DOCS])
    assert got.index(max(got)) == 1
    (call,) = fake.calls()
    assert call["protocol"] == protocol and call["path"] == PROTOCOLS[protocol]
    assert call["query"] == QUERY and call["n"] == len(DOCS) and call["texts"] == DOCS


def test_http_empty_docs_make_no_call(http: tuple[str, HttpReranker], fake: FakeReranker) -> None:
    assert http[1].scores(QUERY, []) == []
    assert fake.calls() == []


def test_http_server_error_raises(http: tuple[str, HttpReranker], fake: FakeReranker) -> None:
    fake.configure(status=503)
    with pytest.raises(requests.HTTPError, match="503"):
        http[1].scores(QUERY, DOCS)
    fake.configure(status=None)
    assert http[1].scores(QUERY, DOCS[:2]) == pytest.approx([relevance(QUERY, d) for d in DOCS[:2]])


def test_http_timeout_raises(fake: FakeReranker) -> None:
    fake.configure(delay_s=1.0)
    with pytest.raises(requests.Timeout):
        HttpReranker(fake.url("/rerank"), timeout=0.2).scores(QUERY, DOCS)


def test_http_v1_sends_model_and_documents(fake: FakeReranker) -> None:
    reranker = HttpReranker(fake.url("/v1/rerank"), model="bge-reranker-v2-m3")
    assert reranker.scores(QUERY, ["a", "Maria's bike"]) == pytest.approx([0.0, relevance(QUERY, "Maria's bike")])
    (call,) = fake.calls()
    assert (call["protocol"], call["model"], call["texts"]) == ("v1", "bge-reranker-v2-m3", ["a", "Maria's bike"])


def test_http_respects_a_tei_batch_limit(fake: FakeReranker) -> None:
    fake.configure(max_batch=32)
    docs = [f"turn {i} about Maria and her bike" for i in range(90)]  # 30 windows x 3 turns (single_turn)
    assert len(HttpReranker(fake.url("/rerank")).scores(QUERY, docs)) == 90


# ---------------------------------------------------------------- SingleTurnReranker


WINDOWS = [
    "Ana: I went hiking in the Alps.\nMaria: Nice! I bought a red bike yesterday.\nAna: Cool.",
    "Ana: Bikes and bikes, the whole town talks about bikes and Maria and shopping and buying things all day",
    "Maria: Which one?",  # a single turn: no newline
    "Ana: hello\n\n   \nMaria: anything else",  # blank lines are not turns
    "",
    " \n ",
]


def test_single_turn_window_scores_as_its_best_turn(http: tuple[str, HttpReranker], fake: FakeReranker) -> None:
    _, inner = http
    got = SingleTurnReranker(inner).scores(QUERY, WINDOWS)
    turns = [turn_texts(w) for w in WINDOWS]
    expected = [max((relevance(QUERY, t) for t in ts), default=0.0) for ts in turns]
    assert got == pytest.approx(expected)
    # The best line wins over the window as a whole (the diluted score the plain reranker would give).
    assert got[0] > relevance(QUERY, WINDOWS[0])
    assert got[4] == got[5] == 0.0
    # The server saw turns, never windows: one call with every turn.
    (call,) = fake.calls()
    assert call["n"] == sum(map(len, turns)) == 7
    assert call["texts"] == [t for ts in turns for t in ts]
    assert not any("\n" in t for t in call["texts"])


def test_single_turn_without_docs_makes_no_call(fake: FakeReranker) -> None:
    assert SingleTurnReranker(HttpReranker(fake.url("/rerank"))).scores(QUERY, []) == []
    assert SingleTurnReranker(HttpReranker(fake.url("/rerank"))).scores(QUERY, ["", "  "]) == [0.0, 0.0]
    assert fake.calls() == []


def test_single_turn_uses_the_inner_scores_verbatim() -> None:
    inner = Recorder({"a1": 0.2, "a2": 0.9, "b1": -0.5})
    assert SingleTurnReranker(inner).scores("q", ["a1\na2", "b1"]) == [0.9, -0.5]  # negative scores survive
    assert inner.asked == [("q", ["a1", "a2", "b1"])]


# ---------------------------------------------------------------- CosineReranker (the real local embedder)


@pytest.fixture(scope="module")
def cfg() -> Settings:
    return _settings(embedder="local")


def test_cosine_reranker_ranks_by_meaning(cfg: Settings) -> None:
    reranker = CosineReranker(cfg)
    docs = [
        "The stock market fell sharply on Monday.",
        "Maria purchased a new bicycle last week.",
        "My cat sleeps all day.",
    ]
    got = reranker.scores("What did Maria buy?", docs)
    assert len(got) == 3 and all(-1.0 <= s <= 1.0 for s in got)
    assert int(np.argmax(got)) == 1  # no word in common with "bike" needed: a bi-encoder knows bicycle ~ buy
    vecs = get_embedder(cfg).embed(["What did Maria buy?", *docs])
    assert got == pytest.approx([float(v @ vecs[0]) for v in vecs[1:]], abs=1e-5)
    assert reranker.scores("q", []) == []


# ---------------------------------------------------------------- build_reranker


def test_build_reranker_per_backend(cfg: Settings) -> None:
    assert build_reranker(_settings(mos_reranker_backend="none")) is None
    assert isinstance(build_reranker(_settings(mos_reranker_backend="cosine_local")), CosineReranker)
    plain = build_reranker(_settings(mos_reranker_backend="http_bge", mos_reranker_url="http://h/v1/rerank"))
    assert isinstance(plain, HttpReranker) and plain.url == "http://h/v1/rerank"
    strat = build_reranker(
        _settings(
            mos_reranker_backend="http_bge_strategy",
            mos_reranker_url="http://h/rerank",
            mos_reranker_strategy="single_turn",
        )
    )
    assert isinstance(strat, SingleTurnReranker) and isinstance(strat.inner, HttpReranker)
    with pytest.raises(ValueError, match="MOS_RERANKER_URL"):
        build_reranker(_settings(mos_reranker_backend="http_bge"))
    with pytest.raises(ValueError, match="MOS_RERANKER_STRATEGY"):
        build_reranker(
            _settings(
                mos_reranker_backend="http_bge_strategy",
                mos_reranker_url="http://h/rerank",
                mos_reranker_strategy="whole_window",
            )
        )


# ---------------------------------------------------------------- rerank_items


def _item(i: int, value: str, kind: str = "raw", rel: float | None = None) -> dict[str, Any]:
    return {
        "id": f"m{i}",
        "memory_key": f"key{i}",
        "memory_value": value,
        "kind": kind,
        "sources": [f"s{i}"],
        "relativity": rel if rel is not None else round(1.0 - i / 10, 6),
    }


def test_rerank_items_orders_by_score_and_sets_relativity() -> None:
    items = [_item(0, "w0"), _item(1, "w1"), _item(2, "v2", kind="fact"), _item(3, "w3"), _item(4, "w4")]
    before = [dict(it) for it in items]
    reranker = Recorder({"w0": 0.1, "w1": 0.7, "key2: v2": 0.9, "w3": 0.7, "w4": 0.3333333333})
    out = rerank_items(reranker, "q", items, top_k=4)
    # raw windows are scored on their text, facts as "key: value"
    assert reranker.asked == [("q", ["w0", "w1", "key2: v2", "w3", "w4"])]
    assert [it["id"] for it in out] == ["m2", "m1", "m3", "m4"]  # ties keep the fast order; top_k cuts
    assert [it["relativity"] for it in out] == [0.9, 0.7, 0.7, 0.333333]
    assert [it["fast_relativity"] for it in out] == [0.8, 0.9, 0.7, 0.6]
    for it in out:  # everything else is the fast item's
        src = next(b for b in before if b["id"] == it["id"])
        assert {k: v for k, v in it.items() if k not in ("relativity", "fast_relativity")} == {
            k: v for k, v in src.items() if k != "relativity"
        }
    assert items == before  # the input is not modified


def test_rerank_items_against_the_server(fake: FakeReranker) -> None:
    items = [_item(i, text) for i, text in enumerate(WINDOWS[:4])]
    out = rerank_items(SingleTurnReranker(HttpReranker(fake.url("/rerank"))), QUERY, items, top_k=10)
    scores = [max((relevance(QUERY, t) for t in turn_texts(w)), default=0.0) for w in WINDOWS[:4]]
    expected = sorted(range(4), key=lambda i: (-scores[i], i))
    assert [it["id"] for it in out] == [f"m{i}" for i in expected]
    assert [it["relativity"] for it in out] == pytest.approx([scores[i] for i in expected], abs=1e-6)
    assert out[0]["id"] == "m0"  # the window whose best line answers, not the one that repeats the words


def test_rerank_items_empty() -> None:
    assert rerank_items(Recorder({}), "q", [], top_k=5) == []


# ---------------------------------------------------------------- merge_fine_into_fast, mixture_cache_key


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [it["id"] for it in items]


def test_merge_fine_first_then_the_fast_rest() -> None:
    fast = [{"id": i, "src": "fast"} for i in "abcde"]
    fine = [{"id": i, "src": "fine"} for i in "dxb"]
    merged = merge_fine_into_fast(fast, fine, top_k=5)
    assert _ids(merged) == ["d", "x", "b", "a", "c"]
    assert [it["src"] for it in merged[:3]] == ["fine"] * 3  # a shared id keeps the fine (reranked) item
    assert _ids(merge_fine_into_fast(fast, fine, top_k=2)) == ["d", "x"]
    assert _ids(merge_fine_into_fast(fast, [], top_k=3)) == ["a", "b", "c"]
    assert _ids(merge_fine_into_fast([], fine, top_k=10)) == ["d", "x", "b"]
    assert len({*_ids(merge_fine_into_fast(fast, fine, top_k=100))}) == 6  # no duplicates


def test_mixture_cache_key_partitions_by_tenant_user_conversation() -> None:
    keys = {
        mixture_cache_key("t1", "u1", "c1"),
        mixture_cache_key("t2", "u1", "c1"),
        mixture_cache_key("t1", "u2", "c1"),
        mixture_cache_key("t1", "u1", "c2"),
        mixture_cache_key("t1", "u1", None),
    }
    assert len(keys) == 5
    assert mixture_cache_key("t1", "u1", "c1") == mixture_cache_key("t1", "u1", "c1")  # stable across processes
