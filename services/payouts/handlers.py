"""payouts' consumer: one handler for the batch, one transaction. Thin: record the facts, then plan when
time moved (a tick) or a statement arrived (R15: planning runs at each close, planning time = the tick).

* ``supplier.payee_updated`` (platform): every version is kept; the latest at or before planning applies.
  The account object is stored as sent (the rails need it) and only ever shown masked;
* ``fx.rate`` (platform): kept; planning takes the latest direct pair as of planning time;
* ``statement.finalized`` (invoicing): the month's ``net`` per supplier and currency;
* ``charge.rated`` (rating): the supplier earnings of each allocation-hour, summed per (supplier,
  currency, contract, billing period, month of delivery) — the contract and the period name the invoice
  that bills the hour (one invoice per contract per period, R10), the month says which statement the
  hour's earnings land on (R12);
* ``invoice.finalized`` (invoicing): the invoice of (contract, period) and its total;
* ``invoice.payment_status`` (payments): every revision, with its ``as_of``: what remained at each time;
* ``clock.ticked``: planning time moves to the tick; plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from libs.errors import DomainRuleError
from libs.messaging.consume import Subscription, Tx
from libs.money import currency_exponent
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import ChargeRated, InvoiceFinalized, InvoicePaymentStatus, StatementFinalized
from schemas.inputs import ClockTicked, FxRate, PayeeUpdated, mask_account
from services.payouts import planner, store
from services.payouts.domain.planning import Rate

CONSUMER = "payouts"


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    conn = tx.conn
    ticks: list[datetime] = []
    statements = False
    earnings: list[tuple[str, str, str, datetime, str, Decimal]] = []
    for event in events:
        data = event.data
        if isinstance(data, ChargeRated):
            if data.earning_x3600 != 0:
                earnings.append(
                    (
                        data.supplier_id,
                        data.currency,
                        data.contract_id,
                        data.period_start,
                        month_of(data.hour_start),
                        data.earning_x3600,
                    )
                )
        elif isinstance(data, InvoicePaymentStatus):
            await store.save_status(
                conn, data.invoice_id, data.revision, to_minor(data.amount_remaining, data.currency), data.as_of
            )
        elif isinstance(data, InvoiceFinalized):
            await store.save_invoice(
                conn,
                (
                    data.invoice_id,
                    data.number,
                    data.contract_id,
                    data.period_start,
                    data.currency,
                    to_minor(data.total, data.currency),
                    to_minor(data.amount_due, data.currency),
                    data.issued_at,
                ),
            )
        elif isinstance(data, StatementFinalized):
            await store.save_statement(
                conn,
                (
                    data.statement_id,
                    data.number,
                    data.supplier_id,
                    data.currency,
                    data.month,
                    to_minor(data.net, data.currency),
                    data.issued_at,
                ),
            )
            statements = True
        elif isinstance(data, PayeeUpdated):
            await store.save_payee(
                conn,
                {
                    "event_id": event.id,
                    "supplier_id": data.supplier_id,
                    "at": event.time,
                    "payout_currency": data.payout_currency,
                    "rail": data.rail,
                    "account": dict(data.account),
                    "account_masked": mask_account(data.rail, dict(data.account)),
                    "minimum_payout": data.minimum_payout,
                    "pay_when_paid": data.pay_when_paid,
                    "on_hold": data.on_hold,
                    "fallback_rail": data.fallback_rail,  # R16 (payout files)
                },
            )
        elif isinstance(data, FxRate):
            await store.save_rate(
                conn, Rate(data.rate_id, data.base, data.quote, Fraction(data.rate), data.as_of), event.id
            )
        elif isinstance(data, ClockTicked):
            ticks.append(data.at)
    await store.add_earnings(conn, earnings)
    if ticks:
        now: datetime | None = await store.advance_clock(conn, max(ticks))
    elif statements:
        now = await store.lock_clock(conn)  # a statement issued by the last tick is planned at that tick
    else:
        return
    if now is not None:  # the clock row is locked: one planning at a time
        await planner.plan_at(tx, now, cause=events[-1])


def to_minor(amount: Decimal, currency: str) -> int:
    """A document amount (at most the currency's digits) in minor units, exactly."""
    scaled = Fraction(amount) * 10 ** currency_exponent(currency)
    if scaled.denominator != 1:
        raise DomainRuleError(f"{amount} has more decimal places than {currency} has minor digits")
    return int(scaled)


def month_of(at: datetime) -> str:
    """The calendar month (UTC) an hour's earnings land on (R12)."""
    return f"{at.year:04d}-{at.month:02d}"


SUBSCRIPTION = Subscription(
    consumer=CONSUMER,
    topics=(
        topics.SUPPLIERS,
        topics.FX_RATES,
        topics.STATEMENTS_FINALIZED,
        topics.CHARGES_RATED,
        topics.INVOICES_FINALIZED,
        topics.INVOICE_PAYMENTS,
        topics.CLOCK_TICKS,
    ),
    handler=on_batch,
    batch_max=1000,
)
