"""The error half of the envelope: every failure is JSON ``{code, message}`` with a 4xx/5xx status."""

from __future__ import annotations

import json
import math
from typing import Any

import psycopg
import sqlalchemy.exc
from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

# Stable error codes clients can switch on (the HTTP status says the class, the code says which).
INVALID_JSON = 40001
INVALID_BODY = 40002
UNAUTHORIZED = 40101
NOT_FOUND = 40401
METHOD_NOT_ALLOWED = 40501
TOO_LARGE = 41301
RATE_LIMITED = 42901
VALIDATION = 42201
UNAVAILABLE = 50301
TIMEOUT = 50401
INTERNAL = 50001
SEARCH_FAILED = 50201


class ApiError(Exception):
    def __init__(
        self, status: int, code: int, message: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data
        self.headers = headers or {}


def error_response(status: int, code: int, message: str, data: Any = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return jsonify(body), status


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_error(exc: ValidationError) -> ApiError:
    # A validator that checks a whole structure (the MemOS filter) puts the part at fault in ctx["path"].
    errors = [
        {"field": _loc((*e["loc"], *e.get("ctx", {}).get("path", ()))), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, VALIDATION, f"{first['field']}: {first['message']}{more}", {"errors": errors})


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return value


def _lone_surrogate(value: Any) -> bool:
    """Whether a \\u escape left half a surrogate pair somewhere (Python decodes it; no UTF-8 encoder takes it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Strict body parsing: valid UTF-8, valid JSON (RFC 8259: no NaN/Infinity, numbers a double can hold, no
    lone surrogates), an object; each failure says which. What Python's json module would let through otherwise
    could not be stored: Postgres rejects NaN in jsonb and psycopg cannot encode a lone surrogate (a 500)."""
    if not raw:
        raise ApiError(400, INVALID_JSON, "body: request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, INVALID_JSON, f"body: not valid UTF-8 at byte {exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, INVALID_JSON, f"body: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, INVALID_JSON, "body: JSON nested too deeply") from None
    except ValueError as exc:  # _no_constant, _finite
        raise ApiError(400, INVALID_JSON, f"body: not valid JSON: {exc}") from None
    # Surrogates can only come from \\u escapes (the UTF-8 decoder above rejects encoded ones): skip the walk
    # for the common body without any.
    if "\\u" in text and _lone_surrogate(data):
        raise ApiError(400, INVALID_JSON, "body: not valid JSON text: a \\u escape encodes a lone surrogate")
    if not isinstance(data, dict):
        raise ApiError(400, INVALID_BODY, f"body: expected a JSON object, got {type(data).__name__}")
    return data


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        resp, status = error_response(exc.status, exc.code, exc.message, exc.data)
        resp.headers.update(exc.headers)
        return resp, status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> tuple[Response, int]:
        err = validation_error(exc)
        return error_response(err.status, err.code, err.message, err.data)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: TOO_LARGE}.get(status, status * 100 + 1)
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"body: request body too large (limit {limit} bytes)"
        return error_response(status, code, message)

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    @app.errorhandler(psycopg.OperationalError)
    def _database_down(exc: Exception) -> tuple[Response, int]:
        # Postgres restarting or unreachable: nothing was accepted, and the client should simply retry.
        app.logger.warning("database unavailable: %s", type(exc).__name__)
        resp, status = error_response(503, UNAVAILABLE, "database unavailable; the request was not applied, retry")
        resp.headers["Retry-After"] = "1"
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return error_response(500, INTERNAL, "internal error; the request id in X-Request-ID helps us find it")
