"""`settle bench …`: benchmarks on the local stack (or SETTLE_* servers). Not tests: they report figures.

Why over 500 lines: six benchmarks (kernel, metering, close, chaos, replay, payouts) with their load generators; each
is one section, and they share the fresh-stack and worker-process helpers at the top.

Every benchmark runs against a FRESH database (``settle_bench_<name>`` on the resolved server, dropped
and recreated) and a PRIVATE broker (a new local broker process — noida-db, or the mock with
SETTLE_LOCAL_BROKER=mock — or a topic prefix on a real Kafka),
so it never touches the demo's data and two runs are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import orjson
import typer
from rich.table import Table

from libs.db.migrate import migrate
from libs.db.pool import create_pool
from libs.messaging.broker import create_topics, read_all, start_producer, stop_client
from libs.messaging.partitioner import partition_for
from libs.settings import Settings, get_settings
from libs.stack.database import with_database
from schemas import topics
from schemas.envelope import encode
from services.cli.runtime import console, resolve, run_async

bench_app = typer.Typer(help="Benchmarks (figures, not tests).", no_args_is_help=True)
"""Mounted as ``settle bench`` by the composition root (:mod:`services.cli.main`)."""


@dataclass
class BenchStack:
    settings: Settings
    pool: asyncpg.Pool
    bootstrap_servers: str
    database_url: str


@contextlib.asynccontextmanager
async def bench_stack(name: str, **overrides: Any) -> AsyncIterator[BenchStack]:
    """A fresh database and a private broker (SETTLE_LOCAL_BROKER: noida-db by default) for one run."""
    from libs.stack import start_local_broker

    base = get_settings()
    targets = await resolve(base, broker=False)
    database = f"settle_bench_{name}"
    admin = await asyncpg.connect(targets.database_url)
    try:
        await admin.execute(f'drop database if exists "{database}" with (force)')
        await admin.execute(f'create database "{database}"')
    finally:
        await admin.close()
    url = with_database(targets.database_url, database)
    state_dir = Path(tempfile.mkdtemp(prefix="settle-bench-"))
    broker = None
    prefix = ""
    if base.kafka_bootstrap_servers:
        bootstrap = base.kafka_bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        await create_topics(bootstrap, prefix)
    else:
        broker = start_local_broker(state_dir=state_dir / "broker", kind=base.local_broker)
        bootstrap = broker.bootstrap_servers
    settings = Settings(
        database_url=url,
        kafka_bootstrap_servers=bootstrap,
        state_dir=state_dir,
        topic_prefix=prefix,
        metrics_port=0,
        **overrides,
    )
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


async def scan_topic(stack: BenchStack, topic: topics.Topic) -> list[Any]:
    """Every record of a topic (all partitions, from the beginning), without a consumer group."""
    return await read_all(
        stack.bootstrap_servers, stack.settings.topic_prefix + topic.name, topic.partitions, timeout_s=300
    )


async def read_timestamps(stack: BenchStack, topic: topics.Topic, field: str) -> dict[str, int]:
    """``data[field]`` → Kafka record timestamp (ms) of every record of a topic (first occurrence)."""
    out: dict[str, int] = {}
    for r in await scan_topic(stack, topic):
        out.setdefault(orjson.loads(r.value)["data"][field], r.timestamp)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pgbench_tps(database_url: str, clients: int, seconds: int = 10) -> float | None:
    """The machine's own pgbench TPC-B-like figure (fsync as configured), or None without pgbench."""
    if shutil.which("pgbench") is None:
        return None
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", database_url], check=True, capture_output=True)
    done = subprocess.run(
        ["pgbench", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), database_url],
        check=True,
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    return None


# --- kernel --------------------------------------------------------------------------------------------------------
def _transfer_bytes(i: int, run: str, accounts: int) -> tuple[bytes, bytes]:
    from schemas.events import TransferRequested

    data = TransferRequested(
        transfer_id=f"{run}-{i}",
        from_account=f"bench:src:{i % accounts}",
        to_account=f"bench:dst:{i % accounts}",
        amount="0.01",
        currency="USD",
        memo="bench",
    )
    start = datetime(2026, 12, 1, tzinfo=UTC)
    return data.transfer_id.encode(), encode(
        event_id=f"{run}-{i}",
        source="/settle/bench",
        type="journal.transfer_requested",
        time=start + timedelta(milliseconds=i),
        data=data,
    )


async def _publish_transfers(
    bootstrap_servers: str,
    prefix: str,
    run: str,
    start: int,
    count: int,
    accounts: int,
    rate_per_s: float | None = None,
) -> None:
    producer = await start_producer(bootstrap_servers, client_id="bench-publisher")
    name = prefix + topics.JOURNAL_REQUESTS.name
    try:
        futures = []
        began = time.perf_counter()
        for i in range(start, start + count):
            key, value = _transfer_bytes(i, run, accounts)
            futures.append(
                await producer.send(
                    name, value=value, key=key, partition=partition_for(key, topics.JOURNAL_REQUESTS.partitions)
                )
            )
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
            "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
        )
        if sent >= count:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"only {sent} of {count} events relayed within {timeout_s} s")


def processes(stack: BenchStack, *commands: Sequence[str]) -> Any:
    """`settle run …` worker processes against the bench stack, as production runs them."""
    from tools.fleet import worker_env, worker_processes

    env = worker_env(
        stack.database_url,
        stack.bootstrap_servers,
        stack.settings.topic_prefix,
        SETTLE_CONSUME_BATCH_MAX=str(stack.settings.consume_batch_max),
        SETTLE_RELAY_BATCH_MAX=str(stack.settings.relay_batch_max),
    )
    return worker_processes(env, commands)


@bench_app.command("kernel")
@run_async
async def bench_kernel(
    events: Annotated[
        int,
        typer.Option(
            help="Events for the throughput phase (the mock broker keeps ~5 MiB per partition: stay under ~60,000)."
        ),
    ] = 50_000,
    rate: Annotated[int, typer.Option(help="Events/s offered in the latency phase.")] = 5_000,
    duration: Annotated[int, typer.Option(help="Seconds of the latency phase.")] = 10,
    accounts: Annotated[
        int, typer.Option(help="Distinct account pairs the transfers use (fewer: more lock contention).")
    ] = 50_000,
    batch: Annotated[int, typer.Option(help="Messages per consumer transaction.")] = 1000,
    relays: Annotated[int, typer.Option(help="Relay tasks (in one relay process).")] = 2,
    consumers: Annotated[int, typer.Option(help="Consumer processes in the group (partitions split).")] = 2,
    pgbench: Annotated[bool, typer.Option(help="Also measure the machine's pgbench TPC-B figure.")] = True,
) -> None:
    """consume → ledger → outbox → relay → topic: events/s with batching, and p50/p99 publish → relayed
    output latency at a fixed offered rate. Durable commits (synchronous_commit as the server has it)."""

    async with bench_stack("kernel", consume_batch_max=batch, relay_batch_max=2000) as stack:
        sync = await stack.pool.fetchval("show synchronous_commit")
        run = uuid.uuid4().hex[:6]
        fleet = (*[["journal", "--relays", "0"]] * consumers, ["relay", "--relays", str(relays)])
        with processes(stack, *fleet):
            base = await warm_up(stack, run, accounts)
            console.print(f"{consumers} consumer process(es) settled; publishing {events} transfer requests …")
            publisher = _spawn(
                _publish_in_process,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                run,
                0,
                events,
                accounts,
                None,
            )
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
            publisher = _spawn(
                _publish_in_process,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                run,
                events,
                latency_events,
                accounts,
                float(rate),
            )
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


# --- metering ------------------------------------------------------------------------------------------------------
BENCH_T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _bench_contract(contract_id: str) -> bytes:
    from schemas.inputs import ContractCreated

    data = ContractCreated(
        contract_id=contract_id,
        renter_id="bench-renter",
        currency="USD",
        billing_mode="postpaid",
        price_per_gpu_hour="2.00",
        supplier_rate_per_gpu_hour="1.50",
        commitment_per_period="0",
        tax_rate="0",
        starts_at=BENCH_T0,
        billing_anchor_day=1,
        meter_prices={"egress_gb": "0.05"},
    )
    return encode(event_id=f"{contract_id}-created", source="/bench", type="contract.created", time=BENCH_T0, data=data)


