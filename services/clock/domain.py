"""Pure tick arithmetic and the tick event. Ticks at the same instant share an id (a duplicate)."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.ids import derive_id
from libs.times import format_utc
from schemas.envelope import encode
from schemas.inputs import ClockTicked

SOURCE = "/settle/clock"


def tick_id(at: datetime) -> str:
    return derive_id("tick", format_utc(at))


def last_boundary(now: datetime, interval_s: int) -> datetime:
    """The latest instant ≤ ``now`` that is a whole multiple of ``interval_s`` since the Unix epoch."""
    assert interval_s > 0 and now.tzinfo is not None
    seconds = int(now.timestamp()) // interval_s * interval_s
    return datetime.fromtimestamp(seconds, tz=UTC)


def tick_bytes(at: datetime) -> bytes:
    return encode(
        event_id=tick_id(at), source=SOURCE, type="clock.ticked", time=at, data=ClockTicked(at=at), subject="clock"
    )
