"""payouts acts on the saga's compensation requests (``saga.compensation_requested`` on ``sagas.v1``) and
answers each one on ``payouts.v1`` (``payout.compensation_applied`` / ``payout.compensation_failed``, key
``saga_id``), in the payouts consumer's batch transaction (inbox, state, ledger, outbox commit together).

Once: a request id (the saga derives it from saga, kind, ref and attempt) is answered once
(``payouts.compensation_requests``); a (kind, ref) is applied once, whatever the attempt
(``payouts.compensations_applied``): a retried attempt is answered ``applied`` with ``duplicate`` set and the
first application's lines.

* ``hold_earnings`` (ref: invoice number): every supplier's earnings tied to the invoice are held from
  payouts until a payment status shows the invoice paid (``payouts.earnings_holds``; planning holds all of E
  while active). No ledger entry: held earnings stay in the supplier's payable.
* ``clawback`` (ref: refund / credit note id) and ``reverse_supplier_share`` (ref: dispute id): each supplier's
  share (:func:`services.payouts.domain.compensations.supplier_share`) becomes a ``payout.clawback`` for its
  next statement (invoicing puts it on the statement of the request's month, or the next open one) and one
  ledger entry::

      Dr platform supplier_clawbacks_receivable:C     share
      Cr platform supplier_clawbacks:C                share   (clawback: a recovery of cost of revenue)
         or platform dispute_losses:C                         (reverse_supplier_share: the supplier bears its
                                                               share of the loss payments wrote off)

  The statement that carries the line settles the receivable against the supplier's payable (invoicing's
  statement entry: Dr supplier payable / Cr supplier_clawbacks_receivable), so the next payout is smaller.
* ``reverse_revenue`` (ref: dispute id): acknowledged with nothing posted. Payments already posted the lost
  dispute (Dr dispute_losses / Cr the renter's unapplied, the invoice counting as paid): reversing revenue as
  well would take the same money out of the books twice (README, "Compensations applied").

A request payouts cannot apply yet (its invoice not seen, no amount) is answered ``failed`` with the reason and
not recorded as applied: the saga retries it with a new attempt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import asyncpg
import structlog

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, build_entry, credit, debit, ensure_accounts
from libs.messaging.consume import Tx
from libs.money import currency_exponent, format_minor, minor_to_ledger, round_minor
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import CompensationAnswered, CompensationLine, PayoutClawback, SagaEvent
from services.payouts.domain.compensations import SagaHold, supplier_share
from services.payouts.domain.planning import InvoiceRef

Action = Literal["held", "clawed_back", "nothing"]
log = structlog.get_logger("settle.payouts.compensations")

REVERSE_REVENUE_NOTE = (
    "no posting: payments already wrote the lost dispute off to dispute_losses; a revenue reversal would count it twice"
)


def month_of(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def _minor(amount: Decimal, currency: str) -> int:
    scaled = Fraction(amount) * 10 ** currency_exponent(currency)
    if scaled.denominator != 1:
        raise ValueError(f"{amount} has more decimal places than {currency}")
    return int(scaled)


def clawback_entry(
    *, clawback_id: str, kind: str, supplier_id: str, currency: str, amount_minor: int, at: datetime
) -> tuple[Entry, list[AccountSpec]]:
    """Dr supplier_clawbacks_receivable / Cr supplier_clawbacks (or dispute_losses), pure."""
    assert amount_minor > 0
    receivable = chart.supplier_clawbacks_receivable(currency)
    source = chart.dispute_losses(currency) if kind == "reverse_supplier_share" else chart.supplier_clawbacks(currency)
    units = minor_to_ledger(amount_minor, currency)
    entry = build_entry(
        id=derive_id("entry", "payout.clawback", clawback_id),
        cause_id=clawback_id,
        kind="payout.clawback",
        occurred_at=at,
        postings=[debit(receivable.code, units, currency), credit(source.code, units, currency)],
        description=f"R15 {kind} of {supplier_id}'s earnings ({clawback_id})",
    )
    assert entry is not None
    return entry, [receivable, source]


async def _invoice(conn: asyncpg.Connection, number: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """select invoice_id, number, contract_id, period_start, currency, total_minor
             from payouts.invoices where number = $1 order by invoice_id limit 1""",
        number,
    )


async def _earnings(conn: asyncpg.Connection, contract_id: str, period_start: datetime) -> list[tuple[str, str, int]]:
    """(supplier, currency, E) of every supplier with earnings tied to the invoice: every known month, summed
    exactly and rounded once (R6)."""
    rows = await conn.fetch(
        """select supplier_id, currency, sum(earning_x3600) as x from payouts.invoice_earnings
            where contract_id = $1 and period_start = $2 group by 1, 2 order by 1, 2""",
        contract_id,
        period_start,
    )
    return [(r["supplier_id"], r["currency"], round_minor(Fraction(r["x"]) / 3600, r["currency"])) for r in rows]


def _line(supplier_id: str, currency: str, action: Action, amount_minor: int) -> CompensationLine:
    return CompensationLine(
        supplier_id=supplier_id,
        currency=currency,
        action=action,
        amount=Decimal(format_minor(amount_minor, currency)),
    )


async def paid_since(conn: asyncpg.Connection, invoice_id: str) -> datetime | None:
    """When the invoice last became paid — the earliest ``as_of`` of the statuses with nothing remaining since
    the last one with something remaining (by revision) — or None while the latest status has something
    remaining (or there is none). Payments publishes a status per instant that changed the invoice, so this
    is when the money covered it, not the instant of a later change that left it paid (a refund of a credit
    note, say)."""
    value: datetime | None = await conn.fetchval(
        """with s as (select revision, remaining_minor, as_of from payouts.invoice_status where invoice_id = $1)
           select min(as_of) from s
            where revision > coalesce((select max(revision) from s where remaining_minor > 0), 0)""",
        invoice_id,
    )
    return value


async def _hold(
    conn: asyncpg.Connection, request_id: str, invoice: asyncpg.Record, at: datetime
) -> list[CompensationLine]:
    paid = await paid_since(conn, invoice["invoice_id"])
    # already paid (the status came first): released from the hold's own time — it never holds anything
    released_at = max(at, paid) if paid is not None else None
    await conn.execute(
        """insert into payouts.earnings_holds (invoice_id, number, contract_id, period_start, held_at, released_at,
               request_id) values ($1, $2, $3, $4, $5, $6, $7) on conflict (invoice_id) do nothing""",
        invoice["invoice_id"],
        invoice["number"],
        invoice["contract_id"],
        invoice["period_start"],
        at,
        released_at,
        request_id,
    )
    return [
        _line(s, c, "held", max(e, 0))
        for s, c, e in await _earnings(conn, invoice["contract_id"], invoice["period_start"])
    ]


async def _claw(
    tx: Tx, event: Envelope[Any], data: SagaEvent, invoice: asyncpg.Record, refunded_minor: int
) -> list[CompensationLine]:
    conn = tx.conn
    assert data.compensation in ("clawback", "reverse_supplier_share") and data.ref is not None
    kind, ref = data.compensation, data.ref
    lines: list[CompensationLine] = []
    for supplier_id, currency, e_minor in await _earnings(conn, invoice["contract_id"], invoice["period_start"]):
        before = int(
            await conn.fetchval(
                """select coalesce(sum(amount_minor), 0) from payouts.clawbacks
                    where invoice_id = $1 and supplier_id = $2 and currency = $3""",
                invoice["invoice_id"],
                supplier_id,
                currency,
            )
        )
        share = supplier_share(e_minor, refunded_minor, invoice["total_minor"], before)
        if share <= 0:
            lines.append(_line(supplier_id, currency, "nothing", 0))
            continue
        clawback_id = derive_id("clawback", supplier_id, invoice["invoice_id"], kind, ref)
        month = month_of(data.at)
        await conn.execute(
            """insert into payouts.clawbacks (clawback_id, kind, ref, invoice_id, supplier_id, currency, earnings_minor,
                   refunded_minor, amount_minor, month, at, request_id)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            clawback_id,
            kind,
            ref,
            invoice["invoice_id"],
            supplier_id,
            currency,
            e_minor,
            refunded_minor,
            share,
            month,
            data.at,
            event.id,
        )
        entry, specs = clawback_entry(
            clawback_id=clawback_id,
            kind=kind,
            supplier_id=supplier_id,
            currency=currency,
            amount_minor=share,
            at=data.at,
        )
        await ensure_accounts(conn, specs)
        tx.post(entry)
        tx.emit(
            topics.PAYOUTS,
            key=supplier_id,
            type="payout.clawback",
            time=data.at,
            cause=event,
            event_id=derive_id("event", "payout.clawback", clawback_id),
            correlation_id=data.saga_id,
            data=PayoutClawback(
                clawback_id=clawback_id,
                supplier_id=supplier_id,
                currency=currency,
                amount=Decimal(format_minor(-share, currency)),
                month=month,
                invoice_number=invoice["number"],
                kind=kind,
                ref=ref,
                earnings=Decimal(format_minor(e_minor, currency)),
                saga_id=data.saga_id,
                request_id=event.id,
                at=data.at,
            ),
        )
        lines.append(_line(supplier_id, currency, "clawed_back", share))
        log.info(
            "earnings clawed back", supplier_id=supplier_id, kind=kind, ref=ref, amount=format_minor(share, currency)
        )
    return lines


