"""Inbox retention (``libs.messaging.inbox``): claims older than the window are pruned, younger ones stay,
a redelivery inside the window is still deduplicated, and claims of dead-lettered events are kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.messaging.consume import Subscription, Tx
from libs.messaging.inbox import prune_inbox, prune_inbox_task, retention_s
from libs.messaging.worker import Runtime
from libs.settings import Settings
from schemas import topics
from schemas.envelope import Envelope
from tests.conftest import Stack
from tests.feed import Feed
from tests.fleet import event_bytes

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


async def _noop(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    handled.extend(e.id for e in events)


handled: list[str] = []


async def test_inbox_prunes_old_claims_keeps_young_ones_and_still_deduplicates_inside_the_window(
    stack: Stack,
) -> None:
    handled.clear()
    sub = Subscription(consumer="probe", topics=(topics.JOURNAL_REQUESTS,), handler=_noop)
    feed = Feed(stack, sub)
    data = {
        "transfer_id": "t",
        "from_account": "a",
        "to_account": "b",
        "amount": "1.00",
        "currency": "USD",
        "memo": "m",
    }

    def transfer(event_id: str) -> bytes:
        return event_bytes("journal.transfer_requested", {**data, "transfer_id": event_id}, id=event_id, time=T0)

    for event_id in ("old", "young", "old-dead-lettered"):
        await feed.send(topics.JOURNAL_REQUESTS, event_id, transfer(event_id))
    assert handled == ["old", "young", "old-dead-lettered"]
    settings = Settings(database_url=stack.database_url)
    window = timedelta(seconds=retention_s(settings))
    now = datetime.now(UTC)
    async with stack.pool.acquire() as conn:
        await conn.execute(
            "update settle.inbox set processed_at = $1 where event_id in ('old', 'old-dead-lettered')",
            now - window - HOUR,
        )
        await conn.execute("update settle.inbox set processed_at = $1 where event_id = 'young'", now - window + HOUR)
        # Another group dead-lettered old-dead-lettered and nobody redrove it yet: its claims stay.
        await conn.execute(
            """insert into settle.dead_letters (consumer, topic, partition, "offset", event_id, error_class, reason)
               values ('other', 'journal.requests.v1', 0, 0, 'old-dead-lettered', 'X', 'r')"""
        )
        assert await prune_inbox(conn, older_than=now - window, batch_max=10) == 1
        assert await prune_inbox(conn, older_than=now - window, batch_max=10) == 0
        left = {r["event_id"] for r in await conn.fetch("select event_id from settle.inbox where consumer = 'probe'")}
        assert left == {"young", "old-dead-lettered"}

    # A redelivery inside the window is still a duplicate; the pruned one would be handled again.
    result = await feed.send(topics.JOURNAL_REQUESTS, "young", transfer("young"))
    assert result.duplicates == 1 and handled == ["old", "young", "old-dead-lettered"]
    result = await feed.send(topics.JOURNAL_REQUESTS, "old-dead-lettered", transfer("old-dead-lettered"))
    assert result.duplicates == 1


async def test_inbox_retention_has_a_floor_and_the_task_prunes_until_stopped(stack: Stack) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(inbox_retention_s=3600)
    assert retention_s(Settings()) == 35 * 24 * 3600
    async with stack.pool.acquire() as conn:
        await conn.execute(
            """insert into settle.inbox (consumer, event_id, fingerprint, topic, partition, "offset", processed_at)
               select 'probe', 'e' || n, '\\x00', 't', 0, n, now() - interval '40 days'
                 from generate_series(1, 25) n"""
        )
    stop = asyncio.Event()
    settings = Settings(database_url=stack.database_url)
    task = asyncio.create_task(prune_inbox_task(Runtime(settings, stack.pool, "", stop)))
    for _ in range(100):
        async with stack.pool.acquire() as conn:
            if await conn.fetchval("select count(*) from settle.inbox where consumer = 'probe'") == 0:
                break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from settle.inbox where consumer = 'probe'") == 0
