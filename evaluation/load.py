"""``memos-pipeline load``: sustained adds and searches at a fixed rate, against the API under gunicorn.

One self-contained run, like ``bench``: its own database (if embedded), queue prefix, BM25 directory and API port,
with the stack ``up`` runs (chunker, indexer, search and reranker workers, the relay, gunicorn). Each *step*
offers ``rate`` adds per second (of ``per_add`` messages each, spread over a few conversations of one user) and
``rate x search_ratio`` fast searches per second for ``seconds``, open loop (evaluation/load_driver.py: latency
from each request's scheduled time), while a sampler records every queue's depth and the backlog of accepted
but unfinished ingests every 0.5 s. When the load stops it waits for the backlog to drain.

Per step: error rate, add ack and search latency p50/p99, achieved rates, time from accept to done, backlog
growth, queue depths, drain time, and whether the rate is sustainable (evaluation/load_report.py says when).
``--find-max`` steps the rate up by ``--step-factor`` until a step is not sustainable, then bisects between the
last good and the first bad rate ``--refine`` times: the highest sustainable rate is where the queues still drain.

Writes ``load.json`` (with the whole timeline) and ``load.png`` (queue depth per queue over time above the
offered and completed add rate) to ``--report DIR``, and prints the JSON without the timeline.
Run: ``memos-pipeline load --rate 5 --seconds 30`` or ``python -m evaluation.load --find-max``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from cli.harness import Isolated, isolated, tenant_of, unwind_on_sigterm
from evaluation.bench import CpuMeter, _contention_warnings, _db_backends, ingest_rows, stage_timings
from evaluation.load_driver import Driver, Planned, Sampler
from evaluation.load_report import Window, plot, summarize
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings
from memos_pipeline.queues import queues_for

USER_ID = "load_user"
CONVERSATIONS = 8  # adds are spread over this many conversations per step
TOP_K = 10


@dataclass
class Run:
    cfg: Settings
    driver: Driver
    sampler: Sampler
    gen: ConversationGenerator
    queries: list[str]
    progress: bool
    cpu: CpuMeter | None = None


def schedule(run: Run, step: int, add_rate: float, search_rate: float, seconds: float, per_add: int) -> list[Planned]:
    """Adds at ``i / add_rate`` and searches at ``(j + 0.5) / search_rate`` seconds into the step."""
    n_adds, n_searches = round(add_rate * seconds), round(search_rate * seconds)
    convs = max(1, min(CONVERSATIONS, n_adds))
    per_conv = [len(range(c, n_adds, convs)) for c in range(convs)]
    texts = {c: run.gen.conversation(f"load-{step:02d}-{c}", per_conv[c] * per_add) for c in range(convs)}
    plan = []
    for i in range(n_adds):
        c, k = i % convs, i // convs
        body: dict[str, Any] = {
            "user_id": USER_ID,
            "conversation_id": f"load-{step:02d}-{c}",
            "messages": texts[c][k * per_add : (k + 1) * per_add],
        }
        plan.append(Planned(i / add_rate, "add", "/add/message", body))
    for j in range(n_searches):
        body = {"user_id": USER_ID, "query": run.queries[j % len(run.queries)], "top_k": TOP_K, "mode": "fast"}
        plan.append(Planned((j + 0.5) / search_rate, "search", "/search/memory", body))
    return plan


def ingest_times(cfg: Settings, ids: list[str]) -> list[tuple[float, float | None, str]]:
    """(created, finished, status) of these ingests, as epoch seconds from Postgres."""
    return [(float(c), None if f is None else float(f), str(s)) for c, f, s in ingest_rows(cfg, ids, "status")]


def run_step(run: Run, step: int, add_rate: float, search_rate: float, seconds: float, per_add: int) -> dict[str, Any]:
    plan = schedule(run, step, add_rate, search_rate, seconds, per_add)
    desc = f"step {step}: {add_rate:g} adds/s + {search_rate:g} searches/s"
    with tqdm(total=len(plan), desc=desc, unit="req", file=sys.stderr, disable=not run.progress) as bar:
        t0, outcomes = run.driver.run(plan, bar)
    wall_start = time.time() - (time.monotonic() - t0)
    # Drain: long enough for a backlog several windows deep at the pipeline's speed, bounded all the same.
    run.sampler.wait_drained(timeout=max(60.0, 3 * seconds))
    ingests = ingest_times(run.cfg, [o.ingest_id for o in outcomes if o.ingest_id])
    win = Window(start=t0 - run.sampler.t0, seconds=seconds, wall_start=wall_start)
    summary = summarize(outcomes, t0, win, run.sampler.timeline, ingests, add_rate, search_rate, per_add)
    # Where an ingest's time went (queue waits, chunker, embedding, indexer) and which stage was busiest.
    summary["stages_ms"] = stage_timings(run.cfg, [o.ingest_id for o in outcomes if o.ingest_id])
    if run.cpu is not None:
        name = f"step {step}: {add_rate:g} adds/s (load and drain)"
        run.cpu.phase(name)
        summary["cpu_s"] = run.cpu.phases[name]
    return {"step": step, **summary}


def check_options(
    rate: float, seconds: float, per_add: int, search_ratio: float, search_rate: float | None, step_factor: float
) -> None:
    """ValueError naming the option that makes no sense."""
    for name, value in (("--rate", rate), ("--seconds", seconds), ("--per-add", per_add)):
        if value <= 0:
            raise ValueError(f"{name}: must be > 0, got {value:g}")
    if search_ratio < 0 or (search_rate is not None and search_rate < 0):
        raise ValueError("--search-ratio / --search-rate: must be >= 0")
    if step_factor <= 1:
        raise ValueError(f"--step-factor: must be > 1, got {step_factor:g}")


def _nice(rate: float) -> float:
    """Two significant digits: rates a reader can repeat."""
    return float(f"{rate:.2g}")


def find_max(
    run: Run,
    start: float,
    seconds: float,
    per_add: int,
    search: tuple[str, float],
    factor: float,
    max_rate: float,
    refine: int,
) -> list[dict[str, Any]]:
    """Step up until a step is not sustainable, then bisect between the last good and the first bad rate."""

    def search_rate(rate: float) -> float:
        return rate * search[1] if search[0] == "ratio" else search[1]

    steps: list[dict[str, Any]] = []
    rate = start
    while True:
        steps.append(run_step(run, len(steps), rate, search_rate(rate), seconds, per_add))
        if not steps[-1]["sustainable"] or rate >= max_rate or steps[-1]["drain_s"] is None:
            break
        rate = min(_nice(rate * factor), max_rate)
    for _ in range(refine):
        good = [s["offered"]["add_rate"] for s in steps if s["sustainable"]]
        bad = [s["offered"]["add_rate"] for s in steps if not s["sustainable"]]
        if not good or not bad or steps[-1]["drain_s"] is None:  # nothing to bisect, or the queues never drained
            break
        mid = _nice((max(good) + min(bad)) / 2)
        if mid in (max(good), min(bad)):
            break
        steps.append(run_step(run, len(steps), mid, search_rate(mid), seconds, per_add))
    return steps


def _warm_up(run: Run) -> None:
    """Gunicorn workers booted, auth cache, pools and the BM25 reader warm; then an empty pipeline."""
    deadline = time.monotonic() + 60
    while True:
        try:
            out = run.driver.send(
                Planned(0, "search", "/search/memory", {"user_id": USER_ID, "query": "warm up"}), time.monotonic()
            )
        except Exception:
            out = None
        if out is not None and out.ok:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API does not answer searches: {out.error if out else 'no answer'}")
        time.sleep(0.5)
    warm = run.gen.conversation("warmup", 4)
    run.driver.send(
        Planned(0, "add", "/add/message", {"user_id": USER_ID, "conversation_id": "warmup", "messages": warm}),
        time.monotonic(),
    )
    if not run.sampler.wait_drained(timeout=120):
        raise RuntimeError("the warm-up add did not finish within 120 s")


def run_load(
    settings: Settings,
    rate: float,
    seconds: float,
    *,
    per_add: int = 2,
    search_ratio: float = 1.0,
    search_rate: float | None = None,
    find: bool = False,
    step_factor: float = 1.5,
    max_rate: float = 500.0,
    refine: int = 1,
    report_dir: Path | None = None,
    progress: bool = True,
    seed: int = 7,
    on: Isolated | None = None,
) -> dict[str, Any]:
    """Run one step at ``rate`` (or ``find``: the stepped search for the highest sustainable rate), on a stack of
    its own (``on``: a stack the caller shares, with a tenant of the run's own)."""
    check_options(rate, seconds, per_add, search_ratio, search_rate, step_factor)
    load_start = list(os.getloadavg())
    search = ("rate", search_rate) if search_rate is not None else ("ratio", search_ratio)
    gen = ConversationGenerator(seed)
    # The stack ``up`` runs, on a database, queue prefix, BM25 directory and port of its own. The per-key rate
    # limit stays on (its Redis round trip is part of every request) but out of the way.
    rate_limit = settings.rate_limit_per_min and 10_000_000
    with tenant_of(on, "load") if on else isolated(settings, "load", rate_limit_per_min=rate_limit) as h:
        cfg, queues = h.settings, queues_for(h.settings.llm_enabled)
        report = report_dir or settings.home / "load" / time.strftime(f"%Y%m%d-%H%M%S-{h.run}")
        sampler = Sampler(cfg, queues, h.tenant_id, time.monotonic())
        driver = Driver(h.api)
        run = Run(cfg, driver, sampler, gen, gen.queries(50), progress)
        sampler.start()
        try:
            _warm_up(run)
            roots = {name: p.pid for name, p in h.stack.procs}
            own_db = cfg.database_url != settings.database_url
            run.cpu = CpuMeter({**roots, "load client": os.getpid()}, (lambda: _db_backends(cfg)) if own_db else list)
            if find:
                steps = find_max(run, rate, seconds, per_add, search, step_factor, max_rate, refine)
            else:
                sr = rate * search_ratio if search_rate is None else search_rate
                steps = [run_step(run, 0, rate, sr, seconds, per_add)]
        finally:
            sampler.stop()

    good = [s for s in steps if s["sustainable"]]
    bad = [s for s in steps if not s["sustainable"]]
    best = max(good, key=lambda s: s["offered"]["add_rate"]) if good else None
    result: dict[str, Any] = {
        "config": {
            "mode": "find_max" if find else "fixed_rate",
            "start_rate" if find else "rate": rate,
            "seconds_per_step": seconds,
            "per_add": per_add,
            "search": {"ratio": search_ratio} if search_rate is None else {"rate": search_rate},
            "search_mode": "fast",
            "top_k": TOP_K,
            "step_factor": step_factor if find else None,
            "max_rate": max_rate if find else None,
            "refine": refine if find else None,
            "conversations_per_step": CONVERSATIONS,
            "api_workers": cfg.api_workers,
            "api_threads": cfg.api_threads,
            "client_threads": driver.threads,
            "queues": queues,
            "embedder": cfg.embedder,
            "embed_runtime": cfg.embed_runtime,
            "cpu_count": os.cpu_count(),
            "seed": seed,
        },
        "sustainable_add_rate": best["offered"]["add_rate"] if best else None,
        "sustainable_msgs_per_s": best["offered"]["msgs_per_s"] if best else None,
        "add_ack_ms_at_sustainable": best["add_ack_ms"] if best else None,
        "queues_stop_draining_at_add_rate": min((s["offered"]["add_rate"] for s in bad), default=None),
        "steps": steps,
        "loadavg_start_end": [load_start, list(os.getloadavg())],
        "warnings": _contention_warnings({f"step {s['step']}": s["cpu_s"] for s in steps if "cpu_s" in s}),
        "report": {"json": str(report / "load.json"), "png": str(report / "load.png")},
        "notes": NOTES,
    }
    title = (
        f"memos-pipeline load: adds of {per_add} message(s); sustainable "
        f"{result['sustainable_add_rate']} adds/s, queues stop draining at "
        f"{result['queues_stop_draining_at_add_rate']} adds/s"
    )
    plot(sampler.timeline, steps, report / "load.png", title)
    (report / "load.json").write_text(json.dumps({**result, "timeline": asdict(sampler.timeline)}, indent=1))
    return result


NOTES = [
    "Open loop: requests leave on a fixed schedule from a pool of client threads; *_ms latencies run from the "
    "scheduled send time to the whole answer read, so a slow server cannot hide its queue (no coordinated "
    "omission). *_service_ms run from the actual send: the difference is time spent waiting for a client thread.",
    "add_ack_ms: POST /add/message until its 202 (accepted = durable in Postgres and published).",
    "time_to_done_ms: an ingest's created_at to finished_at in Postgres (chunked, embedded and BM25-indexed); "
    "first/last_third_p50 compare the start and the end of the window: a growing value means the pipeline falls "
    "behind.",
    "backlog: ingests of this run accepted but not done, sampled every 0.5 s; queue_depth_*: ready messages per "
    "queue from an AMQP passive declare (messages a worker holds unacked are not counted there, but are in the "
    "backlog).",
    "sustainable: error rate <= 1%, achieved add rate >= 95% of offered, backlog growth over the second half of "
    "the window <= 5% of the offered rate, and the backlog drains within max(5 s, 10% of the window) after the "
    "load stops (why_not names what failed).",
    "stages_ms: per-stage latencies from ingests.stages (queue waits, chunker with its embedding share, indexer); "
    "busy_fraction = summed stage time / wall time of the step's ingests: near 1.0 that stage is the bottleneck.",
    "cpu_s: CPU seconds per process during each step (load and drain) from /proc; the 'other' share is load from "
    "outside this run (other users), which lowers every number here (see warnings).",
    "The client, the API, every worker and Postgres share this machine's cores: the numbers are for the whole "
    "single-machine deployment, and other load on the machine (loadavg_start_end) lowers them.",
]


@click.command("load", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--rate", type=float, default=5.0, show_default=True, help="Adds per second (the start rate with --find-max)."
)
@click.option("--seconds", type=float, default=30.0, show_default=True, help="Length of the load (of each step).")
@click.option("--per-add", type=int, default=2, show_default=True, help="Messages per add.")
@click.option("--search-ratio", type=float, default=1.0, show_default=True, help="Searches per add.")
@click.option("--search-rate", type=float, default=None, help="A fixed search rate instead of --search-ratio.")
@click.option("--find-max", is_flag=True, help="Step the rate up to find where the queues stop draining.")
@click.option("--step-factor", type=float, default=1.5, show_default=True, help="--find-max: rate multiplier.")
@click.option("--max-rate", type=float, default=500.0, show_default=True, help="--find-max: highest rate tried.")
@click.option("--refine", type=int, default=1, show_default=True, help="--find-max: bisection steps at the end.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for load.json and load.png (default: MEMOS_HOME/load/<time>-<run>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result (no progress bars).")
def load(
    rate: float,
    seconds: float,
    per_add: int,
    search_ratio: float,
    search_rate: float | None,
    find_max: bool,
    step_factor: float,
    max_rate: float,
    refine: int,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    """Sustained adds and searches against the API under gunicorn: error rate, p50/p99, queue depth over time
    (PNG), and the add rate at which the queues stop draining (--find-max)."""
    from memos_pipeline.config import get_settings

    try:
        check_options(rate, seconds, per_add, search_ratio, search_rate, step_factor)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    unwind_on_sigterm()
    result = run_load(
        get_settings(),
        rate,
        seconds,
        per_add=per_add,
        search_ratio=search_ratio,
        search_rate=search_rate,
        find=find_max,
        step_factor=step_factor,
        max_rate=max_rate,
        refine=refine,
        report_dir=report_dir,
        progress=not as_json,
    )
    click.echo(json.dumps(result, indent=2))
    if not as_json:
        click.echo(
            f"sustainable: {result['sustainable_add_rate']} adds/s "
            f"(p99 ack {(result['add_ack_ms_at_sustainable'] or {}).get('p99')} ms); report: "
            f"{result['report']['png']}",
            err=True,
        )


if __name__ == "__main__":
    load()
