"""``memos-pipeline bench-scale``: search quality and latency as one store grows from ten thousand memories to a
million, for many small users and for one heavy user (issue 10).

One run, one store: a stack of its own (database, queues, API port, BM25 directory; ``cli/harness.py``), grown size
by size. Before any filler, two **measured users** of the measured tenant get synthetic conversations
(:mod:`evaluation.texts`) through the real pipeline (``/add/message``, then wait until every ingest is done): a
normal user, who also owns one share of the filler among 10,000 users in 100 tenants ("many users"), and a heavy
user who owns ``heavy_share`` of all filler (20%: 200,000 memories at 1M, "one heavy user"). Then for each size the
filler (:mod:`evaluation.scale_load`) is COPYed in with the HNSW index dropped, the index is built again (timed),
the table VACUUM (ANALYZE)d (as autovacuum would leave a store that grew slowly), and the new rows go into BM25
through the indexer worker (timed). Then per shape:

- **Known answers.** Two of every three user messages of the measured conversations state a fact of a vocabulary
  the filler never uses (``scale_load.known_facts``: "The spare key to the boathouse is hidden under the banjo by
  the sundial."), and each query is that fact's question ("where is the spare key to the boathouse hidden"), a
  paraphrase sharing only its key nouns. The answer is found when a top-10 result's ``sources`` holds the message.
  Why not a sentence of the chat itself: the filler is the same generator's chat (28 templates), so at 200,000
  rows a user has thousands of near-copies of any generated sentence and even the exact ranking finds almost none
  (measured: brute-force recall 0.05 at 5,000 rows); the ratio of two near-zero recalls says nothing.
  ``recall_api``: through the API (the service's real plan). ``recall_exact``: the service's own search function
  run in this process on the same store with the dense step forced exact (its ``+ 0`` distance, which the HNSW
  index cannot serve): the same fusion and BM25, so the gap between the two is what the approximate dense plan
  loses. ``recall_ratio`` is api / exact at the largest size, worst shape; ``dense_recall_ratio`` the same for the
  dense step alone (BM25 can make up in the fused result for what the dense step missed).
- **The dense step alone**: the service's own dense SQL (``recall._scoped`` / ``_distance`` / ``_small_scope``,
  imported, not copied), timed in this process with the query vector given; its top 10 against the brute-force top
  10 of the same scope (``ann_overlap_at_10``), its known-answer recall against brute force, and one
  ``EXPLAIN (ANALYZE, BUFFERS)`` summary (plan nodes, index used, rows, time, buffers) of the plan made for the
  query's values and of the generic plan (made once for any values: Postgres may switch to it once psycopg has
  prepared a statement, i.e. from its 6th execution on a connection). ``dense_custom_plans`` repeats the step with
  ``plan_cache_mode = force_custom_plan``, and for a scope on the HNSW plan ``ef_search_sweep`` runs the index
  query alone at several ``hnsw.ef_search``: the evidence for the plan's constants.
- **Latency**: each query once through ``/search/memory`` after a warm-up, one at a time: p50/p99, and the worker's
  own step timings (``timings_ms``); the BM25 step alone in this process (the search workers' reader).
- **Sizes**: ``pg_table_size(memories)`` and the two search indexes; the BM25 directory on disk.

``--jobs`` also runs ``memos-pipeline reindex`` at the largest size (a full re-index, docs/s).

The plan under test (``memos_pipeline/search/recall.py``): scopes up to ``EXACT_SCOPE_MAX`` rows are ranked
exactly on the scope index; larger ones walk the HNSW index with ``hnsw.iterative_scan = relaxed_order`` (set on
every connection, ``storage/db.py``) and ``ef_search`` 16 per candidate asked for (640 at top_k 10; 2 per
candidate, 80, at the 100k run below), and fall back to the exact ranking when the walk returns too few. So the
normal user is always exact, and the heavy user switches to HNSW once it holds more than 5,000 rows (between 10k
and 100k at 20%).

What it showed at 100k (2 shared cores, 2026-12-03): the heavy user's dense query does not run the plan recall.py
chose. psycopg prepares it from its 6th execution on a connection, and Postgres then switches to a generic plan
made for an average user (a few rows): the scope index and an exact sort over all 20,086 rows (25 ms, 20,000
buffers), where the plan for the actual values walks the HNSW index (2.5 ms). Recall is exact by accident and the
time linear in the user's rows (search p99 116 ms at 100k vs 22 ms at 10k). With custom plans forced (PGOPTIONS
``-c plan_cache_mode=force_custom_plan`` on the same run) search p99 is 41 ms (ratio 1.35) and the fused
known-answer recall stays 1.0, but the dense step alone finds 0.44 of the answers brute force finds 0.88 of
(overlap@10 0.64 at ef_search 80; 0.88 at 640): rare memories are hard for the HNSW walk, while the chat
generator's own queries reach overlap 0.97 at 80 and 0.998 at 640.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from cli.harness import Isolated, isolated, tenant_of
from evaluation import scale_load as load
from evaluation.scale_measure import Probe, measure_shape
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
NORMAL_USER, HEAVY_USER = "scale-normal", "scale-heavy"
PER_ADD = 10


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    searches: int = 100  # known-answer queries (= timed API searches) per shape and size
    users: int = 10_000
    tenants: int = 100
    heavy_share: float = 0.2
    pool: int = 3_000
    conversations: int = 3  # per measured user
    messages: int = 50  # per conversation
    jobs: bool = False
    hnsw_with: str = ""  # e.g. "m = 32, ef_construction = 128": the HNSW index built with these instead


def _target(value: float | None, op: str, bound: float) -> dict[str, Any]:
    reached = value is not None and (value <= bound if op == "<=" else value >= bound)
    return {"target": f"{op} {bound}", "value": None if value is None else round(value, 4), "reached": reached}


def add_measured(h: Isolated, opts: Options, bar: Any = None) -> dict[str, list[Probe]]:
    """Every measured user's conversations through the API, waited for: the known-answer probes of each user.

    The conversations are the chat generator's; two of every three user messages are replaced by a known fact
    (``scale_load.known_facts``), whose question is the probe."""
    gen = ConversationGenerator(7)
    probes: dict[str, list[Probe]] = {}
    ids: list[str] = []
    for user in (NORMAL_USER, HEAVY_USER):
        facts = iter(load.known_facts(user, min(200, opts.conversations * opts.messages)))
        mine: list[Probe] = []
        for c in range(opts.conversations):
            conv = f"{user}-c{c}"
            msgs = gen.conversation(conv, opts.messages)
            for k, m in enumerate(msgs):
                fact = next(facts, None) if m["role"] == "user" and k % 3 != 2 else None
                if fact is not None:
                    m["content"] = fact[0]
                    mine.append(Probe(user, fact[1], m["id"]))
            for k in range(0, len(msgs), PER_ADD):
                _, data = h.api.add(user, conv, msgs[k : k + PER_ADD])
                ids.append(str(data["ingest_id"]))
        probes[user] = mine
    h.api.wait_done(ids, timeout=600, bar=bar)
    return probes


def _reindex(cfg: Settings) -> dict[str, Any]:
    from cli.stack import settings_env

    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "reindex", "--json"],
        env=settings_env(cfg),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    import json

    out = json.loads(proc.stdout)
    return {"seconds": round(seconds, 1), "docs_per_s": round(out["docs"] / seconds, 1), "job": out}


@contextmanager
def _stack(settings: Settings, on: Isolated | None) -> Iterator[Isolated]:
    if on is None:
        with isolated(settings.with_overrides(rate_limit_per_min=0), "scale", log_level="WARNING") as h:
            yield h
    else:
        with tenant_of(on, "scale") as h:
            yield h


def run_scale_bench(
    settings: Settings, opts: Options = Options(), *, progress: bool = True, on: Isolated | None = None
) -> dict[str, Any]:
    """The bench (module docstring). ``on``: a running stack to reuse (the tests' session stack), with a tenant of
    its own; its database then keeps nothing of the run (the filler is deleted at the end)."""
    t_start = time.perf_counter()
    sizes = sorted(opts.sizes)
    bar_off = not progress
    with _stack(settings, on) as h:
        cfg = h.settings
        shape = load.Shape(h.tenant_id, NORMAL_USER, HEAVY_USER, opts.users, opts.tenants, opts.heavy_share)
        # On a shared stack the rows other runs left are not counted: sizes are what this run holds.
        base = load.count_rows(cfg) if on is not None else 0
        try:
            ingests = 2 * opts.conversations * -(-opts.messages // PER_ADD)
            with tqdm(total=ingests, desc="measured users: ingests", disable=bar_off) as bar:
                probes = add_measured(h, opts, bar)
            pool, pool_s = load.embed_pool(cfg, opts.pool)
            definition = load.hnsw_definition(cfg)
            if opts.hnsw_with:
                definition = f"{definition.split(' WITH (')[0]} WITH ({opts.hnsw_with})"
            per_size: dict[str, Any] = {}
            build_s = 0.0
            filler_rows = 0
            for size in sizes:
                have = load.count_rows(cfg)
                new = max(0, size + base - have)
                t0 = time.perf_counter()
                load.drop_hnsw(cfg)
                with tqdm(total=new, desc=f"{size:,}: COPY filler", disable=bar_off, unit="row") as bar:
                    ids = load.copy_rows(cfg, load.filler_chunks(pool, shape, filler_rows, filler_rows + new), bar)
                copy_s = time.perf_counter() - t0
                filler_rows += new
                hnsw_s = load.create_hnsw(cfg, definition)
                analyze_s = load.analyze(cfg)
                with tqdm(total=new, desc=f"{size:,}: BM25 via the indexer", disable=bar_off, unit="doc") as bar:
                    bm25_s = load.bm25_index(cfg, ids, bar)
                step_s = time.perf_counter() - t0
                build_s += step_s
                sizes_now = load.relation_sizes(cfg)
                bm25_bytes = load.dir_bytes(cfg.bm25_dir)
                entry: dict[str, Any] = {
                    "build": {
                        "new_rows": new,
                        "copy_s": round(copy_s, 1),
                        "copy_rows_per_s": round(new / copy_s, 1) if copy_s else None,
                        "hnsw_build_s": round(hnsw_s, 1),
                        "vacuum_analyze_s": round(analyze_s, 1),
                        "bm25_index_s": round(bm25_s, 1),
                        "bm25_docs_per_s": round(new / bm25_s, 1) if bm25_s else None,
                        "total_s": round(step_s, 1),
                    },
                    "storage": {**sizes_now.as_dict(), "bm25_mb": round(bm25_bytes / 1024 / 1024, 1)},
                    "shapes": {},
                }
                for name, user in (("many_users", NORMAL_USER), ("heavy_user", HEAVY_USER)):
                    with tqdm(total=opts.searches, desc=f"{size:,}: {name}", disable=bar_off) as bar:
                        entry["shapes"][name] = measure_shape(h, probes[user][: opts.searches], opts.searches, bar)
                per_size[str(sizes_now.rows)] = entry
            jobs = _reindex(cfg) if opts.jobs else {"skipped": "run with --jobs"}
        finally:
            if on is not None:
                with contextlib.suppress(Exception):
                    load.remove_filler(cfg, shape)
    return summarise(per_size, build_s, time.perf_counter() - t_start, pool_s, opts, jobs, definition)


def summarise(
    per_size: dict[str, Any],
    build_s: float,
    total_s: float,
    pool_s: float,
    opts: Options,
    jobs: dict[str, Any],
    definition: str,
) -> dict[str, Any]:
    keys = sorted(per_size, key=int)
    small, large = per_size[keys[0]], per_size[keys[-1]]
    shapes = ("many_users", "heavy_user")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    recall = [ratio(large["shapes"][s]["recall_api"], large["shapes"][s]["recall_exact"]) for s in shapes]
    p99 = [ratio(large["shapes"][s]["search_ms"]["p99"], small["shapes"][s]["search_ms"]["p99"]) for s in shapes]
    dense = [
        ratio(large["shapes"][s]["dense"]["recall_ann"], large["shapes"][s]["dense"]["recall_brute_force"])
        for s in shapes
    ]
    recall_ratio = min((r for r in recall if r is not None), default=None)
    dense_ratio = min((r for r in dense if r is not None), default=None)
    p99_ratio = max((r for r in p99 if r is not None), default=None)
    memories_max = int(keys[-1])
    build_minutes = build_s / 60
    return {
        "memories_max": memories_max,
        "recall_ratio": None if recall_ratio is None else round(recall_ratio, 4),
        "search_p99_ratio": None if p99_ratio is None else round(p99_ratio, 3),
        "build_minutes": round(build_minutes, 2),
        # The dense step alone (its known-answer recall, HNSW plan / brute force; and its top 10 vs brute force's):
        # the fused API recall can hide a dense loss that BM25 makes up for.
        "dense_recall_ratio": None if dense_ratio is None else round(dense_ratio, 4),
        "ann_overlap_at_10_min": min(large["shapes"][s]["dense"]["ann_overlap_at_10"] for s in shapes),
        "total_minutes": round(total_s / 60, 2),
        "sizes": per_size,
        "jobs_at_largest": jobs,
        "targets": {
            "recall_ratio": _target(recall_ratio, ">=", 0.999),
            "search_p99_ratio": _target(p99_ratio, "<=", 1.5),
            "memories_max": _target(memories_max, ">=", 1_000_000),
            "build_minutes": _target(build_minutes, "<=", 45),
        },
        "config": {
            "sizes": list(opts.sizes),
            "searches_per_shape": opts.searches,
            "users": opts.users,
            "tenants": opts.tenants,
            "heavy_share": opts.heavy_share,
            "hnsw_index": definition,
            "pool_texts": opts.pool,
            "pool_embed_s": round(pool_s, 1),
            "noise_sigma": load.NOISE,
            "measured_messages_per_user": opts.conversations * opts.messages,
            "cpu_count": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "notes": [
            "recall_api: known answer in the API's top 10 (the service's plan); recall_exact: the same search in "
            "process with the dense step forced exact; recall_ratio = api / exact at the largest size, worst shape.",
            "dense.*: the service's dense SQL alone; ann_overlap_at_10 against the brute-force top 10 of the scope.",
            "search_ms: /search/memory round trips, one at a time after a warm-up; p99 ratio largest / smallest size.",
        ],
    }
