"""Mixture search under load: is ``MIXTURE_DEADLINE_MS`` a hard bound with 20 concurrent searches?

One self-contained run: its own database (if embedded), queue prefix, BM25 directory and API port; workers for
chunker, indexer, search and reranker (``MOS_RERANKER_BACKEND=http_bge_strategy``, ``single_turn``) pointed at the
local rerank server process of ``fakes.reranker``; a small synthetic corpus ingested over HTTP. Then, per
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
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import requests
from tqdm import tqdm

from cli.client import ApiClient
from cli.harness import api_server, isolated
from evaluation import metrics
from evaluation.bench import USER_ID, plan_adds, wait_done
from evaluation.load_driver import Sampler
from evaluation.texts import ConversationGenerator
from fakes.reranker import FakeReranker
from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES

ROOT = Path(__file__).resolve().parent.parent
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
    return metrics.latency_summary(samples, extra=("max",), digits=1)


# ---------------------------------------------------------------- the API under test


@contextmanager
def api_process(cfg: Settings, variant: Variant, key: str, log_dir: Path) -> Iterator[tuple[ApiClient, Path]]:
    """A gunicorn API exactly as ``up`` starts it, sized as the variant says, plus an access log with request
    ids; yields a client for it with ``key`` and the log (complete once the block has exited)."""
    log = log_dir / f"access-{variant.name}.log"
    sized = cfg.with_overrides(api_workers=variant.api_workers, api_threads=variant.api_threads)
    with api_server(
        sized,
        api_app=variant.app,
        api_args=["--access-logfile", str(log), "--access-logformat", ACCESS_FORMAT],
        env={
            "PYTHONPATH": os.pathsep.join(p for p in (variant.pythonpath, str(ROOT), os.environ.get("PYTHONPATH")) if p)
        },
    ) as stack:
        yield ApiClient(stack.base_url, key, timeout=HTTP_TIMEOUT_S), log


def access_log_ms(access_log: Path) -> dict[str, float]:
    """request id -> gunicorn's request time in ms, from an access log."""
    out: dict[str, float] = {}
    if access_log.exists():
        for line in access_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] != "-":
                out[parts[0]] = int(parts[2]) / 1000
    return out


# ---------------------------------------------------------------- the load


def _client(
    api: ApiClient, conversation_id: str, queries: list[str], offset: int, n: int, warmup: int, bar: Any
) -> list[dict[str, Any]]:
    """One client thread (its own keep-alive session): ``warmup`` unrecorded searches, then ``n`` recorded ones,
    back to back."""
    out: list[dict[str, Any]] = []
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
            r = api.request("/search/memory", body, headers={"X-Request-ID": rid})
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


def _depths(sampler: Sampler, since: int) -> dict[str, dict[str, float | int]]:
    """Mean and max ready messages per queue over the samples taken since sample ``since`` (saturation)."""
    with sampler.lock:
        cols = {q: [d for d in v[since:] if d is not None] for q, v in sampler.timeline.queues.items()}
    return {q: {"mean": round(float(np.mean(v)), 1) if v else 0, "max": max(v, default=0)} for q, v in cols.items()}


def _run_variant(
    cfg: Settings,
    sampler: Sampler,
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
    records: list[dict[str, Any]] = []
    with api_process(cfg, variant, key, tmp) as (api, access_log):
        since = len(sampler.timeline.t)
        per_client = [searches // concurrency + (1 if c < searches % concurrency else 0) for c in range(concurrency)]
        t0 = time.perf_counter()
        with (
            tqdm(
                total=searches, desc=f"mixture ({variant.name})", unit="q", file=sys.stderr, disable=not progress
            ) as bar,
            cf.ThreadPoolExecutor(concurrency, thread_name_prefix="mixture-client") as pool,
        ):
            futures = [
                pool.submit(
                    _client,
                    api,
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
        depth = _depths(sampler, since)
        api.close()
    server = access_log_ms(access_log)
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
        "queue_depth": depth,
        "deadline_ms": deadline_ms,
        "p99_within_deadline_plus_10ms": client["p99"] is not None and float(client["p99"]) <= bound,
        "server_p99_within_deadline_plus_10ms": srv["p99"] is not None and float(srv["p99"]) <= bound,
    }


def _reference(api: ApiClient, queries: list[str], n: int = 30) -> dict[str, Any]:
    """Fast-mode searches one at a time on the idle pipeline: what one search costs on this machine right now."""
    client_ms: list[float] = []
    worker_ms: list[float] = []
    for i in range(-5, n):
        ms, data = api.search(USER_ID, queries[i % len(queries)], top_k=TOP_K, mode="fast")
        if i >= 0:
            client_ms.append(ms)
            worker_ms.append(sum((data.get("timings_ms") or {}).values()))
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
    if concurrency < 1 or searches < concurrency:
        raise ValueError("need concurrency >= 1 and searches >= concurrency")
    load_start = list(os.getloadavg())
    todo = list(variants) if variants is not None else default_variants(settings, concurrency, slow_s)
    gen = ConversationGenerator(seed)
    queries = gen.queries(60)
    results: dict[str, Any] = {}
    with (
        FakeReranker() as fake,
        isolated(
            settings,
            "mixbench",
            CORE_QUEUES,
            mixture_deadline_ms=deadline_ms,
            mos_reranker_backend="http_bge_strategy",
            mos_reranker_url=fake.url("/rerank"),
            mos_reranker_strategy="single_turn",
        ) as h,
    ):
        # The corpus, through the API and the queues like any client's.
        adds = plan_adds(gen, messages, per_add, 4, h.settings.chunk_overlap)
        ids = [str(h.api.add(USER_ID, a.conversation_id, a.messages)[1]["ingest_id"]) for a in adds]
        wait_done(h.settings, ids, 120 + messages)
        reference = _reference(h.api, queries)
        sampler = Sampler(h.settings, ("search", "reranker"), h.tenant_id, time.monotonic(), interval=0.25)
        sampler.start()
        try:
            for v in todo:
                sampler.wait_drained(timeout=120)  # then a while for the tasks in the workers' hands
                time.sleep(max(slow_s, v.delay_s) + 0.5)
                results[v.name] = _run_variant(
                    h.settings,
                    sampler,
                    v,
                    h.api.key,
                    queries,
                    fake,
                    h.tmp,
                    concurrency,
                    searches,
                    deadline_ms,
                    progress,
                )
        finally:
            sampler.stop()

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
            "reranker": "http_bge_strategy/single_turn -> fakes.reranker (TEI /rerank)",
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
