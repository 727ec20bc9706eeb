"""payments answers the saga's inquiries about a collection.

The saga asks when a cycle is still unpaid and not past due at its deadline (due + dunning + a margin, in
event time): a ``saga.step`` on ``sagas.v1`` with ``inquiry`` = ``collection``. payments answers from its
own records as they stand when it reads the question — the invoice's status and amounts, its collection
intent (state, tries, next try, last attempt) — or says it has no such invoice (the invoice never reached
payments: an operator looks upstream, not at the processor). The answer is ``collection.answered`` on
``payments.v1``, through the outbox, once per question (its id derives from the question's).

It moves no money and no status: "paid" and "past due" still come only from the status events. What the
answer adds is the reason an operator reads when the saga gives up (``needs_operator``)."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.messaging.consume import Tx
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import CollectionAnswered, SagaEvent
from services.payments import store
from services.payments.money import shown

ASKED = "collection"
"""The ``inquiry`` of a saga step that asks payments."""


def is_question(event: Envelope[Any]) -> bool:
    data = event.data
    return isinstance(data, SagaEvent) and event.type == "saga.step" and data.inquiry == ASKED


async def answer(tx: Tx, event: Envelope[SagaEvent]) -> None:
    """Answer one inquiry (see the module docstring). A question without a renter (a saga that has no
    invoice cannot ask) is answered by nobody: there is no key to answer on."""
    question = event.data
    if question.renter_id is None:
        return
    answer = await _answer(tx.conn, question)
    tx.emit(
        topics.PAYMENTS,
        key=question.renter_id,
        type="collection.answered",
        time=event.time,
        cause=event,
        event_id=derive_id("collection.answered", event.id),
        correlation_id=question.saga_id,
        data=answer,
    )


async def _answer(conn: asyncpg.Connection, question: SagaEvent) -> CollectionAnswered:
    number = question.invoice_number
    base: dict[str, Any] = {
        "saga_id": question.saga_id,
        "invoice_number": number,
        "renter_id": question.renter_id,
        "asked_at": question.at,
    }
    row = await conn.fetchrow(
        """select s.status, s.currency, s.amount_due_minor, s.paid_minor, s.remaining_minor, s.past_due,
                  i.billing_mode, i.due_at
             from payments.invoices i
             left join payments.invoice_status s using (invoice_id)
            where i.number = $1""",
        number,
    )
    if row is None:
        return CollectionAnswered(**base, known=False, detail=await _unknown(conn, number))
    if row["status"] is None:  # stored, not yet allocated (R11 runs in the same batch: not seen in practice)
        return CollectionAnswered(**base, known=True, detail=f"invoice {number} received, not yet allocated")
    currency = row["currency"]
    paid, remaining = shown(row["paid_minor"], currency), shown(row["remaining_minor"], currency)
    due = shown(row["amount_due_minor"], currency)
    parts = [f"{row['status']}: paid {paid} of {due} {currency}, {remaining} remaining"]
    intent = await conn.fetchrow(
        """select t.state, t.tries, t.next_try_at, t.reason,
                  (select a.state || coalesce(' ' || a.code, '') from payments.attempts a
                    where a.intent_id = t.intent_id order by a.try_no desc, a.call_no desc limit 1) as last
             from payments.intents t where t.invoice_number = $1""",
        number,
    )
    if intent is None:
        mode = row["billing_mode"]
        parts.append(
            "no collection: a prepaid invoice (R14 collects postpaid ones; money received or credit pays it)"
            if mode == "prepaid"
            else f"no collection started (due {row['due_at'].date().isoformat()})"
        )
    else:
        what = f"collection {intent['state']} after {intent['tries']} tr{'y' if intent['tries'] == 1 else 'ies'}"
        if intent["last"]:
            what += f", last attempt {intent['last']}"
        if intent["next_try_at"] is not None and intent["state"] == "waiting_retry":
            what += f", next try {intent['next_try_at'].isoformat()}"
        if intent["reason"]:
            what += f" ({intent['reason'][:200]})"
        parts.append(what)
    return CollectionAnswered(
        **base,
        known=True,
        status=row["status"],
        currency=currency,
        amount_paid=paid,
        amount_remaining=remaining,
        collection=intent["state"] if intent is not None else None,
        detail="; ".join(parts)[:2000],
    )


async def _unknown(conn: asyncpg.Connection, number: str) -> str:
    """Why payments has no such invoice, as far as it can tell: how far it has read invoicing's close
    announcements (``invoices.watermark`` on every partition of invoices.finalized.v1, read after the
    invoices before them). An invoice issued at a close up to then was never sent to payments; a later
    one may not be read yet."""
    said = f"payments has no invoice {number}: not received, or not read yet (a lagging consumer)"
    through = store.marked_through(await store.invoice_marks(conn))
    if through is None:
        return f"{said}; it has not read a close announcement of invoicing (invoices.watermark) on every partition"
    return (
        f"{said}; it has read every invoice of invoicing's closes through {through.isoformat()}: "
        "one issued by then never came"
    )
