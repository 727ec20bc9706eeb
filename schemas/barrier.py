"""Reading a watermark's barrier from its raw bytes: what a consumer must have read before acting on it.

A clock tick carries the end offsets of the input topics when it was sent (its *barrier*); metering
passes the part its downstream consumers need on the watermarks it emits, and rating passes it on to
invoicing. A consumer that acts on a watermark (rating runs the prepaid wallets, invoicing closes
periods) first reads those inputs up to the barrier, so a top-up, amendment or termination published
before the tick is always in that close, however far behind the consumer was. The consumer's runtime
asks :func:`watermark_waits` before it handles a record (a cheap look at the bytes, not a decode:
consume() still validates the record as usual).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson

from libs.messaging.consume import Waits
from libs.messaging.envelope import Envelope
from libs.messaging.outbox import Emitter
from schemas.events import Watermark
from schemas.topics import Topic


def barrier_offsets(
    barrier: Mapping[str, Sequence[int]] | None, inputs: Sequence[Topic]
) -> dict[str, list[int]] | None:
    """The part of a barrier that names ``inputs`` (what a watermark carries on)."""
    if barrier is None:
        return None
    return {t.name: list(barrier[t.name]) for t in inputs if t.name in barrier}


def watermark_waits(topic: Topic, event_type: str, inputs: Sequence[Topic]) -> Waits:
    """A ``waits`` function: records of ``event_type`` on ``topic`` wait for ``inputs`` up to their barrier."""
    marker = f'"{event_type}"'.encode()

    def waits(topic_name: str, value: bytes | None) -> dict[tuple[str, int], int] | None:
        if topic_name != topic.name or value is None or marker not in value:
            return None
        try:
            barrier = orjson.loads(value)["data"].get("barrier")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None  # malformed: consume() dead-letters it with the reason
        if not isinstance(barrier, dict):
            return None
        return {
            (t.name, p): o
            for t in inputs
            for p, o in enumerate(barrier.get(t.name) or [])
            if isinstance(o, int) and o > 0 and p < t.partitions
        }

    return waits


def emit_watermark(
    emitter: Emitter,
    topic: Topic,
    *,
    type: str,
    source: Literal["metering", "rating", "invoicing", "payments"],
    through: datetime,
    partition: int,
    event_id: str,
    cause: Envelope[Any] | None,
    barrier: dict[str, list[int]] | None = None,
    correlation_id: str | None = None,
) -> None:
    """Queue the watermark ``through`` for one partition of ``topic`` (keyed ``watermark-<partition>``,
    timed at ``through``). The caller names its id: each producer's ids are part of the replayed log."""
    emitter.emit(
        topic,
        key=f"watermark-{partition}",
        type=type,
        time=through,
        cause=cause,
        event_id=event_id,
        correlation_id=correlation_id,
        partition=partition,
        data=Watermark(through=through, partition=partition, source=source, barrier=barrier),
    )
