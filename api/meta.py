"""GET /openapi.json (built from the same pydantic models that validate requests) and GET /metrics."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel

from memos_pipeline import __version__
from memos_pipeline.schemas import (
    AddRequest,
    DeleteMemoryRequest,
    GetMemoryRequest,
    GetMessageRequest,
    MemoryHistoryRequest,
    SearchRequest,
    StatusRequest,
    UpdateMemoryRequest,
)

bp = Blueprint("meta", __name__)

REQUEST_SECONDS = Histogram(
    "memos_api_request_seconds", "API request latency by route", ["route", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
ERRORS = Counter("memos_api_errors_total", "API responses with status >= 400", ["route", "status"])

ROUTES: dict[str, tuple[type[BaseModel], str]] = {
    "/add/message": (AddRequest, "Add conversation messages (202: accepted and durable)"),
    "/search/memory": (SearchRequest, "Search memories and preferences"),
    "/get/status": (StatusRequest, "Per-stage status of an ingest"),
    "/get/memory": (GetMemoryRequest, "A page of memories"),
    "/delete/memory": (DeleteMemoryRequest, "Soft-delete memories"),
    "/update/memory": (UpdateMemoryRequest, "Write a new version of a memory"),
    "/get/memory/history": (MemoryHistoryRequest, "Every version of a memory"),
    "/get/message": (GetMessageRequest, "The raw messages of a conversation"),
}

_ERROR = {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}},
}  # fmt: skip


def openapi_spec() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for path, (model, summary) in ROUTES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        err = {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        paths[path] = {"post": {
            "summary": summary, "security": [{"token": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {"200": {"description": "ok"}, "202": {"description": "accepted"}, "400": err,
                          "401": err, "404": err, "413": err, "422": err, "429": err},
        }}  # fmt: skip
    paths["/health"] = {"get": {"summary": "Liveness and readiness", "responses": {"200": {"description": "ready"},
                                                                                "503": {"description": "not ready"}}}}  # fmt: skip
    return {
        "openapi": "3.0.3",
        "info": {"title": "memos-pipeline", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
    }  # fmt: skip


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_spec())


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def instrument(app: Flask) -> None:
    @app.after_request
    def _observe(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        t0 = g.get("t0")
        if t0 is not None:
            REQUEST_SECONDS.labels(route, request.method, str(resp.status_code)).observe(time.perf_counter() - t0)
        if resp.status_code >= 400:
            ERRORS.labels(route, str(resp.status_code)).inc()
        return resp