def _bench_allocation(allocation_id: str, contract_id: str) -> bytes:
    from schemas.inputs import AllocationProvisioned

    data = AllocationProvisioned(
        allocation_id=allocation_id,
        contract_id=contract_id,
        renter_id="bench-renter",
        supplier_id="bench-dc",
        server_id=f"srv-{allocation_id}",
        gpu_model="H100",
        gpu_count=8,
    )
    return encode(
        event_id=f"{allocation_id}-prov", source="/bench", type="gpu.allocation.provisioned", time=BENCH_T0, data=data
    )


def _sample(run: str, i: int, allocation_id: str, at: datetime, quantity: str = "0.5") -> tuple[bytes, bytes]:
    from schemas.inputs import UsageSampleRecorded

    data = UsageSampleRecorded(allocation_id=allocation_id, meter="egress_gb", quantity=quantity)
    return allocation_id.encode(), encode(
        event_id=f"{run}-s{i}", source="/bench", type="usage.sample.recorded", time=at, data=data
    )


async def _publish_raw(
    bootstrap_servers: str,
    prefix: str,
    topic_name: str,
    partitions: int,
    items: Sequence[tuple[bytes, bytes]],
    rate_per_s: float | None = None,
) -> None:
    producer = await start_producer(bootstrap_servers, client_id="bench-publisher")
    try:
        futures = []
        began = time.perf_counter()
        for n, (key, value) in enumerate(items):
            futures.append(
                await producer.send(prefix + topic_name, value=value, key=key, partition=partition_for(key, partitions))
            )
            if rate_per_s is not None:
                delay = began + (n + 1) / rate_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await stop_client(producer)


def _publish_samples_process(
    bootstrap_servers: str,
    prefix: str,
    run: str,
    start: int,
    count: int,
    allocations: int,
    hour_offset: int,
    rate_per_s: float | None,
) -> None:
    items = [
        _sample(run, i, f"bench-a{i % allocations}", BENCH_T0 + timedelta(hours=hour_offset, seconds=i % 3600))
        for i in range(start, start + count)
    ]
    asyncio.run(
        _publish_raw(
            bootstrap_servers, prefix, topics.USAGE_SAMPLES.name, topics.USAGE_SAMPLES.partitions, items, rate_per_s
        )
    )


async def _setup_allocations(stack: BenchStack, allocations: int) -> None:
    await _publish_raw(
        stack.bootstrap_servers,
        stack.settings.topic_prefix,
        topics.CONTRACTS.name,
        topics.CONTRACTS.partitions,
        [(b"bench-c", _bench_contract("bench-c"))],
    )
    await _publish_raw(
        stack.bootstrap_servers,
        stack.settings.topic_prefix,
        topics.INFRA_LIFECYCLE.name,
        topics.INFRA_LIFECYCLE.partitions,
        [(f"bench-a{i}".encode(), _bench_allocation(f"bench-a{i}", "bench-c")) for i in range(allocations)],
    )


@bench_app.command("metering")
@run_async
async def bench_metering(
    samples: Annotated[int, typer.Option(help="Samples in the throughput phase (mind the mock's retention).")] = 80_000,
    allocations: Annotated[int, typer.Option(help="Allocations the samples spread over.")] = 200,
    consumers: Annotated[int, typer.Option(help="metering processes (partitions split).")] = 2,
    rate: Annotated[int, typer.Option(help="Background samples/s during the latency phase.")] = 5_000,
    probes: Annotated[int, typer.Option(help="Late samples whose latency to a rated charge is measured.")] = 300,
) -> None:
    """Telemetry samples/s end to end (publish → hourly aggregates committed, exactly once: 5 % of the
    samples are sent twice and the committed totals are checked), then p50/p99 from a late sample to
    its rated charge (metering → rating → relay) under a steady background load."""
    from decimal import Decimal

    async with bench_stack("metering", consume_batch_max=1000) as stack:
        run = uuid.uuid4().hex[:6]
        fleet = [["metering", "--relays", "1"]] * consumers
        with processes(stack, *fleet):
            await _setup_allocations(stack, allocations)
            await _wait_count(
                stack, "select count(*) from metering.allocations where contract_id is not null", allocations
            )
            await asyncio.sleep(3)  # group settle
            duplicates = samples // 20
            console.print(f"publishing {samples} samples (+{duplicates} redelivered copies) …")
            publisher = _spawn(
                _publish_samples_process,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                run,
                0,
                samples,
                allocations,
                0,
                None,
            )
            dup_publisher = _spawn(
                _publish_samples_process,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                run,
                0,
                duplicates,
                allocations,
                0,
                None,
            )
            began = await _wait_count(stack, "select count(*) from settle.inbox where consumer = 'metering-samples'", 1)
            finished = await _wait_count(
                stack, "select count(*) from settle.inbox where consumer = 'metering-samples'", samples, timeout_s=600
            )
            publisher.join(60)
            dup_publisher.join(60)
            await asyncio.sleep(1)
            total = await stack.pool.fetchval("select coalesce(sum(quantity), 0) from metering.samples")
        exact = total == Decimal("0.5") * samples
        throughput = samples / (finished - began)
        console.print(f"throughput: {throughput:,.0f} samples/s; committed total exact once: {exact}")

    async with bench_stack("metering", consume_batch_max=1000) as stack:
        run = uuid.uuid4().hex[:6]
        fleet = [["metering", "--relays", "1"], ["rating", "--relays", "1"]]
        with processes(stack, *fleet):
            await _setup_allocations(stack, allocations)
            await _wait_count(
                stack, "select count(*) from metering.allocations where contract_id is not null", allocations
            )
            from services.clock.domain import tick_bytes

            closed = BENCH_T0 + timedelta(hours=2)
            await _publish_raw(
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                topics.CLOCK_TICKS.name,
                1,
                [(b"clock", tick_bytes(closed))],
            )
            await _wait_count(stack, "select count(*) from rating.watermarks", 1, timeout_s=120)
            await asyncio.sleep(2)
            background = _spawn(
                _publish_samples_process,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                run,
                0,
                rate * 20,
                allocations,
                3,
                float(rate),
            )
            await asyncio.sleep(5)  # measure in the steady state
            probe_items = [
                _sample(
                    run,
                    10_000_000 + i,
                    f"bench-a{i % allocations}",
                    BENCH_T0 + timedelta(hours=i // allocations % 2, minutes=30),
                    "1",
                )
                for i in range(probes)
            ]
            await _publish_raw(
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                topics.USAGE_SAMPLES.name,
                topics.USAGE_SAMPLES.partitions,
                probe_items,
                rate_per_s=30.0,
            )
            await _wait_count(
                stack,
                "select count(*) from settle.outbox where topic = 'charges.rated.v1' and sent_at is not null",
                probes,
                timeout_s=120,
            )
            background.join(60)
        sent = {}
        for event_key, ts in (await read_probe_times(stack, topics.USAGE_SAMPLES, run)).items():
            sent[event_key] = ts
        charged = await read_charge_times(stack)
        latencies = [charged[k] - sent[k] for k in sent if k in charged]
    table = Table("measure", "value")
    table.add_row("samples/s end to end (committed)", f"{throughput:,.0f}")
    table.add_row("exactly once (5 % redelivered, totals exact)", "yes" if exact else "NO")
    if latencies:
        table.add_row(f"late sample → rated charge p50 at {rate}/s (ms)", f"{statistics.median(latencies):.0f}")
        table.add_row(f"late sample → rated charge p99 at {rate}/s (ms)", f"{percentile(latencies, 0.99):.0f}")
    table.add_row("latency samples", str(len(latencies)))
    console.print(table)


async def _wait_count(stack: BenchStack, sql: str, count: int, timeout_s: float = 120) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        if int(await stack.pool.fetchval(sql)) >= count:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{sql!r} did not reach {count} within {timeout_s} s")


async def read_probe_times(stack: BenchStack, topic: topics.Topic, run: str) -> dict[tuple[str, str], int]:
    """(allocation, hour) → first publish timestamp of its late probe sample."""
    out: dict[tuple[str, str], int] = {}
    for r in await scan_topic(stack, topic):
        event = orjson.loads(r.value)
        if event["id"].startswith(f"{run}-s1000"):
            out.setdefault((event["data"]["allocation_id"], event["time"][:13]), r.timestamp)
    return out


async def read_charge_times(stack: BenchStack) -> dict[tuple[str, str], int]:
    """(allocation, hour) → relay timestamp of the first egress charge (only late probes produce them)."""
    out: dict[tuple[str, str], int] = {}
    for r in await scan_topic(stack, topics.CHARGES_RATED):
        event = orjson.loads(r.value)
        data = event["data"]
        if event["type"] == "charge.rated" and data["meter"] == "egress_gb":
            out.setdefault((data["allocation_id"], data["hour_start"][:13]), r.timestamp)
    return out


# --- period close --------------------------------------------------------------------------------------------------
def _bench_charge(
    i: int, tag: str, hour: datetime, gpu_seconds: int, period: tuple[datetime, datetime]
) -> tuple[bytes, bytes]:
    """A `charge.rated` of contract i for one hour at 2.00/GPU-hour (earning 1.50), as rating emits it."""
    from decimal import Decimal

    from schemas.events import ChargeRated

    contract_id = f"close-c{i:06d}"
    charge = ChargeRated(
        charge_id=f"close-{tag}{i}",
        usage_id=f"close-{tag}u{i}",
        allocation_id=f"close-a{i}",
        contract_id=contract_id,
        renter_id="bench-renter",
        supplier_id=f"close-dc{i % 50}",
        meter="gpu_seconds",
        hour_start=hour,
        revision=1,
        currency="USD",
        billing_mode="postpaid",
        period_start=period[0],
        period_end=period[1],
        delta_provisioned_gpu_seconds=gpu_seconds,
        delta_billable_gpu_seconds=gpu_seconds,
        delta_maintenance_gpu_seconds=0,
        delta_outage_gpu_seconds=0,
        delta_quantity=Decimal(0),
        charge_x3600=Decimal(gpu_seconds * 2),
        earning_x3600=Decimal(gpu_seconds * 3 // 2),
        price_versions=[1],
    )
    value = encode(
        event_id=f"close-{tag}{i}", source="/bench", type="charge.rated", time=hour + timedelta(hours=1), data=charge
    )
    return contract_id.encode(), value


DECEMBER = (BENCH_T0, datetime(2027, 1, 1, tzinfo=UTC))
JANUARY = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC))


