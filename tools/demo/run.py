"""`settle demo`: the whole fleet billing a two-month GPU marketplace on the local stack.

1. stack up (PostgreSQL + broker), migrations, topic check;
2. generate the marketplace from the seed; its first month follows whatever the database's clock
   already passed, so a second run bills the next two months and is as correct as the first;
3. start metering, rating and invoicing as `settle run` processes (each with its relay);
4. publish every input with the real producer, tick the clock through both months (waiting until
   the fleet is idle after each tick), publish the late events after the first month is final;
5. print invoices, statements, wallet and credit events, dead letters and the ledger's verdict;
   write every document (JSON and PDF) to a folder.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from libs.db.pool import create_pool
from libs.messaging.broker import check_topics, publish_keyed, start_producer, stop_client
from libs.settings import Settings
from libs.times import format_utc
from services import catalog
from services.clock.main import publish_tick
from tools.demo.scenario import Delivery, Scenario, deliveries_as_items, generate, month_after
from tools.fleet import wait_idle, worker_env, worker_processes

FLEET = ("metering", "rating", "invoicing")


async def _first_month(pool: Any) -> datetime:
    """The month after everything the database's clock has seen (December 2026 on a fresh database)."""
    target = await pool.fetchval("select target from metering.clock where id = 1")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    if target is not None and target >= start:
        start = month_after(target - timedelta(seconds=1))
    return start


async def _publish(producer: Any, prefix: str, deliveries: list[Delivery], progress: Progress, task: Any) -> None:
    await publish_keyed(producer, deliveries_as_items(deliveries), prefix=prefix)
    progress.advance(task, len(deliveries))


async def run_demo(
    settings: Settings,
    database_url: str,
    bootstrap_servers: str,
    *,
    seed: int,
    contracts: int,
    out: Path | None,
    console: Console,
) -> bool:
    await check_topics(bootstrap_servers, settings.topic_prefix)
    pool = await create_pool(database_url, max_size=4)
    try:
        start = await _first_month(pool)
        scenario = generate(seed=seed, start=start, contracts=contracts)
        folder = out or (settings.documents_dir or settings.state_dir / "documents") / f"demo-{scenario.tag}"
        first_letter = int(await pool.fetchval("select coalesce(max(id), 0) from settle.dead_letters"))
        services = [catalog.load(name) for name in FLEET]
        console.print(
            f"[bold]Settle demo[/] · seed {seed} · {len(scenario.contracts)} contracts · "
            f"{len(scenario.suppliers)} suppliers · {len(scenario.deliveries)} input messages · "
            f"{scenario.start:%B %Y} and {month_after(scenario.start):%B %Y}"
        )
        env = worker_env(
            database_url,
            bootstrap_servers,
            settings.topic_prefix,
            SETTLE_STATE_DIR=str(settings.state_dir),
        )
        began = time.perf_counter()
        with (
            worker_processes(env, [[name, "--relays", "1"] for name in FLEET], log_dir=folder / "logs") as procs,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            producer = await start_producer(bootstrap_servers, client_id="settle-demo")
            try:
                publishing = progress.add_task("publishing events", total=len(scenario.initial))
                await _publish(producer, settings.topic_prefix, scenario.initial, progress, publishing)
                await wait_idle(pool, bootstrap_servers, services, topic_prefix=settings.topic_prefix, alive=procs)
                clock = progress.add_task("ticking the clock", total=len(scenario.ticks))
                for tick in scenario.ticks:
                    await publish_tick(producer, bootstrap_servers, settings.topic_prefix, tick)
                    progress.update(clock, description=f"clock at {format_utc(tick)}")
                    await wait_idle(pool, bootstrap_servers, services, topic_prefix=settings.topic_prefix, alive=procs)
                    if tick == scenario.late_after_tick and scenario.late:
                        late = progress.add_task("late events", total=len(scenario.late))
                        await _publish(producer, settings.topic_prefix, scenario.late, progress, late)
                        await wait_idle(
                            pool, bootstrap_servers, services, topic_prefix=settings.topic_prefix, alive=procs
                        )
                    progress.advance(clock)
            finally:
                await stop_client(producer)
        elapsed = time.perf_counter() - began
        from tools.demo.report import print_report

        return await print_report(pool, bootstrap_servers, settings, scenario, folder, first_letter, elapsed, console)
    finally:
        await pool.close()


def summarize_notes(scenario: Scenario) -> dict[str, int]:
    return dict(Counter(d.note or "ordinary" for d in scenario.deliveries))


def read_alerts(records: list[Any], tag: str) -> list[dict[str, Any]]:
    out = []
    for r in records:
        event = orjson.loads(r.value)
        if str(event["data"].get("contract_id", "")).startswith(tag):
            out.append({"type": event["type"], **event["data"]})
    return out


__all__ = ["Path", "run_demo"]
