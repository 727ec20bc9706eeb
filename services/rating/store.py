"""rating's SQL (schema ``rating``, migration ``0020_rating.sql``). No decisions here: rows in, rows out.

Exact amounts are ``*_x3600`` numerics (the exact amount in major units × 3600, see the migration);
:func:`services.rating.domain.exact_from_x3600` / :func:`~services.rating.domain.x3600_from_exact`
convert them, losslessly, to and from :class:`fractions.Fraction`.

Locks: every rating transaction serializes on transaction-scoped advisory locks, taken once per
batch by :func:`lock_batch` — partitions first, then contracts, each in sorted order — so that two
consumers never interleave on one contract (its wallet, its priced hours, its exposure) or on one
partition's watermark, and no two batches can deadlock. Advisory locks (not ``select … for update``
on ``rating.contracts``) because a contract rating does not know yet must be locked too: usage held
for it and its creation releasing that usage must not race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg

from libs.times import format_utc, parse_utc
from schemas.envelope import Envelope
from schemas.events import UsageMetered
from services.rating.domain import Priced, UsageState, WalletState, exact_from_x3600, x3600_from_exact

SCHEMA = "rating"
_PARTITION_LOCK = "rating.partition:"
_CONTRACT_LOCK = "rating.contract:"


# --- locks ---------------------------------------------------------------------------------------------
async def lock_batch(conn: asyncpg.Connection, partitions: Sequence[int], contract_ids: Sequence[str]) -> None:
    """Take the batch's locks: partitions (sorted), then contracts (sorted); held until commit.

    Single-bigint advisory locks: a key space apart from the relay's two-int lane locks.
    """
    keys = [f"{_PARTITION_LOCK}{p:04d}" for p in sorted(set(partitions))] + [
        f"{_CONTRACT_LOCK}{c}" for c in sorted(set(contract_ids))
    ]
    if not keys:
        return
    # One round trip: a function scan over an array yields its elements in array order, with no
    # sort or join in between, so the locks are taken in the order of ``keys``.
    await conn.execute("select count(pg_advisory_xact_lock(hashtextextended(k, 0))) from unnest($1::text[]) as k", keys)


async def prepaid_contracts(conn: asyncpg.Connection, partitions: Sequence[int]) -> list[str]:
    """Prepaid contracts whose usage lives on these partitions, sorted."""
    if not partitions:
        return []
    rows = await conn.fetch(
        """select contract_id from rating.contracts
            where partition = any($1::int[]) and billing_mode = 'prepaid' order by contract_id""",
        list(partitions),
    )
    return [r["contract_id"] for r in rows]


# --- priced hours --------------------------------------------------------------------------------------
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


async def load_priced(
    conn: asyncpg.Connection, allocation_id: str, meter: str, hour_start: datetime
) -> PricedHour | None:
    row = await conn.fetchrow(
        "select * from rating.priced_hours where allocation_id = $1 and meter = $2 and hour_start = $3",
        allocation_id,
        meter,
        hour_start,
    )
    return None if row is None else _priced_hour(row)


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


async def save_priced(conn: asyncpg.Connection, hour: PricedHour) -> None:
    await conn.execute(
        """insert into rating.priced_hours
               (allocation_id, meter, hour_start, contract_id, renter_id, supplier_id, usage_id, revision,
                gpu_count, segments, quantity, charge_x3600, earning_x3600, versions, gpu_seconds)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           on conflict (allocation_id, meter, hour_start) do update set
               usage_id = excluded.usage_id, revision = excluded.revision, gpu_count = excluded.gpu_count,
               segments = excluded.segments, quantity = excluded.quantity,
               charge_x3600 = excluded.charge_x3600, earning_x3600 = excluded.earning_x3600,
               versions = excluded.versions,
               gpu_seconds = excluded.gpu_seconds""",
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


# --- charges -------------------------------------------------------------------------------------------
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


async def insert_charge(conn: asyncpg.Connection, charge: ChargeRow, *, invoiced: bool = False) -> None:
    await conn.execute(
        """insert into rating.charges (charge_id, contract_id, allocation_id, meter, hour_start, at,
                                       period_start, period_end, billing_mode, charge_x3600, earning_x3600,
                                       invoiced)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
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


