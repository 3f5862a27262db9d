"""The retrieval metrics of the offline harnesses, and LoCoMo evidence-id normalisation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from evaluation import metrics
from evaluation.cli import eval_group
from evaluation.locomo import clean_text, session_messages
from evaluation.prefeval import TopicItem, filler_messages, sample_topics

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "locomo_tiny.json"

# Three 3-turn windows with overlap 1, as the chunker builds them, best first.
RANKED = [["D1:3", "D1:4", "D1:5"], ["D2:1", "D2:2", "D2:3"], ["D1:1", "D1:2", "D1:3"]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("D3:5", ["D3:5"]),
        ("D8:6; D9:17", ["D8:6", "D9:17"]),
        ("D:11:26", ["D11:26"]),
        ("D30:05", ["D30:5"]),
        ("D", []),
        ("", []),
        ("D 4 : 07", ["D4:7"]),
        ("D1:2,D1:3", ["D1:2", "D1:3"]),
    ],
)
def test_normalize_evidence_id(raw: str, expected: list[str]) -> None:
    assert metrics.normalize_evidence_id(raw) == expected


def test_normalize_evidence_flattens_and_dedups_in_order() -> None:
    assert metrics.normalize_evidence(["D8:6; D9:17", "D8:06", "D", "D:1:2"]) == ["D8:6", "D9:17", "D1:2"]
    assert metrics.normalize_evidence([]) == []


def test_session_of() -> None:
    assert metrics.session_of("D12:3") == "D12"
    assert metrics.session_of("D:11:26") == "D11"
    assert metrics.session_of("f0001") is None


def test_recall_and_hit_at_k() -> None:
    ev = ["D1:2", "D2:2"]
    assert metrics.recall_at_k(ev, RANKED, 1) == 0.0
    assert metrics.hit_at_k(ev, RANKED, 1) == 0.0
    assert metrics.recall_at_k(ev, RANKED, 2) == 0.5
    assert metrics.hit_at_k(ev, RANKED, 2) == 1.0
    assert metrics.recall_at_k(ev, RANKED, 3) == 1.0
    assert metrics.recall_at_k(ev, RANKED, 100) == 1.0  # k beyond the list
    assert metrics.recall_at_k(ev, [], 10) == 0.0
    assert metrics.found_at_k(ev, RANKED, 2) == {"D2:2"}


def test_sources_are_normalised_too() -> None:
    assert metrics.recall_at_k(["D30:5"], [["D30:05", "D30:6"]], 1) == 1.0
    assert metrics.recall_at_k(["pref"], [["f0001"], ["pref", "f0000"]], 2) == 1.0  # non-dialog ids verbatim


def test_session_recall() -> None:
    # Evidence in sessions 1 and 3; the top 2 results cover sessions 1 and 2.
    assert metrics.session_recall_at_k(["D1:9", "D3:1"], RANKED, 2) == 0.5
    assert metrics.session_recall_at_k(["D1:9", "D1:10"], RANKED, 1) == 1.0  # right session, wrong turns
    assert metrics.session_recall_at_k(["D3:1"], RANKED, 3) == 0.0


def test_first_rank() -> None:
    assert metrics.first_rank(["D1:3", "D2:2", "D9:9"], RANKED) == {"D1:3": 1, "D2:2": 2, "D9:9": None}


def test_empty_evidence_is_an_error() -> None:
    with pytest.raises(ValueError):
        metrics.recall_at_k([], RANKED, 5)
    with pytest.raises(ValueError):
        metrics.ndcg_at_k([], RANKED, 10)


def test_ndcg() -> None:
    # One evidence turn, in the first result: perfect.
    assert metrics.ndcg_at_k(["D1:4"], RANKED, 10) == pytest.approx(1.0)
    # The same turn in two overlapping windows at ranks 1 and 3: ideal = both on top.
    assert metrics.ndcg_at_k(["D1:3"], RANKED, 10) == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    # Relevant only at rank 2.
    assert metrics.ndcg_at_k(["D2:3"], RANKED, 10) == pytest.approx(1 / math.log2(3))
    # Two evidence turns, only one found (rank 1): the ideal has two relevant results.
    assert metrics.ndcg_at_k(["D1:5", "D7:1"], RANKED, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert metrics.ndcg_at_k(["D9:1"], RANKED, 10) == 0.0
    # k cuts the list.
    assert metrics.ndcg_at_k(["D2:3"], RANKED, 1) == 0.0
    for ev in (["D1:3"], ["D1:2", "D2:2"], ["D1:1", "D1:4", "D2:1", "D5:5"]):
        assert 0.0 <= metrics.ndcg_at_k(ev, RANKED, 10) <= 1.0 + 1e-12


def test_budget_depth_stops_at_the_first_result_that_does_not_fit() -> None:
    assert metrics.budget_depth([800, 800, 500, 100], 2000) == 2  # 500 would exceed; 100 is not squeezed in
    assert metrics.budget_depth([800, 800, 400], 2000) == 3  # exactly 2000 fits
    assert metrics.budget_depth([2500, 10], 2000) == 0
    assert metrics.budget_depth([], 2000) == 0


def test_recall_within_budget() -> None:
    ev = ["D1:2", "D2:2"]
    assert metrics.recall_within_budget(ev, RANKED, [900, 900, 900], 2000) == 0.5
    assert metrics.recall_within_budget(ev, RANKED, [600, 600, 600], 2000) == 1.0
    with pytest.raises(ValueError):
        metrics.recall_within_budget(ev, RANKED, [1, 2], 2000)


def test_context_tokens_and_mean() -> None:
    assert metrics.context_tokens([10, 20, 30], 2) == 30
    assert metrics.context_tokens([10, 20, 30], 10) == 60
    assert metrics.mean([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert metrics.mean([]) is None


def test_latency_summary() -> None:
    s = metrics.latency_summary([float(i) for i in range(1, 101)])
    assert s["n"] == 100 and s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert metrics.latency_summary([]) == {"p50": None, "p99": None, "mean": None, "n": 0}


def test_session_messages_keep_speaker_time_id_and_caption() -> None:
    turns = [
        {"speaker": "Ann", "dia_id": "D1:1", "text": "Look!", "blip_caption": "a photo of a cat"},
        {"speaker": "Bob", "dia_id": "D1:2", "text": "Cute\x02 cat"},
    ]
    msgs = session_messages(turns, "1:56 pm on 8 May, 2023")
    assert msgs[0] == {
        "role": "user",
        "name": "Ann",
        "content": "Look! [shares a photo: a photo of a cat]",
        "chat_time": "1:56 pm on 8 May, 2023",
        "id": "D1:1",
    }
    assert msgs[1]["content"] == "Cute  cat" and msgs[1]["id"] == "D1:2"
    assert clean_text("a\tb\nc\x7f") == "a\tb\nc "


def test_prefeval_sampling_is_spread_and_deterministic() -> None:
    items = [TopicItem(t, i, f"p{t}{i}", f"q{t}{i}") for t in ("a", "b", "c") for i in range(4)]
    s1 = sample_topics(items, 5, seed=1)
    assert s1 == sample_topics(items, 5, seed=1)
    assert [it.topic for it in s1] == ["a", "b", "c", "a", "b"]
    assert len(sample_topics(items, 100, seed=1)) == 12
    fillers = [{"role": "user" if i % 2 == 0 else "assistant", "content": str(i), "id": f"f{i:04d}"} for i in range(6)]
    assert [m["id"] for m in filler_messages(fillers, 2)] == ["f0000", "f0001", "f0002", "f0003"]
    assert filler_messages(fillers, 0) == []
    with pytest.raises(ValueError):
        filler_messages(fillers, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["locomo", "--data", "/nonexistent/locomo.json"], "does not exist"),
        (["locomo", "--data", str(FIXTURE), "--k", "0,5"], "1..100"),
        (["locomo", "--data", str(FIXTURE), "--k", "five"], "comma-separated integers"),
        (["locomo", "--data", str(FIXTURE), "--modes", "bm25,hybrid"], "unknown ['hybrid']"),
        (["prefeval", "--data", str(FIXTURE.parent), "--fillers", "-1"], "non-negative"),
        (["locomo"], "Missing option '--data'"),
    ],
)
def test_cli_rejects_bad_options_before_starting_anything(args: list[str], message: str) -> None:
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
