"""Prepaid wallets (R8): top-ups received, the wallet run at a watermark in event-time order, its
ledger postings, ``wallet.drawn`` and the alerts and commands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import structlog

from domain.contracts import chart
from domain.contracts.periods import period_containing
from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError
from libs.ids import derive_id
from libs.ledger import build_entry, credit, debit
from libs.money import round_ledger
from libs.times import format_utc
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import (
    ResumeRequested,
    SuspendRequested,
    WalletDrawn,
    WalletExhausted,
    WalletLowBalance,
)
from schemas.inputs import WalletToppedUp
from services.rating import store
from services.rating.domain import (
    Drawn,
    Exhausted,
    LowBalance,
    Resume,
    WalletSignal,
    apply_charge,
    apply_topup,
    exact_from_x3600,
    ledger_delta,
    period_at,
    resettle_wallet,
    wallet_order_key,
    x3600_from_exact,
)
from services.rating.handlers.batch import Batch, display_amount

log = structlog.get_logger("settle.rating")


@dataclass(frozen=True)
class _WalletOp:
    key: tuple[datetime, datetime, int, int]
    op_id: str
    period_start: datetime
    at: datetime
    charge: store.PendingCharge | None = None
    topup: store.TopUp | None = None


async def run_wallet(batch: Batch, contract_id: str, through: datetime, cause: Envelope[Any]) -> None:
    """R8 in event-time order: apply the contract's due charges and top-ups, persist, post, emit."""
    conn = batch.tx.conn
    terms = await batch.terms_of(contract_id)
    assert terms is not None
    assert terms.billing_mode == "prepaid"
    charges = await store.wallet_charges_due(conn, contract_id, through)
    topups = await store.topups_due(conn, contract_id, through)
    if not charges and not topups:
        return
    ops = [
        _WalletOp(
            (*wallet_order_key(c.period_start, c.at, "charge"), c.seq),
            c.charge_id,
            c.period_start,
            c.at,
            charge=c,
        )
        for c in charges
    ]
    for t in topups:
        period_start = period_at(terms, t.at)[0]
        ops.append(
            _WalletOp(
                (*wallet_order_key(period_start, t.at, "topup"), t.seq),
                t.event_id,
                period_start,
                t.at,
                topup=t,
            )
        )
    ops.sort(key=lambda op: op.key)
    state = before = await store.load_wallet(conn, contract_id)
    pending_before = await store.pending_topups_total(conn, contract_id)
    applied_topups = Fraction(0)
    run_id = derive_id("wallet.run", contract_id, format_utc(through))
    # A no-op but for a wallet saved before 2026-12-08 that a late correction left off R8's closed form.
    state, resettled = resettle_wallet(state, through)
    for n, signal in enumerate(resettled):
        _emit_wallet_signal(batch, terms, cause, run_id, n, signal)
    for op in ops:
        signals: tuple[WalletSignal, ...]
        if op.charge is not None:
            state, signals = apply_charge(state, op.period_start, exact_from_x3600(op.charge.charge_x3600), op.at)
        else:
            assert op.topup is not None
            amount = Fraction(op.topup.amount)
            state, signals = apply_topup(state, op.period_start, amount, op.at)
            applied_topups += amount
        for n, signal in enumerate(signals):
            _emit_wallet_signal(batch, terms, cause, op.op_id, n, signal)
    # The wallet account holds the state's balance plus the top-ups received but not yet run; its
    # ledger balance is always round_ledger of that exact sum (the postings telescope).
    units = ledger_delta(
        before.balance + pending_before, state.balance + pending_before - applied_topups, terms.currency
    )
    wallet, applied = batch.use(
        chart.wallet(terms.renter_id, contract_id, terms.currency),
        chart.prepaid_applied(terms.renter_id, contract_id, terms.currency),
    )
    batch.tx.post(
        build_entry(
            id=derive_id("entry", "rating.prepaid_applied", run_id),
            cause_id=run_id,
            kind="rating.prepaid_applied",
            occurred_at=through,
            correlation_id=cause.correlationid,
            description=f"wallet of {contract_id} through {format_utc(through)}",
            postings=[debit(wallet, units, terms.currency), credit(applied, units, terms.currency)],
        )
    )
    await store.save_wallet(conn, contract_id, state)
    await store.mark_charges_applied(conn, [c.seq for c in charges])
    await store.mark_topups_applied(conn, [t.seq for t in topups])


