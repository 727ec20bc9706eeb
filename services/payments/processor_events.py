"""What processors' webhooks (``processor.events.v1``, verified and deduplicated by ``settle run
webhooks``) mean for our books.

* ``processor.payment_succeeded|failed`` naming one of our attempts: an attempt still ``sending`` or
  ``unknown`` is resolved at once (the inquiry schedule would have found the same); a resolved one
  is left alone (webhooks come late, twice and out of order).
* ``processor.dispute_opened``: the processor took the charge back, plus its dispute fee. The
  disputed amount is money out of the invoice (it is owed again, R11 recomputes) —
  ``Dr refunds_payable / Cr processor_clearing``; the fee ``Dr dispute_losses / Cr processor_clearing``.
  Published as ``payment.disputed``.
* ``processor.dispute_closed``: won → the money comes back (``Dr processor_clearing / Cr unapplied``,
  applied to the disputed invoice by its reference); lost → the amount is written off
  (``Dr dispute_losses / Cr unapplied``, applied the same way, so the renter is not dunned for money
  the card network gave back). Published as ``payment.dispute_closed``. Who finally bears a lost
  dispute (platform or supplier) is the saga's policy.
* ``processor.charge_refunded``: the processor's total refunded on one of our collections. What our own
  refunds explain is a confirmation (their effect was posted when each call succeeded); the rest was
  refunded at the processor by someone else and is recorded as a refund already done
  (:func:`_charge_refunded`).
"""

from __future__ import annotations

from typing import Any, Literal

import structlog

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.ledger.postings import build_entry, credit, debit
from libs.messaging.consume import Tx
from libs.money import minor_to_ledger
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import PaymentEvent, ProcessorEventReceived
from services.payments import books, collection, refunds
from services.payments.config import PaymentsConfig
from services.payments.gateways.port import ChargeResult
from services.payments.money import shown

log = structlog.get_logger("settle.payments")


async def apply(
    tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: ProcessorEventReceived
) -> set[books.Touched]:
    if event.type in ("processor.payment_succeeded", "processor.payment_failed"):
        await _attempt_outcome(tx, config, event, data)
        return set()
    if event.type == "processor.dispute_opened":
        return await _dispute_opened(tx, config, event, data)
    if event.type == "processor.dispute_closed":
        return await _dispute_closed(tx, config, event, data)
    if event.type == "processor.charge_refunded":
        return await _charge_refunded(tx, event, data)
    return set()


async def _charge_refunded(tx: Tx, event: Envelope[Any], data: ProcessorEventReceived) -> set[books.Touched]:
    """The processor says how much of one of our collections it has refunded in all. What our own refunds
    of that collection (``succeeded``, or ``sending``: the webhook can beat the call's answer) do not
    explain was refunded at the processor by someone else (its dashboard, its support): recorded as a
    refund already done — money out of the invoice (R11 recomputes), ``Dr refunds_payable / Cr
    processor_clearing``, ``payment.refunded`` — never sent again. Its id derives from the charge and the
    cumulative amount, so the same webhook twice (or out of order, lower) records nothing more. More than
    was paid on the invoice is not applied: logged, and left to reconciliation as a processor line."""
    conn = tx.conn
    charge = await _charge(tx, data)
    if charge is None or data.amount_refunded_minor is None:
        return set()  # not one of our collections (the reconciliation shows it as a processor-only line)
    ours = await conn.fetchval(
        """select coalesce(sum(amount_minor), 0) from payments.refunds
            where attempt_id = $1 and state in ('succeeded', 'sending')""",
        charge["attempt_id"],
    )
    outside = data.amount_refunded_minor - int(ours)
    if outside <= 0:
        return set()  # a confirmation of refunds we sent (posted when each call succeeded)
    cur, invoice = charge["currency"], charge["invoice_number"]
    paid = await conn.fetchval(
        "select paid_minor from payments.invoice_status where number = $1 and renter_id = $2 and currency = $3",
        invoice,
        charge["renter_id"],
        cur,
    )
    if paid is None or outside > paid:
        log.error(
            "processor refund above what was paid on the invoice: not applied",
            attempt_id=charge["attempt_id"],
            invoice=invoice,
            refunded_minor=outside,
            paid_minor=paid,
        )
        return set()
    refund_id = derive_id("refund", "processor", data.gateway, charge["attempt_id"], data.amount_refunded_minor)
    row = {
        "refund_id": refund_id,
        "renter_id": charge["renter_id"],
        "currency": cur,
        "invoice_number": invoice,
        "amount_minor": outside,
        "at": event.time,
        "reason": "refunded at the processor",
        "gateway": data.gateway,
    }
    inserted = await conn.execute(
        """insert into payments.refunds (refund_id, renter_id, currency, invoice_number, amount_minor, at, reason,
               attempt_id, gateway, idempotency_key, state, charge_id, processor_id, message)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'succeeded', $11, $12, $13) on conflict do nothing""",
        refund_id,
        charge["renter_id"],
        cur,
        invoice,
        outside,
        event.time,
        row["reason"],
        charge["attempt_id"],
        data.gateway,
        derive_id("idempotency", "refund", refund_id),
        data.charge_id,
        data.object_id,
        f"seen in {data.processor_type} {data.processor_event_id}; never sent by us",
    )
    if not inserted.endswith("1"):
        return set()
    # Money out of the invoice under the refund's own id: the allocation's refund row for it is this one.
    await _money_out(tx, "refund", refund_id, charge, outside, event)
    clearing = chart.processor_clearing(data.gateway, cur)
    await ensure_accounts(conn, [chart.refunds_payable(charge["renter_id"], cur), clearing])
    refunds.book(
        tx,
        row,
        clearing,
        entry_id=derive_id("payments.refunded", refund_id),
        kind="payments.refunded",
        at=event.time,
        description=f"refund {refund_id} of {invoice} made at {data.gateway} ({data.object_id})",
    )
    return {books.Touched(charge["renter_id"], cur)}


