"""MemOS's open-source server routes (MemTensor/MemOS ``routers/server_router.py``): ``/product/add``, ``/search``,
``/get_memory``, ``/get_all``, ``/delete_memory``, ``/feedback`` and ``/chat/complete``, as thin adapters.

Each validates MemOS's server body (memos_pipeline/product_schemas.py, which also says how cubes map to our users),
maps it onto our own request model and runs the code of our route (api/ingest.py, search.py, memories.py,
feedback.py, assist.py), then answers in MemOS's server shape: ``{"code": 200, "message": ..., "data": ...}`` with
``data`` as MemOS's server puts it (a list for add/feedback/get_all, ``text_mem``/``pref_mem`` lists of
``{cube_id, memories}`` for search and get_memory). Memory items keep our fields and add MemOS's ``memory``,
``ref_id`` and ``metadata``. What MemOS's shape has no place for (the task_id of an add, the fields ignored) goes
beside ``data``: ``task_id`` and ``detail`` (our route's whole answer). Errors are our usual ones (422 naming the
field, 503 without an LLM, ...).

/product/scheduler/status and /product/scheduler/wait are api/scheduler.py's routes under the /product prefix.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ValidationError

from api import assist, feedback, ingest, memories, search
from api.common import body, settings
from api.errors import validation_error
from memos_pipeline.product_schemas import (
    ProductAddRequest,
    ProductChatRequest,
    ProductDeleteRequest,
    ProductFeedbackRequest,
    ProductGetAllRequest,
    ProductGetMemoryRequest,
    ProductSearchRequest,
)
from memos_pipeline.schemas import (
    AddRequest,
    ChatRequest,
    DeleteMemoryRequest,
    FeedbackRequest,
    GetMemoryRequest,
    SearchRequest,
)

bp = Blueprint("product", __name__)

M = TypeVar("M", bound=BaseModel)
EXPORT_PAGE = 200  # the largest page of /get/memory
EXPORT_MAX = 10_000  # memories one /product/get_memory without paging returns (data says when there were more)
GET_ALL_MAX = 200  # MemOS's get_all shows about 200 memories (its tree's target size); so do we
SUBGRAPH_TOP_K = 100  # get_all with a search_query: the best this many (MemOS asks for 200; our search stops at 100)


def server_ok(data: Any, message: str, status: int = 200, **beside: Any) -> tuple[Response, int]:
    """MemOS's server envelope: its BaseResponse's code is 200 (ours is 0); keys beside data are ours."""
    return jsonify({"code": 200, "message": message, "data": data, **beside}), status


def _ours(model: type[M], data: dict[str, Any], context: dict[str, Any] | None = None) -> M:
    """Our request model from the mapped body; a failure is the same 422 as on our own route."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _limits() -> dict[str, Any]:
    cfg = settings()
    return {"max_messages": cfg.max_messages_per_add, "max_content_chars": cfg.max_content_chars}


def server_item(item: dict[str, Any], cube: str) -> dict[str, Any]:
    """One of our memory items as MemOS's server formats a memory: ``memory`` and ``metadata`` added."""
    text = item.get("memory_value") if "memory_value" in item else item.get("preference")
    metadata = {
        "id": item["id"],
        "memory": text,
        "user_id": cube,
        "session_id": item.get("conversation_id"),
        "status": item.get("status", "activated"),
        "type": item.get("kind", "preference" if "preference" in item else None),
        "key": item.get("memory_key"),
        "memory_type": item.get("memory_type") or item.get("preference_type"),
        "tags": item.get("tags", []),
        "sources": item.get("sources", []),
        "info": item.get("info", {}),
        "relativity": item.get("relativity"),
        "created_at": item.get("create_time"),
        "updated_at": item.get("update_time", item.get("create_time")),
        "embedding": [],  # MemOS empties it too
    }
    return {**item, "memory": text, "ref_id": f"[{item['id'].split('-')[0]}]", "metadata": metadata}


# ---------------------------------------------------------------- add


@bp.post("/add")
def add() -> tuple[Response, int]:
    req = body(ProductAddRequest, _limits())
    ours = _ours(AddRequest, req.to_add(), _limits())
    # MemOS's task_id names the add: the same one again is a retry, stored once (as an Idempotency-Key is).
    key = ingest.idempotency_key() or (f"product-add:{req.task_id}" if req.task_id else None)
    data, status = ingest.accept(settings(), ours, key)
    data["ignored"] = sorted({*req.ignored(), *data["ignored"]})
    cube = ours.user_id
    # MemOS answers the memories the add made (sync) as {memory, memory_id, memory_type}; async: none yet.
    added = [
        {**server_item(m, cube), "memory_id": m["id"], "memory_type": m["memory_type"]}
        for m in data.get("memory_detail_list", [])
    ]
    return server_ok(added, "Memory added successfully", status, task_id=data["task_id"], detail=data)


# ---------------------------------------------------------------- search


