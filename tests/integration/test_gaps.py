"""Issue 8: a consumer that falls behind while the broker expires records never skips them silently.

The broker is made to delete the unconsumed head of a partition while the consumer is stopped:
on a broker that creates topics (noida-db, Kafka) the topic is re-created with a small
``retention.bytes``; librdkafka's mock cluster deletes past ~5 MiB by itself. Then:

* an internal topic (written by a Settle outbox): the consumer refills the gap from the outbox, in
  offset order, and every event has its effect exactly once;
* a platform input topic: that partition stops, the gap is recorded with the missing range (status,
  metrics), the other partitions keep flowing, and an operator's skip resumes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IncompatibleBrokerVersion

from libs.messaging.broker import bootstrap_list, stop_client
from libs.messaging.consume import Subscription, Tx
from libs.messaging.outbox import Emitter, write_outbox
from libs.messaging.positions import list_gaps, skip_gap
from libs.messaging.worker import Service
from libs.observability import metrics
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import TransferPosted, TransferRequested
from services.journal.main import SERVICE as JOURNAL
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, running, wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)
MOCK_RETENTION_BYTES = 5 * 1024 * 1024
SMALL_RETENTION_BYTES = 256 * 1024
PADDING = "x" * 100


async def _shrink_retention(stack: Stack, topic: str) -> int:
    """Re-create ``topic`` with a small retention where the broker allows it; returns how many bytes to
    publish so that its head is deleted (the mock cannot create topics but deletes past ~5 MiB)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(stack.bootstrap_servers))
    await admin.start()
    physical = stack.settings.topic_prefix + topic
    try:
        await admin.delete_topics([physical])
        for _ in range(100):  # deletion may finish after the answer
            if physical not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        configs = {"retention.bytes": str(SMALL_RETENTION_BYTES), "segment.bytes": str(64 * 1024)}
        response = await admin.create_topics([NewTopic(physical, 6, 1, topic_configs=configs)])
        errors = [e for e in getattr(response, "topic_errors", ()) if e[1] != 0]
        assert not errors, f"could not re-create {physical} with a small retention: {errors}"
        return 4 * SMALL_RETENTION_BYTES
    except IncompatibleBrokerVersion:
        return MOCK_RETENTION_BYTES + 2 * 1024 * 1024
    finally:
        await stop_client(admin)


async def _first_offset(stack: Stack, topic: str, partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(stack.bootstrap_servers))
    await consumer.start()
    try:
        tp = TopicPartition(stack.settings.topic_prefix + topic, partition)
        return int((await consumer.beginning_offsets([tp]))[tp])
    finally:
        await stop_client(consumer)


async def _wait_expired(stack: Stack, topic: str, partition: int, *, at_least: int) -> int:
    """Until the broker's first offset of the partition is at least ``at_least`` (retention runs in
    the background and may trim in steps: a consumer must find a clear gap, not race the trimming)."""
    first = 0

    async def expired() -> bool:
        nonlocal first
        first = await _first_offset(stack, topic, partition)
        return first >= at_least

    await wait_until(expired, timeout_s=60, what=f"the broker to expire the head of {topic}[{partition}]")
    return first


# --- an internal topic: refilled from the outbox ------------------------------------------------------------
async def _record_posted(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    await tx.conn.executemany(
        "insert into gap_seen (event_id, n) values ($1, $2)",
        [(e.id, int(e.data.entry_id.removeprefix("e-"))) for e in events],
    )


SEEN = Service(
    name="gap-reader",
    subscriptions=(Subscription(consumer="gap-reader", topics=(topics.JOURNAL_POSTED,), handler=_record_posted),),
)


def _posted_rows(start: int, count: int) -> list[Any]:
    emitter = Emitter("journal")
    for n in range(start, start + count):
        emitter.emit(
            topics.JOURNAL_POSTED,
            key="same-key",  # one partition, one key: order matters
            type="journal.transfer_posted",
            time=T0 + timedelta(seconds=n),
            cause=None,
            event_id=f"posted-{n}",
            data=TransferPosted(
                transfer_id=f"t-{n}-{PADDING}",
                entry_id=f"e-{n}",
                from_account="gap:a",
                to_account="gap:b",
                amount="1.00",
                currency="EUR",
            ),
        )
    return emitter.drain()


async def test_an_expired_range_of_an_internal_topic_is_refilled_from_the_outbox_in_order(stack: Stack) -> None:
    await stack.pool.execute(
        "create table gap_seen (event_id text primary key, n int not null, seq bigint generated always as identity)"
    )
    publish_bytes = await _shrink_retention(stack, topics.JOURNAL_POSTED.name)
    first_batch = _posted_rows(0, 10)
    partition = first_batch[0].partition
    async with stack.pool.acquire() as conn:
        await write_outbox(conn, first_batch)
    async with running(stack, [SEEN]):  # the group reads 10 records: it has a position now
        await wait_until(lambda: _count(stack, "select count(*) from gap_seen", 10), what="first records read")
    total = 10 + publish_bytes // 400
    async with stack.pool.acquire() as conn:
        await write_outbox(conn, _posted_rows(10, total - 10))
    async with running(stack, []):  # only a relay: publishes everything while the reader is down
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.outbox where sent_at is not null", total),
            timeout_s=120,
            what="every row published",
        )
    first = await _wait_expired(stack, topics.JOURNAL_POSTED.name, partition, at_least=10 + 100)
    refills_before = _metric(metrics.CONSUMER_GAPS, "gap-reader", topics.JOURNAL_POSTED.name, "refilled")

    async with running(stack, [SEEN]):
        await wait_until(
            lambda: _count(stack, "select count(*) from gap_seen", total), timeout_s=120, what="every record handled"
        )

    ordered = [r["n"] for r in await stack.pool.fetch("select n from gap_seen order by seq")]
    assert ordered == list(range(total)), "every record exactly once, in the order it was published"
    gap = (await list_gaps_all(stack))[0]
    assert (gap.missing_from, gap.missing_to) == (10, first)
    assert gap.resolution == f"refilled from the outbox: {first - 10} records"
    assert _metric(metrics.CONSUMER_GAPS, "gap-reader", topics.JOURNAL_POSTED.name, "refilled") == refills_before + 1


