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

from collections.abc import Iterable, Mapping, Sequence
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
    InvoiceBalance,
    InvoiceFact,
    MoneyIn,
    MoneyOut,
    StatusPoint,
    allocate,
)
from services.payments.money import shown


@dataclass(frozen=True)
class Touched:
    renter_id: str
    currency: str


Facts = tuple[list[InvoiceFact], list[CreditNoteFact], list[MoneyIn], list[MoneyOut]]


def _keys(touched: Sequence[Touched]) -> tuple[list[str], list[str]]:
    return [t.renter_id for t in touched], [t.currency for t in touched]


_KEYS = "join unnest($1::text[], $2::text[]) as k (renter_id, currency) using (renter_id, currency)"


async def load_facts_many(conn: asyncpg.Connection, touched: Sequence[Touched]) -> dict[Touched, Facts]:
    """Every renter-currency's facts, four statements whatever their number."""
    keys = _keys(touched)
    facts: dict[Touched, Facts] = {t: ([], [], [], []) for t in touched}
    for r in await conn.fetch(
        f"""select renter_id, currency, invoice_id, number, contract_id, exists_at, due_at, period_start,
                   amount_due_minor from payments.invoices {_KEYS}""",
        *keys,
    ):
        facts[Touched(r["renter_id"], r["currency"])][0].append(
            InvoiceFact(
                r["invoice_id"],
                r["number"],
                r["contract_id"],
                r["exists_at"],
                r["due_at"],
                r["period_start"],
                r["amount_due_minor"],
            )
        )
    known = {t: {i.number for i in f[0]} for t, f in facts.items()}
    for r in await conn.fetch(
        f"""select renter_id, currency, credit_note_id, invoice_number, at, total_minor
              from payments.credit_notes {_KEYS}""",
        *keys,
    ):
        t = Touched(r["renter_id"], r["currency"])
        if r["invoice_number"] in known[t]:  # a note waits (unapplied) until its invoice is known here
            facts[t][1].append(CreditNoteFact(r["credit_note_id"], r["invoice_number"], r["at"], r["total_minor"]))
    for r in await conn.fetch(
        f"""select renter_id, currency, source_id, kind, amount_minor, at, reference, order_key
              from payments.money_in {_KEYS}""",
        *keys,
    ):
        facts[Touched(r["renter_id"], r["currency"])][2].append(
            MoneyIn(r["source_id"], r["kind"], r["amount_minor"], r["at"], r["reference"], r["order_key"])
        )
    for r in await conn.fetch(
        f"""select renter_id, currency, source_id, kind, invoice_number, amount_minor, at
              from payments.money_out {_KEYS}""",
        *keys,
    ):
        facts[Touched(r["renter_id"], r["currency"])][3].append(
            MoneyOut(r["source_id"], r["kind"], r["invoice_number"], r["amount_minor"], r["at"])
        )
    return facts


async def lock_books(conn: asyncpg.Connection, touched: Iterable[Touched]) -> list[Touched]:
    """Create and lock the books rows, in one fixed order (no deadlock between batches): two statements."""
    ordered = sorted(set(touched), key=lambda t: (t.renter_id.encode(), t.currency.encode()))
    if not ordered:
        return []
    keys = _keys(ordered)
    await conn.execute(
        "insert into payments.books (renter_id, currency) select * from unnest($1::text[], $2::text[]) "
        "on conflict do nothing",
        *keys,
    )
    await conn.execute(
        f"""select 1 from payments.books {_KEYS}
             order by renter_id collate "C", currency collate "C" for update of books""",
        *keys,
    )
    return ordered


