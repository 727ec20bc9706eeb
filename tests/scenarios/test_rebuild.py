"""The fleet is a function of its input log: the demo billed live, then rebuilt from the input archive
alone into a fresh database, gives the same invoices, statements, charges and journal.

The demo (``tools.demo.run.run_demo``) publishes the seeded marketplace with a real producer
(duplicates, out-of-order events, malformed messages), ticks the clock through two months and sends
late events after the first month is invoiced. ``tools.replay.rebuild_into`` then replays the
archive, in the ticks' barrier order, to metering, rating and invoicing worker processes on a private
topic prefix of the same broker, into an empty database. A plain replay of an input topic over the
live database afterwards changes nothing (every event is already applied: dedup by event id).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console

from libs.db.pool import create_pool
from libs.ledger import verify
from libs.messaging.archive import ArchiveRange, spans
from libs.messaging.broker import end_offsets
from libs.stack.database import with_database
from schemas import topics
from services.operations.compare import BILLING_KINDS, differences, snapshot
from tests.conftest import Servers, Stack
from tools.demo.run import run_demo
from tools.fleet import ROOT, worker_env
from tools.replay import check_whole, rebuild_into, replay_range

pytestmark = pytest.mark.integration

SEED = 374
CONTRACTS = 12


@pytest.mark.timeout(900)
async def test_rebuild_from_the_archive_gives_the_same_documents_and_journal(
    stack: Stack, servers: Servers, tmp_path: Path
) -> None:
    console = Console(file=io.StringIO(), width=200)
    verified = await asyncio.wait_for(
        run_demo(
            stack.settings,
            stack.database_url,
            stack.bootstrap_servers,
            seed=SEED,
            contracts=CONTRACTS,
            out=tmp_path / "demo",
            console=console,
            settle=False,  # billing and collections: payouts, sagas and the bank are not rebuilt
        ),
        480,
    )
    assert verified

    # Every position of every archived topic the broker holds is in the archive, once.
    archived = [t for t in topics.REGISTRY if t.archive]
    ends = await end_offsets(
        stack.bootstrap_servers, {stack.settings.topic_prefix + t.name: t.partitions for t in archived}
    )
    async with stack.pool.acquire() as conn:
        kept = {(s.topic, s.partition): s.records for s in await spans(conn)}
        await check_whole(conn)
    broker = {(tp.topic[len(stack.settings.topic_prefix) :], tp.partition): n for tp, n in ends.items() if n}
    assert kept == broker
    assert sum(kept.values()) > 100

    async with stack.pool.acquire() as conn:
        live = await snapshot(conn, kinds=BILLING_KINDS)  # payments and payouts are not rebuilt
    assert live.invoices and live.statements and live.charges and live.entries

    name = f"settle_rebuild_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(servers.admin_dsn)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    into = with_database(servers.admin_dsn, name)
    try:
        # two rating processes sharing its partitions (as `settle rebuild --rating-workers 2` and the bench run
        # it): the result must not depend on how many there are
        result = await rebuild_into(
            stack.pool,
            into,
            stack.bootstrap_servers,
            log_dir=tmp_path / "rebuild",
            idle_timeout_s=300,
            fleet=("metering", "rating", "rating", "invoicing"),
        )
        assert result.published == sum(kept.values())
        pool = await create_pool(into, max_size=2)
        try:
            async with pool.acquire() as conn:
                rebuilt = await snapshot(conn, kinds=BILLING_KINDS)
                assert (await verify(conn)).ok
        finally:
            await pool.close()
    finally:
        admin = await asyncpg.connect(servers.admin_dsn)
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()

    assert differences(live, rebuilt) == []
    assert live.counts() == rebuilt.counts()
    assert live.entries_digest() == rebuilt.entries_digest()

    # A plain replay of everything already applied is a no-op: skipped by event id.
    replayed = await replay_range(stack.pool, ArchiveRange(topics.CONTRACTS.name), [])
    assert replayed.records == kept_records(kept, topics.CONTRACTS.name) * 3  # metering, rating, invoicing
    assert replayed.processed == 0
    assert replayed.duplicates > 0
    async with stack.pool.acquire() as conn:
        assert differences(live, await snapshot(conn, kinds=BILLING_KINDS)) == []

    # The command: audited with who, arguments and outcome; a range older than the inbox retention refused.
    done = settle_cli(stack, "replay", "--topic", "wallets.v1", "--service", "rating", "--operator", "tester")
    assert done.returncode == 0, done.stderr + done.stdout
    run = await stack.pool.fetchrow("select * from settle.replay_runs order by id desc limit 1")
    assert (run["operator"], run["command"], run["outcome"]) == ("tester", "replay", "done")
    assert run["arguments"]["topic"] == "wallets.v1" and run["arguments"]["services"] == ["rating"]
    undecodable = await stack.pool.fetchval(
        "select count(*) from settle.input_archive where topic = 'wallets.v1' and event_id is null"
    )
    assert run["detail"]["processed"] == 0  # every decodable record is a duplicate; malformed ones stay dead letters
    assert run["detail"]["duplicates"] == run["detail"]["records"] - undecodable > 0
    await stack.pool.execute(
        "update settle.input_archive set received_at = now() - interval '40 days' where topic = 'wallets.v1'"
    )
    refused = settle_cli(stack, "replay", "--topic", "wallets.v1", "--operator", "tester")
    assert refused.returncode == 2 and "inbox retention" in refused.stderr + refused.stdout
    run = await stack.pool.fetchrow("select * from settle.replay_runs order by id desc limit 1")
    assert run["outcome"] == "failed" and "inbox retention" in run["detail"]["error"]


def settle_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(stack.database_url, stack.bootstrap_servers, stack.settings.topic_prefix)
    env["SETTLE_STATE_DIR"] = str(stack.settings.state_dir)
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def kept_records(kept: dict[tuple[str, int], int], topic: str) -> int:
    return sum(n for (t, _), n in kept.items() if t == topic)
