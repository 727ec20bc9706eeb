"""The kernel end to end over TCP: publish → consume() → ledger + outbox → relay → topic.

Invariants (ARCHITECTURE §3): 1 (balanced), 4 (exactly-once effects), 5 (outbox), 10 (bad input is
quarantined with its reason and the partition keeps flowing).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from libs.ledger import balances, verify
from libs.messaging import deadletters
from libs.messaging.envelope import OPERATOR_SOURCE_PREFIX
from schemas import topics
from schemas.events import TransferRequested
from services.journal.main import SERVICE as JOURNAL
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def transfer(
    n: int,
    amount: str = "1.00",
    *,
    src: str = "ops:cash",
    dst: str = "ops:fees",
    floor: str | None = None,
    event_id: str | None = None,
) -> tuple[topics.Topic, str, bytes]:
    data = TransferRequested(
        transfer_id=f"tr-{n}",
        from_account=src,
        to_account=dst,
        amount=amount,
        currency="USD",
        memo=f"transfer {n}",
        from_type="asset",
        to_type="asset",
        from_floor=floor,
    )
    value = event_bytes("journal.transfer_requested", data, id=event_id or f"ev-{n}", time=T0 + timedelta(seconds=n))
    return topics.JOURNAL_REQUESTS, f"tr-{n}", value


async def count(stack: Stack, sql: str) -> int:
    return int(await stack.pool.fetchval(sql))


async def test_each_event_has_its_effect_once_and_bad_input_is_dead_lettered(stack: Stack) -> None:
    good = [transfer(n, "2.50") for n in range(200)]
    duplicates = good[10:60]  # redelivered: same id, same bytes
    conflict = transfer(5, "9.99", event_id="ev-5")  # same id, other payload
    malformed = [
        (topics.JOURNAL_REQUESTS, "x1", b"{not json"),
        (topics.JOURNAL_REQUESTS, "x2", orjson.dumps({"hello": "world"})),
        (topics.JOURNAL_REQUESTS, "x3", event_bytes("journal.nonsense", {"a": 1}, id="bad-type", time=T0)),
        (
            topics.JOURNAL_REQUESTS,
            "x4",
            event_bytes("journal.transfer_requested", {"transfer_id": "t"}, id="bad-data", time=T0),
        ),
    ]
    await publish(stack, good[:100] + malformed + duplicates + [conflict] + good[100:])

    async with running(stack, [JOURNAL]):
        await wait_until(lambda: _posted(stack, 200), what="200 posted events relayed")
        await wait_until(lambda: _dead(stack, 5), what="5 dead letters")
        # Offsets are committed after the database commit: nothing is left to redeliver.
        await wait_until(lambda: _no_lag(stack), what="consumer group caught up (offsets committed)")

    assert await count(stack, "select count(*) from ledger.entries where kind = 'journal.transfer'") == 200
    async with stack.pool.acquire() as conn:
        by_code = {b.code: b for b in await balances(conn)}
        report = await verify(conn)
        letters = await deadletters.list_dead_letters(conn)
    assert by_code["ops:fees"].normal_units == 200 * 250 * 10**6  # 200 × $2.50 in USD/8 units
    assert report.ok and report.trial_balance == {"USD/8": 0}

    reasons = {letter["event_id"] or letter["offset"]: letter for letter in letters}
    assert reasons["ev-5"]["error_class"] == "IdempotencyConflictError"
    by_class = sorted(letter["error_class"] for letter in letters)
    assert by_class == ["IdempotencyConflictError"] + ["InvalidEventError"] * 4
    texts = " | ".join(letter["reason"] for letter in letters)
    assert "not JSON" in texts and "no 'specversion'" in texts and "journal.nonsense" in texts
    assert "fails its schema" in texts

    published = await read_topic(stack, topics.JOURNAL_POSTED)
    ids = [orjson.loads(r.value)["data"]["transfer_id"] for r in published]
    assert sorted(set(ids)) == sorted(f"tr-{n}" for n in range(200))
    dlq = await read_topic(stack, topics.Topic(topics.JOURNAL_REQUESTS.dlq, "key", 1, ""))
    assert len(dlq) == 5
    assert all(dict(r.headers).get("settle-dlq-reason") for r in dlq)


async def test_an_operator_command_sent_again_later_by_someone_else_is_a_duplicate_not_a_conflict(
    stack: Stack,
) -> None:
    """An operator command (source ``/settle/cli/<user>``) is named by its id: the same command re-run a
    minute later from another login, before the worker read the first, has its effect once and
    dead-letters nothing. The same id with other data still is a conflict; a platform event sent again
    with another time still is one too."""
    data = TransferRequested(transfer_id="tr-op", from_account="ops:cash", to_account="ops:fees", amount="7.00",
                             currency="USD", memo="operator", from_type="asset", to_type="asset")  # fmt: skip
    other = data.model_copy(update={"amount": Decimal("8.00")})
    kind = "journal.transfer_requested"
    sent = [
        event_bytes(kind, data, id="cmd-op-1", time=T0, source=OPERATOR_SOURCE_PREFIX + "alice"),
        event_bytes(kind, data, id="cmd-op-1", time=T0 + timedelta(minutes=1), source=OPERATOR_SOURCE_PREFIX + "bob"),
        event_bytes(kind, other, id="cmd-op-1", time=T0 + timedelta(minutes=2), source=OPERATOR_SOURCE_PREFIX + "bob"),
        event_bytes(kind, data.model_copy(update={"transfer_id": "tr-pl"}), id="pl-1", time=T0, source="/platform"),
        event_bytes(kind, data.model_copy(update={"transfer_id": "tr-pl"}), id="pl-1", time=T0 + timedelta(minutes=1),
                    source="/platform"),
    ]  # fmt: skip
    await publish(stack, [(topics.JOURNAL_REQUESTS, "op", value) for value in sent])
    async with running(stack, [JOURNAL]):
        await wait_until(lambda: _posted(stack, 2), what="the command and the platform event posted")
        await wait_until(lambda: _dead(stack, 2), what="the two conflicts dead-lettered")
        await wait_until(lambda: _no_lag(stack), what="consumer group caught up")

    async with stack.pool.acquire() as conn:
        letters = await deadletters.list_dead_letters(conn)
        posted = await conn.fetchval("select count(*) from ledger.entries where kind = 'journal.transfer'")
    assert posted == 2
    assert sorted((letter["event_id"], letter["error_class"]) for letter in letters) == [
        ("cmd-op-1", "IdempotencyConflictError"),
        ("pl-1", "IdempotencyConflictError"),
    ]
    async with stack.pool.acquire() as conn:
        by_code = {b.code: b for b in await balances(conn)}
    assert by_code["ops:fees"].normal_units == 2 * 700 * 10**6  # 7.00 once for the command, once for pl-1


async def _no_lag(stack: Stack) -> bool:
    from tools.fleet import consumer_lag

    return await consumer_lag(stack.pool, stack.bootstrap_servers, [JOURNAL], stack.settings.topic_prefix) == 0


async def _posted(stack: Stack, n: int) -> bool:
    return (
        await count(
            stack, "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
        )
        >= n
    )


async def _dead(stack: Stack, n: int) -> bool:
    return await count(stack, "select count(*) from settle.dead_letters") >= n


async def test_floor_refusals_are_business_outcomes_not_losses(stack: Stack) -> None:
    # Fund a wallet-like account with $10, then 30 transfers of $1 out of it: 10 post, 20 are refused.
    fund = transfer(0, "10.00", src="bank", dst="wallet")
    spends = [transfer(n, "1.00", src="wallet", dst="revenue", floor="0") for n in range(1, 31)]
    # The wallet must exist with its floor before funding: create it through the first spend's spec.
    async with running(stack, [JOURNAL]):
        await publish(stack, [spends[0]])
        await wait_until(lambda: _count_events(stack, 1), what="first spend handled")
        await publish(stack, [fund])
        await wait_until(lambda: _count_events(stack, 2), what="funding handled")
        await publish(stack, spends[1:])
        await wait_until(lambda: _count_events(stack, 31), what="all spends handled")
    published = await read_topic(stack, topics.JOURNAL_POSTED)
    types = [orjson.loads(r.value)["type"] for r in published]
    assert types.count("journal.transfer_posted") == 11  # funding + 10 spends
    assert types.count("journal.transfer_refused") == 20
    async with stack.pool.acquire() as conn:
        wallet = next(b for b in await balances(conn) if b.code == "wallet")
        assert wallet.normal_units == 0
        assert (await verify(conn)).ok


async def _count_events(stack: Stack, n: int) -> bool:
    return (
        await count(
            stack, "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
        )
        >= n
    )


async def test_redrive_republishes_a_dead_letter_to_its_topic(stack: Stack) -> None:
    bad = event_bytes("journal.transfer_requested", {"transfer_id": "t"}, id="needs-fix", time=T0)
    await publish(stack, [(topics.JOURNAL_REQUESTS, "k", bad)])
    async with running(stack, [JOURNAL]):
        await wait_until(lambda: _dead(stack, 1), what="dead letter")
        async with stack.pool.acquire() as conn, conn.transaction():
            redriven = await deadletters.redrive(conn, consumer="journal")
        assert len(redriven) == 1
        # Still invalid: it comes back as a second dead letter at its new offset, and nothing else happens.
        await wait_until(lambda: _dead(stack, 2), what="redriven message dead-lettered again")
    async with stack.pool.acquire() as conn:
        rows = await deadletters.list_dead_letters(conn, include_redriven=True)
    assert [r["redrive_count"] for r in rows] == [1, 0]
    assert rows[0]["offset"] != rows[1]["offset"]


@pytest.mark.parametrize("prefetch", [False, True], ids=["paused-during-batch", "prefetching"])
async def test_a_reader_fetches_during_a_batch_only_when_prefetch_is_on(
    stack: Stack, prefetch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SETTLE_CONSUME_PREFETCH: off, a reader's partitions are paused while its batch is processed (noida-db
    would have the client's prefetch loop spin); on, they keep fetching (a Kafka honouring fetch.max.wait.ms).
    Either way every event has its effect once."""
    from libs.messaging.consume import Consumer
    from libs.messaging.subscriber import PartitionReader

    clients: list[Any] = []
    paused_during: list[int] = []
    start_client = PartitionReader._start_client
    process = Consumer.process

    async def recording_start(self: PartitionReader) -> Any:
        client = await start_client(self)
        clients.append(client)
        return client

    async def recording_process(self: Consumer, records: Any, **kwargs: Any) -> Any:
        paused_during.append(sum(len(c.paused()) for c in clients))
        return await process(self, records, **kwargs)

    monkeypatch.setattr(PartitionReader, "_start_client", recording_start)
    monkeypatch.setattr(Consumer, "process", recording_process)
    settled = dataclasses.replace(stack, settings=stack.settings.model_copy(update={"consume_prefetch": prefetch}))
    await publish(stack, [transfer(n) for n in range(120)])

    async with running(settled, [JOURNAL]):
        await wait_until(lambda: _posted(stack, 120), what="120 posted events relayed")

    assert await count(stack, "select count(*) from ledger.entries where kind = 'journal.transfer'") == 120
    assert paused_during, "no batch was processed"
    if prefetch:
        assert max(paused_during) == 0
    else:
        assert min(paused_during) > 0