async def recompute_all(
    tx: Tx,
    touched: Iterable[Touched],
    *,
    cause: Envelope[Any] | None,
    at: datetime | Mapping[Touched, datetime],
) -> dict[Touched, Allocation]:
    """Recompute every touched renter-currency's allocation and write what changed, in a fixed number
    of statements whatever their number (a batch of results or events costs what one does). ``at``:
    when the ledger sees the movement — one time for all, or one per renter-currency."""
    conn = tx.conn
    ordered = await lock_books(conn, touched)
    if not ordered:
        return {}
    facts = await load_facts_many(conn, ordered)
    results = {
        t: allocate(invoices, money_in, credit_notes=notes, money_out=money_out)
        for t, (invoices, notes, money_in, money_out) in facts.items()
    }
    await _write_status(tx, ordered, results, cause=cause)
    await _write_applications(conn, ordered, results)
    await _post_totals(tx, ordered, results, cause=cause, at=at)
    known = await refunds.open_rows(conn, [(t.renter_id, t.currency) for t in ordered])
    for t in ordered:
        await refunds.ensure_rows(conn, t.renter_id, t.currency, results[t], known.get((t.renter_id, t.currency), {}))
    return results


async def _write_status(
    tx: Tx, ordered: Sequence[Touched], results: Mapping[Touched, Allocation], *, cause: Envelope[Any] | None
) -> None:
    conn = tx.conn
    rows = {
        (r["renter_id"], r["currency"], r["number"]): r
        for r in await conn.fetch(
            f"""select renter_id, currency, number, amount_due_minor, paid_minor, remaining_minor, status,
                       past_due, revision, as_of from payments.invoice_status {_KEYS}""",
            *_keys(ordered),
        )
    }
    upserts: list[tuple[Any, ...]] = []
    for t in ordered:
        result = results[t]
        for number in sorted(result.invoices):
            balance = result.invoices[number]
            old = rows.get((t.renter_id, t.currency, number))
            past_due = bool(old["past_due"]) and balance.remaining_minor > 0 if old is not None else False
            status = "past_due" if past_due else balance.status
            new = (balance.amount_due_minor, balance.paid_minor, balance.remaining_minor, status)
            if (
                old is not None
                and (old["amount_due_minor"], old["paid_minor"], old["remaining_minor"], old["status"]) == new
            ):
                continue
            revision = 0 if old is None else old["revision"]
            inv = balance.invoice
            # One status per instant that changed the invoice since what was published (as_of: when the facts
            # changed it, not the batch's time — a batch may also hold later facts), the last one with the
            # past-due flag: a reader asking "what remained at T" (payouts' planning, R15) finds it.
            statuses = [
                ((p.amount_due_minor, p.paid_minor, p.remaining_minor, _plain_status(p)), p.at, False)
                for p in _points_to_publish(balance, old)
            ]
            statuses.append((new, balance.changed_at, True))
            for amounts, at, latest in statuses:
                revision += 1
                emit_status(
                    tx,
                    inv.invoice_id,
                    number,
                    inv.contract_id,
                    t.renter_id,
                    t.currency,
                    amounts,
                    revision,
                    cause=cause,
                    at=at,
                    latest=latest,
                )
            upserts.append(
                (inv.invoice_id, number, inv.contract_id, t.renter_id, t.currency, *new, past_due,
                 balance.paid_at, revision, balance.changed_at)
            )  # fmt: skip
    if upserts:
        await conn.execute(
            """insert into payments.invoice_status (invoice_id, number, contract_id, renter_id, currency,
                   amount_due_minor, paid_minor, remaining_minor, status, past_due, paid_at, revision, as_of)
               select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                    $7::bigint[], $8::bigint[], $9::text[], $10::bool[], $11::timestamptz[],
                                    $12::bigint[], $13::timestamptz[])
               on conflict (invoice_id) do update set amount_due_minor = excluded.amount_due_minor,
                   paid_minor = excluded.paid_minor, remaining_minor = excluded.remaining_minor,
                   status = excluded.status, past_due = excluded.past_due, paid_at = excluded.paid_at,
                   revision = excluded.revision, as_of = excluded.as_of, updated_at = now()""",
            *(list(column) for column in zip(*upserts, strict=True)),
        )


def _plain_status(point: StatusPoint) -> str:
    if point.remaining_minor == 0:
        return "paid"
    return "partially_paid" if point.paid_minor > 0 else "open"


