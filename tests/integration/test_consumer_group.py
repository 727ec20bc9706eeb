"""Scale-out: two workers of one consumer group share the partitions (leased through PostgreSQL, see
libs.messaging.leases) and every event has its effect once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.ledger import verify
from schemas import topics
from schemas.events import TransferRequested
from services.journal.main import SERVICE as JOURNAL
from tests.conftest import Stack
from tests.fleet import event_bytes, members_share, publish, running, wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)


async def test_two_workers_in_one_group_split_the_partitions_and_each_event_lands_once(stack: Stack) -> None:
    n = 3000
    items = []
    for i in range(n):
        data = TransferRequested(
            transfer_id=f"g-{i}", from_account="grp:a", to_account="grp:b", amount="1.00", currency="EUR"
        )
        items.append(
            (
                topics.JOURNAL_REQUESTS,
                f"g-{i}",
                event_bytes("journal.transfer_requested", data, id=f"g-{i}", time=T0 + timedelta(seconds=i)),
            )
        )
    async with running(stack, [JOURNAL]) as first, running(stack, [JOURNAL], relays=0) as second:
        await members_share(first, second)
        await publish(stack, items)

        async def done() -> bool:
            return int(await stack.pool.fetchval("select count(*) from settle.inbox where consumer = 'journal'")) >= n

        await wait_until(done, timeout_s=90, what="every transfer handled")
        assert first.processed > 0 and second.processed > 0, (first.processed, second.processed)
        assert first.processed + second.processed >= n
    assert await stack.pool.fetchval("select count(*) from ledger.entries where kind = 'journal.transfer'") == n
    async with stack.pool.acquire() as conn:
        assert (await verify(conn)).ok
