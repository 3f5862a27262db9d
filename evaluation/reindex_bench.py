"""Re-index throughput, with a kill half-way and a resume: ``python -m evaluation.reindex_bench [-n 100000]``.

On a stack of its own (database, queue prefix, BM25 directory; an indexer worker): insert ``n`` memories straight
into Postgres with COPY (texts from the benchmark's synthetic chat, one in ten with a Chinese sentence; embeddings
from a fixed table of 997 seeded vectors: cheap and deterministic, nothing here reads them), then run
``memos-pipeline reindex`` as a subprocess, SIGKILL it once half of the batches are checkpointed, run it again
and let it finish from its checkpoint. Searches run against the index the whole time. Prints JSON:
``{docs, seconds, docs_per_s, batches, resumed_from, ...}`` where ``seconds`` is the wall time of both runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings, get_settings
from memos_pipeline.jobs import reembed, reindex
from memos_pipeline.storage import migrate, pgserver
from memos_pipeline.storage.bm25 import Bm25Query, get_index
from memos_pipeline.storage.db import get_engine
from memos_pipeline.storage.models import EMBEDDING_DIM
from memos_pipeline.text.tokenizer import tokenize

CHINESE = (
    "我下个月要去北京出差，住在朝阳区。",
    "周末我们在上海的外滩散步。",
    "她在广州旅游时吃了很多早茶。",
    "我的猫叫小米，今年三岁。",
    "明天下午三点在杭州开会。",
    "他正在学习日语和韩语。",
)
COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "conversation_id",
    "kind",
    "memory_key",
    "memory_value",
    "memory_type",
    "status",
    "embedding",
    "content_hash",
    "version",
    "created_at",
    "updated_at",
)


def _vectors() -> list[str]:
    rng = np.random.default_rng(384)
    base = rng.standard_normal((997, EMBEDDING_DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return ["[" + ",".join(f"{x:.5f}" for x in v) + "]" for v in base]


def memory_text(gen: ConversationGenerator, i: int) -> str:
    turns = gen.conversation(f"c{i // 50}", 3)
    text = "\n".join(f"{t['role']}: {t['content']}" for t in turns[i % 2 :])
    return f"{text}\n{CHINESE[i % len(CHINESE)]}" if i % 10 == 0 else text


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
    url = cfg.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")

    def copy(part: range) -> None:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY memories ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                for i in part:
                    text = memory_text(gen, i)
                    kind = "fact" if i % 4 == 3 else "raw"
                    status = "archived" if status_every and i % status_every == status_every - 1 else "activated"
                    at = now - dt.timedelta(days=365 * (n - i) / n, hours=1)
                    cp.write_row(
                        (
                            ids[i],
                            tenant_id,
                            f"user{i % users}",
                            f"c{i // 50}",
                            kind,
                            text[:60],
                            text,
                            "UserMemory" if kind == "fact" else "RawMemory",
                            status,
                            vectors[i % 997],
                            f"h{i}",
                            1,
                            at,
                            at,
                        )
                    )
            conn.commit()

    step = -(-n // threads)
    workers = [threading.Thread(target=copy, args=(range(k, min(n, k + step)),)) for k in range(0, n, step)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return ids


def reindex_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.reindex", "--json", *args]


def kill_half_way(cp: Any, command: list[str], env: dict[str, str], fraction: float, timeout: float) -> float:
    """Start a batch job (``command``), SIGKILL it once ``fraction`` of its batches are checkpointed in ``cp``
    (a ``batchjob.Checkpoint``); returns its seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - t0 < timeout:
            job = cp.load()
            if job and job.bounds and len(cp.done(job.job_id)) >= fraction * job.batches:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{command[2]} exited before the kill: {proc.communicate()}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    return time.perf_counter() - t0


class Searcher(threading.Thread):
    """Searches the live index (as the search workers do) until stopped; counts answers and failures."""

    def __init__(self, cfg: Settings, tenant_id: uuid.UUID, queries: list[tuple[str, ...]]) -> None:
        super().__init__(daemon=True)
        self.cfg, self.tenant_id, self.queries = cfg, str(tenant_id), queries
        self.ms: list[float] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        index, i = get_index(self.cfg), 0
        while not self.halt.is_set():
            t0 = time.perf_counter()
            try:
                index.search(Bm25Query(self.tenant_id, f"user{i % 100}", self.queries[i % len(self.queries)]))
                self.ms.append((time.perf_counter() - t0) * 1000)
            except Exception as exc:
                self.failures.append(repr(exc))
            i += 1
            time.sleep(0.005)


