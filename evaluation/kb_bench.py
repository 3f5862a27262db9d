"""The knowledge-base benchmark (``memos-pipeline bench-kb``): one PDF of N pages of prose, uploaded over HTTP, timed
from the upload until its passages are searchable by vector and BM25 (the ingest's ``done``), then searched.

It runs on a stack of its own (database, queues, API, BM25 directory: cli/harness.py) unless given one, the way
``bench`` does. The answer is JSON: pages/s end to end, the document stage's read (pypdf), split and embedding
times, the indexer's, and the latency of searches that include the base.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from cli.harness import Isolated, isolated, tenant_of
from evaluation.documents import make_pdf, prose_pages
from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES

SEARCHES = 20


def _measure(h: Isolated, pages: int, timeout: float) -> dict[str, Any]:
    api = h.api
    _, base = api.post("/create/knowledgebase", {"knowledgebase_name": f"bench-{pages}-pages"})
    kb_id = base["id"]
    pdf = make_pdf(prose_pages(pages))
    t0 = time.perf_counter()
    r = api.request(
        f"/add/knowledgebase-file?knowledgebase_id={kb_id}", None, files={"file": ("bench.pdf", pdf, "application/pdf")}
    )
    if r.status_code != 202:
        raise RuntimeError(f"upload: HTTP {r.status_code}: {r.text[:300]}")
    accepted_ms = (time.perf_counter() - t0) * 1000
    [f] = r.json()["data"]
    final = api.wait_done([f["task_id"]], timeout, by="task_id")[f["task_id"]]
    seconds = time.perf_counter() - t0
    doc, idx = final["stages"]["document"], final["stages"]["indexer"]
    latencies = []
    hits = 0
    for i in range(SEARCHES):
        page = 1 + (i * 37) % pages
        ms, data = api.search("bench-reader", f"Page {page}: notes on the", knowledgebase_ids=[kb_id], top_k=5)
        latencies.append(ms)
        hits += any(
            m["info"].get("page", 0) <= page <= m["info"].get("page_end", m["info"].get("page", 0))
            for m in data["memory_detail_list"]
        )
    latencies.sort()
    return {
        "pages": pages,
        "pdf_bytes": len(pdf),
        "passages": doc.get("passages"),
        "upload_answered_ms": round(accepted_ms, 1),
        "end_to_end_s": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 2),
        "document_stage_ms": {k: doc.get(k) for k in ("read_ms", "embed_ms", "work_ms")},
        "indexer_ms": idx.get("ms"),
        # a search naming a page finds a passage of that page in its top 5 (a sanity check, not a quality measure)
        "page_found_in_top5": round(hits / SEARCHES, 2),
        "search_with_base_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        },
    }


def run_kb_bench(
    settings: Settings, pages: int = 200, on: Isolated | None = None, timeout: float = 900.0
) -> dict[str, Any]:
    """Measure one ``pages``-page PDF end to end; on ``on`` (a running stack, with a tenant of its own) or on a
    stack of its own with the core queues."""
    if on is not None:
        with tenant_of(on, "kbbench") as h:
            return _measure(h, pages, timeout)
    with isolated(settings, "kbbench", CORE_QUEUES) as h:
        return _measure(h, pages, timeout)
