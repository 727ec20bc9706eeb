"""The outbox relay: publishes committed outbox rows to Kafka, in order per (topic, partition) lane.

One round, in one transaction:

1. find lanes with due rows and take a transaction-scoped advisory lock on each free one (several
   relays split the lanes; a lane is published by one relay at a time, so its order holds);
2. read up to ``batch_max`` due rows of those lanes in id order;
3. send them with an idempotent producer (``acks=all``) to their precomputed partition and wait for
   every acknowledgement;
4. mark them sent, with the offset each landed at, and commit.

A relay killed anywhere before step 4 commits leaves the rows unsent: they are published again by
the next round (at least once; the event ids are unchanged, so consumers deduplicate). A relay
wakes on ``NOTIFY settle_outbox`` (sent by the insert trigger) instead of polling, with a bounded
idle wait as a safety net and to pick up delayed rows (``not_before``) when they fall due.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from libs import limits
from libs.db.pool import keeps_session_state
from libs.observability import metrics

log = structlog.get_logger("settle.relay")

_LANES_SQL = """
select topic, partition from (
    select distinct topic, partition from settle.outbox
     where sent_at is null and (not_before is null or not_before <= now())
) lanes
where pg_try_advisory_xact_lock(hashtext('settle.outbox:' || topic), partition)
"""
_ROWS_SQL = """
select o.id, o.topic, o.partition, o.key, o.value, o.headers
  from settle.outbox o
  join unnest($1::text[], $2::int[]) as l(topic, partition) on l.topic = o.topic and l.partition = o.partition
 where o.sent_at is null and (o.not_before is null or o.not_before <= now())
 order by o.id
 limit $3
"""


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        topic_prefix: str = "",
        batch_max: int = 1000,
        retention_s: int = limits.OUTBOX_RETENTION_S,
        name: str = "relay",
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.prefix = topic_prefix
        self.batch_max = min(batch_max, limits.RELAY_BATCH_MAX)
        self.retention_s = retention_s
        self.name = name
        self._wake = asyncio.Event()
        self.published_total = 0
        self.last_error: str | None = None

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def run_round(self) -> int:
        """Publish one round; returns the number of rows published."""
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            lanes = await conn.fetch(_LANES_SQL)
            if not lanes:
                return 0
            rows = await conn.fetch(
                _ROWS_SQL, [r["topic"] for r in lanes], [r["partition"] for r in lanes], self.batch_max
            )
            if not rows:
                return 0
            futures = []
            for row in rows:
                headers = [(h[0], str(h[1]).encode()) for h in row["headers"]]
                futures.append(
                    await self.producer.send(
                        self.prefix + row["topic"],
                        value=row["value"],
                        key=row["key"],
                        partition=row["partition"],
                        headers=headers,
                    )
                )
            sent = await asyncio.gather(*futures)
            # The offset each row landed at: a consumer that finds a gap in this lane (retention deleted
            # records before it read them) refills it from these rows, exactly and in order.
            await conn.execute(
                """update settle.outbox o set sent_at = now(), published_offset = u.off
                     from unnest($1::bigint[], $2::bigint[]) as u(id, off) where o.id = u.id""",
                [r["id"] for r in rows],
                [m.offset for m in sent],
            )
        for row in rows:
            metrics.OUTBOX_PUBLISHED.labels(row["topic"]).inc()
        metrics.RELAY_ROUND_SECONDS.observe(time.perf_counter() - started)
        self.published_total += len(rows)
        return len(rows)

    async def _next_due_s(self) -> float:
        delay = await self.pool.fetchval(
            """select extract(epoch from min(not_before) - now()) from settle.outbox
                where sent_at is null and not_before > now()"""
        )
        return limits.RELAY_IDLE_WAIT_S if delay is None else max(0.0, min(float(delay), limits.RELAY_IDLE_WAIT_S))

    async def prune(self) -> int:
        """Delete sent rows older than the retention, in bounded chunks."""
        total = 0
        while True:
            deleted = await self.pool.fetchval(
                """with doomed as (
                       select id from settle.outbox
                        where sent_at is not null and sent_at < now() - make_interval(secs => $1)
                        limit 10000)
                   , gone as (delete from settle.outbox o using doomed d where o.id = d.id returning 1)
                   select count(*) from gone""",
                float(self.retention_s),
            )
            total += int(deleted)
            if deleted < 10000:
                break
        if total:
            metrics.OUTBOX_PRUNED.inc(total)
        return total

    async def update_backlog_metrics(self) -> None:
        row = await self.pool.fetchrow(
            """select count(*) as backlog, extract(epoch from now() - min(created_at)) as oldest
                 from settle.outbox where sent_at is null"""
        )
        metrics.OUTBOX_BACKLOG.set(row["backlog"])
        metrics.OUTBOX_OLDEST_AGE.set(float(row["oldest"] or 0))

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set. Broker or database faults back off and retry; nothing is lost."""
        listener = await self.pool.acquire()
        keeps_session_state(listener)
        await listener.add_listener("settle_outbox", self._notified)
        backoff_s = 0.1
        last_housekeeping = 0.0
        try:
            while not stop.is_set():
                try:
                    self._wake.clear()
                    published = await self.run_round()
                    backoff_s = 0.1
                    self.last_error = None
                    now = time.monotonic()
                    if now - last_housekeeping > 5:
                        last_housekeeping = now
                        await self.update_backlog_metrics()
                        if self.retention_s >= 0:
                            await self.prune()
                    if published:
                        continue
                    wait_s = await self._next_due_s()
                except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, Exception) as exc:
                    self.last_error = repr(exc)
                    log.warning("relay round failed; backing off", relay=self.name, error=repr(exc)[:300])
                    wait_s = backoff_s
                    backoff_s = min(backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(self._wake, stop), timeout=wait_s)
        finally:
            # A cancellation may land while we clean up: the connection must go back to the pool
            # whatever happens, or closing the pool waits for it forever.
            try:
                with contextlib.suppress(Exception):
                    await listener.remove_listener("settle_outbox", self._notified)
            finally:
                await asyncio.shield(self.pool.release(listener))


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
