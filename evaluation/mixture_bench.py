"""Mixture search under load: is ``MIXTURE_DEADLINE_MS`` a hard bound with 20 concurrent searches?

One self-contained run: its own database (if embedded), queue prefix, BM25 directory and API port; workers for
chunker, indexer, search and reranker (``MOS_RERANKER_BACKEND=http_bge_strategy``, ``single_turn``) pointed at the
local rerank server process of ``tests/fake_reranker.py``; a small synthetic corpus ingested over HTTP. Then, per
variant, a gunicorn API (the same command ``up`` runs, plus an access log) and ``concurrency`` client threads,
each with its own keep-alive connection, issuing ``mode: mixture`` searches back to back over real HTTP until
``searches`` are done. Each client searches its own conversation, so a late fine answer cached by one search is
merged into that client's next one.

Variants (each on an idle pipeline: the queues drain and late reranks finish before the next starts):

- ``slow``: the reranker answers after ``slow_s`` (the fine path misses every deadline), the API sized as
  configured (``MEMOS_API_WORKERS`` x ``MEMOS_API_THREADS``);
- ``fast``: the reranker answers at once (for contrast: how often fine makes the deadline under this load);
- ``slow_api_sized`` / ``fast_api_sized``: the same with ``concurrency`` threads in *each* API worker, so a
  request never waits for a free thread whichever worker its connection landed on.

Per variant: client-side latency (request sent -> whole response read), server-side latency (gunicorn's own
request time, ``%(D)s`` in the access log: from the moment a worker thread takes the request to the last byte
written), their difference per request (joined by ``X-Request-ID``: time in front of the app, mostly waiting for
a free thread, which the deadline cannot bound), the share of answers with ``fine_arrived``, with
``merged_cached_fine``, empty (``partial``: neither path arrived), and whether p99 <= deadline + 10 ms.

Run: ``python -m evaluation.mixture_bench [--concurrency 20] [--searches 400] [--deadline-ms 300] [--slow-s 1.0]``
prints the JSON. Everything it created (database, queues, BM25 directory, processes) is removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import requests
from tqdm import tqdm

from evaluation.bench import USER_ID, Api, _delete_topology, _free_port, plan_adds, wait_done
from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings
from memos_pipeline.storage import pgserver, tenants
from memos_pipeline.storage.db import get_engine, session_scope

ROOT = Path(__file__).resolve().parent.parent
FAKE_RERANKER = ROOT / "tests" / "fake_reranker.py"
TOP_K = 10
TOLERANCE_MS = 10.0
HTTP_TIMEOUT_S = 30.0
WARMUP_PER_CLIENT = 2
ACCESS_FORMAT = "%({x-request-id}i)s %(s)s %(D)s"


@dataclass(frozen=True)
class Variant:
    name: str
    delay_s: float  # the reranker's answer delay
    api_workers: int
    api_threads: int
    app: str = "api:create_app()"  # the gunicorn app spec (a diagnostic run may pass a patched factory)
    pythonpath: str | None = None  # prepended to the API's PYTHONPATH, for such a factory


def _stats(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    arr = np.asarray(samples, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "max": round(float(arr.max()), 1),
        "n": len(samples),
    }


def _load_fake_reranker() -> Any:
    """``tests/fake_reranker.py`` as a module (it is a script, not part of the package)."""
    if not FAKE_RERANKER.exists():
        raise RuntimeError(f"{FAKE_RERANKER} not found: the mixture bench runs from a source checkout")
    spec = importlib.util.spec_from_file_location("memos_fake_reranker", FAKE_RERANKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the API under test


class ApiProcess:
    """A gunicorn API exactly as ``up`` starts it (``api_command``), plus an access log with request ids."""

    def __init__(self, cfg: Settings, variant: Variant, log_dir: Path) -> None:
        from cli.stack import api_command, settings_env

        self.cfg = cfg.with_overrides(
            api_port=_free_port(cfg.api_host), api_workers=variant.api_workers, api_threads=variant.api_threads
        )
        self.access_log = log_dir / f"access-{variant.name}.log"
        cmd = api_command(self.cfg)
        cmd[cmd.index("api:create_app()")] = variant.app
        cmd += ["--access-logfile", str(self.access_log), "--access-logformat", ACCESS_FORMAT]
        env = settings_env(self.cfg)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (variant.pythonpath, str(ROOT), env.get("PYTHONPATH")) if p)
        self.base = f"http://{self.cfg.api_host}:{self.cfg.api_port}"
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with code {self.proc.returncode}")
            try:
                if requests.get(self.base + "/health", timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def server_ms(self) -> dict[str, float]:
        """request id -> gunicorn's request time in ms (read after stop(): the log is complete then)."""
        out: dict[str, float] = {}
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] != "-":
                    out[parts[0]] = int(parts[2]) / 1000
        return out


