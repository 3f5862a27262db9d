"""The LoCoMo harness end to end (own stack, real HTTP API, workers, BM25) on a tiny hand-written conversation.

The fixture has two sessions of four turns: the chunker makes four windows (3 turns, overlap 1, the second
session's first window starting with the last turn of the first): [D1:1-3], [D1:3-4], [D1:4, D2:1-2], [D2:2-4].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.locomo import CATEGORIES, run_locomo
from evaluation.report import write_locomo_report
from memos_pipeline.config import Settings

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "locomo_tiny.json"
KS = (1, 5, 10, 20)
WINDOWS = [["D1:1", "D1:2", "D1:3"], ["D1:3", "D1:4"], ["D1:4", "D2:1", "D2:2"], ["D2:2", "D2:3", "D2:4"]]
GROUP_KEYS = {
    "n",
    "recall@k",
    "hit@k",
    "session_recall@k",
    "avg_tokens@k",
    "ndcg@10",
    "recall_budget",
    "budget_results",
    "budget_tokens",
}


def _record(records: list[dict[str, Any]], mode: str, index: int) -> dict[str, Any]:
    return next(r for r in records if r["mode"] == mode and r["index"] == index)


@pytest.mark.timeout(900)
def test_locomo_harness_on_a_tiny_conversation(settings: Settings, tmp_path: Path) -> None:
    # The scoring is checked by hand against a fixed layout: whole 3-turn windows overlapping by one turn (WINDOWS),
    # as stored, not the sliding windows joined into spans that search returns by default.
    layout = settings.with_overrides(chunk_overlap=1, search_dedup_turns=False)
    result, records = run_locomo(layout, FIXTURE, ks=KS, modes=("bm25", "dense", "fast"), progress=False)
    json.dumps(result)

    cfg = result["config"]
    assert cfg["conversations"] == ["tiny-1"] and cfg["sessions"] == 2 and cfg["turns"] == 8
    assert cfg["questions"] == {"multi-hop": 1, "temporal": 1, "open-domain": 0, "single-hop": 2, "adversarial": 1}
    ev = result["evidence"]
    assert (ev["questions_total"], ev["questions_scored"], ev["questions_without_evidence"]) == (7, 5, 2)
    assert ev["normalised_ids"] == [
        "tiny-1: 'D1:1; D2:1' -> D1:1, D2:1",
        "tiny-1: 'D2:01' -> D2:1",
        "tiny-1: 'D:2:4' -> D2:4",
    ]
    assert ev["dropped_ids"] == ["tiny-1: 'D9:9'"]

    assert set(result["modes"]) == {"bm25", "dense", "fast"}
    for mode in result["modes"].values():
        assert set(mode["overall"]) == GROUP_KEYS and mode["overall"]["n"] == 4  # categories 1-4
        assert set(mode["categories"]) == {str(c) for c in CATEGORIES}
        assert mode["categories"]["5"]["n"] == 1 and mode["categories"]["3"]["n"] == 0
        assert mode["categories"]["3"]["recall@k"]["10"] is None
        assert set(mode["overall"]["recall@k"]) == {"1", "5", "10", "20"}
        lat = mode["latency_ms"]
        assert lat["n"] == 5 and 0 < lat["p50"] <= lat["p99"]
    assert len(records) == 3 * 5

    # BM25: only the first window holds "repaired"/"accordion" -> one result, half of the evidence (D1:2, not D2:3).
    known = _record(records, "bm25", 0)
    assert [r["sources"] for r in known["results"]] == [WINDOWS[0]]
    assert known["recall"] == {"1": 0.5, "5": 0.5, "10": 0.5, "20": 0.5}
    assert known["hit"]["1"] == 1.0 and known["session_recall"]["1"] == 0.5
    assert known["first_rank"] == {"D1:2": 1, "D2:3": None}
    assert known["recall_budget"] == 0.5 and known["budget_results"] == 1
    assert known["ndcg@10"] == pytest.approx(1 / (1 + 1 / 1.584962500721156))  # 1 of an ideal 2 relevant results
    assert known["tokens"]["1"] == known["results"][0]["tokens"] > 10

    # Dense returns every window (4 < its candidate pool): all evidence within 20, and within the budget.
    for r in (r for r in records if r["mode"] in ("dense", "fast")):
        assert sorted(map(tuple, (x["sources"] for x in r["results"]))) == sorted(map(tuple, WINDOWS))
        assert r["recall"]["20"] == 1.0 and r["recall_budget"] == 1.0
        assert not r["budget_filled"]
    assert result["modes"]["dense"]["overall"]["recall@k"]["20"] == 1.0
    assert result["modes"]["dense"]["budget_unfilled"] == 5
    # The aggregate is the mean of the per-question numbers.
    bm25 = [r for r in records if r["mode"] == "bm25" and r["category"] != 5]
    assert result["modes"]["bm25"]["overall"]["recall@k"]["1"] == pytest.approx(
        sum(r["recall"]["1"] for r in bm25) / 4, abs=1e-4
    )
    # The malformed "D:2:4" became D2:4, which only the last window holds.
    festival = _record(records, "dense", 3)
    assert festival["evidence"] == ["D2:4"] and festival["first_rank"]["D2:4"] is not None

    paths = write_locomo_report(result, records, tmp_path / "report")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## bm25" in md and "**overall (1-4)**" in md and "5 adversarial" in md
    assert (tmp_path / "report" / "recall_by_category.png").read_bytes()[:4] == b"\x89PNG"
