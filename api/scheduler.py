"""/scheduler/status and /scheduler/wait: MemOS's server routes (also under /product) for "is this user's memory
up to date?". A user's work in flight is their ingests not yet done or failed (every stage, the LLM ones included).

Like MemOS, both take their parameters in the query string (``user_name``, ``timeout_seconds``, ``poll_interval``);
a JSON body (``user_id`` or ``user_name``, ...) works too and wins. /scheduler/wait blocks at most
MEMOS_SCHEDULER_WAIT_MAX_S and answers 200 either way, with ``message`` "idle" or "timeout" as MemOS's does and
``data.timed_out``.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import ValidationError

from api import ok
from api.common import settings
from api.errors import NOT_FOUND, ApiError, parse_json_body, validation_error
from memos_pipeline.schemas import SchedulerRequest
from memos_pipeline.storage import ingests
from memos_pipeline.storage.db import session_scope

bp = Blueprint("scheduler", __name__)
LISTED = 100  # pending ingests listed by /scheduler/status (all are counted)


def _request() -> SchedulerRequest:
    data: dict[str, Any] = dict(request.args)
    raw = request.get_data(cache=False) if request.method == "POST" else b""
    if raw.strip():  # MemOS's own callers send no body at all
        data.update(parse_json_body(raw))
    try:
        return SchedulerRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _pending(req: SchedulerRequest) -> dict[str, int]:
    with session_scope(settings()) as s:
        return ingests.pending_counts(s, g.tenant_id, req.user_id)


@bp.route("/scheduler/status", methods=["GET", "POST"])
def scheduler_status() -> tuple[Response, int]:
    req = _request()
    with session_scope(settings()) as s:
        counts = ingests.pending_counts(s, g.tenant_id, req.user_id)
        oldest = ingests.pending_ingests(s, g.tenant_id, req.user_id, LISTED)
        tasks = [
            {
                "task_id": i.task_id,
                "status": i.status,
                "user_id": i.user_id,
                "conversation_id": i.conversation_id,
                "created_at": i.created_at.isoformat(),
            }
            for i in oldest
        ]
        task = ingests.find_ingest(s, g.tenant_id, task_id=req.task_id) if req.task_id else None
        if req.task_id and task is None:
            raise ApiError(404, NOT_FOUND, f"task_id: no ingest with task_id {req.task_id}")
    return ok(
        {
            **({"task_id": task.task_id, "status": task.status} if task is not None else {}),
            "scope": "user" if req.user_id else "tenant",
            "user_name": req.user_id,
            "running_tasks": sum(counts.values()),
            "task_count_per_user": counts,
            "tasks": tasks,
            "timestamp": time.time(),
        }
    )


@bp.post("/scheduler/wait")
def scheduler_wait() -> tuple[Response, int]:
    """Block until the user (or the whole tenant) has no ingest in flight, or ``timeout_seconds`` passed."""
    req = _request()
    timeout = min(req.timeout_seconds, settings().scheduler_wait_max_s)
    t0 = time.monotonic()
    while True:
        running = sum(_pending(req).values())
        waited = time.monotonic() - t0
        if running == 0 or waited >= timeout:
            timed_out = running > 0
            data = {
                "running_tasks": running,
                "waited_seconds": round(waited, 3),
                "timed_out": timed_out,
                "user_name": req.user_id,
            }
            return jsonify({"code": 0, "message": "timeout" if timed_out else "idle", "data": data}), 200
        time.sleep(min(req.poll_interval, timeout - waited))
