"""payments' consumer: one handler for the batch, one transaction. Thin: store the facts, recompute the
allocation of every renter-currency the batch touched (R11), start collections that fell due (R14).

* ``invoice.finalized`` / ``credit_note.issued`` (invoicing): facts of the allocation;
* ``payment.received`` (platform): money in — ``Dr cash_clearing / Cr renter unapplied`` — once per
  (``renter_id``, ``receipt_id``); a repeat has no effect;
* ``payment_method.attached|detached`` (platform): the renter's methods; a new method lifts a hard
  decline's stop (R14);
* ``payment.retry_requested|refund_requested``, ``receipt.apply_requested`` (operators,
  :mod:`services.payments.commands`);
* ``processor.*`` (webhooks, :mod:`services.payments.processor_events`): outcomes of our attempts
  (an unknown attempt resolved without waiting for the next inquiry), refunds, disputes;
* ``saga.step`` asking about a collection (saga, ``sagas.v1``): answered with ``collection.answered``
  (:mod:`services.payments.inquiries`); every other saga event is read and ignored;
* ``clock.ticked``: event time for payments — every postpaid invoice due by then gets its intent and
  first try, every retry that fell due its next try (the collector sends them). A tick waits until
  receipts and methods are read up to its barrier (published before the tick: applied before it is
  answered), and is answered only once invoicing's ``invoices.watermark`` at or past it came from every
  partition of invoices.finalized.v1 (the invoices of its close are read; before any such mark, at once);
  then ``payments.watermark`` goes to every partition of invoices.payments.v1, after the statuses of what
  came before, so payouts knows which statuses came before it (R15: only money applied at or before
  planning releases anything). Several ticks in one batch are answered one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.messaging.consume import Subscription, Tx
from schemas import topics
from schemas.barrier import watermark_waits
from schemas.envelope import Envelope
from schemas.events import (
    CreditNoteIssued,
    InvoiceFinalized,
    PaymentCommand,
    PaymentEvent,
    ProcessorEventReceived,
    SagaEvent,
    Watermark,
)
from schemas.inputs import ClockTicked, PaymentMethodEvent, PaymentReceived
from services.payments import books, collection, commands, inquiries, processor_events, store
from services.payments.config import PaymentsConfig
from services.payments.money import to_minor

CONSUMER = "payments"


async def on_batch(config: PaymentsConfig, tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    conn = tx.conn
    touched: set[books.Touched] = set()
    invoices_added = False  # or a default method attached: what is due may start without another tick
    last = events[-1]

    async def recompute_touched() -> None:
        """The allocation as of the facts so far (R11), before a step that must see it."""
        nonlocal touched
        if touched:
            await books.recompute_all(tx, touched, cause=last, at=last.time)
            touched = set()

    for event in events:
        data = event.data
        if isinstance(data, InvoiceFinalized):
            await conn.execute(
                """insert into payments.invoices (invoice_id, number, contract_id, renter_id, currency, billing_mode,
                       period_start, exists_at, issued_at, due_at, amount_due_minor, event_id)
                   values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) on conflict do nothing""",
                data.invoice_id,
                data.number,
                data.contract_id,
                data.renter_id,
                data.currency,
                data.billing_mode,
                data.period_start,
                data.period_end,
                data.issued_at,
                data.due_at,
                to_minor(data.amount_due, data.currency),
                event.id,
            )
            touched.add(books.Touched(data.renter_id, data.currency))
            invoices_added = True
        elif isinstance(data, CreditNoteIssued):
            await conn.execute(
                """insert into payments.credit_notes (credit_note_id, invoice_number, renter_id, currency, at,
                       total_minor, event_id)
                   values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing""",
                data.credit_note_id,
                data.invoice_number,
                data.renter_id,
                data.currency,
                data.issued_at,
                to_minor(data.total - data.prepaid_applied, data.currency),  # R10: the wallet's part is paid
                event.id,
            )
            touched.add(books.Touched(data.renter_id, data.currency))
        elif isinstance(data, PaymentReceived):
            if await _receipt(tx, event, data):
                touched.add(books.Touched(data.renter_id, data.currency))
        elif isinstance(data, PaymentMethodEvent):
            if await _method(tx, event, data):
                invoices_added = True  # intents without a method (or hard declined) may start now
        elif isinstance(data, PaymentCommand):
            await recompute_touched()  # commands see the allocation as of the facts before them in the batch
            touched |= await commands.apply(tx, config, event, data)
        elif isinstance(data, ProcessorEventReceived):
            touched |= await processor_events.apply(tx, config, event, data)
        elif isinstance(data, SagaEvent):
            if inquiries.is_question(event):
                await recompute_touched()  # the answer tells the allocation as of the facts before the question
                await inquiries.answer(tx, event)
        elif isinstance(data, ClockTicked | Watermark):
            # Each tick on its own, in order, once invoicing's mark says its close is read: the statuses of
            # what came before, then its collections and its watermark (several ticks in one batch — a
            # lagging worker — answer as one at a time would).
            await recompute_touched()
            if isinstance(data, ClockTicked):
                await store.queue_tick(conn, data.at)
            else:
                await store.save_invoice_mark(conn, data.partition, data.through)
            await _answer_ticks(tx, config, event)
    await recompute_touched()
    if invoices_added and (now := await store.event_now(conn)) is not None:
        # An invoice read after a tick that made it due (a worker that lagged on invoices.finalized.v1 but
        # not on the clock) starts now, on its due date, as if read before the tick: lag changes nothing.
        await collection.start_due(tx, config, now, cause=last)


async def _answer_ticks(tx: Tx, config: PaymentsConfig, cause: Envelope[Any]) -> None:
    """Answer every queued tick whose close invoicing has announced (``invoices.watermark`` at or past it
    from every partition of invoices.finalized.v1), in order: event time moves on (never back), whatever
    fell due by then starts, and ``payments.watermark`` tells every partition of invoices.payments.v1 that
    the statuses before it are out — including those of the invoices that tick's close issued, so their
    money (credit balance applied at issue, R11) counts at that tick's planning (R15). Before invoicing
    sent any mark (payments without invoicing upstream), a tick is answered when it is read."""
    marks = await store.invoice_marks(tx.conn)
    ready = store.marked_through(marks)
    if marks and ready is None:
        return  # some partition has not announced a close yet
    # no mark at all: no invoicing upstream yet, nothing to wait for (ready None answers every tick)
    for at in await store.ticks_to_answer(tx.conn, ready):
        await _answer_tick(tx, config, cause, at)


async def _answer_tick(tx: Tx, config: PaymentsConfig, event: Envelope[Any], at: datetime) -> None:
    await store.advance_clock(tx.conn, at)
    now = await store.event_now(tx.conn)
    assert now is not None
    await collection.start_due(tx, config, now, cause=event)
    await tx.conn.execute("insert into payments.ticks_collecting (at) values ($1) on conflict do nothing", at)
    await collection.release_marks(tx, cause=event)


async def _receipt(tx: Tx, event: Envelope[Any], data: PaymentReceived) -> bool:
    conn = tx.conn
    amount = to_minor(data.amount, data.currency)
    status = await conn.execute(
        """insert into payments.money_in (renter_id, source_id, currency, kind, amount_minor, at, reference,
               order_key, rail, event_id)
           values ($1, $2, $3, 'receipt', $4, $5, $6, $7, $8, $9) on conflict do nothing""",
        data.renter_id,
        f"receipt:{data.receipt_id}",
        data.currency,
        amount,
        data.received_at,
        data.reference,
        data.receipt_id,
        data.rail,
        event.id,
    )
    if not status.endswith("1"):
        return False  # R11: a repeated (renter_id, receipt_id) has no effect
    entry, specs = books.money_in_entry(
        entry_id=derive_id("payments.received", data.renter_id, data.receipt_id),
        cause_id=event.id,
        renter_id=data.renter_id,
        currency=data.currency,
        amount_minor=amount,
        at=data.received_at,
        gateway=None,
    )
    await ensure_accounts(conn, specs)
    tx.post(entry)
    tx.emit(
        topics.PAYMENTS,
        key=data.renter_id,
        type="receipt.recorded",
        time=data.received_at,
        cause=event,
        event_id=derive_id("receipt.recorded", data.renter_id, data.receipt_id),
        data=PaymentEvent(
            payment_id=data.receipt_id,
            renter_id=data.renter_id,
            currency=data.currency,
            amount=data.amount,
            at=data.received_at,
            reason=f"{data.rail} received",
        ),
    )
    return True


async def _method(tx: Tx, event: Envelope[Any], data: PaymentMethodEvent) -> bool:
    """Store the method; True when it became a renter's default (intents waiting for one may go now)."""
    attached = event.type == "payment_method.attached"
    won = await store.save_method(
        tx.conn,
        {
            "renter_id": data.renter_id,
            "method_id": data.method_id,
            "kind": data.kind,
            "token": data.gateway_token,
            "currency": data.currency,
            "is_default": data.default,
            "attached": attached,
            "at": event.time,
            "event_id": event.id,
        },
    )
    if not won:
        return False
    # R14: a hard decline stops retries until the method changes; a renter without a method gets one. A new
    # default changes it, and so does detaching the declined default when an older default remains.
    new_default = attached and data.default
    resumed = await store.resume_on_method_change(
        tx.conn, data.renter_id, data.currency, event.time, waiting_for_one=new_default
    )
    return resumed > 0 or new_default


def subscription(config: PaymentsConfig) -> Subscription:
    return Subscription(
        consumer=CONSUMER,
        topics=(
            topics.INVOICES_FINALIZED,
            topics.CREDIT_NOTES_ISSUED,
            topics.PAYMENTS_RECEIVED,
            topics.PAYMENT_METHODS,
            topics.CLOCK_TICKS,
            topics.PAYMENT_COMMANDS,
            topics.PROCESSOR_EVENTS,
            topics.SAGAS,
        ),
        handler=partial(on_batch, config),
        batch_max=500,
        # No key holds: R11 applies receipts in event time whatever their arrival order, so a bad receipt (no
        # effect, dead-lettered) does not stop the renter's later ones.
        # A tick is answered only once money published before it is read (its barrier).
        waits=watermark_waits(topics.CLOCK_TICKS, "clock.ticked", (topics.PAYMENTS_RECEIVED, topics.PAYMENT_METHODS)),
    )
