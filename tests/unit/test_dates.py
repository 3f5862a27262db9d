"""chat_time in every format users send, read and rendered one way (memos_pipeline/text/dates.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from evaluation.locomo import session_date
from memos_pipeline.stages.prompts import render_for_llm
from memos_pipeline.text.chunking import Turn, window_turns
from memos_pipeline.text.dates import iso_chat_time, parse_chat_time, render_chat_time

pytestmark = pytest.mark.unit

MOMENT = datetime(2023, 5, 8, 13, 56)  # LoCoMo's first session: "1:56 pm on 8 May, 2023"
RENDERED = "Monday 8 May 2023, 1:56 pm"
# The same wall clock in every format with a time; the epoch value is that wall clock in UTC.
SAME_MOMENT: list[str | float] = [
    "1:56 pm on 8 May, 2023",  # LoCoMo
    "1:56pm on 8 May 2023",
    "1:56 PM on May 8th, 2023",
    "2023-05-08T13:56:00Z",
    "2023-05-08T13:56:00.000Z",
    "2023-05-08T13:56Z",
    "2023-05-08t13:56:00z",
    "2023-05-08T13:56:00+00:00",
    "2023-05-08T13:56:00",
    "2023-05-08 13:56:00",
    "2023-05-08 13:56",
    "2023-05-08 13:56:00 UTC",
    "2023/05/08 13:56",
    "1683554160",  # epoch seconds
    "1683554160.0",
    1683554160,
    1683554160.0,
    "1683554160000",  # epoch milliseconds (JavaScript's Date.now())
    "Mon, 08 May 2023 13:56:00 +0000",  # RFC 2822
    "Monday, May 8, 2023 at 1:56 pm",
    "8 May 2023 13:56",
    "08.05.2023 13:56",
    "2023年5月8日 13:56",
    RENDERED,  # our own output reads back
]
# The same day without a time.
SAME_DAY = [
    "2023-05-08",
    "20230508",
    "May 8, 2023",
    "8 May 2023",
    "8 May, 2023",
    "Mon 8 May 2023",
    "the 8th of May 2023",
]
UNPARSEABLE = [
    "",
    "   ",
    "yesterday",
    "next Friday",
    "May 2023",  # no day: not invented
    "08/05/2023",  # 8 May or 5 August: ambiguous, kept raw
    "2023-02-30",
    "13:56 pm on 8 May 2023",
    "25:00 on 8 May 2023",
    "1:56 pm on 8 Mayo 2023",
    "9:00 - 10:00 on 8 May 2023",  # two times
    "2023-05-08 13:56 +2500",
    "-1683554160",
    "x" * 100,
]


def wall_clock(d: datetime) -> datetime:
    return d.replace(tzinfo=None)


@pytest.mark.parametrize("value", SAME_MOMENT, ids=repr)
def test_every_format_reads_the_same_moment_and_renders_the_same_text(value: str | float) -> None:
    parsed = parse_chat_time(value)
    assert parsed is not None
    assert wall_clock(parsed) == MOMENT
    assert render_chat_time(value) == RENDERED


def test_zoned_formats_name_the_same_instant() -> None:
    instants = {parse_chat_time(v) for v in ("2023-05-08T13:56:00Z", "1683554160", 1683554160, "1683554160000")}
    assert instants == {datetime(2023, 5, 8, 13, 56, tzinfo=UTC)}


def test_naive_when_no_zone_aware_when_one_is_given() -> None:
    # Naive = the client's wall clock; aware keeps the client's offset, never converted (the date would shift).
    assert parse_chat_time("1:56 pm on 8 May, 2023") == MOMENT
    late = parse_chat_time("2023-05-08T23:30:00-05:00")
    assert late is not None and late.utcoffset() == -timedelta(hours=5)
    assert render_chat_time("2023-05-08T23:30:00-05:00") == "Monday 8 May 2023, 11:30 pm"
    plus_two = parse_chat_time("Mon, 08 May 2023 15:56 +0200")
    assert plus_two == datetime(2023, 5, 8, 15, 56, tzinfo=timezone(timedelta(hours=2)))
    assert plus_two == parse_chat_time("1683554160")  # the same instant


@pytest.mark.parametrize("value", SAME_DAY)
def test_a_date_without_time_renders_without_time(value: str) -> None:
    assert parse_chat_time(value) == datetime(2023, 5, 8)
    assert render_chat_time(value) == "Monday 8 May 2023"
    assert iso_chat_time(value) == "2023-05-08"


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("12:09 am on 13 September, 2023", "Wednesday 13 September 2023, 12:09 am"),  # midnight hour
        ("12:00 pm on 1 January, 2024", "Monday 1 January 2024, 12:00 pm"),  # noon
        ("2025-01-10 09:00:00", "Friday 10 January 2025, 9:00 am"),
        ("2023-05-08 13:56:59", RENDERED),  # seconds are not rendered
        ("9 am on 8 Sept 2023", "Friday 8 September 2023, 9:00 am"),
        ("13/05/2023", "Saturday 13 May 2023"),  # day-first, unambiguous
        ("05/13/2023", "Saturday 13 May 2023"),  # month-first, unambiguous
        ("05/05/2023", "Friday 5 May 2023"),  # either order
    ],
)
def test_rendering(value: str, rendered: str) -> None:
    assert render_chat_time(value) == rendered


@pytest.mark.parametrize("value", UNPARSEABLE, ids=repr)
def test_unparseable_falls_back_to_the_raw_text(value: str) -> None:
    assert parse_chat_time(value) is None
    assert render_chat_time(value) == value
    assert iso_chat_time(value) == value


def test_iso_for_metadata() -> None:
    assert iso_chat_time("1:56 pm on 8 May, 2023") == "2023-05-08T13:56:00"
    assert iso_chat_time("1683554160") == "2023-05-08T13:56:00+00:00"
    assert iso_chat_time("2023-05-08T23:30-05:00") == "2023-05-08T23:30:00-05:00"


# ---------------------------------------------------------------- where chat_time enters text

LOCOMO_SESSIONS = [
    ("1:56 pm on 8 May, 2023", ["Hey Mel! I went to a LGBTQ support group yesterday.", "Wow, how was it?"]),
    ("1:14 pm on 25 May, 2023", ["I ran a charity race last Saturday.", "That's great!", "Thanks!"]),
    ("12:09 am on 13 September, 2023", ["Up late again.", "Me too."]),
]


def conversation(date_format: str) -> list[Turn]:
    out = []
    for s, (date, texts) in enumerate(LOCOMO_SESSIONS):
        for i, text in enumerate(texts):
            speaker = ("Caroline", "Melanie")[i % 2]
            out.append(Turn(f"{s}-{i}", f"D{s}:{i}", "user", text, speaker, session_date(date, date_format)))
    return out


def test_the_same_conversation_gives_the_same_windows_whatever_the_date_format() -> None:
    sent = {f: conversation(f) for f in ("locomo", "iso", "epoch")}
    assert sent["iso"][0].chat_time == "2023-05-08T13:56:00Z"
    assert sent["epoch"][0].chat_time == "1683554160"
    windows = {f: window_turns(turns, size=3, overlap=1) for f, turns in sent.items()}
    texts = {f: [w.text for w in ws] for f, ws in windows.items()}
    assert texts["locomo"] == texts["iso"] == texts["epoch"]
    assert texts["locomo"][0].startswith(f"[{RENDERED}]\nCaroline: Hey Mel!")
    assert "[Thursday 25 May 2023, 1:14 pm]" in texts["locomo"][1]
    # The turns keep what the client sent (GET /get/message returns it); the window metadata is ISO.
    assert windows["locomo"][0].turns[0].chat_time == "1:56 pm on 8 May, 2023"
    assert windows["locomo"][0].info["chat_time_start"] == "2023-05-08T13:56:00"
    prompts = {f: render_for_llm(turns) for f, turns in sent.items()}
    assert prompts["locomo"] == prompts["iso"] == prompts["epoch"]
    assert prompts["locomo"].startswith(f"[m0] ({RENDERED}) Caroline:")


def test_a_date_line_only_where_the_rendered_date_changes() -> None:
    # Differently written, the same minute: one date line, not two.
    turns = [
        Turn("a", "a", "user", "hi", chat_time="2023-05-08 13:56:00"),
        Turn("b", "b", "user", "again", chat_time="2023-05-08T13:56:30Z"),
        Turn("c", "c", "user", "?", chat_time="not a date"),
    ]
    (w,) = window_turns(turns, size=3, overlap=1)
    assert w.text == f"[{RENDERED}]\nuser: hi\nuser: again\n[not a date]\nuser: ?"


def test_session_date_rejects_what_it_cannot_convert() -> None:
    assert session_date("", "epoch") == ""
    assert session_date("whenever", "locomo") == "whenever"
    with pytest.raises(ValueError, match="cannot convert"):
        session_date("whenever", "iso")
    with pytest.raises(ValueError, match="unknown date format"):
        session_date("1:56 pm on 8 May, 2023", "rfc")