def _close_inputs_process(bootstrap_servers: str, prefix: str, start: int, count: int, rate_per_s: float) -> None:
    """Contracts and one December charge each, published at a steady rate (the mock's retention)."""
    hour = BENCH_T0 + timedelta(days=3, hours=10)
    contracts = [(f"close-c{i:06d}".encode(), _bench_contract(f"close-c{i:06d}")) for i in range(start, start + count)]
    charges = [_bench_charge(i, "ch", hour, 28_800, DECEMBER) for i in range(start, start + count)]
    asyncio.run(
        _publish_raw(
            bootstrap_servers, prefix, topics.CONTRACTS.name, topics.CONTRACTS.partitions, contracts, rate_per_s
        )
    )
    asyncio.run(
        _publish_raw(
            bootstrap_servers, prefix, topics.CHARGES_RATED.name, topics.CHARGES_RATED.partitions, charges, rate_per_s
        )
    )


@bench_app.command("close")
@run_async
async def bench_close(
    contracts: Annotated[int, typer.Option(help="Contracts whose December period closes at once.")] = 100_000,
    rate: Annotated[int, typer.Option(help="Input events/s while loading (stay under the consumer's pace).")] = 4_000,
    workers: Annotated[int, typer.Option(help="invoicing processes (consumers + closers).")] = 2,
) -> None:
    """Month-end close: CONTRACTS contracts (each with a December charge) are loaded through Kafka,
    then one watermark per partition closes every December period at once. Measures the time from the
    watermark to the last invoice finalized (numbers, documents, ledger entries, outbox rows) and to the
    last invoice published, and checks the consumer kept consuming meanwhile."""
    from schemas.events import Watermark

    async with bench_stack("close") as stack:
        fleet = [["invoicing", "--relays", "1"]] * workers
        with processes(stack, *fleet):
            console.print(f"loading {contracts} contracts and {contracts} charges at {rate}/s …")
            loader = _spawn(
                _close_inputs_process, stack.bootstrap_servers, stack.settings.topic_prefix, 0, contracts, float(rate)
            )
            await _wait_count(
                stack, "select count(*) from invoicing.charges", contracts, timeout_s=2 * contracts / rate + 300
            )
            loader.join(60)
            await _wait_count(stack, "select count(*) from invoicing.contract_state", contracts, timeout_s=300)
            through = datetime(2027, 1, 1, tzinfo=UTC)
            marks = [
                (
                    f"watermark-{p}".encode(),
                    encode(
                        event_id=f"close-wm-{p}",
                        source="/bench",
                        type="charges.watermark",
                        time=through,
                        data=Watermark(through=through, partition=p, source="rating"),
                    ),
                )
                for p in range(topics.CHARGES_RATED.partitions)
            ]
            producer = await start_producer(stack.bootstrap_servers, client_id="bench-close")
            try:
                began = time.perf_counter()
                for p, (key, value) in enumerate(marks):
                    await (
                        await producer.send(
                            stack.settings.topic_prefix + topics.CHARGES_RATED.name, value=value, key=key, partition=p
                        )
                    )
            finally:
                await stop_client(producer)
            # During the close, the consumer must keep recording: 200 January charges go in meanwhile.
            await asyncio.sleep(1.0)
            probe_sent = time.perf_counter()
            probes = [_probe_charge(i) for i in range(200)]
            await _publish_raw(
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                topics.CHARGES_RATED.name,
                topics.CHARGES_RATED.partitions,
                probes,
            )
            recorded = await _wait_count(
                stack, "select count(*) from invoicing.charges", contracts + 200, timeout_s=600
            )
            still_closing = await stack.pool.fetchval("select count(*) from invoicing.invoices") < contracts
            finalized = await _wait_count(stack, "select count(*) from invoicing.invoices", contracts, timeout_s=1800)
            published = await _wait_count(
                stack,
                "select count(*) from settle.outbox where topic = 'invoices.finalized.v1' and sent_at is not null"
                " and convert_from(key, 'UTF8') not like 'watermark-%'",  # invoices, not invoicing's marks
                contracts,
                timeout_s=1800,
            )
            stated = await _wait_count(stack, "select count(*) from invoicing.statements", 50, timeout_s=1800)
            statements = await stack.pool.fetchval("select count(*) from invoicing.statements")
            verified = (await verify_pool(stack)).ok
    table = Table("measure", "value")
    table.add_row("contracts closed", f"{contracts:,}")
    table.add_row("watermark → last invoice finalized (s)", f"{finalized - began:.1f}")
    table.add_row("watermark → last invoice published (s)", f"{published - began:.1f}")
    table.add_row("invoices/s", f"{contracts / (finalized - began):,.0f}")
    table.add_row("watermark → December statements final (s)", f"{stated - began:.1f} ({statements} statements)")
    table.add_row(
        "200 charges published mid-close → recorded (s)",
        f"{recorded - probe_sent:.2f}" + (" (close still running)" if still_closing else " (close had finished)"),
    )
    table.add_row("ledger verified", "yes" if verified else "NO")
    console.print(table)


def _probe_charge(i: int) -> tuple[bytes, bytes]:
    """A January charge of contract i (recorded by the consumer; closed at the next month end)."""
    return _bench_charge(i, "probe", datetime(2027, 1, 2, 10, tzinfo=UTC), 3600, JANUARY)


async def verify_pool(stack: BenchStack) -> Any:
    from libs.ledger import verify

    async with stack.pool.acquire() as conn:
        return await verify(conn)


