"""Fast search (no LLM): dense recall from pgvector and BM25 recall, fused, filtered by Postgres truth.

Postgres decides what exists: BM25 hits are re-read from ``memories`` with the tenant/user/status filter, so a
stale index entry (a memory deleted a millisecond ago) can never be returned, and never across tenants.
"""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import Label, Select, func, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute, Session, defer

from memos_pipeline.embedders import Embedder
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import context, filters, fusion, temporal
from memos_pipeline.search import graph as graph_recall
from memos_pipeline.search.query import build_query
from memos_pipeline.stages.index import indexed_text
from memos_pipeline.storage import ingests
from memos_pipeline.storage.bm25 import Bm25Index, Bm25Query
from memos_pipeline.storage.filters import compile_filter, memory_target, preference_target
from memos_pipeline.storage.models import Memory, Message, Preference
from memos_pipeline.text.chunking import Turn, render_window
from memos_pipeline.text.tokenizer import tokenize

# Weighted fusion: dense cosine and max-normalised BM25, equal say. Measured on the LoCoMo harness (evaluation/).
FUSION_WEIGHTS = {"dense": 1.0, "bm25": 1.0}
# Gated fusion (MEMOS_FUSION=gated, the default): a memory's BM25 score counts fully from this cosine to the query
# up, linearly less below it, and not at all at GATE_FLOOR or less (fusion.gated). Cosines of all-MiniLM-L6-v2:
# unrelated text sits around 0-0.15, so 0.2 is "not unrelated". Chosen on the PrefEval proxy (300 filler turns:
# recall@5 0.2 -> 0.9) and LoCoMo dev with 5-fold cross-validation by conversation (evaluation/replay.py); another
# embedding model needs them measured again.
GATE_FLOOR = 0.2
GATE_FULL = 0.4
# Time-aware bonuses (search/temporal.py), added to the fused score: a memory of the period the question names, a
# memory stating a time for a question asking "when". Fitted on LoCoMo dev, reported with 5-fold cross-validation by
# conversation (evaluation/replay.py).
DATE_BONUS = 0.1
WHEN_BONUS = 0.06
MIN_CANDIDATES = 20

PREFERENCE_NOTE = (
    "These are the user's preferences, inferred from earlier conversations. Use them to personalise the answer "
    "when they are relevant to the question; explicit preferences outweigh implicit ones, and newer ones outweigh "
    "older ones. Do not mention them unless that helps."
)


@dataclass(frozen=True)
class SearchOutput:
    memories: list[dict[str, Any]]
    preferences: list[dict[str, Any]]
    timings_ms: dict[str, float]
    sub_queries: list[str] | None = None  # fine mode's decomposition (search/decompose.py), when it split the query


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t else None


def memory_item(m: Memory, score: float | None = None) -> dict[str, Any]:
    """A memory as the API returns it (DESIGN.md section 3)."""
    return {
        "id": str(m.id),
        "memory_key": m.memory_key,
        "memory_value": m.memory_value,
        "memory_type": m.memory_type,
        "kind": m.kind,
        "status": m.status,
        "conversation_id": m.conversation_id,
        "tags": list(m.tags or []),
        "sources": list(m.sources or []),
        "info": m.info or {},
        "create_time": _iso(m.created_at),
        "update_time": _iso(m.updated_at),
        "relativity": round(score, 6) if score is not None else None,
    }


def _scoped(job: SearchJob) -> Select[Any]:
    q = select(Memory).where(
        Memory.tenant_id == job.tenant_id, Memory.user_id == job.user_id, Memory.status == "activated"
    )
    f = job.filters
    if f.conversation_id is not None:
        q = q.where(Memory.conversation_id == f.conversation_id)
    if f.memory_type is not None:
        q = q.where(Memory.memory_type == f.memory_type)
    if f.kind is not None:
        q = q.where(Memory.kind == f.kind)
    if job.filter:
        q = q.where(compile_filter(filters.parse(job.filter), memory_target(), job.tenant_id))
    return q


