"""SQL of the payouts service (schema ``payouts``, migration 0070): the facts it records and what
planning reads of them. Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg

from services.payouts.domain.planning import (
    InvoiceEarnings,
    InvoicePaid,
    InvoiceRef,
    Payee,
    PlanningInputs,
    PriorPayout,
    Rate,
    StatementMonth,
)

SCHEMA = "payouts"
PAYOUT_STATES = ("planned", "on_hold", "sent", "completed", "returned", "rejected", "waiting_operator")
"""States of a payout: planning gives ``planned`` / ``on_hold``; the files (R16, ``files.py``) move a planned
one on. None of them is ``waiting`` (a plan without a payout)."""


# --- clock ---------------------------------------------------------------------------------------------------
async def advance_clock(conn: asyncpg.Connection, at: datetime) -> datetime:
    """Move planning time forward (never back) and lock the row: plannings run one at a time."""
    value: datetime = await conn.fetchval(
        """insert into payouts.clock (id, at) values (true, $1)
           on conflict (id) do update set at = greatest(payouts.clock.at, excluded.at)
           returning at""",
        at,
    )
    return value


async def lock_planning(conn: asyncpg.Connection) -> None:
    """One planning at a time (two payouts workers consume different partitions)."""
    await conn.execute("select pg_advisory_xact_lock(hashtext('payouts.planning'))")


async def record_ticks(conn: asyncpg.Connection, ticks: Sequence[datetime]) -> None:
    if ticks:
        await conn.executemany(
            "insert into payouts.ticks (at) values ($1) on conflict do nothing", [(t,) for t in sorted(set(ticks))]
        )


async def record_statement_marks(conn: asyncpg.Connection, marks: Sequence[tuple[int, str, datetime]]) -> None:
    """The latest ``statements.closed`` per partition (forward moves only)."""
    for partition, month, issued_at in sorted(marks):
        await conn.execute(
            """insert into payouts.statement_marks (partition, month, issued_at) values ($1, $2, $3)
               on conflict (partition) do update set month = excluded.month, issued_at = excluded.issued_at
                where payouts.statement_marks.month < excluded.month""",
            partition,
            month,
            issued_at,
        )


async def closed_month(conn: asyncpg.Connection, partitions: int) -> str | None:
    """The month whose statements are all published on every partition (None: not yet known)."""
    row = await conn.fetchrow("select count(*) as n, min(month) as month from payouts.statement_marks")
    if row is None or row["n"] < partitions:
        return None
    month: str = row["month"]
    return month


async def payments_answered(conn: asyncpg.Connection, partitions: int) -> datetime | None:
    """The latest tick payments has answered on every partition (None: not yet on all)."""
    row = await conn.fetchrow("select count(*) as n, min(through) as through from payouts.payment_marks")
    if row is None or row["n"] < partitions:
        return None
    through: datetime = row["through"]
    return through


async def save_charge_marks(conn: asyncpg.Connection, marks: Sequence[tuple[int, datetime]]) -> None:
    """Rating's ``charges.watermark`` per partition of charges.rated.v1 (the latest wins)."""
    await conn.executemany(
        """insert into payouts.charge_marks (partition, through) values ($1, $2)
           on conflict (partition) do update set through = excluded.through
            where payouts.charge_marks.through < excluded.through""",
        marks,
    )


async def save_invoice_marks(conn: asyncpg.Connection, marks: Sequence[tuple[int, datetime]]) -> None:
    """Invoicing's ``invoices.watermark`` per partition of invoices.finalized.v1 (the latest wins)."""
    await conn.executemany(
        """insert into payouts.invoice_marks (partition, through) values ($1, $2)
           on conflict (partition) do update set through = excluded.through
            where payouts.invoice_marks.through < excluded.through""",
        marks,
    )


async def invoices_read_through(conn: asyncpg.Connection, partitions: int) -> datetime | None:
    """Every invoice finalized by a close at or before this instant has been read here (the least mark over
    every partition of invoices.finalized.v1); the far future when invoicing sent no mark at all (nothing
    upstream to wait for); None while some partition has sent none yet."""
    row = await conn.fetchrow("select count(*) as n, min(through) as through from payouts.invoice_marks")
    if row is None or row["n"] == 0:
        return datetime.max.replace(tzinfo=UTC)
    if row["n"] < partitions:
        return None
    through: datetime = row["through"]
    return through


async def charges_through(conn: asyncpg.Connection, partitions: int) -> datetime | None:
    """Every hour before this instant has been rated and read here, on every partition (None: not yet
    a watermark on all)."""
    row = await conn.fetchrow("select count(*) as n, min(through) as through from payouts.charge_marks")
    if row is None or row["n"] < partitions:
        return None
    through: datetime = row["through"]
    return through


