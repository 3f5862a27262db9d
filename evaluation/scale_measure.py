"""What ``bench-scale`` measures for one shape at one size (:mod:`evaluation.scale_bench` says why and how).

The dense step is the service's own: the scope, distance and plan choice are imported from
``memos_pipeline.search.recall`` (never copied), so a change to the plan there is what this measures next run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, defer

from cli.harness import Isolated
from evaluation import metrics
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import recall, service
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory

TOP_K = 10
WARMUP = 5


@dataclass(frozen=True)
class Probe:
    """A known-answer query: ``target`` is the client id of the one user message it asks about."""

    user: str
    query: str
    target: str


def latency(samples: list[float]) -> dict[str, float | int | None]:
    return metrics.latency_summary(samples, extra=("mean",), digits=2)


def found(items: list[dict[str, Any]], target: str) -> bool:
    return any(target in (m.get("sources") or ()) for m in items[:TOP_K])


@contextmanager
def forced_exact() -> Iterator[None]:
    """The service's search with every scope ranked exactly (the dense plan's own exact branch)."""
    with mock.patch.object(recall, "_small_scope", lambda *_: True):
        yield


def n_candidates(cfg: Settings) -> int:
    return max((4 if cfg.search_dedup_turns else 2) * TOP_K, recall.MIN_CANDIDATES)


def _dense_select(job: SearchJob, qvec: np.ndarray, exact: bool, limit: int) -> Any:
    distance = recall._distance(Memory.embedding, qvec, exact)
    return (
        recall._scoped(job)
        .options(defer(Memory.embedding))
        .add_columns(distance)
        .where(Memory.embedding.isnot(None))
        .order_by(distance)
        .limit(limit)
    )


EF_SWEEP = (40, 80, 160, 320, 640)  # hnsw.ef_search values tried on the HNSW plan's query alone


@dataclass
class Dense:
    ms: float
    count_ms: float  # of it, the plan choice (the capped scope count)
    exact_plan: bool
    fell_back: bool
    ann: list[Memory]
    brute: list[Memory]


CUSTOM_PLANS = text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")


def dense_step(s: Session, job: SearchJob, qvec: np.ndarray, n_cand: int) -> Dense:
    """The service's dense step as fast_search runs it (plan choice, ef_search, fallback), timed; then the scope's
    brute-force top 10 in the same transaction."""
    t0 = time.perf_counter()
    exact = recall._small_scope(s, job, n_cand)
    t1 = time.perf_counter()
    rows = s.execute(_dense_select(job, qvec, exact, n_cand)).all()
    fell_back = not exact and len(rows) < n_cand
    if fell_back:
        rows = s.execute(_dense_select(job, qvec, True, n_cand)).all()
    ms = (time.perf_counter() - t0) * 1000
    brute = [m for m, _ in s.execute(_dense_select(job, qvec, True, TOP_K)).all()]
    return Dense(ms, (t1 - t0) * 1000, exact, fell_back, _nearest(rows), brute)


def _nearest(rows: Any) -> list[Memory]:
    """The top 10 of the candidates by distance: relaxed_order walks return them only roughly sorted, and the
    fusion scores every candidate by its cosine, so the order the walk returned them in does not matter there."""
    return [m for m, _ in sorted(rows, key=lambda r: float(r[1]))[:TOP_K]]


def ef_sweep(
    cfg: Settings, jobs: list[SearchJob], vectors: np.ndarray, targets: list[str] | None, n_cand: int
) -> dict[str, Any]:
    """The HNSW query alone (no plan choice, custom plans) at each ``EF_SWEEP`` ef_search: its time, its top 10's
    overlap with brute force and (``targets``) its known-answer recall. The evidence for choosing ef_search. At a
    high ef_search the planner may rank the scope exactly even so (its cost of the index walk grows with it): an
    overlap of 1.0 at the exact plan's time."""
    out: dict[str, Any] = {}
    brute: list[set[Any]] = []
    with session_scope(cfg) as s:
        brute = [
            {m.id for m, _ in s.execute(_dense_select(j, v, True, TOP_K)).all()}
            for j, v in zip(jobs, vectors, strict=True)
        ]
    for ef in EF_SWEEP:
        ms: list[float] = []
        overlap: list[float] = []
        hits = 0
        with session_scope(cfg) as s:
            s.execute(CUSTOM_PLANS)  # else a generic plan may ignore the index and ef_search with it
            s.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef)})
            for job, v, want, target in zip(jobs, vectors, brute, targets or [""] * len(jobs), strict=True):
                t0 = time.perf_counter()
                rows = s.execute(_dense_select(job, v, False, n_cand)).all()
                ms.append((time.perf_counter() - t0) * 1000)
                top = _nearest(rows)
                overlap.append(len({m.id for m in top} & want) / max(1, len(want)))
                hits += any(target in (m.sources or ()) for m in top)
        out[str(ef)] = {"ms": latency(ms), "ann_overlap_at_10": round(float(np.mean(overlap)), 4)}
        if targets is not None:
            out[str(ef)]["recall_ann"] = round(hits / len(jobs), 4)
    return out


