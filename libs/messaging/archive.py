"""The input archive: the records of archived topics, kept in PostgreSQL as they were read.

A topic is archived when its :class:`~libs.messaging.topic.Topic` says so (``archive=True``): the
product marks the topics no Settle outbox can give back (the platform's inputs, the clock's ticks).
:class:`~libs.messaging.consume.Consumer` writes every record it reads from such a topic — decoded or
not, new or a duplicate — in the batch's own transaction, before the consumer's position moves past it.
So the archive holds every position of the log that any consumer passed, exactly once: several
consumer groups of one topic each try, the first insert wins (``on conflict do nothing`` on
(topic, partition, offset, event time), which together identify the position).

The table (``settle.input_archive``, migration ``0007``) is range-partitioned by event month. Month
partitions are created on demand (:func:`ensure_months`, outside the batch transaction, under an
advisory lock) and dropped whole when older than the retention (:func:`prune_archive`). Records with no
usable event time sit in the default partition ``settle.input_archive_undated`` and are never pruned.

Readers (:func:`read_range`, :func:`read_log`) give records back shaped like Kafka records
(:class:`ArchivedRecord`), for ``consume()`` to handle again.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from libs import limits

PARENT = "settle.input_archive"
_LOCK_KEY = 0x5E77A2C  # advisory lock: partition DDL by one writer at a time
_FIRST_YEAR, _END_YEAR = 2000, 2100
"""Event times outside [2000, 2100) are stored undated (a month partition per absurd year is no use)."""


@dataclass
class ArchivedRecord:
    """One archived log position, shaped like a Kafka record (a ``RecordLike``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    event_id: str | None = None
    event_time: datetime | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class ArchiveRow:
    """What a consumer writes for one record it read."""

    topic: str
    """Logical topic name (no prefix)."""
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    event_id: str | None
    event_type: str | None
    event_time: datetime | None


def dated(at: datetime | None) -> datetime | None:
    """The event time the archive partitions by: None when unknown or outside the dated years."""
    if at is None or not (_FIRST_YEAR <= at.year < _END_YEAR):
        return None
    return at


def month_of(at: datetime) -> datetime:
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"input_archive_y{month.year:04d}m{month.month:02d}"


class MonthPartitions:
    """The month partitions known to exist (a process-wide cache in front of :func:`ensure_months`)."""

    def __init__(self) -> None:
        self.known: set[datetime] = set()

    async def ensure(self, pool: asyncpg.Pool, times: Iterable[datetime | None]) -> None:
        wanted = {month_of(t) for t in times if t is not None} - self.known
        if wanted:
            await ensure_months(pool, wanted)
            self.known |= wanted


async def ensure_months(pool: asyncpg.Pool, months: Iterable[datetime]) -> None:
    """Create the month partitions that do not exist yet (idempotent; concurrent writers wait)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        existing = set(
            await conn.fetchval(
                """select coalesce(array_agg(c.relname::text), '{}') from pg_inherits i
                     join pg_class c on c.oid = i.inhrelid
                    where i.inhparent = $1::regclass""",
                PARENT,
            )
        )
        for month in sorted(set(months)):
            assert month.day == 1 and month.tzinfo is not None, month
            name = partition_name(month)
            if name in existing:
                continue
            # A record of this month may sit in the default partition (its partition was pruned, or
            # another process did not know it yet): move such rows into the new partition.
            bounds = (month, next_month(month))
            await conn.execute(
                f"""create temp table if not exists archive_moved on commit drop as
                    select * from {PARENT}_undated with no data"""
            )
            moved = await conn.execute(
                f"""with gone as (delete from {PARENT}_undated where event_time >= $1 and event_time < $2
                                  returning *)
                    insert into archive_moved select * from gone""",
                *bounds,
            )
            # Bounds are literals made from integers, never from input text.
            await conn.execute(
                f"create table settle.{name} partition of {PARENT} "
                f"for values from ('{bounds[0].isoformat()}') to ('{bounds[1].isoformat()}')"
            )
            if moved != "INSERT 0 0":
                await conn.execute(f"insert into {PARENT} select * from archive_moved")
                await conn.execute("truncate archive_moved")


async def write_archive(conn: asyncpg.Connection, consumer: str, rows: Sequence[ArchiveRow]) -> int:
    """Archive what a consumer read, in the caller's transaction; positions already archived (by this or
    another consumer) are left as they are. The month partitions must exist. Returns rows written."""
    if not rows:
        return 0
    status = await conn.execute(
        f"""insert into {PARENT} (topic, partition, "offset", event_time, event_id, event_type, key, value,
                                  headers, consumer)
            select u.topic, u.partition, u.off, u.at, u.id, u.type, u.key, u.value, u.headers::jsonb, $1
              from unnest($2::text[], $3::int[], $4::bigint[], $5::timestamptz[], $6::text[], $7::text[],
                          $8::bytea[], $9::bytea[], $10::text[]) as u(topic, partition, off, at, id, type, key, value,
                                                                    headers)
            on conflict do nothing""",
        consumer,
        [r.topic for r in rows],
        [r.partition for r in rows],
        [r.offset for r in rows],
        [dated(r.event_time) for r in rows],
        [r.event_id for r in rows],
        [r.event_type for r in rows],
        [r.key for r in rows],
        [r.value for r in rows],
        [_headers_json(r.headers) for r in rows],
    )
    return int(status.split()[-1])


def _headers_json(headers: Sequence[tuple[str, bytes]]) -> str:
    """Headers as JSON text ``[[name, base64 value], ...]`` (values are bytes, not always text)."""
    if not headers:
        return "[]"
    return orjson.dumps([[k, base64.b64encode(bytes(v)).decode()] for k, v in headers]).decode()


def _record(row: asyncpg.Record, prefix: str) -> ArchivedRecord:
    headers = row["headers"]
    if isinstance(headers, str):  # a pool without the jsonb codec
        headers = orjson.loads(headers)
    return ArchivedRecord(
        topic=prefix + row["topic"],
        partition=int(row["partition"]),
        offset=int(row["offset"]),
        key=None if row["key"] is None else bytes(row["key"]),
        value=None if row["value"] is None else bytes(row["value"]),
        headers=tuple((str(k), base64.b64decode(v)) for k, v in headers),
        event_id=row["event_id"],
        event_time=row["event_time"],
        received_at=row["received_at"],
    )


_COLUMNS = 'topic, partition, "offset", event_time, event_id, key, value, headers, received_at'


@dataclass(frozen=True)
class ArchiveRange:
    """Which archived records of one topic: event time in [from_time, to_time) and offset in
    [from_offset, to_offset] (each bound optional), all partitions unless ``partition``."""

    topic: str
    from_time: datetime | None = None
    to_time: datetime | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    partition: int | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses = ["topic = $1"]
        args: list[object] = [self.topic]
        for sql, value in (
            ("event_time >= ${}", self.from_time),
            ("event_time < ${}", self.to_time),
            ('"offset" >= ${}', self.from_offset),
            ('"offset" <= ${}', self.to_offset),
            ("partition = ${}", self.partition),
        ):
            if value is not None:
                args.append(value)
                clauses.append(sql.format(len(args)))
        return " and ".join(clauses), args


async def count_range(conn: asyncpg.Connection, selection: ArchiveRange) -> int:
    where, args = selection.where()
    return int(await conn.fetchval(f"select count(*) from {PARENT} where {where}", *args))


async def oldest_received(conn: asyncpg.Connection, selection: ArchiveRange) -> datetime | None:
    where, args = selection.where()
    at: datetime | None = await conn.fetchval(f"select min(received_at) from {PARENT} where {where}", *args)
    return at


async def read_range(
    conn: asyncpg.Connection, selection: ArchiveRange, *, prefix: str = "", chunk: int = limits.ARCHIVE_READ_CHUNK
) -> AsyncIterator[list[ArchivedRecord]]:
    """The selected records in log order (partition, offset), in chunks of at most ``chunk``."""
    where, args = selection.where()
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = conn.cursor(f'select {_COLUMNS} from {PARENT} where {where} order by partition, "offset"', *args)
        batch: list[ArchivedRecord] = []
        async for row in cursor:
            batch.append(_record(row, prefix))
            if len(batch) >= chunk:
                yield batch
                batch = []
        if batch:
            yield batch


async def read_topic_log(
    conn: asyncpg.Connection, topic: str, partition: int, *, from_offset: int = 0, to_offset: int | None = None
) -> list[ArchivedRecord]:
    """One partition's archived records with offsets in [from_offset, to_offset), in offset order."""
    rows = await conn.fetch(
        f"""select {_COLUMNS} from {PARENT}
             where topic = $1 and partition = $2 and "offset" >= $3 and ($4::bigint is null or "offset" < $4)
             order by "offset\"""",
        topic,
        partition,
        from_offset,
        to_offset,
    )
    return [_record(r, "") for r in rows]


