"""Pydantic models: the HTTP API's request bodies and every task's payload (also the producer SDK's schema).

API models accept the MemOS cloud client's requests as it sends them (every field it knows, unset ones as null), so
that its code works unchanged; see ``_ClientRequest``.
Task payloads are small: ids plus a schema version ``v``; a worker re-reads everything else from Postgres.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from memos_pipeline.search import filters

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


def _check_filter(value: dict[str, Any]) -> dict[str, Any]:
    try:
        filters.parse(value)
    except filters.FilterError as exc:
        # ctx["path"] extends the error's location past the field (api/errors.py): filter.and[0].create_time.gte
        raise PydanticCustomError("filter", "{reason}", {"reason": exc.message, "path": exc.path}) from None
    return value


MemosFilter = Annotated[
    dict[str, Any],
    AfterValidator(_check_filter),
    Field(description="MemOS filter: conditions AND-ed, and/or lists (memos_pipeline/search/filters.py)"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


class _ClientRequest(_Strict):
    """A request body MemOS's own client sends too. That client sends every field it knows, the ones its caller did
    not set as JSON null: here null means "not given" (the field's default).

    Fields of that client we do not implement are still accepted; ``UNSUPPORTED`` maps each to the values that ask
    for nothing we do not do (the client's defaults), and ``ignored()`` names the ones given any other value, which
    the answer lists in ``data.ignored``: never applied half-way, never dropped without a word. Models that accept
    unknown keys (``extra="ignore"``) report those there too. ``ALIASES`` maps the client's name of a field to ours,
    used when ours is not given."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {}
    ALIASES: ClassVar[dict[str, str]] = {}
    _unknown: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _client_shape(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, dict):
            return handler(data)
        given = {k: v for k, v in data.items() if v is not None}
        for theirs, ours in cls.ALIASES.items():
            if theirs in given and ours not in given:
                given[ours] = given.pop(theirs)
        model = handler(given)
        model._unknown = sorted(k for k in given if k not in cls.model_fields)
        return model

    def ignored(self) -> list[str]:
        """The fields given that were not applied (see the class docstring), sorted."""
        unsupported = [
            name
            for name, neutral in self.UNSUPPORTED.items()
            if name in self.model_fields_set and getattr(self, name) not in neutral
        ]
        return sorted([*unsupported, *self._unknown])


class ToolFunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    name: SafeText = Field(min_length=1, max_length=256)
    arguments: Annotated[str | dict[str, Any] | None, AfterValidator(_no_nul_deep)] = Field(
        None, description="the call's input: a JSON string (OpenAI) or an object"
    )


class ToolCallIn(BaseModel):
    """One tool call of an assistant message, in OpenAI's shape (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    id: SafeText | None = Field(None, max_length=256)
    type: SafeText | None = Field(None, max_length=32)
    function: ToolFunctionIn


class MessageIn(_Strict):
    role: Literal["user", "assistant", "system", "tool"]
    content: SafeText = Field(min_length=1)
    chat_time: SafeText | None = Field(None, max_length=64)
    id: SafeText | None = Field(None, min_length=1, max_length=256, description="client message id, echoed in sources")
    name: SafeText | None = Field(None, max_length=256, description="speaker name; defaults to the role")
    tool_calls: list[ToolCallIn] | None = Field(
        None, max_length=50, description="an assistant's tool calls (OpenAI's shape): they become tool memory"
    )
    tool_call_id: SafeText | None = Field(None, max_length=256, description="a tool message: the call it answers")

    @model_validator(mode="before")
    @classmethod
    def _calls_are_the_content(cls, data: Any) -> Any:
        # An assistant message that only calls tools has no content (null or ""); its calls are then its text, so
        # the conversation's windows show them.
        if isinstance(data, dict) and data.get("tool_calls") and not str(data.get("content") or "").strip():
            calls = data["tool_calls"] if isinstance(data["tool_calls"], list) else []
            shown = [
                f"{(c.get('function') or {}).get('name', '?')}({(c.get('function') or {}).get('arguments') or ''})"
                for c in calls
                if isinstance(c, dict)
            ]
            data = {**data, "content": "calls " + "; ".join(shown) if shown else None}
        return data

    @field_validator("content")
    @classmethod
    def _content(cls, v: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("max_content_chars")
        if limit and len(v) > limit:
            raise ValueError(f"content is {len(v)} characters, the limit is {limit}")
        return v


class AddRequest(_ClientRequest):
    # Unknown keys are accepted (and reported in data.ignored): other MemOS client versions send other ones.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "allow_public": (False,),
        "allow_knowledgebase_ids": ([],),
        "allow_memory_view": (False,),
    }
    ALIASES: ClassVar[dict[str, str]] = {"asyncMode": "async_mode"}  # MemOS client releases that spell it so

    user_id: SafeText = _ID
    conversation_id: SafeText = Field("default", min_length=1, max_length=256)
    messages: list[MessageIn] = Field(min_length=1)
    async_mode: Literal["async", "sync"] | None = None
    agent_id: SafeText | None = Field(None, max_length=256)
    app_id: SafeText | None = Field(None, max_length=256)
    source: SafeText | None = Field(None, max_length=256)
    tags: list[Annotated[SafeText, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    info: Annotated[dict[str, Any], AfterValidator(_no_nul_deep)] = Field(default_factory=dict)
    allow_public: bool = Field(False, description="MemOS: share with the project (not implemented: data.ignored)")
    allow_knowledgebase_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(
        None, max_length=100, description="MemOS: knowledge bases that may read it (not implemented: data.ignored)"
    )
    allow_memory_view: bool = Field(False, description="MemOS: memory views (not implemented: data.ignored)")

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


class SearchRequest(_ClientRequest):
    # Unknown keys are accepted (and reported in data.ignored), as for the add.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)
    ALIASES: ClassVar[dict[str, str]] = {"memory_limit_number": "top_k", "preference_limit_number": "pref_top_k"}
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "include_skill": (False,),
        "include_memory_view": (False,),
        "context_format": ("memory",),
        "source": (),
    }

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
    agent_id: SafeText | None = Field(None, max_length=256, description="only memories of this agent's adds")
    filter: MemosFilter | None = None
    relativity: float | None = Field(None, ge=0, le=1, description="minimum score of a returned item")
    knowledgebase_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(
        None, max_length=100, description="knowledge bases whose passages the search includes (api/knowledgebase.py)"
    )
    include_tool_memory: bool = Field(
        False, description="also return the user's tool memories (tool_memory_detail_list)"
    )
    tool_memory_limit_number: int | None = Field(None, ge=0, le=100, description="how many tool memories (6)")
    # Accepted for the MemOS client: skills and memory views are not built yet.
    include_skill: bool = False
    skill_limit_number: int | None = Field(None, ge=0, le=100)
    include_memory_view: bool = False
    context_format: SafeText = Field("memory", max_length=32)
    source: SafeText | None = Field(None, max_length=256)

    def scope_filter(self) -> dict[str, Any] | None:
        """The MemOS ``filter`` with ``agent_id`` folded in (both must hold)."""
        return and_filters(self.filter, {"agent_id": self.agent_id} if self.agent_id else None)


def and_filters(*parts: dict[str, Any] | None) -> dict[str, Any] | None:
    given = [p for p in parts if p]
    if not given:
        return None
    return given[0] if len(given) == 1 else {"and": given}


class StatusRequest(_ClientRequest):
    task_id: SafeText | None = Field(None, min_length=1, max_length=64)
    ingest_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StatusRequest:
        if not self.task_id and not self.ingest_id:
            raise ValueError("give task_id or ingest_id")
        return self


# ---------------------------------------------------------------- task payloads (schema version v=1)


class IngestJob(BaseModel):
    """One ingest's stage: memos.chunker.chunk / .document / .tools, memos.memreader.extract, memos.preference.extract."""

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
    filter: dict[str, Any] | None = Field(None, description="MemOS filter, checked by the API (search/filters.py)")
    channels: list[Literal["dense", "bm25"]] | None = None
    # Fine mode with MEMOS_FINE_DECOMPOSE and an LLM: also search the parts the LLM splits the query into.
    decompose: bool = False
    trace_id: str | None = None


class GetMemoryRequest(_ClientRequest):
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "include_tool_memory": (False,),
        "include_memory_view": (False,),
    }

    user_id: SafeText = _ID
    conversation_id: SafeText | None = Field(None, max_length=256)
    memory_type: SafeText | None = Field(None, max_length=32)
    kind: Literal["raw", "fact"] | None = None
    status: Literal["activated", "archived", "deleted"] = "activated"
    page: int = Field(1, ge=1, le=100_000)
    size: int = Field(20, ge=1, le=200)
    agent_id: SafeText | None = Field(None, max_length=256, description="only memories of this agent's adds")
    filter: MemosFilter | None = None
    include_preference: bool = Field(True, description="also a page of preferences (preference_detail_list)")
    include_tool_memory: bool = False
    include_memory_view: bool = False

    def scope_filter(self) -> dict[str, Any] | None:
        return and_filters(self.filter, {"agent_id": self.agent_id} if self.agent_id else None)


class DeleteMemoryRequest(_ClientRequest):
    """Soft-delete by ids, or everything in a scope: a user, an agent, a conversation, a filter, a memory type
    (all that are given must hold). Always inside the key's tenant."""

    user_id: SafeText | None = Field(None, min_length=1, max_length=256)
    memory_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=500)
    agent_id: SafeText | None = Field(None, min_length=1, max_length=256)
    conversation_id: SafeText | None = Field(None, min_length=1, max_length=256)
    memory_type: SafeText | None = Field(None, min_length=1, max_length=32)
    filter: MemosFilter | None = None

    @field_validator("filter")
    @classmethod
    def _not_everything(cls, v: dict[str, Any]) -> dict[str, Any]:
        if filters.is_empty(filters.parse(v)):
            raise ValueError("an empty filter matches every memory; give at least one condition")
        return v

    @model_validator(mode="after")
    def _some_scope(self) -> DeleteMemoryRequest:
        if not (self.memory_ids or self.user_id or self.agent_id or self.conversation_id or self.filter):
            raise ValueError("give memory_ids, user_id, agent_id, conversation_id or filter")
        return self

    def scope_filter(self) -> dict[str, Any] | None:
        """Every condition but the ids, as one MemOS filter."""
        named = {
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "conversation_id": self.conversation_id,
            "memory_type": self.memory_type,
        }
        return and_filters(self.filter, {k: v for k, v in named.items() if v} or None)


