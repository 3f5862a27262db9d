"""Pydantic models: the HTTP API's request bodies and every task's payload (also the producer SDK's schema).

API models accept the MemOS cloud client's field names as aliases so that its code works unchanged.
Task payloads are small: ids plus a schema version ``v``; a worker re-reads everything else from Postgres.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

_ID = Field(min_length=1, max_length=256)


def _no_control_chars(value: str) -> str:
    # Postgres cannot store NUL in text or jsonb, and other control characters are never meaningful input:
    # reject them at the edge (a 422 naming the field) instead of failing deep in the database with a 500.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value) or "\x7f" in value:
        raise ValueError("must not contain control characters")
    return value


def _no_nul_deep(value: Any) -> Any:
    """JSON of any shape (``info``): no NUL anywhere in its keys or strings."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul_deep(k)
            _no_nul_deep(v)
    elif isinstance(value, list):
        for v in value:
            _no_nul_deep(v)
    return value


# Every free-text field of the API is SafeText: the control-character rule lives in the type, not in a list of
# field names that a new field could miss.
SafeText = Annotated[str, AfterValidator(_no_control_chars)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


class MessageIn(_Strict):
    role: Literal["user", "assistant", "system", "tool"]
    content: SafeText = Field(min_length=1)
    chat_time: SafeText | None = Field(None, max_length=64)
    id: SafeText | None = Field(None, min_length=1, max_length=256, description="client message id, echoed in sources")
    name: SafeText | None = Field(None, max_length=256, description="speaker name; defaults to the role")

    @field_validator("content")
    @classmethod
    def _content(cls, v: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("max_content_chars")
        if limit and len(v) > limit:
            raise ValueError(f"content is {len(v)} characters, the limit is {limit}")
        return v


class AddRequest(_Strict):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    user_id: SafeText = _ID
    conversation_id: SafeText = Field("default", min_length=1, max_length=256)
    messages: list[MessageIn] = Field(min_length=1)
    async_mode: Literal["async", "sync"] | None = None
    agent_id: SafeText | None = Field(None, max_length=256)
    app_id: SafeText | None = Field(None, max_length=256)
    source: SafeText | None = Field(None, max_length=256)
    tags: list[Annotated[SafeText, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    info: Annotated[dict[str, Any], AfterValidator(_no_nul_deep)] = Field(default_factory=dict)

    @field_validator("async_mode", mode="before")
    @classmethod
    def _async_mode(cls, v: Any) -> Any:
        # The MemOS client sends a boolean; the design names the modes.
        if isinstance(v, bool):
            return "async" if v else "sync"
        return v

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[MessageIn], info: ValidationInfo) -> list[MessageIn]:
        limit = (info.context or {}).get("max_messages")
        if limit and len(v) > limit:
            raise ValueError(f"{len(v)} messages in one add, the limit is {limit}")
        ids = [m.id for m in v if m.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("message ids must be unique within one add")
        return v


class SearchFilters(_Strict):
    conversation_id: SafeText | None = Field(None, max_length=256)
    memory_type: SafeText | None = Field(None, max_length=32)
    kind: Literal["raw", "fact"] | None = None


class SearchRequest(_Strict):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    user_id: SafeText = _ID
    query: SafeText = Field(min_length=1, max_length=4000)
    conversation_id: SafeText | None = Field(None, max_length=256, description="the current conversation (context)")
    top_k: int = Field(10, ge=1, le=100)
    pref_top_k: int = Field(6, ge=0, le=50)
    include_preference: bool = True
    mode: Literal["fast", "fine", "mixture"] | None = None
    filters: SearchFilters = Field(default_factory=SearchFilters)
    channels: list[Literal["dense", "bm25"]] | None = Field(
        None, min_length=1, description="restrict recall to these channels (baselines, debugging); default: all enabled"
    )

    @model_validator(mode="before")
    @classmethod
    def _cloud_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "memory_limit_number" in data and "top_k" not in data:
                data["top_k"] = data.pop("memory_limit_number")
            if "preference_limit_number" in data and "pref_top_k" not in data:
                data["pref_top_k"] = data.pop("preference_limit_number")
        return data


class StatusRequest(_Strict):
    task_id: SafeText | None = Field(None, min_length=1, max_length=64)
    ingest_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StatusRequest:
        if not self.task_id and not self.ingest_id:
            raise ValueError("give task_id or ingest_id")
        return self


# ---------------------------------------------------------------- task payloads (schema version v=1)


class IngestJob(BaseModel):
    """One ingest's stage: memos.chunker.chunk, memos.memreader.extract, memos.preference.extract."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    ingest_id: uuid.UUID


class IndexJob(BaseModel):
    """memos.indexer.upsert_ingest / memos.indexer.upsert / memos.indexer.delete."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    ingest_id: uuid.UUID | None = None
    memory_ids: list[uuid.UUID] = Field(default_factory=list)


class SearchJob(BaseModel):
    """memos.search.fast: the query itself is the one non-id field (it is what is searched)."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    tenant_id: uuid.UUID
    user_id: str
    query: str
    conversation_id: str | None = None
    top_k: int = 10
    pref_top_k: int = 6
    include_preference: bool = True
    filters: SearchFilters = Field(default_factory=SearchFilters)
    channels: list[Literal["dense", "bm25"]] | None = None
    trace_id: str | None = None


class GetMemoryRequest(_Strict):
    user_id: SafeText = _ID
    conversation_id: SafeText | None = Field(None, max_length=256)
    memory_type: SafeText | None = Field(None, max_length=32)
    kind: Literal["raw", "fact"] | None = None
    status: Literal["activated", "archived", "deleted"] = "activated"
    page: int = Field(1, ge=1, le=100_000)
    size: int = Field(20, ge=1, le=200)


class DeleteMemoryRequest(_Strict):
    user_id: SafeText = _ID
    memory_ids: list[uuid.UUID] = Field(min_length=1, max_length=500)


class UpdateMemoryRequest(_Strict):
    user_id: SafeText = _ID
    memory_id: uuid.UUID
    memory_value: SafeText | None = Field(None, min_length=1, max_length=20_000)
    memory_key: SafeText | None = Field(None, min_length=1, max_length=200)
    tags: list[Annotated[SafeText, Field(max_length=100)]] | None = Field(None, max_length=50)

    @model_validator(mode="after")
    def _something(self) -> UpdateMemoryRequest:
        if self.memory_value is None and self.memory_key is None and self.tags is None:
            raise ValueError("give at least one of memory_value, memory_key, tags")
        return self


class MemoryHistoryRequest(_Strict):
    user_id: SafeText = _ID
    memory_id: uuid.UUID


class GetMessageRequest(_Strict):
    user_id: SafeText = _ID
    conversation_id: SafeText = Field(min_length=1, max_length=256)
    page: int = Field(1, ge=1, le=100_000)
    size: int = Field(50, ge=1, le=500)


class AcceptJob(BaseModel):
    """memos.chunker.accept: an add published straight to RabbitMQ by a producer (``memos_pipeline.producer`` or
    any AMQP client) instead of the HTTP API. The worker makes it durable exactly as the API does."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    tenant: SafeText = Field(min_length=1, max_length=200, description="tenant name (see `create-key --tenant`)")
    idempotency_key: SafeText = Field(min_length=1, max_length=128, description="one per add; redelivery-safe")
    request: AddRequest
