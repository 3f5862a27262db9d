"""``memos-pipeline chaos``: add messages while, in turn, the pipeline's parts fail; count what was lost or doubled.

One self-contained run on services of its own (see ``chaos_services``): a RabbitMQ node, a redis-server, an embedded
Postgres, each on a free port with its data in a temporary directory, the fake OpenAI-compatible LLM server, and
the project's stack (API, relay, chunker, indexer, search, memreader, preference workers) pointed at them. The
system broker, Redis and shared Postgres are never touched.

The ``messages`` are split evenly over the faults. Each fault is one phase: a third of its adds are sent, the fault
is injected while the second third is sent (paced over the fault's length), the fault ends, the last third is sent;
then the suite waits for the pipeline to drain (every stage of every ingest finished), replays the dead-letter
queue if anything landed there (what an operator would do with ``memos-pipeline dlq replay``; the report says so),
and counts (``chaos_measure``: lost, duplicates, time to recover). Faults (``chaos_faults``):

- ``worker_kill``: SIGKILL the chunker, indexer, memreader and preference workers, each while it runs a task;
- ``broker_outage``: RabbitMQ stopped for ``outage_s`` (default 30) while adds keep coming;
- ``postgres_restart``: Postgres stopped (fast shutdown) for ``down_s``, then started;
- ``redis_flush_restart``: FLUSHALL, Redis stopped for ``down_s``, started empty;
- ``llm_fail`` / ``llm_hang`` / ``llm_garbage``: the LLM answers 5xx/429/drops, hangs past the client timeout, or
  answers garbage, for ``llm_fault_s``.

Run: ``python -m evaluation.chaos [--messages 2000] [--faults a,b] [--outage-seconds 30] [--json]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from cli.harness import create_key, free_port, unwind_on_sigterm
from evaluation.chaos_faults import AUTO, FAULTS, Chaos, FaultRun
from evaluation.chaos_load import Client, Outcome, Sender, plan_adds
from evaluation.chaos_measure import DEFINITIONS, count_phase, recovery, stage_rows, stage_summary, wait_drained
from evaluation.chaos_services import ChaosStack, RabbitNode, RedisServer
from evaluation.texts import ConversationGenerator
from fakes.llm import FakeLLM
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.ingest.deadletter import replay
from memos_pipeline.storage import pgserver
from memos_pipeline.storage.db import get_engine

QUEUES = ("chunker", "indexer", "search", "memreader", "preference")
SUMMARY = (
    "messages_accepted",
    "lost",
    "duplicates",
    "recover_s",
    "sent_during_fault_searchable_s",
    "llm_recover_s",
    "phase_s",
)


@dataclass(frozen=True)
class Options:
    messages: int = 2000
    faults: tuple[str, ...] = tuple(FAULTS)
    outage_s: float = 30.0
    down_s: float = 5.0
    llm_fault_s: float = 10.0
    per_add: int = 10
    clients: int = 2
    sample: int = 25  # messages per fault checked through POST /search/memory (all are checked in Postgres + BM25)
    progress: bool = True
    keep: bool = False  # keep the temporary directory (service and worker logs)
    seed: int = 7


def _settings(base: Settings, tmp: Path, run: str, rabbit: RabbitNode, redis: RedisServer, llm: FakeLLM) -> Settings:
    # The embedded Postgres on a port and data dir of its own (home), embedded BM25 (its documents are counted
    # from disk), short LLM timeouts (a hang is noticed in seconds), a relay that looks every half second.
    return base.with_overrides(
        database_url=None,
        es_url=None,
        home=tmp / "home",
        pg_port=free_port(),
        broker_url=rabbit.url,
        redis_url=redis.url,
        queue_prefix=f"chaos{run}.",
        bm25_path=tmp / "bm25",
        api_port=free_port(),
        llm_base_url=llm.base_url,
        llm_model="fake-model",
        llm_api_key="chaos",
        llm_timeout_s=2.0,
        llm_max_retries=1,
        async_mode="async",
        mos_enable_scheduler=True,
        enable_preference_memory=True,
        bm25_call=True,
        search_mode="fast",
        relay_interval_s=0.5,
        relay_grace_s=1.0,
        rate_limit_per_min=10_000_000,
        log_level="INFO",
    )


def phase_messages(messages: int, faults: tuple[str, ...]) -> dict[str, int]:
    """The messages of each fault's phase: an even split, the remainder to the first ones."""
    per, extra = divmod(messages, len(faults))
    return {name: per + (1 if i < extra else 0) for i, name in enumerate(faults)}


