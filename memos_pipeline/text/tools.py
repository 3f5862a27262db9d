"""Tool memory from a conversation's messages, without an LLM: each tool call an assistant message makes
(``tool_calls``, OpenAI's shape) joined to the ``tool`` message that answers it (``tool_call_id``), as one event:
the tool's name, its input, a summary of its result, whether it succeeded, and when.

Pure: the same messages always give the same events, in call order (what makes the tool stage idempotent).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

RESULT_CHARS = 500  # the result summary: its beginning (tool outputs can be long; the memory keeps the gist)
_FAILURE = re.compile(r"^\s*(error|exception|traceback|failed|failure)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ToolEvent:
    idx: int
    tool_name: str
    tool_input: str
    tool_result: str
    success: bool | None  # None: the call got no answer in these messages
    time: str | None
    tool_call_id: str | None
    sources: tuple[str, ...]  # the message ids (the client's, else our seq numbers) of the call and its answer

    def text(self) -> str:
        """What is embedded, indexed and shown as memory_value."""
        outcome = {True: "succeeded", False: "failed", None: "no result"}[self.success]
        result = f": {self.tool_result}" if self.tool_result else ""
        return f"tool {self.tool_name}({self.tool_input}) {outcome}{result}"

    def info(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("idx")
        out["sources"] = list(self.sources)
        return out


def _arguments(raw: Any) -> str:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(raw, ensure_ascii=False, sort_keys=True) if raw is not None else ""


def succeeded(result: str) -> bool:
    """A result reads as a failure when it starts with an error word or is JSON with an ``error`` set."""
    if _FAILURE.match(result):
        return False
    try:
        parsed = json.loads(result)
    except ValueError:
        return True
    failed = isinstance(parsed, dict) and (
        bool(parsed.get("error")) or parsed.get("success") is False or str(parsed.get("status", "")).lower() == "error"
    )
    return not failed


def tool_events(messages: list[dict[str, Any]]) -> list[ToolEvent]:
    """The tool events of one add's messages (dicts as /add/message takes them; ``seq`` when no ``id``)."""
    calls: list[dict[str, Any]] = []  # in order: {name, input, call_id, time, source}
    answers: dict[str, dict[str, Any]] = {}
    unanswered_tool_msgs: list[dict[str, Any]] = []
    for seq, m in enumerate(messages):
        source = str(m.get("id") or seq)
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            calls.append(
                {
                    "name": str(fn.get("name") or call.get("name") or "unknown"),
                    "input": _arguments(fn.get("arguments", call.get("arguments"))),
                    "call_id": call.get("id"),
                    "time": m.get("chat_time"),
                    "source": source,
                }
            )
        if m.get("role") == "tool":
            answer: dict[str, Any] = {"message": m, "source": source}
            if m.get("tool_call_id") and m["tool_call_id"] not in answers:
                answers[m["tool_call_id"]] = answer
            else:
                unanswered_tool_msgs.append(answer)
    events: list[ToolEvent] = []
    for call in calls:
        found: dict[str, Any] | None = answers.pop(call["call_id"], None) if call["call_id"] else None
        if found is None and unanswered_tool_msgs and not call["call_id"]:
            found = unanswered_tool_msgs.pop(0)  # no ids at all: answers in call order
        result = (found["message"].get("content") or "").strip() if found else ""
        events.append(
            ToolEvent(
                idx=len(events),
                tool_name=call["name"],
                tool_input=call["input"],
                tool_result=result[:RESULT_CHARS],
                success=succeeded(result) if found else None,
                time=(found["message"].get("chat_time") if found else None) or call["time"],
                tool_call_id=call["call_id"],
                sources=(call["source"], found["source"]) if found else (call["source"],),
            )
        )
    # A tool message whose call is not in this add (an earlier add made it): an event from the answer alone.
    for orphan in [*answers.values(), *unanswered_tool_msgs]:
        m = orphan["message"]
        result = (m.get("content") or "").strip()
        events.append(
            ToolEvent(
                idx=len(events),
                tool_name=str(m.get("name") or "unknown"),
                tool_input="",
                tool_result=result[:RESULT_CHARS],
                success=succeeded(result),
                time=m.get("chat_time"),
                tool_call_id=m.get("tool_call_id"),
                sources=(orphan["source"],),
            )
        )
    return events
