"""``memos-pipeline bench``: the write and read paths end to end, over real HTTP, on a stack of its own.

One run, self-contained: it starts the database (if embedded), workers, relay and the gunicorn API on its own
queue prefix, port, database and BM25 directory (so it never mixes with a running ``up``, whose indexer holds the
BM25 writer lock), then measures, in this order:

1. **flood**: ``messages`` messages in adds of ``per_add`` from a few client threads (one conversation each):
   ``add_ack_ms`` and, once every ingest is done, ``ingest_msgs_per_s``;
2. **idle probes**: single adds on the drained pipeline, each carrying a unique marker word, then back-to-back
   searches for the marker until a memory whose ``sources`` hold the marked message comes back:
   ``time_to_searchable_ms``;
3. **search**: realistic queries one at a time on the idle pipeline: ``search_fast_ms``;
4. **in process** (still idle, so the bench's own embedder does not compete with the workers for the cores):
   ``search_floor_ms`` (embed + one raw pgvector top-k query) and ``embed_only_msgs_per_s`` on exactly the window
   texts the chunker embedded.

Everything it created (database, queues, BM25 directory) is removed at the end.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import bindparam, text
from tqdm import tqdm

from cli.client import ApiClient
from cli.harness import Isolated, isolated, tenant_of
from evaluation import metrics
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder, get_embedder
from memos_pipeline.stages.chunk import embedding_plan
from memos_pipeline.storage.db import get_engine
from memos_pipeline.storage.models import EMBEDDING_DIM
from memos_pipeline.text.chunking import Turn, Window, window_turns

USER_ID = "bench_user"
TOP_K = 10
CLIENT_THREADS = 4
WARMUP_SEARCHES = 5
SEARCHABLE_TIMEOUT_S = 120.0
OTHER_CPU = "other (other users; shared postgres/system processes)"

Latency = dict[str, float | int | None]


def latency(samples_ms: Sequence[float]) -> Latency:
    """p50/p99 in milliseconds (linear interpolation) and the sample count."""
    return metrics.latency_summary(samples_ms, extra=())


def add_one(api: ApiClient, conversation_id: str, messages: list[dict[str, Any]]) -> tuple[float, str]:
    ms, data = api.add(USER_ID, conversation_id, messages)
    return ms, str(data["ingest_id"])


def search_one(api: ApiClient, query: str) -> tuple[float, dict[str, Any]]:
    return api.search(USER_ID, query, top_k=TOP_K)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Add:
    conversation_id: str
    messages: list[dict[str, Any]]
    context: list[dict[str, Any]]  # the turns before it in its conversation, which the chunker stitches on


def plan_adds(gen: ConversationGenerator, messages: int, per_add: int, conversations: int, overlap: int) -> list[Add]:
    """ceil(messages / per_add) adds dealt round-robin over ``conversations``, each conversation in order."""
    sizes = [per_add] * (messages // per_add) + ([messages % per_add] if messages % per_add else [])
    adds: list[Add] = []
    for c in range(conversations):
        conv = f"conv-{c:02d}"
        mine = sizes[c::conversations]
        msgs, start = gen.conversation(conv, sum(mine)), 0
        for size in mine:
            adds.append(Add(conv, msgs[start : start + size], msgs[max(0, start - overlap) : start]))
            start += size
    return adds


def _turns(messages: Iterable[dict[str, Any]]) -> list[Turn]:
    return [Turn(m["id"], m["id"], m["role"], m["content"], m.get("name"), m.get("chat_time")) for m in messages]


def add_windows(settings: Settings, add: Add) -> list[Window]:
    """The windows the chunker stores for this add (same windowing and context as ``chunk.chunk_ingest``)."""
    return window_turns(
        _turns(add.messages), size=settings.chunk_turns, overlap=settings.chunk_overlap, context=_turns(add.context)
    )


def embedded_texts(settings: Settings, add: Add) -> list[str]:
    """The texts the chunker embeds for this add: its turns, or its windows (MEMOS_WINDOW_VECTORS)."""
    return embedding_plan(add_windows(settings, add), settings.window_vectors)[0]


# ---------------------------------------------------------------- the HTTP phases


def flood(api: ApiClient, adds: list[Add], bar: tqdm[Any]) -> tuple[list[float], list[str], float]:
    """Every add, one client thread per conversation sending back to back: (ack ms, ingest ids, first send)."""
    acks, ids, sent = [0.0] * len(adds), [""] * len(adds), [0.0] * len(adds)
    groups: dict[str, list[int]] = {}
    for i, add in enumerate(adds):
        groups.setdefault(add.conversation_id, []).append(i)

    def client(indexes: list[int]) -> None:
        for i in indexes:
            sent[i] = time.time()
            acks[i], ids[i] = add_one(api, adds[i].conversation_id, adds[i].messages)
            bar.update()

    with cf.ThreadPoolExecutor(len(groups), thread_name_prefix="bench-client") as pool:
        for f in [pool.submit(client, g) for g in groups.values()]:
            f.result()
    return acks, ids, min(sent)


def wait_done(
    settings: Settings, ingest_ids: list[str], timeout_s: float, bar: tqdm[Any] | None = None, poll_s: float = 0.02
) -> float:
    """Poll Postgres until every ingest is done; the wall-clock time the last one finished (``finished_at``, so
    the poll interval does not blur it). Raises on failure."""
    ids = [uuid.UUID(i) for i in ingest_ids]
    sql = text(
        "SELECT count(*) FILTER (WHERE status IN ('done', 'failed')), count(*) FILTER (WHERE status = "
        "'failed'), extract(epoch FROM max(finished_at)) FROM ingests WHERE id = ANY(:ids)"
    )
    deadline = time.monotonic() + timeout_s
    with get_engine(settings).connect() as conn:
        while True:
            done, failed, last = conn.execute(sql, {"ids": ids}).one()
            conn.rollback()  # a fresh snapshot each poll
            if bar is not None:
                bar.update(done - bar.n)
            if failed:
                raise RuntimeError(f"{failed} of {len(ids)} ingests failed; see their stages in /get/status")
            if done == len(ids):
                return float(last)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {len(ids)} ingests done after {timeout_s:.0f}s")
            time.sleep(poll_s)


def probe_searchable(
    api: ApiClient, settings: Settings, gen: ConversationGenerator, probes: int, per_add: int, bar: tqdm[Any]
) -> tuple[list[float], list[float], list[int], list[str]]:
    """Idle-pipeline adds with a marker: (ms from 202 to a search returning it, ack ms, polls, ingest ids)."""
    found_ms, acks, polls, ids = [], [], [], []
    for i in range(probes):
        messages, marker, target = gen.probe(i, per_add)
        ack, ingest_id = add_one(api, "live", messages)
        accepted = time.perf_counter()
        n = 0
        while True:
            _, data = search_one(api, marker)
            n += 1
            if any(target in m["sources"] for m in data["memory_detail_list"]):
                found_ms.append((time.perf_counter() - accepted) * 1000)
                break
            if time.perf_counter() - accepted > SEARCHABLE_TIMEOUT_S:
                _, status = api.post("/get/status", {"ingest_id": ingest_id})
                raise RuntimeError(
                    f"probe {i}: marker {marker} not searchable after {SEARCHABLE_TIMEOUT_S}s "
                    f"({n} searches); ingest {ingest_id} is {status['status']}: {status['stages']}"
                )
        acks.append(ack)
        polls.append(n)
        ids.append(ingest_id)
        wait_done(settings, [ingest_id], SEARCHABLE_TIMEOUT_S)  # the next probe starts on an idle pipeline again
        bar.update()
    return found_ms, acks, polls, ids


def search_fast(api: ApiClient, queries: list[str], n: int, bar: tqdm[Any]) -> tuple[list[float], dict[str, Any]]:
    """``n`` searches one at a time, after a few unrecorded warm-ups: (round trips in ms, where the time went)."""
    for q in queries[:WARMUP_SEARCHES]:
        search_one(api, q)
    out: list[float] = []
    steps: dict[str, list[float]] = {}
    hits = 0
    for i in range(n):
        ms, data = search_one(api, queries[i % len(queries)])
        out.append(ms)
        hits += len(data["memory_detail_list"])
        timings: dict[str, float] = data.get("timings_ms") or {}
        for step, step_ms in timings.items():
            steps.setdefault(step, []).append(float(step_ms))
        # What the worker's own steps do not account for: HTTP, API, broker, result backend, task overhead.
        steps.setdefault("outside_worker_steps", []).append(ms - sum(timings.values()))
        bar.update()
    return out, {"mean_results": round(hits / max(n, 1), 2), "steps_ms": {k: latency(v) for k, v in steps.items()}}


# ---------------------------------------------------------------- the in-process phases (pipeline idle)


def search_floor(
    settings: Settings, embedder: Embedder, tenant_id: uuid.UUID, queries: list[str], n: int
) -> list[float]:
    """Embed the query + one raw pgvector top-k query, on the same database: what no search can beat."""
    sql = text(
        "SELECT id FROM memories WHERE tenant_id = :tenant AND user_id = :user AND status = 'activated' "
        "ORDER BY embedding <=> :q LIMIT :k"
    ).bindparams(bindparam("q", type_=Vector(EMBEDDING_DIM)))
    out: list[float] = []
    with get_engine(settings).connect() as conn:
        for i in range(-WARMUP_SEARCHES, n):
            q = queries[i % len(queries)]
            t0 = time.perf_counter()
            vec = embedder.embed([q])[0]
            rows = conn.execute(sql, {"tenant": tenant_id, "user": USER_ID, "q": vec, "k": TOP_K}).all()
            ms = (time.perf_counter() - t0) * 1000
            if not rows:
                raise RuntimeError("search floor: the pgvector query returned nothing")
            if i >= 0:
                out.append(ms)
        conn.rollback()
    return out


def embed_only(settings: Settings, embedder: Embedder, per_add_texts: list[list[str]]) -> tuple[float, float]:
    """Seconds to embed the windows add by add (as the chunker does: from as many threads as the process has lanes,
    so every lane works), and all of them in batches (likewise spread over the lanes): the machine's ceiling."""
    embedder.embed(per_add_texts[0])  # warm
    flat = [t for texts in per_add_texts for t in texts]
    bs = settings.embed_batch_size
    batches = [flat[i : i + bs] for i in range(0, len(flat), bs)]
    out = []
    for work in (per_add_texts, batches):
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(settings.lanes) as pool:
            list(pool.map(embedder.embed, work))
        out.append(time.perf_counter() - t0)
    return out[0], out[1]


