"""Planning in the consumer's transaction: load what is known at planning time, decide (pure, R15), write
payouts, waiting plans, ledger entries and ``payouts.v1`` events.

Runs one at a time (the clock row is locked). A payout, once planned, is never re-planned: its months
are paid out. A plan without a payout replaces the pair's previous waiting row and is announced
(``payout.waiting``) only when what it says changed, so a tick that changes nothing emits nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.messaging.consume import Tx
from libs.money import format_minor
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import PayoutEvent
from services.payouts import compensations, entries, store
from services.payouts.domain.planning import Plan, PlanningInputs, plan_payouts

log = structlog.get_logger("settle.payouts")


def _rate_decimal(plan: Plan) -> Decimal | None:
    if plan.rate is None:
        return None
    return Decimal(plan.rate.numerator) / Decimal(plan.rate.denominator)


def row_of(plan: Plan, at: datetime) -> dict[str, Any]:
    return {
        "payout_id": plan.payout_id,
        "supplier_id": plan.supplier_id,
        "currency": plan.currency,
        "months": plan.months,
        "amount_minor": plan.amount_minor,
        "held_minor": plan.held_minor,
        "payout_currency": plan.payout_currency,
        "payout_amount_minor": plan.payout_amount_minor,
        "rate_id": plan.rate_id,
        "rate": _rate_decimal(plan),
        "rail": plan.rail,
        "payee_event_id": plan.payee_event_id,
        "state": plan.state or "waiting",
        "reason": plan.reason,
        "planned_at": at,
    }


async def announced(conn: asyncpg.Connection, row: dict[str, Any]) -> PayoutEvent:
    """A plan's ``payouts.v1`` event with the invoices whose earnings it pays (the saga of each learns
    that the supplier is owed a payout, sent or not)."""
    ids, numbers = await store.payout_invoices(conn, row)
    await conn.execute(
        "update payouts.payouts set invoice_numbers = $2 where payout_id = $1", row["payout_id"], numbers
    )
    return event_of(row).model_copy(update={"invoices": ids, "invoice_numbers": numbers})


def event_of(row: dict[str, Any] | asyncpg.Record) -> PayoutEvent:
    payout_currency = row["payout_currency"]
    payout_minor = row["payout_amount_minor"]
    return PayoutEvent(
        payout_id=row["payout_id"],
        supplier_id=row["supplier_id"],
        currency=row["currency"],
        months=list(row["months"]),
        amount=Decimal(format_minor(row["amount_minor"], row["currency"])),
        payout_currency=payout_currency,
        payout_amount=None
        if payout_minor is None or payout_currency is None
        else Decimal(format_minor(payout_minor, payout_currency)),
        rate_id=row["rate_id"],
        rate=row["rate"],
        rail=row["rail"],
        payee_event_id=row["payee_event_id"],
        state=None if row["state"] == "waiting" else row["state"],
        reason=row["reason"],
        held_minor=row["held_minor"],
        planned_at=row["planned_at"],
    )


def _same_waiting(old: asyncpg.Record | None, new: dict[str, Any]) -> bool:
    if old is None:
        return False
    fields = ("payout_id", "amount_minor", "held_minor", "payout_currency", "payout_amount_minor", "rate_id", "reason")
    return all(old[f] == new[f] for f in fields)


async def load_inputs(conn: asyncpg.Connection, at: datetime, pairs: list[tuple[str, str]]) -> PlanningInputs:
    """What R15 needs at ``at``, with the saga's holds and clawed-back refunds (compensations)."""
    inputs = await store.load_inputs(conn, at, pairs)
    holds, settled_back = await compensations.planning_inputs(
        conn, sorted({e.ref.contract_id for e in inputs.earnings})
    )
    return replace(inputs, holds=holds, settled_back=settled_back)


async def plan_at(tx: Tx, at: datetime, *, cause: Envelope[Any] | None) -> int:
    """Plan every (supplier, statement currency) with a final month not yet paid out, at ``at``.
    Returns how many payouts were planned. The caller holds the clock row lock."""
    conn = tx.conn
    pairs = await store.pairs_to_plan(conn, at)
    if not pairs:
        return 0
    inputs = await load_inputs(conn, at, pairs)
    planned = 0
    for plan in plan_payouts(inputs):
        row = row_of(plan, at)
        holdings = [(h.ref.contract_id, h.ref.period_start, h.earnings_minor, h.released_minor) for h in plan.holdings]
        old = await store.waiting_row(conn, plan.supplier_id, plan.currency)
        if not plan.is_payout:
            if _same_waiting(old, row):
                continue
            await store.drop_waiting(conn, plan.supplier_id, plan.currency)
            await store.insert_plan(conn, row, holdings)
            tx.emit(
                topics.PAYOUTS,
                key=plan.supplier_id,
                type="payout.waiting",
                time=at,
                cause=cause,
                event_id=derive_id("event", "payout.waiting", plan.payout_id, plan.reason, plan.amount_minor, at),
                data=await announced(conn, row),
                correlation_id=plan.payout_id,
            )
            continue
        await store.drop_waiting(conn, plan.supplier_id, plan.currency)
        if not await store.insert_plan(conn, row, holdings):
            continue
        assert plan.state is not None and plan.payout_currency is not None and plan.payout_amount_minor is not None
        entry, specs = entries.payout_entry(
            payout_id=plan.payout_id,
            supplier_id=plan.supplier_id,
            currency=plan.currency,
            amount_minor=plan.amount_minor,
            payout_currency=plan.payout_currency,
            payout_amount_minor=plan.payout_amount_minor,
            converted_exact=plan.converted_exact,
            state=plan.state,
            occurred_at=at,
        )
        await ensure_accounts(conn, specs)
        tx.post(entry)
        kind = "payout.held" if plan.state == "on_hold" else "payout.planned"
        tx.emit(
            topics.PAYOUTS,
            key=plan.supplier_id,
            type=kind,
            time=at,
            cause=cause,
            event_id=derive_id("event", kind, plan.payout_id),
            data=await announced(conn, row),
            correlation_id=plan.payout_id,
        )
        planned += 1
        log.info(
            "payout planned",
            payout_id=plan.payout_id,
            supplier_id=plan.supplier_id,
            state=plan.state,
            currency=plan.payout_currency,
            amount=format_minor(plan.payout_amount_minor, plan.payout_currency),
            rail=plan.rail,
        )
    return planned
