"""The faults, one function each: inject it while the phase's "during" adds are being sent, end it, and say what
happened (the evidence that the fault was real: pids that changed, a broker that was down, calls that failed).

Each returns a ``FaultRun``: wall-clock start and end (the end is when the service is back: the recovery clock
starts there) and the evidence. Only the suite's own services are touched (see ``chaos_services``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from evaluation.chaos_load import Add, Client, Sender
from evaluation.chaos_services import ChaosStack, RabbitNode, RedisServer
from fakes.llm import FakeLLM
from memos_pipeline.config import Settings
from memos_pipeline.storage import pgserver
from memos_pipeline.storage.db import get_engine

# The chunker last: every other stage waits for its output, so they should not wait for its restart as well.
KILL_TARGETS = ("indexer", "memreader", "preference", "chunker")
KILL_WAIT_S = 45.0  # how long to wait for a worker to be seen mid-task before killing it anyway
LLM_FAULT_MAX_EXTRA_S = 60.0
AUTO = {"facts": {"auto": True}, "preferences": {"auto": True}, "merge": {"auto": True}}
LLM_FAULTS: dict[str, list[dict[str, Any]]] = {
    # Server errors the client retries, a rate limit, and a connection closed without an answer.
    "llm_fail": [{"status": 500}, {"status": 429}, {"drop": True}, {"status": 503}],
    # An answer that never comes (the client's timeout, MEMOS_LLM_TIMEOUT_S, gives up first).
    "llm_hang": [{"delay": 120.0, "auto": True}],
    # 200 OK with what no parser accepts: broken JSON, nothing, the wrong shape, an HTML error page.
    "llm_garbage": [
        {"content": "not json {"},
        {"content": ""},
        {"json": {"memories": [{"memory_key": 1}]}},
        {"content": "<html><body>502 Bad Gateway</body></html>"},
        {"json": [1, 2, 3]},
    ],
}


@dataclass
class Chaos:
    """Everything a fault may act on."""

    cfg: Settings
    stack: ChaosStack
    rabbit: RabbitNode
    redis: RedisServer
    llm: FakeLLM
    client: Client
    outage_s: float  # RabbitMQ stopped this long
    down_s: float  # Postgres and Redis stopped this long
    llm_fault_s: float  # the LLM misbehaves this long


@dataclass
class FaultRun:
    t_start: float
    t_end: float
    evidence: dict[str, Any] = field(default_factory=dict)


def _sleep_until(t: float) -> None:
    if (left := t - time.time()) > 0:
        time.sleep(left)


def _running_ingest(cfg: Settings, conversations: list[str], stage: str, timeout_s: float) -> str | None:
    """Poll until some ingest of these conversations has ``stage`` running: the worker is mid-task."""
    sql = text("SELECT id FROM ingests WHERE conversation_id = ANY(:c) AND stages->:s->>'status' = 'running' LIMIT 1")
    deadline = time.monotonic() + timeout_s
    with get_engine(cfg).connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql, {"c": conversations, "s": stage}).first()
            conn.rollback()  # a fresh snapshot each poll
            if row is not None:
                return str(row[0])
            time.sleep(0.005)
    return None


def worker_kill(ch: Chaos, sender: Sender, during: list[Add], conversations: list[str]) -> FaultRun:
    """SIGKILL each pipeline worker while it is running a task (seen as its stage ``running`` in Postgres), and
    start a new one at once, as a supervisor would. The end of the fault: every queue has a consumer again."""
    t_start = time.time()
    targets = [q for q in KILL_TARGETS if f"worker:{q}" in ch.stack.commands]
    kills = []
    for i, q in enumerate(targets):
        sender.submit(during[i :: len(targets)], over_s=2.0)
        caught = _running_ingest(ch.cfg, conversations, q, KILL_WAIT_S)
        old, new = ch.stack.kill_and_restart(f"worker:{q}")
        kills.append({"queue": q, "old_pid": old, "new_pid": new, "mid_task": caught is not None, "ingest": caught})
    ch.stack.wait_ready(timeout=240)
    return FaultRun(t_start, time.time(), {"kills": kills})


def _postmaster_started(cfg: Settings) -> str:
    with get_engine(cfg).connect() as conn:
        return str(conn.execute(text("SELECT pg_postmaster_start_time()")).scalar_one())


def broker_outage(ch: Chaos, sender: Sender, during: list[Add], conversations: list[str]) -> FaultRun:
    """Stop the RabbitMQ node (``rabbitmqctl stop``) for ``outage_s`` while adds keep coming, then start it."""
    t_start = time.time()
    ch.rabbit.stop()
    stopped = time.time()
    sender.submit(during, over_s=max(0.0, ch.outage_s - (stopped - t_start)) * 0.9)
    _sleep_until(t_start + ch.outage_s)
    t_boot = time.time()
    boot_s = ch.rabbit.start()
    t_end = time.time()
    return FaultRun(
        t_start,
        t_end,
        {
            "node": ch.rabbit.node,
            "port": ch.rabbit.port,
            "broker_stopped_s": round(t_boot - t_start, 2),
            "broker_boot_s": round(boot_s, 2),
            "broker_down_s": round(t_end - t_start, 2),
        },
    )


def postgres_restart(ch: Chaos, sender: Sender, during: list[Add], conversations: list[str]) -> FaultRun:
    """Stop the run's embedded Postgres (fast shutdown: clients are cut off) for ``down_s``, then start it."""
    before = _postmaster_started(ch.cfg)
    t_start = time.time()
    pgserver.stop(ch.cfg)
    sender.submit(during, over_s=ch.down_s * 0.9)
    _sleep_until(t_start + ch.down_s)
    pgserver.start(ch.cfg)
    t_end = time.time()
    after = _postmaster_started(ch.cfg)
    return FaultRun(
        t_start,
        t_end,
        {
            "port": ch.cfg.pg_port,
            "db_down_s": round(t_end - t_start, 2),
            "postmaster_start_before": before,
            "postmaster_start_after": after,
            "restarted": before != after,
        },
    )


