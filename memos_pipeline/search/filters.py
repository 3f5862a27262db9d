"""MemOS's ``filter`` object, parsed and checked at the edge (a 422 naming the part at fault); the data layer
compiles the tree to SQL (:mod:`memos_pipeline.storage.filters`).

A filter is a JSON object of conditions, all of which must hold; ``and`` / ``or`` hold lists of such objects, nested
at will::

    {"conversation_id": "c1"}                         equality: also memory_type, kind, user_id, agent_id, app_id, id
    {"conversation_id": {"in": ["c1", "c2"]}}          one of
    {"tags": {"contains": "travel"}}                   the memory's tags or the tags given with its add (a list: all)
    {"create_time": {"gte": "2025-01-01"}}             time range: gt, gte, lt, lte; also update_time
    {"scene": "chat"}                                  any other name: that key of the add's ``info``
    {"or": [{"agent_id": "a1"}, {"and": [...]}]}

Times are ISO 8601 (a zone-less time is UTC) or epoch seconds; a date alone means the whole day, so
``{"lte": "2025-12-31"}`` includes the 31st. agent_id, app_id, info keys and the add's tags are properties of the
add a memory came from (its ingest; for a later version, its first version's ingest).

Unknown operators, wrong types and bad dates are errors, never skipped: a condition dropped silently would widen a
search, or a delete.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

MAX_DEPTH = 8
MAX_CONDITIONS = 100
MAX_VALUES = 100  # per "in" list

Op = Literal["eq", "in", "contains", "gt", "gte", "lt", "lte"]
Scalar = str | int | float | bool

# Name -> what it is a property of. "row": a column of the memory itself; "ingest": of the add it came from.
ROW_FIELDS = frozenset({"id", "conversation_id", "memory_type", "kind", "user_id"})
INGEST_FIELDS = frozenset({"agent_id", "app_id", "source"})
TIME_FIELDS = {
    "create_time": "created_at",
    "created_at": "created_at",
    "update_time": "updated_at",
    "updated_at": "updated_at",
}
LOGIC = {"and": "and", "or": "or", "AND": "and", "OR": "or"}
_INFO_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_RANGE_OPS: dict[str, Op] = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}


class FilterError(ValueError):
    """A filter that cannot be applied; ``path`` names the part (``("and", 0, "create_time", "gte")``)."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


@dataclass(frozen=True)
class Cond:
    field: str  # a ROW/INGEST/TIME field, "tags", or "info.<key>"
    op: Op
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Group:
    op: Literal["and", "or"]
    parts: tuple[Group | Cond, ...]


Node = Group | Cond


# ---------------------------------------------------------------- parsing (pure)


def parse(raw: Any) -> Group:
    """The filter as a tree, or FilterError. An empty object is an empty AND (it matches everything)."""
    counter = [0]
    return _object(raw, (), 0, counter)


def is_empty(node: Node) -> bool:
    return isinstance(node, Group) and all(is_empty(p) for p in node.parts)


def _object(raw: Any, path: tuple[str | int, ...], depth: int, counter: list[int]) -> Group:
    if not isinstance(raw, dict):
        raise FilterError(path, f"expected an object of conditions, got {_kind(raw)}")
    if depth > MAX_DEPTH:
        raise FilterError(path, f"nested deeper than {MAX_DEPTH} levels")
    parts: list[Node] = []
    for key, value in raw.items():
        here = (*path, key)
        if key in LOGIC:
            if not isinstance(value, list) or not value:
                raise FilterError(here, f"expected a non-empty list of filter objects, got {_kind(value)}")
            subs = tuple(_object(v, (*here, i), depth + 1, counter) for i, v in enumerate(value))
            parts.append(Group("and" if LOGIC[key] == "and" else "or", subs))
        else:
            counter[0] += 1
            if counter[0] > MAX_CONDITIONS:
                raise FilterError(path, f"more than {MAX_CONDITIONS} conditions")
            parts.extend(_conditions(key, value, here))
    return Group("and", tuple(parts))