# ---------------------------------------------------------------- the load


def _client(
    base: str, key: str, conversation_id: str, queries: list[str], offset: int, n: int, warmup: int, bar: Any
) -> list[dict[str, Any]]:
    """One client thread: ``warmup`` unrecorded searches, then ``n`` recorded ones, back to back."""
    out: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Token {key}"
        for i in range(-warmup, n):
            rid = uuid.uuid4().hex
            body = {
                "user_id": USER_ID,
                "query": queries[(offset + i) % len(queries)],
                "top_k": TOP_K,
                "mode": "mixture",
                "conversation_id": conversation_id,
            }
            t0 = time.perf_counter()
            try:
                r = session.post(
                    base + "/search/memory", json=body, headers={"X-Request-ID": rid}, timeout=HTTP_TIMEOUT_S
                )
                ms = (time.perf_counter() - t0) * 1000
                status, data = r.status_code, (r.json().get("data") or {}) if r.status_code == 200 else {}
            except requests.RequestException as exc:
                ms, status, data = (time.perf_counter() - t0) * 1000, 0, {"error": str(exc)[:200]}
            if i >= 0:
                search = data.get("search") or {}
                out.append(
                    {
                        "rid": rid,
                        "client_ms": ms,
                        "status": status,
                        "fine_arrived": bool(search.get("fine_arrived")),
                        "merged_cached_fine": bool(search.get("merged_cached_fine")),
                        "partial": bool(search.get("partial")),
                        "results": len(data.get("memory_detail_list") or []),
                        "worker_ms": sum((data.get("timings_ms") or {}).values()) or None,
                    }
                )
                bar.update()
    return out


class QueueDepth:
    """Samples the broker's ready-message count of some queues every ``interval`` s in a thread (saturation)."""

    def __init__(self, cfg: Settings, queues: Sequence[str], interval: float = 0.25) -> None:
        self.cfg, self.queues, self.interval = cfg, list(queues), interval
        self.samples: dict[str, list[int]] = {q: [] for q in self.queues}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-depth", daemon=True)

    def __enter__(self) -> QueueDepth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from memos_pipeline.celery_app import make_celery

        app = make_celery(self.cfg)
        try:
            with app.connection_for_write() as conn:
                channel = conn.default_channel
                while not self._stop.wait(self.interval):
                    for q in self.queues:
                        self.samples[q].append(channel.queue_declare(self.cfg.queue(q), passive=True).message_count)
        finally:
            app.close()

    def summary(self) -> dict[str, dict[str, float | int]]:
        return {
            q: {"mean": round(float(np.mean(v)), 1) if v else 0, "max": max(v, default=0)}
            for q, v in self.samples.items()
        }


def _drain(cfg: Settings, queues: Sequence[str], settle_s: float, timeout: float = 120.0) -> None:
    """Until the queues are empty, then ``settle_s`` more for the tasks in the workers' hands."""
    from memos_pipeline.celery_app import make_celery

    app = make_celery(cfg)
    deadline = time.monotonic() + timeout
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            while time.monotonic() < deadline:
                counts = [channel.queue_declare(cfg.queue(q), passive=True).message_count for q in queues]
                if not any(counts):
                    break
                time.sleep(0.25)
    finally:
        app.close()
    time.sleep(settle_s)