def _search_while(client: Client, stop: threading.Event, out: Counter[str]) -> None:
    """Searches every half second (Redis carries their results): how the API behaves while it is gone."""
    while not stop.wait(0.5):
        try:
            client.memories("what happened at the farmers market", top_k=3)
            out["ok"] += 1
        except Exception as exc:
            out[type(exc).__name__] += 1


def redis_flush_restart(ch: Chaos, sender: Sender, during: list[Add], conversations: list[str]) -> FaultRun:
    """FLUSHALL the run's Redis, stop it for ``down_s`` (searches keep coming), start it empty."""
    before = ch.redis.info()
    # Result channels the API and workers are subscribed to right now (Celery's Redis result consumer subscribes
    # to one per task sent without ignore_result, including fire-and-forget ones nobody will ever read).
    subscribed = len(ch.redis.client().pubsub_channels("celery-task-meta-*"))
    searches: Counter[str] = Counter()
    stop = threading.Event()
    searcher = threading.Thread(target=_search_while, args=(ch.client, stop, searches), daemon=True)
    t_start = time.time()
    flushed = ch.redis.flush_and_stop()
    searcher.start()
    sender.submit(during, over_s=ch.down_s * 0.9)
    _sleep_until(t_start + ch.down_s)
    ch.redis.start()
    t_end = time.time()
    stop.set()
    searcher.join(timeout=30)
    after = ch.redis.info()
    return FaultRun(
        t_start,
        t_end,
        {
            "port": ch.redis.port,
            "keys_flushed": flushed,
            "redis_down_s": round(t_end - t_start, 2),
            "pid_before": before["pid"],
            "pid_after": after["pid"],
            "run_id_changed": before["run_id"] != after["run_id"],
            "result_channels_subscribed_before": subscribed,
            "searches_during_outage": dict(searches),
        },
    )


def _llm_fault_met(ch: Chaos, kind: str, conversations: list[str], t_start: float) -> bool:
    if kind != "llm_garbage":
        return any(c["t"] >= t_start for c in ch.llm.calls()["calls"])
    sql = text(
        "SELECT 1 FROM ingests WHERE conversation_id = ANY(:c) AND ('failed' IN "
        "(stages->'memreader'->>'status', stages->'preference'->>'status')) LIMIT 1"
    )
    with get_engine(ch.cfg).connect() as conn:
        return conn.execute(sql, {"c": conversations}).first() is not None


def _llm_fault(kind: str) -> Callable[[Chaos, Sender, list[Add], list[str]], FaultRun]:
    def run(ch: Chaos, sender: Sender, during: list[Add], conversations: list[str]) -> FaultRun:
        steps = LLM_FAULTS[kind]
        many = steps * 1000  # the route's queue: every call during the fault takes the next one, in a cycle
        t_start = time.time()
        ch.llm.script(
            routes={"facts": many, "preferences": list(many)},
            defaults={"facts": steps[0], "preferences": steps[0]},
            reset=False,
        )
        sender.submit(during, over_s=ch.llm_fault_s * 0.9)
        _sleep_until(t_start + ch.llm_fault_s)
        # A fault nothing ran into proves nothing: on a slow machine the stages may not have reached the model yet,
        # so it lasts until a call met it (garbage: until a stage failed on it, the repair round included).
        deadline = time.monotonic() + LLM_FAULT_MAX_EXTRA_S
        while not _llm_fault_met(ch, kind, conversations, t_start) and time.monotonic() < deadline:
            time.sleep(0.2)
        ch.llm.script(defaults=AUTO, reset=False)
        t_end = time.time()
        calls = [c for c in ch.llm.calls()["calls"] if t_start <= c["t"] <= t_end]
        # A hung call is logged when it arrives (its answer comes long after the client gave up): label it so.
        seen = Counter(f"{c['route']}:{'hung' if c['delay'] else c['status']}:{c['outcome']}" for c in calls)
        return FaultRun(
            t_start,
            t_end,
            {
                "llm_fault_s": round(t_end - t_start, 2),
                "calls_during_fault": len(calls),
                "calls_by_route_status_outcome": dict(seen),
            },
        )

    run.__doc__ = f"The LLM endpoint misbehaves ({kind}) for ``llm_fault_s``, then answers well again."
    return run


FAULTS: dict[str, Callable[[Chaos, Sender, list[Add], list[str]], FaultRun]] = {
    "worker_kill": worker_kill,
    "broker_outage": broker_outage,
    "postgres_restart": postgres_restart,
    "redis_flush_restart": redis_flush_restart,
    "llm_fail": _llm_fault("llm_fail"),
    "llm_hang": _llm_fault("llm_hang"),
    "llm_garbage": _llm_fault("llm_garbage"),
}
