"""Wiring of the metering worker: two consumer groups and the closer."""

import asyncpg

from libs.messaging.consume import Subscription
from libs.messaging.worker import Service
from schemas import topics
from services.held_gauges import metrics_task
from services.metering.handlers import (
    CONSUMER,
    SAMPLES_CONSUMER,
    lifecycle_holds,
    on_lifecycle_events,
    on_samples,
    run_closer,
    sample_holds,
)


async def pending(conn: asyncpg.Connection) -> int:
    """Allocations behind the clock, plus one while the watermark for the target is unsent, plus the
    ticks queued behind that close."""
    row = await conn.fetchrow("select target, watermark_sent from metering.clock where id = 1")
    if row is None or row["target"] is None:
        return 0
    from services.metering.store import count_behind, queued_ticks

    behind = await count_behind(conn, row["target"]) + await queued_ticks(conn)
    return behind + (0 if row["watermark_sent"] is not None and row["watermark_sent"] >= row["target"] else 1)


SERVICE = Service(
    name="metering",
    subscriptions=(
        Subscription(
            consumer=CONSUMER,
            topics=(topics.INFRA_LIFECYCLE, topics.CONTRACTS, topics.CLOCK_TICKS),
            handler=on_lifecycle_events,
            batch_max=500,
            holds=lifecycle_holds,
            # No key holds: R2 computes an allocation's state from event times, never from arrival order, so
            # a dead-lettered lifecycle or contract event (bad input: no effect) holds nothing behind it.
        ),
        Subscription(
            consumer=SAMPLES_CONSUMER,
            topics=(topics.USAGE_SAMPLES,),
            handler=on_samples,
            batch_max=1000,
            holds=sample_holds,
            producer="metering",
        ),
    ),
    tasks=(run_closer, metrics_task("metering")),
    pending=pending,
    description="Lifecycle events and telemetry → GPU-seconds per allocation per UTC hour (usage.metered.v1)",
)
