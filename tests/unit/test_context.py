"""Packing a ranking into context: every turn once, neighbouring hits joined into spans, facts untouched."""

from __future__ import annotations

import pytest

from memos_pipeline.search.context import Candidate, Result, is_whole, pack

pytestmark = pytest.mark.unit


def raw(mid: str, *turns: str, score: float = 1.0) -> Candidate:
    return Candidate(mid, score, "raw", turns)


def spans(results: list[Result]) -> list[tuple[str, list[str] | None]]:
    return [(r.memory_id, r.turns) for r in results]


def test_overlapping_windows_join_into_one_span_in_conversation_order() -> None:
    ranked = [raw("w2", "t2", "t3", "t4"), raw("w1", "t1", "t2", "t3"), raw("w3", "t3", "t4", "t5")]
    (r,) = pack(ranked, 10)
    assert (r.memory_id, r.turns, r.merged) == ("w2", ["t1", "t2", "t3", "t4", "t5"], ["w1", "w3"])


def test_spans_stop_growing_at_max_span() -> None:
    ranked = [raw("a", "t3", "t4", "t5"), raw("b", "t2", "t3", "t4"), raw("c", "t1", "t2", "t3")]
    assert spans(pack(ranked, 10, max_span=4)) == [("a", ["t2", "t3", "t4", "t5"]), ("c", ["t1"])]


def test_distant_hits_are_separate_results_and_nothing_new_is_left_out() -> None:
    ranked = [raw("a", "t1", "t2", "t3"), raw("dup", "t2", "t3"), raw("far", "t8", "t9"), raw("more", "t20")]
    assert spans(pack(ranked, 2)) == [("a", ["t1", "t2", "t3"]), ("far", ["t8", "t9"])]


def test_walk_stops_after_the_first_candidate_met_when_full() -> None:
    ranked = [raw("a", "t1", "t2"), raw("b", "t2", "t3"), raw("c", "t3", "t4")]
    # top_k=1: "a" fills the slot; "b" (met when full) may still extend it; "c" is not looked at.
    assert spans(pack(ranked, 1)) == [("a", ["t1", "t2", "t3"])]


def test_facts_are_never_cut_and_take_a_slot() -> None:
    fact = Candidate("f", 0.9, "fact", ("t1",))
    ranked = [fact, raw("w", "t1", "t2"), Candidate("f2", 0.5, "fact", ("t1",))]
    assert spans(pack(ranked, 10)) == [("f", None), ("w", ["t1", "t2"]), ("f2", None)]
    assert spans(pack(ranked, 1)) == [("f", None)]


def test_scores_order_and_wholeness() -> None:
    ranked = [raw("a", "x", score=0.9), raw("b", "y", score=0.5)]
    got = pack(ranked, 5)
    assert [(r.memory_id, r.score) for r in got] == [("a", 0.9), ("b", 0.5)]
    assert is_whole(got[0], ["x"]) and not is_whole(got[0], ["x", "z"])
    assert pack(ranked, 0) == []


def test_windows_touching_the_callers_own_turns_are_left_out() -> None:
    ranked = [raw("recent", "t9", "t10"), raw("w", "t8", "t9"), raw("old", "t1", "t2")]
    assert spans(pack(ranked, 10, seen={"t9", "t10"})) == [("old", ["t1", "t2"])]