def stored_window_texts(settings: Settings, ingest_ids: list[str]) -> Counter[str]:
    sql = text("SELECT memory_value FROM memories WHERE ingest_id = ANY(:ids) AND kind = 'raw'")
    with get_engine(settings).connect() as conn:
        return Counter(r[0] for r in conn.execute(sql, {"ids": [uuid.UUID(i) for i in ingest_ids]}))


def ingest_rows(settings: Settings, ingest_ids: list[str], column: str) -> list[Any]:
    """(created, finished: epoch seconds from Postgres, ``column``) of these ingests."""
    sql = f"SELECT extract(epoch FROM created_at), extract(epoch FROM finished_at), {column} FROM ingests WHERE id = ANY(:ids)"
    with get_engine(settings).connect() as conn:
        return list(conn.execute(text(sql), {"ids": [uuid.UUID(i) for i in ingest_ids]}).all())


def stage_timings(settings: Settings, ingest_ids: list[str]) -> dict[str, Any]:
    """Per-stage latencies from ``ingests.stages`` (queue waits, chunker embed vs the rest, indexer), and how busy
    each single-process stage was over the ingests' wall time (near 1.0: that stage is the bottleneck)."""
    rows = ingest_rows(settings, ingest_ids, "stages")

    def ts(iso: str) -> float:
        return dt.datetime.fromisoformat(iso).timestamp()

    cols: dict[str, list[float]] = {
        k: []
        for k in (
            "chunker_queue_wait",
            "chunker",
            "chunker_embed",
            "chunker_other",
            "indexer",
            "indexer_bm25",
            "indexer_batch",
            "accepted_to_indexed",
            "accepted_to_vectors",
            "accepted_to_done",
        )
    }
    for created, finished, stages in rows:
        c, x = stages.get("chunker", {}), stages.get("indexer", {})
        try:  # a stage without timings (skipped, recovered by hand) is left out rather than failing the run
            row = {
                "chunker_queue_wait": (ts(c["started_at"]) - float(created)) * 1000,
                "chunker": float(c["ms"]),
                "chunker_embed": float(c["embed_ms"]),
                "chunker_other": float(c["ms"]) - float(c["embed_ms"]),
                "indexer": float(x["ms"]),
                "indexer_bm25": float(x["bm25_ms"]),
                "indexer_batch": float(x.get("batch", 1)),  # ingests in its BM25 commit (workers/indexer.py)
                # The indexer starts once the windows are stored, before their vectors (stages/chunk.py): from
                # the accept's commit to keyword-searchable, and to searchable by meaning as well.
                "accepted_to_indexed": (ts(x["finished_at"]) - float(created)) * 1000,
                "accepted_to_vectors": (ts(c["finished_at"]) - float(created)) * 1000,
                "accepted_to_done": (float(finished) - float(created)) * 1000,
            }
        except (KeyError, TypeError, ValueError):
            continue
        for k, v in row.items():
            cols[k].append(v)
    out: dict[str, Any] = {k: latency(v) for k, v in cols.items()}
    wall_ms = (max(float(r[1]) for r in rows) - min(float(r[0]) for r in rows)) * 1000 if rows else 0.0
    if wall_ms > 0:
        out["busy_fraction"] = {k: round(sum(cols[k]) / wall_ms, 3) for k in ("chunker", "chunker_embed", "indexer")}
    return out


