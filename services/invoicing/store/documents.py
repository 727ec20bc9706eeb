"""Documents written by a close: gapless number series, invoices with their periods, credit notes,
chargebacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.invoicing.store.tables import SCHEMA


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
