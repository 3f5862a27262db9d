"""Helpers every blueprint uses: the request's validated body, the settings, the Celery app."""

from __future__ import annotations

from typing import Any, TypeVar

from celery import Celery
from flask import current_app, request
from pydantic import BaseModel, ValidationError

from api.errors import parse_json_body, validation_error
from memos_pipeline.config import Settings

M = TypeVar("M", bound=BaseModel)


def settings() -> Settings:
    return current_app.extensions["memos_settings"]  # type: ignore[no-any-return]


def celery() -> Celery:
    return current_app.extensions["memos_celery"]  # type: ignore[no-any-return]


def body(model: type[M], context: dict[str, Any] | None = None) -> M:
    data = parse_json_body(request.get_data(cache=False))
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None
