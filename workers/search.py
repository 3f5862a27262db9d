"""Queue ``search``: fast recall (dense + BM25) and fusion. Read-only, so a redelivery is harmless."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import redis

from memos_pipeline.config import Settings
from memos_pipeline.schemas import SearchJob
from memos_pipeline.search import replies
from memos_pipeline.search.service import search
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


def _reply(settings: Settings, key: str | None, answer: dict[str, Any]) -> None:
    if key is None:
        return
    try:
        replies.push(replies.client(settings.redis_url), key, answer)
    except redis.RedisError:
        # The request then ends at its deadline, as it would have without an answer; the search itself went fine.
        log.warning("could not deliver the search answer to %s", key, exc_info=True)
