"""Usage held for contracts rating does not know yet, released when the contract arrives."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.times import format_utc, parse_utc
from schemas.envelope import Envelope
from schemas.events import UsageMetered


async def hold_usage(conn: asyncpg.Connection, event: Envelope[Any], partition: int) -> None:
    envelope = {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": format_utc(event.time),
        "subject": event.subject,
        "correlationid": event.correlationid,
        "causationid": event.causationid,
        "schemaversion": event.schemaversion,
        "data": event.data.model_dump(mode="json"),
    }
    await conn.execute(
        """insert into rating.usage_held (event_id, contract_id, partition, envelope) values ($1, $2, $3, $4)
           on conflict (event_id) do nothing""",
        event.id,
        event.data.contract_id,
        partition,
        envelope,
    )


async def take_held_usage(conn: asyncpg.Connection, contract_id: str) -> list[Envelope[Any]]:
    """Remove and return the usage held for a contract, in arrival order."""
    rows = await conn.fetch("delete from rating.usage_held where contract_id = $1 returning seq, envelope", contract_id)
    released = []
    for row in sorted(rows, key=lambda r: r["seq"]):
        doc = row["envelope"]
        released.append(
            Envelope[Any](
                id=doc["id"],
                source=doc["source"],
                type=doc["type"],
                time=parse_utc(doc["time"]),
                subject=doc["subject"],
                correlationid=doc["correlationid"],
                causationid=doc["causationid"],
                schemaversion=doc["schemaversion"],
                data=UsageMetered.model_validate(doc["data"]),
            )
        )
    return released


async def held_usage_count(conn: asyncpg.Connection, partition: int) -> int:
    """Held usage that gates the partition's watermark (an operator's release un-gates it, see
    :mod:`services.operations.held`; released usage stays held until its contract arrives)."""
    return int(
        await conn.fetchval(
            "select count(*) from rating.usage_held where partition = $1 and released_at is null", partition
        )
    )
