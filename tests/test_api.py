"""The HTTP API through Flask's test client of the real app: envelope, auth, validation, status, aliases.

Adds here are accepted and published to this session's queues; no worker is needed to check what the API answers.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, Message, OutboxItem

pytestmark = pytest.mark.integration

ADD = "/add/message"


def add_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "u1",
        "conversation_id": "c1",
        "messages": [{"role": "user", "content": "I like tea"}, {"role": "assistant", "content": "Noted"}],
    }
    body.update(overrides)
    return body


def assert_error(resp: Any, status: int, code: int, names: str) -> dict[str, Any]:
    """An error envelope: the status, the stable code, and a message that names the field."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"].startswith(names) or names in body["message"], body["message"]
    return body


def row_counts(settings: Settings, tenant_id: uuid.UUID) -> tuple[int, int, int]:
    """(ingests, messages, outbox rows) of one tenant."""
    with session_scope(settings) as s:
        ingests = s.execute(select(func.count()).select_from(Ingest).where(Ingest.tenant_id == tenant_id))
        messages = s.execute(select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id))
        outbox = s.execute(
            select(func.count())
            .select_from(OutboxItem)
            .join(Ingest, Ingest.id == OutboxItem.ingest_id)
            .where(Ingest.tenant_id == tenant_id)
        )
        return ingests.scalar_one(), messages.scalar_one(), outbox.scalar_one()


# ---------------------------------------------------------------- envelope and auth


