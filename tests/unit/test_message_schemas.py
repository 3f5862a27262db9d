"""The exported JSON Schemas (what non-Python producers code against) match the pydantic models."""

from __future__ import annotations

import json

import pytest

from memos_pipeline.producer import SCHEMA_DIR, celery_message, message_schemas

pytestmark = pytest.mark.unit


def test_exported_schemas_are_current() -> None:
    for task, schema in message_schemas().items():
        path = SCHEMA_DIR / f"{task}.json"
        assert path.exists(), f"{path} missing: run `python -m memos_pipeline.producer`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `python -m memos_pipeline.producer`"


def test_accept_schema_requires_tenant_key_and_request() -> None:
    schema = message_schemas()["memos.chunker.accept"]
    assert set(schema["required"]) == {"tenant", "idempotency_key", "request"}


def test_celery_protocol_2_message_shape() -> None:
    body, headers = celery_message("memos.chunker.accept", {"v": 1}, "tid")
    assert body[0] == [{"v": 1}] and body[1] == {}
    assert set(body[2]) == {"callbacks", "errbacks", "chain", "chord"}
    assert headers["task"] == "memos.chunker.accept" and headers["id"] == headers["root_id"] == "tid"
