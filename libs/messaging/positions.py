"""Consumer positions and partition gaps, kept in PostgreSQL beside the inbox.

A consumer group's position in a partition is the offset of the next record it must handle. It is
written in the same transaction as the batch that handled the records before it (inbox claims,
state, ledger, outbox), so a restarted worker resumes exactly where committed work ends, and a
position can be compared with what the broker still has:

* no position yet → the group never read this partition: start at the broker's first offset;
* position < the broker's first offset → records were deleted before this group read them: a
  **gap**. It is refilled from the producing service's outbox when the topic is Settle's own
  (:mod:`libs.messaging.gaps`), otherwise the partition stops and an operator decides. Never a jump;
* position > the broker's last offset → the broker lost its log (or the topic was re-created):
  also a gap; the partition stops, because new records there would otherwise be skipped.

Tables: ``settle.consumer_positions`` and ``settle.consumer_gaps`` (migration 0004).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

TopicPartitionKey = tuple[str, int]
"""(logical topic name, partition)."""


@dataclass(frozen=True)
class Gap:
    id: int
    consumer: str
    topic: str
    partition: int
    missing_from: int
    missing_to: int
    """The offset the partition resumes at when the gap is skipped (the broker's first offset, or its
    end when the broker lost the log)."""
    reason: str
    detected_at: datetime
    resolved_at: datetime | None
    resolution: str | None

    @property
    def missing_count(self) -> int:
        return max(0, self.missing_to - self.missing_from)


async def load_positions(
    conn: asyncpg.Connection, consumer: str, partitions: Iterable[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    """Positions of ``consumer`` in the given partitions; partitions it never read are left out."""
    wanted = list(partitions)
    if not wanted:
        return {}
    rows = await conn.fetch(
        """select p.topic, p.partition, p.next_offset
             from settle.consumer_positions p
             join unnest($2::text[], $3::int[]) as w(topic, partition)
               on w.topic = p.topic and w.partition = p.partition
            where p.consumer = $1""",
        consumer,
        [t for t, _ in wanted],
        [p for _, p in wanted],
    )
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


async def advance_positions(
    conn: asyncpg.Connection, consumer: str, next_offsets: Mapping[TopicPartitionKey, int]
) -> None:
    """Move positions forward (never back: a late writer cannot rewind a newer position)."""
    if not next_offsets:
        return
    keys = sorted(next_offsets)
    assert all(next_offsets[k] >= 0 for k in keys), next_offsets
    await conn.execute(
        """insert into settle.consumer_positions as p (consumer, topic, partition, next_offset)
           select $1, t, n, o from unnest($2::text[], $3::int[], $4::bigint[]) as u(t, n, o)
           on conflict (consumer, topic, partition) do update
              set next_offset = greatest(p.next_offset, excluded.next_offset), updated_at = now()""",
        consumer,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [next_offsets[k] for k in keys],
    )


async def set_position(conn: asyncpg.Connection, consumer: str, topic: str, partition: int, next_offset: int) -> None:
    """Put a position exactly here (an operator's decision after a gap; may move it back)."""
    await conn.execute(
        """insert into settle.consumer_positions as p (consumer, topic, partition, next_offset)
           values ($1, $2, $3, $4)
           on conflict (consumer, topic, partition)
              do update set next_offset = excluded.next_offset, updated_at = now()""",
        consumer,
        topic,
        partition,
        next_offset,
    )


def _gap(row: asyncpg.Record) -> Gap:
    return Gap(
        id=int(row["id"]),
        consumer=row["consumer"],
        topic=row["topic"],
        partition=int(row["partition"]),
        missing_from=int(row["missing_from"]),
        missing_to=int(row["missing_to"]),
        reason=row["reason"],
        detected_at=row["detected_at"],
        resolved_at=row["resolved_at"],
        resolution=row["resolution"],
    )


async def record_gap(
    conn: asyncpg.Connection,
    consumer: str,
    topic: str,
    partition: int,
    missing_from: int,
    missing_to: int,
    reason: str,
    *,
    resolution: str | None = None,
) -> Gap:
    """Record a gap: open (the partition is stopped) or, with ``resolution``, already recovered.

    At most one open gap per partition: detecting the same one again returns the existing row."""
    if resolution is None:
        existing = await conn.fetchrow(
            """select * from settle.consumer_gaps
                where consumer = $1 and topic = $2 and partition = $3 and resolved_at is null""",
            consumer,
            topic,
            partition,
        )
        if existing is not None:
            return _gap(existing)
    row = await conn.fetchrow(
        """insert into settle.consumer_gaps
               (consumer, topic, partition, missing_from, missing_to, reason, resolved_at, resolution)
           values ($1, $2, $3, $4, $5, $6, case when $7::text is null then null else now() end, $7)
           returning *""",
        consumer,
        topic,
        partition,
        missing_from,
        missing_to,
        reason,
        resolution,
    )
    assert row is not None
    return _gap(row)


async def open_gaps(conn: asyncpg.Connection, consumer: str | None = None) -> list[Gap]:
    rows = await conn.fetch(
        """select * from settle.consumer_gaps
            where resolved_at is null and ($1::text is null or consumer = $1)
            order by consumer, topic, partition""",
        consumer,
    )
    return [_gap(r) for r in rows]


async def list_gaps(conn: asyncpg.Connection, *, include_resolved: bool, limit: int) -> list[Gap]:
    rows = await conn.fetch(
        """select * from settle.consumer_gaps where $1 or resolved_at is null order by id desc limit $2""",
        include_resolved,
        limit,
    )
    return [_gap(r) for r in rows]


async def skip_gap(conn: asyncpg.Connection, gap_id: int, reason: str) -> Gap:
    """An operator accepts a gap (its records were re-published, or are known to be lost): the
    partition resumes at ``missing_to``. Raises LookupError when no such open gap exists."""
    assert reason.strip(), "a skip needs a reason"
    async with conn.transaction():
        row = await conn.fetchrow(
            """update settle.consumer_gaps set resolved_at = now(), resolution = $2
                where id = $1 and resolved_at is null returning *""",
            gap_id,
            f"skipped by operator: {reason.strip()}",
        )
        if row is None:
            raise LookupError(f"no open gap with id {gap_id}")
        gap = _gap(row)
        await set_position(conn, gap.consumer, gap.topic, gap.partition, gap.missing_to)
    return gap


async def group_lag(
    conn: asyncpg.Connection, consumer: str, ends: Mapping[TopicPartitionKey, int]
) -> dict[TopicPartitionKey, int]:
    """Records of each partition the group has not handled yet: the broker's end offset minus the
    group's position (a never-read partition counts from 0)."""
    positions = await load_positions(conn, consumer, ends)
    return {tp: max(0, end - positions.get(tp, 0)) for tp, end in ends.items()}