# ---------------------------------------------------------------- where the CPU went (Linux /proc)


def _proc_cpu() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, command name, CPU seconds so far) for every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        comm, fields = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _busy_cpu_s() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per phase, split by process: the bench itself, each stack process (with its children), this
    run's Postgres backends, the broker and Redis, and everything else on the machine (other users' load, which
    makes the run's numbers pessimistic when it is large)."""

    def __init__(self, roots: dict[str, int], db_backends: Callable[[], list[int]]) -> None:
        self.roots, self.db_backends = roots, db_backends
        self.phases: dict[str, dict[str, Any]] = {}
        self._t, self._busy, self._procs = time.monotonic(), _busy_cpu_s(), _proc_cpu()

    def _groups(self, procs: dict[int, tuple[int, str, float]]) -> dict[int, str]:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        owner: dict[int, str] = {}
        for name, root in self.roots.items():
            stack = [root]
            while stack:
                pid = stack.pop()
                owner.setdefault(pid, name)
                stack.extend(children.get(pid, []))
        for pid in self.db_backends():
            owner.setdefault(pid, "postgres (this run)")
        for pid, (_, comm, _) in procs.items():
            if comm in ("beam.smp", "redis-server"):
                owner.setdefault(pid, "rabbitmq+redis")
        return owner

    def phase(self, name: str) -> None:
        """Close the phase that began at the previous call (or at construction)."""
        t, busy, procs = time.monotonic(), _busy_cpu_s(), _proc_cpu()
        owner = self._groups(procs)
        by: dict[str, float] = {}
        for pid, (_, _, cpu) in procs.items():
            if pid in owner:
                by[owner[pid]] = by.get(owner[pid], 0.0) + cpu - self._procs.get(pid, (0, "", 0.0))[2]
        wall = t - self._t
        by[OTHER_CPU] = max(0.0, busy - self._busy - sum(by.values()))
        self.phases[name] = {
            "wall_s": round(wall, 2),
            "cpu_capacity_s": round(wall * (os.cpu_count() or 1), 2),
            "busy_s": round(busy - self._busy, 2),
            "by_process_s": {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
        }
        self._t, self._busy, self._procs = t, busy, procs


# ---------------------------------------------------------------- the run


def _db_backends(settings: Settings) -> list[int]:
    """Server pids of the connections to this run's own database (local embedded server only)."""
    with get_engine(settings).connect() as conn:
        return [
            int(r[0]) for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
        ]


def _contention_warnings(phases: dict[str, dict[str, Any]], threshold: float = 0.1) -> list[str]:
    out = []
    for name, ph in phases.items():
        other = ph["by_process_s"].get(OTHER_CPU, 0.0)
        if ph["cpu_capacity_s"] and other / ph["cpu_capacity_s"] > threshold:
            out.append(
                f"WARNING: other processes on this machine used {other / ph['cpu_capacity_s']:.0%} of the CPU "
                f"during '{name}': the numbers of that phase are pessimistic."
            )
    return out


def _target(value: float | None, op: str, bound: float) -> dict[str, Any]:
    reached = value is not None and (value <= bound if op == "<=" else value >= bound)
    return {"target": f"{op} {bound}", "value": None if value is None else round(value, 3), "reached": reached}


def _ratio(a: float | int | None, b: float | int | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def run_bench(
    settings: Settings,
    messages: int = 2000,
    per_add: int = 10,
    progress: bool = True,
    *,
    probes: int | None = None,
    searches: int = 200,
    seed: int = 7,
    on: Isolated | None = None,
    compare: str | None = None,
) -> dict[str, Any]:
    """Run every phase on a fresh stack (``on``: a stack the caller shares, with a tenant of the run's own) and
    return the results (see the module docstring). ``compare="mem0"``: mem0 OSS on the same adds and queries
    afterwards, in this process (evaluation/mem0_compare.py), and the ratios."""
    from memos_pipeline.queues import queues_for

    if messages < 1 or per_add < 1:
        raise ValueError("messages and per_add must be >= 1")
    load_start = list(os.getloadavg())
    queues = queues_for(settings.llm_enabled)
    gen = ConversationGenerator(seed)
    adds = plan_adds(gen, messages, per_add, min(CLIENT_THREADS, -(-messages // per_add)), settings.chunk_overlap)
    n_probes = probes if probes is not None else max(3, min(30, len(adds) // 2))
    queries = gen.queries(50)
    bars: dict[str, Any] = {"file": sys.stderr, "disable": not progress, "leave": True}
    t_start = time.perf_counter()
    # A database of its own (same corpus size every run, nothing left in the user's data). The per-key rate limit
    # stays on (its Redis round trip is part of every request) but high enough that the polling never trips it.
    rate_limit = settings.rate_limit_per_min and 10_000_000
    with tenant_of(on, "bench") if on else isolated(settings, "bench", queues, rate_limit_per_min=rate_limit) as h:
        cfg, api = h.settings, h.api
        _, warm_id = add_one(api, "warmup", gen.conversation("warmup", per_add))  # pools, auth cache, BM25 reader
        wait_done(cfg, [warm_id], 60)
        startup_s = time.perf_counter() - t_start
        roots = {name: p.pid for name, p in h.stack.procs}
        own_db = cfg.database_url != settings.database_url
        cpu = CpuMeter(
            {**roots, "bench (clients + in-process)": os.getpid()}, (lambda: _db_backends(cfg)) if own_db else list
        )

        with tqdm(total=len(adds), desc="add (flood)", unit="add", **bars) as bar:
            acks, ingest_ids, first_sent = flood(api, adds, bar)
        cpu.phase("flood: sending adds")
        with tqdm(total=len(adds), desc="ingest", unit="add", **bars) as bar:
            last_done = wait_done(cfg, ingest_ids, 120 + messages * 0.5, bar, poll_s=0.25)
        cpu.phase("flood: draining after the last 202")
        ingest_s = last_done - first_sent
        with tqdm(total=n_probes, desc="time to searchable (idle)", unit="add", **bars) as bar:
            tts, probe_acks, polls, probe_ids = probe_searchable(api, cfg, gen, n_probes, per_add, bar)
        cpu.phase("idle probes (time to searchable)")
        with tqdm(total=searches, desc="search (HTTP)", unit="q", **bars) as bar:
            search_ms, search_detail = search_fast(api, queries, searches, bar)
        cpu.phase("search over HTTP")

        embedder = get_embedder(cfg)  # loaded only now: the pipeline is idle, nothing competes for the cores
        floor_ms = search_floor(cfg, embedder, h.tenant_id, queries, searches)
        per_add_texts = [embedded_texts(cfg, a) for a in adds]
        stored = Counter(w.text for a in adds for w in add_windows(cfg, a))
        texts_match = stored_window_texts(cfg, ingest_ids) == stored
        t_add, t_batched = embed_only(cfg, embedder, per_add_texts)
        cpu.phase("in process: search floor + embed only")
        flood_stages, probe_stages = stage_timings(cfg, ingest_ids), stage_timings(cfg, probe_ids)

    ack, searchable, search, floor = latency(acks), latency(tts), latency(search_ms), latency(floor_ms)
    ingest_rate = messages / ingest_s
    embed_rate, batched_rate = messages / t_add, messages / t_batched
    compared: dict[str, Any] = {}
    if compare == "mem0":
        from evaluation.mem0_compare import run_mem0

        mem0 = run_mem0(adds, queries, searches, USER_ID, TOP_K, cfg.torch_threads)
        compared = {
            "mem0": mem0,
            "ratios": {
                "ingest_msgs_per_s_over_mem0": _ratio(ingest_rate, mem0["ingest_msgs_per_s"]),
                "time_to_searchable_p50_over_mem0": _ratio(searchable["p50"], mem0["time_to_searchable_ms"]["p50"]),
                "search_p50_over_mem0": _ratio(search["p50"], mem0["search_ms"]["p50"]),
            },
        }
    return {
        **({"compare": compared} if compared else {}),
        "config": {
            "messages": messages,
            "per_add": per_add,
            "adds": len(adds),
            "windows": sum(map(len, per_add_texts)),
            "client_threads": len({a.conversation_id for a in adds}),
            "probes": n_probes,
            "searches": searches,
            "top_k": TOP_K,
            "cpu_count": os.cpu_count(),
            "chunk_turns": cfg.chunk_turns,
            "chunk_overlap": cfg.chunk_overlap,
            "embed_batch_size": cfg.embed_batch_size,
            "embedder": embedder.name,
            "embed_runtime": cfg.embed_runtime,
            "torch_threads": cfg.torch_threads or "default",
            "embed_lanes": cfg.lanes,
            "queues": queues,
            "api_workers": cfg.api_workers,
            "api_threads": cfg.api_threads,
            "bm25_call": cfg.bm25_call,
            "fusion": cfg.fusion,
            "seed": seed,
            "startup_s": round(startup_s, 2),
        },
        "add_ack_ms": ack,
        "time_to_searchable_ms": searchable,
        "search_fast_ms": search,
        "search_floor_ms": floor,
        "ingest_msgs_per_s": round(ingest_rate, 1),
        "embed_only_msgs_per_s": round(embed_rate, 1),
        "embed_only_batched_msgs_per_s": round(batched_rate, 1),
        "targets": {
            "add_ack_p99_ms": _target(ack["p99"], "<=", 20),
            "time_to_searchable_p99_ms": _target(searchable["p99"], "<=", 300),
            "search_fast_p99_ms": _target(search["p99"], "<=", 50),
            "search_fast_p50_over_floor_p50": _target(_ratio(search["p50"], floor["p50"]), "<=", 1.5),
            "ingest_over_embed_only": _target(ingest_rate / embed_rate, ">=", 0.8),
            **(
                {"ingest_over_mem0": _target(compared["ratios"]["ingest_msgs_per_s_over_mem0"], ">=", 2.0)}
                if compared
                else {}
            ),
        },
        "details": {
            "ingest_seconds": round(ingest_s, 3),
            "add_ack_idle_ms": latency(probe_acks),
            "searchable_polls_per_probe": latency([float(p) for p in polls]),
            "search_fast": search_detail,
            "embed_texts_match_pipeline": texts_match,
            "stages_flood_ms": flood_stages,
            "stages_idle_probes_ms": probe_stages,
            "cpu_s": cpu.phases,
            "loadavg_start_end": [load_start, list(os.getloadavg())],
        },
        "notes": [
            *_contention_warnings(cpu.phases),
            "add_ack_ms: POST /add/message round trips until the 202, during the flood "
            f"({len({a.conversation_id for a in adds})} client threads back to back, so the workers are embedding "
            "meanwhile); details.add_ack_idle_ms is the same on an idle pipeline.",
            "ingest_msgs_per_s: messages / (first add sent -> last ingest status done, from ingests.finished_at).",
            "time_to_searchable_ms: measured on an idle pipeline (flood drained, one probe add at a time, each "
            "waited to done before the next), separately from the flood: from the 202 until a POST /search/memory "
            "for the probe's unique marker word returns a memory whose sources hold the marked message's client id. "
            "A marker word is found by BM25, which indexes the windows before their vectors are written: "
            "details.stages_idle_probes_ms.accepted_to_vectors is when the same add is searchable by meaning too.",
            "search_fast_ms: POST /search/memory (mode fast, top_k 10) one at a time after ingest drained, "
            f"after {WARMUP_SEARCHES} unrecorded warm-ups.",
            "search_floor_ms and embed_only_*: in the bench process with the same embedder, run after ingest "
            "drained so it does not compete with the workers for the CPU cores.",
            "embed_only_msgs_per_s embeds each add's windows in one call as the chunker does, from one thread per "
            "embedding lane (config.embed_lanes); embed_only_batched_msgs_per_s embeds all windows in batches of "
            "embed_batch_size the same way (the ceiling).",
            "details.search_fast.steps_ms: the search worker's own step timings (timings_ms in the response); "
            "outside_worker_steps is the rest of the round trip (HTTP, API, broker, Redis result, task overhead).",
            "details.stages_*: from ingests.stages; busy_fraction = summed stage time / wall time of those ingests.",
            "details.cpu_s: CPU seconds per phase and process from /proc; a large 'other' share means other load "
            "on the machine slowed this run.",
            "The run uses its own database, queues, BM25 directory and API port; all are removed at the end.",
        ],
    }