@bench_app.command("chaos")
@run_async
async def bench_chaos(
    contracts: Annotated[int, typer.Option(help="Contracts of the demo marketplace (30 = the demo).")] = 30,
    seed: Annotated[int, typer.Option(help="Scenario and kill-schedule seed.")] = 7,
    kill_min_s: Annotated[float, typer.Option(help="Shortest pause between two kills.")] = 2.0,
    kill_max_s: Annotated[float, typer.Option(help="Longest pause between two kills.")] = 6.0,
    chaos_s: Annotated[float, typer.Option(help="Seconds of killing after the input is published.")] = 30.0,
    settle: Annotated[
        bool,
        typer.Option(
            "--settle",
            help="The whole fleet, money included: payments, payouts and saga run and are killed too; payees, "
            "FX rates and wires are published, and payment statuses, payouts and sagas are compared as well.",
        ),
    ] = False,
    follow_payouts: Annotated[
        bool,
        typer.Option(
            "--follow-payouts",
            help="With --settle: payouts writes its files and the saga follows them (SETTLE_SAGA_FOLLOW_PAYOUTS), "
            "as in the demo; `settle sagas verify` checks the payout side too.",
        ),
    ] = False,
) -> None:
    """The demo marketplace billed twice on fresh stacks — calm, then with a random billing worker
    SIGKILLed every KILL_MIN_S–KILL_MAX_S seconds while the input is published, the closing ticks
    arrive mid-chaos and the closes run — and the documents compared. Exit 1 on any difference, an
    unverified ledger or an open gap."""
    from tools.demo.chaos import differences, drive
    from tools.demo.scenario import generate

    if follow_payouts and not settle:
        raise typer.BadParameter("--follow-payouts needs --settle")
    scenario = generate(seed=seed, contracts=contracts)
    results = {}
    for kill in (False, True):
        name = "chaos" if kill else "calm"
        async with bench_stack(f"chaos_{name}") as stack:
            console.print(f"{name} run: {contracts} contracts, {len(scenario.deliveries)} input messages …")
            results[kill] = await drive(
                stack.settings,
                stack.pool,
                stack.database_url,
                stack.bootstrap_servers,
                scenario,
                kill=kill,
                seed=seed,
                log_dir=stack.settings.state_dir / "logs",
                kill_interval_s=(kill_min_s, kill_max_s),
                chaos_after_publish_s=chaos_s,
                settle=settle,
                follow_payouts=follow_payouts,
            )
    calm, chaos = results[False], results[True]
    table = Table(
        "run",
        "kills",
        "invoices",
        "statements",
        "payment statuses / payouts / sagas",
        "largest partition (usage.metered / charges.rated)",
        "ledger",
        "open gaps",
        "seconds",
    )
    for name, r in (("calm", calm), ("chaos", chaos)):
        sizes = " / ".join(
            f"{r.largest_partition_bytes.get(t, 0) / 2**20:.1f} MiB" for t in ("usage.metered.v1", "charges.rated.v1")
        )
        table.add_row(
            name,
            str(r.kills),
            str(len(r.invoices)),
            str(len(r.statements)),
            " / ".join(
                str(sum(1 for k in r.settlement if k.startswith(f"{kind}|"))) for kind in ("payment", "payout", "saga")
            ),
            sizes,
            "verified" if r.ledger_ok else "BROKEN",
            str(r.open_gaps),
            f"{r.elapsed_s:.0f}",
        )
    console.print(table)
    diff = differences(calm, chaos)
    for line in diff:
        console.print(f"[red]differs:[/] {line[:300]}")
    for name, r in (("calm", calm), ("chaos", chaos)):
        for violation in r.saga_violations:
            console.print(f"[red]{name} run, saga invariant:[/] {violation[:300]}")
    if settle:
        console.print(f"saga invariant (settle sagas verify): {len(chaos.saga_violations)} violation(s) under SIGKILL")
    ok = not diff and calm.ledger_ok and chaos.ledger_ok and chaos.open_gaps == 0 and chaos.kills > 0
    ok = ok and not calm.saga_violations and not chaos.saga_violations
    console.print("[bold green]identical documents under SIGKILL[/]" if ok else "[bold red]the chaos run differs[/]")
    if not ok:
        raise typer.Exit(1)


async def _load_reconcile_inputs(stack: BenchStack, bank: list[Any], ledger: list[Any], processor: list[Any]) -> None:
    """The generated rows stored as the services store them: each ledger movement one chained entry
    (``libs.ledger.post``, its other leg on an offset account no rule reads), bank lines under one file,
    processor lines as imported."""
    from libs.ledger import ensure_accounts, post
    from libs.ledger.postings import AccountSpec, build_entry, credit, debit

    offset = AccountSpec("platform:bench_offset:USD", "USD", "equity", "platform", description="bench")
    from domain.contracts import chart

    cash = chart.cash_clearing("USD")
    transit = AccountSpec("platform:payouts_in_transit:USD", "USD", "liability", "platform")
    entries = []
    for p in ledger:
        legs = (
            [debit(p.account, p.amount_units, p.currency), credit(offset.code, p.amount_units, p.currency)]
            if p.amount_units > 0
            else [credit(p.account, -p.amount_units, p.currency), debit(offset.code, -p.amount_units, p.currency)]
        )
        entry = build_entry(
            id=p.entry_id, cause_id=p.cause_id, kind=p.kind, occurred_at=p.occurred_at, postings=legs,
            description=p.description,
        )  # fmt: skip
        assert entry is not None
        entries.append(entry)
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, [offset, cash, transit])
        for at in range(0, len(entries), 20_000):
            async with conn.transaction():
                await post(conn, entries[at : at + 20_000])
        await conn.execute(
            "insert into reconcile.bank_files (file_id, name, format, statements, lines) values ($1, $2, $3, 1, $4)",
            "bench",
            "bench.xml",
            "camt053",
            len(bank),
        )
        bank_columns = [f.name for f in dataclasses.fields(bank[0])]
        await conn.copy_records_to_table(
            "bank_lines",
            schema_name="reconcile",
            columns=[*bank_columns, "line_no"],
            records=[(*dataclasses.astuple(b), n) for n, b in enumerate(bank, 1)],
        )
        await conn.copy_records_to_table(
            "processor_lines",
            schema_name="reconcile",
            columns=[f.name for f in dataclasses.fields(processor[0])],
            records=[dataclasses.astuple(x) for x in processor],
        )
        await conn.execute("analyze")


async def _stored_reconcile(
    bank: list[Any], ledger: list[Any], processor: list[Any], generate_s: float, window_days: int
) -> None:
    from services.reconcile.run import run_reconciliation

    async with bench_stack("reconcile") as stack:
        loaded_at = time.perf_counter()
        await _load_reconcile_inputs(stack, bank, ledger, processor)
        load_s = time.perf_counter() - loaded_at
        steps: dict[str, float] = {}
        started = time.perf_counter()
        async with stack.pool.acquire() as conn:
            result, run_id, _ = await run_reconciliation(
                conn, as_of=date(2026, 12, 31), window_days=window_days, timings=steps
            )
            saved = await conn.fetchrow(
                "select matches, breaks, (select count(*) from settle.outbox) as outbox,"
                " (select count(*) from reconcile.confirmations) as confirmed from reconcile.runs where run_id = $1",
                run_id,
            )
        total_s = time.perf_counter() - started
        verified = await verify_pool(stack)
    placed = sum(len(m.records) for m in result.matches) + sum(len(b.records) for b in result.breaks)
    inputs = len(bank) + len(ledger) + len(processor)
    assert placed == inputs, f"{inputs:,} rows, {placed:,} records placed: one was lost or doubled"
    table = Table("step", "seconds")
    table.add_row("inputs generated (not timed)", f"{generate_s:.2f}")
    table.add_row(f"stored: {len(ledger):,} chained entries, {len(bank):,} bank lines (not timed)", f"{load_s:.2f}")
    for step, seconds in steps.items():
        table.add_row(f"  {step}", f"{seconds:.2f}")
    table.add_row(f"[bold]settle reconcile, whole run ({len(bank):,} bank lines)[/]", f"[bold]{total_s:.2f}[/]")
    console.print(table)
    console.print(
        f"run {run_id}: {saved['matches']:,} matches, {saved['breaks']:,} breaks stored; "
        f"{saved['confirmed']:,} payouts confirmed in {saved['outbox']:,} events; "
        f"ledger {'verified' if verified.ok else 'BROKEN'}"
    )
    console.print("[bold green]within 60 s[/]" if total_s <= 60 else f"[bold red]over 60 s: {total_s:.1f} s[/]")
    if not verified.ok:
        raise typer.Exit(1)


# --- replay ---------------------------------------------------------------------------------------------------
def _bench_gpu_allocation(allocation_id: str, contract_id: str, gpus: int) -> bytes:
    from schemas.inputs import AllocationProvisioned

    data = AllocationProvisioned(
        allocation_id=allocation_id,
        contract_id=contract_id,
        renter_id="bench-renter",
        supplier_id="bench-dc",
        server_id=f"srv-{allocation_id}",
        gpu_model="H100",
        gpu_count=gpus,
    )
    return encode(
        event_id=f"{allocation_id}-prov", source="/bench", type="gpu.allocation.provisioned", time=BENCH_T0, data=data
    )


