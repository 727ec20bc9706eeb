"""Inbox retention: ``settle.inbox`` keeps one claim per (consumer, event id) ever handled; this prunes
the old ones.

What dedup needs. A claim is what makes a redelivery a no-op, so it must outlive every way the same
event can come back to the same consumer group:

* Kafka redelivers what a group had not committed (a rebalance, a crash, an offset reset) for as
  long as the broker keeps the event: its ``retention.ms`` (7 days by default);
* a relay re-publishes an outbox row it had not marked sent (a killed relay), and a sent row is kept
  for ``SETTLE_OUTBOX_RETENTION_S`` (7 days) — so an event produced by Settle can reach Kafka again up
  to that long after it was first written, and then stay there for the broker's retention.

So the window is at least the broker's retention plus the outbox retention:
``SETTLE_INBOX_RETENTION_S`` (default :data:`libs.limits.INBOX_RETENTION_S`, 35 days), never below
:data:`libs.limits.INBOX_RETENTION_FLOOR_S` (14 days = 7 + 7; the setting refuses less). A longer Kafka
retention needs a longer inbox retention — set it. Claims of events that have an open dead letter
(``settle.dead_letters``, not redriven) are kept whatever their age: a redrive republishes the event to
every group of its topic, and the groups that handled it must still recognize it.

``settle replay`` re-delivers archived events through this inbox, so it refuses ranges received before
the window (their claims may be gone); older ranges are recomputed with ``settle rebuild`` instead.

Scheduling: :func:`prune_inbox_task` is a worker background task (``Service.tasks`` signature,
``Callable[[Runtime], Coroutine]``). It runs in any one worker or in every worker (the delete is
idempotent; concurrent pruners skip each other's rows).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog

from libs import limits
from libs.db.pool import transaction
from libs.errors import InfrastructureError, RetryableError
from libs.observability import metrics
from libs.settings import Settings

if TYPE_CHECKING:
    from libs.messaging.worker import Runtime

log = structlog.get_logger("settle.inbox")


def retention_s(settings: Settings) -> int:
    """The inbox retention in force: the setting, never below the floor."""
    return max(settings.inbox_retention_s, limits.INBOX_RETENTION_FLOOR_S)


async def prune_inbox(conn: asyncpg.Connection, *, older_than: datetime, batch_max: int) -> int:
    """Delete up to ``batch_max`` inbox claims processed before ``older_than``, except claims of events
    with an open dead letter. Returns how many were deleted (``batch_max`` means: call again).

    One statement, in the caller's transaction (or its own); rows another pruner has locked are
    skipped, so two pruners never wait on each other.
    """
    if older_than.tzinfo is None:
        raise ValueError("older_than must be an aware datetime")
    batch = max(1, min(batch_max, limits.INBOX_PRUNE_BATCH_MAX))
    deleted = await conn.fetchval(
        """with doomed as (
               select i.consumer, i.event_id from settle.inbox i
                where i.processed_at < $1
                  and not exists (select 1 from settle.dead_letters d
                                   where d.event_id = i.event_id and d.redriven_at is null)
                order by i.processed_at
                limit $2
                  for update skip locked),
             gone as (
               delete from settle.inbox i using doomed
                where i.consumer = doomed.consumer and i.event_id = doomed.event_id
               returning 1)
           select count(*) from gone""",
        older_than,
        batch,
    )
    return int(deleted)


async def prune_once(pool: asyncpg.Pool, settings: Settings, *, now: datetime | None = None) -> int:
    """One pruning round: batches until a batch comes back short. Returns rows deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention_s(settings))
    total = 0
    while True:
        async with transaction(pool) as conn:
            deleted = await prune_inbox(conn, older_than=cutoff, batch_max=limits.INBOX_PRUNE_BATCH_MAX)
        total += deleted
        metrics.INBOX_PRUNED.inc(deleted)
        if deleted < limits.INBOX_PRUNE_BATCH_MAX:
            return total


async def prune_inbox_task(runtime: Runtime) -> None:
    """Background task: prune the inbox every :data:`libs.limits.INBOX_PRUNE_INTERVAL_S` until stopped.

    Wire it as one of a service's ``tasks`` (``Service(..., tasks=(..., prune_inbox_task))``) or start
    it in the worker with ``asyncio.create_task(prune_inbox_task(runtime))``. A database outage is
    waited out (logged, retried next round); it never stops the worker.
    """
    while not runtime.stop.is_set():
        try:
            deleted = await prune_once(runtime.pool, runtime.settings)
            if deleted:
                log.info("inbox pruned", rows=deleted, retention_s=retention_s(runtime.settings))
        except Exception as error:  # pruning must never stop the worker: log, try again next round
            log.warning(
                "inbox prune failed; retrying next round",
                error=repr(error)[:300],
                exc_info=not isinstance(error, InfrastructureError | RetryableError),
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stop.wait(), limits.INBOX_PRUNE_INTERVAL_S)
