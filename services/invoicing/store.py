"""invoicing's SQL (asyncpg): charges and draws kept until a document carries them, watermarks, the
close progress per contract, documents, chargebacks, statement progress. No billing rule here.

Tables: ``libs/db/migrations/0030_invoicing.sql``. Units: ``*_x3600`` exact decimals × 3600 (as on
``charges.rated.v1``), ``*_units`` ledger units, ``*_minor`` minor units of the row's currency.

Lock order (every writer follows it, so no two transactions wait on each other in a cycle):
``contract_state`` rows (closer only, ``skip locked``) → ``late_work`` rows → ``supplier_pending``
rows → ``statement_progress`` → ``number_series`` rows → ledger accounts (the ledger's trigger).
Within one table rows are locked in key order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from schemas.topics import CHARGES_RATED

SCHEMA = "invoicing"
PARTITIONS = CHARGES_RATED.partitions
"""Partitions of charges.rated.v1: one watermark lane each."""


# --- rows written by the consumer ------------------------------------------------------------------------


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


async def ensure_contract_state(
    conn: asyncpg.Connection,
    contract_id: str,
    partition: int,
    first_period: tuple[datetime, datetime] | None,
    arrived_through: datetime | None,
) -> None:
    """Create the close progress of a newly known contract (an existing row is left alone)."""
    await conn.execute(
        f"""insert into {SCHEMA}.contract_state
                (contract_id, partition, next_period_start, next_close_at, arrived_through)
            values ($1, $2, $3, $4, $5) on conflict (contract_id) do nothing""",
        contract_id,
        partition,
        first_period[0] if first_period else None,
        first_period[1] if first_period else None,
        arrived_through,
    )


# --- close progress (the closer) -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractState:
    contract_id: str
    partition: int
    next_period_start: datetime | None
    next_close_at: datetime | None
    arrived_through: datetime | None
    invoiced_through: datetime | None
    last_invoice_number: str | None
    credit_carried_minor: int
    credit_notes_issued: int


_STATE_COLUMNS = """s.contract_id, s.partition, s.next_period_start, s.next_close_at, s.arrived_through,
    s.invoiced_through, s.last_invoice_number, s.credit_carried_minor, s.credit_notes_issued"""


def _state(row: asyncpg.Record) -> ContractState:
    return ContractState(
        contract_id=row["contract_id"],
        partition=int(row["partition"]),
        next_period_start=row["next_period_start"],
        next_close_at=row["next_close_at"],
        arrived_through=row["arrived_through"],
        invoiced_through=row["invoiced_through"],
        last_invoice_number=row["last_invoice_number"],
        credit_carried_minor=int(row["credit_carried_minor"]),
        credit_notes_issued=int(row["credit_notes_issued"]),
    )


_DUE_CONTRACTS = f"""{SCHEMA}.contract_state s
      join unnest($1::int[], $2::timestamptz[]) as w(partition, through) on w.partition = s.partition
     where s.next_close_at <= w.through and s.blocked_reason is null"""
"""The closer's pending work, part one: contracts (``s``) with a period ending at or before their
partition's watermark (``$1`` partitions, ``$2`` their watermarks), quarantined ones excluded.
:func:`pick_contracts` locks them and :func:`count_pending_closes` counts them — one predicate."""

_LATE_CONTRACTS = f"""{SCHEMA}.contract_state s
      join {SCHEMA}.late_work l on l.contract_id = s.contract_id
     where s.blocked_reason is null"""
"""The closer's pending work, part two: contracts (``s``) with late charges to place (a ``late_work``
row), quarantined ones excluded. Shared by :func:`pick_contracts` and :func:`count_pending_closes`."""


async def count_pending_closes(conn: asyncpg.Connection, watermarks: dict[int, datetime]) -> int:
    """How many contract closes the closer owes: due periods plus contracts with late work (a contract
    with both counts twice, as the closer handles the two in separate picks)."""
    parts = sorted(watermarks)
    due = await conn.fetchval(f"select count(*) from {_DUE_CONTRACTS}", parts, [watermarks[p] for p in parts])
    late = await conn.fetchval(f"select count(*) from {_LATE_CONTRACTS}")
    return int(due) + int(late)


async def pick_contracts(
    conn: asyncpg.Connection, watermarks: dict[int, datetime], limit: int, only: Sequence[str] | None = None
) -> list[ContractState]:
    """Lock (``skip locked``: another worker keeps its own) up to ``limit`` contracts with work: a period
    ending at or before their partition's watermark, or late charges to look at. Sorted by id."""
    parts = sorted(watermarks)
    due = await conn.fetch(
        f"""select {_STATE_COLUMNS} from {_DUE_CONTRACTS}
               and ($4::text[] is null or s.contract_id = any($4))
             order by s.contract_id limit $3
               for update of s skip locked""",
        parts,
        [watermarks[p] for p in parts],
        limit,
        only,
    )
    picked = [_state(r) for r in due]
    if len(picked) < limit:
        late = await conn.fetch(
            f"""select {_STATE_COLUMNS} from {_LATE_CONTRACTS}
                   and not (s.contract_id = any($2::text[]))
                   and ($3::text[] is null or s.contract_id = any($3))
                 order by s.contract_id limit $1
                   for update of s skip locked""",
            limit - len(picked),
            [s.contract_id for s in picked],
            only,
        )
        picked += [_state(r) for r in late]
    picked.sort(key=lambda s: s.contract_id)
    return picked


