"""Queue ``search``: fast recall (dense + BM25) and fusion. Read-only, so a redelivery is harmless."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from typing import Any

import redis

from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder, retry_on_model_switch
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import replies
from memos_pipeline.search.recall import SearchOutput, fast_search
from memos_pipeline.storage.bm25 import get_index
from memos_pipeline.storage.db import session_scope
from workers.base import PipelineTask
from workers.celery import app

log = logging.getLogger("memos.workers.search")


# No retries: the caller waits on this result with a deadline, and a late answer is worth nothing.
@app.task(
    bind=True,
    base=PipelineTask,
    name="memos.search.fast",
    ignore_result=False,
    max_retries=0,
    autoretry_for=(),
    dead_letter=False,
)
def fast(self: PipelineTask, payload: dict[str, Any], reply_to: str | None = None) -> dict[str, Any]:
    """``reply_to``: the Redis list the waiting API request reads (:mod:`memos_pipeline.search.replies`). The answer
    is the return value as well: a fine search's chain hands it on to the reranker."""
    settings = self.settings
    try:
        out = asdict(search(settings, SearchJob.model_validate(payload)))
    except Exception as exc:
        # The waiting request answers 502 now rather than 504 at its deadline.
        _reply(settings, reply_to, {"error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    _reply(settings, reply_to, {"ok": out})
    return out


def search(settings: Settings, job: SearchJob) -> SearchOutput:
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


def _reply(settings: Settings, key: str | None, answer: dict[str, Any]) -> None:
    if key is None:
        return
    try:
        replies.push(replies.client(settings.redis_url), key, answer)
    except redis.RedisError:
        # The request then ends at its deadline, as it would have without an answer; the search itself went fine.
        log.warning("could not deliver the search answer to %s", key, exc_info=True)


def warm_up(settings: Settings) -> None:
    """One search for nobody (a tenant that cannot exist), when the worker starts: it loads the model, jieba's
    dictionary (the first query with Chinese in it took ~1 s to tokenize), opens the BM25 reader and a database
    connection, and compiles the SQL, so that the first real search pays for none of them."""
    search(settings, SearchJob(tenant_id=uuid.UUID(int=0), user_id="warm-up", query="warm up 预热", top_k=1))
