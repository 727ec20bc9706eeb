"""The clock worker: at every interval boundary (SETTLE_CLOCK_INTERVAL_S, default hourly) it writes a
tick to the outbox. The wall clock is read here and only here — domain code never reads it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from libs.errors import InfrastructureError
from libs.messaging.broker import end_offsets
from libs.messaging.outbox import OutboxMessage, write_outbox
from libs.messaging.worker import Runtime, Service
from libs.times import format_utc
from schemas import topics
from services.clock.domain import BARRIER_TOPICS, last_boundary, tick_bytes, tick_id

log = structlog.get_logger("settle.clock")


async def input_barrier(bootstrap_servers: str, topic_prefix: str = "") -> dict[str, list[int]]:
    """End offsets of every partition of the input topics now (what a tick sent now must wait for)."""
    ends = await end_offsets(bootstrap_servers, {topic_prefix + t.name: t.partitions for t in BARRIER_TOPICS})
    return {
        t.name: [ends[TopicPartition(topic_prefix + t.name, p)] for p in range(t.partitions)] for t in BARRIER_TOPICS
    }


async def publish_tick(producer: AIOKafkaProducer, bootstrap_servers: str, topic_prefix: str, at: datetime) -> None:
    """Publish a tick at ``at`` with the input topics' end offsets as its barrier (operators, the demo)."""
    barrier = await input_barrier(bootstrap_servers, topic_prefix)
    await (
        await producer.send(
            topic_prefix + topics.CLOCK_TICKS.name, value=tick_bytes(at, barrier), key=b"clock", partition=0
        )
    )


async def run_clock(rt: Runtime) -> None:
    interval_s = rt.settings.clock_interval_s
    while not rt.stop.is_set():
        at = last_boundary(datetime.now(UTC), interval_s)
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                seen = await conn.fetchval("select 1 from settle.outbox where event_id = $1", tick_id(at))
                if not seen:
                    barrier = await input_barrier(rt.bootstrap_servers, rt.settings.topic_prefix)
                    value = tick_bytes(at, barrier, event_id=tick_id(at))  # one tick per boundary
                    await write_outbox(conn, [OutboxMessage(topics.CLOCK_TICKS.name, 0, b"clock", value, tick_id(at))])
                    log.info("tick", at=format_utc(at))
        except (OSError, InfrastructureError, KafkaError) as exc:  # database or broker down: try again shortly
            log.warning("tick not written", error=repr(exc))
        wait_s = max(1.0, (at.timestamp() + interval_s) - datetime.now(UTC).timestamp())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), min(wait_s, 60.0))


SERVICE = Service(
    name="clock",
    tasks=(run_clock,),
    description="Publishes clock.ticks.v1 at every interval boundary (hourly by default)",
)
