"""Calendar dates as the storage layout writes them: `YYYYMMDD` strings."""

from __future__ import annotations

import datetime as dt

_LEAP_YEAR = r"(\d\d(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)"
YYYYMMDD_RE = (
    rf"^(?!0000)(\d{{4}}((0[13578]|1[02])(0[1-9]|[12]\d|3[01])|(0[469]|11)(0[1-9]|[12]\d|30)"
    rf"|02(0[1-9]|1\d|2[0-8]))|{_LEAP_YEAR}0229)$"
)
"""Exactly the real calendar days `parse_yyyymmdd` takes, as a regular expression: the JSON
Schema's pattern for a day."""


def parse_yyyymmdd(value: object) -> dt.date:
    """Parse `20251229` (int or str) into a date; raise ValueError with a readable reason."""
    text = str(value).strip()
    if len(text) != 8 or not text.isdigit():
        shown = text or repr(value)
        raise ValueError(f'must be a day written "YYYYMMDD", e.g. "20251201", not {shown}')
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError(f"{text} is not a real calendar date") from None


def fmt_yyyymmdd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def day_bounds_ms(day: str) -> tuple[int, int]:
    """First and last millisecond (UTC, inclusive) of a `YYYYMMDD` day."""
    start = dt.datetime.combine(parse_yyyymmdd(day), dt.time(), tzinfo=dt.UTC)
    first = int(start.timestamp() * 1000)
    return first, first + 86_400_000 - 1


def date_span(start: str, end: str) -> list[str]:
    """Every day from start to end, both included."""
    first, last = parse_yyyymmdd(start), parse_yyyymmdd(end)
    return [fmt_yyyymmdd(first + dt.timedelta(days=i)) for i in range((last - first).days + 1)]