async def take_late_work(conn: asyncpg.Connection, contract_ids: Sequence[str]) -> dict[str, datetime]:
    """Delete the late-work rows of these contracts BEFORE their charges are read (see mark_late)."""
    if not contract_ids:
        return {}
    rows = await conn.fetch(
        f"""with locked as (select contract_id from {SCHEMA}.late_work where contract_id = any($1)
                             order by contract_id for update)
            delete from {SCHEMA}.late_work l using locked where l.contract_id = locked.contract_id
            returning l.contract_id, l.through""",
        sorted(contract_ids),
    )
    return {r["contract_id"]: r["through"] for r in rows}


async def finalization_instant(
    conn: asyncpg.Connection, partition: int, period_end: datetime, arrived_through: datetime | None
) -> datetime | None:
    """The first watermark of the partition that reached the period's end (and the contract's arrival)."""
    value: datetime | None = await conn.fetchval(
        f"""select min(through) from {SCHEMA}.watermarks
             where partition = $1 and through >= greatest($2::timestamptz, $3::timestamptz)""",
        partition,
        period_end,
        arrived_through,
    )
    return value


async def block_contract(conn: asyncpg.Connection, contract_id: str, reason: str) -> None:
    await conn.execute(
        f"update {SCHEMA}.contract_state set blocked_reason = $2, updated_at = now() where contract_id = $1",
        contract_id,
        reason[:2000],
    )


async def save_progress(
    conn: asyncpg.Connection,
    contract_id: str,
    *,
    next_period: tuple[datetime, datetime] | None,
    invoiced_through: datetime | None,
    last_invoice_number: str | None,
    credit_carried_minor: int,
    credit_notes_issued: int,
) -> None:
    await conn.execute(
        f"""update {SCHEMA}.contract_state
               set next_period_start = $2, next_close_at = $3, invoiced_through = $4,
                   last_invoice_number = $5,
                   credit_carried_minor = $6, credit_notes_issued = $7, updated_at = now()
             where contract_id = $1""",
        contract_id,
        next_period[0] if next_period else None,
        next_period[1] if next_period else None,
        invoiced_through,
        last_invoice_number,
        credit_carried_minor,
        credit_notes_issued,
    )