def fast_search(
    session: Session,
    embedder: Embedder,
    index: Bm25Index | None,
    job: SearchJob,
    *,
    fusion_method: str = "gated",
    dedup_turns: bool = True,
    history_turns: int = 0,
    history_window: int = 0,
    graph: bool = False,
) -> SearchOutput:
    """Dense + BM25 recall, fused; ``index=None`` (BM25_CALL=false) is dense-only; ``job.channels`` restricts
    recall to the named channels (the harness's BM25-only and dense-only baselines). ``dedup_turns``: each
    conversation turn is returned once (:mod:`memos_pipeline.search.context`). ``history_turns`` of the conversation's
    last ``history_window`` turns enrich the query (:mod:`memos_pipeline.search.query`). ``graph`` (FAST_GRAPH): the top
    hits' shared-entity neighbours join the candidates (:mod:`memos_pipeline.search.graph`)."""
    use_dense = job.channels is None or "dense" in job.channels
    if job.channels is not None and "bm25" not in job.channels:
        index = None
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    # With turn dedup, windows sliding by one turn collapse: ask each channel for more to still fill top_k.
    n_cand = max((4 if dedup_turns else 2) * job.top_k, MIN_CANDIDATES)
    # BM25 needs only the query's words: without history to add to them, it runs while the model embeds the query
    # (torch computes without the GIL), which takes most of a search's time.
    early = (
        _BM25_POOL.submit(_bm25, index, job, job.query, n_cand) if index is not None and history_turns <= 0 else None
    )
    query = build_query(session, embedder, job, history_turns, history_window)
    qvec = query.vector
    clock.lap("embed")
    exact = not use_dense or _small_scope(session, job, n_cand)
    # The distance is computed in SQL and the 384-float vectors stay in Postgres (defer): loading them for every
    # candidate cost more than the vector search itself.
    distance = _distance(Memory.embedding, qvec, exact)
    scoped = _scoped(job).options(defer(Memory.embedding)).add_columns(distance)
    by_id: dict[str, Memory] = {}
    cosine: dict[str, float] = {}
    if use_dense:
        # A window is stored before its vector is written (stages/chunk.py): until then only BM25 finds it.
        has_vector = Memory.embedding.isnot(None)
        rows = session.execute(scoped.where(has_vector).order_by(distance).limit(n_cand)).all()
        if not exact and len(rows) < n_cand:
            # The index walk stopped early (hnsw.max_scan_tuples: a large scope that is still a small part of a
            # much larger table): rank the scope exactly instead of returning too few candidates.
            exact_distance = _distance(Memory.embedding, qvec, True)
            exact_scoped = _scoped(job).options(defer(Memory.embedding)).add_columns(exact_distance).where(has_vector)
            rows = session.execute(exact_scoped.order_by(exact_distance).limit(n_cand)).all()
        for m, d in rows:
            # 1 - d in Python is the same IEEE double Postgres computed for the old ``1 - distance`` column.
            by_id[str(m.id)], cosine[str(m.id)] = m, 1.0 - float(d)
    clock.lap("dense")
    bm25_scores: dict[str, float] = {}
    if index is not None:
        bm25_scores = dict(early.result() if early is not None else _bm25(index, job, query.text, n_cand))
        missing = [uuid.UUID(i) for i in bm25_scores if i not in by_id]
        if missing:
            # Re-read through the scoped query: Postgres, not the index, decides what may be returned.
            for m, d in session.execute(scoped.where(Memory.id.in_(missing))):
                by_id[str(m.id)] = m
                if d is not None:  # no vector yet: a keyword hit only
                    cosine[str(m.id)] = 1.0 - float(d)
        bm25_scores = {i: s for i, s in bm25_scores.items() if i in by_id}
        clock.lap("bm25")
    dense_scores = cosine if use_dense else {}
    if fusion_method == "gated" and use_dense:
        whole = _holding_every_word(query.text, bm25_scores, dense_scores, by_id)
        ranked = fusion.gated(dense_scores, bm25_scores, FUSION_WEIGHTS, GATE_FLOOR, GATE_FULL, whole)
    elif fusion_method == "rrf":
        ranked = fusion.rrf(
            {
                "dense": [i for i, _ in fusion.top(dense_scores, len(dense_scores))],
                "bm25": [i for i, _ in fusion.top(bm25_scores, len(bm25_scores))],
            }
        )
    else:
        ranked = fusion.weighted({"dense": dense_scores, "bm25": bm25_scores}, FUSION_WEIGHTS, frozenset({"bm25"}))
    # The bonuses are on the [0, 1] scale of the weighted scores, not of RRF's; a search restricted to one channel
    # (the harness's bm25 and dense baselines) stays that channel's ranking alone.
    if fusion_method != "rrf" and job.channels is None:
        ranked = temporal.boost(
            ranked,
            job.query,
            lambda i: (by_id[i].info or {}, by_id[i].memory_value) if i in by_id else None,
            date_bonus=DATE_BONUS,
            when_bonus=WHEN_BONUS,
        )
    if graph:
        ranked, neighbours = graph_recall.expand(session, _scoped(job).options(defer(Memory.embedding)), ranked)
        by_id.update(neighbours)
        clock.lap("graph")
    if dedup_turns:
        items = _packed_items(session, job, by_id, fusion.top(ranked, len(ranked)), query.seen_message_ids)
    else:
        items = [memory_item(by_id[i], s) for i, s in fusion.top(ranked, job.top_k)]
    clock.lap("fuse")
    prefs = preference_search(session, job, query.query_vector) if job.include_preference and job.pref_top_k else []
    clock.lap("preferences")
    return SearchOutput(items, prefs, timings)


