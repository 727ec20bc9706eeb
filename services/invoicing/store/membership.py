"""Which charges, draws, earnings and chargebacks belong to which invoice, credit note or statement:
each membership rule is one named function (one ``UPDATE … RETURNING`` claim), so the rule has a
name, a docstring that states it, and a test of its own (``tests/integration/test_invoicing_membership.py``).

* :func:`claim_invoice_charges` — R10: a period's invoice carries the period's open charges.
* :func:`claim_invoice_draws` — R10/R8: a period's invoice applies the period's open prepaid draws.
* :func:`find_late_corrections` + :func:`claim_late_corrections` — R3: open charges and draws of
  already invoiced periods go on the next document (invoice, else credit note).
* :func:`claim_statement_earnings` — R12: a month's statement carries the pair's open earnings of
  hours before the month's end (late ones of earlier months included).
* :func:`claim_statement_chargebacks` — R12/R7: a month's statement carries the pair's open
  chargebacks landing in that month or earlier.

A claim sets ``document_id`` (charges, draws) or ``stated_month`` (charges, chargebacks) where it is
still null: each row is claimed at most once, and a second call claims nothing. Payouts and
pay-when-paid (R15) extend these rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.invoicing.store.documents import ChargebackRow
from services.invoicing.store.tables import SCHEMA


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


async def claim_invoice_charges(
    conn: asyncpg.Connection, contract_id: str, period_start: datetime, document_id: str
) -> list[AllocationSums]:
    """R10 (with R1, R4): a period's invoice carries every charge of the contract whose allocation-hour
    lies in that period (``period_start`` as rating placed it) and that no document carries yet.
    Claims them for ``document_id`` and returns their sums per allocation, by ``allocation_id``.
    A charge already carried (by this or any document) is never claimed again, so a second call
    claims nothing."""
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


async def claim_invoice_draws(
    conn: asyncpg.Connection, contract_id: str, period_start: datetime, document_id: str
) -> Decimal:
    """R10 (with R8): a period's invoice applies every prepaid drawdown of the contract placed in that
    period that no document carries yet. Claims them for ``document_id``; returns Σ ``drawn_x3600``
    (0 when none). A second call claims nothing."""
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


async def find_late_corrections(
    conn: asyncpg.Connection, contract_id: str, periods_ending_by: datetime
) -> OpenCorrections:
    """R3 (late adjustments): the contract's charges and draws of periods ending at or before
    ``periods_ending_by`` (periods already invoiced) that no document carries yet — late corrections
    and draws that arrived after their period's invoice. They go on the contract's next invoice, or on
    a credit note when none will come. Reads only: :func:`claim_late_corrections` claims them once
    the document that carries them is decided."""
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


async def claim_late_corrections(
    conn: asyncpg.Connection, found: OpenCorrections, document_id: str
) -> tuple[list[str], list[str]]:
    """R3: claim for ``document_id`` the late charges and draws :func:`find_late_corrections` found,
    those of them no document carries yet. Returns (charge ids, draw ids) claimed, sorted; a second
    call claims nothing."""
    charge_ids: list[str] = []
    draw_ids: list[str] = []
    if found.charge_ids:
        rows = await conn.fetch(
            f"""update {SCHEMA}.charges set document_id = $2 where charge_id = any($1) and document_id is null
                returning charge_id""",
            found.charge_ids,
            document_id,
        )
        charge_ids = sorted(r["charge_id"] for r in rows)
    if found.draw_ids:
        rows = await conn.fetch(
            f"""update {SCHEMA}.draws set document_id = $2 where draw_id = any($1) and document_id is null
                returning draw_id""",
            found.draw_ids,
            document_id,
        )
        draw_ids = sorted(r["draw_id"] for r in rows)
    return charge_ids, draw_ids


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


async def claim_statement_earnings(
    conn: asyncpg.Connection,
    pairs: Sequence[tuple[str, str]],
    month: str,
    month_start: datetime,
    month_end: datetime,
) -> list[EarningSums]:
    """R12: month ``month``'s statement of a (supplier, currency) carries every earning of that pair
    whose hour starts before ``month_end`` and that no statement carries yet: the hours delivered in the
    month, plus late earnings of earlier, already stated months (Settle extension: on the supplier's
    next statement, on the allocation's line — returned apart as ``late_earning_x3600``). Claims them
    for ``month`` (``stated_month``) and returns sums per (supplier, currency, allocation), sorted.
    A second call claims nothing."""
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


async def claim_statement_chargebacks(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], month: str
) -> list[ChargebackRow]:
    """R12 (with R7): month ``month``'s statement of a (supplier, currency) carries every SLA
    chargeback of that pair landing in ``month`` or an earlier month (a chargeback that would land on
    an already stated month goes on the next statement) that no statement carries yet. Claims them for
    ``month``; returns them sorted by (supplier, currency, allocation, period, document). A second
    call claims nothing."""
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