# --- what one period close reads -------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationSums:
    """Sums over a set of charges of one allocation (and one period)."""

    period_start: datetime
    period_end: datetime
    allocation_id: str
    supplier_id: str
    charge_x3600: Decimal
    accrued_units: int
    provisioned_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    charges: int


def _sums(row: asyncpg.Record) -> AllocationSums:
    return AllocationSums(
        period_start=row["period_start"],
        period_end=row["period_end"],
        allocation_id=row["allocation_id"],
        supplier_id=row["supplier_id"],
        charge_x3600=Decimal(row["charge_x3600"]),
        accrued_units=int(row["accrued_units"]),
        provisioned_gpu_seconds=int(row["provisioned"]),
        maintenance_gpu_seconds=int(row["maintenance"]),
        outage_gpu_seconds=int(row["outage"]),
        charges=int(row["charges"]),
    )


_SUMS = """period_start, period_end, allocation_id, supplier_id, sum(charge_x3600) as charge_x3600,
    sum(accrued_units) as accrued_units, sum(provisioned_gpu_seconds) as provisioned,
    sum(maintenance_gpu_seconds) as maintenance, sum(outage_gpu_seconds) as outage, count(*) as charges"""


async def take_period_charges(
    conn: asyncpg.Connection, contract_id: str, period_start: datetime, document_id: str
) -> list[AllocationSums]:
    """Assign the period's open charges to the document and return their sums per allocation."""
    rows = await conn.fetch(
        f"""with taken as (
                update {SCHEMA}.charges set document_id = $3
                 where contract_id = $1 and period_start = $2 and document_id is null
                returning *)
            select {_SUMS} from taken group by period_start, period_end, allocation_id, supplier_id
            order by allocation_id""",
        contract_id,
        period_start,
        document_id,
    )
    return [_sums(r) for r in rows]


async def take_period_draws(
    conn: asyncpg.Connection, contract_id: str, period_start: datetime, document_id: str
) -> Decimal:
    value = await conn.fetchval(
        f"""with taken as (
                update {SCHEMA}.draws set document_id = $3
                 where contract_id = $1 and period_start = $2 and document_id is null
                returning drawn_x3600)
            select coalesce(sum(drawn_x3600), 0) from taken""",
        contract_id,
        period_start,
        document_id,
    )
    return Decimal(value)


@dataclass(frozen=True)
class OpenCorrections:
    """Open (not yet carried) charges and draws of periods ending at or before a boundary."""

    charge_ids: list[str]
    draw_ids: list[str]
    charges: list[AllocationSums]
    """Sums of the open charges per (period, allocation)."""
    drawn_x3600: dict[datetime, Decimal]
    """Per period start: Σ drawn_x3600 of the open draws."""
    period_ends: dict[datetime, datetime]
    """Start → end of every period with an open charge or draw."""

    @property
    def periods(self) -> list[tuple[datetime, datetime]]:
        return sorted(self.period_ends.items())

    @property
    def empty(self) -> bool:
        return not self.charge_ids and not self.draw_ids


