"""The ``settle_held_*`` gauges: how much data each worker holds aside, and for how long.

Each billing worker runs :func:`metrics_task` for itself (``Service.tasks``); ``settle held list``
(:mod:`services.operations.held`) reads the same kinds. It lives below the workers (they import it, it
imports no worker): it knows their held tables by SQL only.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg
import structlog

from libs import limits
from libs.db.pool import transaction
from libs.errors import InfrastructureError, OperatorRequestError, RetryableError
from libs.messaging.worker import BackgroundTask, Runtime
from libs.observability import metrics

log = structlog.get_logger("settle.held")

KINDS: dict[str, tuple[str, ...]] = {
    "metering": ("lifecycle_event", "contract_event", "allocation"),
    "rating": ("usage", "usage_released", "contract_event", "topup"),
    "invoicing": ("contract_event",),
}
"""Kinds of held items per service (``usage_released``: rating usage an operator released, still held)."""
GAUGED: dict[str, tuple[str, ...]] = {
    **KINDS,
    "invoicing": ("quarantined_close", "contract_event"),
}
"""Kinds the ``settle_held_*`` gauges count: the held items, and invoicing's quarantined closes (operated
with ``settle invoices quarantine``, not ``settle held``)."""

UNKNOWN_CONTRACT = """from metering.allocations a
     where a.contract_id is not null
       and not exists (select 1 from metering.contracts c where c.contract_id = a.contract_id)"""


@dataclass(frozen=True)
class HeldCount:
    service: str
    kind: str
    count: int
    oldest_age_s: float
    """Seconds since the oldest one was received (0 when none)."""


async def count_held(conn: asyncpg.Connection, service: str) -> list[HeldCount]:
    """Items held and the age of the oldest, per kind of one service (one query; every kind listed)."""
    if service == "metering":
        sql = f"""
            select 'lifecycle_event' as kind, count(*) as n, min(received_at) as oldest from metering.held_events
            union all
            select 'contract_event', count(*), min(held_at) from metering.contract_events_held
            union all
            select 'allocation', count(*), min(a.first_seen_at) {UNKNOWN_CONTRACT}"""
    elif service == "rating":
        sql = """
            select 'usage' as kind, count(*) as n, min(held_at) as oldest from rating.usage_held
             where released_at is null
            union all
            select 'usage_released', count(*), min(held_at) from rating.usage_held where released_at is not null
            union all
            select 'contract_event', count(*), min(held_at) from rating.contract_events_held
            union all
            select 'topup', count(*), min(received_at) from rating.wallet_topups where status = 'held'"""
    elif service == "invoicing":
        # A blocked contract's state is not updated until it is retried: updated_at is when it was blocked.
        sql = """
            select 'quarantined_close' as kind, count(*) as n, min(updated_at) as oldest
              from invoicing.contract_state where blocked_reason is not null
            union all
            select 'blocked_statement', count(*), min(blocked_at) from invoicing.statements_blocked
            union all
            select 'contract_event', count(*), min(held_at) from invoicing.contract_events_held"""
    else:
        raise OperatorRequestError(f"no held data in service {service!r} (known: {', '.join(GAUGED)})")
    rows = await conn.fetch(
        f"select kind, n, coalesce(extract(epoch from now() - oldest), 0)::float8 as age from ({sql}) h"
    )
    return [HeldCount(service, r["kind"], int(r["n"]), max(0.0, float(r["age"]))) for r in rows]


def metrics_task(service: str) -> BackgroundTask:
    """A background task (``Service.tasks``) keeping the ``settle_held_*`` gauges of one service fresh:
    one cheap query every :data:`libs.limits.HELD_METRICS_INTERVAL_S`, and a warning in the log when
    the oldest item of a kind becomes older than ``SETTLE_HELD_ALERT_AFTER_S``. Metering's also keeps
    ``settle_clock_latest_tick_timestamp_seconds`` (the latest tick it applied: alert SettleClockSilent)."""
    if service not in GAUGED:
        raise ValueError(f"no held data in service {service!r}")

    async def run(runtime: Runtime) -> None:
        alert_after = runtime.settings.held_alert_after_s
        metrics.HELD_ALERT_AFTER.set(alert_after)
        warned: set[str] = set()
        while not runtime.stop.is_set():
            try:
                async with transaction(runtime.pool) as conn:
                    counts = await count_held(conn, service)
                    if service == "metering":
                        tick = await conn.fetchval("select target from metering.clock where id = 1")
                        if tick is not None:
                            metrics.CLOCK_LATEST_TICK.set(tick.timestamp())
                for c in counts:
                    metrics.HELD_ITEMS.labels(service, c.kind).set(c.count)
                    metrics.HELD_OLDEST_AGE.labels(service, c.kind).set(c.oldest_age_s)
                    if c.oldest_age_s > alert_after and c.kind != "usage_released" and c.kind not in warned:
                        warned.add(c.kind)
                        log.warning(
                            "held data waits longer than the alert age",
                            service=service,
                            kind=c.kind,
                            items=c.count,
                            oldest_age_s=round(c.oldest_age_s),
                            runbook=f"settle held list --service {service}",
                        )
                    elif c.oldest_age_s <= alert_after:
                        warned.discard(c.kind)
            except Exception as error:  # gauges must never stop the worker: log, try again next round
                log.warning(
                    "held-data gauges not refreshed",
                    service=service,
                    error=repr(error)[:300],
                    exc_info=not isinstance(error, InfrastructureError | RetryableError),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.stop.wait(), limits.HELD_METRICS_INTERVAL_S)

    run.__name__ = run.__qualname__ = f"held_metrics_{service}"
    return run


# ====================================================================================================
# Operator actions
# ====================================================================================================