async def write_month_archive(
    pool: asyncpg.Pool, *, allocations: int, gpus_per_allocation: int, contracts: int, days: int, tick_hours: int
) -> int:
    """A month of a cloud as the archive would hold it: contracts, allocations provisioned at the start
    and kept all month, and the clock's ticks every ``tick_hours`` (each with the inputs as its barrier)."""
    from libs.messaging.archive import ArchiveRow, ensure_months, month_of, write_archive
    from libs.messaging.broker import keyed_partition
    from services.clock.domain import BARRIER_TOPICS, tick_bytes, tick_id

    offsets: dict[tuple[str, int], int] = {}

    def row(topic: topics.Topic, key: str, value: bytes, event_id: str, at: datetime) -> ArchiveRow:
        partition = keyed_partition(topic, key.encode())
        offset = offsets.get((topic.name, partition), 0)
        offsets[(topic.name, partition)] = offset + 1
        return ArchiveRow(topic.name, partition, offset, key.encode(), value, (), event_id, "", at)

    rows = [
        row(topics.CONTRACTS, f"bench-c{c}", _bench_contract(f"bench-c{c}"), f"bench-c{c}-created", BENCH_T0)
        for c in range(contracts)
    ]
    rows += [
        row(
            topics.INFRA_LIFECYCLE,
            f"bench-a{i}",
            _bench_gpu_allocation(f"bench-a{i}", f"bench-c{i % contracts}", gpus_per_allocation),
            f"bench-a{i}-prov",
            BENCH_T0,
        )
        for i in range(allocations)
    ]
    barrier = {t.name: [offsets.get((t.name, p), 0) for p in range(t.partitions)] for t in BARRIER_TOPICS}
    end = BENCH_T0 + timedelta(days=days)
    at = BENCH_T0
    while at < end:
        at = min(at + timedelta(hours=tick_hours), end)
        rows.append(row(topics.CLOCK_TICKS, "clock", tick_bytes(at, barrier, event_id=tick_id(at)), tick_id(at), at))
    await ensure_months(pool, {month_of(r.event_time) for r in rows if r.event_time is not None})
    for start in range(0, len(rows), 5000):
        async with pool.acquire() as conn, conn.transaction():
            await write_archive(conn, "bench", rows[start : start + 5000])
    return len(rows)


@bench_app.command("replay")
@run_async
async def bench_replay(
    gpus: Annotated[int, typer.Option(help="GPUs in the cloud (10,000: a month is 7.2 million GPU-hours).")] = 10_000,
    gpus_per_allocation: Annotated[
        int, typer.Option(help="GPUs per allocation (1: one usage record per GPU-hour).")
    ] = 1,
    contracts: Annotated[int, typer.Option(help="Contracts the allocations spread over.")] = 100,
    days: Annotated[int, typer.Option(help="Days of usage (30: a month).")] = 30,
    tick_hours: Annotated[int, typer.Option(help="Hours between two archived clock ticks.")] = 24,
    runs: Annotated[int, typer.Option(help="Rebuilds of the same archive, compared with each other.")] = 2,
    rating_workers: Annotated[
        int, typer.Option(min=1, help="`settle run rating` processes (partitions shared by lease, as in production).")
    ] = 2,
) -> None:
    """A month of a GPU cloud rebuilt from the input archive through metering and rating into a fresh
    database (``settle rebuild``'s path: private topics, worker processes, the clock's ticks as archived),
    timed from the first published record until the fleet is idle; RUNS rebuilds must agree exactly."""
    from services.operations.compare import digests
    from tools.replay import rebuild_into

    assert gpus % gpus_per_allocation == 0, "whole allocations"
    allocations = gpus // gpus_per_allocation
    expected_hours = allocations * days * 24
    async with bench_stack("replay_source") as stack:
        archived = await write_month_archive(
            stack.pool,
            allocations=allocations,
            gpus_per_allocation=gpus_per_allocation,
            contracts=contracts,
            days=days,
            tick_hours=tick_hours,
        )
        console.print(
            f"archive: {archived} records ({contracts} contracts, {allocations} allocations of {gpus_per_allocation} "
            f"GPU, {days} days, a tick every {tick_hours} h) → {expected_hours:,} usage records expected"
        )
        results = []
        for run in range(runs):
            name = f"settle_bench_replay_into{run}"
            admin = await asyncpg.connect(stack.database_url)
            try:
                await admin.execute(f'drop database if exists "{name}" with (force)')
                await admin.execute(f'create database "{name}"')
            finally:
                await admin.close()
            into = with_database(stack.database_url, name)
            result = await rebuild_into(
                stack.pool,
                into,
                stack.bootstrap_servers,
                log_dir=stack.settings.state_dir / f"rebuild{run}",
                fleet=("metering", *["rating"] * rating_workers),
                idle_timeout_s=4 * 3600,
            )
            pool = await create_pool(into, max_size=2)
            try:
                async with pool.acquire() as conn:
                    hours = int(await conn.fetchval("select count(*) from rating.charges"))
                    digest = await digests(conn)
            finally:
                await pool.close()
            console.print(
                f"run {run + 1}: {hours:,} charges in {result.elapsed_s:.1f} s ({hours / result.elapsed_s:,.0f}/s); "
                f"ledger {digest['entries'][0]:,} entries, digest {digest['entries'][1][:16]}"
            )
            results.append((result.elapsed_s, hours, digest))
    table = Table("run", "usage records rated", "seconds", "records/s", "charges digest", "journal digest")
    for n, (elapsed, hours, digest) in enumerate(results, 1):
        table.add_row(
            str(n),
            f"{hours:,}",
            f"{elapsed:.1f}",
            f"{hours / elapsed:,.0f}",
            digest["charges"][1][:16],
            digest["entries"][1][:16],
        )
    console.print(table)
    same = all(r[2] == results[0][2] for r in results)
    complete = all(r[1] == expected_hours for r in results)
    console.print(
        ("[bold green]identical[/]" if same else "[bold red]runs differ[/]")
        + f" · {'every' if complete else 'NOT every'} expected usage hour rated"
    )
    if not (same and complete):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- payouts

_BENCH_ROUTINGS = ("011000015", "021000021", "026009593", "111000025", "121000248", "322271627")
_BENCH_IBANS = ("FR1420041010050500013M02606", "NL91ABNA0417164300", "ES9121000418450200051332", "BE68539007547034")


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


@bench_app.command("payouts")
def bench_payouts(
    payouts: Annotated[int, typer.Option(help="Payouts per file (one NACHA file, one pain.001).")] = 50_000,
) -> None:
    """Builds one NACHA file and one SEPA pain.001 of PAYOUTS payouts each, in process (no stack): the
    timed regions are exactly the rail's ``build()`` (payee checks, records/tree, controls; for pain.001
    also serialising and XSD validation), then, apart, the pain.001 tree alone and the XSD validation
    alone on the same document, and reading the NACHA file back with its controls checked."""
    from lxml import etree

    from services.payouts.rails.iso20022 import Debtor, Pain001Rail, schema
    from services.payouts.rails.nacha import NachaOriginator, NachaRail, read_nacha
    from services.payouts.rails.port import IbanAccount, PayoutBatch, PayoutInstruction, UsBankAccount

    created_at = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    ach_items = tuple(
        PayoutInstruction(
            payout_id=f"po-{n:08d}",
            payee_name=f"Supplier {n}",
            account=UsBankAccount(_BENCH_ROUTINGS[n % 6], f"{100000 + n}", "savings" if n % 5 == 0 else "checking"),
            amount_minor=1 + (n * 7919) % 5_000_000,
            currency="USD",
            effective_date=date(2026, 12, 8 + n % 3),
            reference=f"Payout November 2026 #{n}" if n % 2 else "",
            payee_kind="individual" if n % 4 == 0 else "business",
        )
        for n in range(payouts)
    )
    nacha = NachaRail(
        NachaOriginator("021000021", "BENCH BANK", "1123456789", "SETTLE", "SETTLE", "1123456789", "021000021")
    )
    ach_batch = PayoutBatch("bench-ach", created_at, ach_items)
    built_ach, ach_s = _timed(lambda: nacha.build(ach_batch))
    again, _ = _timed(lambda: nacha.build(ach_batch))
    parsed, read_s = _timed(lambda: read_nacha(built_ach.content))
    assert again.content == built_ach.content and parsed.total_credit_minor == built_ach.total_minor

    sepa_items = tuple(
        PayoutInstruction(
            payout_id=f"po-{n:08d}",
            payee_name=f"Fournisseur {n}",
            account=IbanAccount(_BENCH_IBANS[n % 4]),
            amount_minor=1 + (n * 7919) % 5_000_000,
            currency="EUR",
            effective_date=date(2026, 12, 8 + n % 3),
            reference=f"Payout November 2026 #{n}",
        )
        for n in range(payouts)
    )
    pain = Pain001Rail(
        Debtor("Settle Europe GmbH", IbanAccount("DE89370400440532013000", "COBADEFFXXX")), scheme="sepa"
    )
    sepa_batch = PayoutBatch("bench-sepa", created_at, sepa_items)
    schema("pain.001.001.09")  # parse the XSD once, outside the timed regions (cached for the process)
    built_pain, pain_s = _timed(lambda: pain.build(sepa_batch))
    tree, tree_s = _timed(lambda: pain.document(sepa_batch))
    valid, xsd_s = _timed(lambda: schema("pain.001.001.09").validate(tree))
    assert valid and etree.tostring(tree, xml_declaration=True, encoding="UTF-8") == built_pain.content

    table = Table("artefact", "payouts", "bytes", "seconds", "payouts/s")
    for label, count, size, seconds in (
        ("NACHA build (checks + records + controls)", payouts, len(built_ach.content), ach_s),
        ("NACHA read back (controls checked)", payouts, len(built_ach.content), read_s),
        ("pain.001 build (checks + tree + XML + XSD)", payouts, len(built_pain.content), pain_s),
        ("  tree alone (timed apart)", payouts, len(built_pain.content), tree_s),
        ("  XSD validation alone (timed apart)", payouts, len(built_pain.content), xsd_s),
    ):
        table.add_row(label, f"{count:,}", f"{size:,}", f"{seconds:.2f}", f"{count / seconds:,.0f}")
    console.print(table)
    console.print(f"NACHA {built_ach.file_id} sha256 {built_ach.digest[:16]} (rebuilt byte-identical)")
    slow = [name for name, s in (("NACHA", ach_s), ("pain.001", pain_s)) if s > 10]
    console.print("[bold green]both within 10 s[/]" if not slow else f"[bold red]over 10 s: {', '.join(slow)}[/]")