async def open_corrections(conn: asyncpg.Connection, contract_id: str, periods_ending_by: datetime) -> OpenCorrections:
    charge_rows = await conn.fetch(
        f"""select charge_id, period_start, period_end, allocation_id, supplier_id, charge_x3600,
                   accrued_units,
                   provisioned_gpu_seconds, maintenance_gpu_seconds, outage_gpu_seconds
              from {SCHEMA}.charges
             where contract_id = $1 and document_id is null and period_end <= $2
             order by charge_id""",
        contract_id,
        periods_ending_by,
    )
    draw_rows = await conn.fetch(
        f"""select draw_id, period_start, period_end, drawn_x3600 from {SCHEMA}.draws
             where contract_id = $1 and document_id is null and period_end <= $2 order by draw_id""",
        contract_id,
        periods_ending_by,
    )
    sums: dict[tuple[datetime, str, str], list[Any]] = {}
    ends: dict[datetime, datetime] = {}
    for r in charge_rows:
        key = (r["period_start"], r["allocation_id"], r["supplier_id"])
        ends[r["period_start"]] = r["period_end"]
        acc = sums.setdefault(key, [Decimal(0), 0, 0, 0, 0, 0])
        acc[0] += Decimal(r["charge_x3600"])
        acc[1] += int(r["accrued_units"])
        acc[2] += int(r["provisioned_gpu_seconds"])
        acc[3] += int(r["maintenance_gpu_seconds"])
        acc[4] += int(r["outage_gpu_seconds"])
        acc[5] += 1
    drawn: dict[datetime, Decimal] = {}
    for r in draw_rows:
        drawn[r["period_start"]] = drawn.get(r["period_start"], Decimal(0)) + Decimal(r["drawn_x3600"])
        ends[r["period_start"]] = r["period_end"]
    charges = [
        AllocationSums(
            start,
            ends[start],
            alloc,
            supplier,
            Decimal(v[0]),
            int(v[1]),
            int(v[2]),
            int(v[3]),
            int(v[4]),
            int(v[5]),
        )
        for (start, alloc, supplier), v in sorted(sums.items())
    ]
    return OpenCorrections(
        charge_ids=[r["charge_id"] for r in charge_rows],
        draw_ids=[r["draw_id"] for r in draw_rows],
        charges=charges,
        drawn_x3600=drawn,
        period_ends=ends,
    )


async def assign_corrections(conn: asyncpg.Connection, found: OpenCorrections, document_id: str) -> None:
    if found.charge_ids:
        await conn.execute(
            f"update {SCHEMA}.charges set document_id = $2 where charge_id = any($1) and document_id is null",
            found.charge_ids,
            document_id,
        )
    if found.draw_ids:
        await conn.execute(
            f"update {SCHEMA}.draws set document_id = $2 where draw_id = any($1) and document_id is null",
            found.draw_ids,
            document_id,
        )


@dataclass(frozen=True)
class CarriedPeriod:
    """What documents already carried for one invoiced period (the base of a late correction)."""

    usage_x3600: Decimal
    provisioned_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    true_up_minor: int
    sla_credit_minor: int
    allocation_outages: dict[tuple[str, str], int]
    """(allocation, supplier) → outage GPU-seconds of the period: carried + the given open charges."""
    charged_back: dict[tuple[str, str], int]
    """(allocation, supplier) → Σ chargebacks passed on for the period (≤ 0 as on statements)."""


