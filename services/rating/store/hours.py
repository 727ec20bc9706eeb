"""Priced allocation-hours (the last priced state of each allocation, meter, hour) and the charges
booked from them (R4, R13)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from libs.times import format_utc, parse_utc
from services.rating.domain import Priced, UsageState


@dataclass(frozen=True)
class PricedHour:
    """The last priced state of one (allocation, meter, hour)."""

    allocation_id: str
    meter: str
    hour_start: datetime
    contract_id: str
    renter_id: str
    supplier_id: str
    usage_id: str
    revision: int
    state: UsageState
    priced: Priced


def _segments_json(state: UsageState) -> list[list[str]]:
    return [[format_utc(a), format_utc(b)] for a, b in state.billable_segments]


def _priced_hour(row: asyncpg.Record) -> PricedHour:
    state = UsageState(
        meter=row["meter"],
        hour_start=row["hour_start"],
        gpu_count=row["gpu_count"],
        billable_segments=tuple((parse_utc(a), parse_utc(b)) for a, b in row["segments"]),
        quantity=row["quantity"],
    )
    priced = Priced(
        charge_x3600=row["charge_x3600"],
        earning_x3600=row["earning_x3600"],
        versions=tuple(row["versions"]),
        gpu_seconds=int(row["gpu_seconds"]),
    )
    return PricedHour(
        row["allocation_id"],
        row["meter"],
        row["hour_start"],
        row["contract_id"],
        row["renter_id"],
        row["supplier_id"],
        row["usage_id"],
        row["revision"],
        state,
        priced,
    )


HourKey = tuple[str, str, datetime]
"""(allocation, meter, hour start): the key of a priced hour."""


async def load_priced_many(conn: asyncpg.Connection, keys: Sequence[HourKey]) -> dict[HourKey, PricedHour]:
    """The stored hours among ``keys``, in one round trip (a batch of usage prefetches its hours)."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """select p.* from rating.priced_hours p
             join unnest($1::text[], $2::text[], $3::timestamptz[]) as k(allocation_id, meter, hour_start)
               on p.allocation_id = k.allocation_id and p.meter = k.meter and p.hour_start = k.hour_start""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    return {(r["allocation_id"], r["meter"], r["hour_start"]): _priced_hour(r) for r in rows}


async def priced_hours_ending_after(conn: asyncpg.Connection, contract_id: str, since: datetime) -> list[PricedHour]:
    """Stored hours of a contract with ``hour_start + 1h > since``, in (hour, allocation, meter) order."""
    rows = await conn.fetch(
        """select * from rating.priced_hours
            where contract_id = $1 and hour_start + interval '1 hour' > $2
            order by hour_start, allocation_id, meter""",
        contract_id,
        since,
    )
    return [_priced_hour(r) for r in rows]


_SAVE_PRICED = """insert into rating.priced_hours
       (allocation_id, meter, hour_start, contract_id, renter_id, supplier_id, usage_id, revision,
        gpu_count, segments, quantity, charge_x3600, earning_x3600, versions, gpu_seconds)
   values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
   on conflict (allocation_id, meter, hour_start) do update set
       usage_id = excluded.usage_id, revision = excluded.revision, gpu_count = excluded.gpu_count,
       segments = excluded.segments, quantity = excluded.quantity,
       charge_x3600 = excluded.charge_x3600, earning_x3600 = excluded.earning_x3600,
       versions = excluded.versions,
       gpu_seconds = excluded.gpu_seconds"""


def _priced_args(hour: PricedHour) -> tuple[object, ...]:
    return (
        hour.allocation_id,
        hour.meter,
        hour.hour_start,
        hour.contract_id,
        hour.renter_id,
        hour.supplier_id,
        hour.usage_id,
        hour.revision,
        hour.state.gpu_count,
        _segments_json(hour.state),
        hour.state.quantity,
        hour.priced.charge_x3600,
        hour.priced.earning_x3600,
        list(hour.priced.versions),
        hour.priced.gpu_seconds,
    )


async def save_priced_many(conn: asyncpg.Connection, hours: Sequence[PricedHour]) -> None:
    """Upsert several hours in one pipelined round trip (keys distinct)."""
    if hours:
        await conn.executemany(_SAVE_PRICED, [_priced_args(h) for h in hours])


@dataclass(frozen=True)
class ChargeRow:
    charge_id: str
    contract_id: str
    allocation_id: str
    meter: str
    hour_start: datetime
    at: datetime
    period_start: datetime
    period_end: datetime
    billing_mode: str
    charge_x3600: Decimal
    earning_x3600: Decimal


_INSERT_CHARGE = """insert into rating.charges (charge_id, contract_id, allocation_id, meter, hour_start, at,
                                   period_start, period_end, billing_mode, charge_x3600, earning_x3600,
                                   invoiced)
   values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""


def _charge_args(charge: ChargeRow, invoiced: bool) -> tuple[object, ...]:
    return (
        charge.charge_id,
        charge.contract_id,
        charge.allocation_id,
        charge.meter,
        charge.hour_start,
        charge.at,
        charge.period_start,
        charge.period_end,
        charge.billing_mode,
        charge.charge_x3600,
        charge.earning_x3600,
        invoiced,
    )


async def insert_charges(conn: asyncpg.Connection, charges: Sequence[tuple[ChargeRow, bool]]) -> None:
    """Insert (charge, invoiced) rows in order (their ``seq`` follows it), one pipelined round trip."""
    if charges:
        await conn.executemany(_INSERT_CHARGE, [_charge_args(c, invoiced) for c, invoiced in charges])


@dataclass(frozen=True)
class PendingCharge:
    seq: int
    charge_id: str
    period_start: datetime
    at: datetime
    charge_x3600: Decimal


async def wallet_charges_due(conn: asyncpg.Connection, contract_id: str, through: datetime) -> list[PendingCharge]:
    """Charges of a contract not yet applied to its wallet whose hour ended at or before ``through``."""
    rows = await conn.fetch(
        """select seq, charge_id, period_start, at, charge_x3600 from rating.charges
            where contract_id = $1 and not wallet_applied and at <= $2 order by seq""",
        contract_id,
        through,
    )
    return [PendingCharge(r["seq"], r["charge_id"], r["period_start"], r["at"], r["charge_x3600"]) for r in rows]


async def mark_charges_applied(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute("update rating.charges set wallet_applied = true where seq = any($1::bigint[])", list(seqs))
