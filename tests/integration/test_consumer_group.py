"""Scale-out: two workers of one consumer group share the partitions (leased through PostgreSQL, see
libs.messaging.leases) and every event has its effect once."""

from __future__ import annotations

import asyncio
import contextlib
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


@pytest.mark.parametrize("yields", [1, 2, 3])
async def test_a_lease_close_cancelled_midway_still_gives_the_connection_and_its_locks_back(
    stack: Stack, yields: int
) -> None:
    """A worker's shutdown cancels its readers, and cancels them again after 10 s: a reader may be
    cancelled while it gives its leases back. The lease connection must still return to the pool (or be
    closed): held, its session would keep the group's partitions leased to no one alive — the next worker
    of the group in that process could read none of them, and the pool could never close."""
    from libs.messaging.leases import Leases, group_key

    leases = Leases(stack.pool, "grp-cancelled-close", 3)
    assert await leases.refresh() == frozenset({0, 1, 2})
    closing = asyncio.create_task(leases.close())
    for _ in range(yields):  # cancelled at one of its first steps
        await asyncio.sleep(0)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing

    async def given_back() -> bool:
        held = await stack.pool.fetchval(
            "select count(*) from pg_locks where locktype = 'advisory' and classid::bigint = $1",
            group_key("grp-cancelled-close"),
        )
        return held == 0 and stack.pool.get_size() - stack.pool.get_idle_size() == 0

    await wait_until(given_back, timeout_s=10, what="the lease connection back in the pool and its locks gone")
    await asyncio.wait_for(stack.pool.expire_connections(), 10)
