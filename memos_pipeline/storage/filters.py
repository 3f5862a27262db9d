"""MemOS's ``filter`` (parsed by :mod:`memos_pipeline.search.filters`) as a WHERE clause over memories or
preferences. Properties of the add a row came from (agent_id, app_id, source, info keys, the add's tags) are read
from the tenant's own ingests only, so a filter can never reach another tenant's rows.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.orm import QueryableAttribute

from memos_pipeline.search.filters import INGEST_FIELDS, Cond, Group, Node
from memos_pipeline.storage.models import Ingest, Memory, Preference

Col = ColumnElement[Any] | QueryableAttribute[Any]  # an ORM column or a SQL expression
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True)
class Target:
    """The columns a filter reads, for one table (memories or preferences)."""

    id: Col
    user_id: Col
    conversation_id: Col
    created_at: Col
    updated_at: Col
    memory_type: Col
    kind: Col | str  # a column, or the one kind every row of the table is
    tags: Col | None
    origin: Col  # the ingest (add) the row came from


def memory_target() -> Target:
    # A version written by /update/memory has no ingest of its own; origin_ingest_id keeps its first version's.
    return Target(
        Memory.id,
        Memory.user_id,
        Memory.conversation_id,
        Memory.created_at,
        Memory.updated_at,
        Memory.memory_type,
        Memory.kind,
        Memory.tags,
        func.coalesce(Memory.ingest_id, Memory.origin_ingest_id),
    )


def preference_target() -> Target:
    # Preferences are not versioned and have no tags of their own: the add's tags stand for them.
    return Target(
        Preference.id,
        Preference.user_id,
        Preference.conversation_id,
        Preference.created_at,
        Preference.updated_at,
        Preference.preference_type,
        "preference",
        None,
        Preference.ingest_id,
    )


def compile_filter(node: Node, target: Target, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The filter as a WHERE clause over ``target``'s table; properties of the add are read from the tenant's own
    ingests only."""
    if isinstance(node, Group):
        parts = [compile_filter(p, target, tenant_id) for p in node.parts]
        if not parts:
            return true()
        return and_(*parts) if node.op == "and" else or_(*parts)
    return _cond(node, target, tenant_id)


def _from_add(target: Target, tenant_id: uuid.UUID, *documents: dict[str, Any]) -> ColumnElement[bool]:
    """The row's add (ingest) has one of these in its stored request (jsonb containment)."""
    match = or_(*(Ingest.request.contains(d) for d in documents))
    return target.origin.in_(select(Ingest.id).where(Ingest.tenant_id == tenant_id, match))


def _cond(c: Cond, target: Target, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    if c.field in ("created_at", "updated_at"):
        return _COMPARE[c.op](getattr(target, c.field), c.values[0])  # type: ignore[no-any-return]
    if c.field == "tags":
        tags = list(c.values)
        from_add = _from_add(target, tenant_id, {"tags": tags})
        return from_add if target.tags is None else or_(target.tags.contains(tags), from_add)
    if c.field in INGEST_FIELDS:
        return _from_add(target, tenant_id, *({c.field: v} for v in c.values))
    if c.field.startswith("info."):
        key = c.field.removeprefix("info.")
        return _from_add(target, tenant_id, *({"info": {key: v}} for v in c.values))
    col = getattr(target, c.field)
    if isinstance(col, str):  # a constant (the kind of every preference)
        return true() if col in c.values else false()
    if c.field == "id":
        return col.in_([uuid.UUID(v) for v in c.values])
    return col.in_(list(c.values)) if len(c.values) > 1 else col == c.values[0]