def _holding_every_word(
    text: str, lexical: dict[str, float], cosine: dict[str, float], by_id: dict[str, Memory]
) -> set[str]:
    """The keyword hits the gate would weaken (cosine under GATE_FULL) that hold every word of the query, as BM25
    analyses them: an exact lookup (LoCoMo dev R@10 0.8862 -> 0.8855 with it, PrefEval unchanged, replayed; without
    it a search for a code word found in one memory could miss it, as the chaos suite's marker searches did)."""
    words = frozenset(tokenize(text))
    if not words:
        return set()

    weak = [i for i in lexical if cosine.get(i, 1.0) < GATE_FULL]
    return {i for i in weak if words <= _token_set(indexed_text(by_id[i]))}


@lru_cache(maxsize=8192)
def _token_set(text: str) -> frozenset[str]:
    """The analysed words of a memory's indexed text. Cached by the text itself (a pure function of it): a user's
    keyword hits recur from search to search, and tokenising up to 40 of them was 7% of a search worker's CPU
    (py-spy, 1-message adds with a search each)."""
    return frozenset(tokenize(text))


def _bm25(index: Bm25Index, job: SearchJob, text: str, n: int) -> list[tuple[str, float]]:
    f = job.filters
    kinds = (f.kind,) if f.kind else ()
    return index.search(Bm25Query(str(job.tenant_id), job.user_id, tuple(tokenize(text)), f.conversation_id, kinds, n))


# Shared by the search threads of a process; a BM25 query is short and never waits on anything but the CPU.
_BM25_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")


