"""Queue ``reranker``: rerank fast candidates (fine search); in mixture mode also cache late answers."""

from __future__ import annotations

import functools
import json
from typing import Any

import redis

from memos_pipeline.schemas import SearchJob
from memos_pipeline.search.rerank import Reranker, build_reranker, mixture_cache_key, rerank_items
from workers.base import PipelineTask
from workers.celery import app, settings

_REDIS = redis.Redis.from_url(settings.redis_url)
MIXTURE_CACHE_TTL_S = 600


@functools.cache
def _reranker() -> Reranker | None:
    # Built on first use, not at import: every worker imports every task module.
    return build_reranker(settings)


# Second link of the fine chain: search.fast(candidates) | reranker.rerank(job). Read-only, no retries.
@app.task(
    bind=True,
    base=PipelineTask,
    name="memos.reranker.rerank",
    ignore_result=False,
    max_retries=0,
    autoretry_for=(),
    dead_letter=False,
)
def rerank(
    self: PipelineTask, fast_out: dict[str, Any], payload: dict[str, Any], cache: bool = False
) -> dict[str, Any]:
    job = SearchJob.model_validate(payload)
    items, reranker = fast_out["memories"], _reranker()
    if reranker is not None and items:
        items = rerank_items(reranker, job.query, items, job.top_k)
    out = {**fast_out, "memories": items[: job.top_k], "reranked": reranker is not None}
    if cache:
        # Mixture: the API may have answered without us; the next search of this conversation merges this.
        _REDIS.set(
            mixture_cache_key(str(job.tenant_id), job.user_id, job.conversation_id),
            json.dumps({"query": job.query, "memories": out["memories"]}),
            ex=MIXTURE_CACHE_TTL_S,
        )
    return out