# --- a platform input topic: stopped, reported, skipped by an operator ---------------------------------------
def _transfer(i: int, key: str) -> tuple[Any, str, bytes]:
    data = TransferRequested(
        transfer_id=f"{key}-{i}", from_account="gap:src", to_account="gap:dst", amount="1.00", currency="EUR"
    )
    value = event_bytes("journal.transfer_requested", data, id=f"{key}-{i}", time=T0 + timedelta(seconds=i))
    return topics.JOURNAL_REQUESTS, key, value


async def test_an_expired_range_of_an_input_topic_stops_that_partition_and_is_reported(stack: Stack) -> None:
    publish_bytes = await _shrink_retention(stack, topics.JOURNAL_REQUESTS.name)
    hot, calm = "hot-key", "calm-key-7"
    from libs.messaging.partitioner import partition_for

    hot_partition = partition_for(hot.encode(), topics.JOURNAL_REQUESTS.partitions)
    assert partition_for(calm.encode(), topics.JOURNAL_REQUESTS.partitions) != hot_partition
    await publish(stack, [_transfer(i, hot) for i in range(5)])
    async with running(stack, [JOURNAL]):
        await wait_until(lambda: _entries(stack, 5), what="first transfers posted")
    many = publish_bytes // 250
    for start in range(5, 5 + many, 5000):
        await publish(stack, [_transfer(i, hot) for i in range(start, min(5 + many, start + 5000))])
    first = await _wait_expired(stack, topics.JOURNAL_REQUESTS.name, hot_partition, at_least=5 + 100)
    stopped_before = _metric(metrics.CONSUMER_GAPS, "journal", topics.JOURNAL_REQUESTS.name, "stopped")

    async with running(stack, [JOURNAL]) as worker:
        await wait_until(lambda: _open_gap(stack), what="the gap to be recorded")
        await publish(stack, [_transfer(i, calm) for i in range(20)])  # another partition keeps flowing
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.inbox where event_id like 'calm-key-7-%'", 20),
            what="the other partition handled",
        )
        handled_hot = await stack.pool.fetchval("select count(*) from settle.inbox where event_id like 'hot-key-%'")
        assert handled_hot == 5, "nothing after the gap was read: the partition is stopped, not jumped"
        gaps = await list_gaps_all(stack)
        assert len(gaps) == 1 and gaps[0].resolved_at is None
        assert (gaps[0].topic, gaps[0].partition, gaps[0].missing_from, gaps[0].missing_to) == (
            topics.JOURNAL_REQUESTS.name,
            hot_partition,
            5,
            first,
        )
        assert "ask the platform to re-publish" in gaps[0].reason
        assert _metric(metrics.CONSUMER_GAPS, "journal", topics.JOURNAL_REQUESTS.name, "stopped") > stopped_before
        assert any(worker.readers[0].gaps.values()), "/readyz reports the stopped partition"

        from services.cli.inspect import collect_backlog

        async with stack.pool.acquire() as conn:
            report = await collect_backlog(conn)
        assert [(g["topic"], g["missing_from"]) for g in report["gaps"]] == [(topics.JOURNAL_REQUESTS.name, 5)]

        async with stack.pool.acquire() as conn:
            await skip_gap(conn, gaps[0].id, "test: the platform re-published the range")
        remaining = 5 + many - first
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.inbox where event_id like 'hot-key-%'", 5 + remaining),
            timeout_s=120,
            what="the partition resumed after the skip",
        )


# --- helpers ------------------------------------------------------------------------------------------------
async def list_gaps_all(stack: Stack) -> list[Any]:
    async with stack.pool.acquire() as conn:
        return await list_gaps(conn, include_resolved=True, limit=100)


async def _open_gap(stack: Stack) -> bool:
    return bool(await stack.pool.fetchval("select count(*) from settle.consumer_gaps where resolved_at is null"))


async def _count(stack: Stack, sql: str, expected: int) -> bool:
    return int(await stack.pool.fetchval(sql)) >= expected


async def _entries(stack: Stack, expected: int) -> bool:
    return int(await stack.pool.fetchval("select count(*) from ledger.entries")) >= expected


def _metric(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())
