"""SQL of the webhooks worker: the dedup row and the outbox row, in one transaction."""

from __future__ import annotations

import hashlib
from typing import Literal

import asyncpg

from libs.messaging.outbox import Emitter, write_outbox
from schemas import topics
from schemas.events import ProcessorEventReceived
from services.webhooks.domain import event_id_for

PRODUCER = "webhooks"
Recorded = Literal["accepted", "duplicate", "conflict"]


def fingerprint_of(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


async def record_event(
    conn: asyncpg.Connection, *, type_: str, key: str, data: ProcessorEventReceived, payload: bytes
) -> Recorded:
    """Claim (gateway, event id) and, when new, write its ``processor.events.v1`` outbox row — in the
    caller's transaction. A second delivery is a ``duplicate`` (or a ``conflict`` when its bytes differ:
    kept out, the first one stands)."""
    fingerprint = fingerprint_of(payload)
    inserted = await conn.fetchval(
        """
        insert into webhooks.received (gateway, event_id, fingerprint, type, object_id)
        values ($1, $2, $3, $4, $5)
        on conflict (gateway, event_id) do nothing
        returning true
        """,
        data.gateway,
        data.processor_event_id,
        fingerprint,
        data.processor_type,
        data.object_id,
    )
    if not inserted:
        first = await conn.fetchval(
            "select fingerprint from webhooks.received where gateway = $1 and event_id = $2",
            data.gateway,
            data.processor_event_id,
        )
        return "duplicate" if bytes(first) == fingerprint else "conflict"
    emitter = Emitter(PRODUCER)
    emitter.emit(
        topics.PROCESSOR_EVENTS,
        key=key,
        type=type_,
        data=data,
        time=data.occurred_at,
        cause=None,
        event_id=event_id_for(data.gateway, data.processor_event_id),
    )
    await write_outbox(conn, emitter.drain())
    return "accepted"
