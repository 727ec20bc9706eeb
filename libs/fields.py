"""Pydantic field types the kernel's messages need (the CloudEvents envelope), shared with the event models.

* ``UtcTime`` — RFC 3339, must be UTC and in years 2000–2099 (``libs.limits``); sub-second parts are
  floored to the second because billing resolution is one second (docs/billing-rules.md, "Input contract").
* ``Id`` — a non-empty identifier of bounded length, printable, no whitespace.
* ``Text`` — a non-empty string of bounded length.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from libs import limits
from libs.times import RFC3339_UTC_PATTERN, format_utc, parse_utc


def _utc_from_str(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: times must be UTC")
        # Normalized to UTC: hour and period arithmetic (floor_hour) is done on the fields.
        return _plausible(value.astimezone(UTC).replace(microsecond=0))
    if not isinstance(value, str):
        raise ValueError('times are RFC 3339 strings in UTC, e.g. "2026-12-01T00:00:00Z"')
    return _plausible(parse_utc(value).replace(microsecond=0))


def _plausible(value: datetime) -> datetime:
    if not limits.EARLIEST_EVENT_YEAR <= value.year <= limits.LATEST_EVENT_YEAR:
        raise ValueError(
            f"{format_utc(value)} is outside the years {limits.EARLIEST_EVENT_YEAR}–{limits.LATEST_EVENT_YEAR} "
            "an event time may have"
        )
    return value


assert RFC3339_UTC_PATTERN.startswith("^[0-9]{4}")
assert (limits.EARLIEST_EVENT_YEAR, limits.LATEST_EVENT_YEAR) == (2000, 2099), "EVENT_TIME_PATTERN says 20xx"
EVENT_TIME_PATTERN = "^20[0-9]{2}" + RFC3339_UTC_PATTERN.removeprefix("^[0-9]{4}")
"""What ``UtcTime`` accepts, as a regular expression (JSON Schema ``pattern``): UTC, years 2000–2099."""

UtcTime = Annotated[
    datetime,
    BeforeValidator(_utc_from_str),
    PlainSerializer(format_utc, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": EVENT_TIME_PATTERN}),
]

Id = Annotated[str, Field(min_length=1, max_length=limits.MAX_ID_CHARS, pattern=r"^[!-~]+$")]
Text = Annotated[str, Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)]
