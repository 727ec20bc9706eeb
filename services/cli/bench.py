"""`settle bench …`: benchmarks on the local stack (or SETTLE_* servers). Not tests: they report figures.

Every benchmark runs against a FRESH database (``settle_bench_<name>`` on the resolved server, dropped
and recreated) and a PRIVATE broker (a new mock-cluster process, or a topic prefix on a real Kafka),
so it never touches the demo's data and two runs are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import orjson
import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.table import Table

from libs.db.migrate import migrate
from libs.db.pool import create_pool
from libs.messaging.broker import bootstrap_list, create_topics, start_producer, stop_client
from libs.messaging.partitioner import partition_for
from libs.messaging.worker import Service, run_worker
from libs.settings import Settings, get_settings
from schemas import topics
from schemas.envelope import encode
from services.cli.main import app
from services.cli.runtime import console, resolve, run_async

bench_app = typer.Typer(help="Benchmarks (figures, not tests).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@dataclass
class BenchStack:
    settings: Settings
    pool: asyncpg.Pool
    bootstrap_servers: str
    database_url: str


def _with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def bench_stack(name: str, **overrides: Any) -> AsyncIterator[BenchStack]:
    """A fresh database and a private broker for one benchmark run."""
    from libs.stack import start_mock_broker

    base = get_settings()
    targets = await resolve(base, broker=False)
    database = f"settle_bench_{name}"
    admin = await asyncpg.connect(targets.database_url)
    try:
        await admin.execute(f'drop database if exists "{database}" with (force)')
        await admin.execute(f'create database "{database}"')
    finally:
        await admin.close()
    url = _with_database(targets.database_url, database)
    state_dir = Path(tempfile.mkdtemp(prefix="settle-bench-"))
    broker = None
    prefix = ""
    if base.kafka_bootstrap_servers:
        bootstrap = base.kafka_bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        await create_topics(bootstrap, prefix)
    else:
        broker = start_mock_broker(state_dir=state_dir / "broker")
        bootstrap = broker.bootstrap_servers
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap, state_dir=state_dir, topic_prefix=prefix,
                        metrics_port=0, **overrides)
    pool = await create_pool(url, max_size=settings.db_pool_max)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield BenchStack(settings, pool, bootstrap, url)
    finally:
        await pool.close()
        if broker is not None:
            broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def worker(stack: BenchStack, services: Sequence[Service], relays: int = 1) -> AsyncIterator[None]:
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run_worker(services, stack.settings, pool=stack.pool,
                                          bootstrap_servers=stack.bootstrap_servers, stop=stop, relays=relays,
                                          ready=ready))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def read_timestamps(stack: BenchStack, topic: topics.Topic, field: str) -> dict[str, int]:
    """``data[field]`` → Kafka record timestamp (ms) of every record of a topic (first occurrence)."""
    name = stack.settings.topic_prefix + topic.name
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(stack.bootstrap_servers), enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(name, p) for p in range(topic.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: dict[str, int] = {}
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in records:
                    out.setdefault(orjson.loads(r.value)["data"][field], r.timestamp)
        return out
    finally:
        await stop_client(consumer)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pgbench_tps(database_url: str, clients: int, seconds: int = 10) -> float | None:
    """The machine's own pgbench TPC-B-like figure (fsync as configured), or None without pgbench."""
    if shutil.which("pgbench") is None:
        return None
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", database_url], check=True, capture_output=True)
    done = subprocess.run(["pgbench", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), database_url],
                          check=True, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    return None


# --- kernel --------------------------------------------------------------------------------------------------------
def _transfer_bytes(i: int, run: str, accounts: int) -> tuple[bytes, bytes]:
    from schemas.events import TransferRequested

    data = TransferRequested(transfer_id=f"{run}-{i}", from_account=f"bench:src:{i % accounts}",
                             to_account=f"bench:dst:{i % accounts}", amount="0.01", currency="USD", memo="bench")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    return data.transfer_id.encode(), encode(event_id=f"{run}-{i}", source="/settle/bench", type="journal.transfer_requested",
                                             time=start + timedelta(milliseconds=i), data=data)


async def _publish_transfers(bootstrap_servers: str, prefix: str, run: str, start: int, count: int, accounts: int,
                             rate_per_s: float | None = None) -> None:
    producer = await start_producer(bootstrap_servers, client_id="bench-publisher")
    name = prefix + topics.JOURNAL_REQUESTS.name
    try:
        futures = []
        began = time.perf_counter()
        for i in range(start, start + count):
            key, value = _transfer_bytes(i, run, accounts)
            futures.append(await producer.send(name, value=value, key=key,
                                               partition=partition_for(key, topics.JOURNAL_REQUESTS.partitions)))
            if rate_per_s is not None:
                due = began + (i - start + 1) / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await stop_client(producer)


def _publish_in_process(*args: Any) -> None:
    asyncio.run(_publish_transfers(*args))


def _spawn(target: Any, *args: Any) -> Any:
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


async def warm_up(stack: BenchStack, run: str, accounts: int, already: int = 0) -> int:
    """Publish a few events on every partition and wait until all are relayed: every partition is
    assigned and the group has settled before a measurement starts. Returns the events used."""
    count = 600
    await _publish_transfers(stack.bootstrap_servers, stack.settings.topic_prefix, f"{run}w", 0, count, accounts)
    await _wait_sent(stack, already + count, timeout_s=120)
    await asyncio.sleep(3)  # a late joiner's rebalance would show up here, not in the measurement
    return count