async def carried_periods(
    conn: asyncpg.Connection,
    contract_id: str,
    period_starts: Sequence[datetime],
    open_charge_ids: Sequence[str],
) -> dict[datetime, CarriedPeriod]:
    if not period_starts:
        return {}
    starts = sorted(set(period_starts))
    totals = {
        r["period_start"]: r
        for r in await conn.fetch(
            f"""select period_start, coalesce(sum(charge_x3600), 0) as usage_x3600,
                       coalesce(sum(provisioned_gpu_seconds), 0) as provisioned,
                       coalesce(sum(maintenance_gpu_seconds), 0) as maintenance,
                       coalesce(sum(outage_gpu_seconds), 0) as outage
                  from {SCHEMA}.charges
                 where contract_id = $1 and period_start = any($2) and document_id is not null
                 group by period_start""",
            contract_id,
            starts,
        )
    }
    billed = {
        r["period_start"]: r
        for r in await conn.fetch(
            f"""select period_start, true_up_minor, sla_credit_minor from {SCHEMA}.periods
                 where contract_id = $1 and period_start = any($2)""",
            contract_id,
            starts,
        )
    }
    outages: dict[datetime, dict[tuple[str, str], int]] = {s: {} for s in starts}
    for r in await conn.fetch(
        f"""select period_start, allocation_id, supplier_id, sum(outage_gpu_seconds) as outage
              from {SCHEMA}.charges
             where contract_id = $1 and period_start = any($2)
               and (document_id is not null or charge_id = any($3))
             group by period_start, allocation_id, supplier_id""",
        contract_id,
        starts,
        list(open_charge_ids),
    ):
        outages[r["period_start"]][(r["allocation_id"], r["supplier_id"])] = int(r["outage"])
    backs: dict[datetime, dict[tuple[str, str], int]] = {s: {} for s in starts}
    for r in await conn.fetch(
        f"""select period_start, allocation_id, supplier_id, sum(amount_minor) as amount_minor
              from {SCHEMA}.chargebacks where contract_id = $1 and period_start = any($2)
             group by period_start, allocation_id, supplier_id""",
        contract_id,
        starts,
    ):
        backs[r["period_start"]][(r["allocation_id"], r["supplier_id"])] = int(r["amount_minor"])
    result: dict[datetime, CarriedPeriod] = {}
    for start in starts:
        t = totals.get(start)
        b = billed.get(start)
        result[start] = CarriedPeriod(
            usage_x3600=Decimal(t["usage_x3600"]) if t else Decimal(0),
            provisioned_gpu_seconds=int(t["provisioned"]) if t else 0,
            maintenance_gpu_seconds=int(t["maintenance"]) if t else 0,
            outage_gpu_seconds=int(t["outage"]) if t else 0,
            true_up_minor=int(b["true_up_minor"]) if b else 0,
            sla_credit_minor=int(b["sla_credit_minor"]) if b else 0,
            allocation_outages=outages[start],
            charged_back=backs[start],
        )
    return result


# --- documents -----------------------------------------------------------------------------------------


async def allocate_numbers(conn: asyncpg.Connection, series: str, count: int) -> list[int]:
    """``count`` consecutive numbers of a series. The counter row stays locked until commit, and a
    rollback gives the numbers back: the series has no gaps and no duplicates."""
    assert count > 0
    last = await conn.fetchval(
        f"""insert into {SCHEMA}.number_series (series, last_number) values ($1, $2)
            on conflict (series) do update set last_number = number_series.last_number + excluded.last_number
            returning last_number""",
        series,
        count,
    )
    first = int(last) - count + 1
    return list(range(first, int(last) + 1))


@dataclass(frozen=True)
class InvoiceRow:
    invoice_id: str
    number: str
    contract_id: str
    renter_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    total_minor: int
    amount_due_minor: int
    document: dict[str, Any]
    true_up_minor: int
    """Period aggregates: the invoice's true-up line (the period's base for later corrections)."""
    sla_credit_minor: int


