"""POST /search/memory: fast, fine and mixture modes over the search and reranker queues, bounded in time.

- fast: one task on the search queue.
- fine: a chain on the queues, search.fast (wider candidate set) | reranker.rerank.
- mixture: both at once; the answer leaves at MIXTURE_DEADLINE_MS with the fine results merged if they arrived,
  else the fast ones. A late fine answer is cached by the reranker and used by the next search of the same
  conversation. The deadline is a hard bound: we wait on results with timeouts, never on a worker.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from flask import Blueprint, Response, current_app, g

from api import ok
from api.common import body, settings
from api.common import celery as celery_app
from api.errors import SEARCH_FAILED, TIMEOUT, VALIDATION, ApiError
from memos_pipeline.config import Settings
from memos_pipeline.schemas import SearchFilters, SearchJob, SearchRequest
from memos_pipeline.search import replies
from memos_pipeline.search.recall import PREFERENCE_NOTE
from memos_pipeline.search.rerank import merge_fine_into_fast, mixture_cache_key
from memos_pipeline.storage import knowledgebases as kb
from memos_pipeline.storage import profiles
from memos_pipeline.storage import tools as tool_rows
from memos_pipeline.storage.db import session_scope

bp = Blueprint("search", __name__)
FINE_CANDIDATES = 30  # fast candidates handed to the reranker: recall@30 is far above recall@10
# Search tasks are published transient: RabbitMQ then confirms without writing them to disk first (measured on the
# local broker: a confirmed publish took 12-17 ms at p50 persistent, 0.2-4 ms transient), and a search is worth
# nothing after a broker restart anyway (its request gave up long before).
TRANSIENT = 1


@dataclass(frozen=True)
class _Reply:
    """Where the search worker delivers one fast search's answer (:mod:`memos_pipeline.search.replies`)."""

    redis_url: str
    key: str

    @classmethod
    def new(cls, app: Celery) -> _Reply:
        return cls(app.conf.memos_settings.redis_url, replies.reply_key(uuid.uuid4().hex))

    def wait(self, timeout: float) -> dict[str, Any] | None:
        try:
            answer = replies.wait(replies.client(self.redis_url), self.key, timeout)
        except redis.RedisError as exc:
            raise ApiError(
                502, SEARCH_FAILED, f"search: waiting for the answer failed: {type(exc).__name__}: {exc}"[:500]
            ) from None
        if answer is None:
            return None
        if "error" in answer:
            raise ApiError(502, SEARCH_FAILED, f"search: the search worker failed: {answer['error']}"[:500])
        return answer["ok"]  # type: ignore[no-any-return]


def _fast(app: Celery, job: SearchJob, expires: float) -> _Reply:
    # expires: a search nobody waits for any more is dropped by the worker instead of being computed.
    # ignore_result: the answer comes back on the reply list, so no SUBSCRIBE here and no SET + PUBLISH in the worker.
    reply = _Reply.new(app)
    app.send_task(
        "memos.search.fast",
        args=[job.model_dump(mode="json")],
        kwargs={"reply_to": reply.key},
        expires=expires,
        headers={"trace_id": job.trace_id},
        ignore_result=True,
        delivery_mode=TRANSIENT,
    )
    return reply


def _fine(app: Celery, job: SearchJob, expires: float, cache: bool, reply: _Reply | None = None) -> AsyncResult:
    """search.fast over a wide candidate set | reranker.rerank. That fast search also delivers its answer to
    ``reply``: mixture uses it as its fast answer, so a mixture search costs one search task, not two."""
    # Decomposing costs an LLM call: fine mode only, never for a fast answer someone waits on (mixture's reply).
    cfg: Settings = app.conf.memos_settings
    decompose = reply is None and cfg.fine_decompose and cfg.llm_enabled
    wide = job.model_copy(update={"top_k": max(job.top_k, FINE_CANDIDATES), "decompose": decompose})
    chain = app.signature(
        "memos.search.fast",
        args=[wide.model_dump(mode="json")],
        kwargs={"reply_to": reply.key} if reply else {},
        expires=expires,
        delivery_mode=TRANSIENT,
    ) | app.signature(
        "memos.reranker.rerank",
        args=[job.model_dump(mode="json")],
        kwargs={"cache": cache},
        expires=expires,
        delivery_mode=TRANSIENT,
    )
    return chain.apply_async()  # type: ignore[no-any-return]


