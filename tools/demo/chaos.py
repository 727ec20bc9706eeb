"""The billing fleet under SIGKILL: the same input log, billed calm and while workers are killed.

:func:`drive` runs metering, rating and invoicing as `settle run` processes and feeds them a demo
marketplace in a fixed order — the events of the first month, the first month's closing tick, the
rest of the input, the second month's closing tick — while (with ``kill``) a random worker is
SIGKILLed and restarted every few seconds: mid-batch, mid-close, mid-relay. Then the killing stops,
the fleet drains, every tick is sent again and the late events follow. Because a tick closes only
what was published before it (its barrier) and every effect is exactly once, the documents must
equal those of the calm run, the ledger must verify and no partition may be left with a gap.

Used by `settle bench chaos` (demo-sized, with a backlog larger than the mock broker kept) and by
``tests/chaos/test_billing_chaos.py`` (smaller).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from libs.ledger import verify
from libs.messaging.broker import publish_keyed, read_all, start_producer, stop_client
from libs.settings import Settings
from schemas import topics
from services import catalog
from services.clock.main import publish_tick
from tools.demo.scenario import Delivery, Scenario, deliveries_as_items, month_after
from tools.fleet import ROOT, wait_idle, worker_env

FLEET = ("metering", "rating", "invoicing")
IDLE_TIMEOUT_S = 900.0
VOLATILE_FIELDS = frozenset({"number", "credit_note_number"})
"""Assigned in close order (gapless per series): the same set of numbers, not the same owner."""


@dataclass
class ChaosResult:
    invoices: dict[str, Any]
    statements: dict[str, Any]
    kills: int
    elapsed_s: float
    ledger_ok: bool
    open_gaps: int
    dead_letters: int
    largest_partition_bytes: dict[str, int] = field(default_factory=dict)


class Fleet:
    """`settle run <worker> --relays 1` processes that can be SIGKILLed and restarted."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", name, "--relays", "1"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    def kill(self, name: str) -> None:
        process = self.procs[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            self.kills += 1
        self.start(name)

    def check_alive(self) -> None:
        for name, process in self.procs.items():
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with status {process.returncode} (see {self.log_dir})")

    def stop(self) -> None:
        for process in self.procs.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.procs.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@contextlib.contextmanager
def running_fleet(env: Mapping[str, str], log_dir: Path) -> Iterator[Fleet]:
    fleet = Fleet(env, log_dir)
    try:
        for name in FLEET:
            fleet.start(name)
        yield fleet
    finally:
        fleet.stop()


def split_at(deliveries: list[Delivery], instant: datetime) -> tuple[list[Delivery], list[Delivery]]:
    """Deliveries of events that happened before ``instant`` (and unreadable ones), then the rest."""
    before: list[Delivery] = []
    after: list[Delivery] = []
    for d in deliveries:
        try:
            happened = datetime.fromisoformat(str(orjson.loads(d.value)["time"]).replace("Z", "+00:00"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            before.append(d)
            continue
        (before if happened < instant else after).append(d)
    return before, after


async def _publish(producer: AIOKafkaProducer, prefix: str, deliveries: list[Delivery], chunks: int) -> None:
    """Publish in ``chunks`` steps with a pause between them, so kills land while input arrives."""
    step = max(1, -(-len(deliveries) // chunks))
    for start in range(0, len(deliveries), step):
        await publish_keyed(producer, deliveries_as_items(deliveries[start : start + step]), prefix=prefix)
        await asyncio.sleep(0.3)


async def _killer(fleet: Fleet, rng: random.Random, interval_s: tuple[float, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(*interval_s))
        if stop.is_set():
            return
        await asyncio.to_thread(fleet.kill, rng.choice(FLEET))


async def wait_quiet(pool: asyncpg.Pool, settings: Settings, bootstrap: str, fleet: Fleet) -> None:
    """Until nothing is left to consume, publish or close (tools.fleet.wait_idle), every worker alive."""
    services = [catalog.load(name) for name in FLEET]
    await wait_idle(
        pool,
        bootstrap,
        services,
        topic_prefix=settings.topic_prefix,
        timeout_s=IDLE_TIMEOUT_S,
        alive=list(fleet.procs.values()),
    )


def _normalized(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in VOLATILE_FIELDS}


async def collect(pool: asyncpg.Pool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every invoice (and credit note) by contract and period, every statement by supplier, currency, month."""
    invoices: dict[str, Any] = {}
    for row in await pool.fetch("select document::text as doc from invoicing.invoices"):
        doc = orjson.loads(row["doc"])
        invoices[f"{doc['contract_id']}|{doc['period_start']}"] = _normalized(doc)
    with contextlib.suppress(asyncpg.UndefinedTableError):
        for row in await pool.fetch("select document::text as doc from invoicing.credit_notes"):
            doc = orjson.loads(row["doc"])
            invoices[f"credit-note|{doc['contract_id']}|{doc.get('period_start')}"] = _normalized(doc)
    statements: dict[str, Any] = {}
    for row in await pool.fetch("select document::text as doc from invoicing.statements"):
        doc = orjson.loads(row["doc"])
        statements[f"{doc['supplier_id']}|{doc['currency']}|{doc['month']}"] = _normalized(doc)
    return invoices, statements


async def largest_partitions(bootstrap: str, prefix: str) -> dict[str, int]:
    """Bytes in the largest partition of each burst topic (what a lagging consumer had to catch up on)."""
    out: dict[str, int] = {}
    for topic in (topics.USAGE_METERED, topics.CHARGES_RATED):
        sizes: dict[int, int] = {}
        for r in await read_all(bootstrap, prefix + topic.name, topic.partitions, timeout_s=300):
            sizes[r.partition] = sizes.get(r.partition, 0) + len(r.value or b"") + len(r.key or b"")
        out[topic.name] = max(sizes.values(), default=0)
    return out


async def drive(
    settings: Settings,
    pool: asyncpg.Pool,
    database_url: str,
    bootstrap: str,
    scenario: Scenario,
    *,
    kill: bool,
    seed: int,
    log_dir: Path,
    kill_interval_s: tuple[float, float] = (2.0, 6.0),
    chaos_after_publish_s: float = 20.0,
) -> ChaosResult:
    """Bill ``scenario`` once (see the module docstring); with ``kill``, under SIGKILL."""
    rng = random.Random(seed)
    first_close = month_after(scenario.start)
    before, after = split_at(scenario.initial, first_close)
    env = worker_env(database_url, bootstrap, settings.topic_prefix, SETTLE_STATE_DIR=str(settings.state_dir))
    began = time.perf_counter()
    with running_fleet(env, log_dir) as fleet:
        producer = await start_producer(bootstrap, client_id="settle-chaos")
        stop_killing = asyncio.Event()
        killer = asyncio.create_task(_killer(fleet, rng, kill_interval_s, stop_killing)) if kill else None
        try:
            await _publish(producer, settings.topic_prefix, before, chunks=10)
            await publish_tick(producer, bootstrap, settings.topic_prefix, first_close)  # mid-chaos
            await _publish(producer, settings.topic_prefix, after, chunks=10)
            await publish_tick(producer, bootstrap, settings.topic_prefix, scenario.end)  # mid-chaos
            if killer is not None:
                await asyncio.sleep(chaos_after_publish_s)  # the closes run while workers die
                stop_killing.set()
                await killer
            await wait_quiet(pool, settings, bootstrap, fleet)
            for tick in scenario.ticks:  # again, after draining: nothing left to change
                await publish_tick(producer, bootstrap, settings.topic_prefix, tick)
            await wait_quiet(pool, settings, bootstrap, fleet)
            if scenario.late:
                await _publish(producer, settings.topic_prefix, scenario.late, chunks=1)
                await publish_tick(producer, bootstrap, settings.topic_prefix, scenario.end)
                await wait_quiet(pool, settings, bootstrap, fleet)
        finally:
            stop_killing.set()
            if killer is not None and not killer.done():
                killer.cancel()
            await stop_client(producer)
        kills = fleet.kills
    invoices, statements = await collect(pool)
    async with pool.acquire() as conn:
        ledger_ok = (await verify(conn)).ok
        open_gaps = int(await conn.fetchval("select count(*) from settle.consumer_gaps where resolved_at is null"))
        dead = int(await conn.fetchval("select count(*) from settle.dead_letters"))
    return ChaosResult(
        invoices=invoices,
        statements=statements,
        kills=kills,
        elapsed_s=time.perf_counter() - began,
        ledger_ok=ledger_ok,
        open_gaps=open_gaps,
        dead_letters=dead,
        largest_partition_bytes=await largest_partitions(bootstrap, settings.topic_prefix),
    )


def differences(calm: ChaosResult, chaos: ChaosResult, limit: int = 10) -> list[str]:
    """What differs between two runs' documents (empty when they are identical)."""
    out: list[str] = []
    for kind, a, b in (("invoice", calm.invoices, chaos.invoices), ("statement", calm.statements, chaos.statements)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{kind} {key}: calm {a.get(key)} ≠ chaos {b.get(key)}")
    return out[:limit]
