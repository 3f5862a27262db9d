"""POST /rerank, /extract/memory and /chat: MemOS's calls that answer from a model rather than from the store.

- /rerank: the configured reranker (``MOS_RERANKER_BACKEND``, search/rerank.py) as an endpoint.
- /extract/memory: the MemReader's and the preference stage's prompts and checks over the given messages,
  stateless: nothing is stored.
- /chat: the fast search (the search blueprint's own path and worker), a prompt with what it found
  (memos_pipeline/chat.py), the configured LLM's answer, whole or as server-sent events; with
  ``add_message_on_answer`` the exchange is added through the same accept path as /add/message.

Without an LLM (or a reranker) configured these answer 503 saying what to configure, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import requests
from flask import Blueprint, Response, current_app, g, request, stream_with_context
from pydantic import ValidationError

from api import ok
from api.common import body, celery, settings
from api.errors import INVALID_BODY, TIMEOUT, UNAVAILABLE, ApiError
from api.search import _fast, _get, knowledgebase_jobs, merge_passages, search_knowledgebases
from memos_pipeline import chat as chat_core
from memos_pipeline.config import Settings
from memos_pipeline.ingest.accept import accept_add
from memos_pipeline.llm import RETRYABLE, LLMClient, LLMOutputError
from memos_pipeline.schemas import AddRequest, ChatRequest, ExtractRequest, RerankRequest, SearchJob
from memos_pipeline.search.rerank import Reranker, build_reranker
from memos_pipeline.stages import llm_stage
from memos_pipeline.stages import prompts as ex
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.chunking import Turn

bp = Blueprint("assist", __name__)

# Upstream failures, by which service failed (the HTTP status says 502 or 503, the code says which).
LLM_FAILED = 50202
RERANK_FAILED = 50203
CHAT_HISTORY_MESSAGES = 10  # the conversation's latest turns shown to the model before the query


def require_llm(cfg: Settings, what: str) -> None:
    if not cfg.llm_enabled:
        raise ApiError(
            503,
            UNAVAILABLE,
            f"{what}: no LLM configured; set MEMOS_LLM_BASE_URL and MEMOS_LLM_MODEL (an OpenAI-compatible endpoint)",
        )


def llm_error(what: str, exc: Exception) -> ApiError:
    """An LLM failure as the caller should see it: 503 with Retry-After when it is transient (rate limit, 5xx,
    timeout, unreachable, retried already), 502 when the model refused the request or answered unusably."""
    detail = f"{type(exc).__name__}: {exc}"[:400]
    if isinstance(exc, RETRYABLE):
        return ApiError(
            503, UNAVAILABLE, f"{what}: the LLM is unavailable ({detail}); retry", headers={"Retry-After": "1"}
        )
    return ApiError(502, LLM_FAILED, f"{what}: the LLM failed ({detail})")


# ---------------------------------------------------------------- /rerank


def _reranker(cfg: Settings) -> Reranker:
    if cfg.mos_reranker_backend == "none":
        raise ApiError(
            503, UNAVAILABLE, "rerank: no reranker configured; set MOS_RERANKER_BACKEND (and MOS_RERANKER_URL)"
        )
    cached = current_app.extensions.get("memos_reranker")
    if cached is None:
        try:
            cached = current_app.extensions["memos_reranker"] = build_reranker(cfg)
        except ValueError as exc:  # a backend without its URL: a configuration error, said as such
            raise ApiError(503, UNAVAILABLE, f"rerank: {exc}") from None
    assert cached is not None
    return cached  # type: ignore[no-any-return]


@bp.post("/rerank")
def rerank() -> tuple[Response, int]:
    cfg = settings()
    req = body(RerankRequest)
    reranker = _reranker(cfg)
    try:
        scores = reranker.scores(req.query, [d.text for d in req.documents])
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise ApiError(502, RERANK_FAILED, f"rerank: the reranker failed: {type(exc).__name__}: {exc}"[:500]) from None
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: req.top_n]
    results = [
        {"index": i, "relevance_score": round(scores[i], 6), "document": req.documents[i].model_dump()} for i in ranked
    ]
    return ok({"results": results, "model": reranker.name, "ignored": req.ignored()})


# ---------------------------------------------------------------- /extract/memory


@bp.post("/extract/memory")
def extract_memory() -> tuple[Response, int]:
    cfg = settings()
    req = body(ExtractRequest, {"max_messages": cfg.max_messages_per_add, "max_content_chars": cfg.max_content_chars})
    require_llm(cfg, "extract")
    llm = LLMClient(cfg.with_overrides(llm_model=req.model) if req.model else cfg)
    # Message ids as the stages show them: the client's, or the position in the request.
    turns = [Turn(str(i), m.id or f"m{i}", m.role, m.content, m.name, m.chat_time) for i, m in enumerate(req.messages)]
    kinds = req.kinds()
    facts: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    try:
        for batch in llm_stage.batches(turns, cfg.extract_batch_messages):
            if "facts" in kinds:
                out = llm.chat_json(
                    ex.FACTS_SYSTEM,
                    ex.facts_prompt(batch, req.user_id),
                    ex.FactsOut,
                    check=lambda o, b=batch: ex.check_facts(o, b),
                )
                facts += [{**f.model_dump(), "sources": ex.map_sources(f.sources, batch)} for f in out.memories]
            if "preferences" in kinds:
                p = llm.chat_json(
                    ex.PREFERENCES_SYSTEM,
                    ex.render_for_llm(batch),
                    ex.PreferencesOut,
                    check=lambda o, b=batch: ex.check_preferences(o, b),
                )
                prefs += [
                    {
                        "preference": e.preference,
                        "preference_type": "explicit_preference",
                        "reasoning": "",
                        "sources": ex.map_sources(e.sources, batch),
                    }
                    for e in p.explicit_preferences
                ]
                prefs += [
                    {
                        "preference": i.preference,
                        "preference_type": "implicit_preference",
                        "reasoning": i.reasoning,
                        "sources": ex.map_sources(i.sources, batch),
                    }
                    for i in p.implicit_preferences
                ]
    except (LLMOutputError, openai.OpenAIError) as exc:
        raise llm_error("extract", exc) from None
    data: dict[str, Any] = {
        "memory_detail_list": facts if "facts" in kinds else [],
        "preference_detail_list": prefs if "preferences" in kinds else [],
        "model": llm.settings.llm_model,
        "usage": llm.usage.as_dict(),
        "ignored": req.ignored(),
    }
    return ok(data)


# ---------------------------------------------------------------- /chat


def _recall(cfg: Settings, req: ChatRequest) -> dict[str, Any]:
    """The memories and preferences for the query: the fast search path of /search/memory (same task, worker and
    deadline), not a copy of it."""
    pref_k = req.preference_limit_number if cfg.enable_preference_memory and req.include_preference else 0
    if req.memory_limit_number == 0 and pref_k == 0:
        return {"memories": [], "preferences": []}
    job = SearchJob(
        tenant_id=g.tenant_id,
        user_id=req.user_id,
        query=req.query,
        conversation_id=req.conversation_id,
        # At least one: a search asks for some memories; extra ones are dropped below when none were wanted.
        top_k=max(req.memory_limit_number, 1),
        pref_top_k=pref_k,
        include_preference=pref_k > 0,
        filter=req.scope_filter(),
        trace_id=g.request_id,
    )
    bases = knowledgebase_jobs(job, req.knowledgebase_ids)  # a 422 for an unknown base, before any search
    reply = _fast(celery(), job, cfg.search_timeout_s)
    passages = search_knowledgebases(celery(), bases, cfg.search_timeout_s)
    out = _get(reply, cfg.search_timeout_s)
    if out is None:
        raise ApiError(504, TIMEOUT, f"chat: no answer from the search within {cfg.search_timeout_s}s")
    memories = merge_passages(out["memories"], passages, job.top_k, cfg.search_timeout_s)
    return {"memories": memories[: req.memory_limit_number], "preferences": out["preferences"]}


def _history(cfg: Settings, req: ChatRequest) -> list[tuple[str, str]]:
    if req.conversation_id is None:
        return []
    with session_scope(cfg) as s:
        rows = ingests.latest_messages(
            s,
            g.tenant_id,
            req.user_id,
            conversation_id=req.conversation_id,
            conversations=1,
            per_conversation=CHAT_HISTORY_MESSAGES,
        )
        return [(m.role, m.content) for m in rows]


def _write_back(cfg: Settings, req: ChatRequest, answer: str, key: str | None) -> dict[str, Any]:
    """The query and the answer as an add of the conversation, through /add/message's accept path: durable, and a
    retried chat (same Idempotency-Key, or the same exchange within MEMOS_ADD_DEDUP_WINDOW_S) is stored once."""
    try:
        add = AddRequest.model_validate(
            {
                "user_id": req.user_id,
                "conversation_id": req.conversation_id or "default",
                "messages": [{"role": "user", "content": req.query}, {"role": "assistant", "content": answer}],
                "agent_id": req.agent_id,
                "app_id": req.app_id,
                "source": req.source,
                "tags": req.tags,
                "info": req.info,
            },
            context={"max_messages": cfg.max_messages_per_add, "max_content_chars": cfg.max_content_chars},
        )
    except ValidationError as exc:  # an empty or oversized answer: the chat still answers, the add says why not
        return {"success": False, "error": str(exc.errors()[0]["msg"])}
    res = accept_add(cfg, celery(), g.tenant_id, add, trace_id=g.request_id, idempotency_key=key)
    acc = res.accepted
    return {
        "success": True,
        "task_id": acc.task_id,
        "ingest_id": str(acc.ingest_id),
        "status": "accepted",
        "duplicate": acc.duplicate,
    }


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not (0 < len(key) <= 123 and key.isprintable()):
        raise ApiError(400, INVALID_BODY, "Idempotency-Key: 1 to 123 printable characters")
    return f"chat:{key}"  # its own namespace: the same key on an /add/message names another add


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


@bp.post("/chat")
def chat() -> Response | tuple[Response, int]:
    cfg = settings()
    req = body(ChatRequest)
    key = _idempotency_key()
    if not req.stream:
        return ok(chat_complete(cfg, req, key))
    messages, params, common = _prepare(cfg, req)
    try:
        pieces = chat_core.open_stream(cfg, messages, params)
    except openai.OpenAIError as exc:
        raise llm_error("chat", exc) from None
    return Response(
        stream_with_context(_events(cfg, req, key, pieces, common)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _prepare(cfg: Settings, req: ChatRequest) -> tuple[list[dict[str, str]], chat_core.ChatParams, dict[str, Any]]:
    """What a chat sends the model (after the recall) and what every answer carries."""
    require_llm(cfg, "chat")
    found = _recall(cfg, req)
    messages = chat_core.build_messages(
        req.query, found["memories"], found["preferences"], custom_system=req.system_prompt, history=_history(cfg, req)
    )
    params = chat_core.ChatParams(
        model=req.model_name or cfg.llm_model or "",
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
    )
    common = {
        "memory_detail_list": found["memories"],
        "preference_detail_list": found["preferences"],
        "model": params.model,
        "ignored": req.ignored(),
    }
    return messages, params, common


def chat_complete(cfg: Settings, req: ChatRequest, key: str | None) -> dict[str, Any]:
    """A whole (not streamed) chat answer, as /chat's data; also MemOS's server route /product/chat/complete."""
    messages, params, common = _prepare(cfg, req)
    try:
        answer = chat_core.complete(cfg, messages, params)
    except openai.OpenAIError as exc:
        raise llm_error("chat", exc) from None
    data: dict[str, Any] = {"response": answer.text, "usage": answer.usage, **common}
    if req.add_message_on_answer:
        data["add"] = _write_back(cfg, req, answer.text, key)
    return data


def _events(
    cfg: Settings, req: ChatRequest, key: str | None, pieces: Iterator[str], common: dict[str, Any]
) -> Iterator[str]:
    """MemOS's stream: a ``reference`` event (the memories used), ``text`` events (the answer's pieces), then
    ``end`` (the whole answer, and the write-back); ``error`` if the model fails mid-way (the status is sent)."""
    yield _sse({"type": "reference", "data": common["memory_detail_list"]})
    text: list[str] = []
    try:
        for piece in pieces:
            text.append(piece)
            yield _sse({"type": "text", "data": piece})
    except openai.OpenAIError as exc:
        yield _sse({"type": "error", "data": llm_error("chat", exc).message})
        return
    end: dict[str, Any] = {"response": "".join(text), **common}
    if req.add_message_on_answer:
        end["add"] = _write_back(cfg, req, end["response"], key)
    yield _sse({"type": "end", "data": end})