def _points_to_publish(balance: InvoiceBalance, old: asyncpg.Record | None) -> list[StatusPoint]:
    """The instants before the invoice's latest state that a status should say (the latest is published on its
    own, with the past-due flag): every point of the history when nothing was published or the history up to
    the last published ``as_of`` changed (a late fact dated before it), else only the points after it."""
    points = list(balance.history[:-1])
    if old is None or old["as_of"] is None:
        return points
    before = [p for p in balance.history if p.at <= old["as_of"]]
    said = (old["amount_due_minor"], old["paid_minor"])
    if before and (before[-1].amount_due_minor, before[-1].paid_minor) == said:
        return [p for p in points if p.at > old["as_of"]]
    return points


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
    latest: bool = True,
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
            latest=latest,
        ),
    )


async def _write_applications(
    conn: asyncpg.Connection, ordered: Sequence[Touched], results: Mapping[Touched, Allocation]
) -> None:
    await conn.execute(
        """delete from payments.applications a using unnest($1::text[], $2::text[]) as k (renter_id, currency)
            where a.renter_id = k.renter_id and a.currency = k.currency""",
        *_keys(ordered),
    )
    records = [
        (t.renter_id, t.currency, seq, a.source_id, a.invoice_number, a.amount_minor, a.at)
        for t in ordered
        for seq, a in enumerate(results[t].applications)
    ]
    if records:
        await conn.copy_records_to_table(
            "applications",
            schema_name="payments",
            records=records,
            columns=["renter_id", "currency", "seq", "source_id", "invoice_number", "amount_minor", "at"],
        )


async def _post_totals(
    tx: Tx,
    ordered: Sequence[Touched],
    results: Mapping[Touched, Allocation],
    *,
    cause: Envelope[Any] | None,
    at: datetime | Mapping[Touched, datetime],
) -> None:
    conn = tx.conn
    books = {
        Touched(r["renter_id"], r["currency"]): r
        for r in await conn.fetch(f"select * from payments.books {_KEYS}", *_keys(ordered))
    }
    specs: list[Any] = []
    entries: list[Entry] = []
    updates: list[tuple[Any, ...]] = []
    for t in ordered:
        result, book = results[t], books[t]  # lock_books creates the rows
        renter_id, currency = t.renter_id, t.currency
        given_back = result.refunded_by_credit_notes_minor + sum(result.money_out_taken.values())
        d_applied = result.applied_minor - book["applied_minor"]
        d_excess = result.credit_note_excess_minor - book["note_excess_minor"]
        d_back = given_back - (book["note_refund_minor"] + book["taken_minor"])
        version = book["version"]
        if d_applied or d_excess or d_back:
            version += 1
            accounts = [
                chart.unapplied(renter_id, currency),
                chart.receivable(renter_id, currency),
                chart.refunds_payable(renter_id, currency),
            ]
            unapplied, receivable, payable = (s.code for s in accounts)

            def units(minor: int, currency: str = currency) -> int:
                return minor_to_ledger(minor, currency)

            entry_id = derive_id("payments.books", renter_id, currency, version)
            entry = build_entry(
                id=entry_id,
                cause_id=entry_id,  # entries are unique per (cause, kind): one batch may move many renters
                kind="payments.applied",
                occurred_at=at if isinstance(at, datetime) else at[t],
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
                specs.extend(accounts)
                entries.append(entry)
        updates.append(
            (renter_id, currency, result.money_in_minor, result.applied_minor, result.credit_balance_minor,
             result.refunded_by_credit_notes_minor, result.credit_note_excess_minor,
             sum(result.money_out_taken.values()), version)
        )  # fmt: skip
    if entries:
        await ensure_accounts(conn, specs)
        # Posted with the rest of the transaction's entries (the money in before them, in one statement:
        # the unapplied floor is checked on the sum).
        tx.post(*entries)
    await conn.execute(
        """update payments.books b set money_in_minor = v.money_in, applied_minor = v.applied,
               credit_minor = v.credit, note_refund_minor = v.note_refund, note_excess_minor = v.note_excess,
               taken_minor = v.taken, version = v.version
             from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::bigint[])
                  as v (renter_id, currency, money_in, applied, credit, note_refund, note_excess, taken, version)
            where b.renter_id = v.renter_id and b.currency = v.currency""",
        *(list(column) for column in zip(*updates, strict=True)),
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
