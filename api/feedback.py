"""POST /add/feedback: MemOS's feedback call, accepted durably like an add (memos_pipeline/ingest/feedback.py) and
applied by the memreader queue (memos_pipeline/stages/feedback.py). Its task_id reads in /get/status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, request

from api import ok
from api.assist import require_llm
from api.common import body, celery, settings
from api.errors import INVALID_BODY, ApiError
from api.ingest import accepted_data
from memos_pipeline.ingest.feedback import accept_feedback
from memos_pipeline.schemas import FeedbackRequest

bp = Blueprint("feedback", __name__)


@bp.post("/add/feedback")
def add_feedback() -> tuple[Response, int]:
    cfg = settings()
    req = body(FeedbackRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 128 and key.isprintable()):
        raise ApiError(400, INVALID_BODY, "Idempotency-Key: 1 to 128 printable characters")
    return ok(accept(cfg, req, key), 202)


def accept(cfg: Any, req: FeedbackRequest, key: str | None) -> dict[str, Any]:
    """A feedback accepted durably: the answer's data. Shared with MemOS's server route /product/feedback."""
    # Refused up front rather than accepted and never applied: only the LLM can read a feedback.
    require_llm(cfg, "feedback")
    res = accept_feedback(cfg, celery(), g.tenant_id, req, trace_id=g.request_id, idempotency_key=key)
    return accepted_data(res, req.ignored())
