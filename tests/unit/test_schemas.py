"""Request and task-payload models: validation, cloud aliases, limits passed through the validation context."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from memos_pipeline.schemas import AddRequest, IndexJob, SearchRequest, StatusRequest

pytestmark = pytest.mark.unit


def add_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "u1",
        "conversation_id": "c1",
        "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
    }
    body.update(overrides)
    return body


def locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [e["loc"] for e in exc.value.errors()]


def test_add_minimal_and_defaults() -> None:
    req = AddRequest.model_validate({"user_id": "u", "messages": [{"role": "user", "content": "x"}]})
    assert req.conversation_id == "default"
    assert req.async_mode is None
    assert req.tags == []
    assert req.info == {}
    assert req.messages[0].id is None


def test_add_strips_whitespace_and_ignores_unknown_top_level_fields() -> None:
    req = AddRequest.model_validate(add_body(user_id="  u1  ", unknown_field=1))
    assert req.user_id == "u1"


@pytest.mark.parametrize(
    ("value", "expected"), [(True, "async"), (False, "sync"), ("async", "async"), ("sync", "sync"), (None, None)]
)
def test_async_mode_accepts_cloud_boolean(value: Any, expected: str | None) -> None:
    assert AddRequest.model_validate(add_body(async_mode=value)).async_mode == expected


@pytest.mark.parametrize("value", ["fast", "", 1, "SYNC"])
def test_async_mode_rejects_other_values(value: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        AddRequest.model_validate(add_body(async_mode=value))
    assert locs(exc) == [("async_mode",)]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, ("user_id",)),
        (add_body(user_id=""), ("user_id",)),
        (add_body(user_id="u" * 257), ("user_id",)),
        (add_body(messages="hello"), ("messages",)),
        (add_body(messages=[]), ("messages",)),
        (add_body(messages=[{"role": "user", "content": ""}]), ("messages", 0, "content")),
        (add_body(messages=[{"role": "user", "content": "   "}]), ("messages", 0, "content")),
        (add_body(messages=[{"role": "robot", "content": "x"}]), ("messages", 0, "role")),
        (add_body(messages=[{"role": "user"}]), ("messages", 0, "content")),
        (add_body(messages=[{"role": "user", "content": "x", "extra": 1}]), ("messages", 0, "extra")),
        (add_body(messages=[{"role": "user", "content": 5}]), ("messages", 0, "content")),
        (add_body(tags=[f"t{i}" for i in range(51)]), ("tags",)),
        (add_body(info=[1, 2]), ("info",)),
    ],
)
def test_add_invalid(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        AddRequest.model_validate(body)
    assert loc in locs(exc)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f"])
@pytest.mark.parametrize("field", ["user_id", "conversation_id", "agent_id", "app_id"])
def test_control_characters_in_ids_rejected(field: str, char: str) -> None:
    with pytest.raises(ValidationError, match="must not contain control characters") as exc:
        AddRequest.model_validate(add_body(**{field: f"a{char}b"}))
    assert locs(exc) == [(field,)]


@pytest.mark.parametrize("char", ["\x00", "\x08", "\x7f"])
def test_control_characters_in_content_rejected(char: str) -> None:
    with pytest.raises(ValidationError, match="must not contain control characters") as exc:
        AddRequest.model_validate(add_body(messages=[{"role": "user", "content": f"hi{char}there"}]))
    assert locs(exc) == [("messages", 0, "content")]


def test_tab_and_newlines_allowed_in_content() -> None:
    req = AddRequest.model_validate(add_body(messages=[{"role": "user", "content": "a\tb\nc\r\nd"}]))
    assert req.messages[0].content == "a\tb\nc\r\nd"


@pytest.mark.parametrize("field", ["id", "name", "chat_time"])
def test_nul_in_message_metadata_rejected(field: str) -> None:
    """A NUL can never be stored in a Postgres text column: it must be a validation error naming the field,
    not a database error later."""
    msg = {"role": "user", "content": "hi", field: "a\x00b"}
    with pytest.raises(ValidationError) as exc:
        AddRequest.model_validate(add_body(messages=[msg]))
    assert ("messages", 0, field) in locs(exc)


def test_duplicate_client_message_ids_rejected() -> None:
    msgs = [{"role": "user", "content": "a", "id": "m1"}, {"role": "assistant", "content": "b", "id": "m1"}]
    with pytest.raises(ValidationError, match="message ids must be unique") as exc:
        AddRequest.model_validate(add_body(messages=msgs))
    assert locs(exc) == [("messages",)]


def test_messages_without_ids_are_not_duplicates() -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b", "id": "x"},
    ]
    assert len(AddRequest.model_validate(add_body(messages=msgs)).messages) == 3


def test_limits_come_from_context() -> None:
    many = add_body(messages=[{"role": "user", "content": "x"}] * 6)
    assert len(AddRequest.model_validate(many).messages) == 6  # no context: no limit
    assert len(AddRequest.model_validate(many, context={"max_messages": 6}).messages) == 6
    with pytest.raises(ValidationError, match="6 messages in one add, the limit is 5") as exc:
        AddRequest.model_validate(many, context={"max_messages": 5})
    assert locs(exc) == [("messages",)]

    long = add_body(messages=[{"role": "user", "content": "y" * 11}])
    assert AddRequest.model_validate(long, context={"max_content_chars": 11}).messages[0].content == "y" * 11
    with pytest.raises(ValidationError, match="content is 11 characters, the limit is 10") as exc:
        AddRequest.model_validate(long, context={"max_content_chars": 10})
    assert locs(exc) == [("messages", 0, "content")]


# ---------------------------------------------------------------- search


def test_search_defaults() -> None:
    req = SearchRequest.model_validate({"user_id": "u", "query": "q"})
    assert (req.top_k, req.pref_top_k, req.include_preference, req.mode) == (10, 6, True, None)
    assert req.filters.conversation_id is None


def test_search_cloud_aliases() -> None:
    req = SearchRequest.model_validate(
        {
            "user_id": "u",
            "query": "q",
            "memory_limit_number": 3,
            "preference_limit_number": 2,
            "include_preference": False,
        }
    )
    assert (req.top_k, req.pref_top_k, req.include_preference) == (3, 2, False)


def test_search_native_names_win_over_aliases() -> None:
    req = SearchRequest.model_validate(
        {
            "user_id": "u",
            "query": "q",
            "top_k": 7,
            "memory_limit_number": 3,
            "pref_top_k": 1,
            "preference_limit_number": 4,
        }
    )
    assert (req.top_k, req.pref_top_k) == (7, 1)


def test_search_alias_is_validated_like_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        SearchRequest.model_validate({"user_id": "u", "query": "q", "memory_limit_number": 0})
    assert locs(exc) == [("top_k",)]
    with pytest.raises(ValidationError) as exc:
        SearchRequest.model_validate({"user_id": "u", "query": "q", "preference_limit_number": 51})
    assert locs(exc) == [("pref_top_k",)]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"query": "q"}, ("user_id",)),
        ({"user_id": "u"}, ("query",)),
        ({"user_id": "u", "query": "  "}, ("query",)),
        ({"user_id": "u", "query": "q" * 4001}, ("query",)),
        ({"user_id": "u", "query": "a\x00b"}, ("query",)),
        ({"user_id": "u", "query": "q", "top_k": 101}, ("top_k",)),
        ({"user_id": "u", "query": "q", "mode": "slow"}, ("mode",)),
        ({"user_id": "u", "query": "q", "filters": {"kind": "pref"}}, ("filters", "kind")),
        ({"user_id": "u", "query": "q", "filters": {"colour": "red"}}, ("filters", "colour")),
    ],
)
def test_search_invalid(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        SearchRequest.model_validate(body)
    assert loc in locs(exc)


# ---------------------------------------------------------------- status and task payloads


def test_status_needs_one_id() -> None:
    with pytest.raises(ValidationError, match="give task_id or ingest_id"):
        StatusRequest.model_validate({})
    assert StatusRequest.model_validate({"task_id": "t"}).task_id == "t"
    iid = uuid.uuid4()
    assert StatusRequest.model_validate({"ingest_id": str(iid)}).ingest_id == iid
    with pytest.raises(ValidationError):
        StatusRequest.model_validate({"ingest_id": "not-a-uuid"})


def test_index_job_payload_is_strict() -> None:
    iid = uuid.uuid4()
    job = IndexJob.model_validate({"v": 1, "memory_ids": [str(iid)]})
    assert (job.memory_ids, job.ingest_id) == ([iid], None)
    for bad in (
        {"v": 1, "ingest_id": "not-a-uuid"},
        {"v": 2, "ingest_id": str(iid)},
        {"v": 1, "ingest_id": str(iid), "extra": True},
        {"v": 1, "memory_ids": ["x"]},
    ):
        with pytest.raises(ValidationError):
            IndexJob.model_validate(bad)
