"""Usage watermarks received and forwarded per partition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class WatermarkRow:
    partition: int
    received_through: datetime
    forwarded_through: datetime | None
    received_barrier: dict[str, list[int]] | None = None


async def load_watermark(conn: asyncpg.Connection, partition: int) -> WatermarkRow | None:
    row = await conn.fetchrow(
        "select received_through, forwarded_through, received_barrier from rating.watermarks where partition = $1",
        partition,
    )
    if row is None:
        return None
    return WatermarkRow(partition, row["received_through"], row["forwarded_through"], row["received_barrier"])


async def save_received(
    conn: asyncpg.Connection, partition: int, through: datetime, barrier: dict[str, list[int]] | None = None
) -> None:
    await conn.execute(
        """insert into rating.watermarks (partition, received_through, received_barrier) values ($1, $2, $3)
           on conflict (partition) do update
              set received_through = excluded.received_through, received_barrier = excluded.received_barrier""",
        partition,
        through,
        barrier,
    )


async def save_forwarded(conn: asyncpg.Connection, partition: int, through: datetime) -> None:
    await conn.execute("update rating.watermarks set forwarded_through = $2 where partition = $1", partition, through)