async def ticks_before(conn: asyncpg.Connection, bound: datetime, answered: datetime) -> list[datetime]:
    """Unplanned ticks earlier than ``bound`` and answered by payments, in order."""
    return [
        r["at"]
        for r in await conn.fetch(
            "select at from payouts.ticks where not planned and at < $1 and at <= $2 order by at", bound, answered
        )
    ]


async def mark_planned(conn: asyncpg.Connection, at: datetime) -> None:
    await conn.execute("update payouts.ticks set planned = true where at = $1", at)


async def clock_now(conn: asyncpg.Connection) -> datetime | None:
    value: datetime | None = await conn.fetchval("select at from payouts.clock where id")
    return value


# --- facts ----------------------------------------------------------------------------------------------------
async def save_payee(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    await conn.execute(
        """insert into payouts.payees (event_id, supplier_id, at, payout_currency, rail, account, account_masked,
               minimum_payout, pay_when_paid, on_hold, fallback_rail)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict do nothing""",
        row["event_id"],
        row["supplier_id"],
        row["at"],
        row["payout_currency"],
        row["rail"],
        row["account"],
        row["account_masked"],
        row["minimum_payout"],
        row["pay_when_paid"],
        row["on_hold"],
        row.get("fallback_rail"),
    )


async def save_rate(conn: asyncpg.Connection, rate: Rate, event_id: str) -> None:
    await conn.execute(
        """insert into payouts.fx_rates (rate_id, base, quote, rate, as_of, event_id)
           values ($1, $2, $3, $4, $5, $6) on conflict do nothing""",
        rate.rate_id,
        rate.base,
        rate.quote,
        Decimal(rate.rate.numerator) / Decimal(rate.rate.denominator),
        rate.as_of,
        event_id,
    )


async def save_statement(conn: asyncpg.Connection, row: tuple[Any, ...]) -> None:
    await conn.execute(
        """insert into payouts.statements (statement_id, number, supplier_id, currency, month, net_minor, issued_at)
           values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing""",
        *row,
    )


async def add_earnings(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, datetime, str, Decimal]]) -> None:
    """(supplier, currency, contract, period start, month, earning × 3600) added to the per-invoice sums,
    in key order (two batches never deadlock)."""
    sums: dict[tuple[str, str, str, datetime, str], tuple[Decimal, int]] = {}
    for supplier_id, currency, contract_id, period_start, month, x in rows:
        k = (supplier_id, currency, contract_id, period_start, month)
        total, n = sums.get(k, (Decimal(0), 0))
        sums[k] = (total + x, n + 1)
    for k in sorted(sums):
        total, n = sums[k]
        await conn.execute(
            """insert into payouts.invoice_earnings (supplier_id, currency, contract_id, period_start, month,
                   earning_x3600, charges)
               values ($1, $2, $3, $4, $5, $6, $7)
               on conflict (supplier_id, currency, contract_id, period_start, month) do update
                   set earning_x3600 = payouts.invoice_earnings.earning_x3600 + excluded.earning_x3600,
                       charges = payouts.invoice_earnings.charges + excluded.charges""",
            *k,
            total,
            n,
        )


async def save_invoice(conn: asyncpg.Connection, row: tuple[Any, ...]) -> None:
    await conn.execute(
        """insert into payouts.invoices (invoice_id, number, contract_id, period_start, currency, total_minor,
               amount_due_minor, issued_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing""",
        *row,
    )


async def save_status(
    conn: asyncpg.Connection,
    invoice_id: str,
    revision: int,
    remaining: int,
    as_of: datetime,
    after_mark: datetime | None,
) -> None:
    await conn.execute(
        """insert into payouts.invoice_status (invoice_id, revision, remaining_minor, as_of, after_mark)
           values ($1, $2, $3, $4, $5) on conflict do nothing""",
        invoice_id,
        revision,
        remaining,
        as_of,
        after_mark,
    )


async def payment_marks(conn: asyncpg.Connection) -> dict[int, datetime]:
    return {
        r["partition"]: r["through"] for r in await conn.fetch("select partition, through from payouts.payment_marks")
    }


async def save_payment_mark(conn: asyncpg.Connection, partition: int, through: datetime) -> None:
    await conn.execute(
        """insert into payouts.payment_marks (partition, through) values ($1, $2)
           on conflict (partition) do update set through = excluded.through
            where payouts.payment_marks.through < excluded.through""",
        partition,
        through,
    )


