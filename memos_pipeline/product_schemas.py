"""Request bodies of MemOS's open-source server routes (MemTensor/MemOS ``src/memos/api/product_models.py``, served by
``routers/server_router.py`` under ``/product``): ``/product/add``, ``/search``, ``/get_memory``, ``/get_all``,
``/delete_memory``, ``/feedback`` and ``/chat/complete`` (api/product.py).

Each model takes MemOS's server field names and maps the body onto our own request model (``to_*``), so that the
route runs the same code as ours. The rules of ``_ClientRequest`` hold: null means "not given", and a field we
accept but do not apply is named in ``ignored()``; unknown keys are accepted (MemOS's pydantic models ignore them
too) and named there as well.

Cubes: MemOS scopes memory by cube (``mem_cube_id``, ``readable_cube_ids``, ``writable_cube_ids``); we scope it by
``user_id`` inside the key's tenant. **A cube id is a user_id here**: the cube given is the user whose memory is read
or written, and the request's ``user_id`` is that scope only when no cube is given (as MemOS's server does when
``mem_cube_id`` is left out). A write goes to exactly one cube: several distinct writable cubes are a 422 rather
than copies of the same add. A search reads each readable cube (at most ``MAX_READ_CUBES``), one result list per cube
as MemOS answers. MemOS's ``session_id`` is our ``conversation_id``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from memos_pipeline.schemas import MemosFilter, MessageIn, SafeText, _ClientRequest, _no_nul_deep

MAX_READ_CUBES = 5  # cubes one search reads: each is a search of its own, run one after the other
MAX_WRITE_CUBES = 100  # cube ids a delete names (each one is a scope of the same delete)

CubeId = Annotated[SafeText, Field(min_length=1, max_length=256)]
Tag = Annotated[SafeText, Field(max_length=100)]
Info = Annotated[dict[str, Any], AfterValidator(_no_nul_deep)]
# Lists MemOS's models take that we never store or apply (chat history, permission lists): their size is bounded so
# that an ignored field cannot make a request expensive.
Unused = list[dict[str, Any]]


class _ServerRequest(_ClientRequest):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)


def _one_cube(what: str, *given: list[str] | str | None) -> str | None:
    """The one cube a write names (``writable_cube_ids``, ``mem_cube_id``, ...), or None when none is given."""
    cubes: list[str] = []
    for g in given:
        for c in [g] if isinstance(g, str) else g or []:
            if c not in cubes:
                cubes.append(c)
    if len(cubes) > 1:
        raise ValueError(
            f"{what} one cube (a cube is a user_id here); got {len(cubes)}: {', '.join(cubes[:5])}. "
            "Send one request per cube"
        )
    return cubes[0] if cubes else None


class ProductAddRequest(_ServerRequest):
    """MemOS's APIADDRequest (/product/add) onto our AddRequest."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "mode": (),  # MemOS's fast/fine add pipeline: our chain is the same for every add
        "chat_history": ([],),
        "is_feedback": (False,),  # a feedback is /product/feedback here
        "doc_path": (),  # documents: knowledge bases are not built yet
        "operation": ([],),
    }

    user_id: SafeText | None = Field(None, min_length=1, max_length=256, description="the scope when no cube is given")
    writable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=10, description="one cube: its user")
    mem_cube_id: CubeId | None = Field(None, description="MemOS (deprecated): the cube written")
    session_id: SafeText | None = Field(None, min_length=1, max_length=256, description="our conversation_id")
    task_id: SafeText | None = Field(
        None, min_length=1, max_length=100, description="names the add: the same task_id again is the same add"
    )
    async_mode: Literal["async", "sync"] | None = None
    messages: list[MessageIn] | Annotated[SafeText, Field(min_length=1)] | None = Field(
        None, description="the messages, or one text (a user message)"
    )
    memory_content: SafeText | None = Field(
        None, min_length=1, max_length=20_000, description="MemOS (deprecated): a text added as a user message"
    )
    custom_tags: list[Tag] | None = Field(None, max_length=50, description="our tags")
    info: Info | None = None
    source: SafeText | None = Field(None, max_length=256)
    mode: Literal["fast", "fine"] | None = None
    chat_history: Unused | None = Field(None, max_length=1000)
    is_feedback: bool = False
    doc_path: SafeText | None = Field(None, max_length=4096)
    operation: Unused | None = Field(None, max_length=100)

    @field_validator("async_mode", mode="before")
    @classmethod
    def _async_mode(cls, v: Any) -> Any:
        return ("async" if v else "sync") if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _scope_and_content(self) -> ProductAddRequest:
        if self.cube() is None:
            raise ValueError("give writable_cube_ids, mem_cube_id or user_id: whose memory this is")
        if not self.messages and not self.memory_content:
            raise ValueError("give messages (or memory_content)")
        return self

    def cube(self) -> str | None:
        return _one_cube("an add writes", self.writable_cube_ids, self.mem_cube_id) or self.user_id

    def to_add(self) -> dict[str, Any]:
        """The body of our AddRequest."""
        if isinstance(self.messages, str):
            messages = [{"role": "user", "content": self.messages}]
        else:
            messages = [m.model_dump(exclude_none=True) for m in self.messages or []]
        if self.memory_content:
            messages.append({"role": "user", "content": self.memory_content})
        info = dict(self.info or {})
        if self.user_id and self.user_id != self.cube():
            info.setdefault("memos_user_id", self.user_id)  # who wrote into this cube, kept for filters
        return {
            "user_id": self.cube(),
            "conversation_id": self.session_id,
            "messages": messages,
            "async_mode": self.async_mode,
            "tags": self.custom_tags,
            "info": info or None,
            "source": self.source,
        }


