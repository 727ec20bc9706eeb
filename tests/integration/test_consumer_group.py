"""Scale-out: two workers of one consumer group share the partitions (leased through PostgreSQL, see
libs.messaging.leases) and every event has its effect once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.ledger import verify
from schemas import topics
from schemas.events import TransferRequested
from services.journal.main import SERVICE as JOURNAL
from tests.conftest import Servers, Stack, fresh_stack
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


async def test_a_group_of_the_same_name_in_another_database_is_not_a_member(
    stack: Stack, servers: Servers, template_db: str, tmp_path: Path
) -> None:
    """Advisory locks are per database: a `journal` worker of another deployment on the same server
    (another database) must not halve this group's partitions — nobody here would read the rest."""
    async with (
        fresh_stack(servers, template_db, tmp_path / "other") as other,
        running(other, [JOURNAL], relays=0) as elsewhere,
        running(stack, [JOURNAL]) as here,
    ):
        await members_share(elsewhere, here)
        # An absence is asserted over time: two more balancing rounds, and nobody gave slots away.
        await asyncio.sleep(2.5)
        assert here.readers[0].owned_slots == topics.JOURNAL_REQUESTS.partitions
        assert elsewhere.readers[0].owned_slots == topics.JOURNAL_REQUESTS.partitions
