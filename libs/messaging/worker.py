"""The worker runtime: partition readers → consume() → positions, plus relays and health endpoints.

``run_worker`` runs any set of services in one process (``settle run metering``, ``settle run all``).
Each subscription is a :class:`~libs.messaging.subscriber.PartitionReader`: it leases partitions
through PostgreSQL, reads them from the group's PostgreSQL positions and commits new positions with
the batch's effects. An infrastructure fault (database or broker down) rewinds the batch and backs
off; a partition is retried, never skipped, and a gap in it is never jumped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from libs.messaging.broker import start_producer, stop_client
from libs.messaging.consume import Subscription
from libs.messaging.inbox import prune_inbox_task
from libs.messaging.relay import Relay
from libs.messaging.subscriber import PartitionReader, ReaderStats
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
    readers: list[ReaderStats] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)

    @property
    def consumers_started(self) -> bool:
        return all(r.started for r in self.readers)

    @property
    def processed(self) -> int:
        return sum(r.processed for r in self.readers)


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
        for service in services:
            for sub in service.subscriptions:
                stats = ReaderStats()
                state.readers.append(stats)
                reader = PartitionReader(pool, sub, settings, bootstrap_servers, stats)
                tasks.append(asyncio.create_task(reader.run(stop), name=f"reader-{sub.consumer}"))
        for service in services:
            for job in service.tasks:
                tasks.append(asyncio.create_task(job(runtime), name=f"{service.name}-task"))
        if state.readers:  # a worker that claims the inbox also prunes it (idempotent across workers)
            tasks.append(asyncio.create_task(prune_inbox_task(runtime), name="inbox-prune"))
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
            if finished is not stop_wait and not stop.is_set():
                # Every task runs until stop: one that returns is a bug, and a worker must not go on
                # half-alive (or exit 0 unnoticed) without it.
                raise RuntimeError(f"worker task {finished.get_name()} ended before the worker was stopped")
        stop_wait.cancel()
    finally:
        stop.set()
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
        errors = [r.last_error for r in state.readers if r.last_error]
        gaps = [f"{t}[{p}]: {why}" for r in state.readers for (t, p), why in r.gaps.items()]
        if errors:
            return False, errors[0]
        if gaps:
            return False, f"{len(gaps)} partition(s) stopped by a gap, e.g. {gaps[0]}"
        return state.consumers_started, f"{state.processed} records handled"

    async def relays() -> tuple[bool, str]:
        errors = [r.last_error for r in state.relays if r.last_error]
        return not errors, errors[0] if errors else f"{sum(r.published_total for r in state.relays)} published"

    return {"database": database, "consumers": consumers, "relays": relays}