class UpdateMemoryRequest(_ClientRequest):
    """A new version with the given value, key or tags (the old one archived), or a status change. MemOS's client
    names the value ``content`` and the key ``title``, and sends no user_id: the key's tenant is the scope."""

    user_id: SafeText | None = Field(None, min_length=1, max_length=256)
    memory_id: uuid.UUID
    memory_value: SafeText | None = Field(None, min_length=1, max_length=20_000)
    memory_key: SafeText | None = Field(None, min_length=1, max_length=200)
    content: SafeText | None = Field(None, min_length=1, max_length=20_000, description="MemOS: memory_value")
    title: SafeText | None = Field(None, min_length=1, max_length=200, description="MemOS: memory_key")
    tags: list[Annotated[SafeText, Field(max_length=100)]] | None = Field(None, max_length=50)
    status: Literal["activated", "archived", "deleted"] | None = Field(
        None, description="archived or deleted: retire the memory (alone, without new content)"
    )

    @model_validator(mode="after")
    def _something(self) -> UpdateMemoryRequest:
        for ours, theirs in (("memory_value", "content"), ("memory_key", "title")):
            a, b = getattr(self, ours), getattr(self, theirs)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{ours} and {theirs} name the same field: give one")
        changes = self.new_value is not None or self.new_key is not None or self.tags is not None
        if not changes and self.status is None:
            raise ValueError("give at least one of content (memory_value), title (memory_key), tags, status")
        if changes and self.status in ("archived", "deleted"):
            raise ValueError(f"status {self.status} retires the memory: it cannot come with new content")
        return self

    @property
    def new_value(self) -> str | None:
        return self.memory_value if self.memory_value is not None else self.content

    @property
    def new_key(self) -> str | None:
        return self.memory_key if self.memory_key is not None else self.title


