"""The clock worker: at every interval boundary (SETTLE_CLOCK_INTERVAL_S, default hourly) it writes a
tick to the outbox. The wall clock is read here and only here — domain code never reads it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from libs.messaging.outbox import OutboxMessage, write_outbox
from libs.messaging.worker import Runtime, Service
from libs.times import format_utc
from schemas import topics
from services.clock.domain import last_boundary, tick_bytes, tick_id

log = structlog.get_logger("settle.clock")


async def run_clock(rt: Runtime) -> None:
    interval_s = rt.settings.clock_interval_s
    while not rt.stop.is_set():
        at = last_boundary(datetime.now(UTC), interval_s)
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                seen = await conn.fetchval("select 1 from settle.outbox where event_id = $1", tick_id(at))
                if not seen:
                    await write_outbox(
                        conn, [OutboxMessage(topics.CLOCK_TICKS.name, 0, b"clock", tick_bytes(at), tick_id(at))]
                    )
                    log.info("tick", at=format_utc(at))
        except OSError as exc:  # the database is down: try again shortly
            log.warning("tick not written", error=repr(exc))
        wait_s = max(1.0, (at.timestamp() + interval_s) - datetime.now(UTC).timestamp())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), min(wait_s, 60.0))


SERVICE = Service(
    name="clock",
    tasks=(run_clock,),
    description="Publishes clock.ticks.v1 at every interval boundary (hourly by default)",
)
