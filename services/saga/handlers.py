"""The saga worker's consumer: every event that moves a billing cycle, mapped to the saga of its invoice.

* ``invoice.finalized`` (invoicing) starts the saga of a contract billing period;
* ``invoice.payment_status`` (payments): the invoice's status (paid releases the supplier's earnings);
* ``payments.v1`` naming an invoice: ``payment.succeeded``, ``invoice.past_due`` (payments sent the suspend
  request with it — recorded as the saga's step, never sent again), ``payment.refunded``,
  ``payment.disputed``, ``payment.dispute_closed``; ``collection.answered``, payments' answer to the
  collection inquiry (kept for the operator: the reason a cycle that gives up shows);
* ``credit_note.issued`` (invoicing);
* ``clock.ticked``: event time; every open saga whose deadline (or compensation retry) has come moves.

* ``payout.compensation_applied|failed`` (payouts, on ``payouts.v1``): the answer to a compensation request
  (its invoice, kind, ref and attempt) → a ``CompensationResult``.

* ``payout.sent|completed|returned|rejected`` (payouts, on ``payouts.v1``): the payout step of every saga
  whose invoice the payout's earnings come from (``invoice_numbers``); one attempt of a payout is
  ``payout_id@file_id`` (a retry after a return goes out in another file). Followed when
  ``SETTLE_SAGA_FOLLOW_PAYOUTS`` is on.
* ``payout.inquiry_answered`` (payouts, on ``payouts.v1``): the answer to a ``payout`` or ``settlement``
  inquiry, kept for the operator like payments' answer;
* ``payout.planned|held|waiting`` (payouts, on ``payouts.v1``, with the same ``invoice_numbers``): the
  supplier is owed a payout of the invoice's earnings (``PayoutOwed``), so a cycle whose earnings go to
  several suppliers waits for each, even one whose payout is never sent. A waiting plan with reason
  ``nothing_payable`` owes nothing.

The other ``payouts.v1`` events (released, clawback) are not read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from libs.errors import InvalidAmountError, InvalidEventError
from libs.messaging.consume import Subscription, Tx
from libs.money import currency_exponent
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import (
    CollectionAnswered,
    CompensationAnswered,
    CreditNoteIssued,
    InvoiceFinalized,
    InvoicePaymentStatus,
    PaymentEvent,
    PayoutEvent,
    PayoutInquiryAnswered,
)
from schemas.inputs import ClockTicked
from services.saga import domain, store

CONSUMER = "saga"


def to_minor(amount: Decimal, currency: str) -> int:
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidAmountError(f"{amount} has more decimal places than {currency} allows")
    return int(scaled)


def answer_summary(data: CompensationAnswered) -> str:
    """What payouts did, in one line (recorded with the saga's compensation)."""
    parts = [f"{line.supplier_id} {line.action} {line.amount} {line.currency}" for line in data.lines[:20]]
    more = f" (+{len(data.lines) - 20} more)" if len(data.lines) > 20 else ""
    what = "; ".join(parts) or "nothing to act on"
    return ("duplicate of the first application: " if data.duplicate else "") + what + more


def to_input(event: Envelope[Any]) -> tuple[str, domain.Input] | None:
    """(invoice number, saga input) of an event, or None when it moves no saga."""
    data = event.data
    if isinstance(data, InvoiceFinalized):
        return data.number, domain.InvoiceFinalized(
            invoice_id=data.invoice_id,
            number=data.number,
            contract_id=data.contract_id,
            renter_id=data.renter_id,
            currency=data.currency,
            period_start=data.period_start,
            period_end=data.period_end,
            issued_at=data.issued_at,
            due_at=data.due_at,
            amount_due_minor=to_minor(data.amount_due, data.currency),
        )
    if isinstance(data, InvoicePaymentStatus):
        if not data.latest:
            return None  # about an earlier instant (for planning): the saga follows the current state
        return data.number, domain.PaymentStatus(
            revision=data.revision,
            status=data.status,
            amount_paid_minor=to_minor(data.amount_paid, data.currency),
            amount_remaining_minor=to_minor(data.amount_remaining, data.currency),
            at=data.as_of,
        )
    if isinstance(data, CompensationAnswered):
        return data.invoice_number, domain.CompensationResult(
            compensation=data.compensation,
            ref=data.ref,
            attempt=data.attempt,
            ok=data.ok,
            reason=(data.reason or answer_summary(data))[:2000],
            at=data.at,
        )
    if isinstance(data, CollectionAnswered):
        return data.invoice_number, domain.InquiryAnswered(asked_at=data.asked_at, known=data.known, detail=data.detail)
    if isinstance(data, PayoutInquiryAnswered):
        return data.invoice_number, domain.InquiryAnswered(
            inquiry=data.inquiry, asked_at=data.asked_at, known=data.known, detail=data.detail, by="payouts"
        )
    if isinstance(data, CreditNoteIssued):
        # What the note asks of the renter, as payments settles it (R10: the wallet's part is not asked again).
        asked = data.total - data.prepaid_applied
        return data.invoice_number, domain.CreditNote(
            credit_note_id=data.credit_note_id, amount_minor=to_minor(asked, data.currency), at=data.issued_at
        )
    if isinstance(data, PaymentEvent) and data.invoice_number:
        amount = to_minor(data.amount, data.currency)
        match event.type:
            case "payment.succeeded":
                return data.invoice_number, domain.Collected(
                    payment_id=data.payment_id, amount_minor=amount, at=data.at
                )
            case "invoice.past_due":
                return data.invoice_number, domain.PastDue(at=data.at, reason=data.reason)
            case "payment.refunded":
                return data.invoice_number, domain.Refunded(
                    refund_id=data.payment_id, amount_minor=amount, at=data.at, credit_note_id=data.credit_note_id
                )
            case "payment.disputed":
                return data.invoice_number, domain.DisputeOpened(
                    dispute_id=data.payment_id, amount_minor=amount, at=data.at
                )
            case "payment.dispute_closed":
                outcome = data.outcome or _outcome_in_reason(data.reason)
                if outcome is None:  # never guess a loss (it compensates): a dead letter with the reason
                    raise InvalidEventError(
                        f"payment.dispute_closed of {data.payment_id} says neither won nor lost "
                        f"(no outcome; reason {data.reason[:80]!r})"
                    )
                return data.invoice_number, domain.DisputeClosed(
                    dispute_id=data.payment_id, won=outcome == "won", amount_minor=amount, at=data.at
                )
    return None


def _outcome_in_reason(reason: str) -> str | None:
    """How a dispute ended, from a ``payment.dispute_closed`` sent before ``outcome`` existed: payments
    ended its reason with the outcome (``dispute … on INV-… won|lost``)."""
    words = reason.split()
    return words[-1] if words and words[-1] in ("won", "lost") else None


PAYOUT_STEPS = frozenset({"payout.sent", "payout.completed", "payout.returned", "payout.rejected"})
PAYOUT_PLANS = frozenset({"payout.planned", "payout.held", "payout.waiting"})
NOTHING_OWED = frozenset({"nothing_payable"})
"""A waiting plan with this reason owes nothing (the months' net is not positive): no payout will come."""


def payout_inputs(event: Envelope[Any]) -> list[tuple[str, domain.Input]]:
    """The payout step for the saga of every invoice the payout pays (a saga not started yet keeps it,
    like any fact that arrives before its invoice)."""
    data: PayoutEvent = event.data
    if event.type in PAYOUT_PLANS:
        if data.reason in NOTHING_OWED:
            return []
        plan = event.type.removeprefix("payout.") + (f": {data.reason}" if data.reason else "")
        owed = domain.PayoutOwed(supplier_id=data.supplier_id, at=event.time, plan=plan)
        return [(number, owed) for number in sorted(set(data.invoice_numbers))]
    if event.type not in PAYOUT_STEPS:
        return []
    attempt = f"{data.payout_id}@{data.file_id or '-'}"
    fact: domain.Input
    match event.type:
        case "payout.sent":
            fact = domain.PayoutSent(payout_id=attempt, supplier_id=data.supplier_id, at=event.time)
        case "payout.completed":
            fact = domain.PayoutSettled(payout_id=attempt, supplier_id=data.supplier_id, at=event.time)
        case _:
            fact = domain.PayoutReturned(
                payout_id=attempt,
                supplier_id=data.supplier_id,
                reason=f"{event.type.removeprefix('payout.')} {data.return_code or ''}".strip(),
                at=event.time,
            )
    return [(number, fact) for number in sorted(set(data.invoice_numbers))]


async def on_batch(policy: domain.Policy, tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    by_invoice: dict[str, list[tuple[store.Cause, domain.Input]]] = defaultdict(list)
    ticks: list[tuple[store.Cause, datetime]] = []
    for event in events:
        cause = store.Cause(event.id, event.type, event.time, event)
        if isinstance(event.data, ClockTicked):
            ticks.append((cause, event.data.at))
            continue
        if isinstance(event.data, PayoutEvent):
            for number, fact in payout_inputs(event):
                by_invoice[number].append((cause, fact))
            continue
        mapped = to_input(event)
        if mapped is not None:
            number, fact = mapped
            by_invoice[number].append((cause, fact))
    for number in sorted(by_invoice):  # a fixed order: row locks are taken in the same order everywhere
        await store.advance(tx, number, by_invoice[number], policy)
    # Each tick on its own, in event-time order (a lagging worker's batch holds several): a question is asked
    # at the first tick past its deadline, so skipping one would change when its grace ends.
    seen: set[datetime] = set()
    for cause, at in sorted(ticks, key=lambda t: t[1]):
        if at in seen:
            continue
        seen.add(at)
        for number in await store.due_at(tx.conn, at):
            await store.advance(tx, number, [(cause, domain.Tick(at=at))], policy)


def subscription(policy: domain.Policy | Callable[[], domain.Policy]) -> Subscription:
    """The saga's consumer. ``policy``: fixed, or read when each batch runs (the worker's settings are
    read when it runs, never when the module is imported)."""
    source: Callable[[], domain.Policy] = policy if callable(policy) else (lambda: policy)

    async def handle(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
        await on_batch(source(), tx, events)

    return Subscription(
        consumer=CONSUMER,
        topics=(
            topics.INVOICES_FINALIZED,
            topics.INVOICE_PAYMENTS,
            topics.PAYMENTS,
            topics.CREDIT_NOTES_ISSUED,
            topics.CLOCK_TICKS,
            topics.PAYOUTS,
        ),
        handler=handle,
        batch_max=500,
    )
