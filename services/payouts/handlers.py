"""payouts' consumer: one handler for the batch, one transaction. Thin: record the facts, then plan every
tick that may be planned (R15: planning runs at each close, planning time = the tick).

* ``supplier.payee_updated`` (platform): every version is kept; the latest at or before planning applies.
  The account object is stored as sent (the rails need it) and only ever shown masked;
* ``fx.rate`` (platform): kept; planning takes the latest direct pair as of planning time;
* ``statement.finalized`` (invoicing): the month's ``net`` per supplier and currency;
* ``charge.rated`` (rating): the supplier earnings of each allocation-hour, summed per (supplier,
  currency, contract, billing period, month of delivery) — the contract and the period name the invoice
  that bills the hour (one invoice per contract per period, R10), the month says which statement the
  hour's earnings land on (R12);
* ``invoice.finalized`` (invoicing): the invoice of (contract, period) and its total;
* ``invoice.payment_status`` (payments): every revision, with its ``as_of``: what remained at each time,
  and the partition's latest ``payments.watermark`` when it arrived (``after_mark``);
* ``payments.watermark`` (payments, on every partition once it answered a tick): the latest tick
  payments answered is the least over the partitions; a tick is planned only once it is answered, and a
  status counts at a planning only if it came before that tick's watermark;
* ``charges.watermark`` (rating, on every partition of charges.rated.v1): a month's hours are all read
  here once the least watermark over the partitions is past its end; a month is paid out only then, so
  the pay-when-paid earnings held are every hour of it, however far the charges partitions lag;
* ``statements.closed`` (invoicing, on every partition after a month's last statement): the month
  whose statements are all in is the least over the partitions;
* ``clock.ticked``: recorded once ``suppliers.v1`` and ``fx.rates.v1`` are read up to the tick's barrier
  (``Subscription.waits``: a payee or rate published before the tick is seen by its planning). Ticks
  are planned one by one, in order, each at its own planning time,
  once every statement final by the tick is in: a tick before the end of the month after the closed
  one cannot finalize another statement. So a month-closing tick waits for that month's
  ``statements.closed`` — what arrived first (the tick, the statements) changes nothing, nor does a
  backlog of ticks after a crash. A tick older than one already planned (sent again, or by a clock
  that restarted behind) is recorded and plans nothing: planning time never goes back.
* ``saga.compensation_requested`` (saga, ``sagas.v1``): applied once and answered
  (:mod:`services.payouts.compensations`), in event order, after the batch's facts and before its planning;
  ``saga.step`` asking about a payout or its settlement: answered with ``payout.inquiry_answered``
  (:mod:`services.payouts.inquiries`), from the same place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from libs.errors import DomainRuleError
from libs.messaging.consume import Subscription, Tx
from libs.messaging.partitioner import partition_for
from libs.money import currency_exponent
from schemas import topics
from schemas.barrier import watermark_waits
from schemas.envelope import Envelope
from schemas.events import (
    ChargeRated,
    InvoiceFinalized,
    InvoicePaymentStatus,
    SagaEvent,
    StatementFinalized,
    StatementsClosed,
    Watermark,
)
from schemas.inputs import ClockTicked, FxRate, PayeeUpdated, mask_account
from services.payouts import compensations, inquiries, planner, store
from services.payouts.domain.planning import Rate

CONSUMER = "payouts"


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    conn = tx.conn
    ticks: list[datetime] = []
    marks: list[tuple[int, str, datetime]] = []
    paid_marks: dict[int, datetime] | None = None  # payments watermarks, as the batch moves them
    answered = False
    requests: list[Envelope[Any]] = []
    earnings: list[tuple[str, str, str, datetime, str, Decimal]] = []
    charge_marks: list[tuple[int, datetime]] = []
    invoice_marks: list[tuple[int, datetime]] = []
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
            if paid_marks is None:
                paid_marks = await store.payment_marks(conn)
            partition = partition_for(data.contract_id.encode(), topics.INVOICE_PAYMENTS.partitions)  # its key
            await store.save_status(
                conn,
                data.invoice_id,
                data.revision,
                to_minor(data.amount_remaining, data.currency),
                data.as_of,
                paid_marks.get(partition),
            )
            if data.latest:  # a hold is released by the invoice's current state, not by an earlier instant's
                await compensations.on_payment_status(conn, data.invoice_id)
        elif isinstance(data, Watermark) and data.source == "payments":
            if paid_marks is None:
                paid_marks = await store.payment_marks(conn)
            if data.partition not in paid_marks or paid_marks[data.partition] < data.through:
                paid_marks[data.partition] = data.through
                await store.save_payment_mark(conn, data.partition, data.through)
            answered = True
        elif isinstance(data, Watermark) and data.source == "rating":
            charge_marks.append((data.partition, data.through))
        elif isinstance(data, Watermark) and data.source == "invoicing":
            invoice_marks.append((data.partition, data.through))
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
        elif isinstance(data, StatementsClosed):
            marks.append((data.partition, data.month, data.issued_at))
        elif isinstance(data, ClockTicked):
            ticks.append(data.at)
        elif isinstance(data, SagaEvent):
            requests.append(event)
    await store.add_earnings(conn, earnings)
    for request in requests:  # after the batch's facts, before its planning
        await compensations.on_request(tx, request)
        if inquiries.is_question(request):
            await inquiries.answer(tx, request)
    if not ticks and not marks and not answered and not charge_marks and not invoice_marks:
        return
    await store.lock_planning(conn)
    await store.record_ticks(conn, ticks)
    await store.record_statement_marks(conn, marks)
    await store.save_charge_marks(conn, charge_marks)
    await store.save_invoice_marks(conn, invoice_marks)
    closed = await store.closed_month(conn, topics.STATEMENTS_FINALIZED.partitions)
    answered_through = await store.payments_answered(conn, topics.INVOICE_PAYMENTS.partitions)
    rated_through = await store.charges_through(conn, topics.CHARGES_RATED.partitions)
    invoices_through = await store.invoices_read_through(conn, topics.INVOICES_FINALIZED.partitions)
    if closed is None or answered_through is None or rated_through is None or invoices_through is None:
        return  # no month's statements are complete yet, payments answered no tick, no month is rated, or
        # some partition of invoices.finalized.v1 has no close read yet
    closed = min(closed, month_before(rated_through))  # a month is paid once its hours' earnings are read
    # A tick is planned once its invoices are read here too: one not read would count as not issued (R15).
    ready = min(answered_through, invoices_through)
    for at in await store.ticks_before(conn, plannable_before(closed), ready):
        if await store.advance_clock(conn, at) == at:
            await planner.plan_at(tx, at, cause=events[-1])
        # else: a tick older than a planning already done (sent again, read late) changes nothing —
        # planning time never goes back, and the latest plan of a waiting supplier stays the latest.
        await store.mark_planned(conn, at)


def plannable_before(closed_month: str) -> datetime:
    """Ticks before this instant may be planned once every statement of ``closed_month`` is in: the
    next month's statements can only be issued by a tick at or after that month's end (R12, R15)."""
    year, month = (int(x) for x in closed_month.split("-"))
    year, month = (year, month + 2) if month <= 10 else (year + 1, month - 10)
    return datetime(year, month, 1, tzinfo=UTC)


def month_before(at: datetime) -> str:
    """The last calendar month that ends at or before ``at``."""
    year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
    return f"{year:04d}-{month:02d}"


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
        topics.SAGAS,
    ),
    handler=on_batch,
    batch_max=1000,
    # R15 "the latest payee update (and rate) at or before planning": a tick waits until the payees and
    # rates published before it (its barrier) are read, however the partitions race or a worker lagged.
    waits=watermark_waits(topics.CLOCK_TICKS, "clock.ticked", (topics.SUPPLIERS, topics.FX_RATES)),
)