# --- usage held for unknown contracts ------------------------------------------------------------------
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


# --- watermarks ----------------------------------------------------------------------------------------
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


# --- wallets -------------------------------------------------------------------------------------------
async def load_wallet(conn: asyncpg.Connection, contract_id: str) -> WalletState:
    row = await conn.fetchrow("select * from rating.wallets where contract_id = $1", contract_id)
    if row is None:
        return WalletState()
    periods = await conn.fetch(
        """select period_start, usage_x3600, drawn_x3600, overage_x3600 from rating.wallet_periods
            where contract_id = $1""",
        contract_id,
    )
    return WalletState(
        balance=exact_from_x3600(row["balance_x3600"]),
        last_topup=None if row["last_topup_x3600"] is None else exact_from_x3600(row["last_topup_x3600"]),
        usage_by_period={p["period_start"]: exact_from_x3600(p["usage_x3600"]) for p in periods},
        drawn_by_period={p["period_start"]: exact_from_x3600(p["drawn_x3600"]) for p in periods},
        overage_by_period={p["period_start"]: exact_from_x3600(p["overage_x3600"]) for p in periods},
        low_balance_armed=row["low_balance_armed"],
        exhausted=row["exhausted"],
    )


async def save_wallet(conn: asyncpg.Connection, contract_id: str, state: WalletState) -> None:
    await conn.execute(
        """insert into rating.wallets
               (contract_id, balance_x3600, last_topup_x3600, low_balance_armed, exhausted)
           values ($1, $2, $3, $4, $5)
           on conflict (contract_id) do update set balance_x3600 = excluded.balance_x3600,
               last_topup_x3600 = excluded.last_topup_x3600, low_balance_armed = excluded.low_balance_armed,
               exhausted = excluded.exhausted""",
        contract_id,
        x3600_from_exact(state.balance),
        None if state.last_topup is None else x3600_from_exact(state.last_topup),
        state.low_balance_armed,
        state.exhausted,
    )
    periods = sorted(set(state.usage_by_period) | set(state.drawn_by_period) | set(state.overage_by_period))
    if periods:
        await conn.executemany(
            """insert into rating.wallet_periods
                   (contract_id, period_start, usage_x3600, drawn_x3600, overage_x3600)
               values ($1, $2, $3, $4, $5)
               on conflict (contract_id, period_start) do update set usage_x3600 = excluded.usage_x3600,
                   drawn_x3600 = excluded.drawn_x3600, overage_x3600 = excluded.overage_x3600""",
            [
                (
                    contract_id,
                    p,
                    x3600_from_exact(state.usage(p)),
                    x3600_from_exact(state.drawn(p)),
                    x3600_from_exact(state.overage(p)),
                )
                for p in periods
            ],
        )


@dataclass(frozen=True)
class TopUp:
    seq: int
    event_id: str
    amount: Decimal
    currency: str
    at: datetime


def _topup(row: asyncpg.Record) -> TopUp:
    return TopUp(row["seq"], row["event_id"], row["amount"], row["currency"], row["at"])


async def insert_topup(
    conn: asyncpg.Connection,
    event_id: str,
    contract_id: str,
    amount: Decimal,
    currency: str,
    at: datetime,
    status: str,
) -> None:
    await conn.execute(
        """insert into rating.wallet_topups (event_id, contract_id, amount, currency, at, status)
           values ($1, $2, $3, $4, $5, $6) on conflict (event_id) do nothing""",
        event_id,
        contract_id,
        amount,
        currency,
        at,
        status,
    )


async def held_topups(conn: asyncpg.Connection, contract_id: str) -> list[TopUp]:
    rows = await conn.fetch(
        "select * from rating.wallet_topups where contract_id = $1 and status = 'held' order by seq",
        contract_id,
    )
    return [_topup(r) for r in rows]


async def set_topup_status(conn: asyncpg.Connection, event_id: str, status: str, reason: str | None = None) -> None:
    await conn.execute(
        "update rating.wallet_topups set status = $2, reason = $3 where event_id = $1",
        event_id,
        status,
        reason,
    )