def _split(adds: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    third = max(1, len(adds) // 3)
    return adds[:third], adds[third : 2 * third], adds[2 * third :]


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _window(outcomes: list[Outcome], run: FaultRun) -> dict[str, Any]:
    """What the clients saw while the fault lasted."""
    during = [o for o in outcomes if o.accepted_at is not None and run.t_start <= o.accepted_at <= run.t_end]
    sent = [o for o in outcomes if run.t_start <= o.first_sent <= run.t_end]
    ack = [o.accepted_at - o.first_sent for o in outcomes if o.accepted_at is not None]
    ack_during = [o.accepted_at - o.first_sent for o in sent if o.accepted_at is not None]
    return {
        "add_ack_s": {"p50": _pct(ack, 50), "max": _pct(ack, 100)},
        "add_ack_s_sent_during_fault": {"p50": _pct(ack_during, 50), "max": _pct(ack_during, 100)},
        "adds_sent_during_fault": len(sent),
        "adds_accepted_during_fault": len(during),
        "of_which_published_false": sum(1 for o in during if o.published is False),
        "adds_sent_during_fault_accepted_in_the_end": sum(1 for o in sent if o.accepted),
        "add_errors_seen_by_clients": dict(Counter(e for o in outcomes for e in o.errors)),
        "add_retries": sum(o.attempts - 1 for o in outcomes),
        "add_duplicate_answers": sum(1 for o in outcomes if o.duplicate),
    }


class ChaosRun:
    def __init__(self, base: Settings, opts: Options) -> None:
        unknown = set(opts.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        if opts.messages < len(opts.faults) * 3:
            raise ValueError("messages: at least 3 per fault")
        self.opts, self.run = opts, secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"memos-chaos-{self.run}-"))
        self.tmp.chmod(0o755)  # the embedded Postgres runs as an unprivileged user when we are root: it must get in
        self.rabbit, self.redis, self.llm = (
            RabbitNode(self.tmp / "rabbitmq"),
            RedisServer(self.tmp / "redis"),
            FakeLLM(free_port()),  # the port now: the settings of the stack need the URL before it starts
        )
        self.cfg = _settings(base, self.tmp, self.run, self.rabbit, self.redis, self.llm)
        self.stack = ChaosStack(self.cfg, queues=QUEUES, quiet=True, log_dir=self.tmp / "logs")
        self.gen = ConversationGenerator(opts.seed)
        self.plan = phase_messages(opts.messages, opts.faults)
        adds = sum(-(-m // opts.per_add) for m in self.plan.values())
        self.bar = tqdm(total=adds, unit="add", file=sys.stderr, disable=not opts.progress)
        self.markers = 0
        self.celery: Any = None

    def log(self, msg: str) -> None:
        if self.opts.progress:
            tqdm.write(msg, file=sys.stderr)

    def start(self) -> tuple[Chaos, Client, Any]:
        t0 = time.monotonic()
        self.rabbit.launch()  # the slowest to boot: the others start meanwhile
        self.llm.start()
        self.llm.script(defaults=AUTO, reset=False)
        self.redis.start()
        pgserver.start(self.cfg)
        self.rabbit.wait()
        self.stack.start()
        self.stack.wait_ready(timeout=300)
        self.tenant_id, key = create_key(self.cfg, f"chaos-{self.run}")
        client = Client(self.stack.base_url, key)
        # One add through the whole pipeline first: pools, caches and models are warm before the first fault.
        warm = plan_adds(self.gen, self.run, "warmup", 4, 4, 1, 10**6)
        sender = Sender(client, [warm[0].conversation_id], lambda _: None)
        (out,) = sender.submit(warm)
        sender.join()
        sender.close()
        if not out.accepted or not wait_drained(self.cfg, [str(out.ingest_id)], 180)["drained"]:
            raise RuntimeError(f"the warm-up add did not go through: {out.errors}; logs in {self.tmp / 'logs'}")
        self.startup_s = round(time.monotonic() - t0, 2)
        ch = Chaos(
            self.cfg,
            self.stack,
            self.rabbit,
            self.redis,
            self.llm,
            client,
            self.opts.outage_s,
            self.opts.down_s,
            self.opts.llm_fault_s,
        )
        self.celery = make_celery(self.cfg)  # the dead-letter replay publishes through it
        return ch, client, self.celery

    def phase(self, ch: Chaos, client: Client, celery: Any, name: str, messages: int) -> dict[str, Any]:
        self.bar.set_description(name)
        adds = plan_adds(self.gen, self.run, name, messages, self.opts.per_add, self.opts.clients, self.markers)
        self.markers += messages
        convs = sorted({a.conversation_id for a in adds})
        before, during, after = _split(adds)
        t0 = time.monotonic()
        sender = Sender(client, convs, lambda _: self.bar.update())
        try:
            sender.submit(before)
            sender.join()
            fault = FAULTS[name](ch, sender, during, convs)
            sender.submit(after)
            sender.join()
        finally:
            sender.close()
        outcomes = sender.outcomes
        ingests = sorted({o.ingest_id for o in outcomes if o.ingest_id})
        drain = wait_drained(self.cfg, ingests, 240 + 0.5 * messages)
        rows = stage_rows(self.cfg, convs)
        dead = Counter(st for _, _, stages in rows for st, e in stages.items() if e.get("status") == "dead_lettered")
        replayed = 0
        if dead:
            replayed = replay(self.cfg, celery)
            drain["after_replay"] = wait_drained(self.cfg, ingests, 240, dead_ok=False)
            rows = stage_rows(self.cfg, convs)
        result = {
            **count_phase(self.cfg, self.tenant_id, convs, outcomes, client, self.opts.sample, self.opts.seed),
            **recovery(rows, outcomes, fault.t_start, fault.t_end),
            "fault": fault.evidence,
            "clients": _window(outcomes, fault),
            "drain": drain,
            "dead_lettered_before_replay": dict(dead),
            "dead_letters_replayed": replayed,
            "stages": stage_summary(rows),
            "phase_s": round(time.monotonic() - t0, 2),
        }
        self.log(
            f"[{name}] lost {result['lost']}, duplicates {result['duplicates']}, recover_s {result['recover_s']}, "
            f"sent during the fault searchable after {result['sent_during_fault_searchable_s']}s, drained "
            f"{drain['drained']} in {drain['drain_s']}s"
        )
        return result

    def stop(self) -> None:
        self.bar.close()
        with contextlib.suppress(Exception):
            self.stack.stop(stop_db=False)
        if self.celery is not None:
            self.celery.close()
        for step in (
            lambda: get_engine(self.cfg).dispose(),
            lambda: pgserver.stop(self.cfg),
            self.rabbit.stop,
            self.redis.stop,
            self.llm.stop,
        ):
            try:
                step()
            except Exception as exc:
                print(f"chaos: cleanup step failed: {exc}", file=sys.stderr)
        if not self.opts.keep:
            data = pgserver.layout(self.cfg).data_dir.parent
            if not data.is_relative_to(self.tmp):  # the fallback under /var/lib when the OS user could not get in
                shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_chaos(base: Settings, opts: Options) -> dict[str, Any]:
    """Run every fault of ``opts.faults`` in turn on a fresh stack of the suite's own; return the report."""
    cr = ChaosRun(base, opts)
    faults: dict[str, Any] = {}
    error = None
    load_start = list(os.getloadavg())
    try:
        try:
            ch, client, celery = cr.start()
        except Exception as exc:
            error = f"startup: {type(exc).__name__}: {exc}"
        else:
            for name, messages in cr.plan.items():
                try:
                    faults[name] = cr.phase(ch, client, celery, name, messages)
                except Exception as exc:
                    faults[name] = {"error": "".join(traceback.format_exception(exc))[-3000:]}
                    error = f"{name}: {type(exc).__name__}: {exc}"
                    break  # the services may be in any state now: later faults would measure that, not themselves
    finally:
        tmp = str(cr.tmp)
        cr.stop()
    ok = (
        error is None
        and len(faults) == len(opts.faults)
        and all(f.get("lost") == 0 and f.get("duplicates") == 0 for f in faults.values())
    )
    return {
        "ok": ok,
        "error": error,
        "summary": {name: {k: f.get(k) for k in SUMMARY} for name, f in faults.items()},
        "faults": faults,
        "config": {
            "messages": opts.messages,
            "faults": list(opts.faults),
            "outage_s": opts.outage_s,
            "down_s": opts.down_s,
            "llm_fault_s": opts.llm_fault_s,
            "per_add": opts.per_add,
            "clients": opts.clients,
            "search_sample_per_fault": opts.sample,
            "queues": list(QUEUES),
            "startup_s": getattr(cr, "startup_s", None),
            "llm_timeout_s": cr.cfg.llm_timeout_s,
            "llm_max_retries": cr.cfg.llm_max_retries,
            "task_max_retries": cr.cfg.task_max_retries,
            "relay_interval_s": cr.cfg.relay_interval_s,
            "relay_grace_s": cr.cfg.relay_grace_s,
            "sweep_after_s": cr.cfg.sweep_after_s,
            "cpu_count": os.cpu_count(),
            "loadavg_start_end": [load_start, list(os.getloadavg())],
            "tmp_dir": tmp if opts.keep else None,
        },
        "definitions": DEFINITIONS,
        "notes": [
            "Each fault is a phase of messages / len(faults) messages: a third of the adds before the fault, a third "
            "paced over it, a third after; then the drain and the counts.",
            "Clients send every add with an Idempotency-Key and retry transport errors, 5xx and 429 with the same key.",
            "dead_letters_replayed > 0 means the phase needed `memos-pipeline dlq replay` (an operator action) to "
            "finish; lost is counted after it.",
            "A stage 'failed' after llm_garbage is by design: a model that answers garbage twice fails the LLM stage, "
            "raw memories are kept and searchable.",
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary table of a report."""
    lines = [
        "| fault | accepted msgs | lost | duplicates | recover_s | sent during: searchable_s | llm_recover_s | "
        "evidence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in result["faults"].items():
        if "error" in f:
            lines.append(f"| {name} | error | | | | | | {f['error'].splitlines()[-1][:120]} |")
            continue
        ev = ", ".join(f"{k}={v}" for k, v in f["fault"].items() if not isinstance(v, dict | list))[:160]
        lines.append(
            f"| {name} | {f['messages_accepted']} | {f['lost']} | {f['duplicates']} | {f['recover_s']} | "
            f"{f['sent_during_fault_searchable_s']} | {f['llm_recover_s']} | {ev} |"
        )
    verdict = "OK: nothing lost, nothing doubled" if result["ok"] else f"NOT OK {result['error'] or ''}"
    return "\n".join([f"## memos-pipeline chaos: {verdict}", "", *lines, ""])


@click.command("chaos", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "-n",
    "--messages",
    type=click.IntRange(min=3),
    default=2000,
    show_default=True,
    help="Messages to add in all, split evenly over the faults.",
)
@click.option(
    "--faults", default=",".join(FAULTS), show_default=True, help="Comma-separated faults, run in this order."
)
@click.option(
    "--outage-seconds",
    "outage_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="How long RabbitMQ stays stopped in broker_outage.",
)
@click.option(
    "--down-seconds",
    "down_s",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long Postgres and Redis stay stopped in their restarts.",
)
@click.option(
    "--llm-fault-seconds",
    "llm_fault_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long the LLM fails, hangs or answers garbage.",
)
@click.option("--per-add", type=click.IntRange(min=1), default=10, show_default=True, help="Messages per add.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=25,
    show_default=True,
    help="Messages per fault also checked through POST /search/memory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report (progress still on stderr).")
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary table to this file.",
)
@click.option("--keep", is_flag=True, help="Keep the run's directory (service and worker logs) and print its path.")
def chaos(faults: str, as_json: bool, md_path: Path | None, **options: Any) -> None:
    """Add messages while workers are SIGKILLed, RabbitMQ, Postgres and Redis restart and the LLM fails, hangs and
    answers garbage (on services of its own, never the shared ones); per fault: lost, duplicates, time to recover.
    Exits 1 unless every fault lost nothing and doubled nothing."""
    from memos_pipeline.config import get_settings

    names = tuple(f.strip() for f in faults.split(",") if f.strip())
    unknown = [f for f in names if f not in FAULTS]
    if unknown or not names:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(FAULTS)}", param_hint="--faults")
    if options["messages"] < 3 * len(names):
        raise click.BadParameter("at least 3 messages per fault", param_hint="--messages")

    unwind_on_sigterm()  # the services are stopped
    result = run_chaos(get_settings(), Options(faults=names, **options))  # the other options are Options' fields
    if md_path is not None:
        md_path.write_text(markdown(result))
    if not as_json:
        click.echo(markdown(result))
    click.echo(json.dumps(result, indent=2, default=str))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    chaos()
