"""Issue 6, the CI form of ``memos-pipeline chaos``: every fault on a small load, nothing lost, nothing doubled.

The suite runs on services of its own (a RabbitMQ node, a redis-server and an embedded Postgres on free ports, the
fake LLM server, the project's workers and API), so restarting them never touches the broker, Redis or Postgres the
rest of the tests and other people use. Besides the counts, each fault must be shown to have happened: a fault
that silently did nothing would make "lost = 0" meaningless.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from evaluation.chaos import Options, run_chaos
from evaluation.chaos_faults import FAULTS, KILL_TARGETS
from memos_pipeline.config import Settings

# The whole suite runs in the module fixture, inside the first test's time limit (services, 7 faults, drains).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

OPTS = Options(messages=168, per_add=4, outage_s=5.0, down_s=3.0, llm_fault_s=3.0, sample=10, progress=False)
PER_FAULT = OPTS.messages // len(FAULTS)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_chaos(Settings(), OPTS)


def _calls(f: dict[str, Any]) -> dict[str, int]:
    calls: dict[str, int] = f["fault"]["calls_by_route_status_outcome"]
    return calls


def test_every_fault_loses_nothing_and_doubles_nothing(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(f"\n[chaos] startup {report['config']['startup_s']}s {json.dumps(report['summary'])}")
    assert report["error"] is None, report["error"]
    assert list(report["faults"]) == list(FAULTS)
    for name, f in report["faults"].items():
        assert f["drain"]["drained"], (name, f["drain"], f["stages"])
        assert f["adds_accepted"] == f["adds"] and f["messages_accepted"] == PER_FAULT, (name, f["clients"])
        assert f["lost"] == 0, (name, f["lost_detail"])
        assert f["duplicates"] == 0, (name, f["duplicates_detail"])
        assert f["messages_stored"] == PER_FAULT and f["searched_sample"] == 10, name
        for stage in ("chunker", "indexer"):
            assert f["stages"][stage]["status"] == {"done": f["adds"]}, (name, stage, f["stages"][stage])
        assert f["recover_s"] is not None and f["recover_s"] < 60, (name, f["recover_s"])
    assert report["ok"]


def test_the_faults_really_happened(report: dict[str, Any]) -> None:
    faults = report["faults"]

    kills = faults["worker_kill"]["fault"]["kills"]
    assert [k["queue"] for k in kills] == list(KILL_TARGETS)
    assert all(k["new_pid"] != k["old_pid"] for k in kills)
    assert any(k["mid_task"] for k in kills), kills
    # A task killed mid-way ran again (acks_late: the broker redelivered it to the new worker).
    assert sum(s["attempts_gt_1"] for s in faults["worker_kill"]["stages"].values()) >= 1

    broker = faults["broker_outage"]
    assert broker["fault"]["broker_stopped_s"] >= OPTS.outage_s
    during = broker["clients"]
    # Every add sent while the broker was down was accepted, durably, and published later by the relay.
    assert during["adds_accepted_during_fault"] >= 1
    assert during["of_which_published_false"] == during["adds_accepted_during_fault"]
    assert during["adds_sent_during_fault_accepted_in_the_end"] == during["adds_sent_during_fault"]

    pg = faults["postgres_restart"]
    assert pg["fault"]["restarted"], pg["fault"]
    # Adds sent while the database was down were refused (not accepted: nothing durable to promise), and the
    # client's retries with the same Idempotency-Key were accepted once it was back.
    assert sum(pg["clients"]["add_errors_seen_by_clients"].values()) >= 1
    assert pg["clients"]["adds_sent_during_fault_accepted_in_the_end"] == pg["clients"]["adds_sent_during_fault"]

    rd = faults["redis_flush_restart"]["fault"]
    assert rd["run_id_changed"] and rd["pid_before"] != rd["pid_after"] and rd["keys_flushed"] > 0

    fail = _calls(faults["llm_fail"])
    assert fail and all(":200:answered" not in k for k in fail), fail
    hang = _calls(faults["llm_hang"])
    assert any(":hung:" in k for k in hang), hang
    # Errors and hangs are transient: every LLM stage finished by retrying, none failed.
    for name in ("llm_fail", "llm_hang"):
        for stage in ("memreader", "preference"):
            statuses = faults[name]["stages"][stage]["status"]
            assert statuses == {"done": faults[name]["adds"]}, (name, stage, statuses)
    garbage = faults["llm_garbage"]
    assert sum(_calls(garbage).values()) >= 1
    # A model that answers garbage twice fails the LLM stage (not retried); raw memories are untouched.
    assert any(garbage["stages"][s]["status"].get("failed") for s in ("memreader", "preference")), garbage["stages"]
