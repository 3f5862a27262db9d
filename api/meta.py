"""GET /openapi.json (built from the same pydantic models that validate requests) and GET /metrics."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel

from memos_pipeline import __version__
from memos_pipeline.kb_schemas import (
    AddKnowledgebaseFileRequest,
    CreateKnowledgebaseRequest,
    DeleteKnowledgebaseFileRequest,
    DeleteKnowledgebaseRequest,
    GetKnowledgebaseFileRequest,
)
from memos_pipeline.product_schemas import (
    ProductAddRequest,
    ProductChatRequest,
    ProductDeleteRequest,
    ProductFeedbackRequest,
    ProductGetAllRequest,
    ProductGetMemoryRequest,
    ProductSearchRequest,
)
from memos_pipeline.profile_schemas import BindProfileTemplateRequest, DeleteProfileRequest, EditProfileRequest
from memos_pipeline.schemas import (
    AddRequest,
    ChatRequest,
    DeleteMemoryRequest,
    ExtractRequest,
    FeedbackRequest,
    GetMemoryRequest,
    GetMessageRequest,
    MemoryHistoryRequest,
    RerankRequest,
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
    "/chat": (ChatRequest, "Answer a query with the user's memories (whole, or server-sent events with stream)"),
    "/add/feedback": (FeedbackRequest, "Feedback on what is remembered (202: accepted and durable)"),
    "/extract/memory": (ExtractRequest, "Facts and preferences the LLM reads in messages; nothing stored"),
    "/rerank": (RerankRequest, "Score documents against a query with the configured reranker"),
    # Knowledge bases (api/knowledgebase.py); /add/knowledgebase-file also takes a multipart upload (below)
    "/create/knowledgebase": (CreateKnowledgebaseRequest, "Create a knowledge base"),
    "/delete/knowledgebase": (DeleteKnowledgebaseRequest, "Delete a knowledge base, its files and their passages"),
    "/add/knowledgebase-file": (
        AddKnowledgebaseFileRequest,
        "Add files (text, Markdown, HTML, PDF) to a knowledge base (202: accepted and durable)",
    ),
    "/get/knowledgebase-file": (GetKnowledgebaseFileRequest, "Knowledge-base files and their processing status"),
    "/delete/knowledgebase-file": (DeleteKnowledgebaseFileRequest, "Delete knowledge-base files and their passages"),
    # User profiles (api/profile.py); a search answers the user's profile in profile_detail_list
    "/edit/profile": (EditProfileRequest, "Set or remove slots of a user's (or agent's) profile, each a new version"),
    "/delete/profile": (DeleteProfileRequest, "Delete a user's (or agent's) profile and its binding"),
    "/bind/profile_template": (
        BindProfileTemplateRequest,
        "Bind profile templates (defined by their slots) to users or agents",
    ),
    # MemOS's open-source server routes (api/product.py): their field names, their answer shape
    "/product/add": (ProductAddRequest, "MemOS server: add memories (202: accepted and durable)"),
    "/product/search": (ProductSearchRequest, "MemOS server: search memories, per readable cube"),
    "/product/get_memory": (ProductGetMemoryRequest, "MemOS server: a cube's memories (a page, or all)"),
    "/product/get_all": (ProductGetAllRequest, "MemOS server: a user's memories, or those relevant to a query"),
    "/product/delete_memory": (ProductDeleteRequest, "MemOS server: soft-delete memories"),
    "/product/feedback": (ProductFeedbackRequest, "MemOS server: feedback (202: accepted and durable)"),
    "/product/chat/complete": (ProductChatRequest, "MemOS server: a whole chat answer with memories"),
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
# MemOS's server answers with its BaseResponse: code 200 (api/product.py); task_id and detail are ours.
_SERVER_ENVELOPE = {
    "type": "object",
    "required": ["code", "message", "data"],
    "properties": {
        "code": {"type": "integer", "const": 200},
        "message": {"type": "string"},
        "data": {},
        "task_id": {"type": "string"},
        "detail": {"type": "object"},
    },
}
# Statuses every POST route may answer, besides its success: see api/errors.py for when each is used.
_ERROR_STATUSES = ("400", "401", "404", "413", "422", "429")
# A request line over gunicorn's limit (4094 bytes: a long query string or path) is answered by gunicorn itself,
# before the app sees it, with an HTML page; only the routes that take query or path parameters can run into it.
_URI_TOO_LONG = {
    "description": "URI too long: the request line is over gunicorn's 4094 bytes (answered by gunicorn, in HTML)",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
# The search waits on the search (and reranker) workers: 502 when a worker failed, 504 when none answered in time.
# The model calls: 503 when no LLM (or reranker) is configured, or it is unavailable for now (with Retry-After);
# 502 when it failed or answered unusably. A chat searches first (502/504 as a search).
_SEARCH = ("502", "504")
_MODEL = ("502", "503")
_EXTRA_STATUSES = {
    "/search/memory": _SEARCH,
    "/chat": ("502", "503", "504"),
    "/add/feedback": ("503",),
    "/extract/memory": _MODEL,
    "/rerank": _MODEL,
    "/product/search": _SEARCH,
    "/product/get_all": _SEARCH,  # with a search_query it searches
    "/product/feedback": ("503",),
    "/product/chat/complete": ("502", "503", "504"),
}
# Accepted for later processing (durable): 202, besides 200 (a sync add waits and answers 200).
_ACCEPTED = {"/add/message", "/add/feedback", "/product/add", "/product/feedback", "/add/knowledgebase-file"}
# /add/knowledgebase-file as a multipart upload: ``file`` parts, the base in the query string or a form field.
_KB_UPLOAD = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "knowledgebase_id": {"type": "string", "minLength": 1},
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
    },
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def openapi_spec() -> dict[str, Any]:
    """OpenAPI 3.1: its schema dialect is JSON Schema 2020-12, which is what pydantic generates."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR, "Envelope": _ENVELOPE, "ServerEnvelope": _SERVER_ENVELOPE}
    err = _json("#/components/schemas/Error", "error")
    for path, (model, summary) in ROUTES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        envelope = "#/components/schemas/" + ("ServerEnvelope" if path.startswith("/product/") else "Envelope")
        responses = {
            "200": _json(envelope, "ok"),
            **dict.fromkeys((*_ERROR_STATUSES, *_EXTRA_STATUSES.get(path, ())), err),
        }
        if path in _ACCEPTED:
            responses["202"] = _json(envelope, "accepted: durable and queued")
        if path == "/chat":  # stream: true answers server-sent events
            responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
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
    upload = paths["/add/knowledgebase-file"]["post"]
    upload["requestBody"]["content"]["multipart/form-data"] = {"schema": _KB_UPLOAD}
    upload["parameters"] = [
        {"name": "knowledgebase_id", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1}}
    ]
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
    errors = {**dict.fromkeys(("400", "401", "413", "422", "429"), err), "414": _URI_TOO_LONG}
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
    # /scheduler/status may ask about one task (newer MemOS clients): 404 when the key's tenant has no such task.
    task = {"name": "task_id", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1}}
    status_body = {**with_body, "parameters": [*query, task], "responses": {"200": envelope, **errors, "404": err}}
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
                "responses": {"200": envelope, "401": err, "404": err, "414": _URI_TOO_LONG, "429": err},
            }
        },
        "/scheduler/status": {
            "get": {
                "summary": "Ingests in flight (of a user, or of the tenant)",
                "security": [{"token": []}],
                "parameters": [query[0], task],
                "responses": {"200": envelope, "401": err, "404": err, "414": _URI_TOO_LONG, "422": err, "429": err},
            },
            "post": {"summary": "Ingests in flight (of a user, or of the tenant)", **status_body},
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