def test_add_success_envelope(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = client.post(ADD, json=add_body(), headers=auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"code", "message", "data"}
    assert (body["code"], body["message"]) == (0, "ok")
    data = body["data"]
    assert data["status"] == "accepted"
    assert data["published"] is True
    uuid.UUID(data["ingest_id"])
    assert data["task_id"]


def test_request_id_is_echoed_and_becomes_the_trace_id(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    rid = f"req-{uuid.uuid4().hex}"
    resp = client.post(ADD, json=add_body(), headers={**auth, "X-Request-ID": rid})
    assert resp.status_code == 202
    assert resp.headers["X-Request-ID"] == rid
    with session_scope(settings) as s:
        ingest = s.get(Ingest, uuid.UUID(resp.get_json()["data"]["ingest_id"]))
        assert ingest is not None
        assert ingest.trace_id == rid


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authorization"),
        ({"Authorization": ""}, "Authorization"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization"),
        ({"Authorization": "Token"}, "Authorization"),
        ({"Authorization": "Token mp_not-a-real-key"}, "Authorization"),
    ],
)
def test_auth_rejections(client: FlaskClient, headers: dict[str, str], message: str) -> None:
    for path in (ADD, "/search/memory", "/get/status"):
        resp = client.post(path, json=add_body(), headers=headers)
        body = assert_error(resp, 401, 40101, message)
        assert "data" not in body or body["data"] is None


def test_unknown_key_message(client: FlaskClient) -> None:
    resp = client.post(ADD, json=add_body(), headers={"Authorization": "Token mp_unknown"})
    assert "unknown or revoked key" in assert_error(resp, 401, 40101, "Authorization")["message"]


def test_bearer_scheme_is_accepted(client: FlaskClient, tenant: tuple[uuid.UUID, str]) -> None:
    resp = client.post(ADD, json=add_body(), headers={"Authorization": f"Bearer {tenant[1]}"})
    assert resp.status_code == 202


def test_method_not_allowed_uses_envelope(client: FlaskClient, auth: dict[str, str]) -> None:
    assert_error(client.get(ADD, headers=auth), 405, 40501, "")
    assert_error(client.post("/no/such/path", json={}, headers=auth), 404, 40401, "")


# ---------------------------------------------------------------- validation


def _nested(depth: int) -> bytes:
    return (
        '{"user_id":"u1","messages":[{"role":"user","content":"x"}],"info":{"a":' + "[" * depth + "]" * depth + "}}"
    ).encode()


REJECTED: list[tuple[str, dict[str, Any], int, int, str]] = [
    # (id, request kwargs, status, code, field named in the message)
    ("missing-user-id", {"json": {"messages": [{"role": "user", "content": "x"}]}}, 422, 42201, "user_id"),
    ("messages-not-list", {"json": add_body(messages="hello")}, 422, 42201, "messages"),
    (
        "empty-content",
        {"json": add_body(messages=[{"role": "user", "content": ""}])},
        422,
        42201,
        "messages[0].content",
    ),
    (
        "blank-content-2nd",
        {"json": add_body(messages=[{"role": "user", "content": "ok"}, {"role": "user", "content": "  "}])},
        422,
        42201,
        "messages[1].content",
    ),
    ("bad-role", {"json": add_body(messages=[{"role": "bot", "content": "x"}])}, 422, 42201, "messages[0].role"),
    ("control-char", {"json": add_body(user_id="a\x01b")}, 422, 42201, "user_id"),
    (
        "duplicate-ids",
        {
            "json": add_body(
                messages=[{"role": "user", "content": "a", "id": "1"}, {"role": "user", "content": "b", "id": "1"}]
            )
        },
        422,
        42201,
        "messages",
    ),
    (
        "too-many-messages",
        {"json": add_body(messages=[{"role": "user", "content": "x"}] * 501)},
        422,
        42201,
        "messages",
    ),
    (
        "content-too-long",
        {"json": add_body(messages=[{"role": "user", "content": "x" * 20_001}])},
        422,
        42201,
        "messages[0].content",
    ),
    ("not-json", {"data": b"{not json", "content_type": "application/json"}, 400, 40001, "body"),
    ("empty-body", {"data": b"", "content_type": "application/json"}, 400, 40001, "body"),
    ("invalid-utf8", {"data": b'{"user_id": "\xff\xfe"}', "content_type": "application/json"}, 400, 40001, "body"),
    ("json-array", {"data": b"[1, 2]", "content_type": "application/json"}, 400, 40002, "body"),
    ("deeply-nested", {"data": _nested(100_000), "content_type": "application/json"}, 400, 40001, "body"),
    (
        "too-large",
        {"data": b'{"user_id": "' + b"x" * (10 * 1024 * 1024) + b'"}', "content_type": "application/json"},
        413,
        41301,
        "body",
    ),
]


@pytest.mark.parametrize(("kwargs", "status", "code", "field"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_add_rejected_names_the_field_and_writes_nothing(
    client: FlaskClient,
    auth: dict[str, str],
    tenant: tuple[uuid.UUID, str],
    settings: Settings,
    kwargs: dict[str, Any],
    status: int,
    code: int,
    field: str,
) -> None:
    before = row_counts(settings, tenant[0])
    resp = client.post(ADD, headers=auth, **kwargs)
    body = assert_error(resp, status, code, field)
    assert body["message"].split(":", 1)[0] == field, body["message"]
    assert row_counts(settings, tenant[0]) == before


def test_validation_error_lists_every_field(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = client.post(ADD, json={"messages": [{"role": "x", "content": ""}]}, headers=auth)
    body = assert_error(resp, 422, 42201, "user_id")
    fields = {e["field"] for e in body["data"]["errors"]}
    assert {"user_id", "messages[0].role", "messages[0].content"} <= fields
    assert "more)" in body["message"]


def test_moderately_nested_info_is_accepted(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = client.post(ADD, data=_nested(50), content_type="application/json", headers=auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)


@pytest.mark.parametrize(
    "body",
    [
        add_body(messages=[{"role": "user", "content": "hi", "name": "a\x00b"}]),
        add_body(messages=[{"role": "user", "content": "hi", "id": "a\x00b"}]),
        add_body(messages=[{"role": "user", "content": "hi", "chat_time": "2024\x00"}]),
        add_body(tags=["a\x00"]),
        add_body(info={"k": "a\x00"}),
        add_body(source="a\x00"),
    ],
    ids=["name", "id", "chat_time", "tags", "info", "source"],
)
def test_nul_anywhere_is_a_422_not_a_500(
    client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], settings: Settings, body: dict[str, Any]
) -> None:
    """Postgres cannot store NUL in text or jsonb; the API must reject it as bad input naming the field."""
    before = row_counts(settings, tenant[0])
    resp = client.post(ADD, json=body, headers=auth)
    # Whatever the status, the failed add leaves nothing half-written (one transaction).
    assert row_counts(settings, tenant[0]) == before
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.get_json()["code"] == 42201


def test_failure_in_second_message_rolls_back_the_ingest(
    client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], settings: Settings
) -> None:
    """The ingest row is inserted before the messages; a message the database refuses must take it back out."""
    before = row_counts(settings, tenant[0])
    msgs = [{"role": "user", "content": "fine"}, {"role": "user", "content": "fine", "name": "bad\x00name"}]
    resp = client.post(ADD, json=add_body(messages=msgs), headers=auth)
    assert resp.status_code >= 400
    assert row_counts(settings, tenant[0]) == before


def test_accepted_add_writes_ingest_messages_and_outbox_together(
    client: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], settings: Settings
) -> None:
    before = row_counts(settings, tenant[0])
    assert client.post(ADD, json=add_body(), headers=auth).status_code == 202
    assert row_counts(settings, tenant[0]) == (before[0] + 1, before[1] + 2, before[2] + 1)


def test_search_validation(client: FlaskClient, auth: dict[str, str]) -> None:
    assert_error(client.post("/search/memory", json={"user_id": "u"}, headers=auth), 422, 42201, "query")
    resp = client.post("/search/memory", json={"user_id": "u", "query": "q", "memory_limit_number": 0}, headers=auth)
    assert_error(resp, 422, 42201, "top_k")
    resp = client.post("/search/memory", json={"user_id": "u", "query": "q", "filters": {"kind": "x"}}, headers=auth)
    assert_error(resp, 422, 42201, "filters.kind")


# ---------------------------------------------------------------- health, status, aliases


def test_health_ready_with_checks(client: FlaskClient) -> None:
    resp = client.get("/health")  # public: no Authorization needed
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert (body["code"], body["message"]) == (0, "ok")
    data = body["data"]
    assert data["live"] is True
    assert data["ready"] is True
    assert set(data["checks"]) == {"database", "redis", "broker"}
    for name, check in data["checks"].items():
        assert check["ok"] is True, (name, check)
        assert check["ms"] >= 0


def test_status_of_unknown_task_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = client.post("/get/status", json={"task_id": str(uuid.uuid4())}, headers=auth)
    assert_error(resp, 404, 40401, "task_id")
    resp = client.post("/get/status", json={"ingest_id": str(uuid.uuid4())}, headers=auth)
    assert_error(resp, 404, 40401, "ingest_id")
    assert_error(client.post("/get/status", json={}, headers=auth), 422, 42201, "body")
    assert_error(client.post("/get/status", json={"ingest_id": "nope"}, headers=auth), 422, 42201, "ingest_id")


def test_status_of_own_add(client: FlaskClient, auth: dict[str, str]) -> None:
    data = client.post(ADD, json=add_body(), headers=auth).get_json()["data"]
    for key in ("task_id", "ingest_id"):
        resp = client.post("/get/status", json={key: data[key]}, headers=auth)
        assert resp.status_code == 200
        status = resp.get_json()["data"]
        assert (status["task_id"], status["ingest_id"]) == (data["task_id"], data["ingest_id"])
        assert (status["user_id"], status["conversation_id"], status["message_count"]) == ("u1", "c1", 2)
        assert set(status["stages"]) >= {"chunker", "indexer", "memreader", "preference"}


def test_tenant_cannot_read_another_tenants_status(client: FlaskClient, settings: Settings) -> None:
    with session_scope(settings) as s:
        _, key_a = tenants.create_api_key(s, f"tenant-a-{uuid.uuid4().hex[:8]}")
        _, key_b = tenants.create_api_key(s, f"tenant-b-{uuid.uuid4().hex[:8]}")
    auth_a, auth_b = {"Authorization": f"Token {key_a}"}, {"Authorization": f"Token {key_b}"}
    data = client.post(ADD, json=add_body(), headers=auth_a).get_json()["data"]
    assert client.post("/get/status", json={"task_id": data["task_id"]}, headers=auth_a).status_code == 200
    for key in ("task_id", "ingest_id"):
        resp = client.post("/get/status", json={key: data[key]}, headers=auth_b)
        body = assert_error(resp, 404, 40401, key)
        assert "u1" not in json.dumps(body)


def test_product_aliases(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = client.post("/product/add/message", json=add_body(), headers=auth)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    task_id = resp.get_json()["data"]["task_id"]
    resp = client.post("/product/get/status", json={"task_id": task_id}, headers=auth)
    assert resp.status_code == 200
    assert resp.get_json()["data"]["task_id"] == task_id


@pytest.mark.integration
def test_rate_limit_per_key_429_with_retry_after(settings: Settings, tenant: tuple[uuid.UUID, str]) -> None:
    """Beyond MEMOS_RATE_LIMIT_PER_MIN requests in a minute a key gets 429 with Retry-After; other keys do not."""
    import time

    from api import create_app

    if time.time() % 60 > 50:  # stay inside one one-minute window
        time.sleep(61 - time.time() % 60)
    limited = create_app(settings.with_overrides(rate_limit_per_min=3)).test_client()
    headers = {"Authorization": f"Token {tenant[1]}"}
    codes = [limited.post("/get/status", json={"task_id": "nope"}, headers=headers).status_code for _ in range(3)]
    assert codes == [404, 404, 404]
    blocked = limited.post("/get/status", json={"task_id": "nope"}, headers=headers)
    assert blocked.status_code == 429
    assert blocked.get_json()["code"] == 42901 and "rate limit" in blocked.get_json()["message"]
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    with session_scope(settings) as s:
        _, other = tenants.create_api_key(s, f"tenant-rl-{uuid.uuid4().hex[:8]}")
    assert (
        limited.post("/get/status", json={"task_id": "nope"}, headers={"Authorization": f"Token {other}"}).status_code
        == 404
    )
