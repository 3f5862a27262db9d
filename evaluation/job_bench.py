"""Batch-job throughput with a kill half-way and a resume: ``python -m evaluation.job_bench reindex [-n 100000]`` or
``python -m evaluation.job_bench reembed [-n 5000] [--model local]``.

On a stack of its own (database, queue prefix, BM25 directory; the workers of the job's queue, and for reembed a
Postgres server of its own and a search worker): COPY ``n`` memories straight into Postgres (texts from the
benchmark's synthetic chat, one in ten with a Chinese sentence; embeddings from a fixed table of 997 seeded
vectors: cheap and deterministic), then run ``memos-pipeline <job> --json`` as a subprocess, SIGKILL it once half
of the batches are checkpointed, run it again and let it finish from its checkpoint. Meanwhile searches and live
writes run against the stack the whole time:

- ``reindex``: BM25 searches of the live index (as the search workers do them), and live adds as the API makes
  them (a row, then ``memos.indexer.upsert``, timed: the indexer takes turns between them and the batch tasks);
- ``reembed`` (every row through the model on the chunker): dense searches through the search worker, and live
  adds as a producer sends them (``memos.chunker.accept``, timed until chunked); plus ``embed_only_rows_per_s``,
  the model alone on the same texts in this process (the ceiling).

Prints JSON: ``seconds`` is the wall time of both runs, ``job`` the resumed run's summary (resume point, counts),
and what the searches and live writes saw meanwhile.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from functools import cached_property
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import text

from evaluation import metrics
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings, get_settings
from memos_pipeline.jobs.runner import JobKind
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import EMBEDDING_DIM

CHINESE = (
    "我下个月要去北京出差，住在朝阳区。",
    "周末我们在上海的外滩散步。",
    "她在广州旅游时吃了很多早茶。",
    "我的猫叫小米，今年三岁。",
    "明天下午三点在杭州开会。",
    "他正在学习日语和韩语。",
)
COLUMNS = (
    "id tenant_id user_id conversation_id kind memory_key memory_value memory_type status embedding content_hash "
    "version created_at updated_at"
).split()


def _vectors() -> list[str]:
    rng = np.random.default_rng(384)
    base = rng.standard_normal((997, EMBEDDING_DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return ["[" + ",".join(f"{x:.5f}" for x in v) + "]" for v in base]


def memory_text(gen: ConversationGenerator, i: int) -> str:
    turns = gen.conversation(f"c{i // 50}", 3)
    text = "\n".join(f"{t['role']}: {t['content']}" for t in turns[i % 2 :])
    return f"{text}\n{CHINESE[i % len(CHINESE)]}" if i % 10 == 0 else text


def _pg_url(cfg: Settings) -> str:
    return cfg.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


def insert_memories(
    cfg: Settings,
    tenant_id: uuid.UUID,
    n: int,
    *,
    users: int = 100,
    seed: int = 7,
    status_every: int = 0,
    threads: int = 2,
) -> list[uuid.UUID]:
    """COPY ``n`` memories (raw and fact) into Postgres, in ``threads`` parallel connections (inserts into a table
    with an HNSW index are CPU-bound per connection). Every ``status_every``-th is archived (not to be indexed).
    Timestamps spread over the past year, as in a corpus that grew over time (a re-index's catch-up pass only
    re-reads rows changed since shortly before it started). Returns the ids in insertion order."""
    gen, vectors = ConversationGenerator(seed), _vectors()
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.UUID(int=random.Random(f"{seed}:{tenant_id}:{i}").getrandbits(128), version=4) for i in range(n)]

    def copy(part: range) -> None:
        with psycopg.connect(_pg_url(cfg)) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY memories ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                for i in part:
                    text = memory_text(gen, i)
                    kind = "fact" if i % 4 == 3 else "raw"
                    status = "archived" if status_every and i % status_every == status_every - 1 else "activated"
                    at = now - dt.timedelta(days=365 * (n - i) / n, hours=1)
                    memory_type = "UserMemory" if kind == "fact" else "RawMemory"
                    conv = f"c{i // 50}"
                    row = (ids[i], tenant_id, f"user{i % users}", conv, kind, text[:60], text, memory_type, status)
                    cp.write_row((*row, vectors[i % 997], f"h{i}", 1, at, at))
            conn.commit()

    step = -(-n // threads)
    with cf.ThreadPoolExecutor(threads) as pool:  # a failed COPY raises here
        list(pool.map(copy, [range(k, min(n, k + step)) for k in range(0, n, step)]))
    return ids


def kill_half_way(cp: Any, command: list[str], env: dict[str, str], fraction: float, timeout: float) -> float:
    """Start a batch job (``command``), SIGKILL it once ``fraction`` of its batches are checkpointed in ``cp``
    (a ``runner.Checkpoint``); returns its seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - t0 < timeout:
            job = cp.load()
            if job and job.bounds and len(cp.done(job.job_id)) >= fraction * job.batches:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{command[3]} exited before the kill: {proc.communicate()}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- what runs against the stack meanwhile


