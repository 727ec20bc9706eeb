"""Issue 8, item 7: a dead-lettered message of a money-moving consumer holds the later messages of its
key — they wait behind it as dead letters instead of being applied out of order — until an operator
redrives it (then they follow it, in order) or drops it (then they are redriven without it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from libs.errors import DomainRuleError
from libs.messaging import deadletters
from libs.messaging.consume import Subscription, Tx
from libs.messaging.worker import Service
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import TransferRequested
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, running, wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)
REFUSED = "13.00"
"""The handler refuses this amount while `refuse` says so (the cause an operator fixes)."""


async def _apply(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    refuse = await tx.conn.fetchval("select refuse from hold_switch")
    for event in events:
        if refuse and Decimal(event.data.amount) == Decimal(REFUSED):
            raise DomainRuleError(f"amount {REFUSED} refused (test rule)")
        await tx.conn.execute(
            "insert into hold_applied (key, event_id) values ($1, $2)", event.data.transfer_id.split(":")[0], event.id
        )


HOLDING = Service(
    name="holding",
    subscriptions=(
        Subscription(
            consumer="holding",
            topics=(topics.JOURNAL_REQUESTS,),
            handler=_apply,
            hold_topics=frozenset({topics.JOURNAL_REQUESTS.name}),
        ),
    ),
)


def _message(key: str, n: int, amount: str = "1.00") -> tuple[Any, str, bytes]:
    data = TransferRequested(
        transfer_id=f"{key}:{n}", from_account="hold:a", to_account="hold:b", amount=amount, currency="EUR"
    )
    return (
        topics.JOURNAL_REQUESTS,
        key,
        event_bytes("journal.transfer_requested", data, id=f"{key}-{n}", time=T0 + timedelta(seconds=n)),
    )


async def _applied(stack: Stack, key: str) -> list[str]:
    rows = await stack.pool.fetch("select event_id from hold_applied where key = $1 order by seq", key)
    return [r["event_id"] for r in rows]


async def _setup(stack: Stack) -> None:
    await stack.pool.execute(
        """create table hold_applied (seq bigint generated always as identity, key text, event_id text);
           create table hold_switch (refuse boolean not null); insert into hold_switch values (true)"""
    )


async def test_later_messages_of_a_dead_lettered_key_wait_and_follow_it_when_redriven(stack: Stack) -> None:
    await _setup(stack)
    held, free = "acct-7", "acct-8"
    messages = [
        _message(held, 1),
        _message(held, 2, REFUSED),
        _message(held, 3),
        _message(held, 4),
        _message(free, 1),
        _message(free, 2),
    ]
    async with running(stack, [HOLDING]):
        await publish(stack, messages)
        await wait_until(lambda: _count(stack, "select count(*) from settle.dead_letters", 3), what="3 dead letters")
        await wait_until(lambda: _count(stack, "select count(*) from hold_applied", 3), what="the rest applied")
        assert await _applied(stack, held) == ["acct-7-1"], "nothing after the dead letter was applied"
        assert await _applied(stack, free) == ["acct-8-1", "acct-8-2"], "other keys flow"
        letters = await stack.pool.fetch(
            "select id, event_id, error_class, held_by from settle.dead_letters order by id"
        )
        root = letters[0]
        assert (root["event_id"], root["error_class"], root["held_by"]) == ("acct-7-2", "DomainRuleError", None)
        assert [(r["event_id"], r["error_class"], r["held_by"]) for r in letters[1:]] == [
            ("acct-7-3", "KeyHeldError", root["id"]),
            ("acct-7-4", "KeyHeldError", root["id"]),
        ]

        # A new message of the held key while the hold stands waits too.
        await publish(stack, [_message(held, 5)])
        await wait_until(lambda: _count(stack, "select count(*) from settle.dead_letters", 4), what="4th letter")

        await stack.pool.execute("update hold_switch set refuse = false")  # the operator fixes the cause
        async with stack.pool.acquire() as conn, conn.transaction():
            redriven = await deadletters.redrive(conn, ids=[root["id"]])
        assert len(redriven) == 4, "the root brings its followers"
        await wait_until(lambda: _count(stack, "select count(*) from hold_applied", 7), what="redriven applied")
    assert await _applied(stack, held) == ["acct-7-1", "acct-7-2", "acct-7-3", "acct-7-4", "acct-7-5"]
    assert await stack.pool.fetchval("select count(*) from settle.key_holds") == 0


async def test_dropping_the_dead_letter_releases_the_messages_held_behind_it(stack: Stack) -> None:
    await _setup(stack)
    key = "acct-9"
    async with running(stack, [HOLDING]):
        await publish(stack, [_message(key, 1, REFUSED), _message(key, 2), _message(key, 3)])
        await wait_until(lambda: _count(stack, "select count(*) from settle.dead_letters", 3), what="3 dead letters")
        assert await _applied(stack, key) == []
        root_id = await stack.pool.fetchval("select id from settle.dead_letters where held_by is null")
        async with stack.pool.acquire() as conn, conn.transaction():
            followers = await deadletters.drop(conn, root_id, "test: the transfer was cancelled")
        assert len(followers) == 2
        await wait_until(lambda: _count(stack, "select count(*) from hold_applied", 2), what="followers applied")
    assert await _applied(stack, key) == ["acct-9-2", "acct-9-3"]
    root = await stack.pool.fetchrow("select dropped_at, drop_reason from settle.dead_letters where id = $1", root_id)
    assert root["dropped_at"] is not None and root["drop_reason"] == "test: the transfer was cancelled"


async def test_unreadable_bytes_hold_the_later_messages_of_their_key(stack: Stack) -> None:
    await _setup(stack)
    key = "acct-3"
    async with running(stack, [HOLDING]):
        await publish(stack, [_message(key, 1), (topics.JOURNAL_REQUESTS, key, b"{not json"), _message(key, 2)])
        await wait_until(lambda: _count(stack, "select count(*) from settle.dead_letters", 2), what="2 dead letters")
    assert await _applied(stack, key) == ["acct-3-1"]
    classes = [
        r["error_class"] for r in await stack.pool.fetch("select error_class from settle.dead_letters order by id")
    ]
    assert classes == ["InvalidEventError", "KeyHeldError"]


async def _count(stack: Stack, sql: str, expected: int) -> bool:
    return int(await stack.pool.fetchval(sql)) >= expected
