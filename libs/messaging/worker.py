"""The worker runtime: faststream subscribers → consume() → ack, plus relays and health endpoints.

``run_worker`` runs any set of services in one process (``settle run metering``, ``settle run all``).
Each subscription is a faststream batch subscriber with a manual ack policy: offsets are committed
only after consume() committed the database transaction. An infrastructure fault (database down)
rewinds the batch (nack) and backs off; the partition is retried, never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from libs import limits
from libs.errors import InfrastructureError
from libs.messaging.broker import bootstrap_list, set_leader_sync_delay, start_producer, stop_client
from libs.messaging.consume import Consumer, Subscription
from libs.messaging.relay import Relay
from libs.observability import metrics
from libs.observability.health import HealthServer
from libs.settings import Settings

log = structlog.get_logger("settle.worker")


@dataclass(frozen=True)
class Runtime:
    """What background tasks of a service get."""

    settings: Settings
    pool: asyncpg.Pool
    bootstrap_servers: str
    stop: asyncio.Event


BackgroundTask = Callable[[Runtime], Coroutine[Any, Any, None]]
PendingWork = Callable[[asyncpg.Connection], Awaitable[int]]


@dataclass(frozen=True)
class Service:
    name: str
    subscriptions: tuple[Subscription, ...] = ()
    tasks: tuple[BackgroundTask, ...] = ()
    description: str = ""
    pending: PendingWork | None = None
    """Work the service has accepted but not finished (e.g. periods to close): 0 when idle."""


@dataclass
class WorkerState:
    consumers_started: bool = False
    relays: list[Relay] = field(default_factory=list)
    processed: int = 0


async def _top_up(kafka_consumer: Any, records: list[Any], max_records: int, linger_s: float) -> list[Any]:
    """A small batch waits up to ``linger_s`` for more records from the same consumer, so a steady
    stream is handled in batches that amortize the commit (the broker-side fetch linger is not
    honoured by every broker). Safe: faststream's loop for this subscriber is awaiting us."""
    if not hasattr(kafka_consumer, "getmany") or len(records) >= max_records // 4 or linger_s <= 0:
        return records
    deadline = time.monotonic() + linger_s
    while len(records) < max_records // 2:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        more = await kafka_consumer.getmany(timeout_ms=remaining_ms, max_records=max_records - len(records))
        for partition_records in more.values():
            records.extend(partition_records)
    return records


def _rewind(kafka_consumer: Any, records: Sequence[Any]) -> None:
    """Seek every partition of a batch back to its earliest record: nothing is skipped on a retry."""
    from aiokafka import TopicPartition

    earliest: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        earliest[key] = min(r.offset, earliest.get(key, r.offset))
    for (topic, partition), offset in earliest.items():
        with contextlib.suppress(Exception):  # a partition revoked meanwhile is redelivered to its new owner
            kafka_consumer.seek(TopicPartition(topic, partition), offset)