class Load(threading.Thread):
    """Work done against the stack while the job runs, every ``every_s`` until ``halt``: each ``once`` returns its
    milliseconds (``ms``), or its error is counted (``failures``)."""

    def __init__(self, cfg: Settings, tenant: tuple[uuid.UUID, str], every_s: float) -> None:
        super().__init__(daemon=True)
        self.cfg, (self.tenant_id, self.tenant), self.every_s = cfg, tenant, every_s
        self.ms: list[float] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    @cached_property
    def app(self) -> Any:
        from memos_pipeline.celery_app import make_celery

        return make_celery(self.cfg)

    def once(self, i: int) -> float:
        raise NotImplementedError

    def run(self) -> None:
        i = 0
        while not self.halt.wait(self.every_s):
            try:
                self.ms.append(self.once(i))
            except Exception as exc:
                self.failures.append(repr(exc))
            i += 1

    def stop(self) -> dict[str, Any]:
        """Halt, join; the milliseconds' p50, p99 and max, and the count of failures."""
        self.halt.set()
        self.join()
        if "app" in self.__dict__:
            self.app.close()
        return {**metrics.latency_summary(self.ms, extra=("max",), digits=1), "failures": len(self.failures)}

    def task(self, name: str, payload: dict[str, Any], timeout: float) -> float:
        """Milliseconds until the task ``name`` returned."""
        t0 = time.perf_counter()
        result = self.app.send_task(name, args=[payload], ignore_result=False)
        try:
            result.get(timeout=timeout)
        finally:
            result.forget()
        return (time.perf_counter() - t0) * 1000


class BM25Searches(Load):
    """Searches of the live BM25 index, as the search workers make them."""

    @cached_property
    def queries(self) -> list[tuple[str, ...]]:
        from memos_pipeline.text.tokenizer import tokenize

        return [tuple(tokenize(q)) for q in ConversationGenerator(7).queries(50)]

    def once(self, i: int) -> float:
        from memos_pipeline.storage.bm25 import Bm25Query, get_index

        t0 = time.perf_counter()
        get_index(self.cfg).search(Bm25Query(str(self.tenant_id), f"user{i % 100}", self.queries[i % 50]))
        return (time.perf_counter() - t0) * 1000


class LiveUpserts(Load):
    """Live adds as the API makes them: a row, then memos.indexer.upsert, timed (the wait on the indexer)."""

    vec = "[" + ",".join(["0"] * (EMBEDDING_DIM - 1) + ["1"]) + "]"

    def once(self, i: int) -> float:
        mid = uuid.uuid4()
        with psycopg.connect(_pg_url(self.cfg)) as conn:
            conn.execute(
                "INSERT INTO memories (id, tenant_id, user_id, conversation_id, kind, memory_key, memory_value,"
                " memory_type, status, embedding, content_hash, version) VALUES"
                " (%s, %s, 'live', 'live', 'fact', 'live', 'a live add during the re-index', 'UserMemory',"
                " 'activated', %s, 'live', 1)",
                (mid, self.tenant_id, self.vec),
            )
        return self.task("memos.indexer.upsert", {"v": 1, "memory_ids": [str(mid)]}, 120)


class DenseSearches(Load):
    """Dense searches through the search worker (it embeds each query with the active model)."""

    queries = ConversationGenerator(7).queries(50)

    def once(self, i: int) -> float:
        job = {"v": 1, "tenant_id": str(self.tenant_id), "user_id": f"user{i % 100}", "channels": ["dense"]}
        return self.task("memos.search.fast", {**job, "query": self.queries[i % 50], "include_preference": False}, 60)


class LiveAdds(Load):
    """Adds as a producer sends them (``memos.chunker.accept``), timed until chunked: the chunker takes turns
    between them and the batch tasks."""

    gen = ConversationGenerator(11)

    def once(self, i: int) -> float:
        key = uuid.uuid4().hex
        msgs = [{"role": t["role"], "content": t["content"]} for t in self.gen.conversation(f"live{i}", 2)]
        request = {"user_id": "live", "conversation_id": f"live{i}", "messages": msgs}
        t0 = time.perf_counter()
        self.app.send_task(
            "memos.chunker.accept", args=[{"v": 1, "tenant": self.tenant, "idempotency_key": key, "request": request}]
        )
        while time.perf_counter() - t0 < 300 and not self._chunked(key):
            time.sleep(0.05)
        return (time.perf_counter() - t0) * 1000

    def _chunked(self, key: str) -> bool:
        sql = text("SELECT stages->'chunker'->>'status' FROM ingests WHERE idempotency_key = :k")
        with session_scope(self.cfg) as s:
            return s.execute(sql, {"k": key}).scalar_one_or_none() == "done"


