"""Outbox rows: events written in the handler's transaction, published later by the relay."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel

from libs.ids import derive_id
from libs.messaging.envelope import CONTENT_TYPE, Envelope, encode
from libs.messaging.partitioner import partition_for
from libs.messaging.topic import Topic

SOURCE_PREFIX = "/settle/"


@dataclass(frozen=True)
class OutboxMessage:
    topic: str
    """Logical topic name (the relay adds the deployment's prefix)."""
    partition: int
    key: bytes | None
    value: bytes
    event_id: str
    headers: tuple[tuple[str, str], ...] = (("content-type", CONTENT_TYPE),)
    not_before: datetime | None = None


@dataclass
class Emitter:
    """Collects the events one transaction emits. Ids are deterministic (ARCHITECTURE §2): given or
    derived from the causing event, the topic, the type, the key and the position among its siblings."""

    producer: str
    messages: list[OutboxMessage] = field(default_factory=list)
    _sequence: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def emit(
        self,
        topic: Topic,
        *,
        key: str,
        type: str,
        data: BaseModel,
        time: datetime,
        cause: Envelope[Any] | None,
        event_id: str | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
        partition: int | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """Queue one event for the outbox; returns its id. ``partition`` overrides the key's partition
        (watermarks address every partition)."""
        model = topic.model_for(type)
        assert model is not None, f"{type} is not an event type of {topic.name}"
        assert isinstance(data, model), f"{type} on {topic.name} carries {model.__name__}"
        if event_id is None:
            cause_id = cause.id if cause is not None else "-"
            seq_key = f"{cause_id}|{topic.name}|{type}|{key}"
            n = self._sequence[seq_key]
            self._sequence[seq_key] = n + 1
            event_id = derive_id("emit", cause_id, topic.name, type, key, n)
        correlation = correlation_id or (cause.correlationid or cause.id if cause is not None else None)
        value = encode(
            event_id=event_id,
            source=SOURCE_PREFIX + self.producer,
            type=type,
            time=time,
            data=data,
            subject=subject or key,
            correlationid=correlation,
            causationid=cause.id if cause is not None else None,
        )
        key_bytes = key.encode()
        target = partition if partition is not None else partition_for(key_bytes, topic.partitions)
        assert 0 <= target < topic.partitions
        self.messages.append(OutboxMessage(topic.name, target, key_bytes, value, event_id, not_before=not_before))
        return event_id

    def drain(self) -> list[OutboxMessage]:
        drained, self.messages = self.messages, []
        return drained


async def write_outbox(conn: asyncpg.Connection, messages: Sequence[OutboxMessage]) -> None:
    """Insert outbox rows in the caller's transaction (one statement)."""
    if not messages:
        return
    await conn.execute(
        """
        insert into settle.outbox (topic, partition, key, value, headers, event_id, not_before)
        select t, p, k, v, h::jsonb, e, n
          from unnest($1::text[], $2::int[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], $7::timestamptz[])
            as u(t, p, k, v, h, e, n)
        """,
        [m.topic for m in messages],
        [m.partition for m in messages],
        [m.key for m in messages],
        [m.value for m in messages],
        [orjson.dumps(m.headers).decode() for m in messages],  # text → jsonb: a jsonb[] would nest
        [m.event_id for m in messages],
        [m.not_before for m in messages],
    )
