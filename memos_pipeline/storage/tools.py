"""Tool memory rows: an add's tool calls and their results (memos_pipeline/text/tools.py), one memory each, of kind
``tool`` in the user's tool scope (``tool:<user_id>``).

A scope of their own, as a knowledge base has (storage/knowledgebases.py): the unchanged recall never mixes them
into ``memory_detail_list``, and a search with ``include_tool_memory`` reads them with one more fast search of that
scope. The events are made at accept time (no LLM; pure) and kept, with the add's agent, app, tags and info, in an
ingest of their own (stages ``tools`` and ``indexer``), committed in the add's transaction with its outbox row:
durable like the add, resumed by the sweeper like any ingest. ``origin_ingest_id`` names the add.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from memos_pipeline.ingest import lifecycle
from memos_pipeline.schemas import AddRequest
from memos_pipeline.storage import ingests, knowledgebases
from memos_pipeline.storage.ingests import Accepted
from memos_pipeline.storage.models import Ingest
from memos_pipeline.text.tools import ToolEvent

SCOPE_PREFIX = "tool:"
TOOL_KIND = "tool"
TOOL_TYPE = "ToolMemory"
USER_ID_MAX = 256  # memories.user_id and ingests.user_id


def scope(user_id: str) -> str:
    """The ``user_id`` a user's tool memories are stored and searched under. It must fit the column (256) that the
    user id alone may fill: a long id is named by its hash instead (the same one on every call)."""
    plain = f"{SCOPE_PREFIX}{user_id}"
    return (
        plain if len(plain) <= USER_ID_MAX else f"{SCOPE_PREFIX}sha256:{hashlib.sha256(user_id.encode()).hexdigest()}"
    )


def accept_tools(
    session: Session, tenant_id: uuid.UUID, req: AddRequest, add: Accepted, events: list[ToolEvent], trace_id: str
) -> Accepted:
    """The tool ingest of an add just accepted, in the add's transaction: its events, ingest row and outbox row."""
    meta = {k: v for k, v in req.model_dump(include={"agent_id", "app_id", "source", "tags", "info"}).items() if v}
    return ingests.open_ingest(
        session,
        tenant_id,
        scope(req.user_id),
        req.conversation_id,
        trace_id=trace_id,
        stages=lifecycle.document_stages(lifecycle.TOOLS),
        task_name=lifecycle.STAGE_TASKS[lifecycle.TOOLS],
        payload=lambda ingest_id: lifecycle.stage_payload(lifecycle.TOOLS, ingest_id),
        request={
            **meta,
            "add_ingest_id": str(add.ingest_id),
            "events": [{**e.info(), "idx": e.idx, "text": e.text()} for e in events],
        },
    )


def upsert_tool_memories(session: Session, ingest: Ingest, rows: Sequence[dict[str, Any]]) -> int:
    """Insert tool memories (keyed by ingest and event: a redelivered task writes nothing twice); their origin is
    the add, whose agent, app and info the search's filters read."""
    origin = ingest.request.get("add_ingest_id")
    return knowledgebases.upsert_passages(
        session,
        ingest,
        rows,
        kind=TOOL_KIND,
        memory_type=TOOL_TYPE,
        origin_ingest_id=uuid.UUID(origin) if origin else None,
    )


def tool_item(item: dict[str, Any]) -> dict[str, Any]:
    """A tool memory as search returns it: the memory item, with the event's fields beside (MemOS's tool memory)."""
    info = item.get("info") or {}
    fields = ("tool_name", "tool_input", "tool_result", "success", "time", "tool_call_id")
    return {**item, **{k: info.get(k) for k in fields}}
