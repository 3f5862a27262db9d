"""The load test end to end at a low rate for a few seconds: its JSON is sound and its plot is written.

No timing targets here (performance numbers live in the harness's own output): this checks that the harness
counts what it sends, that nothing fails at a rate any machine sustains, and that the report files exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.harness import Isolated
from evaluation.load import load, run_load
from memos_pipeline.config import Settings

pytestmark = pytest.mark.integration

RATE, SECONDS, PER_ADD = 1.0, 4.0, 2


def _sane_latency(value: dict[str, float | int | None], n: int) -> None:
    assert value["n"] == n
    assert value["p50"] is not None and value["p99"] is not None
    assert 0 < value["p50"] <= value["p99"]


@pytest.mark.timeout(600)
def test_a_short_low_rate_run(settings: Settings, http_stack: Isolated, tmp_path: Path) -> None:
    result = run_load(
        settings, RATE, SECONDS, per_add=PER_ADD, search_ratio=2.0, report_dir=tmp_path, progress=False, on=http_stack
    )
    json.dumps(result)  # the CLI prints it

    assert result["config"]["mode"] == "fixed_rate" and result["config"]["per_add"] == PER_ADD
    [step] = result["steps"]
    adds, searches = round(RATE * SECONDS), round(2 * RATE * SECONDS)
    assert step["requests"] == {"adds": adds, "searches": searches, "total": adds + searches}
    assert step["errors"]["count"] == 0 and step["errors"]["rate"] == 0, step["errors"]
    _sane_latency(step["add_ack_ms"], adds)
    _sane_latency(step["add_service_ms"], adds)
    _sane_latency(step["search_ms"], searches)
    # Latency from the scheduled time is never shorter than from the actual send.
    assert step["add_ack_ms"]["p50"] >= step["add_service_ms"]["p50"]
    # Every add was accepted, became an ingest and finished once the load stopped.
    assert step["ingests"] == {**step["ingests"], "accepted": adds, "done": adds, "failed": 0}
    _sane_latency(step["time_to_done_ms"], adds)
    assert step["drain_s"] is not None and step["drain_s"] >= 0
    assert 0 < step["achieved_add_rate"] <= RATE * 1.05
    assert set(step["queue_depth_max"]) >= {"chunker", "indexer", "search"}
    assert isinstance(step["sustainable"], bool) and (step["sustainable"] == (not step["why_not"]))
    start, end = step["window_s"]
    assert end - start == pytest.approx(SECONDS, abs=0.01)
    # The headline agrees with the step's verdict.
    if step["sustainable"]:
        assert result["sustainable_add_rate"] == RATE and result["add_ack_ms_at_sustainable"] == step["add_ack_ms"]
    else:
        assert result["queues_stop_draining_at_add_rate"] == RATE

    png, saved = Path(result["report"]["png"]), Path(result["report"]["json"])
    assert png.parent == saved.parent == tmp_path
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    written = json.loads(saved.read_text())
    assert written["steps"] == result["steps"]
    timeline = written["timeline"]
    n = len(timeline["t"])
    assert n >= SECONDS / 0.5  # sampled every 0.5 s through warm-up, load and drain
    assert timeline["t"] == sorted(timeline["t"]) and len(timeline["backlog"]) == len(timeline["done"]) == n
    assert all(len(v) == n for v in timeline["queues"].values())
    # the sampler saw every add of the run finish (the warm-up's too), and nothing left behind
    assert timeline["done"][-1] >= adds and timeline["backlog"][-1] == 0


def test_cli_rejects_bad_options_before_starting_anything() -> None:
    runner = CliRunner()
    res = runner.invoke(load, ["--rate", "0", "--seconds", "1"])
    assert res.exit_code == 2 and "rate" in res.output
    res = runner.invoke(load, ["--find-max", "--step-factor", "1"])
    assert res.exit_code == 2 and "--step-factor" in res.output