async def topups_due(conn: asyncpg.Connection, contract_id: str, through: datetime) -> list[TopUp]:
    """Received (posted) top-ups not yet run through the wallet, made at or before ``through``."""
    rows = await conn.fetch(
        """select * from rating.wallet_topups where contract_id = $1 and status = 'received' and at <= $2
            order by seq""",
        contract_id,
        through,
    )
    return [_topup(r) for r in rows]


async def pending_topups_total(conn: asyncpg.Connection, contract_id: str) -> Fraction:
    """Σ of received top-ups not yet applied: money in the wallet account the R8 state has not seen."""
    total = await conn.fetchval(
        """select coalesce(sum(amount), 0) from rating.wallet_topups
            where contract_id = $1 and status = 'received'""",
        contract_id,
    )
    return Fraction(total)


async def mark_topups_applied(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute(
            "update rating.wallet_topups set status = 'applied' where seq = any($1::bigint[])", list(seqs)
        )


# --- credit exposure (R9) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exposure:
    invoiced_due: Decimal
    """Σ ``amount_due`` of the contract's finalized invoices (major units, minor digits)."""
    uninvoiced_x3600: Decimal

    @property
    def exact(self) -> Fraction:
        return Fraction(self.invoiced_due) + exact_from_x3600(self.uninvoiced_x3600)


async def load_exposure(conn: asyncpg.Connection, contract_id: str) -> Exposure:
    row = await conn.fetchrow(
        "select invoiced_due, uninvoiced_x3600 from rating.credit_exposure where contract_id = $1",
        contract_id,
    )
    if row is None:
        return Exposure(Decimal(0), Decimal(0))
    return Exposure(row["invoiced_due"], row["uninvoiced_x3600"])


async def save_exposure(conn: asyncpg.Connection, contract_id: str, exposure: Exposure) -> None:
    await conn.execute(
        """insert into rating.credit_exposure (contract_id, invoiced_due, uninvoiced_x3600)
           values ($1, $2, $3)
           on conflict (contract_id) do update set invoiced_due = excluded.invoiced_due,
               uninvoiced_x3600 = excluded.uninvoiced_x3600""",
        contract_id,
        exposure.invoiced_due,
        exposure.uninvoiced_x3600,
    )


async def insert_invoice(
    conn: asyncpg.Connection,
    invoice_id: str,
    contract_id: str,
    period_start: datetime,
    period_end: datetime,
    amount_due: Decimal,
) -> bool:
    """Record a finalized invoice; False when it was recorded already."""
    inserted = await conn.fetchval(
        """insert into rating.invoices (invoice_id, contract_id, period_start, period_end, amount_due)
           values ($1, $2, $3, $4, $5) on conflict (invoice_id) do nothing returning true""",
        invoice_id,
        contract_id,
        period_start,
        period_end,
        amount_due,
    )
    return bool(inserted)


async def period_invoiced(conn: asyncpg.Connection, contract_id: str, period_start: datetime) -> bool:
    """Whether a finalized invoice of the contract covers the period starting at ``period_start``."""
    found = await conn.fetchval(
        "select true from rating.invoices where contract_id = $1 and period_start = $2 limit 1",
        contract_id,
        period_start,
    )
    return bool(found)


async def mark_invoiced(conn: asyncpg.Connection, contract_id: str, period_start: datetime) -> Decimal:
    """Mark the charges of one period invoiced; returns the Σ ``charge_x3600`` moved."""
    moved = await conn.fetchval(
        """with moved as (
               update rating.charges set invoiced = true
                where contract_id = $1 and period_start = $2 and not invoiced
            returning charge_x3600)
           select coalesce(sum(charge_x3600), 0) from moved""",
        contract_id,
        period_start,
    )
    return Decimal(moved)


async def wallet_balance(conn: asyncpg.Connection, contract_id: str) -> Fraction:
    """The R8 state's exact balance (0 for a wallet never run)."""
    value = await conn.fetchval("select balance_x3600 from rating.wallets where contract_id = $1", contract_id)
    return Fraction(0) if value is None else exact_from_x3600(value)