class ProductSearchRequest(_ServerRequest):
    """MemOS's APISearchRequest (/product/search) onto our SearchRequest, one per readable cube."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "dedup": (),  # our search returns each conversation turn once already (README), no MMR/similarity step
        "internet_search": (False,),
        "threshold": (),
        "search_memory_type": ("All",),
        "chat_history": ([],),
        "moscube": (False,),
        "operation": ([],),
    }

    query: SafeText = Field(min_length=1, max_length=4000)
    user_id: SafeText | None = Field(None, min_length=1, max_length=256, description="the scope when no cube is given")
    readable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=MAX_READ_CUBES)
    mem_cube_id: CubeId | None = Field(None, description="MemOS (deprecated): one readable cube")
    mode: Literal["fast", "fine", "mixture"] | None = None
    session_id: SafeText | None = Field(None, min_length=1, max_length=256, description="our conversation_id")
    top_k: int = Field(10, ge=1, le=100)
    relativity: float | None = Field(None, ge=0, le=1, description="minimum score (MemOS: applied when given)")
    pref_top_k: int = Field(6, ge=0, le=50)
    include_preference: bool = True
    search_tool_memory: bool | None = None
    tool_mem_top_k: int | None = Field(None, ge=0, le=100)
    include_skill_memory: bool | None = None
    skill_mem_top_k: int | None = Field(None, ge=0, le=100)
    filter: MemosFilter | None = None
    source: SafeText | None = Field(None, max_length=256)
    dedup: Literal["no", "sim", "mmr"] | None = None
    internet_search: bool = False
    threshold: float | None = None
    search_memory_type: SafeText = Field("All", max_length=64)
    chat_history: Unused | None = Field(None, max_length=1000)
    moscube: bool = False
    operation: Unused | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _scope(self) -> ProductSearchRequest:
        if not self.cubes():
            raise ValueError("give readable_cube_ids, mem_cube_id or user_id: whose memory to search")
        return self

    def cubes(self) -> list[str]:
        if self.readable_cube_ids:
            return list(dict.fromkeys(self.readable_cube_ids))
        one = self.mem_cube_id or self.user_id
        return [one] if one else []

    def to_search(self, cube: str) -> dict[str, Any]:
        """The body of our SearchRequest for one cube."""
        return {
            "user_id": cube,
            "query": self.query,
            "conversation_id": self.session_id,
            "top_k": self.top_k,
            "pref_top_k": self.pref_top_k,
            "include_preference": self.include_preference,
            "mode": self.mode,
            "filter": self.filter,
            "relativity": self.relativity,
            "include_tool_memory": self.search_tool_memory,
            "tool_memory_limit_number": self.tool_mem_top_k,
            "include_skill": self.include_skill_memory,
            "skill_limit_number": self.skill_mem_top_k,
            "source": self.source,
        }


class ProductGetMemoryRequest(_ServerRequest):
    """MemOS's GetMemoryRequest (/product/get_memory) onto our GetMemoryRequest. No page and no page_size: every
    memory (MemOS's export), at most ``EXPORT_MAX``."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {"include_skill_memory": (False,)}

    mem_cube_id: CubeId | None = Field(None, description="the cube read (MemOS requires it; else user_id)")
    user_id: SafeText | None = Field(None, min_length=1, max_length=256)
    include_preference: bool = True
    include_tool_memory: bool | None = None
    include_skill_memory: bool = False
    filter: MemosFilter | None = None
    page: int | None = Field(None, ge=1, le=100_000)
    page_size: int | None = Field(None, ge=1, le=200)

    @model_validator(mode="after")
    def _scope(self) -> ProductGetMemoryRequest:
        if not self.cube():
            raise ValueError("give mem_cube_id (or user_id): whose memory to read")
        return self

    def cube(self) -> str:
        return self.mem_cube_id or self.user_id or ""

    @property
    def export(self) -> bool:
        return self.page is None and self.page_size is None

    def to_get(self, page: int, size: int) -> dict[str, Any]:
        return {
            "user_id": self.cube(),
            "include_preference": self.include_preference,
            "include_tool_memory": self.include_tool_memory,
            "filter": self.filter,
            "page": page,
            "size": size,
        }


class ProductGetAllRequest(_ServerRequest):
    """MemOS's GetMemoryPlaygroundRequest (/product/get_all): a user's memories (MemOS shows at most about 200 of
    them as a tree), or those relevant to ``search_query``. The first of ``mem_cube_ids`` is read, as in MemOS."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {"search_type": ()}

    user_id: SafeText = Field(min_length=1, max_length=256)
    memory_type: Literal["text_mem", "act_mem", "param_mem", "para_mem"] = "text_mem"
    mem_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=100)
    search_query: SafeText | None = Field(None, min_length=1, max_length=4000)
    search_type: SafeText | None = Field(None, max_length=64)

    def cube(self) -> str:
        return self.mem_cube_ids[0] if self.mem_cube_ids else self.user_id

    def ignored(self) -> list[str]:
        # MemOS reads the first cube only; the others are named rather than silently skipped.
        extra = ["mem_cube_ids"] if self.mem_cube_ids and len(set(self.mem_cube_ids)) > 1 else []
        return sorted([*super().ignored(), *extra])


class ProductDeleteRequest(_ServerRequest):
    """MemOS's DeleteMemoryRequest (/product/delete_memory): exactly one of ``memory_ids``, ``file_ids``,
    ``filter`` (as MemOS requires), inside each writable cube, or the key's whole tenant when none is named."""

    writable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=MAX_WRITE_CUBES)
    memory_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=500)
    file_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(
        None, min_length=1, max_length=500, description="knowledge-base files: we have none, so nothing matches"
    )
    filter: MemosFilter | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ProductDeleteRequest:
        given = [n for n in ("memory_ids", "file_ids", "filter") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of memory_ids, file_ids, filter (got {', '.join(given) or 'none'})")
        return self

    def ignored(self) -> list[str]:
        return sorted([*super().ignored(), *(["file_ids"] if self.file_ids else [])])

    def to_deletes(self) -> list[dict[str, Any]]:
        """Bodies of our DeleteMemoryRequest: one per cube (a cube is a user_id), or one for the tenant."""
        if self.file_ids:
            return []  # no memory of ours comes from a knowledge-base file
        ids = [str(i) for i in self.memory_ids] if self.memory_ids else None
        cubes: list[str | None] = [*dict.fromkeys(self.writable_cube_ids or [])] or [None]
        return [{"memory_ids": ids, "filter": self.filter, "user_id": c} for c in cubes]


class ProductFeedbackRequest(_ServerRequest):
    """MemOS's APIFeedbackRequest (/product/feedback) onto our FeedbackRequest. ``info.agent_id`` and
    ``info.app_id`` become ours; the feedback is always applied asynchronously (its task_id reads in /get/status)."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "history": ([],),
        "retrieved_memory_ids": ([],),
        "async_mode": ("async",),
        "corrected_answer": (False,),
    }

    user_id: SafeText = Field(min_length=1, max_length=256)
    feedback_content: SafeText = Field(min_length=1, max_length=20_000)
    session_id: SafeText | None = Field(None, min_length=1, max_length=256, description="our conversation_id")
    task_id: SafeText | None = Field(None, min_length=1, max_length=100, description="names the feedback (retries)")
    feedback_time: SafeText | None = Field(None, max_length=64)
    writable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=10)
    mem_cube_id: CubeId | None = None
    info: Info | None = None
    history: Unused | None = Field(None, max_length=1000)
    retrieved_memory_ids: list[Annotated[SafeText, Field(max_length=256)]] | None = Field(None, max_length=1000)
    async_mode: Literal["sync", "async"] = "async"
    corrected_answer: bool = False

    @model_validator(mode="after")
    def _scope(self) -> ProductFeedbackRequest:
        self.cube()  # several cubes: a 422 now
        return self

    def cube(self) -> str:
        return _one_cube("a feedback revises", self.writable_cube_ids, self.mem_cube_id) or self.user_id

    def ignored(self) -> list[str]:
        rest = set(self.info or {}) - {"agent_id", "app_id"}
        return sorted([*super().ignored(), *(["info"] if rest else [])])

    def to_feedback(self) -> dict[str, Any]:
        info = self.info or {}
        return {
            "user_id": self.cube(),
            "feedback_content": self.feedback_content,
            "conversation_id": self.session_id,
            "feedback_time": self.feedback_time,
            "agent_id": info.get("agent_id") if isinstance(info.get("agent_id"), str) else None,
            "app_id": info.get("app_id") if isinstance(info.get("app_id"), str) else None,
        }


class ProductChatRequest(_ServerRequest):
    """MemOS's APIChatCompleteRequest (/product/chat/complete) onto our ChatRequest (never streamed). A chat reads
    and writes one cube here: readable, writable and mem_cube_id must name the same one (or none: the user_id)."""

    ALIASES: ClassVar[dict[str, str]] = {"base_prompt": "system_prompt"}  # MemOS's deprecated name
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "history": ([],),  # our chat shows the model the conversation's stored turns (session_id) instead
        "mode": ("fast",),  # a chat recalls with the fast search
        "internet_search": (False,),
        "threshold": (),
        "moscube": (False,),
    }

    user_id: SafeText = Field(min_length=1, max_length=256)
    query: SafeText = Field(min_length=1, max_length=4000)
    readable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=10)
    writable_cube_ids: list[CubeId] | None = Field(None, min_length=1, max_length=10)
    mem_cube_id: CubeId | None = None
    session_id: SafeText | None = Field(None, min_length=1, max_length=256, description="our conversation_id")
    system_prompt: SafeText | None = Field(None, max_length=20_000)
    top_k: int | None = Field(None, ge=0, le=100, description="our memory_limit_number")
    include_preference: bool | None = None
    pref_top_k: int | None = Field(None, ge=0, le=50, description="our preference_limit_number")
    model_name_or_path: SafeText | None = Field(None, min_length=1, max_length=256, description="our model_name")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    add_message_on_answer: bool = Field(True, description="MemOS's default: the exchange is added to memory")
    filter: MemosFilter | None = None
    history: Unused | None = Field(None, max_length=1000)
    mode: Literal["fast", "fine", "mixture"] | None = None
    internet_search: bool = False
    threshold: float | None = None
    moscube: bool = False

    @model_validator(mode="after")
    def _scope(self) -> ProductChatRequest:
        self.cube()
        return self

    def cube(self) -> str:
        return (
            _one_cube("a chat reads and writes", self.readable_cube_ids, self.writable_cube_ids, self.mem_cube_id)
            or self.user_id
        )

    def to_chat(self) -> dict[str, Any]:
        return {
            "user_id": self.cube(),
            "query": self.query,
            "conversation_id": self.session_id,
            "system_prompt": self.system_prompt,
            "model_name": self.model_name_or_path,
            "filter": self.filter,
            "add_message_on_answer": self.add_message_on_answer,
            "include_preference": self.include_preference,
            "memory_limit_number": self.top_k,
            "preference_limit_number": self.pref_top_k,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