@bp.post("/search")
def search_memories() -> tuple[Response, int]:
    req = body(ProductSearchRequest)
    cfg = settings()
    text_mem: list[dict[str, Any]] = []
    pref_mem: list[dict[str, Any]] = []
    tool_mem: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    ignored = set(req.ignored())
    note = ""
    # One search per readable cube, each our /search/memory's own path (a cube is a user_id).
    for cube in req.cubes():
        out = search.run(cfg, _ours(SearchRequest, req.to_search(cube)))
        text_mem.append({"cube_id": cube, "memories": [server_item(m, cube) for m in out["memory_detail_list"]]})
        if req.include_preference:
            prefs = [server_item(p, cube) for p in out["preference_detail_list"]]
            pref_mem.append({"cube_id": cube, "memories": prefs})
        if req.search_tool_memory:  # our search answers them under tool_memory_detail_list (api/search.py)
            tools = [server_item(t, cube) for t in out.get("tool_memory_detail_list", [])]
            tool_mem.append({"cube_id": cube, "memories": tools})
        note = note or out["preference_note"]
        info[cube] = out["search"]
        ignored.update(out["ignored"])
    data = {
        "text_mem": text_mem,
        "act_mem": [],
        "para_mem": [],
        "pref_mem": pref_mem,
        "pref_note": note,  # a string, never null (as MemOS answers it)
        "tool_mem": tool_mem,
        "skill_mem": [],
        "search": info,
        "ignored": sorted(ignored),
    }
    return server_ok(data, "Search completed successfully")


# ---------------------------------------------------------------- get_memory, get_all


@bp.post("/get_memory")
def get_memories() -> tuple[Response, int]:
    req = body(ProductGetMemoryRequest)
    cube = req.cube()
    page, size = (1, EXPORT_PAGE) if req.export else (req.page or 1, req.page_size or 20)
    nodes: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    while True:
        out = memories.memory_page(_ours(GetMemoryRequest, req.to_get(page, size)))
        nodes += out["memory_detail_list"]
        prefs += out.get("preference_detail_list", [])
        pref_total = out.get("preference_total", 0)
        # Without page and page_size MemOS exports everything: pages of ours until both lists are whole.
        if not req.export or page * size >= max(out["total"], pref_total) or len(nodes) >= EXPORT_MAX:
            break
        page += 1
    data: dict[str, Any] = {
        "text_mem": [
            {
                "cube_id": cube,
                "memories": {"nodes": [server_item(m, cube) for m in nodes], "edges": []},
                "total_nodes": out["total"],
                "total_edges": 0,
            }
        ],
        "pref_mem": (
            [{"cube_id": cube, "memories": [server_item(p, cube) for p in prefs], "total_nodes": pref_total}]
            if req.include_preference
            else []
        ),
        "page": None if req.export else page,
        "page_size": None if req.export else size,
        "truncated": len(nodes) < out["total"] if req.export else False,
        "ignored": sorted({*req.ignored(), *out["ignored"]}),
    }
    if req.include_tool_memory:
        data["tool_mem"] = []
    return server_ok(data, "Memories retrieved successfully")


@bp.post("/get_all")
def get_all_memories() -> tuple[Response, int]:
    req = body(ProductGetAllRequest)
    cube = req.cube()
    detail: dict[str, Any] = {"ignored": req.ignored()}
    if req.memory_type != "text_mem":
        # Activation and parametric memories: MemOS answers none either (not implemented there).
        return server_ok([], "Memories retrieved successfully", detail=detail)
    if req.search_query:
        query = {"user_id": cube, "query": req.search_query, "top_k": SUBGRAPH_TOP_K, "include_preference": False}
        found = search.run(settings(), _ours(SearchRequest, query))["memory_detail_list"]
        detail["total"] = len(found)
    else:
        out = memories.memory_page(
            _ours(GetMemoryRequest, {"user_id": cube, "size": GET_ALL_MAX, "include_preference": False})
        )
        found, detail["total"] = out["memory_detail_list"], out["total"]
    nodes = [server_item(m, cube) for m in found]
    data = [
        {
            "cube_id": cube,
            "memories": [{"nodes": nodes, "edges": []}],
            "memory_statistics": dict(Counter(m["memory_type"] for m in found)),
        }
    ]
    return server_ok(data, "Memories retrieved successfully", detail=detail)


# ---------------------------------------------------------------- delete_memory


@bp.post("/delete_memory")
def delete_memories() -> tuple[Response, int]:
    req = body(ProductDeleteRequest)
    deleted: list[str] = []
    deleted_prefs: list[str] = []
    for one in req.to_deletes():  # one delete per writable cube, each our /delete/memory's own path
        out = memories.delete(_ours(DeleteMemoryRequest, one))
        deleted += out["deleted"]
        deleted_prefs += out["deleted_preferences"]
    gone = {*deleted, *deleted_prefs}
    data = {
        "status": "success",
        "deleted": deleted,
        "deleted_preferences": deleted_prefs,
        "not_found": sorted({str(i) for i in req.memory_ids or ()} - gone),
        "ignored": req.ignored(),
    }
    return server_ok(data, "Memories deleted successfully")


# ---------------------------------------------------------------- feedback, chat/complete


@bp.post("/feedback")
def feedback_memories() -> tuple[Response, int]:
    req = body(ProductFeedbackRequest)
    ours = _ours(FeedbackRequest, req.to_feedback())
    key = ingest.idempotency_key() or (f"product-feedback:{req.task_id}" if req.task_id else None)
    data = feedback.accept(settings(), ours, key)
    data["ignored"] = sorted({*req.ignored(), *data["ignored"]})
    # MemOS answers the memories changed (a list); ours are changed later by the memreader: see /get/status.
    return server_ok([], "Feedback accepted", 202, task_id=data["task_id"], detail=data)


@bp.post("/chat/complete")
def chat_complete() -> tuple[Response, int]:
    req = body(ProductChatRequest)
    ours = _ours(ChatRequest, req.to_chat())
    data = assist.chat_complete(settings(), ours, assist._idempotency_key())
    data["ignored"] = sorted({*req.ignored(), *data["ignored"]})
    cube = ours.user_id
    data["references"] = [server_item(m, cube) for m in data["memory_detail_list"]]
    return server_ok(data, "Chat completed successfully")
