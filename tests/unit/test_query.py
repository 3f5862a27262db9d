"""Choosing the history turns that enrich a query (pure part of memos_pipeline.search.query)."""

from __future__ import annotations

import numpy as np
import pytest

from memos_pipeline.search.query import pick_history

pytestmark = pytest.mark.unit


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_picks_the_turns_closest_to_the_query_in_conversation_order() -> None:
    q = unit(1, 0, 0)
    turns = ["weather", "the hotel we chose", "lunch", "the hotel's pool"]
    vecs = np.stack([unit(0, 1, 0), unit(1, 0.2, 0), unit(0, 0, 1), unit(1, 0.5, 0)])
    assert pick_history(q, turns, vecs, 2) == [1, 3]
    assert pick_history(q, turns, vecs, 1) == [1]


def test_ties_prefer_the_later_turn_and_nothing_when_off() -> None:
    q = unit(1, 0)
    vecs = np.stack([unit(1, 1), unit(1, 1)])
    assert pick_history(q, ["a", "b"], vecs, 1) == [1]
    assert pick_history(q, ["a", "b"], vecs, 0) == []
    assert pick_history(q, [], np.zeros((0, 2), dtype=np.float32), 3) == []