# ------------------------------------------------------------------------------------------- payments
# `settle bench payments` (issue 9): R14 collections end to end — invoices and ticks through Kafka, the
# payments worker(s), PostgreSQL and `settle fakepsp` over HTTP — with scripted ambiguous and 5xx shares.

_PAY_DUE = datetime(2027, 1, 16, tzinfo=UTC)
_PAY_AMBIGUOUS = ("tok_chain_timeout_then_ok", "tok_chain_drop_then_ok")
_PAY_5XX = "tok_chain_500_then_ok"


def _pay_token(i: int, ambiguous_pct: float, errors_pct: float) -> str:
    """The renter's card: spread evenly (a fixed permutation of 0..9999 per invoice), deterministic."""
    slot = (i * 7919) % 10_000 / 100
    if slot < ambiguous_pct:
        return _PAY_AMBIGUOUS[i % 2]
    if slot < ambiguous_pct + errors_pct:
        return _PAY_5XX
    return "tok_visa"


def _pay_method(i: int, token: str) -> tuple[bytes, bytes]:
    from schemas.inputs import PaymentMethodEvent

    renter = f"pay-r{i}"
    data = PaymentMethodEvent(
        renter_id=renter, method_id=f"pay-m{i}", kind="card", gateway_token=token, currency="USD", default=True
    )
    at = datetime(2027, 1, 1, tzinfo=UTC)
    return renter.encode(), encode(
        event_id=f"pay-m{i}", source="/bench", type="payment_method.attached", time=at, data=data
    )


def _pay_invoice(i: int) -> tuple[bytes, bytes]:
    """A postpaid December invoice of 10.00–59.99 USD, due at ``_PAY_DUE`` (one renter and contract each)."""
    from decimal import Decimal

    from schemas.events import InvoiceFinalized, InvoiceLines

    zero = Decimal("0.00")
    amount = Decimal(1000 + (i * 37) % 5000) / 100
    end = datetime(2027, 1, 1, tzinfo=UTC)
    data = InvoiceFinalized(
        invoice_id=f"pay-inv{i}",
        number=f"INV-2027-{i:06d}",
        contract_id=f"pay-c{i}",
        renter_id=f"pay-r{i}",
        currency="USD",
        billing_mode="postpaid",
        period_start=BENCH_T0,
        period_end=end,
        issued_at=end,
        due_at=_PAY_DUE,
        lines=InvoiceLines(usage=amount, commitment_true_up=zero, adjustments=zero, sla_credit=zero),
        adjustment_lines=[],
        subtotal=amount,
        tax_rate=Decimal("0"),
        tax=zero,
        total=amount,
        prepaid_applied=zero,
        credit_applied=zero,
        amount_due=amount,
        credit_carried_forward=zero,
        uptime=None,
        sla_credit_percent=Decimal("0"),
    )
    return data.contract_id.encode(), encode(
        event_id=f"pay-inv{i}", source="/bench", type="invoice.finalized", time=end, data=data
    )


def _pay_invoices_process(bootstrap_servers: str, prefix: str, count: int, rate_per_s: float | None) -> None:
    items = [_pay_invoice(i) for i in range(count)]
    asyncio.run(
        _publish_raw(
            bootstrap_servers,
            prefix,
            topics.INVOICES_FINALIZED.name,
            topics.INVOICES_FINALIZED.partitions,
            items,
            rate_per_s,
        )
    )


@contextlib.contextmanager
def _fakepsp_process(*args: str) -> Any:
    """``settle fakepsp --port 0 ARGS`` as its own process; yields its base URL."""
    import os
    import sys

    from tools.fleet import ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "fakepsp", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("fakepsp listening on "):
            raise RuntimeError(f"fakepsp did not start: {line!r} (exit {proc.poll()})")
        yield line.rsplit(" ", 1)[1].strip(), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _pay_ticker(stack: BenchStack, every_s: float, stop: asyncio.Event) -> int:
    """A clock tick every EVERY_S seconds (billing time from the due date on, a millisecond a tick)."""
    from schemas.inputs import ClockTicked

    producer = await start_producer(stack.bootstrap_servers, client_id="bench-clock")
    name = stack.settings.topic_prefix + topics.CLOCK_TICKS.name
    n = 0
    try:
        while not stop.is_set():
            at = _PAY_DUE + timedelta(milliseconds=n)
            value = encode(
                event_id=f"pay-tick-{n}", source="/bench", type="clock.ticked", time=at, data=ClockTicked(at=at)
            )
            await (await producer.send(name, value=value, key=b"clock", partition=0))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await stop_client(producer)
    return n


async def _pay_inquiries_now(stack: BenchStack, every_s: float, stop: asyncio.Event, moved: set[Any]) -> None:
    """R14 asks about an unknown outcome after 1 min (wall clock); the bench brings that inquiry forward,
    once per unknown result (attempt, inquiries, sent_at): a claimed inquiry also has its next one a
    minute on, and moving that one again would let a second worker ask at the same time."""
    while not stop.is_set():
        rows = await stack.pool.fetch(
            """select attempt_id, inquiries, sent_at from payments.attempts
                where state = 'unknown' and next_inquiry_at > now()"""
        )
        fresh = [(r["attempt_id"], r["inquiries"], r["sent_at"]) for r in rows]
        fresh = [key for key in fresh if key not in moved]
        if fresh:
            await stack.pool.executemany(
                """update payments.attempts set next_inquiry_at = now()
                    where attempt_id = $1 and inquiries = $2 and sent_at = $3 and state = 'unknown'""",
                fresh,
            )
            moved.update(fresh)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _ms(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values)),
        "p99": round(percentile(values, 0.99)),
        "max": round(max(values)),
    }


