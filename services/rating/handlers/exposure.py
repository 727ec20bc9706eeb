"""Credit limits (R9): exposure tracked on charges and finalized invoices; crossing the limit emits
``credit.limit_exceeded`` and a suspend request. "Crossing" is a movement that finds the exposure above
the limit in force when the previous movement did not (``over_limit`` is kept with the exposure). An
amendment is checked as a movement of zero (:mod:`services.rating.handlers.contracts`): a limit lowered
below the exposure fires at the amendment; one that takes effect later, at the first movement after that
moment or when the usage watermark passes it (:mod:`services.rating.handlers.watermarks`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from domain.contracts.terms import ContractTerms
from libs.ids import derive_id
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import (
    CreditLimitExceeded,
    InvoiceFinalized,
    InvoicePaymentStatus,
    SuspendRequested,
)
from services.rating import store
from services.rating.domain import limit_crossed
from services.rating.handlers.batch import Batch, add_x3600, display_amount


async def track_exposure(
    batch: Batch,
    contract_id: str,
    terms: ContractTerms | None,
    cause: Envelope[Any],
    uninvoiced_x3600: Decimal,
    invoiced_due: Decimal,
    *,
    at: datetime,
    limit_at: datetime,
    trigger_id: str,
) -> None:
    """Move the contract's exposure; crossing its credit limit upward alerts and asks for a suspension.

    The charge itself is booked either way (R9: nothing is dropped or deferred). ``terms`` is None
    only for an invoice of a contract rating does not know yet: the exposure moves, no limit is known.
    """
    before = await batch.exposure(contract_id)
    invoiced = add_x3600(before.invoiced_due, invoiced_due)
    uninvoiced = add_x3600(before.uninvoiced_x3600, uninvoiced_x3600)
    if terms is None:
        batch.save_exposure(contract_id, store.Exposure(invoiced, uninvoiced, before.over_limit))
        return
    limit = terms.fields_at(limit_at).credit_limit
    exact = store.Exposure(invoiced, uninvoiced).exact
    fires, over = limit_crossed(limit, was_over=before.over_limit, exposure_after=exact)
    batch.save_exposure(contract_id, store.Exposure(invoiced, uninvoiced, over))
    if not fires:
        return
    assert limit is not None
    renter_id, currency = terms.renter_id, terms.currency
    batch.tx.emit(
        topics.BILLING_ALERTS,
        key=contract_id,
        type="credit.limit_exceeded",
        time=at,
        cause=cause,
        event_id=derive_id("credit.limit_exceeded", trigger_id),
        data=CreditLimitExceeded(
            contract_id=contract_id,
            renter_id=renter_id,
            currency=currency,
            credit_limit=limit,
            exposure=display_amount(exact),
            at=at,
        ),
    )
    batch.tx.emit(
        topics.PLATFORM_COMMANDS,
        key=contract_id,
        type="platform.suspend_requested",
        time=at,
        cause=cause,
        event_id=derive_id("platform.suspend_requested", "credit", trigger_id),
        data=SuspendRequested(contract_id=contract_id, renter_id=renter_id, reason="credit_limit_exceeded", at=at),
    )


async def on_invoice(batch: Batch, event: Envelope[Any]) -> None:
    """R9: a finalized invoice moves its period's charges from uninvoiced to invoiced (its amount due)."""
    invoice: InvoiceFinalized = event.data
    conn = batch.tx.conn
    recorded = await store.insert_invoice(
        conn,
        invoice.invoice_id,
        invoice.contract_id,
        invoice.period_start,
        invoice.period_end,
        invoice.amount_due,
    )
    if not recorded or invoice.billing_mode != "postpaid":
        return
    moved_x3600 = await store.mark_invoiced(conn, invoice.contract_id, invoice.period_start)
    terms = await batch.terms_of(invoice.contract_id)
    reported = await store.invoice_remaining(conn, invoice.invoice_id)  # payments may have reported first
    await track_exposure(
        batch,
        invoice.contract_id,
        terms,
        event,
        -moved_x3600,
        invoice.amount_due if reported is None else reported[1],
        at=event.time,
        limit_at=event.time,
        trigger_id=invoice.invoice_id,
    )


async def on_payment_status(batch: Batch, event: Envelope[Any]) -> None:
    """R9/R11: exposure falls by every amount applied — an invoice counts what is still owed on it."""
    status: InvoicePaymentStatus = event.data
    if not status.latest:
        return  # a status about an earlier instant: the exposure follows the invoice's current state only
    conn = batch.tx.conn
    before = await store.invoice_remaining(conn, status.invoice_id)
    if before is not None and before[0] >= status.revision:
        return  # an older or repeated report
    await store.save_invoice_remaining(
        conn, status.invoice_id, status.contract_id, status.revision, status.amount_remaining
    )
    due = await store.invoice_amount_due(conn, status.invoice_id)
    if due is None:
        return  # the invoice is not here yet: it will count its remaining amount when it arrives
    terms = await batch.terms_of(status.contract_id)
    if terms is not None and terms.billing_mode != "postpaid":
        return
    counted = due if before is None else before[1]
    change = status.amount_remaining - counted
    if change == 0:
        return
    await track_exposure(
        batch,
        status.contract_id,
        terms,
        event,
        Decimal(0),
        change,
        at=event.time,
        limit_at=event.time,
        trigger_id=derive_id("payment_status", status.invoice_id, status.revision),
    )
