"""`settle demo`: the whole fleet billing a two-month GPU marketplace on the local stack.

1. stack up (PostgreSQL + broker), migrations, topic check;
2. generate the marketplace from the seed; its first month follows whatever the database's clock
   already passed, so a second run bills two later months and is as correct as the first;
3. start `settle fakepsp` (the fake processor) and metering, rating, invoicing and payments as
   `settle run` processes (each with its relay), payments pointed at the fake processor with a
   shortened inquiry schedule;
4. publish every input (and the renters' payment methods) with the real producer, tick the clock
   through both months (waiting until the fleet is idle and no gateway call is outstanding after each
   tick), publish the late events after the first month is final; the first month's invoices fall due
   and are collected during the second month's ticks;
5. after the last tick: a wire from the renter without a card (an overpayment), an operator refund,
   a dispute opened at the processor and lost;
6. print invoices, statements, wallet and credit events, dead letters, collections and the ledger's
   verdict; write every document (JSON and PDF) to a folder.
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
from tools.demo import collect, settlement
from tools.demo.scenario import Delivery, Scenario, deliveries_as_items, generate, month_after
from tools.fleet import fakepsp_process, wait_idle, worker_env, worker_processes

FLEET = ("metering", "rating", "invoicing", "payments", "payouts", "saga")


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
    settle: bool = True,
) -> bool:
    """Bill, collect and (with ``settle``) pay the suppliers, play the bank and reconcile; False when
    something does not add up."""
    fleet = FLEET if settle else FLEET[:4]
    await check_topics(bootstrap_servers, settings.topic_prefix)
    pool = await create_pool(database_url, max_size=4)
    try:
        start = await _first_month(pool)
        scenario = generate(seed=seed, start=start, contracts=contracts)
        folder = out or (settings.documents_dir or settings.state_dir / "documents") / f"demo-{scenario.tag}"
        first_letter = int(await pool.fetchval("select coalesce(max(id), 0) from settle.dead_letters"))
        services = [catalog.load(name) for name in fleet]
        console.print(
            f"[bold]Settle demo[/] · seed {seed} · {len(scenario.contracts)} contracts · "
            f"{len(scenario.suppliers)} suppliers · {len(scenario.deliveries)} input messages · "
            f"{scenario.start:%B %Y} and {month_after(scenario.start):%B %Y}"
        )
        console.print(
            f"payments collect at the fake processor (`settle fakepsp`); inquiry schedule shortened for the demo: "
            f"{', '.join(f'{d} s' for d in collect.INQUIRY_DELAYS_S)} (R14's default: 1 min, 5 min, 1 h, daily); "
            f"gateway timeout {collect.GATEWAY_TIMEOUT_S:g} s"
        )
        env = worker_env(
            database_url,
            bootstrap_servers,
            settings.topic_prefix,
            SETTLE_STATE_DIR=str(settings.state_dir),
        )
        payments_config = collect.write_payments_config(folder)
        began = time.perf_counter()
        with (
            fakepsp_process(
                env,
                # Ids carry the run's tag: a second demo against the same database starts a fresh processor
                # whose report must not reuse the first run's transaction ids (its lines would be refused).
                ["--hang-ms", str(collect.HANG_MS), "--id-namespace", scenario.tag],
                log_dir=folder / "logs",
            ) as (psp, psp_proc),
            worker_processes(
                {**env, **collect.worker_env_extra(psp, payments_config), **settlement.worker_env_extra(folder)},
                [[name, "--relays", "1"] for name in fleet],
                log_dir=folder / "logs",
            ) as procs,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            producer = await start_producer(bootstrap_servers, client_id="settle-demo")

            async def busy(pool: Any) -> int:
                return await collect.gateway_work(pool) + (await settlement.payout_work(pool) if settle else 0)

            async def idle() -> None:
                await wait_idle(
                    pool,
                    bootstrap_servers,
                    services,
                    topic_prefix=settings.topic_prefix,
                    alive=procs,
                    also_busy=busy,
                )
                if psp_proc.poll() is not None:
                    raise RuntimeError(f"settle fakepsp exited with status {psp_proc.returncode}")

            try:
                first = scenario.initial + scenario.payments + (scenario.settlement if settle else [])
                publishing = progress.add_task("publishing events", total=len(first))
                await _publish(producer, settings.topic_prefix, first, progress, publishing)
                await idle()
                clock = progress.add_task("ticking the clock", total=len(scenario.ticks))
                late_wire: dict[str, Any] | None = None
                for tick in scenario.ticks:
                    if settle and late_wire is None:
                        late_wire = await settlement.late_wire(pool, producer, settings.topic_prefix, scenario, tick)
                        if late_wire is not None:
                            await idle()
                    await publish_tick(producer, bootstrap_servers, settings.topic_prefix, tick)
                    progress.update(clock, description=f"clock at {format_utc(tick)}")
                    await idle()
                    if tick == scenario.late_after_tick and scenario.late:
                        late = progress.add_task("late events", total=len(scenario.late))
                        await _publish(producer, settings.topic_prefix, scenario.late, progress, late)
                        await idle()
                    progress.advance(clock)
                by_hand = progress.add_task("wire, refund, dispute", total=1)
                done = await collect.by_hand(pool, producer, settings.topic_prefix, scenario, psp)
                await idle()
                progress.advance(by_hand)
                processor = await collect.admin(psp, "GET", "/_admin/stats")
                banked: dict[str, Any] | None = None
                if settle:
                    for tick in settlement.bank_days(scenario):  # the clock runs on while the bank answers
                        await publish_tick(producer, bootstrap_servers, settings.topic_prefix, tick)
                        await idle()
                    bank = progress.add_task("the bank: acks, a return, statements, reconciliation", total=1)
                    wires = [w for w in (late_wire, collect.wire_receipt(scenario, done)) if w is not None]
                    banked = await settlement.play_the_bank(
                        pool, producer, settings.topic_prefix, settings, scenario, psp, folder, wires, idle
                    )
                    banked["late_wire"] = late_wire
                    progress.advance(bank)
            finally:
                await stop_client(producer)
        elapsed = time.perf_counter() - began
        from tools.demo.report import print_report

        return await print_report(
            pool,
            bootstrap_servers,
            settings,
            scenario,
            folder,
            first_letter,
            elapsed,
            console,
            collections=(done, processor),
            settled=banked,
        )
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