def _packed_items(
    session: Session,
    job: SearchJob,
    by_id: dict[str, Memory],
    ranked: list[tuple[str, float]],
    seen: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The top ``job.top_k`` items with every turn shown once and neighbouring hits joined into spans
    (:mod:`memos_pipeline.search.context`); spans are re-rendered from their messages, read through the same scope."""
    cands = [context.Candidate(i, s, by_id[i].kind, tuple(_message_ids(by_id[i]))) for i, s in ranked]
    results = context.pack(cands, job.top_k, seen=seen)
    spans = [r.turns if not context.is_whole(r, _message_ids(by_id[r.memory_id])) else None for r in results]
    wanted = {uuid.UUID(t) for span in spans for t in span or ()}
    turns: dict[str, Turn] = {}
    if wanted:
        rows = session.execute(
            select(Message).where(
                Message.tenant_id == job.tenant_id, Message.user_id == job.user_id, Message.id.in_(wanted)
            )
        ).scalars()
        turns = {str(m.id): ingests.turn_of(m) for m in rows}
    items = []
    for r, span in zip(results, spans, strict=True):
        item = memory_item(by_id[r.memory_id], r.score)
        if span is not None and all(t in turns for t in span):  # a purged message leaves the window whole
            shown = [turns[t] for t in span]
            item["memory_value"] = render_window(shown)
            item["sources"] = [t.source_id for t in shown]
            item["info"] = {**item["info"], "span_of": [r.memory_id, *r.merged]}
        items.append(item)
    return items


def _message_ids(m: Memory) -> list[str]:
    return [str(x) for x in m.source_message_ids or ()]


def preference_item(p: Preference, score: float | None = None) -> dict[str, Any]:
    """A preference as the API returns it (DESIGN.md section 3)."""
    return {
        "id": str(p.id),
        "preference": p.preference,
        "preference_type": p.preference_type,
        "reasoning": p.reasoning,
        "conversation_id": p.conversation_id,
        "sources": list(p.sources or []),
        "create_time": _iso(p.created_at),
        "relativity": round(score, 6) if score is not None else None,
    }


def preference_search(session: Session, job: SearchJob, qvec: np.ndarray) -> list[dict[str, Any]]:
    # Exact: a user's preferences are few, and ranking all of them beats an index walk that may stop short.
    distance = _distance(Preference.embedding, qvec, True)
    q = select(Preference, distance).where(
        Preference.tenant_id == job.tenant_id, Preference.user_id == job.user_id, Preference.status == "activated"
    )
    if job.filter:
        q = q.where(compile_filter(filters.parse(job.filter), preference_target(), job.tenant_id))
    rows = session.execute(q.order_by(distance).limit(job.pref_top_k)).all()
    return [preference_item(p, 1.0 - float(d)) for p, d in rows]


# ---------------------------------------------------------------- the dense query

# Scopes (the rows one search may return) up to this size are ranked exactly: every row's distance and a top-N sort,
# on the scope index. That costs Postgres about 1-4 us of CPU a row with the vectors stored inline (migration 0007;
# measured on the bench corpus, 2 shared cores), so at most ~20 ms at the cap; larger scopes go through the HNSW
# index (approximate, a few ms).
EXACT_SCOPE_MAX = 5_000
HNSW_EF_SEARCH_MAX = 1_000  # pgvector's upper bound for hnsw.ef_search


def _distance(column: InstrumentedAttribute[Any], qvec: np.ndarray, exact: bool) -> Label[Any]:
    """The cosine distance to ``qvec``, labelled. Selected and ordered by its label, Postgres computes it once a row;
    an ORDER BY on the expression beside a select of ``1 - expression`` computed it twice, reading the vector each
    time. ``exact``: ``+ 0`` makes it an expression the HNSW index cannot order by, so the planner ranks every row of
    the scope (the same values, hence the same order); otherwise the planner may walk the index."""
    d = column.cosine_distance(qvec.tolist())
    return (d + literal_column("0") if exact else d).label("distance")


def _small_scope(session: Session, job: SearchJob, n_cand: int) -> bool:
    """Whether the job's scope holds at most EXACT_SCOPE_MAX rows (counted on the scope index, stopping past the cap).

    The same round trip sizes this transaction's HNSW candidate list for the candidates fast search asks for; the
    exact path does not read it. 16 per candidate (640 at top_k 10): measured with bench-scale on a 20k-row scope of
    100k memories, overlap@10 with the exact ranking 0.53 at 80 and 0.88 at 640 for rare facts (0.97 and 0.998 for
    ordinary chat queries), for 3.4 -> 5.0 ms."""
    capped = _scoped(job).with_only_columns(literal_column("1")).limit(EXACT_SCOPE_MAX + 1).subquery()
    ef = min(max(16 * n_cand, 40), HNSW_EF_SEARCH_MAX)
    count = select(func.count(), func.set_config("hnsw.ef_search", str(ef), True)).select_from(capped)
    return int(session.execute(count).one()[0]) <= EXACT_SCOPE_MAX


class _Clock:
    def __init__(self, sink: dict[str, float]) -> None:
        import time

        self._time = time.perf_counter
        self._sink = sink
        self._t = self._time()

    def lap(self, name: str) -> None:
        t = self._time()
        self._sink[name] = round((t - self._t) * 1000, 3)
        self._t = t