# --- what planning reads ----------------------------------------------------------------------------------
async def pairs_to_plan(conn: asyncpg.Connection, at: datetime) -> list[tuple[str, str]]:
    """(supplier, statement currency) with a month final by ``at`` that no payout has paid."""
    rows = await conn.fetch(
        """select distinct s.supplier_id, s.currency from payouts.statements s
            where s.issued_at <= $1
              and not exists (select 1 from payouts.payouts p
                               where p.supplier_id = s.supplier_id and p.currency = s.currency
                                 and p.state <> 'waiting' and s.month = any (p.months))
            order by 1, 2""",
        at,
    )
    return [(r["supplier_id"], r["currency"]) for r in rows]


def _fraction(value: Decimal) -> Fraction:
    return Fraction(value)


async def load_inputs(conn: asyncpg.Connection, at: datetime, pairs: Sequence[tuple[str, str]]) -> PlanningInputs:
    """Everything R15 needs for these pairs as known at ``at``."""
    suppliers = sorted({s for s, _ in pairs})
    wanted = set(pairs)
    statements = [
        StatementMonth(r["supplier_id"], r["currency"], r["month"], r["net_minor"], r["issued_at"])
        for r in await conn.fetch(
            """select supplier_id, currency, month, net_minor, issued_at from payouts.statements
                where supplier_id = any ($1::text[]) and issued_at <= $2""",
            suppliers,
            at,
        )
        if (r["supplier_id"], r["currency"]) in wanted
    ]
    # Earnings of final months only: a month is final for (supplier, currency) once its statement is.
    earnings = [
        InvoiceEarnings(
            r["supplier_id"], r["currency"], InvoiceRef(r["contract_id"], r["period_start"]), _fraction(r["x"])
        )
        for r in await conn.fetch(
            """select e.supplier_id, e.currency, e.contract_id, e.period_start, sum(e.earning_x3600) as x
                 from payouts.invoice_earnings e
                 join payouts.statements s on s.supplier_id = e.supplier_id and s.currency = e.currency
                                          and s.month = e.month and s.issued_at <= $2
                where e.supplier_id = any ($1::text[])
                group by 1, 2, 3, 4""",
            suppliers,
            at,
        )
    ]
    contracts = sorted({e.ref.contract_id for e in earnings})
    invoices = {
        InvoiceRef(r["contract_id"], r["period_start"]): InvoicePaid(
            InvoiceRef(r["contract_id"], r["period_start"]),
            r["invoice_id"],
            r["currency"],
            r["total_minor"],
            r["remaining_minor"],
        )
        for r in await conn.fetch(
            # What remained at `at`: the latest payment status as of then, else the amount due at issue.
            """select i.invoice_id, i.contract_id, i.period_start, i.currency, i.total_minor,
                      coalesce((select st.remaining_minor from payouts.invoice_status st
                                 where st.invoice_id = i.invoice_id and st.as_of <= $2
                                   and (st.after_mark is null or st.after_mark < $2)
                                 order by st.revision desc limit 1), i.amount_due_minor) as remaining_minor
                 from payouts.invoices i
                where i.contract_id = any ($1::text[]) and i.issued_at <= $2""",
            contracts,
            at,
        )
    }
    payees = {
        r["supplier_id"]: Payee(
            r["supplier_id"],
            r["payout_currency"],
            r["rail"],
            _fraction(r["minimum_payout"]),
            r["pay_when_paid"],
            r["on_hold"],
            r["event_id"],
        )
        for r in await conn.fetch(
            """select distinct on (supplier_id) * from payouts.payees
                where supplier_id = any ($1::text[]) and at <= $2
                order by supplier_id, at desc, event_id desc""",
            suppliers,
            at,
        )
    }
    rates = [
        Rate(r["rate_id"], r["base"], r["quote"], _fraction(r["rate"]), r["as_of"])
        for r in await conn.fetch(
            """select distinct on (base, quote) * from payouts.fx_rates
                where base = any ($1::text[]) and as_of <= $2
                order by base, quote, as_of desc, rate_id desc""",
            sorted({c for _, c in pairs}),
            at,
        )
    ]
    prior = [
        PriorPayout(r["supplier_id"], r["currency"], tuple(r["months"]), r["amount_minor"])
        for r in await conn.fetch(
            """select supplier_id, currency, months, amount_minor from payouts.payouts
                where supplier_id = any ($1::text[]) and state <> 'waiting'""",
            suppliers,
        )
        if (r["supplier_id"], r["currency"]) in wanted
    ]
    return PlanningInputs(at, statements, earnings, invoices, payees, rates, prior)


async def waiting_row(conn: asyncpg.Connection, supplier_id: str, currency: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "select * from payouts.payouts where supplier_id = $1 and currency = $2 and state = 'waiting' for update",
        supplier_id,
        currency,
    )
    return row


