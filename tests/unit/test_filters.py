"""MemOS's filter object, parsed: what each form means, and every malformed part named by its path."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memos_pipeline.search.filters import MAX_CONDITIONS, Cond, FilterError, Group, is_empty, parse

pytestmark = pytest.mark.unit

UTC = dt.UTC


def day(y: int, m: int, d: int) -> dt.datetime:
    return dt.datetime(y, m, d, tzinfo=UTC)


def test_an_object_is_an_and_of_its_conditions() -> None:
    got = parse({"conversation_id": "c1", "agent_id": {"in": ["a1", "a2"]}, "scene": "chat"})
    assert got == Group(
        "and",
        (
            Cond("conversation_id", "eq", ("c1",)),
            Cond("agent_id", "in", ("a1", "a2")),
            Cond("info.scene", "eq", ("chat",)),
        ),
    )


def test_and_or_nest() -> None:
    got = parse({"or": [{"tags": {"contains": "travel"}}, {"and": [{"memory_type": "UserMemory"}]}]})
    assert got == Group(
        "and",
        (
            Group(
                "or",
                (
                    Group("and", (Cond("tags", "contains", ("travel",)),)),
                    Group("and", (Group("and", (Group("and", (Cond("memory_type", "eq", ("UserMemory",)),)),)),)),
                ),
            ),
        ),
    )


@pytest.mark.parametrize(
    ("given", "op", "bound"),
    [
        ({"gte": "2025-01-01"}, "gte", day(2025, 1, 1)),
        ({"gt": "2025-01-01"}, "gte", day(2025, 1, 2)),  # after the 1st: from the 2nd
        ({"lte": "2025-12-31"}, "lt", day(2026, 1, 1)),  # up to the 31st: the whole 31st
        ({"lt": "2025-12-31"}, "lt", day(2025, 12, 31)),
        ({"lte": "2025-12-31T10:00:00"}, "lte", dt.datetime(2025, 12, 31, 10, tzinfo=UTC)),  # zone-less: UTC
        ({"gt": "2025-06-01T12:00:00+02:00"}, "gt", dt.datetime(2025, 6, 1, 10, tzinfo=UTC)),
        ({"gte": 0}, "gte", dt.datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_time_bounds(given: dict[str, Any], op: str, bound: dt.datetime) -> None:
    (cond,) = parse({"create_time": given}).parts
    assert isinstance(cond, Cond) and (cond.field, cond.op) == ("created_at", op)
    assert cond.values[0] == bound


def test_empty_filters() -> None:
    assert is_empty(parse({}))
    assert not is_empty(parse({"kind": "raw"}))


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("trip", ()),
        ({"and": {"kind": "raw"}}, ("and",)),
        ({"or": []}, ("or",)),
        ({"and": [{"kind": "raw"}, "x"]}, ("and", 1)),
        ({"create_time": "2025-01-01"}, ("create_time",)),
        ({"create_time": {"after": "2025-01-01"}}, ("create_time", "after")),
        ({"create_time": {"gte": "someday"}}, ("create_time", "gte")),
        ({"create_time": {"lte": "9999-12-31"}}, ("create_time", "lte")),
        ({"update_time": {"gte": 1e20}}, ("update_time", "gte")),
        ({"tags": {"contains": []}}, ("tags", "contains")),
        ({"tags": {"has": "x"}}, ("tags", "has")),
        ({"conversation_id": 3}, ("conversation_id", "eq")),
        ({"conversation_id": {"in": "c1"}}, ("conversation_id", "in")),
        ({"conversation_id": {}}, ("conversation_id",)),
        ({"id": "not-a-uuid"}, ("id", "eq")),
        ({"scene": {"nested": 1}}, ("scene", "nested")),
        ({"scene": [1]}, ("scene", "eq")),
        ({"bad key!": 1}, ("bad key!",)),
    ],
)
def test_errors_name_the_part(raw: Any, path: tuple[str | int, ...]) -> None:
    with pytest.raises(FilterError) as err:
        parse(raw)
    assert err.value.path == path, err.value.message


def test_limits() -> None:
    with pytest.raises(FilterError, match="conditions"):
        parse({"or": [{f"k{i}": i} for i in range(MAX_CONDITIONS + 1)]})
    deep: dict[str, Any] = {"kind": "raw"}
    for _ in range(20):
        deep = {"and": [deep]}
    with pytest.raises(FilterError, match="deeper"):
        parse(deep)