def _run_variant(
    cfg: Settings,
    variant: Variant,
    key: str,
    queries: list[str],
    fake: Any,
    tmp: Path,
    concurrency: int,
    searches: int,
    deadline_ms: int,
    progress: bool,
) -> dict[str, Any]:
    fake.configure(delay_s=variant.delay_s, status=None, reset=True)
    api = ApiProcess(cfg, variant, tmp)
    records: list[dict[str, Any]] = []
    try:
        api.wait_ready()
        per_client = [searches // concurrency + (1 if c < searches % concurrency else 0) for c in range(concurrency)]
        t0 = time.perf_counter()
        with (
            QueueDepth(cfg, ("search", "reranker")) as depth,
            tqdm(
                total=searches, desc=f"mixture ({variant.name})", unit="q", file=sys.stderr, disable=not progress
            ) as bar,
            cf.ThreadPoolExecutor(concurrency, thread_name_prefix="mixture-client") as pool,
        ):
            futures = [
                pool.submit(
                    _client,
                    api.base,
                    key,
                    f"{variant.name}-client-{c:02d}",
                    queries,
                    c * 7,
                    per_client[c],
                    WARMUP_PER_CLIENT,
                    bar,
                )
                for c in range(concurrency)
            ]
            for f in futures:
                records.extend(f.result())
        wall_s = time.perf_counter() - t0
    finally:
        api.stop()
    server = api.server_ms()
    ok = [r for r in records if r["status"] == 200]
    client_ms = [r["client_ms"] for r in ok]
    server_ms = [server[r["rid"]] for r in ok if r["rid"] in server]
    front_ms = [r["client_ms"] - server[r["rid"]] for r in ok if r["rid"] in server]
    bound = deadline_ms + TOLERANCE_MS
    client, srv = _stats(client_ms), _stats(server_ms)
    n = max(len(ok), 1)
    return {
        "reranker_delay_s": variant.delay_s,
        "api_workers": variant.api_workers,
        "api_threads": variant.api_threads,
        "api_request_threads": variant.api_workers * variant.api_threads,
        "app": variant.app,
        "searches": len(records),
        "errors": len(records) - len(ok),
        "error_statuses": sorted({r["status"] for r in records if r["status"] != 200}),
        "searches_per_s": round(len(records) / wall_s, 1),
        "client_ms": client,
        "server_ms": srv,
        "in_front_of_app_ms": _stats(front_ms),
        "over_bound_client": sum(ms > bound for ms in client_ms),
        "over_bound_server": sum(ms > bound for ms in server_ms),
        "fine_arrived_share": round(sum(r["fine_arrived"] for r in ok) / n, 3),
        "merged_cached_fine_share": round(sum(r["merged_cached_fine"] for r in ok) / n, 3),
        "partial_share": round(sum(r["partial"] for r in ok) / n, 3),
        "mean_results": round(sum(r["results"] for r in ok) / n, 2),
        "search_worker_ms": _stats([r["worker_ms"] for r in ok if r["worker_ms"]]),
        "queue_depth": depth.summary(),
        "deadline_ms": deadline_ms,
        "p99_within_deadline_plus_10ms": client["p99"] is not None and float(client["p99"]) <= bound,
        "server_p99_within_deadline_plus_10ms": srv["p99"] is not None and float(srv["p99"]) <= bound,
    }


def _reference(cfg: Settings, key: str, queries: list[str], tmp: Path, n: int = 30) -> dict[str, Any]:
    """Fast-mode searches one at a time on the idle pipeline: what one search costs on this machine right now."""
    api = ApiProcess(cfg, Variant("reference", 0.0, cfg.api_workers, cfg.api_threads), tmp)
    client_ms: list[float] = []
    worker_ms: list[float] = []
    try:
        api.wait_ready()
        with requests.Session() as session:
            session.headers["Authorization"] = f"Token {key}"
            for i in range(-5, n):
                t0 = time.perf_counter()
                r = session.post(
                    api.base + "/search/memory",
                    timeout=HTTP_TIMEOUT_S,
                    json={"user_id": USER_ID, "query": queries[i % len(queries)], "top_k": TOP_K, "mode": "fast"},
                )
                ms = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                if i >= 0:
                    client_ms.append(ms)
                    worker_ms.append(sum((r.json()["data"].get("timings_ms") or {}).values()))
    finally:
        api.stop()
    return {"client_ms": _stats(client_ms), "search_worker_ms": _stats(worker_ms)}


def default_variants(settings: Settings, concurrency: int, slow_s: float) -> list[Variant]:
    base = Variant("slow", slow_s, settings.api_workers, settings.api_threads)
    sized = max(settings.api_threads, concurrency)
    return [
        base,
        replace(base, name="fast", delay_s=0.0),
        replace(base, name="slow_api_sized", api_threads=sized),
        replace(base, name="fast_api_sized", delay_s=0.0, api_threads=sized),
    ]


def run_mixture_bench(
    settings: Settings,
    concurrency: int = 20,
    searches: int = 400,
    deadline_ms: int = 300,
    slow_s: float = 1.0,
    *,
    messages: int = 300,
    per_add: int = 10,
    progress: bool = False,
    seed: int = 7,
    variants: Sequence[Variant] | None = None,
) -> dict[str, Any]:
    """Run every variant on a fresh stack and return the results (see the module docstring)."""
    from cli.stack import Stack
    from memos_pipeline.queues import CORE_QUEUES

    if concurrency < 1 or searches < concurrency:
        raise ValueError("need concurrency >= 1 and searches >= concurrency")
    run, load_start = secrets.token_hex(3), list(os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix=f"memos-mixture-{run}-"))
    fake = _load_fake_reranker().FakeReranker(delay_s=0.0).start()
    base = settings.with_overrides(
        queue_prefix=f"mixbench{run}.",
        bm25_path=tmp / "bm25",
        mixture_deadline_ms=deadline_ms,
        mos_reranker_backend="http_bge_strategy",
        mos_reranker_url=fake.url("/rerank"),
        mos_reranker_strategy="single_turn",
    )
    own_db, started_pg, cfg = f"memos_mixture_{run}", False, base
    todo = list(variants) if variants is not None else default_variants(base, concurrency, slow_s)
    gen = ConversationGenerator(seed)
    queries = gen.queries(60)
    stack: Stack | None = None
    results: dict[str, Any] = {}
    try:
        if base.embedded_db:
            started_pg = pgserver.start(base)
            pgserver.ensure_database(base, own_db)
            cfg = base.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:{base.pg_port}/{own_db}")
        stack = Stack(cfg, queues=CORE_QUEUES, api=False, quiet=True)
        stack.start()
        stack.wait_ready(timeout=180)
        with session_scope(cfg) as s:
            _, key = tenants.create_api_key(s, f"mixture-bench-{run}", "memos-pipeline mixture bench")

        # The corpus, through the API and the queues like any client's.
        ingest_api = ApiProcess(cfg, Variant("ingest", 0.0, cfg.api_workers, cfg.api_threads), tmp)
        try:
            ingest_api.wait_ready()
            client = Api(ingest_api.base, key)
            adds = plan_adds(gen, messages, per_add, 4, cfg.chunk_overlap)
            ids = [client.add(a.conversation_id, a.messages)[1] for a in adds]
            wait_done(cfg, ids, 120 + messages)
            client.close()
        finally:
            ingest_api.stop()

        reference = _reference(cfg, key, queries, tmp)
        for v in todo:
            _drain(cfg, ("search", "reranker"), settle_s=max(slow_s, v.delay_s) + 0.5)
            results[v.name] = _run_variant(
                cfg, v, key, queries, fake, tmp, concurrency, searches, deadline_ms, progress
            )
    finally:
        fake.stop()
        if stack is not None:
            stack.stop(stop_db=False)
            _delete_topology(cfg)
        if cfg is not base:
            get_engine(cfg).dispose()
            pgserver.drop_database(base, own_db)
        if started_pg:
            pgserver.release(base)
        shutil.rmtree(tmp, ignore_errors=True)

    bound = deadline_ms + TOLERANCE_MS
    head = results.get("slow") or next(iter(results.values()))
    p99 = head["client_ms"]["p99"]
    return {
        "config": {
            "concurrency": concurrency,
            "searches_per_variant": searches,
            "deadline_ms": deadline_ms,
            "slow_s": slow_s,
            "messages": messages,
            "top_k": TOP_K,
            "reranker": "http_bge_strategy/single_turn -> tests/fake_reranker.py (TEI /rerank)",
            "worker_pools": {"search": "threads x 4", "reranker": "threads x 4"},
            "cpu_count": os.cpu_count(),
        },
        "target": {
            "mixture_p99_ms": {
                "target": f"<= {bound:g} (deadline + {TOLERANCE_MS:g} ms), slow reranker, API as configured",
                "value": p99,
                "reached": p99 is not None and float(p99) <= bound,
            }
        },
        "reference_fast_sequential": reference,
        "variants": results,
        "loadavg_start_end": [load_start, list(os.getloadavg())],
        "notes": [
            "client_ms: request sent -> whole response read, by each of the concurrent client threads (keep-alive).",
            "server_ms: gunicorn's request time from the access log (%(D)s): from when a worker thread starts on "
            "the request to the last byte written; in_front_of_app_ms = client_ms - server_ms per request (joined "
            "by X-Request-ID): waiting for a free worker thread, accept, network. The deadline bounds only server_ms.",
            "api_request_threads = MEMOS_API_WORKERS x MEMOS_API_THREADS; a gthread worker serves as many requests "
            "at once as it has threads, and the kernel spreads connections over workers unevenly, so the *_api_sized "
            "variants give every worker `concurrency` threads.",
            "partial_share: neither fast nor fine arrived before the deadline (an empty answer).",
            "search_worker_ms: the sum of the search worker's own step timings (timings_ms) of the answers that "
            "had a result; queue_depth: ready messages in the search and reranker queues, sampled every 0.25 s "
            "(a growing search queue means the search worker cannot keep up with the offered load).",
            "reference_fast_sequential: fast-mode searches one at a time on the idle pipeline, before the variants.",
            "A loadavg above the core count means other processes competed for the CPU during the run.",
        ],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--searches", type=int, default=400)
    ap.add_argument("--deadline-ms", type=int, default=300)
    ap.add_argument("--slow-s", type=float, default=1.0)
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument(
        "--variants", default=None, help="comma-separated subset of slow,fast,slow_api_sized,fast_api_sized"
    )
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = ap.parse_args(argv)
    from memos_pipeline.config import get_settings

    settings = get_settings()
    variants = None
    if args.variants:
        wanted = {v.strip() for v in args.variants.split(",")}
        variants = [v for v in default_variants(settings, args.concurrency, args.slow_s) if v.name in wanted]
        if not variants:
            ap.error(f"no such variant: {args.variants}")
    result = run_mixture_bench(
        settings,
        args.concurrency,
        args.searches,
        args.deadline_ms,
        args.slow_s,
        messages=args.messages,
        progress=args.progress,
        variants=variants,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
