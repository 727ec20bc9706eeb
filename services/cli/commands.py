"""Commands that grow with the billing services: smoke, clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from libs.db.pool import create_pool
from libs.ledger import balances, verify
from libs.messaging import deadletters
from libs.messaging.broker import check_topics, start_producer, stop_client
from libs.messaging.partitioner import partition_for
from libs.messaging.worker import run_worker
from libs.money import format_ledger
from libs.settings import get_settings
from schemas import topics
from schemas.envelope import encode
from schemas.events import TransferRequested
from services.cli.app import app, clock_app
from services.cli.kernel import print_verify
from services.cli.runtime import console, database, resolve, run_async


@app.command("smoke")
@run_async
async def smoke(transfers: Annotated[int, typer.Option(help="Transfers to push through.")] = 1000) -> None:
    """The kernel's smoke run: stack up, migrate, push transfers (with duplicates and bad bytes)
    through consume → ledger → outbox → relay → topic, and print what happened."""
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    await check_topics(targets.bootstrap_servers, settings.topic_prefix)
    console.print(f"PostgreSQL: {targets.database_kind}; broker: {targets.broker_kind} {targets.bootstrap_servers}")
    run_id = str(int(time.time()))
    async with database(settings) as pool:
        producer = await start_producer(targets.bootstrap_servers, client_id="settle-smoke")
        start = datetime(2026, 12, 1, tzinfo=UTC)
        try:
            futures = []
            for n in range(transfers):
                data = TransferRequested(
                    transfer_id=f"smoke-{run_id}-{n}",
                    from_account="smoke:bank",
                    to_account="smoke:fees",
                    amount="0.01",
                    currency="USD",
                    memo="smoke",
                )
                value = encode(
                    event_id=f"smoke-{run_id}-{n}",
                    source="/settle/smoke",
                    type="journal.transfer_requested",
                    time=start + timedelta(seconds=n),
                    data=data,
                )
                key = data.transfer_id.encode()
                for _ in range(2 if n % 10 == 0 else 1):  # every tenth is delivered twice
                    futures.append(
                        await producer.send(
                            settings.topic_prefix + topics.JOURNAL_REQUESTS.name,
                            value=value,
                            key=key,
                            partition=partition_for(key, topics.JOURNAL_REQUESTS.partitions),
                        )
                    )
            futures.append(
                await producer.send(
                    settings.topic_prefix + topics.JOURNAL_REQUESTS.name, value=b"{not json", key=b"bad"
                )
            )
            await asyncio.gather(*futures)
        finally:
            await stop_client(producer)
        from services.journal.main import SERVICE as JOURNAL

        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker([JOURNAL], settings, pool=pool, bootstrap_servers=targets.bootstrap_servers, stop=stop, relays=1)
        )
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < 120:
                done = await pool.fetchval(
                    "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
                )
                letters = await pool.fetchval("select count(*) from settle.dead_letters where consumer = 'journal'")
                if done >= transfers and letters >= 1:
                    break
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await worker
        async with pool.acquire() as conn:
            rows = [b for b in await balances(conn, prefix="smoke:")]
            report = await verify(conn)
            letters = await deadletters.list_dead_letters(conn, consumer="journal")
    table = Table("account", "balance")
    for b in rows:
        table.add_row(b.code, format_ledger(b.normal_units, b.currency))
    console.print(table)
    for letter in letters[-3:]:
        console.print(f"dead letter {letter['id']}: {letter['reason']}")
    print_verify(report)


@clock_app.command("tick")
@run_async
async def clock_tick(at: Annotated[str, typer.Option(help="RFC 3339 UTC instant, e.g. 2026-12-01T00:00:00Z")]) -> None:
    """Publish one tick: every hour and billing period ending at or before AT closes, once everything
    published to the input topics before this tick has been consumed."""
    from libs.times import parse_utc
    from services.clock.main import publish_tick

    try:
        when = parse_utc(at)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    producer = await start_producer(targets.bootstrap_servers, client_id="settle-clock")
    try:
        await publish_tick(producer, targets.bootstrap_servers, settings.topic_prefix, when)
    finally:
        await stop_client(producer)
    console.print(f"tick published: {at} (with the input topics' end offsets as its barrier)")


@clock_app.command("run")
def clock_run() -> None:
    """Run the clock worker: a tick at every SETTLE_CLOCK_INTERVAL_S boundary (wall clock)."""
    from services.cli.kernel import run

    run(["clock"], relays=1)


__all__ = ["app", "create_pool"]
