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
    SchedulerRequest,
    SearchRequest,
    StatusRequest,
    UpdateMemoryRequest,
)

bp = Blueprint("meta", __name__)

REQUEST_SECONDS = Histogram(
    "memos_api_request_seconds",
    "API request latency by route",
    ["route", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
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
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}},
}
_ENVELOPE = {
    "type": "object",
    "required": ["code", "message", "data"],
    "properties": {"code": {"type": "integer", "const": 0}, "message": {"type": "string"}, "data": {}},
}
# Statuses every POST route may answer, besides its success: see api/errors.py for when each is used.
_ERROR_STATUSES = ("400", "401", "404", "413", "422", "429")
# The search waits on the search (and reranker) workers: 502 when a worker failed, 504 when none answered in time.
_EXTRA_STATUSES = {"/search/memory": ("502", "504")}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def openapi_spec() -> dict[str, Any]:
    """OpenAPI 3.1: its schema dialect is JSON Schema 2020-12, which is what pydantic generates."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR, "Envelope": _ENVELOPE}
    err = _json("#/components/schemas/Error", "error")
    for path, (model, summary) in ROUTES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        responses = {
            "200": _json("#/components/schemas/Envelope", "ok"),
            **dict.fromkeys((*_ERROR_STATUSES, *_EXTRA_STATUSES.get(path, ())), err),
        }
        if path == "/add/message":
            responses["202"] = _json("#/components/schemas/Envelope", "accepted: durable and queued")
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"token": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                },
                "responses": responses,
            }
        }
    paths.update(_extra_paths(schemas, err))
    paths["/health"] = {
        "get": {
            "summary": "Liveness and readiness",
            "responses": {"200": _json("#/components/schemas/Envelope", "ready"), "503": err},
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "the OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "memos-pipeline", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "Token <key>"}
            },
        },
    }


def _extra_paths(schemas: dict[str, Any], err: dict[str, Any]) -> dict[str, Any]:
    """The routes that are not a POST of a JSON body: get-by-id, and MemOS's scheduler routes (query string, or
    an optional JSON body)."""
    envelope = _json("#/components/schemas/Envelope", "ok")
    errors = dict.fromkeys(("400", "401", "413", "422", "429"), err)
    schema = SchedulerRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[SchedulerRequest.__name__] = schema
    query = [
        {"name": "user_name", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1}},
        {"name": "timeout_seconds", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0}},
        {"name": "poll_interval", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0.01}},
    ]
    with_body = {
        "security": [{"token": []}],
        "parameters": query,
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SchedulerRequest"}}},
        },
        "responses": {"200": envelope, **errors},
    }
    return {
        "/get/memory/{memory_id}": {
            "get": {
                "summary": "One memory (or preference) by id, in the key's tenant",
                "security": [{"token": []}],
                "parameters": [
                    {
                        "name": "memory_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {"200": envelope, "401": err, "404": err, "429": err},
            }
        },
        "/scheduler/status": {
            "get": {
                "summary": "Ingests in flight (of a user, or of the tenant)",
                "security": [{"token": []}],
                "parameters": query[:1],
                "responses": {"200": envelope, "401": err, "422": err, "429": err},
            },
            "post": {"summary": "Ingests in flight (of a user, or of the tenant)", **with_body},
        },
        "/scheduler/wait": {
            "post": {"summary": "Block until a user's (or the tenant's) ingests are done, or a timeout", **with_body}
        },
    }


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
