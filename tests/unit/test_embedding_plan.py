"""What the chunk stage embeds for a set of windows, and how turn vectors become window vectors."""

from __future__ import annotations

import numpy as np
import pytest

from memos_pipeline.stages.chunk import embedding_plan
from memos_pipeline.text.chunking import Turn, render_turn, window_turns

pytestmark = pytest.mark.unit


def _turns(contents: list[str]) -> list[Turn]:
    return [Turn(f"m{i}", f"m{i}", "user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]


def test_window_mode_embeds_each_window_text_and_needs_no_combining() -> None:
    windows = window_turns(_turns(["a", "b", "c", "d"]), size=3, overlap=2)
    texts, combine = embedding_plan(windows, "window")
    assert texts == [w.text for w in windows] and combine is None


def test_turns_mode_embeds_every_turn_once_and_weighs_turns_by_length() -> None:
    turns = _turns(["short", "a much longer turn with many more words in it", "mid length turn", "end"])
    windows = window_turns(turns, size=3, overlap=2)
    texts, combine = embedding_plan(windows, "turns")
    # Windows slide one turn: 4 turns make 2 windows of 3, yet each turn is embedded exactly once.
    assert texts == [render_turn(t) for t in turns]
    assert combine is not None
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(texts), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = combine(vecs)
    assert out.shape == (len(windows), 8) and out.dtype == np.float32
    for w, v in zip(windows, out, strict=True):
        rows = [texts.index(render_turn(t)) for t in w.turns]
        weights = np.array([len(texts[r]) for r in rows], dtype=np.float32)
        want = weights @ vecs[rows]
        assert np.allclose(v, want / np.linalg.norm(want), atol=1e-6)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_turns_mode_without_windows_combines_to_nothing() -> None:
    texts, combine = embedding_plan([], "turns")
    assert texts == [] and combine is not None
    assert combine(np.zeros((0, 8), np.float32)).shape == (0, 8)
