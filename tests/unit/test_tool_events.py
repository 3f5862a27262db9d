"""Tool events from messages (memos_pipeline/text/tools.py) and the message model's tool fields: pure."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from memos_pipeline.schemas import AddRequest
from memos_pipeline.text.tools import succeeded, tool_events

pytestmark = pytest.mark.unit

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_a_call_joined_to_its_answer_by_id() -> None:
    msgs = [
        {"role": "user", "content": "weather in Paris?", "id": "m1"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "id": "m2", "chat_time": "2025-01-01T10:00:00"},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}', "id": "m3"},
    ]
    [e] = tool_events(msgs)
    assert (e.tool_name, e.tool_input, e.tool_result, e.success) == (
        "get_weather",
        '{"city": "Paris"}',
        '{"temp_c": 21}',
        True,
    )
    assert e.sources == ("m2", "m3") and e.time == "2025-01-01T10:00:00" and e.tool_call_id == "c1"
    assert e.text() == 'tool get_weather({"city": "Paris"}) succeeded: {"temp_c": 21}'


def test_calls_without_ids_are_answered_in_order_and_failures_read_as_failures() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "a", "arguments": {"x": 1}}},
                {"function": {"name": "b", "arguments": None}},
            ],
        },
        {"role": "tool", "content": "Error: no seats left"},
        {"role": "tool", "content": "ok"},
    ]
    events = tool_events(msgs)
    assert [(e.tool_name, e.tool_input, e.success) for e in events] == [("a", '{"x": 1}', False), ("b", "", True)]
    assert [e.sources for e in events] == [("0", "1"), ("0", "2")]


def test_an_unanswered_call_and_an_answer_without_its_call() -> None:
    events = tool_events(
        [
            {"role": "assistant", "content": "x", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "zz", "name": "search", "content": "3 results"},
        ]
    )
    assert [(e.tool_name, e.success) for e in events] == [("get_weather", None), ("search", True)]
    assert events[0].text().endswith("no result")


@pytest.mark.parametrize(
    ("result", "ok"),
    [
        ("fine", True),
        ("ERROR: boom", False),
        ('{"error": "x"}', False),
        ('{"success": false}', False),
        ('{"status": "error"}', False),
        ('{"error": null, "v": 1}', True),
        ("Traceback (most recent call last)", False),
    ],
)
def test_success_is_read_from_the_result(result: str, ok: bool) -> None:
    assert succeeded(result) is ok


def test_messages_take_tool_calls_and_a_call_only_message_shows_its_calls() -> None:
    req = AddRequest.model_validate(
        {
            "user_id": "u",
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": "21C"},
            ],
        }
    )
    assert req.messages[0].content == 'calls get_weather({"city": "Paris"})'
    assert req.messages[1].tool_call_id == "c1"
    with pytest.raises(ValidationError, match="function"):
        AddRequest.model_validate(
            {"user_id": "u", "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]}]}
        )
    with pytest.raises(ValidationError, match="content"):
        AddRequest.model_validate({"user_id": "u", "messages": [{"role": "assistant", "content": None}]})


def test_the_tool_scope_of_a_long_user_id_fits_its_column() -> None:
    from memos_pipeline.storage.tools import scope

    assert scope("u1") == "tool:u1"
    long = scope("x" * 256)
    assert len(long) <= 256 and long == scope("x" * 256) != scope("x" * 255 + "y")
