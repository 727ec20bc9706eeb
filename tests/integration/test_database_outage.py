"""A database outage while a worker consumes: batches are rewound and retried, never dead-lettered;
when the database is back every event has its effect exactly once (errors sorted in libs/errors.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.ledger import verify
from schemas import topics
from schemas.events import TransferRequested
from services.journal.main import SERVICE as JOURNAL
from tests.conftest import Servers, Stack
from tests.fleet import event_bytes, publish, running, wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _transfers(start: int, n: int) -> list[tuple[topics.Topic, str, bytes]]:
    out = []
    for i in range(start, start + n):
        data = TransferRequested(
            transfer_id=f"o-{i}", from_account="out:a", to_account="out:b", amount="1.00", currency="USD"
        )
        out.append(
            (
                topics.JOURNAL_REQUESTS,
                f"o-{i}",
                event_bytes("journal.transfer_requested", data, id=f"o-{i}", time=T0 + timedelta(seconds=i)),
            )
        )
    return out


async def test_a_database_outage_is_waited_out_not_dead_lettered(stack: Stack, servers: Servers) -> None:
    database = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        async with running(stack, [JOURNAL]) as state:
            await publish(stack, _transfers(0, 300))
            await wait_until(lambda: _handled(stack, 300), what="first events handled")

            # Outage: no new connections, every existing one killed (the worker's pool included).
            await admin.execute(f'alter database "{database}" allow_connections false')
            await admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                database,
            )
            failed_before = _infra_failures()
            await publish(stack, _transfers(300, 300))
            # The worker meets the outage: rewinds, backs off, tries again (and fails again).
            await wait_until(
                lambda: _failed_since(failed_before, 2), timeout_s=60, what="the worker to meet the outage twice"
            )
            await admin.execute(f'alter database "{database}" allow_connections true')

            await wait_until(lambda: _handled(stack, 600), timeout_s=90, what="every event handled after the outage")
            assert state.processed >= 600
            assert _infra_failures() >= failed_before + 2, "the outage was hit (batches rewound, not acknowledged)"
    finally:
        await admin.execute(f'alter database "{database}" allow_connections true')
        await admin.close()

    assert await stack.pool.fetchval("select count(*) from settle.dead_letters") == 0  # an outage is not bad input
    assert await stack.pool.fetchval("select count(*) from ledger.entries where kind = 'journal.transfer'") == 600
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok
    assert await stack.pool.fetchval("select -balance from ledger.accounts where code = 'out:a'") == 600 * 10**8


async def _handled(stack: Stack, n: int) -> bool:
    try:
        return int(await stack.pool.fetchval("select count(*) from settle.inbox where consumer = 'journal'")) >= n
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
        return False  # the test's own connections are cut off during the outage too


def _infra_failures() -> float:
    """Batches the journal consumer could not settle because a dependency was down (this process's
    workers: ``running`` runs them in-process), from the metric ``libs/messaging/worker.py`` counts."""
    value = REGISTRY.get_sample_value("settle_infrastructure_failures_total", {"consumer": "journal"})
    return 0.0 if value is None else value


async def _failed_since(before: float, n: int) -> bool:
    return _infra_failures() >= before + n