class MemoryHistoryRequest(_Strict):
    user_id: SafeText = _ID
    memory_id: uuid.UUID


class GetMessageRequest(_ClientRequest):
    """Paged messages of one conversation (page, size); or, as MemOS's client asks, the latest
    ``message_limit_number`` messages of the conversation, or of each of the user's latest
    ``conversation_limit_number`` conversations when none is named."""

    user_id: SafeText = _ID
    conversation_id: SafeText | None = Field(None, min_length=1, max_length=256)
    page: int = Field(1, ge=1, le=100_000)
    size: int = Field(50, ge=1, le=500)
    conversation_limit_number: int = Field(6, ge=1, le=100)
    message_limit_number: int | None = Field(None, ge=1, le=500)
    source: SafeText | None = Field(None, max_length=256, description="only messages of adds with this source")

    @property
    def latest(self) -> bool:
        """The MemOS way (latest messages per conversation) rather than pages of one conversation."""
        return self.conversation_id is None or self.message_limit_number is not None

    def ignored(self) -> list[str]:
        # In the MemOS way there are no pages: page and size, if given, were not applied.
        paging = [f for f in ("page", "size") if f in self.model_fields_set] if self.latest else []
        return sorted([*super().ignored(), *paging])


class SchedulerRequest(_ClientRequest):
    """/scheduler/status and /scheduler/wait (MemOS's server routes): the user whose pending ingests count, as
    ``user_name`` (MemOS's name, in the query string or the body) or ``user_id``; none: every user of the tenant."""

    ALIASES: ClassVar[dict[str, str]] = {"user_name": "user_id"}

    user_id: SafeText | None = Field(None, min_length=1, max_length=256)
    # Newer MemOS clients ask /scheduler/status about one task (``?task_id=``): its status is answered beside the
    # user's counts.
    task_id: SafeText | None = Field(None, min_length=1, max_length=64)
    timeout_seconds: float = Field(
        120.0, ge=0, le=86_400, description="wait: give up after this long (at most MEMOS_SCHEDULER_WAIT_MAX_S)"
    )
    poll_interval: float = Field(0.2, ge=0.01, le=5, description="wait: how often to look again")


