"""GET /health: liveness plus readiness of every dependency, each with its latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.common import celery, settings
from memos_pipeline.storage.db import get_engine

bp = Blueprint("health", __name__)


def _check(fn: Callable[[], Any]) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        fn()
        return {"ok": True, "ms": round((time.perf_counter() - t) * 1000, 2)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


@bp.get("/health")
def health() -> tuple[Response, int]:
    cfg = settings()

    def db() -> None:
        with get_engine(cfg).connect() as conn:
            conn.execute(text("SELECT 1"))

    def cache() -> None:
        redis.Redis.from_url(cfg.redis_url, socket_timeout=1, socket_connect_timeout=1).ping()

    def broker() -> None:
        with celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)

    checks = {"database": _check(db), "redis": _check(cache), "broker": _check(broker)}
    ready = all(c["ok"] for c in checks.values())
    body = {
        "code": 0 if ready else 50301,
        "message": "ok" if ready else "not ready",
        "data": {"live": True, "ready": ready, "checks": checks},
    }
    return jsonify(body), 200 if ready else 503