async def drop_waiting(conn: asyncpg.Connection, supplier_id: str, currency: str) -> None:
    await conn.execute(
        "delete from payouts.payouts where supplier_id = $1 and currency = $2 and state = 'waiting'",
        supplier_id,
        currency,
    )


async def insert_plan(conn: asyncpg.Connection, row: dict[str, Any], holdings: Sequence[tuple[Any, ...]]) -> bool:
    """A payout or a waiting plan; False when that payout already exists (planned by an earlier run)."""
    status = await conn.execute(
        """insert into payouts.payouts (payout_id, supplier_id, currency, months, amount_minor, held_minor,
               payout_currency, payout_amount_minor, rate_id, rate, rail, payee_event_id, state, reason, planned_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) on conflict do nothing""",
        row["payout_id"],
        row["supplier_id"],
        row["currency"],
        list(row["months"]),
        row["amount_minor"],
        row["held_minor"],
        row["payout_currency"],
        row["payout_amount_minor"],
        row["rate_id"],
        row["rate"],
        row["rail"],
        row["payee_event_id"],
        row["state"],
        row["reason"],
        row["planned_at"],
    )
    if not status.endswith("1"):
        return False
    if holdings:
        await conn.executemany(
            """insert into payouts.payout_holdings (payout_id, contract_id, period_start, earnings_minor,
                   released_minor) values ($1, $2, $3, $4, $5)""",
            [(row["payout_id"], *h) for h in holdings],
        )
    return True


# --- reads for the CLI ------------------------------------------------------------------------------------
async def list_payouts(
    conn: asyncpg.Connection, *, supplier: str | None = None, state: str | None = None
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """select * from payouts.payouts
            where ($1::text is null or supplier_id = $1) and ($2::text is null or state = $2)
            order by supplier_id, currency, planned_at, payout_id""",
        supplier,
        state,
    )
    return rows


async def payout(conn: asyncpg.Connection, payout_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "select * from payouts.payouts where payout_id = $1" + (" for update" if lock else ""), payout_id
    )
    return row


async def holdings(conn: asyncpg.Connection, payout_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "select * from payouts.payout_holdings where payout_id = $1 order by contract_id, period_start", payout_id
    )
    return rows


async def actions(conn: asyncpg.Connection, payout_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "select * from payouts.operator_actions where payout_id = $1 order by id", payout_id
    )
    return rows


async def payee_masked(conn: asyncpg.Connection, event_id: str | None) -> str | None:
    if event_id is None:
        return None
    value: str | None = await conn.fetchval("select account_masked from payouts.payees where event_id = $1", event_id)
    return value


async def payout_invoices(conn: asyncpg.Connection, payout: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The renter invoices whose supplier earnings a payout (or a waiting plan) pays, as (ids, numbers);
    the saga follows each invoice's cycle by them (``payout.planned|held|waiting|sent|completed|returned|
    rejected``). Those are, for its supplier and statement currency:

    * the invoices with earnings in its months, except one whose earnings it holds entirely (pay-when-paid
      or a saga's hold: nothing of it released at this planning);
    * and every invoice whose released earnings grew since the supplier's latest earlier payout — held
      earnings released now go out in this payout, whatever month they were earned in (R15)."""
    rows = await conn.fetch(
        """with mine as (
               select contract_id, period_start, earnings_minor, released_minor
                 from payouts.payout_holdings where payout_id = $4),
           before as (
               select h.contract_id, h.period_start, max(h.released_minor) as released_minor
                 from payouts.payout_holdings h join payouts.payouts p using (payout_id)
                where p.supplier_id = $1 and p.currency = $2 and p.payout_id <> $4 and p.state <> 'waiting'
                  and p.planned_at <= $5
                group by h.contract_id, h.period_start),
           paid as (
               select e.contract_id, e.period_start from payouts.invoice_earnings e
                where e.supplier_id = $1 and e.currency = $2 and e.month = any ($3::text[])
                  and not exists (select 1 from mine m
                                   where m.contract_id = e.contract_id and m.period_start = e.period_start
                                     and m.released_minor = 0 and m.earnings_minor > 0)
               union
               select m.contract_id, m.period_start from mine m
                 left join before b using (contract_id, period_start)
                where m.released_minor > coalesce(b.released_minor, 0))
           select distinct i.invoice_id, i.number from paid
             join payouts.invoices i on i.contract_id = paid.contract_id and i.period_start = paid.period_start
            order by 1""",
        payout["supplier_id"],
        payout["currency"],
        list(payout["months"]),
        payout["payout_id"],
        payout["planned_at"],
    )
    return [r["invoice_id"] for r in rows], [r["number"] for r in rows]
