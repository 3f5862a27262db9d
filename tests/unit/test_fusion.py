"""Fusion of ranked candidate lists: RRF, weighted mean, and the deterministic top()."""

from __future__ import annotations

import math

import pytest

from memos_pipeline.search.fusion import RRF_K, gated, max_normalise, rrf, semantic_gate, top, weighted

pytestmark = pytest.mark.unit


def test_rrf_scores() -> None:
    scores = rrf({"dense": ["a", "b", "c"], "bm25": ["c", "a"]})
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert scores["b"] == pytest.approx(1 / (RRF_K + 2))
    assert scores["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert [i for i, _ in top(scores, 3)] == ["a", "c", "b"]


def test_rrf_weights_and_k() -> None:
    scores = rrf({"dense": ["a"], "bm25": ["b"]}, weights={"bm25": 2.0}, k=0)
    assert scores == {"a": pytest.approx(1.0), "b": pytest.approx(2.0)}


def test_rrf_ignores_magnitudes_and_handles_empty() -> None:
    assert rrf({}) == {}
    assert rrf({"dense": []}) == {}


def test_max_normalise() -> None:
    assert max_normalise({"a": 10.0, "b": 5.0, "c": 0.0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert max_normalise({}) == {}
    assert max_normalise({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}
    # negative scores clamp to 0
    assert max_normalise({"a": 4.0, "b": -2.0}) == {"a": 1.0, "b": 0.0}


def test_weighted_normalises_only_named_lists() -> None:
    dense = {"a": 0.8, "b": 0.4}
    bm25 = {"a": 12.0, "b": 3.0}
    fused = weighted({"dense": dense, "bm25": bm25}, {"dense": 1.0, "bm25": 1.0}, frozenset({"bm25"}))
    # dense is used as is (cosine), bm25 is max-scaled to [0, 1]; equal weights: the mean
    assert fused["a"] == pytest.approx((0.8 + 1.0) / 2)
    assert fused["b"] == pytest.approx((0.4 + 0.25) / 2)


def test_weighted_without_normalise_uses_raw_scores() -> None:
    fused = weighted({"x": {"a": 0.5}}, {})
    assert fused == {"a": pytest.approx(0.5)}


def test_weighted_missing_candidate_scores_zero_in_that_list() -> None:
    fused = weighted(
        {"dense": {"a": 0.6, "b": 0.9}, "bm25": {"a": 7.0, "c": 3.5}},
        {"dense": 1.0, "bm25": 3.0},
        frozenset({"bm25"}),
    )
    assert set(fused) == {"a", "b", "c"}
    assert fused["a"] == pytest.approx(0.25 * 0.6 + 0.75 * 1.0)
    assert fused["b"] == pytest.approx(0.25 * 0.9)
    assert fused["c"] == pytest.approx(0.75 * 0.5)


def test_weighted_empty_list_keeps_its_weight() -> None:
    # BM25 found nothing: dense scores are halved, not promoted to the full scale (a weighted mean over lists).
    fused = weighted({"dense": {"a": 0.8}, "bm25": {}}, {"dense": 1.0, "bm25": 1.0}, frozenset({"bm25"}))
    assert fused == {"a": pytest.approx(0.4)}
    assert weighted({}, {"dense": 1.0}) == {}


@pytest.mark.parametrize("bm25_top", [0.1, 1.0, 42.0, 1e6])
def test_weighted_result_in_unit_interval(bm25_top: float) -> None:
    dense = {"a": 1.0, "b": 0.3, "c": 0.0}
    bm25 = {"a": bm25_top, "c": bm25_top / 3, "d": 0.0}
    fused = weighted({"dense": dense, "bm25": bm25}, {"dense": 1.0, "bm25": 1.0}, frozenset({"bm25"}))
    assert all(0.0 <= s <= 1.0 for s in fused.values()), fused
    assert fused["a"] == pytest.approx(1.0)


def test_weighted_result_in_unit_interval_with_negative_cosine() -> None:
    """Cosine similarity of unit vectors lies in [-1, 1]: an unrelated window can score below 0. The module
    promises a fused score (returned to clients as `relativity`) in [0, 1] regardless."""
    fused = weighted(
        {"dense": {"a": 0.7, "b": -0.2}, "bm25": {"a": 5.0}}, {"dense": 1.0, "bm25": 1.0}, frozenset({"bm25"})
    )
    assert all(0.0 <= s <= 1.0 for s in fused.values()), fused


def test_top_orders_by_score_then_id() -> None:
    scores = {"b": 0.5, "a": 0.5, "c": 0.9, "d": 0.1}
    assert top(scores, 10) == [("c", 0.9), ("a", 0.5), ("b", 0.5), ("d", 0.1)]
    assert top(scores, 2) == [("c", 0.9), ("a", 0.5)]
    assert top(scores, 0) == []
    assert top({}, 3) == []


def test_top_is_deterministic_regardless_of_insertion_order() -> None:
    ids = [f"id{i:02d}" for i in range(20)]
    forward = dict.fromkeys(ids, 1.0)
    backward = dict.fromkeys(reversed(ids), 1.0)
    assert top(forward, 5) == top(backward, 5) == [(i, 1.0) for i in ids[:5]]


def test_rrf_then_top_is_finite() -> None:
    scores = rrf({"a": [str(i) for i in range(1000)], "b": [str(i) for i in reversed(range(1000))]})
    assert all(math.isfinite(s) for s in scores.values())
    assert len(top(scores, 10)) == 10


def test_semantic_gate_ramps_from_floor_to_full() -> None:
    assert semantic_gate(0.1, 0.2, 0.4) == 0.0
    assert semantic_gate(0.2, 0.2, 0.4) == 0.0
    assert semantic_gate(0.3, 0.2, 0.4) == pytest.approx(0.5)
    assert semantic_gate(0.4, 0.2, 0.4) == 1.0
    assert semantic_gate(0.9, 0.2, 0.4) == 1.0
    assert semantic_gate(0.3, 0.4, 0.4) == 0.0  # a degenerate ramp is a step at the floor


def test_gated_keeps_a_strong_dense_hit_above_weak_keyword_matches() -> None:
    """The PrefEval failure: off-topic memories share the question's common words, the one that matters shares
    none. Ungated, max-scaling makes the best keyword match count as perfect and it wins; gated, it adds nothing."""
    dense = {"pref": 0.45, "filler1": 0.05, "filler2": 0.1}
    lexical = {"filler1": 9.0, "filler2": 8.5}
    w = {"dense": 1.0, "bm25": 1.0}
    ungated = weighted({"dense": dense, "bm25": lexical}, w, frozenset({"bm25"}))
    assert top(ungated, 1)[0][0] == "filler1"
    fused = gated(dense, lexical, w, 0.2, 0.4)
    assert [i for i, _ in top(fused, 3)] == ["pref", "filler2", "filler1"]
    assert fused["filler1"] == pytest.approx(0.05 / 2)


def test_gated_equals_weighted_above_the_gate_and_keeps_unvectored_keyword_hits() -> None:
    dense = {"a": 0.6, "b": 0.5}
    lexical = {"a": 2.0, "b": 4.0, "fresh": 3.0}  # "fresh": no vector written yet, so no cosine
    w = {"dense": 1.0, "bm25": 1.0}
    fused = gated(dense, lexical, w, 0.2, 0.4)
    assert fused["a"] == pytest.approx((0.6 + 0.5) / 2)
    assert fused["b"] == pytest.approx((0.5 + 1.0) / 2)
    assert fused["fresh"] == pytest.approx(0.75 / 2)
    assert gated({}, {}, w, 0.2, 0.4) == {}


def test_gated_keeps_a_keyword_hit_holding_every_word_asked_for() -> None:
    """A code or id looked up by itself: the model sees nothing in it (low cosine everywhere), BM25 finds the one
    memory that holds it; the gate must not hide that memory behind whatever is closest by meaning."""
    dense = {"has-code": 0.05, "unrelated": 0.18}
    lexical = {"has-code": 7.0}
    w = {"dense": 1.0, "bm25": 1.0}
    assert top(gated(dense, lexical, w, 0.2, 0.4), 1)[0][0] == "unrelated"
    fused = gated(dense, lexical, w, 0.2, 0.4, exact={"has-code"})
    assert top(fused, 1)[0][0] == "has-code" and fused["has-code"] == pytest.approx((0.05 + 1.0) / 2)