@bench_app.command("payments")
@run_async
async def bench_payments(
    invoices: Annotated[int, typer.Option(help="Invoices to collect (one renter, contract and card each).")] = 20_000,
    rate: Annotated[float, typer.Option(help="Invoices/s published (0: as fast as possible).")] = 0,
    ambiguous_pct: Annotated[
        float, typer.Option(help="% of cards whose first charge is ambiguous (charged, answer held or dropped).")
    ] = 5,
    errors_pct: Annotated[float, typer.Option(help="% of cards whose first charge gets a 5xx (nothing charged).")] = 5,
    workers: Annotated[int, typer.Option(help="`settle run payments` processes.")] = 2,
    tick_ms: Annotated[
        int, typer.Option(help="Wall-clock ms between two clock ticks (collections start on a tick).")
    ] = 100,
    gateway_timeout_s: Annotated[float, typer.Option(help="SETTLE_GATEWAY_TIMEOUT_S of the workers.")] = 2.0,
    hang_ms: Annotated[int, typer.Option(help="fakepsp --hang-ms (a held answer; above the timeout).")] = 3000,
    interrupted_after_s: Annotated[
        float, typer.Option(help="Payments config `interrupted_after_s` (production: 30; nothing crashes here).")
    ] = 5,
    ledgerpay_latency_ms: Annotated[int, typer.Option(help="fakepsp --ledgerpay-latency-ms (its default: 150).")] = 150,
    stripe_latency_ms: Annotated[int, typer.Option(help="fakepsp --latency-ms (Stripe dialect).")] = 0,
    timeout_s: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 1800,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """R14 collections end to end: payment methods, then INVOICES postpaid invoices on
    invoices.finalized.v1 (due at once) at RATE/s while a clock tick arrives every TICK_MS; the payments
    workers open intents on the ticks and charge `settle fakepsp` (a real HTTP process) through the
    Stripe and LedgerPay adapters. AMBIGUOUS_PCT % of the cards are charged but answer late or never
    (unknown → inquiry; the bench brings each scheduled inquiry — R14: +1 min, +5 min … — forward to
    now), ERRORS_PCT % get a 5xx first. Measures gateway calls/s, invoice published → payment.succeeded
    relayed p50/p99, and counts the charges at the processor: zero double charges expected."""
    import os
    import sys

    import aiohttp
    import yaml
    from rich.console import Console

    from services.payments import config as payments_config
    from tools.fleet import worker_env, worker_processes

    say = Console(stderr=True).print if as_json else console.print  # --json: stdout holds the JSON only
    async with bench_stack("payments") as stack:
        config_path = stack.settings.state_dir / "payments.yaml"
        # Production's gateways and decline codes; only the interrupted-send margin is short for the bench.
        config_path.write_text(yaml.safe_dump({**payments_config._DEFAULT, "interrupted_after_s": interrupted_after_s}))
        psp_args = [
            "--hang-ms",
            str(hang_ms),
            "--latency-ms",
            str(stripe_latency_ms),
            "--ledgerpay-latency-ms",
            str(ledgerpay_latency_ms),
        ]
        with _fakepsp_process(*psp_args) as (base, psp_pid):
            env = worker_env(
                stack.database_url,
                stack.bootstrap_servers,
                stack.settings.topic_prefix,
                SETTLE_STRIPE_API_BASE=base,
                SETTLE_STRIPE_API_KEY="sk_test_bench",
                SETTLE_LEDGERPAY_API_BASE=base + "/ledgerpay",
                SETTLE_PAYMENTS_CONFIG=str(config_path),
                SETTLE_GATEWAY_TIMEOUT_S=str(gateway_timeout_s),
            )
            log_dir = Path(os.environ.get("SETTLE_BENCH_LOG_DIR", stack.settings.state_dir / "logs"))
            tokens = [_pay_token(i, ambiguous_pct, errors_pct) for i in range(invoices)]
            with worker_processes(env, [["payments", "--relays", "1"]] * workers, log_dir=log_dir) as procs:
                say(f"fakepsp {base} (pid {psp_pid}); {workers} payments worker(s); {invoices} cards …")
                await _publish_raw(
                    stack.bootstrap_servers,
                    stack.settings.topic_prefix,
                    topics.PAYMENT_METHODS.name,
                    topics.PAYMENT_METHODS.partitions,
                    [_pay_method(i, t) for i, t in enumerate(tokens)],
                )
                await _wait_count(stack, "select count(*) from payments.methods", invoices, timeout_s=600)
                await asyncio.sleep(3)  # the group settles before the measurement
                stop = asyncio.Event()
                moved: set[Any] = set()
                ticker = asyncio.create_task(_pay_ticker(stack, tick_ms / 1000, stop))
                mover = asyncio.create_task(_pay_inquiries_now(stack, 1.0, stop, moved))
                say(
                    f"publishing {invoices} invoices at {'full speed' if rate <= 0 else f'{rate:g}/s'}; "
                    f"a tick every {tick_ms} ms …"
                )
                published = time.perf_counter()
                publisher = _spawn(
                    _pay_invoices_process,
                    stack.bootstrap_servers,
                    stack.settings.topic_prefix,
                    invoices,
                    rate if rate > 0 else None,
                )
                try:
                    await _wait_count(stack, "select count(*) from payments.intents", invoices, timeout_s=timeout_s)
                    done = await _wait_count(
                        stack,
                        """select case when count(*) filter (where state in ('pending', 'sending', 'unknown')) = 0
                                  then 1 else 0 end from payments.attempts""",
                        1,
                        timeout_s=timeout_s,
                    )
                    await _wait_count(
                        stack,
                        "select case when count(*) = 0 then 1 else 0 end from settle.outbox where sent_at is null",
                        1,
                        timeout_s=300,
                    )
                finally:
                    stop.set()
                    ticks = await ticker
                    await mover
                    publisher.join(60)
                alive = sum(p.poll() is None for p in procs)
                async with aiohttp.ClientSession() as session, session.get(base + "/_admin/stats") as response:
                    stats = await response.json()

        attempts = await stack.pool.fetch(
            """select a.attempt_id, a.state, a.gateway, a.token, a.inquiries, a.created_at, a.sent_at, a.resolved_at,
                      a.message, t.invoice_number
                 from payments.attempts a join payments.intents t using (intent_id)"""
        )
        intents = {
            r["state"]: r["n"]
            for r in await stack.pool.fetch("select state, count(*) as n from payments.intents group by state")
        }
        inputs = await read_timestamps(stack, topics.INVOICES_FINALIZED, "number")
        succeeded_at: dict[str, int] = {}
        for r in await scan_topic(stack, topics.PAYMENTS):
            event = orjson.loads(r.value)
            if event["type"] == "payment.succeeded":
                succeeded_at.setdefault(event["data"]["invoice_number"], r.timestamp)
        verified = (await verify_pool(stack)).ok

    sent = [a["sent_at"] for a in attempts if a["sent_at"] is not None]
    resolved = [a["resolved_at"] for a in attempts if a["resolved_at"] is not None]
    window_s = (max(resolved) - min(sent)).total_seconds() if sent and resolved else float("nan")
    inquiries = sum(a["inquiries"] for a in attempts)
    ok_attempts = {a["attempt_id"] for a in attempts if a["state"] == "succeeded"}
    by_attempt: dict[str, int] = stats.get("charges_by_attempt", {})
    invoice_of = {a["attempt_id"]: a["invoice_number"] for a in attempts}
    state_of = {a["attempt_id"]: a["state"] for a in attempts}
    charges_per_invoice: dict[str, int] = {}
    for attempt_id, n in by_attempt.items():
        number = invoice_of.get(attempt_id, f"?{attempt_id}")
        charges_per_invoice[number] = charges_per_invoice.get(number, 0) + n
    token_of = {f"INV-2027-{i:06d}": t for i, t in enumerate(tokens)}
    latencies: dict[str, list[float]] = {"all": [], "tok_visa": [], "ambiguous": [], "5xx": []}
    for number, at in succeeded_at.items():
        if number not in inputs:
            continue
        ms = float(at - inputs[number])
        token = token_of.get(number, "")
        latencies["all"].append(ms)
        latencies["ambiguous" if token in _PAY_AMBIGUOUS else "5xx" if token == _PAY_5XX else "tok_visa"].append(ms)
    first_try = [
        (a["resolved_at"] - a["created_at"]).total_seconds() * 1000
        for a in attempts
        if a["resolved_at"] is not None and a["token"] == "tok_visa"
    ]
    report: dict[str, Any] = {
        "invoices": invoices,
        "rate": rate,
        "workers": workers,
        "workers_alive_at_end": alive,
        "tick_ms": tick_ms,
        "ticks": ticks,
        "ambiguous_pct": ambiguous_pct,
        "errors_pct": errors_pct,
        "gateway_timeout_s": gateway_timeout_s,
        "interrupted_after_s": interrupted_after_s,
        "fakepsp": {"hang_ms": hang_ms, "latency_ms": stripe_latency_ms, "ledgerpay_latency_ms": ledgerpay_latency_ms},
        "published_to_done_s": round(done - published, 2),
        "attempts": len(attempts),
        "attempts_by_state": dict(sorted(_count(a["state"] for a in attempts).items())),
        "attempts_by_gateway": dict(sorted(_count(a["gateway"] for a in attempts).items())),
        "inquiries": inquiries,
        "inquiries_brought_forward": len(moved),
        # An inquiry found nothing at the processor: the same attempt was sent again with the same key.
        "resent_after_not_found": sum(1 for a in attempts if (a["message"] or "").startswith("not at the processor")),
        "inquiries_brought_forward_attempts": len({key[0] for key in moved}),
        "first_send_to_last_result_s": round(window_s, 2),
        "attempts_per_s": round(len(attempts) / window_s, 1),
        "gateway_calls_per_s": round((len(attempts) + inquiries) / window_s, 1),
        "intents_by_state": intents,
        "latency_ms_invoice_published_to_payment_succeeded_relayed": {k: _ms(v) for k, v in latencies.items()},
        "latency_ms_attempt_created_to_recorded_tok_visa": _ms(first_try),
        "processor_charges": stats.get("charges"),
        "succeeded_attempts": len(ok_attempts),
        "attempts_charged_more_than_once": sum(1 for n in by_attempt.values() if n > 1),
        "invoices_charged_more_than_once": sum(1 for n in charges_per_invoice.values() if n > 1),
        # Charged at the processor, but our books have no result yet (unknown / needs_operator): not a double.
        "charges_not_recorded_as_succeeded": sum(n for a, n in by_attempt.items() if a not in ok_attempts),
        "succeeded_attempts_without_charge": len(ok_attempts - set(by_attempt)),
        # Charged at the processor while our books say the attempt failed: the next try (a new key)
        # would charge the invoice again — a double charge in waiting.
        "charged_but_recorded_failed": sum(
            n for a, n in by_attempt.items() if state_of.get(a) in ("error", "declined")
        ),
        "ledger_verified": verified,
    }
    double = report["attempts_charged_more_than_once"] + report["invoices_charged_more_than_once"]
    latent = report["charged_but_recorded_failed"]
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        table = Table("measure", "value")
        for key, value in report.items():
            table.add_row(key.replace("_", " "), str(value))
        console.print(table)
        console.print(
            "[bold green]no double charge at the processor[/]" if double == 0 else f"[bold red]{double} DOUBLE[/]"
        )
        if latent:
            console.print(f"[bold red]{latent} charge(s) at the processor recorded as failed (retried later)[/]")
    if double or latent:
        raise typer.Exit(1)


def _count(values: Any) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(str(v) for v in values))


