"""The benchmark runs end to end on a small input and reports every key with sane values (no timing targets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cli.harness import Isolated
from evaluation.bench import run_bench
from memos_pipeline.config import Settings

pytestmark = pytest.mark.integration

LATENCIES = ("add_ack_ms", "time_to_searchable_ms", "search_fast_ms", "search_floor_ms")
RATES = ("ingest_msgs_per_s", "embed_only_msgs_per_s", "embed_only_batched_msgs_per_s")
TARGETS = (
    "add_ack_p99_ms",
    "time_to_searchable_p99_ms",
    "search_fast_p99_ms",
    "search_fast_p50_over_floor_p50",
    "ingest_over_embed_only",
)


def _sane_latency(value: Any, n: int) -> None:
    assert set(value) == {"p50", "p99", "n"}
    assert value["n"] == n
    assert 0 < value["p50"] <= value["p99"]


@pytest.mark.timeout(900)
def test_bench_small_run(settings: Settings, http_stack: Isolated) -> None:
    result = run_bench(settings, messages=60, per_add=10, progress=False, probes=3, searches=20, on=http_stack)
    json.dumps(result)  # the CLI prints it as JSON

    cfg = result["config"]
    assert (cfg["messages"], cfg["per_add"], cfg["adds"], cfg["probes"], cfg["searches"]) == (60, 10, 6, 3, 20)
    assert cfg["windows"] >= cfg["adds"] and cfg["cpu_count"] >= 1 and cfg["embedder"]
    assert cfg["chunk_turns"] == settings.chunk_turns and cfg["chunk_overlap"] == settings.chunk_overlap

    _sane_latency(result["add_ack_ms"], 6)
    _sane_latency(result["time_to_searchable_ms"], 3)
    _sane_latency(result["search_fast_ms"], 20)
    _sane_latency(result["search_floor_ms"], 20)
    for key in RATES:
        assert result[key] > 0, key
    assert result["embed_only_batched_msgs_per_s"] > 0

    assert set(result["targets"]) == set(TARGETS)
    for t in result["targets"].values():
        assert isinstance(t["reached"], bool) and t["value"] is not None and t["value"] > 0

    details = result["details"]
    # The bench embedded exactly what the chunker embedded, and every stage timing is there.
    assert details["embed_texts_match_pipeline"] is True
    assert details["search_fast"]["mean_results"] > 0 and "embed" in details["search_fast"]["steps_ms"]
    for stages in (details["stages_flood_ms"], details["stages_idle_probes_ms"]):
        assert stages["chunker"]["n"] > 0 and stages["chunker"]["p50"] > 0
    assert any("idle" in note for note in result["notes"])
    for phase in details["cpu_s"].values():
        assert phase["wall_s"] > 0 and phase["by_process_s"]
