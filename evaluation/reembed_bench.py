"""Re-embedding throughput, with a kill half-way and a resume: ``python -m evaluation.reembed_bench [-n 5000]``.

On a stack of its own (Postgres server and database, queue prefix; a chunker and a search worker): COPY ``n`` memories into Postgres
(texts from the benchmark's synthetic chat, placeholder vectors: the job computes real ones), then run
``memos-pipeline reembed --model local`` as a subprocess (every row through all-MiniLM-L6-v2 on the chunker), SIGKILL
it once half of the batches are checkpointed, run it again and let it finish from its checkpoint. Dense searches
through the search worker and live adds through the chunker run the whole time. Prints JSON:
``{rows, seconds, rows_per_s, batches, resumed_from, index_s, swap_ms, ...}`` where ``seconds`` is the wall time of
both runs, and ``embed_only_rows_per_s`` the model alone on the same texts in this process (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from sqlalchemy import text

from evaluation.reindex_bench import insert_memories, kill_half_way, memory_text, own_stack
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings, get_settings
from memos_pipeline.embedders import model_for
from memos_pipeline.jobs import reembed
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope


def reembed_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.reembed", "--json", *args]


def _pct(values: list[float], q: float) -> float | None:
    return round(sorted(values)[min(len(values) - 1, int(len(values) * q))], 1) if values else None


class DenseSearches(threading.Thread):
    """Dense searches through the search worker (it embeds each query with the active model) until stopped."""

    def __init__(self, cfg: Settings, tenant_id: uuid.UUID, queries: list[str], every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.cfg, self.tenant_id, self.queries, self.every_s = cfg, str(tenant_id), queries, every_s
        self.ms: list[float] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from memos_pipeline.celery_app import make_celery

        app, i = make_celery(self.cfg), 0
        while not self.halt.wait(self.every_s):
            job = {
                "v": 1,
                "tenant_id": self.tenant_id,
                "user_id": f"user{i % 100}",
                "channels": ["dense"],
                "query": self.queries[i % len(self.queries)],
                "include_preference": False,
            }
            t0 = time.perf_counter()
            result = app.send_task("memos.search.fast", args=[job], ignore_result=False)
            try:
                result.get(timeout=60)
                self.ms.append((time.perf_counter() - t0) * 1000)
            except Exception as exc:
                self.failures.append(repr(exc))
            finally:
                result.forget()
            i += 1
        app.close()


class LiveAdds(threading.Thread):
    """Adds during the job, as a producer sends them (``memos.chunker.accept``); measures how long each takes
    to be chunked and embedded: the chunker takes turns between them and the batch tasks."""

    def __init__(self, cfg: Settings, tenant: str, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.cfg, self.tenant, self.every_s = cfg, tenant, every_s
        self.ms: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from memos_pipeline.celery_app import make_celery

        app, gen, i = make_celery(self.cfg), ConversationGenerator(11), 0
        while not self.halt.wait(self.every_s):
            key = uuid.uuid4().hex
            msgs = [{"role": t["role"], "content": t["content"]} for t in gen.conversation(f"live{i}", 2)]
            payload = {
                "v": 1,
                "tenant": self.tenant,
                "idempotency_key": key,
                "request": {"user_id": "live", "conversation_id": f"live{i}", "messages": msgs},
            }
            t0 = time.perf_counter()
            app.send_task("memos.chunker.accept", args=[payload])
            while time.perf_counter() - t0 < 300 and not self._chunked(key):
                time.sleep(0.05)
            self.ms.append((time.perf_counter() - t0) * 1000)
            i += 1
        app.close()

    def _chunked(self, key: str) -> bool:
        with session_scope(self.cfg) as s:
            status = s.execute(
                text("SELECT stages->'chunker'->>'status' FROM ingests WHERE idempotency_key = :k"), {"k": key}
            ).scalar_one_or_none()
        return status == "done"


def run_bench(
    settings: Settings,
    n: int = 5000,
    batch_size: int = 100,
    kill_at: float | None = 0.5,
    window: int | None = None,
    model: str = "local",
) -> dict[str, Any]:
    from cli.stack import settings_env

    with own_stack(settings, "re", ("chunker", "search"), private_pg=True) as cfg:
        with session_scope(cfg) as s:
            tenant = f"reembed-bench-{uuid.uuid4().hex[:6]}"
            tenant_id, _ = tenants.create_api_key(s, tenant)
        insert_memories(cfg, tenant_id, n)
        # The model alone, in this process, on the same texts: what the job's rows/s compares with.
        sample = [memory_text(ConversationGenerator(7), i) for i in range(min(n, 256))]
        embedder = model_for(cfg, model)
        embedder.embed(sample[:8])
        t0 = time.perf_counter()
        embedder.embed(sample)
        embed_only = len(sample) / (time.perf_counter() - t0)
        env = settings_env(cfg)
        # --force: the local model is the active one already; the point is to recompute every vector with it.
        args = ["--model", model, "--batch-size", str(batch_size), "--force"]
        args += ["--window", str(window)] if window else []
        searches = DenseSearches(cfg, tenant_id, ConversationGenerator(7).queries(50))
        searches.start()
        live = LiveAdds(cfg, tenant)
        live.start()
        cp = reembed.Checkpoint(cfg)
        first_s = kill_half_way(cp, reembed_command(*args), env, kill_at, timeout=7200) if kill_at else 0.0
        t1 = time.perf_counter()
        proc = subprocess.run(reembed_command(*args), env=env, capture_output=True, text=True, check=False)
        second_s = time.perf_counter() - t1
        searches.halt.set()
        live.halt.set()
        searches.join()
        live.join()
        if proc.returncode != 0:
            raise RuntimeError(f"reembed failed ({proc.returncode}): {proc.stderr[-2000:]}")
        out = json.loads(proc.stdout)
        seconds = first_s + second_s
        return {
            "model": out["model"],
            "dims": out["dims"],
            "rows": out["rows"],
            "embedded": out["embedded"],
            "inserted": n,
            "seconds": round(seconds, 2),
            "rows_per_s": round(out["embedded"] / seconds, 1),
            "batches": out["batches"],
            "batch_size": batch_size,
            "resumed_from": out["resumed_from"],
            "killed_run_s": round(first_s, 2),
            "resume_run_s": round(second_s, 2),
            "resume_rows_per_s": out["rows_per_s"],
            "index_s": out["index_s"],
            "swap_ms": out["swap_ms"],
            "caught_up": out["caught_up"],
            "caught_up_in_lock": out["caught_up_in_lock"],
            "embed_only_rows_per_s": round(embed_only, 1),
            "searches_during": len(searches.ms) + len(searches.failures),
            "search_failures": len(searches.failures),
            "search_p50_ms": _pct(searches.ms, 0.5),
            "search_p99_ms": _pct(searches.ms, 0.99),
            "live_adds_during": len(live.ms),
            "live_add_p50_ms": _pct(live.ms, 0.5),
            "live_add_max_ms": round(max(live.ms), 1) if live.ms else None,
            "cpu_count": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=5000, help="memories to insert and re-embed")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--window", type=int, default=None, help="default: the CLI's (1)")
    p.add_argument("--model", default="local", help="the model to re-embed with (default: the local MiniLM)")
    p.add_argument("--no-kill", action="store_true", help="one uninterrupted run")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_bench(get_settings(), a.n, a.batch_size, None if a.no_kill else 0.5, a.window, a.model)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