def _plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    nodes: list[str] = []
    indexes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        name = node["Node Type"]
        if "Index Name" in node:
            indexes.append(node["Index Name"])
            name += f" on {node['Index Name']}"
        nodes.append(f"{name} (rows {node.get('Actual Rows')}, {node.get('Actual Total Time')} ms)")
        for child in node.get("Plans", ()):
            walk(child)

    top = plan["Plan"]
    walk(top)
    return {
        "indexes": indexes,
        "nodes": nodes,
        "rows": top.get("Actual Rows"),
        "execution_ms": plan.get("Execution Time"),
        "shared_hit_blocks": top.get("Shared Hit Blocks"),
        "shared_read_blocks": top.get("Shared Read Blocks"),
    }


def _literal(value: Any, vector: bool) -> str:
    if vector:
        return "'[" + ",".join(repr(float(x)) for x in value) + "]'::vector"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''").replace(":", "\\:") + "'"


def explain(s: Session, job: SearchJob, qvec: np.ndarray, n_cand: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the dense query the service would run now, summarised: planned for these
    values (a custom plan, as the first executions of a statement on a connection are), and planned once for any
    values (the generic plan Postgres may switch to once psycopg has prepared the statement)."""
    exact = recall._small_scope(s, job, n_cand)  # also sets this transaction's ef_search, as the service does
    compiled = _dense_select(job, qvec, exact, n_cand).compile(dialect=postgresql.dialect(paramstyle="named"))
    names = list(compiled.params)
    params = [bindparam(k, v, type_=compiled.binds[k].type) for k, v in compiled.params.items()]
    # text() does not see ``:name::TYPE`` as a parameter: drop the casts, the typed bindparams carry the types.
    body = re.sub(r"(:\w+)::\w+", r"\1", str(compiled))
    sql = text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {body}").bindparams(*params)
    out = {
        "plan": "exact" if exact else "hnsw",
        "ef_search": s.execute(text("SELECT current_setting('hnsw.ef_search')")).scalar_one(),
        "iterative_scan": s.execute(text("SELECT current_setting('hnsw.iterative_scan')")).scalar_one(),
        **_plan_summary(s.execute(sql).scalar_one()[0]),
    }
    try:
        # The vector parameter has no cast of its own (every other one has): give it one on both sides.
        vector = {n for n in names if type(compiled.binds[n].type).__name__.upper() == "VECTOR"}
        numbered = str(compiled)
        for k, name in enumerate(names, 1):
            numbered = re.sub(rf":{name}\b", f"CAST(${k} AS vector)" if name in vector else f"${k}", numbered)
        with s.begin_nested():
            s.execute(text("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"))
            s.execute(text(f"PREPARE scale_dense AS {numbered}"))
            # Literals: Postgres cannot type the parameters of an EXPLAIN EXECUTE's arguments.
            args = ", ".join(_literal(compiled.params[n], n in vector) for n in names)
            run = text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE scale_dense({args})")
            out["generic_plan"] = _plan_summary(s.execute(run).scalar_one()[0])
            s.execute(text("DEALLOCATE scale_dense"))
    except Exception as exc:  # evidence only: never fail the run for it
        out["generic_plan"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


def scope_rows(s: Session, job: SearchJob) -> int:
    return int(
        s.execute(
            text(
                "SELECT count(*) FROM memories WHERE tenant_id = :t AND user_id = :u AND status = 'activated' "
                "AND embedding IS NOT NULL"
            ),
            {"t": job.tenant_id, "u": job.user_id},
        ).scalar_one()
    )


def dense_figures(
    cfg: Settings, jobs: list[SearchJob], vectors: np.ndarray, targets: list[str], n_cand: int, *, custom: bool
) -> dict[str, Any]:
    """The dense step of every query against brute force: times, plan, overlap, known-answer recall."""
    dense_ms: list[float] = []
    count_ms: list[float] = []
    overlap: list[float] = []
    ann_hits = brute_hits = fallbacks = exact_plans = 0
    for job, target, qvec in zip(jobs, targets, vectors, strict=True):
        with session_scope(cfg) as s:
            if custom:
                s.execute(CUSTOM_PLANS)
            d = dense_step(s, job, qvec, n_cand)
        dense_ms.append(d.ms)
        count_ms.append(d.count_ms)
        overlap.append(len({m.id for m in d.ann} & {m.id for m in d.brute}) / max(1, len(d.brute)))
        ann_hits += any(target in (m.sources or ()) for m in d.ann)
        brute_hits += any(target in (m.sources or ()) for m in d.brute)
        fallbacks += d.fell_back
        exact_plans += d.exact_plan
    n = len(jobs)
    return {
        "ms": latency(dense_ms),
        "plan_choice_ms": latency(count_ms),
        "plan_exact_share": round(exact_plans / n, 3),
        "fallbacks": fallbacks,
        "ann_overlap_at_10": round(float(np.mean(overlap)), 4),
        "recall_ann": round(ann_hits / n, 4),
        "recall_brute_force": round(brute_hits / n, 4),
    }


def measure_shape(h: Isolated, probes: list[Probe], searches: int, bar: Any = None) -> dict[str, Any]:
    """Every figure of one shape at the current size (module docstring of :mod:`evaluation.scale_bench`)."""
    cfg = h.settings
    queue = [probes[i % len(probes)] for i in range(searches)]
    jobs = [SearchJob(tenant_id=h.tenant_id, user_id=p.user, query=p.query, top_k=TOP_K) for p in queue]
    # 1. through the API, one at a time, after a warm-up
    for p in queue[:WARMUP]:
        h.api.search(p.user, p.query, top_k=TOP_K)
    api_ms: list[float] = []
    steps: dict[str, list[float]] = {}
    api_hits = 0
    for p in queue:
        ms, data = h.api.search(p.user, p.query, top_k=TOP_K)
        api_ms.append(ms)
        api_hits += found(data["memory_detail_list"], p.target)
        for step, step_ms in (data.get("timings_ms") or {}).items():
            steps.setdefault(step, []).append(float(step_ms))
        if bar is not None:
            bar.update()
    # 2. the same searches in process, dense step forced exact
    with forced_exact():
        exact_hits = sum(found(service.search(cfg, job).memories, p.target) for job, p in zip(jobs, queue, strict=True))
    # 3. the dense step alone against brute force, and the BM25 step alone
    vectors = get_embedder(cfg).embed([p.query for p in queue])
    n_cand = n_candidates(cfg)
    with session_scope(cfg) as s:
        rows_in_scope = scope_rows(s, jobs[0])
    targets = [p.target for p in queue]
    dense = dense_figures(cfg, jobs, vectors, targets, n_cand, custom=False)
    # The same with plan_cache_mode = force_custom_plan: psycopg prepares a statement run 5 times on a connection,
    # and Postgres may then plan it once for any tenant and user (a generic plan, sized for an average scope).
    custom = dense_figures(cfg, jobs, vectors, targets, n_cand, custom=True)
    index = get_index(cfg) if cfg.bm25_call else None
    bm25_ms: list[float] = []
    if index is not None:
        for job in jobs:
            t0 = time.perf_counter()
            recall._bm25(index, job, job.query, n_cand)
            bm25_ms.append((time.perf_counter() - t0) * 1000)
    with session_scope(cfg) as s:
        plan = explain(s, jobs[0], vectors[0], n_cand)
    n = len(queue)
    sweep: dict[str, Any] | None = None
    if dense["plan_exact_share"] < 1:
        # The known-answer questions ask for rare memories (a vocabulary the filler lacks); the chat generator's
        # own queries ask in the filler's vocabulary, as most searches of a store like it would.
        chat = ConversationGenerator(99).queries(len(jobs))
        chat_jobs = [job.model_copy(update={"query": q}) for job, q in zip(jobs, chat, strict=True)]
        sweep = {
            "known_answer_questions": ef_sweep(cfg, jobs, vectors, targets, n_cand),
            "chat_queries": ef_sweep(cfg, chat_jobs, get_embedder(cfg).embed(chat), None, n_cand),
        }
    return {
        "scope_rows": rows_in_scope,
        "searches": n,
        "recall_api": round(api_hits / n, 4),
        "recall_exact": round(exact_hits / n, 4),
        "search_ms": latency(api_ms),
        "worker_steps_ms": {k: latency(v) for k, v in steps.items()},
        "dense": {**dense, "explain": plan, "ef_search_sweep": sweep},
        "dense_custom_plans": custom,
        "bm25_ms": latency(bm25_ms),
    }