class AcceptJob(BaseModel):
    """memos.chunker.accept: an add published straight to RabbitMQ by a producer (``memos_pipeline.producer`` or
    any AMQP client) instead of the HTTP API. The worker makes it durable exactly as the API does."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    tenant: SafeText = Field(min_length=1, max_length=200, description="tenant name (see `create-key --tenant`)")
    idempotency_key: SafeText = Field(min_length=1, max_length=128, description="one per add; redelivery-safe")
    request: AddRequest


# ---------------------------------------------------------------- rerank, extract, chat, feedback (api/assist.py,
# api/feedback.py): MemOS's client sends these too, with the same null-means-not-given rule.

MAX_RERANK_DOCUMENTS = 500  # one request's documents: each is scored by the reranker service, in batches


class RerankDocument(BaseModel):
    """A document to rerank: MemOS and Jina-style clients send a string or an object with ``text``; the object's
    other keys are the caller's (an id, metadata) and come back with it."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)
    text: SafeText = Field(min_length=1, max_length=20_000)


class RerankRequest(_ClientRequest):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {"model": ()}  # the configured reranker answers

    query: SafeText = Field(min_length=1, max_length=4000)
    documents: list[RerankDocument] = Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    top_n: int | None = Field(None, ge=1, description="return only the best top_n (default: all)")
    model: SafeText | None = Field(None, max_length=256)

    @field_validator("documents", mode="before")
    @classmethod
    def _strings_are_documents(cls, v: Any) -> Any:
        # A plain string is the document's text: normalised before validation so that errors name documents[i].text.
        return [{"text": d} if isinstance(d, str) else d for d in v] if isinstance(v, list) else v


EXTRACTION_TYPES = {
    "fact": "facts",
    "facts": "facts",
    "memory": "facts",
    "memories": "facts",
    "preference": "preferences",
    "preferences": "preferences",
}


