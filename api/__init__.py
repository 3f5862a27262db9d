"""The Flask API: validate, persist, publish, answer. Built by ``create_app(settings)``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request

from api import errors
from memos_pipeline import logsafe
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings, get_settings

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})


def ok(data: Any = None, status: int = 200) -> tuple[Response, int]:
    """The success envelope."""
    return jsonify({"code": 0, "message": "ok", "data": data}), status


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    # Before anything logs: no record of this process carries the API's, the LLM's or a URL's secret.
    logsafe.install(settings)
    logging.basicConfig(level=settings.log_level)
    app = Flask("memos_pipeline.api")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_AS_ASCII"] = False
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["memos_settings"] = settings
    app.extensions["memos_celery"] = make_celery(settings)

    from api.assist import bp as assist_bp
    from api.auth import authenticate
    from api.feedback import bp as feedback_bp
    from api.health import bp as health_bp
    from api.ingest import bp as ingest_bp
    from api.knowledgebase import bp as knowledgebase_bp
    from api.memories import bp as memories_bp
    from api.meta import bp as meta_bp
    from api.meta import instrument
    from api.product import bp as product_bp
    from api.profile import bp as profile_bp
    from api.scheduler import bp as scheduler_bp
    from api.search import bp as search_bp

    errors.register(app)

    @app.before_request
    def _before() -> None:
        g.t0 = time.perf_counter()
        g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        if request.path.removeprefix("/product") not in PUBLIC_PATHS:
            g.tenant_id = authenticate(settings, request.headers.get("Authorization"))

    @app.after_request
    def _after(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        return resp

    instrument(app)
    app.register_blueprint(meta_bp)
    blueprints = (health_bp, ingest_bp, search_bp, memories_bp, scheduler_bp, assist_bp, feedback_bp, knowledgebase_bp)
    for bp in (*blueprints, profile_bp):
        app.register_blueprint(bp)
        # /product/* aliases of every route (the MemOS product API paths)
        app.register_blueprint(bp, url_prefix="/product", name=f"product_{bp.name}")
    # MemOS's own server routes (/product/add, /product/search, ...): only under /product, as MemOS serves them.
    app.register_blueprint(product_bp, url_prefix="/product")
    return app