async def _attempt_outcome(tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: ProcessorEventReceived) -> None:
    if data.attempt_id is None:
        return
    state = await tx.conn.fetchval("select state from payments.attempts where attempt_id = $1", data.attempt_id)
    if state not in ("sending", "unknown"):
        return
    if event.type == "processor.payment_succeeded":
        result = ChargeResult("succeeded", charge_id=data.charge_id or data.payment_id, message="webhook")
    else:
        result = ChargeResult("declined", code=(data.decline_code or "").split("/")[-1] or None, message="webhook")
    circuits = collection.Circuits()
    await collection.record_result(tx, config, data.attempt_id, result, circuits=circuits, inquiry=False)
    # Rare (a webhook that overtook our own answer): noted in the consumer's transaction.
    await collection.note_circuits(tx.conn, circuits, config)


async def _charge(tx: Tx, data: ProcessorEventReceived) -> Any:
    return await tx.conn.fetchrow(
        """select a.attempt_id, a.gateway, a.currency, t.renter_id, t.invoice_number, t.contract_id
             from payments.attempts a join payments.intents t using (intent_id)
            where a.state = 'succeeded' and a.gateway = $1
              and (a.charge_id = $2 or a.charge_id = $3 or a.attempt_id = $4)
            order by a.attempt_id limit 1""",
        data.gateway,
        data.charge_id,
        data.payment_id,
        data.attempt_id,
    )


async def _money_out(tx: Tx, kind: str, ref: str, charge: Any, amount_minor: int, event: Envelope[Any]) -> None:
    """Money taken out of a collected invoice (``<kind>:<ref>``, once): R11's allocation gives it back."""
    await tx.conn.execute(
        """insert into payments.money_out (source_id, renter_id, currency, kind, invoice_number, amount_minor, at,
               event_id)
           values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing""",
        f"{kind}:{ref}",
        charge["renter_id"],
        charge["currency"],
        kind,
        charge["invoice_number"],
        amount_minor,
        event.time,
        event.id,
    )


def entry_id(kind: str, entry_key: str) -> str:
    """The ledger entry a processor event posts (``dispute_loss`` of a dispute id, …): derived, so a check
    can find it (``settle sagas verify``)."""
    return derive_id("payments", kind, entry_key)


def _post(tx: Tx, entry_key: str, kind: str, event: Envelope[Any], text: str, debit_code: str, credit_code: str,
          amount_minor: int, currency: str) -> None:  # fmt: skip
    units = minor_to_ledger(amount_minor, currency)
    entry = build_entry(
        id=entry_id(kind, entry_key),
        cause_id=event.id,
        kind=f"payments.{kind}",
        occurred_at=event.time,
        description=text,
        postings=[debit(debit_code, units, currency), credit(credit_code, units, currency)],
    )
    if entry is not None:
        tx.post(entry)