# ---------------------------------------------------------------- the run


def _embed_only(cfg: Settings, model: str, n: int) -> float:
    """The model alone, in this process, on the job's texts: rows per second."""
    from memos_pipeline.embedders import model_for

    sample = [memory_text(ConversationGenerator(7), i) for i in range(min(n, 256))]
    embedder = model_for(cfg, model)
    embedder.embed(sample[:8])
    t0 = time.perf_counter()
    embedder.embed(sample)
    return len(sample) / (time.perf_counter() - t0)


def run_bench(
    settings: Settings,
    kind: str,
    n: int,
    batch_size: int,
    kill_at: float | None = 0.5,
    window: int | None = None,
    model: str = "local",
) -> dict[str, Any]:
    from cli.harness import isolated
    from cli.stack import settings_env
    from memos_pipeline.jobs import reembed, reindex

    job: JobKind[Any] = reindex.KIND if kind == "reindex" else reembed.KIND
    queues, loads = (
        (("indexer",), (BM25Searches, LiveUpserts))
        if kind == "reindex"
        else (("chunker", "search"), (DenseSearches, LiveAdds))
    )
    # reembed: a Postgres server of its own, so that nobody else stopping the shared one stops the run.
    with isolated(settings, f"{kind}bench", queues, api=False, private_pg=kind == "reembed", log_level="WARNING") as h:
        cfg, cp = h.settings, job.checkpoint(h.settings)
        try:
            t0 = time.perf_counter()
            insert_memories(cfg, h.tenant_id, n)
            insert_s = time.perf_counter() - t0
            embed_only = _embed_only(cfg, model, n) if kind == "reembed" else None
            # --force: the local model is the active one already; the point is to recompute every vector with it.
            args = ["--model", model, "--force"] if kind == "reembed" else []
            args += ["--batch-size", str(batch_size), *(["--window", str(window)] if window else [])]
            command, env = [sys.executable, "-m", "cli", kind, "--json", *args], settings_env(cfg)
            during = [
                load(cfg, (h.tenant_id, h.tenant), every_s)
                for load, every_s in zip(loads, (0.005, 0.5) if kind == "reindex" else (0.25, 2.0), strict=True)
            ]
            for load in during:
                load.start()
            first_s = kill_half_way(cp, command, env, kill_at, timeout=7200) if kill_at else 0.0
            t1 = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            second_s = time.perf_counter() - t1
            searches, writes = (load.stop() for load in during)
            if proc.returncode != 0:
                raise RuntimeError(f"{kind} failed ({proc.returncode}): {proc.stderr[-2000:]}")
            out = json.loads(proc.stdout)
            seconds = first_s + second_s
            done = out["docs"] if kind == "reindex" else out["embedded"]
            result = {
                "inserted": n,
                "insert_rows_per_s": round(n / insert_s, 1),
                "seconds": round(seconds, 2),
                f"{'docs' if kind == 'reindex' else 'rows'}_per_s": round(done / seconds, 1),
                "killed_run_s": round(first_s, 2),
                "resume_run_s": round(second_s, 2),
                "job": out,  # the resumed run's summary: resumed_from, batches, its own rate, the finalize's counts
                "searches_during": searches,
                # reindex: live adds are in docs too (a full re-index takes every tenant)
                "live_writes_during": writes,
                "cpu_count": os.cpu_count(),
                "loadavg_1m": os.getloadavg()[0],
            }
            if kind == "reindex":
                from memos_pipeline.storage.bm25 import get_index

                return {**result, "count_in_index": get_index(cfg).count(str(h.tenant_id))}
            return {**result, "embed_only_rows_per_s": round(embed_only or 0.0, 1)}
        finally:
            cp.forget_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=("reindex", "reembed"))
    p.add_argument("-n", type=int, default=None, help="memories to insert and process (100000 reindex, 5000 reembed)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the CLI's (2000 reindex, 100 reembed)")
    p.add_argument("--window", type=int, default=None, help="default: the CLI's")
    p.add_argument("--model", default="local", help="reembed: the model to re-embed with (default: the local MiniLM)")
    p.add_argument("--no-kill", action="store_true", help="one uninterrupted run")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n, batch = (100_000, 2000) if a.kind == "reindex" else (5000, 100)
    result = run_bench(
        get_settings(), a.kind, a.n or n, a.batch_size or batch, None if a.no_kill else 0.5, a.window, a.model
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
