"""The fast search as a process runs it: the active embedding model, the BM25 index and one database session, with
the settings' fusion, graph and history options. The search worker answers with it, and warms it up at start."""

from __future__ import annotations

import time
import uuid

from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder, retry_on_model_switch
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import decompose
from memos_pipeline.search.recall import SearchOutput, fast_search
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope


def search(settings: Settings, job: SearchJob) -> SearchOutput:
    """``job.decompose`` (fine mode with an LLM): the question and the parts the LLM splits it into are searched
    one after the other and their lists merged (:mod:`memos_pipeline.search.decompose`)."""
    if not job.decompose:
        return _search(settings, job)
    t0 = time.perf_counter()
    parts = decompose.sub_queries(settings, job.query) if settings.llm_enabled else []
    asked = _ms(t0)
    whole = _search(settings, job)
    if not parts:
        return SearchOutput(whole.memories, whole.preferences, {"decompose": round(asked, 3), **whole.timings_ms})
    t1 = time.perf_counter()
    found = [_search(settings, job.model_copy(update={"query": q, "include_preference": False})) for q in parts]
    memories = decompose.merge([whole.memories, *(f.memories for f in found)], job.top_k)
    timings = {"decompose": round(asked, 3), **whole.timings_ms, "sub_searches": round(_ms(t1), 3)}
    return SearchOutput(memories, whole.preferences, timings, sub_queries=parts)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _search(settings: Settings, job: SearchJob) -> SearchOutput:
    index = get_index(settings) if settings.bm25_call else None
    embedder = get_embedder(settings)

    def run() -> SearchOutput:
        with session_scope(settings) as s:
            return fast_search(
                s,
                embedder,
                index,
                job,
                fusion_method=settings.fusion,
                dedup_turns=settings.search_dedup_turns,
                graph=settings.fast_graph,
                history_turns=settings.api_search_history_turns,
                history_window=settings.api_search_window_size,
            )

    # Right at a reembed's swap the query may have been embedded by the outgoing model: once more with the new one.
    return retry_on_model_switch(embedder, run)


def warm_up(settings: Settings) -> None:
    """One search for nobody (a tenant that cannot exist), when a search worker starts: it loads the model, jieba's
    dictionary (the first query with Chinese in it took ~1 s to tokenize), opens the BM25 reader and a database
    connection, and compiles the SQL, so that the first real search pays for none of them."""
    search(settings, SearchJob(tenant_id=uuid.UUID(int=0), user_id="warm-up", query="warm up 预热", top_k=1))