def _emit_wallet_signal(
    batch: Batch, terms: ContractTerms, cause: Envelope[Any], op_id: str, n: int, signal: WalletSignal
) -> None:
    contract_id, renter_id, currency = terms.contract_id, terms.renter_id, terms.currency
    if isinstance(signal, Drawn):
        draw_id = derive_id("wallet.drawn", op_id, n)
        period_start, period_end = period_containing(terms.billing_anchor_day, signal.period_start)
        batch.tx.emit(
            topics.CHARGES_RATED,
            key=contract_id,
            type="wallet.drawn",
            time=signal.at,
            cause=cause,
            event_id=draw_id,
            data=WalletDrawn(
                draw_id=draw_id,
                contract_id=contract_id,
                renter_id=renter_id,
                currency=currency,
                period_start=period_start,
                period_end=period_end,
                drawn_x3600=x3600_from_exact(signal.amount),
                reason=signal.reason,
                at=signal.at,
            ),
        )
    elif isinstance(signal, LowBalance):
        batch.tx.emit(
            topics.BILLING_ALERTS,
            key=contract_id,
            type="wallet.low_balance",
            time=signal.at,
            cause=cause,
            event_id=derive_id("wallet.low_balance", op_id, n),
            data=WalletLowBalance(
                contract_id=contract_id,
                renter_id=renter_id,
                currency=currency,
                balance=display_amount(signal.balance),
                threshold=display_amount(signal.threshold),
                at=signal.at,
            ),
        )
    elif isinstance(signal, Exhausted):
        batch.tx.emit(
            topics.BILLING_ALERTS,
            key=contract_id,
            type="wallet.exhausted",
            time=signal.at,
            cause=cause,
            event_id=derive_id("wallet.exhausted", op_id, n),
            data=WalletExhausted(
                contract_id=contract_id,
                renter_id=renter_id,
                currency=currency,
                overage=display_amount(signal.overage),
                at=signal.at,
            ),
        )
        batch.tx.emit(
            topics.PLATFORM_COMMANDS,
            key=contract_id,
            type="platform.suspend_requested",
            time=signal.at,
            cause=cause,
            event_id=derive_id("platform.suspend_requested", op_id, n),
            data=SuspendRequested(
                contract_id=contract_id, renter_id=renter_id, reason="wallet_exhausted", at=signal.at
            ),
        )
    elif isinstance(signal, Resume):
        batch.tx.emit(
            topics.PLATFORM_COMMANDS,
            key=contract_id,
            type="platform.resume_requested",
            time=signal.at,
            cause=cause,
            event_id=derive_id("platform.resume_requested", op_id, n),
            data=ResumeRequested(contract_id=contract_id, renter_id=renter_id, reason="wallet_topped_up", at=signal.at),
        )
    else:  # pragma: no cover - WalletSignal is a closed union
        raise AssertionError(f"unknown wallet signal {signal!r}")


async def on_topup(batch: Batch, event: Envelope[Any]) -> None:
    topup: WalletToppedUp = event.data
    terms = await batch.terms_of(topup.contract_id)
    if terms is None:
        await store.insert_topup(
            batch.tx.conn, event.id, topup.contract_id, topup.amount, topup.currency, event.time, "held"
        )
        return
    problem = _topup_problem(terms, topup.currency)
    if problem is not None:
        raise DomainRuleError(problem)
    await _receive_topup(batch, terms, event.id, topup.amount, topup.currency, event.time, event)


def _topup_problem(terms: ContractTerms, currency: str) -> str | None:
    if terms.billing_mode != "prepaid":
        return f"top-up for {terms.billing_mode} contract {terms.contract_id}: only prepaid contracts have a wallet"
    if currency != terms.currency:
        return f"top-up in {currency} for contract {terms.contract_id} billed in {terms.currency}"
    return None


async def _receive_topup(
    batch: Batch,
    terms: ContractTerms,
    event_id: str,
    amount: Decimal,
    currency: str,
    at: datetime,
    cause: Envelope[Any],
) -> None:
    """The money is in the wallet now (``Dr cash_clearing / Cr wallet``); R8 runs it at a watermark."""
    conn = batch.tx.conn
    # The wallet account holds the R8 balance plus the received top-ups not yet run (see run_wallet).
    in_wallet = await store.wallet_balance(conn, terms.contract_id) + await store.pending_topups_total(
        conn, terms.contract_id
    )
    units = round_ledger(in_wallet + Fraction(amount), currency) - round_ledger(in_wallet, currency)
    await store.insert_topup(conn, event_id, terms.contract_id, amount, currency, at, "received")
    await store.set_topup_status(conn, event_id, "received")
    cash, wallet = batch.use(chart.cash_clearing(currency), chart.wallet(terms.renter_id, terms.contract_id, currency))
    batch.tx.post(
        build_entry(
            id=derive_id("entry", "rating.wallet_topup", event_id),
            cause_id=event_id,
            kind="rating.wallet_topup",
            occurred_at=at,
            correlation_id=cause.correlationid,
            description=f"top-up of {terms.contract_id}",
            postings=[debit(cash, units, currency), credit(wallet, units, currency)],
        )
    )


async def release_topups(batch: Batch, terms: ContractTerms, cause: Envelope[Any]) -> None:
    for topup in await store.held_topups(batch.tx.conn, terms.contract_id):
        problem = _topup_problem(terms, topup.currency)
        if problem is not None:
            # Its own event was acknowledged while held; the contract's creation must not fail for it.
            log.warning("held top-up quarantined", event_id=topup.event_id, reason=problem)
            await store.set_topup_status(batch.tx.conn, topup.event_id, "quarantined", problem)
            continue
        await _receive_topup(batch, terms, topup.event_id, topup.amount, topup.currency, topup.at, cause)
