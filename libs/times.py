"""UTC time helpers. Domain code gets time from events only; this module never reads the clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)

_RFC3339_RE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
RFC3339_UTC_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-]00:00)$"
"""What :func:`parse_utc` accepts, as a regular expression (for JSON Schema ``pattern``)."""


def parse_utc(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that must be UTC (``Z`` or ``+00:00``).

    The shape is checked first: ``datetime.fromisoformat`` alone would also take ISO 8601 forms
    that are not RFC 3339 (week dates, basic format, no seconds).
    """
    if not isinstance(text, str) or not _RFC3339_RE.fullmatch(text):
        raise ValueError(f'{text!r} is not an RFC 3339 timestamp (e.g. "2026-12-01T00:00:00Z")')
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{text!r} is not in UTC")
    return value.astimezone(UTC)


def format_utc(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` and whole seconds when there is no fraction."""
    assert value.tzinfo is not None, "naive datetimes are not allowed"
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def ceil_hour(value: datetime) -> datetime:
    floored = floor_hour(value)
    return floored if floored == value else floored + HOUR


def seconds_between(start: datetime, end: datetime) -> int:
    """Whole seconds in [start, end); times carry whole seconds in Settle (enforced by schemas)."""
    delta = end - start
    assert delta.microseconds == 0, "billing times are whole seconds"
    return delta.days * 86400 + delta.seconds


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Start of every UTC hour that overlaps [start, end)."""
    hours: list[datetime] = []
    cursor = floor_hour(start)
    while cursor < end:
        hours.append(cursor)
        cursor += HOUR
    return hours