def _make_handler(
    consumer: Consumer, state: WorkerState, max_records: int, linger_s: float
) -> Callable[[KafkaMessage], Awaitable[None]]:
    backoff = {"s": 0.2}

    async def handle(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records: list[Any] = list(raw) if isinstance(raw, tuple | list) else [raw]
        if not records:
            return
        kafka_consumer = getattr(msg, "consumer", None)
        records = await _top_up(kafka_consumer, records, max_records, linger_s)
        metrics.BATCH_SIZE.labels(consumer.sub.consumer).observe(len(records))
        try:
            await consumer.process(records)
        except Exception as exc:
            # consume() settles every message (processed, duplicate or dead letter) or raises: an outage,
            # or something it could not even record. Never acknowledge then: rewind, back off, retry.
            metrics.INFRA_FAILURES.labels(consumer.sub.consumer).inc()
            log.warning(
                "batch not acknowledged; retrying",
                consumer=consumer.sub.consumer,
                error=str(exc)[:300],
                exc_info=not isinstance(exc, InfrastructureError),
            )
            _rewind(kafka_consumer, records)
            await asyncio.sleep(backoff["s"] * (0.5 + random.random()))
            backoff["s"] = min(backoff["s"] * 2, limits.INFRA_BACKOFF_MAX_S)
            return
        backoff["s"] = 0.2
        try:
            await msg.ack()
        except KafkaError as exc:  # a rebalance took the partitions: the new owner redelivers, the inbox dedups
            log.info("offset commit failed after a rebalance", consumer=consumer.sub.consumer, error=repr(exc))
        state.processed += len(records)
        _record_lag(kafka_consumer, consumer.sub.consumer, records)

    return handle


def _record_lag(kafka_consumer: Any, consumer: str, records: Sequence[Any]) -> None:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
    if not hasattr(kafka_consumer, "highwater"):
        return
    from aiokafka import TopicPartition

    for (topic, partition), offset in last.items():
        with contextlib.suppress(Exception):
            high = kafka_consumer.highwater(TopicPartition(topic, partition))
            if high is not None:
                metrics.CONSUMER_LAG.labels(consumer, topic, str(partition)).set(max(0, high - offset - 1))


def build_broker(
    services: Sequence[Service], pool: asyncpg.Pool, settings: Settings, bootstrap_servers: str, state: WorkerState
) -> KafkaBroker:
    broker = KafkaBroker(
        bootstrap_list(bootstrap_servers),
        client_id="settle-worker",
        consumer_only=True,
        logger=None,
        graceful_timeout=15.0,
    )
    for service in services:
        for sub in service.subscriptions:
            consumer = Consumer(pool, sub, topic_prefix=settings.topic_prefix)
            broker.subscriber(
                *[settings.topic_prefix + t.name for t in sub.topics],
                group_id=sub.consumer,
                batch=True,
                max_records=min(sub.batch_max, settings.consume_batch_max),
                batch_timeout_ms=limits.CONSUME_BATCH_TIMEOUT_MS,
                ack_policy=AckPolicy.MANUAL,
                auto_offset_reset="earliest",
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(100, settings.session_timeout_ms // 4),
                max_poll_interval_ms=300_000,
                # Linger: the broker answers a fetch when this many bytes are there or the wait is
                # over, so a steady stream is handled in batches that amortize the commit.
                fetch_min_bytes=settings.fetch_min_bytes,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
            )(
                _make_handler(
                    consumer, state, min(sub.batch_max, settings.consume_batch_max), settings.consume_linger_ms / 1000
                )
            )
    return broker


async def start_broker_with_retry(
    make: Callable[[], KafkaBroker], attempts: int = limits.CONSUMER_START_ATTEMPTS
) -> KafkaBroker:
    """Start consumers, surviving the mock broker's group-join race (LOCAL_STACK.md) with bounded retries."""
    delay_s = 0.2
    for attempt in range(1, attempts + 1):
        broker = make()
        try:
            await broker.start()
            return broker
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.stop(), 10)
            if attempt == attempts:
                raise
            log.info("consumer start failed; retrying", attempt=attempt, error=repr(exc)[:200])
            await asyncio.sleep(delay_s * (0.5 + random.random()))
            delay_s = min(delay_s * 2, 5.0)
    raise AssertionError("unreachable")


async def run_worker(
    services: Sequence[Service],
    settings: Settings,
    *,
    pool: asyncpg.Pool,
    bootstrap_servers: str,
    stop: asyncio.Event,
    relays: int = 1,
    health_port: int | None = None,
    ready: asyncio.Event | None = None,
    state: WorkerState | None = None,
) -> WorkerState:
    """Run services until ``stop`` is set; returns counters. Stops every client within bounded time."""
    state = state if state is not None else WorkerState()
    runtime = Runtime(settings, pool, bootstrap_servers, stop)
    producers = []
    tasks: list[asyncio.Task[Any]] = []
    broker: KafkaBroker | None = None
    health: HealthServer | None = None
    try:
        for i in range(relays):
            producer = await start_producer(bootstrap_servers, client_id=f"settle-relay-{i}")
            producers.append(producer)
            relay = Relay(
                pool,
                producer,
                topic_prefix=settings.topic_prefix,
                batch_max=settings.relay_batch_max,
                retention_s=settings.outbox_retention_s,
                name=f"relay-{i}",
            )
            state.relays.append(relay)
            tasks.append(asyncio.create_task(relay.run(stop), name=f"relay-{i}"))
        if any(s.subscriptions for s in services):
            set_leader_sync_delay(settings.kafka_leader_sync_delay_ms)
            broker = await start_broker_with_retry(
                lambda: build_broker(services, pool, settings, bootstrap_servers, state)
            )
            state.consumers_started = True
        for service in services:
            for job in service.tasks:
                tasks.append(asyncio.create_task(job(runtime), name=f"{service.name}-task"))
        if health_port is not None:
            health = HealthServer(_readiness(pool, state), port=health_port)
            await health.start()
        if ready is not None:
            ready.set()
        log.info("worker running", services=[s.name for s in services], relays=relays)
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            error = finished.exception() if finished is not stop_wait else None
            if error is not None:
                raise error
        stop_wait.cancel()
    finally:
        stop.set()
        if broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.stop(), 20)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        for producer in producers:
            await stop_client(producer)
        if health is not None:
            await health.stop()
    return state


def _readiness(pool: asyncpg.Pool, state: WorkerState) -> dict[str, Callable[[], Awaitable[tuple[bool, str]]]]:
    async def database() -> tuple[bool, str]:
        await asyncio.wait_for(pool.fetchval("select 1"), 2)
        return True, "ok"

    async def consumers() -> tuple[bool, str]:
        return state.consumers_started, f"{state.processed} records handled"

    async def relays() -> tuple[bool, str]:
        errors = [r.last_error for r in state.relays if r.last_error]
        return not errors, errors[0] if errors else f"{sum(r.published_total for r in state.relays)} published"

    return {"database": database, "consumers": consumers, "relays": relays}
