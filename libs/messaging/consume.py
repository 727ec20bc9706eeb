"""consume(): the one place where a Kafka message becomes exactly one effect, or a dead letter.

For each batch of records (any mix of partitions, in poll order):

1. decode every record (size, JSON, CloudEvents envelope, ``data`` against the topic's model for
   the event ``type``); bytes that fail become dead letters with a reason a human can act on;
2. in ONE transaction: claim the inbox for every decoded event (``(consumer, event id)`` unique,
   with a payload fingerprint), skip duplicates, dead-letter id conflicts (same id, other payload),
   run the handler on what is new (its state, ledger postings and outbox rows), commit;
   and the consumer's new positions (``settle.consumer_positions``), fenced by the worker's partition
   leases, in the same transaction — so what is committed and where to resume never disagree.

If the batch transaction fails with anything but an infrastructure fault, it is rolled back and the
records are handled one by one, each in its own transaction, with the same guarantees; the one that
fails is classified by :func:`classify`:

* ``duplicate`` → skipped (acknowledged, no effect);
* permanent (``PermanentError`` or an unexpected exception: a bug that retrying cannot fix) →
  dead letter in its own transaction, the partition keeps flowing;
* retryable (``RetryableError``: deadlock, serialization failure) → bounded tenacity retries with
  jittered exponential backoff, then dead letter;
* infrastructure (``InfrastructureError``: the database is down) → raised to the caller, which
  does not acknowledge and retries the whole batch later; nothing is dead-lettered for an outage.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
import structlog
from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from libs import limits
from libs.db.pool import connection, map_db_error
from libs.errors import (
    IdempotencyConflictError,
    InfrastructureError,
    InvalidEventError,
    KeyHeldError,
    PermanentError,
    RetryableError,
    SettleError,
)
from libs.ledger import Entry
from libs.ledger import post as post_entries
from libs.messaging.archive import ArchiveRow, MonthPartitions, write_archive
from libs.messaging.deadletters import DeadLetter, RecordLike, dead_letter_of, held_keys, record_dead_letters
from libs.messaging.envelope import Envelope, decode_data, decode_raw
from libs.messaging.outbox import Emitter, write_outbox
from libs.messaging.positions import advance_positions
from libs.messaging.topic import Topic
from libs.observability import metrics

log = structlog.get_logger("settle.consume")


class Outcome(Enum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    DEAD_LETTER = "dead_letter"


class Tx:
    """What a handler gets: the transaction's connection, an emitter for outbox rows and a ledger buffer.

    Outbox rows and ledger entries are written in bulk when the handler returns, in the same
    transaction (call :meth:`flush` to write them earlier, e.g. before reading balances back).
    """

    def __init__(self, conn: asyncpg.Connection, producer: str) -> None:
        self.conn = conn
        self.emitter = Emitter(producer)
        self._entries: list[Entry] = []
        self.sources: dict[str, tuple[str, int, int]] = {}
        """Event id → (logical topic, partition, offset) of the record it came from."""

    def source_of(self, event: Envelope[Any]) -> tuple[str, int, int]:
        """Where an event of this batch was read: (logical topic, partition, offset)."""
        return self.sources[event.id]

    def emit(
        self,
        topic: Topic,
        *,
        key: str,
        type: str,
        data: BaseModel,
        time: datetime,
        cause: Envelope[Any] | None,
        **kwargs: Any,
    ) -> str:
        return self.emitter.emit(topic, key=key, type=type, data=data, time=time, cause=cause, **kwargs)

    def post(self, *entries: Entry | None) -> None:
        self._entries.extend(e for e in entries if e is not None)

    async def flush(self) -> None:
        # Outbox first: posting locks the ledger's chain heads until commit (libs.ledger.store.post),
        # so the ledger is written last, to hold them as briefly as possible.
        await write_outbox(self.conn, self.emitter.drain())
        if self._entries:
            entries, self._entries = self._entries, []
            await post_entries(self.conn, entries)


Handler = Callable[[Tx, Sequence[Envelope[Any]]], Awaitable[None]]
Fence = Callable[[asyncpg.Connection, set[int]], Awaitable[None]]
"""Checked inside a batch transaction with the partitions of its records; raises to refuse the commit."""
Holds = Callable[[asyncpg.Connection], Awaitable[Mapping[tuple[str, int], int]]]
"""(logical topic, partition) → the offset a consumer must not read past for now (a barrier)."""
Waits = Callable[[str, bytes | None], Mapping[tuple[str, int], int] | None]
"""For one raw record (logical topic, bytes): the positions this consumer must have reached in other
partitions before the record may be handled, or None. A cheap look at the bytes, not a decode."""
"""A handler receives the new (non-duplicate) events of a batch, in order, and must be deterministic:
given the same database state and events it does the same thing (replay relies on it)."""


@dataclass(frozen=True)
class Subscription:
    """A consumer group: the topics it reads, its inbox name and its handler."""

    consumer: str
    topics: tuple[Topic, ...]
    handler: Handler
    batch_max: int = 500
    producer: str = ""
    """``source`` of emitted events (defaults to the consumer name)."""
    holds: Holds | None = None
    """Barriers: partitions are read up to (not including) these offsets until the service lifts them,
    so work that must see exactly the log before a point (a period close) is a function of the log."""
    hold_topics: frozenset[str] = frozenset()
    """Topics (logical names) whose keys are held after a dead letter: a money-moving consumer must not
    apply the later messages of an allocation or contract while an earlier one waits for an operator."""
    waits: Waits | None = None
    """Records that must wait until this consumer has read other partitions up to given offsets (a
    watermark that carries its tick's barrier); the record and the rest of its partition wait."""


@dataclass
class _Decoded:
    record: RecordLike
    topic: Topic
    envelope: Envelope[Any]


@dataclass
class BatchResult:
    processed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    fell_back: bool = False
    outcomes: list[Outcome] = field(default_factory=list)


def classify(error: BaseException) -> type[SettleError]:
    """Map any exception to what happens next. The single place errors become acknowledgements."""
    if isinstance(error, SettleError):
        for kind in (InfrastructureError, RetryableError, PermanentError):
            if isinstance(error, kind):
                return kind
        return PermanentError
    mapped = map_db_error(error)
    if mapped is not None:
        return classify(mapped)
    return PermanentError  # an unexpected exception is a bug: dead-letter it, keep the partition moving


class Consumer:
    """Runs one subscription's batches against the database."""

    def __init__(self, pool: asyncpg.Pool, subscription: Subscription, *, topic_prefix: str = "") -> None:
        self.pool = pool
        self.sub = subscription
        self.prefix = topic_prefix
        self.producer = subscription.producer or subscription.consumer
        self._by_physical = {topic_prefix + t.name: t for t in subscription.topics}
        self._next: dict[tuple[str, int], int] = {}
        self._fence: Fence | None = None
        self._archived = frozenset(topic_prefix + t.name for t in subscription.topics if t.archive)
        self._archive: list[ArchiveRow] = []
        self._months = MonthPartitions()

    # --- decoding ------------------------------------------------------------------------------------
    def _decode(self, record: RecordLike) -> _Decoded | DeadLetter:
        topic = self._by_physical.get(record.topic)
        logical = record.topic[len(self.prefix) :] if record.topic.startswith(self.prefix) else record.topic
        if topic is None:
            error = InvalidEventError(f"topic {record.topic} is not subscribed by {self.sub.consumer}")
            return dead_letter_of(record, topic=logical, consumer=self.sub.consumer, error=error)
        raw_type = None
        try:
            raw = decode_raw(record.value)
            raw_type = raw.type
            model = topic.model_for(raw.type)
            if model is None:
                known = ", ".join(sorted(topic.types))
                raise InvalidEventError(f"event type {raw.type!r} is not one of {topic.name}'s types ({known})")
            envelope = decode_data(raw, model)
        except InvalidEventError as error:
            event_id = raw.id if raw_type is not None else None
            return dead_letter_of(
                record,
                topic=topic.name,
                consumer=self.sub.consumer,
                error=error,
                event_id=event_id,
                event_type=raw_type,
            )
        return _Decoded(record, topic, envelope)

    # --- the batch ------------------------------------------------------------------------------------
    async def process(self, records: Sequence[RecordLike], *, fence: Fence | None = None) -> BatchResult:
        """Handle records exactly once and move the consumer's positions past them.

        ``fence`` runs inside each transaction that moves positions (the worker's lease check).
        Raises InfrastructureError (nothing committed for the rest of the batch) and nothing else."""
        started = time.perf_counter()
        self._next = self._next_offsets(records)
        self._fence = fence
        decoded: list[_Decoded] = []
        letters: list[DeadLetter] = []
        for record in records:
            item = self._decode(record)
            (letters if isinstance(item, DeadLetter) else decoded).append(item)  # type: ignore[arg-type]
        self._archive = self._archive_rows(records, decoded)
        if self._archive:
            try:
                await self._months.ensure(self.pool, (r.event_time for r in self._archive))
            except Exception as error:
                unavailable = map_db_error(error)
                if isinstance(unavailable, InfrastructureError):
                    raise unavailable from error
                # Not fatal: records of a month without its partition land in the default partition.
                log.warning("archive partition not created", consumer=self.sub.consumer, error=repr(error)[:300])
        result = BatchResult()
        try:
            await self._run_batch(decoded, letters, result, final=True)
        except InfrastructureError:
            raise
        except Exception as error:  # the batch as a whole failed: fall back to one message at a time
            mapped = classify(error)
            if mapped is InfrastructureError:
                raise map_db_error(error) or error from error
            log.info("batch failed, retrying one by one", consumer=self.sub.consumer, error=repr(error)[:300])
            result = BatchResult(fell_back=True)
            await self._write_letters(letters, result)
            for item in decoded:
                await self._run_single(item, result)
            await self._settle_positions()
        metrics.HANDLER_SECONDS.labels(self.sub.consumer).observe(time.perf_counter() - started)
        metrics.MESSAGES.labels(self.sub.consumer, "processed").inc(result.processed)
        metrics.MESSAGES.labels(self.sub.consumer, "duplicate").inc(result.duplicates)
        metrics.MESSAGES.labels(self.sub.consumer, "dead_letter").inc(result.dead_letters)
        return result

    def _archive_rows(self, records: Sequence[RecordLike], decoded: list[_Decoded]) -> list[ArchiveRow]:
        """Every record of an archived topic in this batch (decoded or not, new or a duplicate): the
        archive holds each position of the log the consumer passes."""
        if not self._archived:
            return []
        envelopes = {id(d.record): d.envelope for d in decoded}
        rows = []
        for r in records:
            if r.topic not in self._archived:
                continue
            envelope = envelopes.get(id(r))
            rows.append(
                ArchiveRow(
                    topic=r.topic[len(self.prefix) :],
                    partition=r.partition,
                    offset=r.offset,
                    key=None if r.key is None else bytes(r.key),
                    value=None if r.value is None else bytes(r.value),
                    headers=tuple(r.headers or ()),
                    event_id=envelope.id if envelope is not None else None,
                    event_type=envelope.type if envelope is not None else None,
                    event_time=envelope.time if envelope is not None else None,
                )
            )
        return rows

    def _next_offsets(self, records: Sequence[RecordLike]) -> dict[tuple[str, int], int]:
        """Where the consumer resumes after these records: per (logical topic, partition), last offset + 1."""
        nxt: dict[tuple[str, int], int] = {}
        for r in records:
            logical = r.topic[len(self.prefix) :] if self.prefix and r.topic.startswith(self.prefix) else r.topic
            key = (logical, r.partition)
            nxt[key] = max(nxt.get(key, 0), r.offset + 1)
        return nxt

    async def _commit_positions(self, conn: asyncpg.Connection) -> None:
        # The archive moves with the positions: a position never passes a record that is not archived.
        if self._archive:
            await write_archive(conn, self.sub.consumer, self._archive)
        if not self._next:
            return
        if self._fence is not None:
            await self._fence(conn, {p for _, p in self._next})
        await advance_positions(conn, self.sub.consumer, self._next)

    async def _settle_positions(self) -> None:
        """After a one-by-one fallback: every record is settled, so the positions move in one last step."""
        if self._next:
            async with connection(self.pool) as conn, conn.transaction():
                await self._commit_positions(conn)

    async def _run_batch(
        self, decoded: list[_Decoded], letters: list[DeadLetter], result: BatchResult, *, final: bool = False
    ) -> None:
        async with connection(self.pool) as conn, conn.transaction():
            if final:
                await self._commit_positions(conn)  # first: a lost lease refuses the batch before any work
            decoded, followers = await self._split_held(conn, decoded, letters)
            fresh, conflicts, duplicates = await self._claim(conn, decoded)
            letters = letters + conflicts + followers
            result.duplicates += duplicates
            if fresh:
                tx = Tx(conn, self.producer)
                tx.sources = {d.envelope.id: (d.topic.name, d.record.partition, d.record.offset) for d in fresh}
                await self.sub.handler(tx, [d.envelope for d in fresh])
                await tx.flush()
            result.dead_letters += await record_dead_letters(conn, letters, hold_topics=self.sub.hold_topics)
            result.processed += len(fresh)

    async def _write_letters(self, letters: list[DeadLetter], result: BatchResult) -> None:
        if not letters:
            return
        async with connection(self.pool) as conn, conn.transaction():
            result.dead_letters += await record_dead_letters(conn, letters, hold_topics=self.sub.hold_topics)

    async def _run_single(self, item: _Decoded, result: BatchResult) -> None:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(limits.TRANSIENT_RETRY_ATTEMPTS),
                wait=wait_random_exponential(multiplier=0.05, max=limits.TRANSIENT_RETRY_MAX_WAIT_S),
                retry=retry_if_exception_type(RetryableError),
                reraise=True,
            ):
                with attempt:
                    try:
                        await self._run_batch([item], [], result)
                    except Exception as error:
                        kind = classify(error)
                        if kind is RetryableError and not isinstance(error, RetryableError):
                            raise RetryableError(str(error)) from error
                        if kind is InfrastructureError and not isinstance(error, InfrastructureError):
                            raise (map_db_error(error) or error) from error
                        raise
        except InfrastructureError:
            raise
        except Exception as error:
            log.warning(
                "dead-lettering event",
                consumer=self.sub.consumer,
                event_id=item.envelope.id,
                event_type=item.envelope.type,
                correlation_id=item.envelope.correlationid,
                causation_id=item.envelope.causationid,
                error=getattr(error, "reason", None) or repr(error)[:500],
                exc_info=not isinstance(error, SettleError),
            )
            letter = dead_letter_of(
                item.record,
                topic=item.topic.name,
                consumer=self.sub.consumer,
                error=_reasoned(error),
                event_id=item.envelope.id,
                event_type=item.envelope.type,
            )
            await self._write_letters([letter], result)

    async def _split_held(
        self, conn: asyncpg.Connection, decoded: list[_Decoded], letters: list[DeadLetter]
    ) -> tuple[list[_Decoded], list[DeadLetter]]:
        """Messages of a held key (an earlier message of it is dead-lettered, in an earlier batch or in
        this one) become its followers: dead letters that wait behind it, never applied out of order."""
        hold_topics = self.sub.hold_topics
        keyed = [d for d in decoded if d.record.key and d.topic.name in hold_topics]
        if not keyed:
            return decoded, []
        wanted = sorted({(d.topic.name, bytes(d.record.key or b"")) for d in keyed})
        holds = await held_keys(conn, self.sub.consumer, wanted)
        local: dict[tuple[str, bytes], tuple[int, int]] = {}
        for letter in letters:
            if letter.key and letter.topic in hold_topics:
                at = (letter.partition, letter.offset)
                local[(letter.topic, letter.key)] = min(local.get((letter.topic, letter.key), at), at)
        kept: list[_Decoded] = []
        followers: list[DeadLetter] = []
        for item in decoded:
            key = (item.topic.name, bytes(item.record.key or b""))
            record = item.record
            reason = None
            if key in holds:
                root_id, partition, offset = holds[key]
                if partition != record.partition or offset < record.offset:
                    reason = (
                        f"waits behind dead letter #{root_id} of key {key[1].decode(errors='replace')!r} on "
                        f"{key[0]}: redrive it (settle dlq redrive {root_id}) or drop it (settle dlq drop "
                        f"{root_id} --reason …); this message follows it then"
                    )
            elif key in local and (local[key][0] != record.partition or local[key][1] < record.offset):
                reason = (
                    f"waits behind the dead-lettered message at {key[0]}[{local[key][0]}]@{local[key][1]} of "
                    f"key {key[1].decode(errors='replace')!r}: redrive or drop that one; this message follows it"
                )
            if reason is None or not record.key:
                kept.append(item)
                continue
            metrics.MESSAGES.labels(self.sub.consumer, "held").inc()
            followers.append(
                dead_letter_of(
                    record,
                    topic=item.topic.name,
                    consumer=self.sub.consumer,
                    error=KeyHeldError(reason),
                    event_id=item.envelope.id,
                    event_type=item.envelope.type,
                )
            )
        return kept, followers

    async def _claim(
        self, conn: asyncpg.Connection, decoded: list[_Decoded]
    ) -> tuple[list[_Decoded], list[DeadLetter], int]:
        """Inbox claim for a batch: (new events, id conflicts as dead letters, duplicate count)."""
        if not decoded:
            return [], [], 0
        first: dict[str, _Decoded] = {}
        repeats: list[_Decoded] = []
        for item in decoded:
            if item.envelope.id in first:
                repeats.append(item)
            else:
                first[item.envelope.id] = item
        ids = list(first)
        claimed = {
            r["event_id"]
            for r in await conn.fetch(
                """
                insert into settle.inbox (consumer, event_id, fingerprint, topic, partition, "offset")
                select $1, * from unnest($2::text[], $3::bytea[], $4::text[], $5::int[], $6::bigint[])
                on conflict do nothing
                returning event_id
                """,
                self.sub.consumer,
                ids,
                [first[i].envelope.fingerprint for i in ids],
                [first[i].topic.name for i in ids],
                [first[i].record.partition for i in ids],
                [first[i].record.offset for i in ids],
            )
        }
        seen_before = [i for i in ids if i not in claimed]
        stored: dict[str, bytes] = {}
        if seen_before:
            stored = {
                r["event_id"]: bytes(r["fingerprint"])
                for r in await conn.fetch(
                    "select event_id, fingerprint from settle.inbox where consumer = $1 and event_id = any($2)",
                    self.sub.consumer,
                    seen_before,
                )
            }
        fresh = [first[i] for i in ids if i in claimed]
        conflicts: list[DeadLetter] = []
        duplicates = 0
        for item in [first[i] for i in seen_before] + repeats:
            expected = stored.get(item.envelope.id, first[item.envelope.id].envelope.fingerprint)
            if expected == item.envelope.fingerprint:
                duplicates += 1
                metrics.DEDUP_HITS.labels(self.sub.consumer).inc()
                continue
            error = IdempotencyConflictError(
                f"event id {item.envelope.id} was already handled by {self.sub.consumer} with a different "
                "payload; a new fact needs a new event id"
            )
            conflicts.append(
                dead_letter_of(
                    item.record,
                    topic=item.topic.name,
                    consumer=self.sub.consumer,
                    error=error,
                    event_id=item.envelope.id,
                    event_type=item.envelope.type,
                )
            )
        # Keep the batch in offset order for the handler (claim order is by first appearance).
        return fresh, conflicts, duplicates


def _reasoned(error: BaseException) -> BaseException:
    if isinstance(error, SettleError):
        return error
    mapped = map_db_error(error)
    if mapped is not None:
        return mapped
    return PermanentError(f"unexpected {type(error).__name__} in handler: {error}")