@dataclass(frozen=True)
class PartitionSpan:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int

    @property
    def contiguous_from_zero(self) -> bool:
        return self.first_offset == 0 and self.records == self.last_offset + 1


async def spans(conn: asyncpg.Connection) -> list[PartitionSpan]:
    """Per archived (topic, partition): first and last offset and how many records are kept."""
    rows = await conn.fetch(
        f"""select topic, partition, min("offset") as first, max("offset") as last, count(*) as n
              from {PARENT} group by topic, partition order by topic, partition"""
    )
    return [PartitionSpan(r["topic"], r["partition"], r["first"], r["last"], r["n"]) for r in rows]


@dataclass(frozen=True)
class MonthPartition:
    name: str
    month: datetime
    rows: int


async def month_partitions(conn: asyncpg.Connection) -> list[MonthPartition]:
    """The month partitions, oldest first, with their (estimated) row counts."""
    rows = await conn.fetch(
        """select c.relname::text as name, c.reltuples::bigint as rows from pg_inherits i
             join pg_class c on c.oid = i.inhrelid
            where i.inhparent = $1::regclass and c.relname ~ '^input_archive_y[0-9]{4}m[0-9]{2}$'
            order by c.relname""",
        PARENT,
    )
    out = []
    for r in rows:
        name = r["name"]
        month = datetime(int(name[-7:-3]), int(name[-2:]), 1, tzinfo=UTC)
        out.append(MonthPartition(name, month, max(0, int(r["rows"]))))
    return out


def expired_months(months: Sequence[MonthPartition], now: datetime, retention_months: int) -> list[MonthPartition]:
    """Month partitions wholly older than the retention: those whose month ends at or before the first
    day of the month ``retention_months`` before ``now``'s month. 0 keeps everything."""
    assert retention_months >= 0, retention_months
    if retention_months == 0:
        return []
    cutoff = month_of(now)
    for _ in range(retention_months):
        cutoff = datetime(cutoff.year - (cutoff.month == 1), (cutoff.month - 2) % 12 + 1, 1, tzinfo=UTC)
    return [m for m in months if next_month(m.month) <= cutoff]


async def prune_archive(
    pool: asyncpg.Pool, now: datetime, retention_months: int, *, dry_run: bool = False
) -> list[MonthPartition]:
    """Drop the month partitions older than the retention (whole tables: no row-by-row delete)."""
    async with pool.acquire() as conn:
        doomed = expired_months(await month_partitions(conn), now, retention_months)
        if dry_run or not doomed:
            return doomed
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
            for month in doomed:
                await conn.execute(f"drop table if exists settle.{month.name}")
    return doomed