class LiveUpserts(threading.Thread):
    """Live adds during the job, as the API makes them: a row, then memos.indexer.upsert; measures how long each
    waits on the indexer, which takes turns between them and the batch tasks."""

    def __init__(self, cfg: Settings, tenant_id: uuid.UUID, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cfg, self.tenant_id, self.every_s = cfg, tenant_id, every_s
        self.ms: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from memos_pipeline.celery_app import make_celery

        app, url = make_celery(self.cfg), self.cfg.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
        vec = "[" + ",".join(["0"] * (EMBEDDING_DIM - 1) + ["1"]) + "]"
        while not self.halt.wait(self.every_s):
            mid = uuid.uuid4()
            with psycopg.connect(url) as conn:
                conn.execute(
                    "INSERT INTO memories (id, tenant_id, user_id, conversation_id, kind, memory_key, memory_value,"
                    " memory_type, status, embedding, content_hash, version) VALUES"
                    " (%s, %s, 'live', 'live', 'fact', 'live', 'a live add during the re-index', 'UserMemory',"
                    " 'activated', %s, 'live', 1)",
                    (mid, self.tenant_id, vec),
                )
            t0 = time.perf_counter()
            result = app.send_task(
                "memos.indexer.upsert", args=[{"v": 1, "memory_ids": [str(mid)]}], ignore_result=False
            )
            result.get(timeout=120)
            result.forget()
            self.ms.append((time.perf_counter() - t0) * 1000)
        app.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def own_stack(settings: Settings, name: str, queues: tuple[str, ...], private_pg: bool = False) -> Iterator[Settings]:
    """A stack of its own for a benchmark: database, queue prefix, BM25 directory, the workers of ``queues``;
    all of it removed afterwards (and the jobs' checkpoints in Redis). ``private_pg``: with the embedded database,
    a Postgres server of its own too (on a free port), so that nobody else stopping the shared one stops the run."""
    from cli.stack import Stack

    run = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix=f"memos-{name}-bench-{run}-"))
    base = settings.with_overrides(queue_prefix=f"{name}bench{run}.", bm25_path=tmp / "bm25", log_level="WARNING")
    if private_pg and base.embedded_db:
        tmp.chmod(0o755)  # the server's OS user (when we are root) keeps its data dir in here: removed with it
        base = base.with_overrides(home=tmp / "home", pg_port=free_port())
    own_db, cfg, started_pg = f"memos_{name}bench_{run}", base, False
    stack: Stack | None = None
    try:
        if base.embedded_db:
            started_pg = pgserver.start(base)
            pgserver.ensure_database(base, own_db)
            cfg = base.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:{base.pg_port}/{own_db}")
        migrate.upgrade(cfg)
        stack = Stack(cfg, queues=queues, api=False, quiet=True)
        stack.start()
        stack.wait_ready(timeout=180)
        yield cfg
    finally:
        if stack is not None:
            stack.stop(stop_db=False)
            _delete_queues(cfg)
        if cfg is not base:
            get_engine(cfg).dispose()
            pgserver.drop_database(base, own_db)
        if started_pg:
            pgserver.release(base)
        shutil.rmtree(tmp, ignore_errors=True)
        reindex.Checkpoint(base).forget_all()
        reembed.Checkpoint(base).forget_all()


def run_bench(
    settings: Settings, n: int = 100_000, batch_size: int = 2000, kill_at: float | None = 0.5, window: int | None = None
) -> dict[str, Any]:
    from cli.stack import settings_env

    with own_stack(settings, "rx", ("indexer",)) as cfg:
        tenant_id = uuid.uuid4()
        t0 = time.perf_counter()
        insert_memories(cfg, tenant_id, n)
        insert_s = time.perf_counter() - t0
        env, args = settings_env(cfg), ["--batch-size", str(batch_size)] + (["--window", str(window)] if window else [])
        searcher = Searcher(cfg, tenant_id, [tuple(tokenize(q)) for q in ConversationGenerator(7).queries(50)])
        searcher.start()
        live = LiveUpserts(cfg, tenant_id)
        live.start()
        cp = reindex.Checkpoint(cfg)
        first_s = kill_half_way(cp, reindex_command(*args), env, kill_at, timeout=3600) if kill_at else 0.0
        t1 = time.perf_counter()
        proc = subprocess.run(reindex_command(*args), env=env, capture_output=True, text=True, check=False)
        second_s = time.perf_counter() - t1
        searcher.halt.set()
        live.halt.set()
        searcher.join()
        live.join()
        if proc.returncode != 0:
            raise RuntimeError(f"reindex failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout)
        seconds = first_s + second_s
        ms = sorted(searcher.ms) or [float("nan")]
        return {
            "docs": summary["docs"],
            "pg_rows": summary["pg_rows"],
            "inserted": n,
            "seconds": round(seconds, 2),
            "docs_per_s": round(summary["docs"] / seconds, 1),
            "batches": summary["batches"],
            "batch_size": batch_size,
            "resumed_from": summary["resumed_from"],
            "killed_run_s": round(first_s, 2),
            "resume_run_s": round(second_s, 2),
            "resume_docs_per_s": summary["docs_per_s"],
            "resume_batches": summary["batches_this_run"],
            "caught_up": summary["caught_up"],
            "insert_rows_per_s": round(n / insert_s, 1),
            "searches_during": len(searcher.ms) + len(searcher.failures),
            "search_failures": len(searcher.failures),
            "search_p50_ms": round(ms[len(ms) // 2], 3),
            "search_p99_ms": round(ms[int(len(ms) * 0.99)], 3),
            "live_upserts_during": len(live.ms),  # live adds: in docs too (a full re-index takes every tenant)
            "live_upsert_p50_ms": round(sorted(live.ms)[len(live.ms) // 2], 1) if live.ms else None,
            "live_upsert_max_ms": round(max(live.ms), 1) if live.ms else None,
            "count_in_index": get_index(cfg).count(str(tenant_id)),
            "loadavg_1m": os.getloadavg()[0],
        }


def _delete_queues(cfg: Settings) -> None:
    from kombu import Connection

    from memos_pipeline.celery_app import declared_queues

    with Connection(cfg.broker_url) as conn:
        for q in declared_queues(cfg):
            try:
                q(conn.default_channel).delete()
            except Exception:  # already gone
                continue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=100_000, help="memories to insert and re-index")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--window", type=int, default=None, help="default: the CLI's (1 embedded, 4 Elasticsearch)")
    p.add_argument("--no-kill", action="store_true", help="one uninterrupted run")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_bench(get_settings(), a.n, a.batch_size, None if a.no_kill else 0.5, a.window)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
