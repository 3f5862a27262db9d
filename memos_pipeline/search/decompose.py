"""Fine mode's query decomposition: the LLM splits a multi-hop question into the simpler questions it depends on,
each is searched like the question itself, and the lists are merged before the reranker orders them.

Why: a multi-hop question ("what did Caroline do after the race she ran with Mel?") needs memories that do not
look like the question as a whole; a search for each part finds them (LoCoMo dev: the missed multi-hop evidence has a
median dense rank of ~50 for the whole question). Only fine mode does it: the LLM call costs far more than a fast
search, and mixture's fast answer must not wait for it. Its quality depends on the model and has not been measured
here (no model worth measuring runs on this machine); the plumbing is tested against the fake LLM server.

A failed or invalid LLM answer never fails the search: it is searched as one question, as without decomposition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from memos_pipeline.config import Settings
from memos_pipeline.llm import LLMClient

log = logging.getLogger(__name__)

MAX_SUB_QUERIES = 3
RRF_K = 60  # the usual reciprocal-rank constant: a hit's place counts, its score's scale across searches does not

SYSTEM = """You split a user's question to a memory search into SUB-QUESTIONS.
The memories are short passages of the user's past conversations. Some questions need several of them, found by
different searches: "What did Caroline do after the race she ran with Mel?" needs "the race Caroline ran with Mel"
and "what Caroline did after that race". A simple question needs no split.
Answer with one JSON object: {"queries": ["...", ...]} with at most 3 short search queries, in the question's
language, each naming the people and things it is about. Answer {"queries": []} when the question is simple."""


class Decomposition(BaseModel):
    queries: list[str] = Field(default_factory=list, max_length=8)


_CLIENTS: dict[tuple[object, ...], LLMClient] = {}


def _client(settings: Settings) -> LLMClient:
    """One per process and endpoint: a new client opened a new HTTP connection pool each search (~100 ms here)."""
    key = (settings.llm_base_url, settings.llm_model, settings.llm_api_key, settings.llm_timeout_s)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = LLMClient(settings)  # a race only builds one client twice
    return client


def sub_queries(settings: Settings, question: str) -> list[str]:
    """Up to MAX_SUB_QUERIES searches that differ from ``question``; [] when the model sees no split or fails."""
    try:
        answer = _client(settings).chat_json(SYSTEM, question, Decomposition)
    except Exception as exc:  # the LLM is an optional helper here: any failure means "search the question alone"
        log.warning("query decomposition failed (%s: %s); searching the question alone", type(exc).__name__, exc)
        return []
    seen = {question.strip().casefold()}
    out: list[str] = []
    for q in (q.strip()[:500] for q in answer.queries):
        if q and q.casefold() not in seen:
            seen.add(q.casefold())
            out.append(q)
    return out[:MAX_SUB_QUERIES]


def merge(lists: Sequence[list[dict[str, Any]]], top_k: int) -> list[dict[str, Any]]:
    """One candidate list from the question's own (first) and its parts' searches: reciprocal-rank fusion by memory
    id, each memory as the first list that found it shows it; the question's own list wins ties."""
    score: dict[str, float] = {}
    item: dict[str, dict[str, Any]] = {}
    for found in lists:
        for rank, m in enumerate(found):
            score[m["id"]] = score.get(m["id"], 0.0) + 1.0 / (RRF_K + rank + 1)
            item.setdefault(m["id"], m)
    order = sorted(score, key=lambda i: -score[i])  # stable: among equal scores, first found first
    return [item[i] for i in order[:top_k]]