def _get(result: AsyncResult | _Reply, timeout: float) -> dict[str, Any] | None:
    """The task's output, or None when it did not arrive in time; a worker error becomes a 502.

    A fast search answers on its reply list, waited on with the deadline as timeout. Other results come through the
    result backend: we poll ``ready()`` instead of ``get(timeout=...)`` there, because the Redis result backend
    checks the timeout only between its 1-second drain steps, so get() can overshoot a 300 ms deadline by most of a
    second.
    """
    if isinstance(result, _Reply):
        return result.wait(timeout)
    deadline = time.monotonic() + max(timeout, 0.0)
    pause = 0.001
    while not result.ready():
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.005)
    try:
        return result.get(timeout=1.0, propagate=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise ApiError(
            502, SEARCH_FAILED, f"search: the search worker failed: {type(exc).__name__}: {exc}"[:500]
        ) from None


def _reserve_ms(deadline_ms: int) -> float:
    """Time kept back from the mixture wait for building and sending the response: 15% of the deadline, at
    most 50 ms."""
    return min(50.0, 0.15 * deadline_ms)


def _redis(cfg: Settings) -> redis.Redis:
    client = current_app.extensions.get("memos_redis")
    if client is None:
        client = current_app.extensions["memos_redis"] = redis.Redis.from_url(cfg.redis_url, socket_timeout=0.05)
    return client


def _mixture(cfg: Settings, app: Celery, job: SearchJob) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    # The deadline bounds the whole answer, so waiting stops early enough to merge, serialise and write it even
    # when 20 request threads compete for the GIL (measured: 20-60 ms past the wait at p99 on 2 cores).
    budget = (cfg.mixture_deadline_ms - _reserve_ms(cfg.mixture_deadline_ms)) / 1000
    deadline = time.monotonic() + budget
    # The chain outlives the deadline on purpose: a late fine answer is cached for the next search.
    fast_reply = _Reply.new(app)
    fine_r = _fine(app, job, cfg.search_timeout_s, cache=True, reply=fast_reply)
    key = mixture_cache_key(str(job.tenant_id), job.user_id, job.conversation_id)
    try:
        # A filtered search takes nothing from the cache: the earlier search's results may lie outside the filter.
        cached_raw = None if job.filter else _redis(cfg).get(key)
    except redis.RedisError:
        cached_raw = None  # the cache is an optimisation: never a reason to miss the deadline
    info: dict[str, Any] = {"mode": "mixture"}
    try:
        fast_out = _get(fast_reply, deadline - time.monotonic())
    except ApiError as exc:
        fast_out, info["fast_error"] = None, exc.message
    try:
        fine_out = _get(fine_r, deadline - time.monotonic()) if fast_out is not None else None
    except ApiError as exc:  # a broken reranker must not break mixture: answer with what we have
        fine_out, info["fine_error"] = None, exc.message
    info["fine_arrived"] = fine_out is not None
    cached = json.loads(cached_raw) if cached_raw else None
    if fast_out is None and fine_out is None and cached is None:
        info["partial"] = True
        if "fast_error" in info:
            raise ApiError(502, SEARCH_FAILED, info["fast_error"])
        return None, info
    base: dict[str, Any] = fine_out or fast_out or {"memories": [], "preferences": [], "timings_ms": {}}
    memories = (fast_out or {"memories": []})["memories"][: job.top_k]
    if fine_out is not None:
        memories = merge_fine_into_fast(memories, fine_out["memories"], job.top_k)
    elif cached is not None:
        # A late fine answer from this conversation's previous search: reranked for that query, so it ranks
        # first only if the query is the same; otherwise its memories fill places the fast list left open.
        stale = [{**m, "stale": True} for m in cached["memories"]]
        same = cached.get("query") == job.query
        memories = (
            merge_fine_into_fast(memories, stale, job.top_k)
            if same
            else merge_fine_into_fast(stale, memories, job.top_k)
        )
        info["merged_cached_fine"] = True
    return {**base, "memories": memories}, info


# ---------------------------------------------------------------- knowledge bases (knowledgebase_ids)


def knowledgebase_jobs(job: SearchJob, ids: list[str] | None, field: str = "knowledgebase_ids") -> list[SearchJob]:
    """One fast search per knowledge base asked for: a base is a scope of its own (``kb:<id>``, see
    storage/knowledgebases.py), searched by the same recall as a user, with the query alone (the user's filters,
    conversation and preferences are about the user's memories). An id that names no base of the key's tenant is
    a 422 naming it, before anything is searched."""
    if not ids:
        return []
    with session_scope(settings()) as s:
        try:
            bases = kb.require_bases(s, job.tenant_id, ids, field)
        except kb.UnknownKnowledgebase as exc:
            errors = [{"field": field, "message": f"no knowledge base {i}"} for i in exc.ids]
            raise ApiError(422, VALIDATION, str(exc), {"errors": errors}) from None
    empty = {"conversation_id": None, "filters": SearchFilters(), "filter": None}
    return [
        job.model_copy(update={"user_id": kb.scope(b.id), "pref_top_k": 0, "include_preference": False, **empty})
        for b in bases
    ]


def search_knowledgebases(app: Celery, jobs: list[SearchJob], timeout: float) -> list[_Reply]:
    """Publish the bases' searches at once: they run beside the user's search on the search workers."""
    return [_fast(app, j, timeout) for j in jobs]


def merge_passages(
    memories: list[dict[str, Any]], replies: list[_Reply], top_k: int, timeout: float
) -> list[dict[str, Any]]:
    """The user's memories and the bases' passages, best score first, ``top_k`` of them (scores of one recall and
    fusion, so comparable: a passage outranks a memory when it matches the query better)."""
    if not replies:
        return memories
    deadline = time.monotonic() + timeout
    found = list(memories)
    for reply in replies:
        out = _get(reply, deadline - time.monotonic())
        if out is None:
            raise ApiError(504, TIMEOUT, f"search: no answer from a knowledge base's search within {timeout}s")
        found += out["memories"]
    return sorted(found, key=lambda m: -(m.get("relativity") or 0.0))[:top_k]


def tool_memory_job(job: SearchJob, req: SearchRequest) -> SearchJob | None:
    """The search of the user's tool memories (storage/tools.py) when ``include_tool_memory`` asks for them: the
    same query, filters and conversation, in the user's tool scope, ``tool_memory_limit_number`` (6) of them."""
    limit = 6 if req.tool_memory_limit_number is None else req.tool_memory_limit_number
    if not req.include_tool_memory or limit == 0:
        return None
    update = {"user_id": tool_rows.scope(job.user_id), "top_k": limit, "pref_top_k": 0, "include_preference": False}
    return job.model_copy(update=update)


def tool_memories(replies: list[_Reply], timeout: float) -> list[dict[str, Any]]:
    found = merge_passages([], replies, 100, timeout)
    return [tool_rows.tool_item(m) for m in found]


@bp.post("/search/memory")
def search_memory() -> tuple[Response, int]:
    return ok(run(settings(), body(SearchRequest)))


def run(cfg: Settings, req: SearchRequest) -> dict[str, Any]:
    """One search as /search/memory answers it (its data); also MemOS's server route /product/search."""
    job = SearchJob(
        tenant_id=g.tenant_id,
        user_id=req.user_id,
        query=req.query,
        conversation_id=req.conversation_id,
        top_k=req.top_k,
        pref_top_k=req.pref_top_k if cfg.enable_preference_memory else 0,
        include_preference=req.include_preference and cfg.enable_preference_memory,
        filters=req.filters,
        filter=req.scope_filter(),
        channels=req.channels,
        trace_id=g.request_id,
    )
    app, mode = celery_app(), req.mode or cfg.search_mode
    bases = search_knowledgebases(app, knowledgebase_jobs(job, req.knowledgebase_ids), cfg.search_timeout_s)
    tool_job = tool_memory_job(job, req)
    tools = search_knowledgebases(app, [tool_job] if tool_job else [], cfg.search_timeout_s)
    info: dict[str, Any] = {"mode": mode}
    if mode == "mixture":
        out, info = _mixture(cfg, app, job)
        profile = _profile(cfg, job, req)
    else:
        result = (
            _fast(app, job, cfg.search_timeout_s) if mode == "fast" else _fine(app, job, cfg.search_timeout_s, False)
        )
        profile = _profile(cfg, job, req)  # read while the worker searches: off the answer's critical path
        out = _get(result, cfg.search_timeout_s)
        if out is None:
            raise ApiError(504, TIMEOUT, f"search: no answer from the {mode} path within {cfg.search_timeout_s}s")
        info["reranked"] = bool(out.get("reranked", False))
        if out.get("sub_queries"):
            info["sub_queries"] = out["sub_queries"]
    memories = merge_passages(out["memories"] if out else [], bases, job.top_k, cfg.search_timeout_s)
    prefs = out["preferences"] if out else []
    if req.relativity is not None:  # MemOS: a minimum score, on the scores as returned
        memories = [m for m in memories if (m.get("relativity") or 0.0) >= req.relativity]
        prefs = [p for p in prefs if (p.get("relativity") or 0.0) >= req.relativity]
    data: dict[str, Any] = {
        "memory_detail_list": memories,
        "preference_detail_list": prefs,
        # Never null: the MemOS client's model takes a string (an empty one when there is nothing to note).
        "preference_note": PREFERENCE_NOTE if prefs else "",
        "search": info,
        "timings_ms": out["timings_ms"] if out else {},
        "ignored": req.ignored(),
    }
    # Asked-for kinds we do not have yet: an empty list (and the flag in ignored), rather than no key at all.
    if req.include_tool_memory:
        data["tool_memory_detail_list"] = tool_memories(tools, cfg.search_timeout_s)
    if req.include_skill:
        data["skill_detail_list"] = []
    if profile:
        data["profile_detail_list"] = profile
    return data


def _profile(cfg: Settings, job: SearchJob, req: SearchRequest) -> list[dict[str, Any]]:
    """The user's profile (api/profile.py), if there is one: MemOS returns it with every search."""
    with session_scope(cfg) as s:
        return profiles.profile_items(s, job.tenant_id, req.user_id, req.agent_id)
