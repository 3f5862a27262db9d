"""Time expressions in questions and memories (search/temporal.py): pure functions, no services."""

from __future__ import annotations

from datetime import date

import pytest

from memos_pipeline.search.temporal import (
    DateRange,
    asks_when,
    boost,
    memory_dates,
    mentions_time,
    query_range,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("query", "start", "end"),
    [
        ("What did Gina find for her clothing store on 1 February, 2023?", date(2023, 2, 1), date(2023, 2, 1)),
        ("What project is Joanna working on on November 9, 2022?", date(2022, 11, 9), date(2022, 11, 9)),
        ("What did Maria do on the 7th of July 2023?", date(2023, 7, 7), date(2023, 7, 7)),
        ("Who joined Nate's family in May 2022?", date(2022, 5, 1), date(2022, 5, 31)),
        ("What happened in December 2023?", date(2023, 12, 1), date(2023, 12, 31)),
        ("Where did they travel in 2021?", date(2021, 1, 1), date(2021, 12, 31)),
        ("Notes from 2024-02-29", date(2024, 2, 29), date(2024, 2, 29)),
    ],
)
def test_query_range_absolute(query: str, start: date, end: date) -> None:
    assert query_range(query) == DateRange(start, end)


def test_query_range_none_or_impossible() -> None:
    assert query_range("What does Caroline like to paint?") is None
    assert query_range("What did she do on 31 June, 2023?") is None
    assert query_range("I may go there") is None  # "may" alone is a verb, not a month
    assert query_range("What did John do last year?") is None  # relative: needs an anchor


def test_query_range_relative_to_the_anchor() -> None:
    anchor = date(2023, 5, 8)  # a Monday
    assert query_range("what did she do yesterday?", anchor) == DateRange(date(2023, 5, 7), date(2023, 5, 7))
    assert query_range("plans from last week", anchor) == DateRange(date(2023, 5, 1), date(2023, 5, 7))
    assert query_range("what happened last month", anchor) == DateRange(date(2023, 4, 1), date(2023, 4, 30))
    assert query_range("trips last year", anchor) == DateRange(date(2022, 1, 1), date(2022, 12, 31))
    assert query_range("last month", date(2023, 1, 15)) == DateRange(date(2022, 12, 1), date(2022, 12, 31))


def test_asks_when() -> None:
    assert asks_when("When did Caroline go to the LGBTQ support group?")
    assert asks_when("How long ago was Melanie's wedding?")
    assert asks_when("In what year did John start surfing? What year was it")
    assert not asks_when("What does Caroline like to paint?")
    assert not asks_when("Where did they go after the wedding?")


def test_mentions_time_ignores_the_window_date_line() -> None:
    assert mentions_time("[Monday 8 May 2023, 1:56 pm]\nCaroline: I went to a support group yesterday.")
    assert mentions_time("Melanie: We got married 5 years ago.")
    assert not mentions_time("[Monday 8 May 2023, 1:56 pm]\nCaroline: I love painting sunsets.")


def test_memory_dates_from_info() -> None:
    info = {"chat_time_start": "2023-05-25T13:14:00", "chat_time_end": "2023-06-09T19:55:00"}
    assert memory_dates(info) == (date(2023, 5, 25), date(2023, 6, 9))
    assert memory_dates({"chat_time_start": "2023-05-25"}) == (date(2023, 5, 25), date(2023, 5, 25))
    assert memory_dates({}) is None
    assert memory_dates({"chat_time_start": "1:56 pm on 8 May"}) is None


def test_boost_adds_the_bonuses_only_where_they_apply() -> None:
    mems = {
        "in_may": ({"chat_time_start": "2022-05-10T10:00:00"}, "Nate: We adopted a puppy!"),
        "says_when": ({"chat_time_start": "2022-08-10"}, "Nate: We adopted her two weeks ago."),
        "neither": ({"chat_time_start": "2022-08-10"}, "Nate: She loves the park."),
    }
    scores = {"in_may": 0.5, "says_when": 0.5, "neither": 0.5}
    out = boost(scores, "Who was the new addition in May 2022?", mems.get, date_bonus=0.1, when_bonus=0.05)
    assert out == {"in_may": pytest.approx(0.6), "says_when": 0.5, "neither": 0.5}
    out = boost(scores, "When did Nate adopt the dog?", mems.get, date_bonus=0.1, when_bonus=0.05)
    assert out == {"in_may": 0.5, "says_when": pytest.approx(0.55), "neither": 0.5}
    assert boost(scores, "What does Nate cook?", mems.get, date_bonus=0.1, when_bonus=0.05) is scores
    # "last month" resolved against the latest candidate (10 August 2022): July 2022, which no candidate is in
    out = boost(scores, "What did Nate do last month?", mems.get, date_bonus=0.1, when_bonus=0.05, relative=True)
    assert out == scores
    out = boost(scores, "What did Nate do this month?", mems.get, date_bonus=0.1, when_bonus=0.05, relative=True)
    assert out == {"in_may": 0.5, "says_when": pytest.approx(0.6), "neither": pytest.approx(0.6)}
