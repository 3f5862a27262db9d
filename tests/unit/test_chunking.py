"""Windowing conversation turns into raw memories."""

from __future__ import annotations

import itertools

import pytest

from memos_pipeline.text.chunking import Turn, Window, render_turn, render_window, turn_texts, window_turns

pytestmark = pytest.mark.unit


def turns(n: int, prefix: str = "m", client_ids: bool = True) -> list[Turn]:
    return [
        Turn(
            message_id=f"{prefix}{i}",
            source_id=f"client-{prefix}{i}" if client_ids else f"{prefix}{i}",
            role="user" if i % 2 == 0 else "assistant",
            content=f"content {prefix}{i}",
        )
        for i in range(n)
    ]


def ids(windows: list[Window]) -> list[list[str]]:
    return [w.message_ids for w in windows]


@pytest.mark.parametrize(
    ("n", "size", "overlap", "expected"),
    [
        (0, 3, 1, []),
        (1, 3, 1, [["m0"]]),
        (3, 3, 1, [["m0", "m1", "m2"]]),
        (4, 3, 1, [["m0", "m1", "m2"], ["m2", "m3"]]),
        (5, 3, 1, [["m0", "m1", "m2"], ["m2", "m3", "m4"]]),
        (6, 3, 1, [["m0", "m1", "m2"], ["m2", "m3", "m4"], ["m4", "m5"]]),
        (3, 1, 0, [["m0"], ["m1"], ["m2"]]),
        (5, 4, 0, [["m0", "m1", "m2", "m3"], ["m4"]]),
        (4, 3, 2, [["m0", "m1", "m2"], ["m1", "m2", "m3"]]),
        # overlap >= size is clamped to size - 1
        (3, 2, 5, [["m0", "m1"], ["m1", "m2"]]),
    ],
)
def test_window_sizes_and_overlap(n: int, size: int, overlap: int, expected: list[list[str]]) -> None:
    assert ids(window_turns(turns(n), size=size, overlap=overlap)) == expected


def test_window_invariants() -> None:
    """Every turn covered; each window brings a new turn; size bounded; overlap as asked; chunk_idx dense."""
    for size, overlap, n, n_ctx in itertools.product(range(1, 6), range(7), range(13), range(4)):
        check_invariants(size, overlap, n, n_ctx)


def check_invariants(size: int, overlap: int, n: int, n_ctx: int) -> None:
    new, ctx = turns(n), turns(n_ctx, prefix="p")
    ctx_ids = {t.message_id for t in ctx}
    windows = window_turns(new, size=size, overlap=overlap, context=ctx)
    case = f"size={size} overlap={overlap} n={n} context={n_ctx}: {ids(windows)}"
    seen: set[str] = set()
    for w in windows:
        assert 1 <= len(w.turns) <= size, case
        assert set(w.message_ids) - seen - ctx_ids, f"window {w.chunk_idx} adds nothing new; {case}"
        seen |= set(w.message_ids)
    assert seen - ctx_ids == {t.message_id for t in new}, f"not every turn covered; {case}"
    assert [w.chunk_idx for w in windows] == list(range(len(windows))), case
    eff = min(overlap, size - 1)
    for a, b in itertools.pairwise(windows):
        if eff:
            assert a.message_ids[-eff:] == b.message_ids[:eff], case
        else:
            assert not set(a.message_ids) & set(b.message_ids), case
    # Context turns only ever appear at the start of the first windows, and at most `overlap` of them.
    used_ctx = {m for w in windows for m in w.message_ids if m in ctx_ids}
    assert len(used_ctx) <= eff, case


def test_context_only_is_not_a_window() -> None:
    assert window_turns([], size=3, overlap=1, context=turns(3, prefix="p")) == []


def test_context_stitching_prepends_last_overlap_turns() -> None:
    ctx = turns(3, prefix="p")
    windows = window_turns(turns(2), size=3, overlap=1, context=ctx)
    assert ids(windows) == [["p2", "m0", "m1"]]
    assert windows[0].info["context_turns"] == 1
    assert windows[0].text.startswith(render_turn(ctx[-1]))

    windows = window_turns(turns(3), size=3, overlap=2, context=ctx)
    assert ids(windows) == [["p1", "p2", "m0"], ["p2", "m0", "m1"], ["m0", "m1", "m2"]]
    assert [w.info["context_turns"] for w in windows] == [2, 1, 0]