# ----------------------------------------------------------------------------------------- reconcile


def _reconcile_inputs(lines: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Deterministic inputs: ``lines`` bank lines and the ledger postings and processor lines they answer.

    Per 10 lines: 6 supplier payouts (ledger ``payout.planned`` on payouts in transit, bank debit with the
    payout id as end-to-end id), 3 receipts by wire (ledger cash clearing 0–2 days before the bank, no
    shared reference: matched by amount and date), 1 processor payout (ledger entry from the report,
    processor payout line, bank credit naming it: three-way). Breaks planted: every 997th bank line has
    no ledger movement, every 1,009th payout is ledgered one cent off, and one ledger receipt in 1,013
    never reaches the bank."""
    from services.reconcile.domain.entries import PAYOUT_KIND, ProcessorLine
    from services.reconcile.domain.sources import BankEntry, LedgerPosting

    start = date(2026, 11, 2)
    bank: list[BankEntry] = []
    ledger: list[LedgerPosting] = []
    processor: list[ProcessorLine] = []
    transit, cash = "platform:payouts_in_transit:USD", "platform:cash_clearing:USD"
    for k in range(lines):
        amount = 100 + (k * 7919) % 5_000_000
        day = start + timedelta(days=k % 28)
        moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        kind = k % 10
        if kind < 6:
            ref = f"po-{k:08d}"
            bank.append(BankEntry(f"h{k:08d}", "bench", "acct", "USD", amount, "debit", "booked", day, day, "495", ref))
            if k % 997:
                off = 1 if k % 1009 == 0 else 0
                units = -(amount + off) * 1_000_000
                ledger.append(LedgerPosting(f"e{k}", ref, "payout.planned", moment, transit, "USD", units))
        elif kind < 9:
            bank.append(
                BankEntry(
                    f"h{k:08d}",
                    "bench",
                    "acct",
                    "USD",
                    amount,
                    "credit",
                    "booked",
                    day,
                    day,
                    "195",
                    description=f"WIRE FROM RENTER {k % 5000}",
                )
            )
            if k % 997:
                booked = moment - timedelta(days=k % 3)
                ledger.append(
                    LedgerPosting(f"e{k}", f"evt-{k}", "payments.money_in", booked, cash, "USD", amount * 1_000_000)
                )
        else:
            payout = f"po_bench{k:08d}"
            bank.append(
                BankEntry(
                    f"h{k:08d}",
                    "bench",
                    "acct",
                    "USD",
                    amount,
                    "credit",
                    "booked",
                    day,
                    day,
                    "165",
                    description=f"STRIPE PAYOUT {payout}",
                )
            )
            processor.append(
                ProcessorLine("stripe", f"txn_{k:08d}", "payout", payout, -amount, 0, -amount, "USD", moment, moment)
            )
            if k % 997:
                ledger.append(
                    LedgerPosting(f"e{k}", f"stripe:{payout}", PAYOUT_KIND, moment, cash, "USD", amount * 1_000_000)
                )
        if k % 1013 == 0:
            ledger.append(LedgerPosting(f"x{k}", f"evt-x{k}", "payments.money_in", moment, cash, "USD", 7_000_000))
    return bank, ledger, processor


@bench_app.command("reconcile")
def bench_reconcile(
    lines: Annotated[
        int, typer.Option(help="Bank lines (the ledger side and processor payouts are generated to match).")
    ] = 1_000_000,
    window_days: Annotated[int, typer.Option(help="Matching window in business days.")] = 3,
    stored: Annotated[
        bool,
        typer.Option(
            "--stored",
            help="Load the inputs into a fresh database first (ledger entries posted and chained, bank and "
            "processor lines stored) and time the whole `settle reconcile` run: reads, matching, saving the "
            "run and confirming matched payouts through the outbox.",
        ),
    ] = False,
) -> None:
    """Reconciles LINES bank lines against the ledger side. In process (no stack) by default: the timed
    region is exactly a run's work once its rows are loaded (``services.reconcile.run.match_rows``: ledger
    postings, processor lines and bank lines to records, then R17 matching). With ``--stored``, the same
    inputs live in PostgreSQL and the timed region is the whole run as ``settle reconcile`` does it."""
    from collections import Counter

    from services.reconcile.run import match_rows

    generated_at = time.perf_counter()
    bank, ledger, processor = _reconcile_inputs(lines)
    generate_s = time.perf_counter() - generated_at
    if stored:
        asyncio.run(_stored_reconcile(bank, ledger, processor, generate_s, window_days))
        return
    as_of = date(2026, 12, 31)
    (result, _), total_s = _timed(lambda: match_rows(ledger, processor, bank, as_of=as_of, window_days=window_days))
    placed = sum(len(m.records) for m in result.matches) + sum(len(b.records) for b in result.breaks)
    inputs = len(bank) + len(ledger) + len(processor)
    assert placed == inputs, f"{inputs:,} rows, {placed:,} records placed: one was lost or doubled"
    table = Table("step", "rows", "records placed", "seconds", "bank lines/s")
    table.add_row("inputs generated (not timed)", f"{inputs:,}", "", f"{generate_s:.2f}", "")
    table.add_row(
        "[bold]rows → records → R17 matching (timed)[/]",
        f"{len(bank):,} bank + {len(ledger) + len(processor):,}",
        f"{placed:,}",
        f"[bold]{total_s:.2f}[/]",
        f"{len(bank) / total_s:,.0f}",
    )
    console.print(table)
    how = Counter(f"{m.leg} by {m.how} ({len(m.records)}-way)" for m in result.matches)
    console.print(", ".join(f"{n:,} {k}" for k, n in sorted(how.items())))
    console.print(", ".join(f"{n:,} {k}" for k, n in sorted(Counter(b.reason for b in result.breaks).items())))
    console.print("[bold green]within 60 s[/]" if total_s <= 60 else f"[bold red]over 60 s: {total_s:.1f} s[/]")
