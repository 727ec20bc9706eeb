"""Refilling a gap from the outbox that produced it, and re-sending published rows.

Every record of an internal topic was first an outbox row, and the relay records the offset each
row was published at (``settle.outbox.published_offset``). When a consumer finds that the broker
deleted records before it read them, the rows published at those offsets are still in the outbox
(sent rows are kept ``SETTLE_OUTBOX_RETENTION_S``, by default as long as Kafka's default retention),
so the consumer feeds them to its handler in offset order — exactly the records it missed, in the
order it would have read them — and continues at the broker's first offset.

A relay that crashed after sending and before marking re-publishes a row: only its last publish has
an offset recorded, the earlier copy (an unrecorded offset) is a duplicate the inbox would skip, so
the recorded rows of a range are every distinct event published in it.

:func:`resend_rows` is the operator's tool when the consumer's database is not the producer's
(split deployments): it queues the rows of an offset range again, to be published at the end of the
partition, after which the operator skips the gap (``settle gaps skip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass
class OutboxRecord:
    """An outbox row shaped like a Kafka record (what consume() reads; a RecordLike)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


async def outbox_covers(conn: asyncpg.Connection, topic: str, partition: int, from_offset: int) -> bool:
    """True when the outbox still holds this lane's rows from ``from_offset`` on (none pruned yet)."""
    first = await conn.fetchval(
        """select min(published_offset) from settle.outbox
            where topic = $1 and partition = $2 and published_offset is not null""",
        topic,
        partition,
    )
    return first is not None and int(first) <= from_offset


async def published_rows(
    conn: asyncpg.Connection, topic: str, partition: int, from_offset: int, to_offset: int, *, physical_topic: str
) -> list[OutboxRecord]:
    """Rows of a lane published at offsets in ``[from_offset, to_offset)``, in offset order."""
    rows = await conn.fetch(
        """select published_offset, key, value, headers from settle.outbox
            where topic = $1 and partition = $2 and published_offset >= $3 and published_offset < $4
            order by published_offset""",
        topic,
        partition,
        from_offset,
        to_offset,
    )
    return [
        OutboxRecord(
            topic=physical_topic,
            partition=partition,
            offset=int(r["published_offset"]),
            key=r["key"],
            value=r["value"],
            headers=tuple((str(h[0]), str(h[1]).encode()) for h in r["headers"]),  # jsonb decoded by the pool
        )
        for r in rows
    ]


async def resend_rows(conn: asyncpg.Connection, topic: str, partition: int, from_offset: int, to_offset: int) -> int:
    """Queue the rows published at offsets ``[from_offset, to_offset]`` once more (same key, bytes,
    headers and event id; the relay publishes them at the end of the lane). Returns how many."""
    assert 0 <= from_offset <= to_offset, (from_offset, to_offset)
    status = await conn.execute(
        """insert into settle.outbox (topic, partition, key, value, headers, event_id)
           select topic, partition, key, value, headers, event_id from settle.outbox
            where topic = $1 and partition = $2 and published_offset between $3 and $4
            order by published_offset""",
        topic,
        partition,
        from_offset,
        to_offset,
    )
    return int(status.split()[-1])
