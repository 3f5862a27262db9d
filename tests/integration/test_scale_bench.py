"""bench-scale at tiny sizes on the session's stack: 2,000 memories (every scope ranked exactly) and 6,000 with the
heavy user holding 90% of the filler (5,000+ rows: past EXACT_SCOPE_MAX, so the HNSW plan runs). Asserts what
the run measured, not its speed."""

from __future__ import annotations

import json

import pytest

from cli.harness import Isolated
from evaluation import scale_load
from evaluation.scale_bench import Options, run_scale_bench
from evaluation.scale_measure import EF_SWEEP
from memos_pipeline.config import Settings
from memos_pipeline.search.recall import EXACT_SCOPE_MAX

pytestmark = pytest.mark.integration

SHAPES = ("many_users", "heavy_user")


@pytest.mark.timeout(600)
def test_scale_bench_tiny(settings: Settings, http_stack: Isolated) -> None:
    opts = Options(sizes=(2000, 6000), searches=20, heavy_share=0.9, pool=300, conversations=2, messages=30)
    result = run_scale_bench(settings, opts, progress=False, on=http_stack)
    json.dumps(result)  # the CLI prints it

    for key in ("memories_max", "recall_ratio", "search_p99_ratio", "build_minutes", "sizes", "targets"):
        assert key in result, key
    assert set(result["targets"]) == {"recall_ratio", "search_p99_ratio", "memories_max", "build_minutes"}
    # The store is the shared test database: its size counts other tests' rows too, so sizes are "at least".
    small, large = (result["sizes"][k] for k in sorted(result["sizes"], key=int))
    assert result["memories_max"] >= 6000 and large["storage"]["rows"] >= 6000

    for entry in (small, large):
        assert entry["build"]["hnsw_build_s"] > 0 and entry["storage"][f"{scale_load.HNSW_INDEX}_mb"] > 0
        assert entry["build"]["bm25_docs_per_s"] > 0
        for shape in SHAPES:
            s = entry["shapes"][shape]
            assert s["searches"] == 20 and s["search_ms"]["n"] == 20 and s["search_ms"]["p50"] > 0
            assert s["recall_exact"] > 0, shape
            assert s["dense"]["recall_brute_force"] > 0, shape
            assert 0 <= s["dense"]["ann_overlap_at_10"] <= 1
            assert s["bm25_ms"]["n"] == 20

    # Small scopes are ranked exactly: the API finds exactly what the exact search does.
    for shape in SHAPES:
        s = small["shapes"][shape]
        assert s["scope_rows"] <= EXACT_SCOPE_MAX
        assert s["dense"]["explain"]["plan"] == "exact" and s["dense"]["plan_exact_share"] == 1.0
        assert s["recall_api"] == s["recall_exact"], shape
        assert s["dense"]["ann_overlap_at_10"] == 1.0

    # The heavy user outgrew the cap: the service walks the HNSW index for it.
    heavy = large["shapes"]["heavy_user"]
    assert heavy["scope_rows"] > EXACT_SCOPE_MAX
    assert heavy["dense"]["explain"]["plan"] == "hnsw"
    # Which index (if any) Postgres walks for the approximate query is its cost-based choice: on this tiny store,
    # where the heavy scope is most of the table, it may scan and sort instead, which is exact. At 100k and 1M
    # memories bench-scale shows the HNSW index here; the test checks that the plan was explained.
    assert heavy["dense"]["explain"]["nodes"] and heavy["dense"]["explain"]["execution_ms"] is not None
    assert heavy["dense"]["plan_exact_share"] == 0.0
    assert heavy["dense_custom_plans"]["plan_exact_share"] == 0.0
    assert "indexes" in heavy["dense"]["explain"]["generic_plan"]  # the generic plan was explained, not an error
    sweep = heavy["dense"]["ef_search_sweep"]
    assert sweep is not None
    for queries in ("known_answer_questions", "chat_queries"):
        assert set(sweep[queries]) == {str(ef) for ef in EF_SWEEP}
        assert all(0 <= v["ann_overlap_at_10"] <= 1 for v in sweep[queries].values())
    # The normal user stays small, and exact, at every size.
    assert large["shapes"]["many_users"]["dense"]["explain"]["plan"] == "exact"
