"""Message dates the way users send them, turned into one canonical form.

Clients send ``chat_time`` as ISO 8601 ("2023-05-08T13:56:00Z", "2023-05-08"), epoch seconds ("1683554160", or
a JSON number; 12-13 digits are read as milliseconds, what JavaScript's ``Date.now()`` gives), "2025-01-10
09:00:00", LoCoMo's "1:56 pm on 8 May, 2023", or prose such as "May 8, 2023" / "Mon, 8 May 2023 13:56 +0000".
Copied raw into window text and prompts, the same conversation would be indexed differently depending on the
client's format; :func:`render_chat_time` gives every format one text: "Monday 8 May 2023, 1:56 pm".

Decisions:

* No timezone conversion, ever: a date is rendered as the client's wall clock, because converting
  "2023-05-08T23:30-05:00" to UTC would move the message to 9 May. :func:`parse_chat_time` returns a *naive*
  datetime when the input names no zone (as the client meant it) and an *aware* one, with the client's own offset,
  when it does. Epoch values name an instant and no wall clock: they are read in UTC, the only choice that is not
  arbitrary (and the one LoCoMo's epoch variant in the harness uses).
* The rendered text omits the zone: "UTC" or "+02:00" helps neither BM25 nor the embedder, and it would make the
  same moment render differently from a zoneless client.
* Slashed dates: "2023/05/08" is year-month-day. "13/05/2023" and "05/13/2023" are unambiguous and parsed;
  "08/05/2023" (both parts 12 or less, and different) is 8 May in most of the world and 5 August in the US, so it
  is *not* parsed: a wrong guess silently moves a memory by months, while the raw string keeps its tokens.
  Dotted dates ("08.05.2023") are day-first, the only convention that writes them.
* Strict rather than fuzzy: relative or partial dates ("yesterday", "May 2023") and anything with unknown words
  are unparseable, so the raw text is kept rather than a date invented. A weekday given with the date is ignored
  (the rendered one is computed from the date).
* Rendering is in English with names from this module, not ``strftime("%A")``, which follows the process locale.

Pure and cached: rendering runs for every turn of every window shown, on the ingest and on the search path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = {name.lower(): i + 1 for i, name in enumerate(MONTH_NAMES)}
_MONTHS.update({name[:3].lower(): i + 1 for i, name in enumerate(MONTH_NAMES)})
_MONTHS["sept"] = 9
_WEEKDAYS = {d.lower() for d in DAY_NAMES} | {d[:3].lower() for d in DAY_NAMES} | {"tues", "thur", "thurs"}
_FILLERS = {"on", "at", "of", "the"}  # "1:56 pm on 8 May", "May 8 at 9:00", "the 8th of May"

MAX_LEN = 64  # the schema's limit for chat_time: anything longer is not a date we know
_EPOCH = re.compile(r"\d{9,}(?:\.\d+)?")  # 9+ digits: from 1973 on; shorter digit runs are years or yyyymmdd
_EPOCH_MS = 1e11  # seconds beyond this are year 5138: the value is in milliseconds
_EPOCH_MAX = 1e14
# A clock time, with an optional am/pm and zone right after it. Either minutes or am/pm are required, so that the
# "8" of "8 May" is never read as a time; the look-arounds keep it out of "2023-05-08" and "08/05".
_TIME = re.compile(
    r"(?<![\d:/.\-])(?P<h>\d{1,2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.\d+)?)?)?(?![\d:])"
    r"\s*(?P<ampm>[ap]\.?m\.?(?![a-z]))?"
    r"\s*(?P<tz>z(?![a-z])|(?:utc|gmt)?\s*[+-]\d{2}:?\d{2}(?!\d)|utc|gmt)?"
)
_YMD = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})")
_NUMERIC_DMY = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})")
_D_MONTH_Y = re.compile(r"(\d{1,2}) ([a-z]+)\.? (\d{4})")
_MONTH_D_Y = re.compile(r"([a-z]+)\.? (\d{1,2}) (\d{4})")
_CJK_YMD = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]")
_ORDINAL = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)\b")


@dataclass(frozen=True)
class _Parsed:
    when: datetime
    has_time: bool  # "2023-05-08" renders without a time; "2023-05-08T00:00" at 12:00 am


def parse_chat_time(value: str | float) -> datetime | None:
    """The moment a ``chat_time`` names: naive when the input gives no zone, aware (the client's own offset, or
    UTC for epoch values) when it does; ``None`` when the text is not a date this module reads."""
    parsed = _parse(value)
    return parsed.when if parsed else None


def render_chat_time(value: str | float) -> str:
    """ "Monday 8 May 2023, 1:56 pm" (no time when the input had none; no zone, no seconds): words BM25 matches
    ("May", "2023", "Monday") and a natural date for the embedder. The input unchanged when it cannot be parsed."""
    parsed = _parse(value)
    if parsed is None:
        return str(value)
    d = parsed.when
    text = f"{DAY_NAMES[d.weekday()]} {d.day} {MONTH_NAMES[d.month - 1]} {d.year}"
    if parsed.has_time:
        text += f", {d.hour % 12 or 12}:{d.minute:02d} {'am' if d.hour < 12 else 'pm'}"
    return text


def iso_chat_time(value: str | float) -> str:
    """ISO 8601 for machines: "2023-05-08" without a time, "2023-05-08T13:56:00" (plus the offset when the input
    had one); the input unchanged when it cannot be parsed."""
    parsed = _parse(value)
    if parsed is None:
        return str(value)
    if not parsed.has_time:
        return parsed.when.date().isoformat()
    return parsed.when.isoformat(timespec="seconds")


# ---------------------------------------------------------------- parsing


def _parse(value: str | float) -> _Parsed | None:
    if isinstance(value, bool):  # a bool is an int to Python, never a date
        return None
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    return _parse_text(value)


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> _Parsed | None:
    text = " ".join(value.split())
    if not text or len(text) > MAX_LEN:
        return None
    if _EPOCH.fullmatch(text):
        return _from_epoch(float(text))
    if text[:4].isdigit():
        iso = _from_iso(text)
        if iso is not None:
            return iso
    return _from_words(text.lower())


def _from_epoch(seconds: float) -> _Parsed | None:
    if not math.isfinite(seconds) or seconds < 0 or seconds >= _EPOCH_MAX:
        return None  # negative epochs are noise for chat messages, not 1969
    if seconds >= _EPOCH_MS:
        seconds /= 1000
    try:
        return _Parsed(datetime.fromtimestamp(seconds, tz=UTC), True)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(text: str) -> _Parsed | None:
    """The fast path: Python's own ISO 8601 reader (3.11 takes "Z", offsets, a space for "T", basic formats)."""
    upper = text.upper()
    try:
        return _Parsed(datetime.combine(date.fromisoformat(upper), datetime.min.time()), False)
    except ValueError:
        pass
    try:
        return _Parsed(datetime.fromisoformat(upper), True)
    except ValueError:
        return None