def _conditions(key: str, value: Any, path: tuple[str | int, ...]) -> list[Cond]:
    if key in TIME_FIELDS:
        return _time(TIME_FIELDS[key], value, path)
    if key == "tags":
        ops = _operators(value, path, ("contains",), default="contains")
        out = []
        for op, v in ops.items():
            tags = v if isinstance(v, list) else [v]
            if not tags or not all(isinstance(t, str) and t for t in tags) or len(tags) > MAX_VALUES:
                raise FilterError((*path, op), "expected a tag or a non-empty list of tags")
            out.append(Cond("tags", "contains", tuple(tags)))
        return out
    if key in ROW_FIELDS or key in INGEST_FIELDS:
        name = key
    elif _INFO_KEY.match(key):
        name = f"info.{key}"
    else:
        raise FilterError(path, "not a filter field (letters, digits, _ . - only)")
    out = []
    for op, v in _operators(value, path, ("eq", "in"), default="eq").items():
        values = v if op == "in" else [v]
        if op == "in" and (not isinstance(v, list) or not v or len(v) > MAX_VALUES):
            raise FilterError((*path, op), f"expected a non-empty list of at most {MAX_VALUES} values")
        checked = tuple(_scalar(x, name, (*path, op)) for x in values)
        out.append(Cond(name, "eq" if op == "eq" else "in", checked))
    return out


def _operators(value: Any, path: tuple[str | int, ...], allowed: tuple[str, ...], default: str) -> dict[str, Any]:
    """``{"op": v, ...}`` as a dict; a bare value is ``{default: value}``."""
    if not isinstance(value, dict):
        return {default: value}
    if not value:
        raise FilterError(path, f"expected an operator ({', '.join(allowed)})")
    for op in value:
        if op not in allowed:
            raise FilterError((*path, op), f"unknown operator; use one of {', '.join(allowed)}")
    return value


def _scalar(value: Any, name: str, path: tuple[str | int, ...]) -> Scalar:
    if name == "id":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise FilterError(path, "expected a memory id (UUID)") from None
    if name.startswith("info."):
        ok = isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value))
        if not ok:
            raise FilterError(path, f"expected a string, number or boolean, got {_kind(value)}")
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or not value or len(value) > 256:
        raise FilterError(path, f"expected a string of 1 to 256 characters, got {_kind(value)}")
    return value


def _time(column: str, value: Any, path: tuple[str | int, ...]) -> list[Cond]:
    if not isinstance(value, dict) or not value:
        raise FilterError(path, 'expected a range such as {"gte": "2025-01-01", "lt": "2025-02-01"}')
    out = []
    for given, v in value.items():
        if given not in _RANGE_OPS:
            raise FilterError((*path, given), f"unknown operator; use one of {', '.join(_RANGE_OPS)}")
        bound, whole_day = _instant(v, (*path, given))
        op = _RANGE_OPS[given]
        # A date alone is the whole day: "after the 1st" starts on the 2nd, "up to the 31st" ends with it.
        if whole_day and op in ("gt", "lte"):
            if bound.year == dt.MAXYEAR:
                raise FilterError((*path, given), "date out of range")
            bound += dt.timedelta(days=1)
            op = "gte" if op == "gt" else "lt"
        out.append(Cond(column, op, (bound,)))
    return out


def _instant(value: Any, path: tuple[str | int, ...]) -> tuple[dt.datetime, bool]:
    """(the instant, whether it was a date alone)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise FilterError(path, "epoch seconds out of range")
        return dt.datetime.fromtimestamp(value, dt.UTC), False
    if not isinstance(value, str) or len(value) > 64:
        raise FilterError(path, f"expected an ISO 8601 date or time, or epoch seconds, got {_kind(value)}")
    text = value.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC), True
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(path, f"not an ISO 8601 date or time: {text[:40]!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)), False


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