async def _dispute_opened(
    tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: ProcessorEventReceived
) -> set[books.Touched]:
    conn = tx.conn
    charge = await _charge(tx, data)
    dispute_id = data.dispute_id or data.object_id
    if charge is None:
        return set()  # not one of our collections (the reconciliation shows it as a processor-only line)
    cur = charge["currency"]
    fee = config.dispute_fee_minor
    inserted = await conn.execute(
        """insert into payments.disputes (dispute_id, attempt_id, charge_id, gateway, renter_id, currency,
               invoice_number, amount_minor, fee_minor, state, opened_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10) on conflict do nothing""",
        dispute_id,
        charge["attempt_id"],
        data.charge_id or "",
        data.gateway,
        charge["renter_id"],
        cur,
        charge["invoice_number"],
        data.amount_minor,
        fee,
        event.time,
    )
    if not inserted.endswith("1"):
        return set()
    await _money_out(tx, "dispute", dispute_id, charge, data.amount_minor, event)
    payable = chart.refunds_payable(charge["renter_id"], cur)
    clearing = chart.processor_clearing(data.gateway, cur)
    losses = chart.dispute_losses(cur)
    await ensure_accounts(conn, [payable, clearing, losses])
    text = f"dispute {dispute_id} on {charge['invoice_number']} ({data.dispute_reason or 'no reason given'})"
    _post(tx, dispute_id, "dispute_withdrawn", event, text, payable.code, clearing.code, data.amount_minor, cur)
    if fee:
        _post(tx, dispute_id, "dispute_fee", event, text + ": fee", losses.code, clearing.code, fee, cur)
    _emit(tx, "payment.disputed", event, dispute_id, charge, data.amount_minor, text)
    return {books.Touched(charge["renter_id"], cur)}


async def _dispute_closed(
    tx: Tx, config: PaymentsConfig, event: Envelope[Any], data: ProcessorEventReceived
) -> set[books.Touched]:
    conn = tx.conn
    dispute_id = data.dispute_id or data.object_id
    status: Literal["won", "lost"] = "won" if (data.dispute_status or data.status) == "won" else "lost"
    touched: set[books.Touched] = set()
    if not await conn.fetchval("select 1 from payments.disputes where dispute_id = $1", dispute_id):
        # Webhooks arrive out of order: a close before its opening opens it first (the close carries the
        # same charge and amount); the late ``dispute_opened`` then finds it and changes nothing.
        touched |= await _dispute_opened(tx, config, event, data)
    row = await conn.fetchrow(
        """update payments.disputes set state = $2, closed_at = $3 where dispute_id = $1 and state = 'open'
            returning *""",
        dispute_id,
        status,
        event.time,
    )
    if row is None:
        return touched  # not one of our charges, or already closed (a repeat)
    cur = row["currency"]
    kind = "dispute_reversal" if status == "won" else "dispute_loss"
    await conn.execute(
        """insert into payments.money_in (renter_id, source_id, currency, kind, amount_minor, at, reference, order_key,
               gateway, event_id)
           values ($1, $2, $3, $4, $5, $6, $7, $2, $8, $9) on conflict do nothing""",
        row["renter_id"],
        f"{kind}:{dispute_id}",
        cur,
        kind,
        row["amount_minor"],
        event.time,
        row["invoice_number"],
        row["gateway"],
        event.id,
    )
    unapplied = chart.unapplied(row["renter_id"], cur)
    source = chart.processor_clearing(row["gateway"], cur) if status == "won" else chart.dispute_losses(cur)
    await ensure_accounts(conn, [unapplied, source])
    text = f"dispute {dispute_id} on {row['invoice_number']} {status}"
    _post(tx, dispute_id, kind, event, text, source.code, unapplied.code, row["amount_minor"], cur)
    _emit(tx, "payment.dispute_closed", event, dispute_id, dict(row), row["amount_minor"], text, outcome=status)
    return touched | {books.Touched(row["renter_id"], cur)}


def _emit(
    tx: Tx,
    type: str,
    event: Envelope[Any],
    dispute_id: str,
    charge: Any,
    amount: int,
    text: str,
    outcome: Literal["won", "lost"] | None = None,
) -> None:
    tx.emit(
        topics.PAYMENTS,
        key=charge["renter_id"],
        type=type,
        time=event.time,
        cause=event,
        event_id=derive_id(type, dispute_id),
        data=PaymentEvent(
            payment_id=dispute_id,
            renter_id=charge["renter_id"],
            currency=charge["currency"],
            amount=shown(amount, charge["currency"]),
            invoice_number=charge["invoice_number"],
            contract_id=charge.get("contract_id") if isinstance(charge, dict) else charge["contract_id"],
            gateway=charge["gateway"],
            at=event.time,
            reason=text[:500],
            outcome=outcome,
        ),
    )