async def _wait_started(stack: BenchStack, base: int) -> float:
    """The moment the first measured event is handled (start-up and warm-up are not measured)."""
    began = time.perf_counter()
    while time.perf_counter() - began < 60:
        if await stack.pool.fetchval("select count(*) from settle.inbox") > base:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError("the worker handled nothing within 60 s")


async def _wait_sent(stack: BenchStack, count: int, timeout_s: float) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        sent = await stack.pool.fetchval(
            "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null")
        if sent >= count:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"only {sent} of {count} events relayed within {timeout_s} s")


def _worker_env(stack: BenchStack, **extra: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update({
        "SETTLE_DATABASE_URL": stack.database_url,
        "SETTLE_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "SETTLE_TOPIC_PREFIX": stack.settings.topic_prefix,
        "SETTLE_METRICS_PORT": "0",
        "SETTLE_LOG_LEVEL": "WARNING",
        "SETTLE_CONSUME_BATCH_MAX": str(stack.settings.consume_batch_max),
        "SETTLE_RELAY_BATCH_MAX": str(stack.settings.relay_batch_max),
    })
    env.update(extra)
    return env


@contextlib.contextmanager
def processes(stack: BenchStack, *commands: Sequence[str]) -> Any:
    """Run `settle run …` worker processes (as production does) for the block."""
    import signal
    import sys

    started = [subprocess.Popen([sys.executable, "-m", "services.cli.main", "run", *command], env=_worker_env(stack),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for command in commands]
    try:
        yield started
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@bench_app.command("kernel")
@run_async
async def bench_kernel(
    events: Annotated[int, typer.Option(help="Events for the throughput phase (the mock broker keeps ~5 MiB per partition: stay under ~60,000).")] = 50_000,
    rate: Annotated[int, typer.Option(help="Events/s offered in the latency phase.")] = 5_000,
    duration: Annotated[int, typer.Option(help="Seconds of the latency phase.")] = 10,
    accounts: Annotated[int, typer.Option(help="Distinct account pairs the transfers use.")] = 1000,
    batch: Annotated[int, typer.Option(help="Messages per consumer transaction.")] = 1000,
    relays: Annotated[int, typer.Option(help="Relay tasks (in one relay process).")] = 2,
    consumers: Annotated[int, typer.Option(help="Consumer processes in the group (partitions split).")] = 2,
    pgbench: Annotated[bool, typer.Option(help="Also measure the machine's pgbench TPC-B figure.")] = True,
) -> None:
    """consume → ledger → outbox → relay → topic: events/s with batching, and p50/p99 publish → relayed
    output latency at a fixed offered rate. Durable commits (synchronous_commit as the server has it)."""
    from services.journal.main import SERVICE as JOURNAL

    async with bench_stack("kernel", consume_batch_max=batch, relay_batch_max=2000) as stack:
        sync = await stack.pool.fetchval("show synchronous_commit")
        run = uuid.uuid4().hex[:6]
        fleet = (*[["journal", "--relays", "0"]] * consumers, ["relay", "--relays", str(relays)])
        with processes(stack, *fleet):
            base = await warm_up(stack, run, accounts)
            console.print(f"{consumers} consumer process(es) settled; publishing {events} transfer requests …")
            publisher = _spawn(_publish_in_process, stack.bootstrap_servers, stack.settings.topic_prefix, run, 0,
                               events, accounts, None)
            began = await _wait_started(stack, base)
            finished = await _wait_sent(stack, base + events, timeout_s=max(120, events / 500))
            publisher.join(30)
        throughput = events / (finished - began)
        console.print(f"throughput: {throughput:,.0f} events/s ({events} events in {finished - began:.1f} s)")

        latency_events = rate * duration
        with processes(stack, *fleet):
            base += events
            base += await warm_up(stack, run + "l", accounts, already=base)
            # The offered load comes from another process, as it would in production.
            publisher = _spawn(_publish_in_process, stack.bootstrap_servers, stack.settings.topic_prefix, run,
                               events, latency_events, accounts, float(rate))
            await _wait_sent(stack, base + latency_events, timeout_s=duration + 120)
            publisher.join(30)
        inputs = await read_timestamps(stack, topics.JOURNAL_REQUESTS, "transfer_id")
        outputs = await read_timestamps(stack, topics.JOURNAL_POSTED, "transfer_id")
        measured = {f"{run}-{i}" for i in range(events, events + latency_events)}
        latencies = [outputs[k] - inputs[k] for k in measured if k in outputs and k in inputs]
        tps1 = pgbench_tps(stack.database_url, 1) if pgbench else None
        tps8 = pgbench_tps(stack.database_url, 8) if pgbench else None

    table = Table("measure", "value")
    table.add_row("throughput (events/s, batched)", f"{throughput:,.0f}")
    table.add_row(f"latency p50 at {rate}/s (ms)", f"{statistics.median(latencies):.0f}")
    table.add_row(f"latency p99 at {rate}/s (ms)", f"{percentile(latencies, 0.99):.0f}")
    table.add_row("latency samples", str(len(latencies)))
    table.add_row("synchronous_commit", str(sync))
    if tps1 is not None:
        table.add_row("pgbench TPC-B tps (1 client)", f"{tps1:,.0f}")
    if tps8 is not None:
        table.add_row("pgbench TPC-B tps (8 clients)", f"{tps8:,.0f}")
    console.print(table)