async def insert_invoices(conn: asyncpg.Connection, rows: Sequence[InvoiceRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        f"""insert into {SCHEMA}.invoices (invoice_id, number, contract_id, renter_id, currency, period_start,
                period_end, issued_at, total_minor, amount_due_minor, document)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        [
            (
                r.invoice_id,
                r.number,
                r.contract_id,
                r.renter_id,
                r.currency,
                r.period_start,
                r.period_end,
                r.issued_at,
                r.total_minor,
                r.amount_due_minor,
                r.document,
            )
            for r in rows
        ],
    )
    await conn.executemany(
        f"""insert into {SCHEMA}.periods (contract_id, period_start, period_end, invoice_id, true_up_minor,
                sla_credit_minor) values ($1, $2, $3, $4, $5, $6)""",
        [
            (r.contract_id, r.period_start, r.period_end, r.invoice_id, r.true_up_minor, r.sla_credit_minor)
            for r in rows
        ],
    )


async def add_period_adjustments(
    conn: asyncpg.Connection, contract_id: str, changes: dict[datetime, tuple[int, int]]
) -> None:
    """Add (true-up, SLA credit) adjustments that a document carried to the periods they correct."""
    for start, (true_up_minor, sla_minor) in sorted(changes.items()):
        await conn.execute(
            f"""update {SCHEMA}.periods set true_up_minor = true_up_minor + $3,
                       sla_credit_minor = sla_credit_minor + $4
                 where contract_id = $1 and period_start = $2""",
            contract_id,
            start,
            true_up_minor,
            sla_minor,
        )


@dataclass(frozen=True)
class CreditNoteRow:
    credit_note_id: str
    number: str
    contract_id: str
    renter_id: str
    currency: str
    invoice_number: str
    issued_at: datetime
    document: dict[str, Any]


async def insert_credit_notes(conn: asyncpg.Connection, rows: Sequence[CreditNoteRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        f"""insert into {SCHEMA}.credit_notes (credit_note_id, number, contract_id, renter_id, currency,
                invoice_number, issued_at, document) values ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [
            (
                r.credit_note_id,
                r.number,
                r.contract_id,
                r.renter_id,
                r.currency,
                r.invoice_number,
                r.issued_at,
                r.document,
            )
            for r in rows
        ],
    )


@dataclass(frozen=True)
class ChargebackRow:
    document_id: str
    contract_id: str
    period_start: datetime
    period_end: datetime
    allocation_id: str
    supplier_id: str
    currency: str
    month: str
    amount_minor: int


async def insert_chargebacks(conn: asyncpg.Connection, rows: Sequence[ChargebackRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        f"""insert into {SCHEMA}.chargebacks (document_id, contract_id, period_start, period_end,
                allocation_id,
                supplier_id, currency, month, amount_minor) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (
                r.document_id,
                r.contract_id,
                r.period_start,
                r.period_end,
                r.allocation_id,
                r.supplier_id,
                r.currency,
                r.month,
                r.amount_minor,
            )
            for r in rows
        ],
    )


# --- statements -------------------------------------------------------------------------------------------


async def lock_statement_progress(conn: asyncpg.Connection) -> tuple[bool, str | None]:
    """(locked, next month). Not locked when another worker is closing statements right now."""
    row = await conn.fetchrow(f"select next_month from {SCHEMA}.statement_progress where id for update skip locked")
    if row is None:
        return False, None
    return True, row["next_month"]


async def set_statement_month(conn: asyncpg.Connection, month: str) -> None:
    await conn.execute(f"update {SCHEMA}.statement_progress set next_month = $1 where id", month)


async def earliest_pending_month(conn: asyncpg.Connection) -> str | None:
    value: str | None = await conn.fetchval(f"select min(month) from {SCHEMA}.supplier_pending")
    return value


async def unclosed_contracts(conn: asyncpg.Connection, boundary: datetime) -> int:
    """Known contracts with a period ending at or before ``boundary`` that is not invoiced yet."""
    return int(await conn.fetchval(f"select count(*) from {SCHEMA}.contract_state where next_close_at <= $1", boundary))


async def statement_issue_instant(conn: asyncpg.Connection, boundary: datetime) -> datetime | None:
    """The instant the last partition's watermark reached ``boundary`` (first watermark ≥ it, latest
    over partitions): when a month's statements become final."""
    value: datetime | None = await conn.fetchval(
        f"""select max(first_through) from (
                select min(through) as first_through from {SCHEMA}.watermarks where through >= $1
                 group by partition) f""",
        boundary,
    )
    return value


async def statement_pairs(
    conn: asyncpg.Connection, month: str, limit: int, *, only: Sequence[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """(supplier, currency) that need a statement for ``month`` and have none yet, sorted (``only``:
    among these pairs)."""
    rows = await conn.fetch(
        f"""select supplier_id, currency from (
                select supplier_id, currency from {SCHEMA}.supplier_pending where month <= $1
                union
                select supplier_id, currency from {SCHEMA}.supplier_balances
                 where last_net_minor < 0 and last_month < $1) p
             where not exists (select 1 from {SCHEMA}.statements s
                                where s.supplier_id = p.supplier_id and s.currency = p.currency
                                  and s.month = $1)
               and not exists (select 1 from {SCHEMA}.statements_blocked b
                                where b.supplier_id = p.supplier_id and b.currency = p.currency
                                  and b.month = $1)
               and ($3::text[] is null
                    or (p.supplier_id, p.currency) in (select * from unnest($3::text[], $4::text[])))
             order by supplier_id, currency limit $2""",
        month,
        limit,
        None if only is None else [p[0] for p in only],
        None if only is None else [p[1] for p in only],
    )
    return [(r["supplier_id"], r["currency"]) for r in rows]


async def block_statement(conn: asyncpg.Connection, supplier_id: str, currency: str, month: str, reason: str) -> None:
    """Set a (supplier, currency) aside for ``month``: its items wait for the next month's close."""
    await conn.execute(
        f"""insert into {SCHEMA}.statements_blocked (supplier_id, currency, month, reason)
            values ($1, $2, $3, $4)
            on conflict (supplier_id, currency, month) do update set reason = excluded.reason""",
        supplier_id,
        currency,
        month,
        reason[:2000],
    )


async def take_pending(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], month: str) -> None:
    """Lock and delete the pending rows of these pairs for months ≤ ``month`` before reading their items."""
    await conn.execute(
        f"""with locked as (
                select p.supplier_id, p.currency, p.month from {SCHEMA}.supplier_pending p
                  join unnest($1::text[], $2::text[]) as k(supplier_id, currency)
                    on k.supplier_id = p.supplier_id and k.currency = p.currency
                 where p.month <= $3 order by 1, 2, 3 for update of p)
            delete from {SCHEMA}.supplier_pending d using locked
             where d.supplier_id = locked.supplier_id and d.currency = locked.currency
               and d.month = locked.month""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        month,
    )


@dataclass(frozen=True)
class EarningSums:
    supplier_id: str
    currency: str
    allocation_id: str
    earning_x3600: Decimal
    """Hours in the month itself."""
    billable_gpu_seconds: int
    late_earning_x3600: Decimal
    """Hours of earlier months (late corrections)."""
    earning_units: int
    """What rating accrued in ``payable_accrued`` for all of these charges."""
    charges: int


async def take_earnings(
    conn: asyncpg.Connection,
    pairs: Sequence[tuple[str, str]],
    month: str,
    month_start: datetime,
    month_end: datetime,
) -> list[EarningSums]:
    rows = await conn.fetch(
        f"""with taken as (
                update {SCHEMA}.charges c set stated_month = $3
                  from unnest($1::text[], $2::text[]) as k(supplier_id, currency)
                 where c.supplier_id = k.supplier_id and c.currency = k.currency
                   and c.stated_month is null and c.hour_start < $5
                returning c.supplier_id, c.currency, c.allocation_id, c.hour_start, c.earning_x3600,
                          c.billable_gpu_seconds, c.earning_units)
            select supplier_id, currency, allocation_id,
                   coalesce(sum(earning_x3600) filter (where hour_start >= $4), 0) as own_x3600,
                   coalesce(sum(billable_gpu_seconds) filter (where hour_start >= $4), 0) as own_seconds,
                   coalesce(sum(earning_x3600) filter (where hour_start < $4), 0) as late_x3600,
                   sum(earning_units) as units, count(*) as charges
              from taken group by supplier_id, currency, allocation_id
             order by supplier_id, currency, allocation_id""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        month,
        month_start,
        month_end,
    )
    return [
        EarningSums(
            r["supplier_id"],
            r["currency"],
            r["allocation_id"],
            Decimal(r["own_x3600"]),
            int(r["own_seconds"]),
            Decimal(r["late_x3600"]),
            int(r["units"]),
            int(r["charges"]),
        )
        for r in rows
    ]


async def take_chargebacks(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], month: str
) -> list[ChargebackRow]:
    rows = await conn.fetch(
        f"""update {SCHEMA}.chargebacks c set stated_month = $3
              from unnest($1::text[], $2::text[]) as k(supplier_id, currency)
             where c.supplier_id = k.supplier_id and c.currency = k.currency
               and c.stated_month is null and c.month <= $3
            returning c.document_id, c.contract_id, c.period_start, c.period_end, c.allocation_id,
                      c.supplier_id,
                      c.currency, c.month, c.amount_minor""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        month,
    )
    found = [
        ChargebackRow(
            r["document_id"],
            r["contract_id"],
            r["period_start"],
            r["period_end"],
            r["allocation_id"],
            r["supplier_id"],
            r["currency"],
            r["month"],
            int(r["amount_minor"]),
        )
        for r in rows
    ]
    found.sort(key=lambda c: (c.supplier_id, c.currency, c.allocation_id, c.period_start, c.document_id))
    return found


async def previous_nets(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    rows = await conn.fetch(
        f"""select b.supplier_id, b.currency, b.last_net_minor from {SCHEMA}.supplier_balances b
              join unnest($1::text[], $2::text[]) as k(supplier_id, currency)
                on k.supplier_id = b.supplier_id and k.currency = b.currency""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["supplier_id"], r["currency"]): int(r["last_net_minor"]) for r in rows}


@dataclass(frozen=True)
class StatementRow:
    statement_id: str
    number: str
    supplier_id: str
    currency: str
    month: str
    issued_at: datetime
    net_minor: int
    document: dict[str, Any]


async def insert_statements(conn: asyncpg.Connection, rows: Sequence[StatementRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        f"""insert into {SCHEMA}.statements (statement_id, number, supplier_id, currency, month, issued_at,
                net_minor, document) values ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [
            (
                r.statement_id,
                r.number,
                r.supplier_id,
                r.currency,
                r.month,
                r.issued_at,
                r.net_minor,
                r.document,
            )
            for r in rows
        ],
    )
    await conn.executemany(
        f"""insert into {SCHEMA}.supplier_balances (supplier_id, currency, last_month, last_net_minor)
            values ($1, $2, $3, $4)
            on conflict (supplier_id, currency) do update
               set last_month = excluded.last_month, last_net_minor = excluded.last_net_minor""",
        [
            (r.supplier_id, r.currency, r.month, r.net_minor)
            for r in sorted(rows, key=lambda r: (r.supplier_id, r.currency))
        ],
    )


# --- reading documents (CLI, demo) ------------------------------------------------------------------


async def list_invoice_documents(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Finalized invoices' ``invoice.finalized`` data by number (``month``: YYYY-MM of the period start)."""
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.invoices
             where ($1::text is null or contract_id = $1) and ($2::text is null or renter_id = $2)
               and ($3::text is null or to_char(period_start at time zone 'UTC', 'YYYY-MM') = $3)
             order by number""",
        contract_id,
        renter_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def list_credit_note_documents(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Credit notes' ``credit_note.issued`` data, by number. ``month``: ``YYYY-MM`` of issue."""
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.credit_notes
             where ($1::text is null or contract_id = $1) and ($2::text is null or renter_id = $2)
               and ($3::text is null or to_char(issued_at at time zone 'UTC', 'YYYY-MM') = $3)
             order by number""",
        contract_id,
        renter_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def list_statement_documents(
    conn: asyncpg.Connection, *, supplier_id: str | None = None, month: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.statements
             where ($1::text is null or supplier_id = $1) and ($2::text is null or month = $2)
             order by number""",
        supplier_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def find_document(conn: asyncpg.Connection, number: str) -> tuple[str, dict[str, Any]] | None:
    """(kind, data) of the document with this number: ``invoice``, ``credit_note`` or ``statement``."""
    for kind, table in (
        ("invoice", "invoices"),
        ("credit_note", "credit_notes"),
        ("statement", "statements"),
    ):
        row = await conn.fetchrow(f"select document from {SCHEMA}.{table} where number = $1", number)
        if row is not None:
            return kind, dict(row["document"])
    return None
