"""Operators' payment commands (``payments.commands.v1``), applied once per ``command_id`` and
recorded in ``payments.commands`` with who asked, why and what happened.

* ``payment.retry_requested``: an intent that waits (retry scheduled, hard decline, no method, past
  due) gets a try now — the collector sends it. Past R14's seven automatic tries this is an
  operator's override, recorded as such.
* ``payment.refund_requested``: money paid on an invoice given back, capped at what was paid (R11),
  by the allocation; the refund row then goes to the card that paid it (or is ``manual``).
* ``refund.mark_paid_requested``: a ``manual`` refund reported paid over the bank, with the bank's
  reference (:func:`services.payments.refunds.record_paid_by_bank`).
* ``receipt.apply_requested``: a receipt recorded for the wrong renter moves to the right one —
  ``Dr unapplied(from) / Cr unapplied(to)`` — and both renters' allocations are recomputed.
"""

from __future__ import annotations

from typing import Any

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.ledger.postings import build_entry, credit, debit
from libs.messaging.consume import Tx
from libs.money import minor_to_ledger
from schemas.envelope import Envelope
from schemas.events import PaymentCommand
from services.payments import books, collection, refunds, store
from services.payments.config import PaymentsConfig
from services.payments.money import to_minor

RETRYABLE = ("waiting_retry", "hard_declined", "no_method", "past_due")


async def apply(tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: PaymentCommand) -> set[books.Touched]:
    """Apply one command; returns the renter-currencies whose allocation must be recomputed."""
    conn = tx.conn
    claimed = await conn.execute(
        """insert into payments.commands (command_id, type, renter_id, requested_by, reason, at, outcome, event_id)
           values ($1, $2, $3, $4, $5, $6, 'received', $7) on conflict do nothing""",
        data.command_id,
        event.type,
        data.renter_id,
        data.requested_by,
        data.reason,
        event.time,
        event.id,
    )
    if not claimed.endswith("1"):
        return set()  # the same command again: no effect
    touched: set[books.Touched] = set()
    if event.type == "payment.retry_requested":
        outcome = await _retry(tx, config, event, data)
    elif event.type == "payment.refund_requested":
        outcome = await _refund(tx, event, data)
        if outcome.startswith("refund "):
            touched.add(books.Touched(data.renter_id, data.currency))
    elif event.type == "refund.mark_paid_requested":
        outcome = await _refund_paid(tx, event, data)
    else:
        outcome = await _move_receipt(tx, event, data)
    await conn.execute("update payments.commands set outcome = $2 where command_id = $1", data.command_id, outcome)
    return touched


async def _retry(tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: PaymentCommand) -> str:
    conn = tx.conn
    intent = await conn.fetchrow(
        "select * from payments.intents where invoice_number = $1 and renter_id = $2 for update",
        data.invoice_number,
        data.renter_id,
    )
    if intent is None:
        return f"refused: no collection for {data.invoice_number} of {data.renter_id}"
    if intent["state"] not in RETRYABLE:
        return f"refused: the collection is {intent['state']}"
    now = await store.event_now(conn) or event.time
    await store.update_intent(
        conn,
        intent["intent_id"],
        state="waiting_retry",
        next_try_at=now,
        first_try_at=intent["first_try_at"] or now,
        reason=f"operator retry by {data.requested_by}: {data.reason}"[:500],
    )
    created = await collection.start_due(tx, config, now, cause=event)
    return f"retry started ({created} attempt(s))"


async def _refund(tx: Tx, event: Envelope[Any], data: PaymentCommand) -> str:
    conn = tx.conn
    if data.invoice_number is None or data.amount is None:
        return "refused: a refund names an invoice and an amount"
    invoice = await conn.fetchrow(
        "select paid_minor from payments.invoice_status where number = $1 and renter_id = $2 and currency = $3",
        data.invoice_number,
        data.renter_id,
        data.currency,
    )
    amount = to_minor(data.amount, data.currency)
    if invoice is None or amount <= 0:
        return f"refused: nothing paid on {data.invoice_number} for {data.renter_id} in {data.currency}"
    if amount > invoice["paid_minor"]:
        return f"refused: {data.amount} is more than was paid on {data.invoice_number} (R11)"
    await conn.execute(
        """insert into payments.money_out (source_id, renter_id, currency, kind, invoice_number, amount_minor, at,
               event_id)
           values ($1, $2, $3, 'refund', $4, $5, $6, $7) on conflict do nothing""",
        f"refund:{derive_id('refund', data.command_id)}",
        data.renter_id,
        data.currency,
        data.invoice_number,
        amount,
        event.time,
        event.id,
    )
    return f"refund {derive_id('refund', data.command_id)} of {data.amount} {data.currency}"


async def _refund_paid(tx: Tx, event: Envelope[Any], data: PaymentCommand) -> str:
    if data.refund_id is None:
        return "refused: mark paid names a refund"
    return await refunds.record_paid_by_bank(
        tx,
        refund_id=data.refund_id,
        renter_id=data.renter_id,
        currency=data.currency,
        reference=data.reference,
        paid_at=data.paid_at or event.time,
        by=data.requested_by,
    )


async def _move_receipt(tx: Tx, event: Envelope[Any], data: PaymentCommand) -> str:
    conn = tx.conn
    if data.receipt_id is None or data.to_renter_id is None or data.to_renter_id == data.renter_id:
        return "refused: apply names a receipt and another renter"
    row = await conn.fetchrow(
        """update payments.money_in set renter_id = $3, reference = case when $4 = '' then reference else $4 end
            where renter_id = $1 and source_id = $2 and kind = 'receipt' and currency = $5
            returning amount_minor, currency""",
        data.renter_id,
        f"receipt:{data.receipt_id}",
        data.to_renter_id,
        data.reference,
        data.currency,
    )
    if row is None:
        return f"refused: no receipt {data.receipt_id} of {data.renter_id} in {data.currency}"
    currency = row["currency"]
    specs = [chart.unapplied(data.renter_id, currency), chart.unapplied(data.to_renter_id, currency)]
    units = minor_to_ledger(row["amount_minor"], currency)
    entry = build_entry(
        id=derive_id("payments.receipt_moved", data.command_id),
        cause_id=event.id,
        kind="payments.receipt_moved",
        occurred_at=event.time,
        description=f"receipt {data.receipt_id} moved from {data.renter_id} to {data.to_renter_id}: {data.reason}",
        postings=[debit(specs[0].code, units, currency), credit(specs[1].code, units, currency)],
    )
    assert entry is not None
    await ensure_accounts(conn, specs)
    tx.post(entry)
    # The old renter first: its recompute gives the money back to unapplied before the move's debit is
    # checked against the floor; then the new renter's applies it.
    await books.recompute_all(tx, [books.Touched(data.renter_id, currency)], cause=event, at=event.time)
    await books.recompute_all(tx, [books.Touched(data.to_renter_id, currency)], cause=event, at=event.time)
    return f"moved {data.receipt_id} to {data.to_renter_id}"