def _from_words(text: str) -> _Parsed | None:
    """Everything else: one optional clock time (with am/pm and zone) anywhere, and a date made of what is left."""
    text = re.sub(r"(?<=\d)t(?=\d)", " ", text)  # "2023-05-08t13:56 utc": ISO with a zone name
    clock: tuple[int, int, int, tzinfo | None] | None = None
    rest = text
    for m in _TIME.finditer(text):
        if m.group("mi") is None and m.group("ampm") is None:
            continue  # a bare number: part of the date
        if clock is not None:
            return None  # two times: not a date we can read
        clock = _clock(m)
        if clock is None:
            return None
        rest = f"{text[: m.start()]} {text[m.end() :]}"
    day = _date(rest)
    if day is None:
        return None
    if clock is None:
        return _Parsed(datetime.combine(day, datetime.min.time()), False)
    hour, minute, second, zone = clock
    return _Parsed(datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=zone), True)


def _clock(m: re.Match[str]) -> tuple[int, int, int, tzinfo | None] | None:
    hour, minute, second = int(m.group("h")), int(m.group("mi") or 0), int(m.group("s") or 0)
    ampm = (m.group("ampm") or "").replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None  # "13:56 pm", "0 am"
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        return hour, minute, second, _zone(m.group("tz"))
    except ValueError:
        return None


def _zone(text: str | None) -> tzinfo | None:
    """The zone after a time (None when there is none); ValueError when it is malformed ("+2500")."""
    if not text:
        return None
    text = text.replace(" ", "")
    if text in ("z", "utc", "gmt"):
        return UTC
    m = re.fullmatch(r"(?:utc|gmt)?([+-])(\d{2}):?(\d{2})", text)
    if not m or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise ValueError(text)
    offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-offset if m.group(1) == "-" else offset)


def _date(text: str) -> date | None:
    """A calendar date in one of the known layouts, after fillers and weekdays are dropped; anything left over
    (an unknown word) makes it unparseable."""
    text = _ORDINAL.sub(r"\1", text.replace(",", " "))
    words = [w for w in text.split() if w not in _FILLERS and w.rstrip(".") not in _WEEKDAYS]
    rest = " ".join(words)
    try:
        if m := _YMD.fullmatch(rest):
            return date(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        if m := _CJK_YMD.fullmatch(rest):
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if m := _NUMERIC_DMY.fullmatch(rest):
            return _numeric_dmy(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))
        if m := _D_MONTH_Y.fullmatch(rest):
            month = _MONTHS.get(m.group(2))
            return date(int(m.group(3)), month, int(m.group(1))) if month else None
        if m := _MONTH_D_Y.fullmatch(rest):
            month = _MONTHS.get(m.group(1))
            return date(int(m.group(3)), month, int(m.group(2))) if month else None
    except ValueError:  # 31 June, month 13
        return None
    return None


def _numeric_dmy(first: int, sep: str, second: int, year: int) -> date | None:
    """ "dd.mm.yyyy" is day-first; with "/" or "-" only an unambiguous order is read (see the module docstring)."""
    if sep == "." or second <= 12 < first or first == second:
        return date(year, second, first)
    if first <= 12 < second:
        return date(year, first, second)
    return None
