"""What the consumer records: charges and draws (kept until a document carries them), watermarks, late
work and pending statement months (:mod:`services.invoicing.handlers`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.invoicing.store.tables import PARTITIONS, SCHEMA


@dataclass(frozen=True)
class ChargeRow:
    charge_id: str
    event_id: str
    contract_id: str
    renter_id: str
    supplier_id: str
    allocation_id: str
    currency: str
    meter: str
    hour_start: datetime
    period_start: datetime
    period_end: datetime
    charge_x3600: Decimal
    earning_x3600: Decimal
    accrued_units: int
    earning_units: int
    provisioned_gpu_seconds: int
    billable_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    late: bool


@dataclass(frozen=True)
class DrawRow:
    draw_id: str
    event_id: str
    contract_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    drawn_x3600: Decimal
    reason: str
    at: datetime
    late: bool


async def current_watermarks(conn: asyncpg.Connection) -> dict[int, datetime]:
    """The largest watermark seen per partition of charges.rated.v1 (partitions without one are absent).

    One index probe per partition (the history grows by one row per tick and partition)."""
    rows = await conn.fetch(
        f"""select p.partition,
                   (select max(w.through) from {SCHEMA}.watermarks w
                     where w.partition = p.partition) as through
              from generate_series(0, $1 - 1) as p(partition)""",
        PARTITIONS,
    )
    return {int(r["partition"]): r["through"] for r in rows if r["through"] is not None}


async def record_watermarks(conn: asyncpg.Connection, marks: Sequence[tuple[int, datetime]]) -> None:
    if not marks:
        return
    await conn.execute(
        f"""insert into {SCHEMA}.watermarks (partition, through)
            select * from unnest($1::int[], $2::timestamptz[]) on conflict do nothing""",
        [p for p, _ in marks],
        [t for _, t in marks],
    )


async def insert_charges(conn: asyncpg.Connection, rows: Sequence[ChargeRow]) -> None:
    """Insert rated charges; a charge id seen before keeps its first row (rating's ids are unique)."""
    if not rows:
        return
    columns = [
        "charge_id",
        "event_id",
        "contract_id",
        "renter_id",
        "supplier_id",
        "allocation_id",
        "currency",
        "meter",
        "hour_start",
        "period_start",
        "period_end",
        "charge_x3600",
        "earning_x3600",
        "accrued_units",
        "earning_units",
        "provisioned_gpu_seconds",
        "billable_gpu_seconds",
        "maintenance_gpu_seconds",
        "outage_gpu_seconds",
        "late",
    ]
    types = [
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "numeric",
        "numeric",
        "numeric",
        "numeric",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "boolean",
    ]
    arrays = [[getattr(r, c) for r in rows] for c in columns]
    params = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    await conn.execute(
        f"""insert into {SCHEMA}.charges ({", ".join(columns)})
            select * from unnest({params}) on conflict (charge_id) do nothing""",
        *arrays,
    )


async def insert_draws(conn: asyncpg.Connection, rows: Sequence[DrawRow]) -> None:
    if not rows:
        return
    columns = [
        "draw_id",
        "event_id",
        "contract_id",
        "currency",
        "period_start",
        "period_end",
        "drawn_x3600",
        "reason",
        "at",
        "late",
    ]
    types = [
        "text",
        "text",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "numeric",
        "text",
        "timestamptz",
        "boolean",
    ]
    arrays = [[getattr(r, c) for r in rows] for c in columns]
    params = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    await conn.execute(
        f"""insert into {SCHEMA}.draws ({", ".join(columns)})
            select * from unnest({params}) on conflict (draw_id) do nothing""",
        *arrays,
    )


async def mark_late(conn: asyncpg.Connection, late: dict[str, datetime]) -> None:
    """Queue contracts that received late charges or draws (upsert: takes the row lock, see module doc)."""
    if not late:
        return
    ids = sorted(late)
    await conn.execute(
        f"""insert into {SCHEMA}.late_work (contract_id, through)
            select * from unnest($1::text[], $2::timestamptz[]) order by 1
            on conflict (contract_id) do update
               set through = greatest(late_work.through, excluded.through)""",
        ids,
        [late[i] for i in ids],
    )


async def mark_supplier_pending(conn: asyncpg.Connection, keys: Iterable[tuple[str, str, str]]) -> None:
    """(supplier, currency, month) with new earnings or chargebacks. The no-op update takes the row
    lock, so a statement closer that deletes the row either waits for us or we re-insert after it."""
    ordered = sorted(set(keys))
    if not ordered:
        return
    await conn.execute(
        f"""insert into {SCHEMA}.supplier_pending (supplier_id, currency, month)
            select * from unnest($1::text[], $2::text[], $3::text[]) order by 1, 2, 3
            on conflict (supplier_id, currency, month) do update set month = excluded.month""",
        [k[0] for k in ordered],
        [k[1] for k in ordered],
        [k[2] for k in ordered],
    )
