"""Pure tick arithmetic and the tick event.

A tick carries a *barrier*: the end offsets of the platform's input topics when it was sent. Ticks
at the same instant with the same barrier share an id (a duplicate); a tick sent again later (a
larger barrier) is a new event, and the close it asks for is already done or waits for the larger
barrier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from libs.ids import derive_id
from libs.times import format_utc
from schemas.envelope import encode
from schemas.inputs import ClockTicked
from schemas.topics import (
    CONTRACTS,
    FX_RATES,
    INFRA_LIFECYCLE,
    PAYMENT_METHODS,
    PAYMENTS_RECEIVED,
    SUPPLIERS,
    USAGE_SAMPLES,
    WALLETS,
)

SOURCE = "/settle/clock"


BARRIER_TOPICS = (
    INFRA_LIFECYCLE,
    CONTRACTS,
    WALLETS,
    USAGE_SAMPLES,
    PAYMENTS_RECEIVED,
    PAYMENT_METHODS,
    SUPPLIERS,
    FX_RATES,
)
"""The input topics a close must have read up to the tick: metering's and rating's platform inputs, and
the money inputs payments reads before it answers a tick (its ``payments.watermark``)."""


def tick_id(at: datetime, barrier: Mapping[str, Sequence[int]] | None = None) -> str:
    if barrier is None:
        return derive_id("tick", format_utc(at))
    canonical = ";".join(f"{t}={','.join(map(str, barrier[t]))}" for t in sorted(barrier))
    return derive_id("tick", format_utc(at), canonical)


def last_boundary(now: datetime, interval_s: int) -> datetime:
    """The latest instant ≤ ``now`` that is a whole multiple of ``interval_s`` since the Unix epoch."""
    assert interval_s > 0 and now.tzinfo is not None
    seconds = int(now.timestamp()) // interval_s * interval_s
    return datetime.fromtimestamp(seconds, tz=UTC)


def tick_bytes(
    at: datetime, barrier: Mapping[str, Sequence[int]] | None = None, *, event_id: str | None = None
) -> bytes:
    data = ClockTicked(at=at, barrier={t: list(o) for t, o in barrier.items()} if barrier is not None else None)
    return encode(
        event_id=event_id or tick_id(at, barrier),
        source=SOURCE,
        type="clock.ticked",
        time=at,
        data=data,
        subject="clock",
    )
