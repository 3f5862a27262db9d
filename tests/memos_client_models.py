"""The response shapes the MemOS Python client parses, as pydantic models (from ../shared/MEMOS_API_CONTRACT.md).

The client (MemTensor/MemOS ``src/memos/api/client.py``) parses every answer with a pydantic model and re-sends the
same request when that fails, so an answer these models reject is, for that client, a failed call (and an add it
retries is stored again unless we recognise the retry). Like the client's models they accept unknown extra keys; a
field the contract marks required must be present and non-null. Where the contract lists a field without the mark,
it is optional here but, when present, must have the type the client reads (``preference_note`` a string, never
null). The paging fields of ``/get/memory`` are required here although the client does not insist: the issue
asks for them (a client pages with them).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

T = TypeVar("T")


class _Open(BaseModel):
    """Extra keys allowed, as in every MemOS response model."""

    model_config = ConfigDict(extra="allow")


class Envelope(_Open, Generic[T]):
    """``{"code": int, "message": str, "data": ...}``; the client never reads the value of ``code``."""

    code: int
    message: str
    data: T


class Detail(_Open):
    """One memory, preference or message item: the client keeps it as an open dict."""


class AddMessageData(_Open):
    """add_message and add_feedback: ``success``, ``task_id``, ``status`` required."""

    success: bool
    task_id: str
    status: str


class SearchMemoryData(_Open):
    """search_memory: every list optional (a missing one reads as empty); ``preference_note`` never null."""

    memory_detail_list: list[Detail] = []
    preference_detail_list: list[Detail] | None = None
    message_detail_list: list[Detail] | None = None
    tool_memory_detail_list: list[Detail] | None = None
    skill_detail_list: list[Detail] | None = None
    profile_detail_list: list[Detail] | None = None
    event_detail_list: list[Detail] | None = None
    preference_note: str = ""


class GetMemoryData(_Open):
    """get_memory: the lists, and the page (required here, see the module docstring)."""

    memory_detail_list: list[Detail] = []
    preference_detail_list: list[Detail] | None = None
    tool_memory_detail_list: list[Detail] | None = None
    total: int
    size: int
    current: int
    pages: int


class GetMessagesData(_Open):
    """get_message: the messages must be under ``message_detail_list`` (under another name they read as empty,
    so it is required here: an answer without it would silently lose every message)."""

    message_detail_list: list[Detail]


class TaskStatusData(_Open):
    """get_task_status: ``task_id`` and ``status`` required; ``memory_views`` optional."""

    task_id: str
    status: str
    memory_views: dict[str, Any] | None = None


class TaskStatusEnvelope(Envelope[TaskStatusData]):
    @field_validator("data", mode="before")
    @classmethod
    def _unwrap(cls, v: Any) -> Any:
        # The client unwraps a one-element list in data.
        if isinstance(v, list) and len(v) == 1:
            return v[0]
        return v


class SuccessData(_Open):
    """delete_memory (``success`` required); update_memory is parsed raw, but MemOS's tests expect ``success``."""

    success: bool


class RawData(_Open):
    """get_memory_by_id: the client returns the JSON as it is; any 2xx JSON object passes."""


AddResponse = Envelope[AddMessageData]
SearchResponse = Envelope[SearchMemoryData]
GetMemoryResponse = Envelope[GetMemoryData]
GetMessagesResponse = Envelope[GetMessagesData]
DeleteResponse = Envelope[SuccessData]
UpdateResponse = Envelope[SuccessData]
RawResponse = Envelope[RawData]


class ChatData(_Open):
    """chat: ``response`` required (the answer's text)."""

    response: str


ChatResponse = Envelope[ChatData]
FeedbackResponse = Envelope[AddMessageData]  # add_feedback is answered as an add