async def _apply(tx: Tx, event: Envelope[Any], data: SagaEvent) -> tuple[list[CompensationLine], str]:
    """Apply one (kind, ref) for the first time: (lines, "") or ([], reason it cannot be applied yet)."""
    if data.compensation == "reverse_revenue":
        return [], ""
    invoice = await _invoice(tx.conn, data.invoice_number)
    if invoice is None:
        return [], f"invoice {data.invoice_number} not known to payouts yet"
    if data.compensation == "hold_earnings":
        return await _hold(tx.conn, event.id, invoice, data.at), ""
    if data.amount is None:
        return [], f"{data.compensation} request carries no amount"
    return await _claw(tx, event, data, invoice, _minor(data.amount, invoice["currency"])), ""


async def on_request(tx: Tx, event: Envelope[Any]) -> None:
    """Act on one ``sagas.v1`` event if it is a compensation request; answer it."""
    data = event.data
    if event.type != "saga.compensation_requested" or not isinstance(data, SagaEvent):
        return
    if data.compensation is None or data.ref is None or data.attempt is None:
        return
    conn = tx.conn
    if await conn.fetchval("select 1 from payouts.compensation_requests where request_id = $1", event.id):
        return  # answered already (the inbox dedupes redelivery too)
    kind, ref = data.compensation, data.ref
    first = await conn.fetchrow(
        "select lines from payouts.compensations_applied where kind = $1 and ref = $2", kind, ref
    )
    reason = ""
    if first is not None:
        outcome = "duplicate"
        lines = [CompensationLine.model_validate(x) for x in first["lines"]]
    else:
        lines, reason = await _apply(tx, event, data)
        outcome = "failed" if reason else "applied"
    await conn.execute(
        """insert into payouts.compensation_requests (request_id, saga_id, kind, ref, attempt, invoice_number, outcome,
               reason, at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        event.id,
        data.saga_id,
        kind,
        ref,
        data.attempt,
        data.invoice_number,
        outcome,
        reason,
        data.at,
    )
    if outcome == "applied":
        await conn.execute(
            """insert into payouts.compensations_applied (kind, ref, invoice_number, request_id, lines, at)
               values ($1, $2, $3, $4, $5, $6)""",
            kind,
            ref,
            data.invoice_number,
            event.id,
            [line.model_dump(mode="json") for line in lines],
            data.at,
        )
    ok = outcome != "failed"
    tx.emit(
        topics.PAYOUTS,
        key=data.saga_id,
        type="payout.compensation_applied" if ok else "payout.compensation_failed",
        time=data.at,
        cause=event,
        event_id=derive_id("event", "payout.compensation_answer", event.id),
        correlation_id=data.saga_id,
        data=CompensationAnswered(
            request_id=event.id,
            saga_id=data.saga_id,
            invoice_number=data.invoice_number,
            compensation=kind,
            ref=ref,
            attempt=data.attempt,
            ok=ok,
            duplicate=outcome == "duplicate",
            reason=reason if not ok else (REVERSE_REVENUE_NOTE if kind == "reverse_revenue" else ""),
            lines=lines,
            at=data.at,
        ),
    )
    log.info("compensation answered", kind=kind, ref=ref, attempt=data.attempt, outcome=outcome, reason=reason)


async def on_payment_status(conn: asyncpg.Connection, invoice_id: str) -> None:
    """Release the invoice's saga hold once its latest status (the highest revision payouts has) has nothing
    remaining: from that status's ``as_of``, or from the hold's own time when the money counts from before
    it — whichever order the hold and the status arrived in. (It released only a status dated after the
    hold, so money dated before a hold that payouts learnt of after it left the earnings held for good:
    found by ``settle sagas verify`` on a second demo run.) Released from when the invoice became paid
    (:func:`paid_since`), not from the latest status's instant."""
    paid = await paid_since(conn, invoice_id)
    if paid is None:
        return
    await conn.execute(
        """update payouts.earnings_holds set released_at = greatest(held_at, $2::timestamptz)
            where invoice_id = $1 and released_at is null""",
        invoice_id,
        paid,
    )


async def planning_inputs(
    conn: asyncpg.Connection, contracts: Sequence[str]
) -> tuple[dict[InvoiceRef, SagaHold], dict[InvoiceRef, int]]:
    """For planning: the saga holds of these contracts' invoices, and per invoice the money given back whose
    supplier shares were clawed back (invoice currency, minor units)."""
    holds = {
        InvoiceRef(r["contract_id"], r["period_start"]): SagaHold(r["held_at"], r["released_at"])
        for r in await conn.fetch(
            """select contract_id, period_start, held_at, released_at from payouts.earnings_holds
                where contract_id = any ($1::text[])""",
            list(contracts),
        )
    }
    settled: dict[InvoiceRef, int] = defaultdict(int)
    for r in await conn.fetch(
        """select distinct i.contract_id, i.period_start, c.kind, c.ref, c.refunded_minor
             from payouts.clawbacks c join payouts.invoices i on i.invoice_id = c.invoice_id
            where i.contract_id = any ($1::text[])""",
        list(contracts),
    ):
        settled[InvoiceRef(r["contract_id"], r["period_start"])] += int(r["refunded_minor"])
    return holds, dict(settled)
