"""Credit exposure (R9): finalized invoices' amount due and the charges of uninvoiced periods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import asyncpg

from services.rating.domain import exact_from_x3600


@dataclass(frozen=True)
class Exposure:
    invoiced_due: Decimal
    """Σ ``amount_due`` of the contract's finalized invoices (major units, minor digits)."""
    uninvoiced_x3600: Decimal
    over_limit: bool = False
    """Whether the exposure was above the credit limit in force at its last movement (R9)."""

    @property
    def exact(self) -> Fraction:
        return Fraction(self.invoiced_due) + exact_from_x3600(self.uninvoiced_x3600)


async def load_exposure(conn: asyncpg.Connection, contract_id: str) -> Exposure:
    row = await conn.fetchrow(
        "select invoiced_due, uninvoiced_x3600, over_limit from rating.credit_exposure where contract_id = $1",
        contract_id,
    )
    if row is None:
        return Exposure(Decimal(0), Decimal(0))
    return Exposure(row["invoiced_due"], row["uninvoiced_x3600"], row["over_limit"])


_SAVE_EXPOSURE = """insert into rating.credit_exposure (contract_id, invoiced_due, uninvoiced_x3600, over_limit)
   values ($1, $2, $3, $4)
   on conflict (contract_id) do update set invoiced_due = excluded.invoiced_due,
       uninvoiced_x3600 = excluded.uninvoiced_x3600, over_limit = excluded.over_limit"""


async def save_exposures(conn: asyncpg.Connection, exposures: Mapping[str, Exposure]) -> None:
    """Save several contracts' exposures in one pipelined round trip."""
    if exposures:
        await conn.executemany(
            _SAVE_EXPOSURE,
            [(c, e.invoiced_due, e.uninvoiced_x3600, e.over_limit) for c, e in sorted(exposures.items())],
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


async def invoice_remaining(conn: asyncpg.Connection, invoice_id: str) -> tuple[int, Decimal] | None:
    """(revision, remaining) last reported by payments for an invoice, or None."""
    row = await conn.fetchrow(
        "select revision, remaining from rating.invoice_payments where invoice_id = $1 for update", invoice_id
    )
    return None if row is None else (int(row["revision"]), Decimal(row["remaining"]))


async def save_invoice_remaining(
    conn: asyncpg.Connection, invoice_id: str, contract_id: str, revision: int, remaining: Decimal
) -> None:
    await conn.execute(
        """insert into rating.invoice_payments (invoice_id, contract_id, revision, remaining) values ($1, $2, $3, $4)
           on conflict (invoice_id) do update set revision = excluded.revision, remaining = excluded.remaining""",
        invoice_id,
        contract_id,
        revision,
        remaining,
    )


async def invoice_amount_due(conn: asyncpg.Connection, invoice_id: str) -> Decimal | None:
    value = await conn.fetchval("select amount_due from rating.invoices where invoice_id = $1", invoice_id)
    return None if value is None else Decimal(value)


async def limits_taking_effect(
    conn: asyncpg.Connection, partition: int, after: datetime | None, through: datetime
) -> list[tuple[str, datetime]]:
    """(contract, instant) of every credit-limit version of a postpaid contract of the partition that takes
    effect in (``after``, ``through``] — ``after`` None: up to ``through`` — in time, then contract, order."""
    rows = await conn.fetch(
        """select distinct c.contract_id, (a->>'effective_at')::timestamptz as at
             from rating.contracts c, jsonb_array_elements(c.terms->'amendments') a
            where c.partition = $1 and c.billing_mode = 'postpaid'
              and (a->'changes'->>'credit_limit_set')::boolean
              and ($2::timestamptz is null or (a->>'effective_at')::timestamptz > $2)
              and (a->>'effective_at')::timestamptz <= $3
            order by at, c.contract_id""",
        partition,
        after,
        through,
    )
    return [(r["contract_id"], r["at"]) for r in rows]
