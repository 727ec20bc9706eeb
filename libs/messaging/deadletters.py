"""Dead letters: the table an operator reads, and the ``<topic>.dlq`` topic downstream tools read.

A dead letter keeps the original bytes and headers, the consumer, where it came from and a reason a
human can act on. Writing one also queues the original bytes to ``<topic>.dlq`` through the outbox
(with ``settle-dlq-*`` headers), in the same transaction. Redrive republishes the original bytes to
the original topic through the outbox and marks the row; the consumer then sees it as new input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import orjson

from libs import limits
from libs.ids import derive_id
from libs.messaging.outbox import OutboxMessage, write_outbox
from libs.messaging.partitioner import partition_for
from libs.messaging.topic import DLQ_PARTITIONS, topic_named


class RecordLike(Protocol):
    """What consume() needs of a Kafka record (aiokafka's ConsumerRecord satisfies it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetter:
    consumer: str
    topic: str
    """Logical topic name."""
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, str], ...]
    event_id: str | None
    event_type: str | None
    error_class: str
    reason: str


def dead_letter_of(
    record: RecordLike,
    *,
    topic: str,
    consumer: str,
    error: BaseException,
    event_id: str | None = None,
    event_type: str | None = None,
) -> DeadLetter:
    reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
    return DeadLetter(
        consumer=consumer,
        topic=topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((k, v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for k, v in record.headers),
        event_id=event_id,
        event_type=event_type,
        error_class=type(error).__name__,
        reason=str(reason)[:2000],
    )


async def record_dead_letters(
    conn: asyncpg.Connection, letters: Sequence[DeadLetter], *, hold_topics: frozenset[str] = frozenset()
) -> int:
    """Insert dead letters (a redelivered one is recorded once) and queue them to ``<topic>.dlq``.

    A letter with a key on one of ``hold_topics`` holds that key for its consumer (``settle.key_holds``):
    the first becomes the root, later ones (and messages that arrive while the hold stands) are its
    followers (``held_by``). Returns how many were new.
    """
    if not letters:
        return 0
    rows = await conn.fetch(
        """
        insert into settle.dead_letters
            (consumer, topic, partition, "offset", key, value, headers, event_id, event_type, error_class, reason)
        select c, t, p, o, k, v, h::jsonb, e, y, x, r
          from unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bytea[], $6::bytea[],
                      $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
            as u(c, t, p, o, k, v, h, e, y, x, r)
        on conflict (consumer, topic, partition, "offset") do nothing
        returning consumer, topic, partition, "offset"
        """,
        [d.consumer for d in letters],
        [d.topic for d in letters],
        [d.partition for d in letters],
        [d.offset for d in letters],
        [d.key for d in letters],
        [d.value for d in letters],
        [orjson.dumps(d.headers).decode() for d in letters],
        [d.event_id for d in letters],
        [d.event_type for d in letters],
        [d.error_class for d in letters],
        [d.reason for d in letters],
    )
    new = {(r["consumer"], r["topic"], r["partition"], r["offset"]) for r in rows}
    held = [d for d in letters if d.key and d.topic in hold_topics]
    if held:
        await _hold_keys(conn, held)
    outgoing = []
    for d in letters:
        if (d.consumer, d.topic, d.partition, d.offset) not in new:
            continue
        headers = (
            *d.headers,
            ("settle-dlq-consumer", d.consumer),
            ("settle-dlq-reason", d.reason[:500]),
            ("settle-dlq-error-class", d.error_class),
            ("settle-dlq-original", f"{d.topic}/{d.partition}/{d.offset}"),
        )
        outgoing.append(
            OutboxMessage(
                topic=f"{d.topic}.dlq",
                partition=partition_for(d.key, DLQ_PARTITIONS) if d.key else 0,
                key=d.key,
                value=d.value or b"",
                event_id=derive_id("dead-letter", d.consumer, d.topic, d.partition, d.offset),
                headers=headers,
            )
        )
    await write_outbox(conn, outgoing)
    return len(new)


async def _hold_keys(conn: asyncpg.Connection, letters: Sequence[DeadLetter]) -> None:
    """In offset order: the first letter of a (consumer, topic, key) without a hold becomes its root;
    every other letter of a held key is marked as waiting behind the root."""
    ordered = sorted(letters, key=lambda d: (d.partition, d.offset))
    await conn.execute(
        """insert into settle.key_holds (consumer, topic, key, root_id)
           select d.consumer, d.topic, d.key, d.id
             from unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::int[]) as u(c, t, p, o, n)
             join settle.dead_letters d on (d.consumer, d.topic, d.partition, d."offset") = (u.c, u.t, u.p, u.o)
            order by u.n
           on conflict do nothing""",
        [d.consumer for d in ordered],
        [d.topic for d in ordered],
        [d.partition for d in ordered],
        [d.offset for d in ordered],
        list(range(len(ordered))),
    )
    await conn.execute(
        """update settle.dead_letters d set held_by = h.root_id
             from settle.key_holds h
            where (d.consumer, d.topic, d.key) = (h.consumer, h.topic, h.key) and d.id <> h.root_id
              and d.held_by is null and d.redriven_at is null
              and (d.consumer, d.topic, d.partition, d."offset") in (
                  select * from unnest($1::text[], $2::text[], $3::int[], $4::bigint[]))""",
        [d.consumer for d in ordered],
        [d.topic for d in ordered],
        [d.partition for d in ordered],
        [d.offset for d in ordered],
    )


async def held_keys(
    conn: asyncpg.Connection, consumer: str, wanted: Sequence[tuple[str, bytes]]
) -> dict[tuple[str, bytes], tuple[int, int, int]]:
    """Holds among ``wanted`` (logical topic, key): → (root id, root partition, root offset)."""
    if not wanted:
        return {}
    rows = await conn.fetch(
        """select h.topic, h.key, h.root_id, d.partition, d."offset"
             from settle.key_holds h join settle.dead_letters d on d.id = h.root_id
             join unnest($2::text[], $3::bytea[]) as w(topic, key) on (w.topic, w.key) = (h.topic, h.key)
            where h.consumer = $1""",
        consumer,
        [t for t, _ in wanted],
        [k for _, k in wanted],
    )
    return {(r["topic"], bytes(r["key"])): (int(r["root_id"]), int(r["partition"]), int(r["offset"])) for r in rows}


async def list_dead_letters(
    conn: asyncpg.Connection,
    *,
    consumer: str | None = None,
    include_redriven: bool = False,
    limit: int = limits.DLQ_LIST_MAX,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select id, consumer, topic, partition, "offset", event_id, event_type, error_class, reason,
                  created_at, redriven_at, redrive_count, held_by, dropped_at, drop_reason
             from settle.dead_letters
            where ($1::text is null or consumer = $1) and ($2 or redriven_at is null)
            order by id limit $3""",
        consumer,
        include_redriven,
        min(limit, limits.DLQ_LIST_MAX),
    )
    return [dict(r) for r in rows]


async def get_dead_letter(conn: asyncpg.Connection, letter_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("select * from settle.dead_letters where id = $1", letter_id)
    return dict(row) if row else None


async def redrive(
    conn: asyncpg.Connection,
    *,
    ids: Sequence[int] | None = None,
    consumer: str | None = None,
    limit: int = limits.REDRIVE_MAX,
) -> list[int]:
    """Republish dead letters to their original topic (via the outbox) and mark them redriven.

    Select by ``ids`` or by ``consumer`` (all open ones); the followers of a chosen root come with it,
    after it, and its key hold is released. Returns the ids redriven. A redriven message keeps its
    event id: it is new input to every consumer group of the topic, and groups that handled that id
    before skip it as a duplicate.
    """
    rows = await conn.fetch(
        """with chosen as (
               select id from settle.dead_letters
                where redriven_at is null
                  and ($1::bigint[] is null or id = any($1))
                  and ($2::text is null or consumer = $2)
                order by id limit $3)
           select id, topic, key, value, headers, event_id, held_by from settle.dead_letters
            where redriven_at is null
              and (id in (select id from chosen) or held_by in (select id from chosen))
            order by id for update""",
        list(ids) if ids is not None else None,
        consumer,
        min(limit, limits.REDRIVE_MAX),
    )
    # A root goes back with its followers, in their order, and its key is free again. A follower
    # redriven alone while its root is still dead goes back to waiting behind it.
    await conn.execute(
        "delete from settle.key_holds where root_id = any($1)", [r["id"] for r in rows if r["held_by"] is None]
    )
    outgoing = []
    for r in rows:
        topic = topic_named(r["topic"])
        partitions = topic.partitions if topic is not None else 1
        key = r["key"]
        outgoing.append(
            OutboxMessage(
                topic=r["topic"],
                partition=partition_for(key, partitions) if key else 0,
                key=key,
                value=r["value"] or b"",
                event_id=r["event_id"] or derive_id("redrive", r["id"]),
                headers=(
                    *((h[0], h[1]) for h in r["headers"] if not h[0].startswith("settle-dlq-")),
                    ("settle-redrive-of", str(r["id"])),
                ),
            )
        )
    await write_outbox(conn, outgoing)
    redriven = [r["id"] for r in rows]
    await conn.execute(
        "update settle.dead_letters set redriven_at = now(), redrive_count = redrive_count + 1 where id = any($1)",
        redriven,
    )
    return redriven


async def drop(conn: asyncpg.Connection, letter_id: int, reason: str) -> list[int]:
    """An operator gives up on a dead letter: it is marked dropped (with the reason), its key hold is
    released and its followers are redriven in order. Returns the followers redriven.
    Raises LookupError when no open dead letter has this id."""
    assert reason.strip(), "a drop needs a reason"
    row = await conn.fetchrow(
        """update settle.dead_letters set dropped_at = now(), drop_reason = $2, redriven_at = now()
            where id = $1 and redriven_at is null returning id""",
        letter_id,
        reason.strip(),
    )
    if row is None:
        raise LookupError(f"no open dead letter with id {letter_id}")
    await conn.execute("delete from settle.key_holds where root_id = $1", letter_id)
    followers = [
        int(r["id"])
        for r in await conn.fetch(
            "select id from settle.dead_letters where held_by = $1 and redriven_at is null order by id", letter_id
        )
    ]
    await conn.execute("update settle.dead_letters set held_by = null where id = any($1)", followers)
    return await redrive(conn, ids=followers) if followers else []


async def dead_letter_counts(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select consumer, topic, count(*) filter (where redriven_at is null) as open, count(*) as total
             from settle.dead_letters group by consumer, topic order by consumer, topic"""
    )
    return [dict(r) for r in rows]