def test_no_context_without_overlap() -> None:
    windows = window_turns(turns(2), size=3, overlap=0, context=turns(2, prefix="p"))
    assert ids(windows) == [["m0", "m1"]]
    assert windows[0].info["context_turns"] == 0


def test_single_message_add_is_stitched_to_the_question_it_answers() -> None:
    question = Turn("q", "q", "user", "Which hotel did I pick?")
    answer = Turn("a", "a", "assistant", "Hotel 7 Days")
    (w,) = window_turns([answer], size=3, overlap=1, context=[question])
    assert w.text == "user: Which hotel did I pick?\nassistant: Hotel 7 Days"
    assert w.sources == ["q", "a"]


def test_chat_time_and_speaker_in_text_and_info() -> None:
    conv = [
        Turn("1", "c1", "user", "I moved to Paris", name="Caroline", chat_time="2023-05-07 10:00"),
        Turn("2", "c2", "assistant", "Nice!"),
        Turn("3", "c3", "user", "Yes", name="Caroline", chat_time="2023-05-08 09:00"),
    ]
    (w,) = window_turns(conv, size=3, overlap=1)
    # The date once, in its canonical form (tests/unit/test_dates.py), and again only where it changes.
    assert w.text.split("\n") == [
        "[Sunday 7 May 2023, 10:00 am]",
        "Caroline: I moved to Paris",
        "assistant: Nice!",
        "[Monday 8 May 2023, 9:00 am]",
        "Caroline: Yes",
    ]
    assert w.key == "Caroline: I moved to Paris"
    assert w.info == {
        "speakers": ["Caroline", "assistant"],
        "chat_time_start": "2023-05-07T10:00:00",
        "chat_time_end": "2023-05-08T09:00:00",
        "context_turns": 0,
    }


def test_info_without_chat_time() -> None:
    (w,) = window_turns(turns(2), size=3, overlap=1)
    assert w.info["chat_time_start"] is None
    assert w.info["chat_time_end"] is None
    assert w.info["speakers"] == ["assistant", "user"]


def test_speaker_defaults_to_role() -> None:
    assert Turn("1", "1", "assistant", "hi").speaker == "assistant"
    assert Turn("1", "1", "user", "hi", name="Bob").speaker == "Bob"
    assert render_turn(Turn("1", "1", "user", "hi", name="Bob", chat_time="t0")) == "[t0]\nBob: hi"


def test_one_date_line_for_turns_of_one_session() -> None:
    same = [Turn(str(i), str(i), "user", f"turn {i}", name="Ann", chat_time="8 May 2023") for i in range(3)]
    assert render_window(same) == "[Monday 8 May 2023]\nAnn: turn 0\nAnn: turn 1\nAnn: turn 2"


def test_deterministic() -> None:
    a = window_turns(turns(11), size=3, overlap=1, context=turns(2, prefix="p"))
    b = window_turns(turns(11), size=3, overlap=1, context=turns(2, prefix="p"))
    assert a == b
    assert [(w.chunk_idx, w.text) for w in a] == [(w.chunk_idx, w.text) for w in b]


def test_sources_use_client_id_else_message_id() -> None:
    with_client = turns(3)
    without = [Turn(f"m{i}", f"m{i}", "user", f"x{i}") for i in range(3, 5)]
    (w1,) = window_turns(with_client, size=3, overlap=0)
    assert w1.sources == ["client-m0", "client-m1", "client-m2"]
    assert w1.message_ids == ["m0", "m1", "m2"]
    (w2,) = window_turns(with_client[2:] + without, size=3, overlap=0)
    assert w2.sources == ["client-m2", "m3", "m4"]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (-1, 0), (3, -1)])
def test_invalid_args(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="size must be >= 1"):
        window_turns(turns(3), size=size, overlap=overlap)


def test_turn_texts_gives_each_turn_its_date() -> None:
    conv = [
        Turn("1", "1", "user", "I moved to Paris", name="Ann", chat_time="7 May"),
        Turn("2", "2", "user", "Nice", name="Bob", chat_time="7 May"),
        Turn("3", "3", "user", "Yes", name="Ann", chat_time="8 May"),
    ]
    assert turn_texts(render_window(conv)) == ["[7 May] Ann: I moved to Paris", "[7 May] Bob: Nice", "[8 May] Ann: Yes"]
    assert turn_texts("a fact\n\nsecond line") == ["a fact", "second line"]
