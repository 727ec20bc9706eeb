"""One consumer group's reader in one worker: leased partitions → batches → consume() → positions.

The loop, per round:

1. every :data:`~libs.limits.ASSIGNMENT_INTERVAL_S`, re-balance the partition leases
   (:mod:`libs.messaging.leases`) and read open gaps; newly owned partitions start at their
   PostgreSQL position (:mod:`libs.messaging.positions`), a never-read partition at the broker's
   first offset;
2. read the subscription's barriers (``Subscription.holds``): a partition whose position reached its
   barrier is paused; records at or past it are not handled (the fetch position is moved back);
3. fetch a batch (``auto_offset_reset="none"``: the client never moves a position by itself), hand it
   to :meth:`Consumer.process`, which commits the effects and the new positions in one transaction;
4. an infrastructure fault rewinds every partition of the batch to its first record and backs off.

An offset-out-of-range answer is a **gap** (the broker deleted records this group had not read, or
lost its log): refilled from the producer's outbox when the topic is Settle's own and the rows are
still there, otherwise that partition stops — counted (``settle_consumer_gap_total``), recorded in
``settle.consumer_gaps`` (``settle status``, ``settle gaps``), alerted — and the others keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, OffsetOutOfRangeError

from libs import limits
from libs.db.pool import connection
from libs.errors import BrokerUnavailableError, InfrastructureError
from libs.messaging.broker import bootstrap_list, stop_client
from libs.messaging.consume import Consumer, Subscription
from libs.messaging.gaps import outbox_covers, published_rows
from libs.messaging.leases import Leases
from libs.messaging.positions import advance_positions, load_positions, open_gaps, record_gap
from libs.observability import metrics
from libs.settings import Settings

log = structlog.get_logger("settle.subscriber")

PLATFORM_PRODUCERS = frozenset({"platform", "operator"})
"""Topics written by these are not in any Settle outbox: their gaps wait for a re-publish."""


@dataclass
class ReaderStats:
    processed: int = 0
    owned_slots: int = 0
    """Partition slots this worker leases right now."""
    started: bool = False
    last_error: str | None = None
    gaps: dict[tuple[str, int], str] = field(default_factory=dict)


class PartitionReader:
    """Reads one subscription's leased partitions until stopped. See the module docstring."""

    def __init__(
        self, pool: asyncpg.Pool, sub: Subscription, settings: Settings, bootstrap_servers: str, stats: ReaderStats
    ) -> None:
        self.pool = pool
        self.sub = sub
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.stats = stats
        self.prefix = settings.topic_prefix
        self.consumer = Consumer(pool, sub, topic_prefix=self.prefix)
        self.batch_max = min(sub.batch_max, settings.consume_batch_max)
        self.linger_s = settings.consume_linger_ms / 1000
        self.slots = max(t.partitions for t in sub.topics)
        self.leases = Leases(pool, sub.consumer, self.slots)
        self._topics = {self.prefix + t.name: t for t in sub.topics}
        self._kafka: AIOKafkaConsumer | None = None
        self._assigned: set[TopicPartition] = set()
        self._stopped_by_gap: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._holds: dict[TopicPartition, int] = {}
        self._waiting: dict[TopicPartition, float] = {}
        self._idle_s = 0.0
        self._backoff_s = 0.2
        self._force_rebalance = False

    # --- helpers ----------------------------------------------------------------------------------
    def _logical(self, tp: TopicPartition) -> tuple[str, int]:
        return self._topics[tp.topic].name, tp.partition

    def _partitions_of(self, slots: frozenset[int]) -> set[TopicPartition]:
        return {TopicPartition(self.prefix + t.name, s) for t in self.sub.topics for s in slots if s < t.partitions}

    async def _start_client(self) -> AIOKafkaConsumer:
        client = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap_servers),
            client_id=f"settle-{self.sub.consumer}",
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_min_bytes=self.settings.fetch_min_bytes,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        try:
            await client.start()
        except (KafkaError, OSError) as exc:
            await stop_client(client)
            raise BrokerUnavailableError(f"cannot reach Kafka at {self.bootstrap_servers}: {exc}") from exc
        return client

    # --- assignment -------------------------------------------------------------------------------
    async def _rebalance(self) -> None:
        assert self._kafka is not None
        slots = await self.leases.refresh()
        metrics.CONSUMER_PARTITIONS_OWNED.labels(self.sub.consumer).set(len(slots))
        self.stats.owned_slots = len(slots)
        async with connection(self.pool) as conn:
            gaps = {(g.topic, g.partition): g for g in await open_gaps(conn, self.sub.consumer)}
        wanted = self._partitions_of(slots)
        gapped = {tp for tp in wanted if self._logical(tp) in gaps}
        metrics.CONSUMER_GAPS_OPEN.labels(self.sub.consumer).set(len(gaps))
        self.stats.gaps = {k: f"offsets {g.missing_from}..{g.missing_to - 1} missing" for k, g in gaps.items()}
        wanted -= gapped
        if wanted == self._assigned:
            return
        # assign() starts every partition afresh: each resumes at its PostgreSQL position, which is
        # exact here (a batch commits its positions before the loop goes on).
        self._kafka.assign(sorted(wanted, key=lambda tp: (tp.topic, tp.partition)))
        self._assigned = set(wanted)
        self._paused = set()
        self._stopped_by_gap = set()
        self._waiting = {}
        await self._seek_to_positions(wanted)
        log.info(
            "partitions assigned",
            consumer=self.sub.consumer,
            slots=sorted(slots),
            partitions=len(self._assigned),
            stopped_by_gap=len(gapped) + len(self._stopped_by_gap),
        )

    async def _seek_to_positions(self, partitions: set[TopicPartition]) -> None:
        """Start each partition at the group's PostgreSQL position, or the broker's first offset if the
        group never read it. A position outside the broker's log is a gap, handled right here."""
        assert self._kafka is not None
        async with connection(self.pool) as conn:
            positions = await load_positions(conn, self.sub.consumer, [self._logical(tp) for tp in partitions])
        ordered = sorted(partitions, key=lambda tp: (tp.topic, tp.partition))
        firsts = await self._kafka.beginning_offsets(ordered)
        ends = await self._kafka.end_offsets(ordered)
        for tp in ordered:
            position = positions.get(self._logical(tp))
            if position is None:
                self._kafka.seek(tp, firsts[tp])  # a brand-new group reads from the start
            elif position < firsts[tp] or position > ends[tp]:
                await self._on_gap(tp, position, firsts[tp], ends[tp])
            else:
                self._kafka.seek(tp, position)

    # --- gaps -------------------------------------------------------------------------------------
    async def _on_gap(self, tp: TopicPartition, position: int, first: int, end: int) -> None:
        """The broker no longer has ``[position, first)`` (or its log ends before ``position``)."""
        assert self._kafka is not None
        topic = self._topics[tp.topic]
        if position > end:
            reason = (
                f"the broker's log of {topic.name}[{tp.partition}] ends at offset {end}, before this group's "
                f"position {position}: the broker lost its data or the topic was re-created"
            )
            await self._stop_partition(tp, position, end, reason)
            return
        missing = first - position
        internal = topic.producer not in PLATFORM_PRODUCERS
        if internal and missing <= limits.GAP_REFILL_MAX and await self._refill(tp, position, first):
            metrics.CONSUMER_GAPS.labels(self.sub.consumer, topic.name, "refilled").inc()
            self._kafka.seek(tp, first)
            return
        reason = (
            f"the broker deleted offsets {position}..{first - 1} of {topic.name}[{tp.partition}] before "
            f"{self.sub.consumer} read them ({missing} records; retention)"
            + (
                ": the producer's outbox no longer holds them"
                if internal
                else ": platform input, ask the platform to re-publish (duplicates are skipped by event id)"
            )
        )
        await self._stop_partition(tp, position, first, reason)

    async def _stop_partition(self, tp: TopicPartition, position: int, resume_at: int, reason: str) -> None:
        assert self._kafka is not None
        topic, partition = self._logical(tp)
        async with connection(self.pool) as conn:
            await record_gap(conn, self.sub.consumer, topic, partition, position, resume_at, reason)
        metrics.CONSUMER_GAPS.labels(self.sub.consumer, topic, "stopped").inc()
        log.error("partition stopped: gap", consumer=self.sub.consumer, topic=topic, partition=partition, reason=reason)
        self.stats.gaps[(topic, partition)] = reason
        # Paused now; the next re-balance leaves it out of the assignment until the gap is resolved.
        self._stopped_by_gap.add(tp)
        self._kafka.pause(tp)
        self._force_rebalance = True

    async def _refill(self, tp: TopicPartition, position: int, first: int) -> bool:
        """Feed the outbox rows published at ``[position, first)`` to the handler, in offset order."""
        topic, partition = self._logical(tp)
        async with connection(self.pool) as conn:
            if not await outbox_covers(conn, topic, partition, position):
                return False
            rows = await published_rows(conn, topic, partition, position, first, physical_topic=tp.topic)
        for start in range(0, len(rows), self.batch_max):
            chunk = rows[start : start + self.batch_max]
            await self.consumer.process(chunk, fence=self.leases.check_owned)
        async with connection(self.pool) as conn, conn.transaction():
            await self.leases.check_owned(conn, {partition})
            await advance_positions(conn, self.sub.consumer, {(topic, partition): first})
            await record_gap(
                conn,
                self.sub.consumer,
                topic,
                partition,
                position,
                first,
                f"the broker deleted offsets {position}..{first - 1} before {self.sub.consumer} read them",
                resolution=f"refilled from the outbox: {len(rows)} records",
            )
        log.warning(
            "gap refilled from the outbox",
            consumer=self.sub.consumer,
            topic=topic,
            partition=partition,
            missing_from=position,
            missing_to=first,
            records=len(rows),
        )
        return True

    # --- barriers ---------------------------------------------------------------------------------
    async def _refresh_holds(self) -> None:
        assert self._kafka is not None
        if self.sub.holds is None:
            return
        async with connection(self.pool) as conn:
            raw: Mapping[tuple[str, int], int] = await self.sub.holds(conn)
        self._holds = {TopicPartition(self.prefix + t, p): o for (t, p), o in raw.items()}
        pause: set[TopicPartition] = set()
        resume: set[TopicPartition] = set()
        for tp in self._assigned - self._stopped_by_gap:
            hold = self._holds.get(tp)
            at_hold = hold is not None and await self._kafka.position(tp) >= hold
            (pause if at_hold else resume).add(tp)
        if pause - self._paused:
            self._kafka.pause(*(pause - self._paused))
        if resume & self._paused:
            self._kafka.resume(*(resume & self._paused))
        self._paused = pause
        metrics.CONSUMER_HELD_PARTITIONS.labels(self.sub.consumer).set(len(pause))

    def _cut_at_holds(self, records: list[Any]) -> list[Any]:
        """Drop records at or past a barrier and move their partitions back to it."""
        if not self._holds:
            return records
        kept: list[Any] = []
        cut: dict[TopicPartition, int] = {}
        for r in records:
            hold = self._holds.get(TopicPartition(r.topic, r.partition))
            if hold is not None and r.offset >= hold:
                tp = TopicPartition(r.topic, r.partition)
                cut[tp] = min(r.offset, cut.get(tp, r.offset))
            else:
                kept.append(r)
        assert self._kafka is not None
        for tp, offset in cut.items():
            self._kafka.seek(tp, offset)  # re-read from the barrier once it is lifted
            self._kafka.pause(tp)
            self._paused.add(tp)
        return kept

    def _resume_waiting(self) -> None:
        assert self._kafka is not None
        due = [tp for tp, since in self._waiting.items() if time.monotonic() - since >= limits.CONSUMER_POLL_MS / 1000]
        for tp in due:
            del self._waiting[tp]
            if tp in self._assigned and tp not in self._paused and tp not in self._stopped_by_gap:
                self._kafka.resume(tp)

    async def _cut_at_waits(self, records: list[Any]) -> list[Any]:
        """Hold back a record whose wait is not met yet (and what follows it in its partition)."""
        if self.sub.waits is None or not records:
            return records
        assert self._kafka is not None
        kept: list[Any] = []
        blocked: dict[TopicPartition, int] = {}
        read: dict[tuple[str, int], int] = {}
        committed: dict[tuple[str, int], int] | None = None
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp in blocked:
                continue
            logical = self._logical(tp)
            needed = self.sub.waits(logical[0], r.value)
            if needed:
                if committed is None:
                    async with connection(self.pool) as conn:
                        committed = await load_positions(conn, self.sub.consumer, needed)
                missing = [k for k in needed if k not in committed]
                if missing:
                    async with connection(self.pool) as conn:
                        committed.update(await load_positions(conn, self.sub.consumer, missing))
                if any(max(committed.get(k, 0), read.get(k, 0)) < o for k, o in needed.items()):
                    blocked[tp] = r.offset
                    continue
            kept.append(r)
            read[logical] = r.offset + 1
        for tp, offset in blocked.items():
            # Paused for a round so the partitions it waits for are fetched, then read again from here.
            self._kafka.seek(tp, offset)
            self._kafka.pause(tp)
            self._waiting[tp] = time.monotonic()
        if blocked:
            log.debug("records wait for other partitions", consumer=self.sub.consumer, partitions=len(blocked))
        return kept

    # --- the loop ---------------------------------------------------------------------------------
    async def _fetch(self) -> list[Any]:
        """One batch from the fetchable partitions; after an empty answer, rest a little.

        Every poll is short (:data:`~libs.limits.CONSUMER_IDLE_POLL_MS`), and after an empty one every
        partition is paused for a rest (``_idle_s``, doubling up to
        :data:`~libs.limits.CONSUMER_IDLE_BACKOFF_MAX_MS`): some brokers (noida-db) answer an empty
        fetch at once instead of waiting ``fetch_max_wait_ms``, and the client's prefetch loop would
        otherwise spin on them — also between the records of a sparse stream (a tick every 100 ms kept
        the payments worker's fetcher spinning for most of each gap: a fifth of its CPU). A record that
        arrives while resting waits at most that long."""
        assert self._kafka is not None
        active = self._fetchable()
        if not active:
            await asyncio.sleep(limits.CONSUMER_POLL_MS / 1000)
            return []
        poll_ms = limits.CONSUMER_IDLE_POLL_MS
        try:
            batches = await self._kafka.getmany(timeout_ms=poll_ms, max_records=self.batch_max)
            records = [r for rs in batches.values() for r in rs]
            if records and len(records) < self.batch_max // 4 and self.linger_s > 0:
                # A small batch waits a little for more, so a steady stream amortizes the commit.
                deadline = time.monotonic() + self.linger_s
                while len(records) < self.batch_max // 2:
                    left_ms = int((deadline - time.monotonic()) * 1000)
                    if left_ms <= 0:
                        break
                    more = await self._kafka.getmany(timeout_ms=left_ms, max_records=self.batch_max - len(records))
                    records.extend(r for rs in more.values() for r in rs)
        except OffsetOutOfRangeError as exc:
            await self._on_out_of_range(exc)
            return []
        if records:
            self._idle_s = 0.0
            return records
        self._idle_s = min(max(self._idle_s * 2, 0.01), limits.CONSUMER_IDLE_BACKOFF_MAX_MS / 1000)
        self._kafka.pause(*active)
        try:
            await asyncio.sleep(self._idle_s)
        finally:
            self._kafka.resume(*(active & self._assigned))
        return []

    def _fetchable(self) -> set[TopicPartition]:
        return self._assigned - self._paused - self._stopped_by_gap - set(self._waiting)

    async def _on_out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        assert self._kafka is not None
        offsets: Mapping[TopicPartition, int] = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        partitions = [tp for tp in offsets if tp in self._assigned]
        if not partitions:
            return
        firsts = await self._kafka.beginning_offsets(partitions)
        ends = await self._kafka.end_offsets(partitions)
        for tp in partitions:
            position = offsets[tp]
            if firsts[tp] <= position <= ends[tp]:
                self._kafka.seek(tp, position)  # a transient answer: try again
            else:
                await self._on_gap(tp, position, firsts[tp], ends[tp])

    def _rewind(self, records: Sequence[Any]) -> None:
        assert self._kafka is not None
        earliest: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            earliest[tp] = min(r.offset, earliest.get(tp, r.offset))
        for tp, offset in earliest.items():
            if tp in self._assigned:
                self._kafka.seek(tp, offset)

    def _record_lag(self, records: Sequence[Any]) -> None:
        assert self._kafka is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(r.offset, last.get(tp, -1))
        for tp, offset in last.items():
            high = self._kafka.highwater(tp)
            if high is not None:
                metrics.CONSUMER_LAG.labels(self.sub.consumer, self._topics[tp.topic].name, str(tp.partition)).set(
                    max(0, high - offset - 1)
                )

    async def _round(self, next_rebalance: float) -> float:
        now = time.monotonic()
        if now >= next_rebalance or self._force_rebalance:
            self._force_rebalance = False
            await self._rebalance()
            next_rebalance = now + limits.ASSIGNMENT_INTERVAL_S
        await self._refresh_holds()
        self._resume_waiting()
        records = await self._cut_at_waits(self._cut_at_holds(await self._fetch()))
        if not records:
            return next_rebalance
        metrics.BATCH_SIZE.labels(self.sub.consumer).observe(len(records))
        # No fetching while the batch is processed (unless SETTLE_CONSUME_PREFETCH): a broker that answers
        # an empty fetch at once (noida-db ignores fetch.max.wait.ms) would otherwise have the client's
        # prefetch loop send fetch after fetch for the whole transaction — an eighth of a payments worker's
        # CPU. What arrives meanwhile is read by the next round's fetch.
        assert self._kafka is not None
        resting = set() if self.settings.consume_prefetch else self._fetchable()
        self._kafka.pause(*resting)
        try:
            await self.consumer.process(records, fence=self.leases.check_owned)
        except Exception:
            self._rewind(records)
            raise
        finally:
            if self._kafka is not None:
                self._kafka.resume(*(resting & self._assigned))
        self.stats.processed += len(records)
        self._backoff_s = 0.2
        self._record_lag(records)
        return next_rebalance

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set. Database and broker faults back off and retry; nothing is skipped."""
        next_rebalance = 0.0
        try:
            while not stop.is_set():
                try:
                    if self._kafka is None:
                        self._kafka = await self._start_client()
                        self._assigned = set()
                        self._paused = set()
                        next_rebalance = 0.0
                    next_rebalance = await self._round(next_rebalance)
                    self.stats.started = True
                    self.stats.last_error = None
                except (InfrastructureError, KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    metrics.INFRA_FAILURES.labels(self.sub.consumer).inc()
                    first = self.stats.last_error is None
                    self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    # Log the first failure of a streak, then stay quiet until it recovers.
                    (log.warning if first else log.debug)(
                        "consumer round failed; backing off", consumer=self.sub.consumer, error=self.stats.last_error
                    )
                    if isinstance(exc, KafkaConnectionError | BrokerUnavailableError):
                        await self._drop_client()
                    next_rebalance = 0.0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._backoff_s * (0.5 + random.random()))
                    self._backoff_s = min(self._backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
        finally:
            # The leases first (one statement): stopping the Kafka client can take seconds, and a worker
            # cancels a task again after 10 s — the leases must not wait behind it.
            try:
                await self.leases.close()
            finally:
                await self._drop_client()

    async def _drop_client(self) -> None:
        client, self._kafka = self._kafka, None
        self._assigned = set()
        self._paused = set()
        self._waiting = {}
        await stop_client(client)
