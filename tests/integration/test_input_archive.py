"""The input archive (libs.messaging.archive): every record read from an archived topic is kept once
per log position, in the batch's transaction, whoever reads it and whatever becomes of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import BaseModel

from libs.errors import PermanentError
from libs.messaging.archive import ArchiveRange, ensure_months, month_partitions, prune_archive, read_range
from libs.messaging.consume import Subscription, Tx
from libs.messaging.envelope import Envelope
from libs.messaging.topic import Topic
from tests.conftest import Stack
from tests.feed import Feed, Record
from tests.fleet import event_bytes

pytestmark = pytest.mark.integration


class Note(BaseModel):
    text: str


ARCHIVED = Topic(
    "notes.v1",
    key="id",
    partitions=2,
    producer="platform",
    archive=True,
    description="test input",
    types=MappingProxyType({"note.written": Note}),
)
PLAIN = Topic(
    "chatter.v1", key="id", partitions=1, description="not archived", types=MappingProxyType({"note.written": Note})
)


def note(n: int, at: datetime, text: str = "ok") -> bytes:
    return event_bytes("note.written", Note(text=text), id=f"note-{n}", time=at)


def subscription(consumer: str, seen: list[str]) -> Subscription:
    async def handle(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
        for event in events:
            if event.data.text == "boom":
                raise PermanentError("this note is refused")
            seen.append(event.id)

    return Subscription(consumer, (ARCHIVED, PLAIN), handle)


async def rows(stack: Stack) -> list[dict[str, Any]]:
    found = await stack.pool.fetch(
        'select topic, partition, "offset", event_id, event_time, consumer, value, tableoid::regclass::text as part '
        'from settle.input_archive order by topic, partition, "offset"'
    )
    return [dict(r) for r in found]


async def test_each_position_is_archived_once_with_its_bytes_whatever_happens_to_it(stack: Stack) -> None:
    december, january = datetime(2026, 12, 5, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC)
    seen_a: list[str] = []
    seen_b: list[str] = []
    a, b = Feed(stack, subscription("group-a", seen_a)), Feed(stack, subscription("group-b", seen_b))
    sent = [
        (ARCHIVED, "k1", note(1, december)),
        (ARCHIVED, "k1", note(1, december)),  # a redelivery at a new offset: a duplicate, still archived
        (ARCHIVED, "k2", note(2, january)),
        (ARCHIVED, "k3", b"{not json"),  # dead-lettered, archived undated
        (ARCHIVED, "k4", note(4, january, "boom")),  # the handler refuses it: batch falls back, still archived
        (PLAIN, "k1", note(9, december)),  # not an archived topic
    ]
    for topic, key, value in sent:
        await a.send(topic, key, value, partition=0)
    for topic, key, value in sent:  # the second group reads the same positions
        await b.send(topic, key, value, partition=0)
    assert seen_a == seen_b == ["note-1", "note-2", "note-9"]

    archived = await rows(stack)
    assert [(r["topic"], r["offset"]) for r in archived] == [("notes.v1", o) for o in range(5)]
    assert [r["value"] for r in archived] == [v for t, _, v in sent if t is ARCHIVED]
    assert {r["consumer"] for r in archived} == {"group-a"}  # the first reader wrote it, the second did nothing
    assert [r["event_id"] for r in archived] == ["note-1", "note-1", "note-2", None, "note-4"]
    assert [r["part"] for r in archived] == [
        "settle.input_archive_y2026m12",
        "settle.input_archive_y2026m12",
        "settle.input_archive_y2027m01",
        "settle.input_archive_undated",
        "settle.input_archive_y2027m01",
    ]

    # Headers are kept as bytes (not always text).
    await a.consumer.process([Record("notes.v1", 1, 0, b"k5", note(5, january), (("trace", b"\xff\x00"),))])

    # Read back in log order, shaped like Kafka records, bytes, key and headers intact.
    async with stack.pool.acquire() as conn:
        chunks = [c async for c in read_range(conn, ArchiveRange("notes.v1", from_time=january, partition=0), chunk=1)]
    assert [[r.offset for r in c] for c in chunks] == [[2], [4]]
    assert chunks[0][0].key == b"k2" and chunks[0][0].value == sent[2][2] and chunks[0][0].headers == ()
    async with stack.pool.acquire() as conn:
        [with_headers] = [r async for c in read_range(conn, ArchiveRange("notes.v1", partition=1)) for r in c]
    assert with_headers.headers == (("trace", b"\xff\x00"),)


async def test_prune_drops_whole_months_older_than_the_retention(stack: Stack) -> None:
    seen: list[str] = []
    feed = Feed(stack, subscription("group-a", seen))
    base = datetime(2026, 1, 15, tzinfo=UTC)
    for n in range(12):
        await feed.send(ARCHIVED, f"k{n}", note(n, base + timedelta(days=31 * n)), partition=1)
    async with stack.pool.acquire() as conn:
        before = [m.month.month for m in await month_partitions(conn)]
    assert before == list(range(1, 13))
    now = datetime(2026, 12, 20, tzinfo=UTC)
    doomed = await prune_archive(stack.pool, now, retention_months=3, dry_run=True)
    assert [m.month.month for m in doomed] == list(range(1, 9))  # Jan–Aug end before 2026-09-01
    await prune_archive(stack.pool, now, retention_months=3)
    async with stack.pool.acquire() as conn:
        assert [m.month.month for m in await month_partitions(conn)] == [9, 10, 11, 12]
        assert await conn.fetchval("select count(*) from settle.input_archive") == 4
    assert await prune_archive(stack.pool, now, retention_months=0) == []  # 0 keeps everything

    # A record of a pruned month comes back to a reader that still believes its partition exists: it
    # lands in the default partition, and moves to the month's partition when that is made again.
    feed.offsets[("notes.v1", 1)] = 100
    await feed.send(ARCHIVED, "late", note(100, datetime(2026, 2, 3, tzinfo=UTC)), partition=1)
    late = [r for r in await rows(stack) if r["offset"] == 100]
    assert [r["part"] for r in late] == ["settle.input_archive_undated"]
    await ensure_months(stack.pool, [datetime(2026, 2, 1, tzinfo=UTC)])
    late = [r for r in await rows(stack) if r["offset"] == 100]
    assert [(r["part"], r["event_id"]) for r in late] == [("settle.input_archive_y2026m02", "note-100")]
