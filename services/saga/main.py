"""Wiring of the saga worker (``settle run saga``): the consumer and a gauge refresher."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from libs.messaging.worker import Runtime, Service
from libs.settings import Settings, get_settings
from services.saga import domain, metrics
from services.saga.handlers import subscription


def policy_of(settings: Settings) -> domain.Policy:
    return domain.Policy(
        dispute_lost=settings.saga_dispute_lost,
        follow_payouts=settings.saga_follow_payouts,
        await_acknowledgement=settings.saga_await_acknowledgement,
    )


async def refresh_gauges(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """select state, count(*) as n, extract(epoch from now() - min(state_since))::float8 as age
             from saga.sagas group by state"""
    )
    seen = {r["state"]: r for r in rows}
    for state in sorted(domain.TERMINAL | domain.OPEN):
        row = seen.get(state)
        metrics.SAGAS.labels(state).set(row["n"] if row else 0)
        if state in domain.OPEN:
            metrics.OLDEST_OPEN.labels(state).set(row["age"] if row else 0)
    metrics.OVERDUE.set(
        await conn.fetchval(
            """select count(*) from saga.sagas
                where state <> all($1::text[]) and deadline is not null
                  and deadline < (select max(event_time) from saga.transitions where event_type = 'clock.ticked')
                                 - interval '1 day'""",
            sorted(domain.TERMINAL),
        )
    )


async def gauges_task(runtime: Runtime) -> None:
    while not runtime.stop.is_set():
        async with runtime.pool.acquire() as conn:
            await refresh_gauges(conn)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stop.wait(), timeout=15)


SERVICE = Service(
    name="saga",
    subscriptions=(subscription(lambda: policy_of(get_settings())),),
    tasks=(gauges_task,),
    description="Billing-cycle sagas (issue 11): invoices, payment status, payments, credit notes and ticks → "
    "sagas.v1 (steps, compensation requests, completed / compensated / needs_operator)",
)