class ExtractRequest(_ClientRequest):
    """Stateless extraction: the messages go through the MemReader's and the preference stage's prompts; nothing
    is stored. ``extraction_types``: which (``facts``/``memory``, ``preference``); default both."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    messages: list[MessageIn] = Field(min_length=1)
    extraction_types: list[str] | None = Field(None, min_length=1, max_length=10)
    model: SafeText | None = Field(None, min_length=1, max_length=256, description="LLM model instead of ours")
    user_id: SafeText = Field("user", min_length=1, max_length=256, description="who 'the user' is in the prompt")

    @field_validator("messages")
    @classmethod
    def _limit(cls, v: list[MessageIn], info: ValidationInfo) -> list[MessageIn]:
        limit = (info.context or {}).get("max_messages")
        if limit and len(v) > limit:
            raise ValueError(f"{len(v)} messages in one request, the limit is {limit}")
        return v

    @field_validator("extraction_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            if t.strip().lower() not in EXTRACTION_TYPES:
                raise PydanticCustomError(
                    "extraction_type",
                    "{reason}",
                    {"reason": f"{t!r} is not one of {sorted(EXTRACTION_TYPES)}", "path": (i,)},
                )
        return v

    def kinds(self) -> set[str]:
        """``facts`` and/or ``preferences``."""
        if not self.extraction_types:
            return {"facts", "preferences"}
        return {EXTRACTION_TYPES[t.strip().lower()] for t in self.extraction_types}


class ChatRequest(_ClientRequest):
    """A chat turn answered with the user's memories (MemOS's /chat). Search fields as in /search/memory; the
    write-back fields (``add_message_on_answer`` with ``app_id``, ``agent_id``, ``source``, ``tags``, ``info``) as
    in /add/message."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "internet_search": (False,),
        "force_stop": (False,),
        "use_mem_os_cube": (False,),
        "allow_public": (False,),
        "async_mode": (True,),  # the write-back is always accepted asynchronously, as an add is
    }

    user_id: SafeText = _ID
    query: SafeText = Field(min_length=1, max_length=4000)
    conversation_id: SafeText | None = Field(None, min_length=1, max_length=256)
    system_prompt: SafeText | None = Field(None, max_length=20_000, description="replaces our system instruction")
    model_name: SafeText | None = Field(None, min_length=1, max_length=256, description="LLM model instead of ours")
    filter: MemosFilter | None = None
    agent_id: SafeText | None = Field(None, max_length=256, description="search this agent's memories; add as it")
    app_id: SafeText | None = Field(None, max_length=256)
    source: SafeText | None = Field(None, max_length=256)
    tags: list[Annotated[SafeText, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    info: Annotated[dict[str, Any], AfterValidator(_no_nul_deep)] = Field(default_factory=dict)
    add_message_on_answer: bool = Field(False, description="add the query and the answer as an /add/message does")
    include_preference: bool = True
    memory_limit_number: int = Field(6, ge=0, le=100)
    preference_limit_number: int = Field(6, ge=0, le=50)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = Field(False, description="answer as server-sent events (text/event-stream)")
    knowledgebase_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(
        None, max_length=100, description="knowledge bases whose passages the search includes"
    )
    internet_search: bool = False
    force_stop: bool = False
    use_mem_os_cube: bool = False
    allow_public: bool = False
    async_mode: bool = True

    def scope_filter(self) -> dict[str, Any] | None:
        return and_filters(self.filter, {"agent_id": self.agent_id} if self.agent_id else None)


class FeedbackRequest(_ClientRequest):
    """MemOS's add_feedback: what the user says about what the assistant remembers (a correction, a new fact,
    something no longer true). Accepted durably like an add; the memreader applies it (stages/feedback.py)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "allow_public": (False,),
        "allow_knowledgebase_ids": ([],),
    }

    user_id: SafeText = _ID
    feedback_content: SafeText = Field(min_length=1, max_length=20_000)
    conversation_id: SafeText = Field("default", min_length=1, max_length=256)
    agent_id: SafeText | None = Field(None, max_length=256, description="revise this agent's memories")
    app_id: SafeText | None = Field(None, max_length=256)
    feedback_time: SafeText | None = Field(None, max_length=64, description="when it was said (resolves 'yesterday')")
    allow_public: bool = False
    allow_knowledgebase_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(None, max_length=100)
