"""Recompute one renter-currency's allocation (R11) and post what changed — in the caller's transaction.

Every fact (invoice, credit note, money in, money out) is stored first; then :func:`recompute` locks the
renter-currency's ``books`` row (callers lock several in sorted order, so two batches never deadlock),
runs the pure allocation over all facts, and writes the difference from what was posted before: the
invoices whose payment changed (``invoice_status`` and an ``invoice.payment_status`` event each), the
applications (for tracing) and one journal entry moving the totals:

    Δapplied       Dr renter unapplied       / Cr renter receivable
    Δnote excess   Dr renter receivable      / Cr renter unapplied
    Δgiven back    Dr renter unapplied       / Cr renter refunds_payable   (credit-note refunds, money out)

The money itself enters when it is recorded (:func:`money_in_entry`): receipts ``Dr cash_clearing``,
collections and dispute reversals ``Dr processor_clearing:<gateway>``, ``Cr renter unapplied``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.ledger.postings import Entry, build_entry, credit, debit
from libs.messaging.consume import Tx
from libs.money import minor_to_ledger
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import InvoicePaymentStatus
from services.payments import refunds
from services.payments.domain.allocation import (
    Allocation,
    CreditNoteFact,
    InvoiceFact,
    MoneyIn,
    MoneyOut,
    allocate,
)
from services.payments.money import shown


@dataclass(frozen=True)
class Touched:
    renter_id: str
    currency: str


async def load_facts(
    conn: asyncpg.Connection, renter_id: str, currency: str
) -> tuple[list[InvoiceFact], list[CreditNoteFact], list[MoneyIn], list[MoneyOut]]:
    invoices = [
        InvoiceFact(
            r["invoice_id"],
            r["number"],
            r["contract_id"],
            r["exists_at"],
            r["due_at"],
            r["period_start"],
            r["amount_due_minor"],
        )
        for r in await conn.fetch(
            """select invoice_id, number, contract_id, exists_at, due_at, period_start, amount_due_minor
                 from payments.invoices where renter_id = $1 and currency = $2""",
            renter_id,
            currency,
        )
    ]
    known = {i.number for i in invoices}
    notes = [
        CreditNoteFact(r["credit_note_id"], r["invoice_number"], r["at"], r["total_minor"])
        for r in await conn.fetch(
            """select credit_note_id, invoice_number, at, total_minor from payments.credit_notes
                where renter_id = $1 and currency = $2""",
            renter_id,
            currency,
        )
        if r["invoice_number"] in known  # a note waits (unapplied) until its invoice is known here
    ]
    money_in = [
        MoneyIn(r["source_id"], r["kind"], r["amount_minor"], r["at"], r["reference"], r["order_key"])
        for r in await conn.fetch(
            """select source_id, kind, amount_minor, at, reference, order_key from payments.money_in
                where renter_id = $1 and currency = $2""",
            renter_id,
            currency,
        )
    ]
    money_out = [
        MoneyOut(r["source_id"], r["kind"], r["invoice_number"], r["amount_minor"], r["at"])
        for r in await conn.fetch(
            """select source_id, kind, invoice_number, amount_minor, at from payments.money_out
                where renter_id = $1 and currency = $2""",
            renter_id,
            currency,
        )
    ]
    return invoices, notes, money_in, money_out


async def lock_books(conn: asyncpg.Connection, touched: Iterable[Touched]) -> list[Touched]:
    """Create and lock the books rows, in sorted order (no deadlock between batches)."""
    ordered = sorted(set(touched), key=lambda t: (t.renter_id, t.currency))
    for t in ordered:
        await conn.execute(
            "insert into payments.books (renter_id, currency) values ($1, $2) on conflict do nothing",
            t.renter_id,
            t.currency,
        )
        await conn.execute(
            "select 1 from payments.books where renter_id = $1 and currency = $2 for update", t.renter_id, t.currency
        )
    return ordered


async def recompute_all(tx: Tx, touched: Iterable[Touched], *, cause: Envelope[Any] | None, at: datetime) -> None:
    for t in await lock_books(tx.conn, touched):
        await recompute(tx, t.renter_id, t.currency, cause=cause, at=at)


async def recompute(tx: Tx, renter_id: str, currency: str, *, cause: Envelope[Any] | None, at: datetime) -> Allocation:
    """The caller holds the books row lock (:func:`lock_books`)."""
    conn = tx.conn
    invoices, notes, money_in, money_out = await load_facts(conn, renter_id, currency)
    result = allocate(invoices, money_in, credit_notes=notes, money_out=money_out)
    await _write_status(tx, renter_id, currency, result, cause=cause, at=at)
    await _write_applications(conn, renter_id, currency, result)
    await _post_totals(tx, renter_id, currency, result, cause=cause, at=at)
    await refunds.ensure_rows(conn, renter_id, currency, result)
    return result


async def _write_status(
    tx: Tx, renter_id: str, currency: str, result: Allocation, *, cause: Envelope[Any] | None, at: datetime
) -> None:
    conn = tx.conn
    rows = {
        r["number"]: r
        for r in await conn.fetch(
            """select number, amount_due_minor, paid_minor, remaining_minor, status, past_due, revision
                 from payments.invoice_status where renter_id = $1 and currency = $2""",
            renter_id,
            currency,
        )
    }
    for number in sorted(result.invoices):
        balance = result.invoices[number]
        old = rows.get(number)
        past_due = bool(old["past_due"]) and balance.remaining_minor > 0 if old is not None else False
        status = "past_due" if past_due else balance.status
        new = (balance.amount_due_minor, balance.paid_minor, balance.remaining_minor, status)
        if (
            old is not None
            and (old["amount_due_minor"], old["paid_minor"], old["remaining_minor"], old["status"]) == new
        ):
            continue
        revision = 1 if old is None else old["revision"] + 1
        inv = balance.invoice
        await conn.execute(
            """insert into payments.invoice_status (invoice_id, number, contract_id, renter_id, currency,
                   amount_due_minor, paid_minor, remaining_minor, status, past_due, paid_at, revision)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               on conflict (invoice_id) do update set amount_due_minor = excluded.amount_due_minor,
                   paid_minor = excluded.paid_minor, remaining_minor = excluded.remaining_minor,
                   status = excluded.status, past_due = excluded.past_due, paid_at = excluded.paid_at,
                   revision = excluded.revision, updated_at = now()""",
            inv.invoice_id,
            number,
            inv.contract_id,
            renter_id,
            currency,
            *new[:3],
            status,
            past_due,
            balance.paid_at,
            revision,
        )
        # as_of: when the facts changed it (not the batch's time: a batch may also hold later facts)
        emit_status(
            tx,
            inv.invoice_id,
            number,
            inv.contract_id,
            renter_id,
            currency,
            new,
            revision,
            cause=cause,
            at=balance.changed_at,
        )


def emit_status(
    tx: Tx,
    invoice_id: str,
    number: str,
    contract_id: str,
    renter_id: str,
    currency: str,
    amounts: tuple[int, int, int, str],
    revision: int,
    *,
    cause: Envelope[Any] | None,
    at: datetime,
) -> None:
    due, paid, remaining, status = amounts
    tx.emit(
        topics.INVOICE_PAYMENTS,
        key=contract_id,
        type="invoice.payment_status",
        time=at,
        cause=cause,
        event_id=derive_id("invoice.payment_status", invoice_id, revision),
        data=InvoicePaymentStatus(
            invoice_id=invoice_id,
            number=number,
            contract_id=contract_id,
            renter_id=renter_id,
            currency=currency,
            amount_due=shown(due, currency),
            amount_paid=shown(paid, currency),
            amount_remaining=shown(remaining, currency),
            status=status,
            revision=revision,
            as_of=at,
        ),
    )


async def _write_applications(conn: asyncpg.Connection, renter_id: str, currency: str, result: Allocation) -> None:
    await conn.execute("delete from payments.applications where renter_id = $1 and currency = $2", renter_id, currency)
    if result.applications:
        await conn.copy_records_to_table(
            "applications",
            schema_name="payments",
            records=[
                (renter_id, currency, seq, a.source_id, a.invoice_number, a.amount_minor, a.at)
                for seq, a in enumerate(result.applications)
            ],
            columns=["renter_id", "currency", "seq", "source_id", "invoice_number", "amount_minor", "at"],
        )


async def _post_totals(
    tx: Tx, renter_id: str, currency: str, result: Allocation, *, cause: Envelope[Any] | None, at: datetime
) -> None:
    conn = tx.conn
    book = await conn.fetchrow(
        "select * from payments.books where renter_id = $1 and currency = $2", renter_id, currency
    )
    assert book is not None, "lock_books creates the row"
    given_back = result.refunded_by_credit_notes_minor + sum(result.money_out_taken.values())
    d_applied = result.applied_minor - book["applied_minor"]
    d_excess = result.credit_note_excess_minor - book["note_excess_minor"]
    d_back = given_back - (book["note_refund_minor"] + book["taken_minor"])
    if d_applied or d_excess or d_back:
        version = book["version"] + 1
        specs = [
            chart.unapplied(renter_id, currency),
            chart.receivable(renter_id, currency),
            chart.refunds_payable(renter_id, currency),
        ]
        unapplied, receivable, payable = (s.code for s in specs)

        def units(minor: int) -> int:
            return minor_to_ledger(minor, currency)

        entry_id = derive_id("payments.books", renter_id, currency, version)
        entry = build_entry(
            id=entry_id,
            cause_id=entry_id,  # entries are unique per (cause, kind): one batch may move many renters
            kind="payments.applied",
            occurred_at=at,
            description=f"R11 allocation of {renter_id} in {currency}, version {version}",
            postings=[
                debit(unapplied, units(d_applied), currency),
                credit(receivable, units(d_applied), currency),
                debit(receivable, units(d_excess), currency),
                credit(unapplied, units(d_excess), currency),
                debit(unapplied, units(d_back), currency),
                credit(payable, units(d_back), currency),
            ],
        )
        if entry is not None:
            await ensure_accounts(conn, specs)
            tx.post(entry)
            await tx.flush()  # the unapplied floor is checked with the rest of the batch's entries
    else:
        version = book["version"]
    await conn.execute(
        """update payments.books set money_in_minor = $3, applied_minor = $4, credit_minor = $5,
               note_refund_minor = $6, note_excess_minor = $7, taken_minor = $8, version = $9
             where renter_id = $1 and currency = $2""",
        renter_id,
        currency,
        result.money_in_minor,
        result.applied_minor,
        result.credit_balance_minor,
        result.refunded_by_credit_notes_minor,
        result.credit_note_excess_minor,
        sum(result.money_out_taken.values()),
        version,
    )


def money_in_entry(
    *, entry_id: str, cause_id: str, renter_id: str, currency: str, amount_minor: int, at: datetime, gateway: str | None
) -> tuple[Entry, list[Any]]:
    """Money reaching the platform for a renter: a receipt at the bank, or a collection at a processor."""
    source = chart.processor_clearing(gateway, currency) if gateway else chart.cash_clearing(currency)
    target = chart.unapplied(renter_id, currency)
    units = minor_to_ledger(amount_minor, currency)
    entry = build_entry(
        id=entry_id,
        cause_id=cause_id,
        kind="payments.money_in",
        occurred_at=at,
        postings=[debit(source.code, units, currency), credit(target.code, units, currency)],
    )
    assert entry is not None
    return entry, [source, target]
