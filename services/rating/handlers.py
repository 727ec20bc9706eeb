"""rating's consumer: usage → exact charges and earnings (R4, R13), prepaid wallets (R8), credit limits (R9).

One handler for the batch (``usage.metered.v1``, ``contracts.v1``, ``wallets.v1``,
``invoices.finalized.v1``), one transaction. Thin: lock, load, decide with
:mod:`services.rating.domain`, save, post, emit.

* ``usage.metered``: price the record's full state against the last priced state of its
  (allocation, meter, hour) → a signed ``charge.rated`` delta (``charge_id = derive_id("charge",
  usage_id)``) and ONE ledger entry with both sides of the allocation-hour (R13)::

      Dr renter unbilled_receivable / Cr platform unbilled_revenue     (charge)
      Dr platform cost_of_revenue   / Cr supplier payable_accrued      (earning)

  Ledger units telescope per allocation-hour: each entry posts ``round_ledger(new total) −
  round_ledger(previous total)``, so the accrual of an hour is always its exact amount rounded once.
  Usage of a contract rating does not know yet is held and rated when the contract arrives.
* ``contract.*``: the projection; a late amendment or termination re-prices the stored hours it
  affects (``charge_id = derive_id("charge", usage_id, "reprice", contract event id)``).
* ``wallet.topped_up``: the money is in the wallet at once (``Dr cash_clearing / Cr wallet``); the R8
  state machine sees it at the next usage watermark.
* ``usage.watermark(T, p)``: unless usage is held for partition p, run every prepaid wallet of p over
  its charges with ``hour_start + 1h ≤ T`` and top-ups with ``time ≤ T`` in event-time order
  (``wallet_order_key``), post ``Dr wallet / Cr prepaid_applied``, emit ``wallet.drawn`` and the
  alerts and commands, then forward ``charges.watermark(T, p)``.
* ``invoice.finalized`` (postpaid): R9 exposure = Σ amount due of the contract's finalized invoices
  (rating sees no payments yet) + the exact charges of periods that have no finalized invoice; an
  invoice moves its period's charges from the second term to the first. Crossing the credit limit
  upward (on a charge or an invoice) emits ``credit.limit_exceeded`` and a suspend request; the
  charge is booked regardless.

Ledger entries are unique per ``(cause_id, kind)``: charges use the charge id as cause (one entry
per allocation-hour delta, several may come from one contract event), wallet runs
``derive_id("wallet.run", contract, T)``, top-ups their event id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from fractions import Fraction
from typing import Any

import structlog

from domain.contracts import chart
from domain.contracts import store as contracts_store
from domain.contracts.periods import period_containing
from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError
from libs.ids import derive_id
from libs.ledger import AccountSpec, build_entry, credit, debit, ensure_accounts
from libs.messaging.consume import Subscription, Tx
from libs.money import Exact, exact_to_decimal_str, round_ledger
from libs.times import HOUR, format_utc
from schemas import topics
from schemas.barrier import barrier_offsets, watermark_waits
from schemas.envelope import Envelope
from schemas.events import (
    ChargeRated,
    CreditLimitExceeded,
    InvoiceFinalized,
    ResumeRequested,
    SuspendRequested,
    UsageMetered,
    WalletDrawn,
    WalletExhausted,
    WalletLowBalance,
    Watermark,
)
from schemas.inputs import WalletToppedUp
from services.rating import store
from services.rating.domain import (
    ChargeDelta,
    Drawn,
    Exhausted,
    LowBalance,
    Priced,
    Resume,
    WalletSignal,
    affected_since,
    apply_charge,
    apply_topup,
    check_credit,
    exact_from_x3600,
    ledger_delta,
    period_at,
    period_of_hour,
    rate_revision,
    reprice_needed,
    usage_state_of,
    wallet_order_key,
    x3600_from_exact,
)

log = structlog.get_logger("settle.rating")

CONSUMER = "rating"
CONTRACT_TYPES = frozenset({"contract.created", "contract.amended", "contract.terminated"})
_ZERO = Decimal(0)
# x3600 sums run in a context that traps any loss, like the domain's: a result is exact or raises.
_EXACT = Context(prec=120, traps=[Inexact, Rounded, InvalidOperation])


def _add_x3600(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def _display(amount: Exact) -> Decimal:
    """An exact amount for an alert's decimal field: exact when it has at most 12 places, else half
    to even at 12 places. Display only: nothing is computed from alerts, and nothing booked rounds."""
    text = exact_to_decimal_str(Fraction(amount), 12).rstrip("0").rstrip(".")
    return Decimal(text or "0")


@dataclass
class _Batch:
    """What one batch shares: the transaction, the terms loaded so far, the ledger accounts used."""

    tx: Tx
    terms: dict[str, ContractTerms | None] = field(default_factory=dict)
    accounts: dict[str, AccountSpec] = field(default_factory=dict)

    async def terms_of(self, contract_id: str) -> ContractTerms | None:
        if contract_id not in self.terms:
            self.terms[contract_id] = await contracts_store.load_terms(self.tx.conn, store.SCHEMA, contract_id)
        return self.terms[contract_id]

    def use(self, *specs: AccountSpec) -> tuple[str, ...]:
        for spec in specs:
            self.accounts[spec.code] = spec
        return tuple(spec.code for spec in specs)


# ====================================================================================================
# The batch
# ====================================================================================================


def _contract_of(event: Envelope[Any]) -> str | None:
    return getattr(event.data, "contract_id", None)


def _watermark_partition(event: Envelope[Any]) -> int:
    partition = int(event.data.partition)
    if not 0 <= partition < topics.USAGE_METERED.partitions:
        raise DomainRuleError(
            f"watermark for partition {partition}: {topics.USAGE_METERED.name} has "
            f"{topics.USAGE_METERED.partitions} partitions"
        )
    return partition


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    """Handle a batch in offset order, in the caller's transaction (see the module docstring)."""
    batch = _Batch(tx)
    # Locks first (store.lock_batch): the partitions whose watermark this batch may forward, then
    # every contract it may touch — including the prepaid contracts of those partitions, whose
    # wallets a forwarded watermark runs.
    partitions = {_watermark_partition(e) for e in events if e.type == "usage.watermark"}
    partitions |= {
        contracts_store.contract_partition(e.data.contract_id) for e in events if e.type == "contract.created"
    }
    contract_ids = {c for c in (_contract_of(e) for e in events) if c is not None}
    await store.lock_batch(tx.conn, sorted(partitions), [])
    contract_ids |= set(await store.prepaid_contracts(tx.conn, sorted(partitions)))
    await store.lock_batch(tx.conn, [], sorted(contract_ids))
    for event in events:
        if event.type == "usage.metered":
            await _on_usage(batch, event)
        elif event.type == "usage.watermark":
            await _on_watermark(batch, event)
        elif event.type in CONTRACT_TYPES:
            await _on_contract(batch, event)
        elif event.type == "wallet.topped_up":
            await _on_topup(batch, event)
        elif event.type == "invoice.finalized":
            await _on_invoice(batch, event)
        else:  # the topic registry decodes nothing else for these topics
            raise DomainRuleError(f"rating does not handle {event.type!r}")
    await ensure_accounts(tx.conn, batch.accounts.values())


# ====================================================================================================
# Usage → charges (R3, R4, R13)
# ====================================================================================================


async def _on_usage(batch: _Batch, event: Envelope[Any]) -> None:
    usage: UsageMetered = event.data
    state = usage_state_of(usage)  # validated now, so held usage cannot fail when it is released
    terms = await batch.terms_of(usage.contract_id)
    if terms is None:
        await store.hold_usage(batch.tx.conn, event, contracts_store.contract_partition(usage.contract_id))
        return
    previous = await store.load_priced(batch.tx.conn, usage.allocation_id, usage.meter, usage.hour_start)
    if previous is not None and usage.revision <= previous.revision:
        # Metering emits an hour's revisions in order on one partition: an older revision arriving
        # after a newer one was priced carries a state that is already superseded.
        log.info(
            "stale usage revision skipped",
            usage_id=usage.usage_id,
            revision=usage.revision,
            priced_revision=previous.revision,
        )
        return
    delta = rate_revision(None if previous is None else previous.priced, state, terms)
    await store.save_priced(
        batch.tx.conn,
        store.PricedHour(
            usage.allocation_id,
            usage.meter,
            usage.hour_start,
            usage.contract_id,
            usage.renter_id,
            usage.supplier_id,
            usage.usage_id,
            usage.revision,
            state,
            delta.priced,
        ),
    )
    await _book_charge(
        batch,
        terms,
        event,
        charge_id=derive_id("charge", usage.usage_id),
        hour=_HourRef(
            usage.allocation_id,
            usage.meter,
            usage.hour_start,
            usage.supplier_id,
            usage.usage_id,
            usage.revision,
        ),
        delta=delta,
        previous=None if previous is None else previous.priced,
        usage_deltas=(
            usage.delta_provisioned_gpu_seconds,
            usage.delta_billable_gpu_seconds,
            usage.delta_maintenance_gpu_seconds,
            usage.delta_outage_gpu_seconds,
            usage.delta_quantity,
        ),
    )


@dataclass(frozen=True)
class _HourRef:
    allocation_id: str
    meter: str
    hour_start: datetime
    supplier_id: str
    usage_id: str
    revision: int


_NO_USAGE_CHANGE = (0, 0, 0, 0, _ZERO)


async def _book_charge(
    batch: _Batch,
    terms: ContractTerms,
    cause: Envelope[Any],
    *,
    charge_id: str,
    hour: _HourRef,
    delta: ChargeDelta,
    previous: Priced | None,
    usage_deltas: tuple[int, int, int, int, Decimal],
) -> None:
    """Emit one ``charge.rated`` delta, post its ledger entry and feed the wallet or the exposure."""
    currency = terms.currency
    period_start, period_end = period_of_hour(terms, hour.hour_start)
    at = hour.hour_start + HOUR
    provisioned, billable, maintenance, outage, quantity = usage_deltas
    batch.tx.emit(
        topics.CHARGES_RATED,
        key=terms.contract_id,
        type="charge.rated",
        time=at,
        cause=cause,
        event_id=charge_id,
        data=ChargeRated(
            charge_id=charge_id,
            usage_id=hour.usage_id,
            allocation_id=hour.allocation_id,
            contract_id=terms.contract_id,
            renter_id=terms.renter_id,
            supplier_id=hour.supplier_id,
            meter=hour.meter,
            hour_start=hour.hour_start,
            revision=hour.revision,
            currency=currency,
            billing_mode=terms.billing_mode,
            period_start=period_start,
            period_end=period_end,
            delta_provisioned_gpu_seconds=provisioned,
            delta_billable_gpu_seconds=billable,
            delta_maintenance_gpu_seconds=maintenance,
            delta_outage_gpu_seconds=outage,
            delta_quantity=quantity,
            charge_x3600=delta.charge_x3600,
            earning_x3600=delta.earning_x3600,
            price_versions=list(delta.versions),
        ),
    )
    before = previous if previous is not None else Priced(_ZERO, _ZERO, ())
    # Telescoping accruals: the hour's ledger amount is always round_ledger(its exact total).
    charge_units = -ledger_delta(
        exact_from_x3600(before.charge_x3600), exact_from_x3600(delta.priced.charge_x3600), currency
    )
    earning_units = -ledger_delta(
        exact_from_x3600(before.earning_x3600), exact_from_x3600(delta.priced.earning_x3600), currency
    )
    receivable, revenue, cost, payable = batch.use(
        chart.unbilled_receivable(terms.renter_id, currency),
        chart.unbilled_revenue(currency),
        chart.cost_of_revenue(currency),
        chart.payable_accrued(hour.supplier_id, currency),
    )
    batch.tx.post(
        build_entry(
            id=derive_id("entry", "rating.charge", charge_id),
            cause_id=charge_id,
            kind="rating.charge",
            occurred_at=at,
            correlation_id=cause.correlationid,
            description=(f"{hour.allocation_id} {hour.meter} {format_utc(hour.hour_start)} revision {hour.revision}"),
            postings=[
                debit(receivable, charge_units, currency),
                credit(revenue, charge_units, currency),
                debit(cost, earning_units, currency),
                credit(payable, earning_units, currency),
            ],
        )
    )
    if delta.charge_x3600.is_zero():
        return
    postpaid = terms.billing_mode == "postpaid"
    # R9 counts as uninvoiced only the charges of periods without a finalized invoice.
    invoiced = postpaid and await store.period_invoiced(batch.tx.conn, terms.contract_id, period_start)
    row = store.ChargeRow(
        charge_id,
        terms.contract_id,
        hour.allocation_id,
        hour.meter,
        hour.hour_start,
        at,
        period_start,
        period_end,
        terms.billing_mode,
        delta.charge_x3600,
        delta.earning_x3600,
    )
    await store.insert_charge(batch.tx.conn, row, invoiced=invoiced)
    if postpaid and not invoiced:
        await _track_exposure(
            batch,
            terms.contract_id,
            terms,
            cause,
            delta.charge_x3600,
            _ZERO,
            at=at,
            limit_at=hour.hour_start,
            trigger_id=charge_id,
        )


# ====================================================================================================
# Contracts: projection, held usage, late amendments and terminations
# ====================================================================================================


async def _on_contract(batch: _Batch, event: Envelope[Any]) -> None:
    change = await contracts_store.apply_contract_event(batch.tx.conn, store.SCHEMA, event)
    if change.after is None:
        return  # an amendment or termination before its contract: held by the projection
    batch.terms[change.contract_id] = change.after
    if change.before is None:
        await _release_topups(batch, change.after, event)
        for held in await store.take_held_usage(batch.tx.conn, change.contract_id):
            await _on_usage(batch, held)
        await _forward_watermark(batch, contracts_store.contract_partition(change.contract_id), event)
    elif change.after != change.before:
        await _reprice(batch, change.before, change.after, event)


async def _reprice(batch: _Batch, before: ContractTerms, after: ContractTerms, event: Envelope[Any]) -> None:
    """Re-price the stored hours a late amendment or termination changes; emit the deltas."""
    since = affected_since(before, after)
    if since is None:
        return
    for hour in await store.priced_hours_ending_after(batch.tx.conn, after.contract_id, since):
        if not reprice_needed(before, after, hour.hour_start, meter=hour.meter):
            continue
        delta = rate_revision(hour.priced, hour.state, after)
        if delta.priced == hour.priced:
            continue
        await store.save_priced(batch.tx.conn, replace(hour, priced=delta.priced))
        if delta.charge_x3600.is_zero() and delta.earning_x3600.is_zero():
            continue  # same money (e.g. only the version numbers moved): nothing to tell anyone
        await _book_charge(
            batch,
            after,
            event,
            charge_id=derive_id("charge", hour.usage_id, "reprice", event.id),
            hour=_HourRef(
                hour.allocation_id,
                hour.meter,
                hour.hour_start,
                hour.supplier_id,
                hour.usage_id,
                hour.revision,
            ),
            delta=delta,
            previous=hour.priced,
            usage_deltas=_NO_USAGE_CHANGE,
        )


# ====================================================================================================
# Watermarks (KERNEL.md) and prepaid wallets (R8)
# ====================================================================================================


async def _on_watermark(batch: _Batch, event: Envelope[Any]) -> None:
    mark: Watermark = event.data
    partition = _watermark_partition(event)
    row = await store.load_watermark(batch.tx.conn, partition)
    if row is not None and mark.through <= row.received_through:
        return  # watermarks only move forward
    await store.save_received(batch.tx.conn, partition, mark.through, barrier_offsets(mark.barrier, FORWARDED_BARRIER))
    await _forward_watermark(batch, partition, event)


async def _forward_watermark(batch: _Batch, partition: int, cause: Envelope[Any]) -> None:
    """Forward the partition's latest received watermark unless usage is held for it (KERNEL.md):
    first every prepaid wallet of the partition runs up to it, so its draws precede it on the topic."""
    row = await store.load_watermark(batch.tx.conn, partition)
    if row is None or (row.forwarded_through is not None and row.forwarded_through >= row.received_through):
        return
    if await store.held_usage_count(batch.tx.conn, partition) > 0:
        return
    through = row.received_through
    for contract_id in await store.prepaid_contracts(batch.tx.conn, [partition]):
        await _run_wallet(batch, contract_id, through, cause)
    batch.tx.emit(
        topics.CHARGES_RATED,
        key=f"watermark-{partition}",
        type="charges.watermark",
        time=through,
        cause=cause,
        event_id=derive_id("charges.watermark", partition, format_utc(through)),
        partition=partition,
        data=Watermark(through=through, partition=partition, source="rating", barrier=row.received_barrier),
    )
    await store.save_forwarded(batch.tx.conn, partition, through)


async def forward_ungated(tx: Tx, partition: int, cause: Envelope[Any]) -> None:
    """Forward the partition's watermark after an operator dropped or released the usage that gated it
    (:mod:`services.operations.held`). The caller holds the locks a watermark batch takes
    (:func:`store.lock_batch`: the partition, then its prepaid contracts)."""
    batch = _Batch(tx)
    await _forward_watermark(batch, partition, cause)
    await ensure_accounts(tx.conn, batch.accounts.values())


async def rate_held_now(tx: Tx, contract_id: str, cause: Envelope[Any]) -> int:
    """Rate the usage held for a contract rating knows now (an operator's release), then forward its
    partition's watermark. Returns how many held records were rated. Locks as for a contract event."""
    batch = _Batch(tx)
    released = await store.take_held_usage(tx.conn, contract_id)
    for held in released:
        await _on_usage(batch, held)
    await _forward_watermark(batch, contracts_store.contract_partition(contract_id), cause)
    await ensure_accounts(tx.conn, batch.accounts.values())
    return len(released)


@dataclass(frozen=True)
class _WalletOp:
    key: tuple[datetime, datetime, int, int]
    op_id: str
    period_start: datetime
    at: datetime
    charge: store.PendingCharge | None = None
    topup: store.TopUp | None = None


async def _run_wallet(batch: _Batch, contract_id: str, through: datetime, cause: Envelope[Any]) -> None:
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
    run_id = derive_id("wallet.run", contract_id, format_utc(through))
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
    batch: _Batch, terms: ContractTerms, cause: Envelope[Any], op_id: str, n: int, signal: WalletSignal
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
                balance=_display(signal.balance),
                threshold=_display(signal.threshold),
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
                overage=_display(signal.overage),
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


async def _on_topup(batch: _Batch, event: Envelope[Any]) -> None:
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
    batch: _Batch,
    terms: ContractTerms,
    event_id: str,
    amount: Decimal,
    currency: str,
    at: datetime,
    cause: Envelope[Any],
) -> None:
    """The money is in the wallet now (``Dr cash_clearing / Cr wallet``); R8 runs it at a watermark."""
    conn = batch.tx.conn
    # The wallet account holds the R8 balance plus the received top-ups not yet run (see _run_wallet).
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


async def _release_topups(batch: _Batch, terms: ContractTerms, cause: Envelope[Any]) -> None:
    for topup in await store.held_topups(batch.tx.conn, terms.contract_id):
        problem = _topup_problem(terms, topup.currency)
        if problem is not None:
            # Its own event was acknowledged while held; the contract's creation must not fail for it.
            log.warning("held top-up quarantined", event_id=topup.event_id, reason=problem)
            await store.set_topup_status(batch.tx.conn, topup.event_id, "quarantined", problem)
            continue
        await _receive_topup(batch, terms, topup.event_id, topup.amount, topup.currency, topup.at, cause)


# ====================================================================================================
# Credit limit (R9)
# ====================================================================================================


async def _track_exposure(
    batch: _Batch,
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
    before = await store.load_exposure(batch.tx.conn, contract_id)
    after = store.Exposure(
        _add_x3600(before.invoiced_due, invoiced_due), _add_x3600(before.uninvoiced_x3600, uninvoiced_x3600)
    )
    await store.save_exposure(batch.tx.conn, contract_id, after)
    if terms is None:
        return
    limit = terms.fields_at(limit_at).credit_limit
    if not check_credit(limit, before.exact, after.exact):
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
            exposure=_display(after.exact),
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


async def _on_invoice(batch: _Batch, event: Envelope[Any]) -> None:
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
    await _track_exposure(
        batch,
        invoice.contract_id,
        terms,
        event,
        -moved_x3600,
        invoice.amount_due,
        at=event.time,
        limit_at=event.time,
        trigger_id=invoice.invoice_id,
    )


WATERMARK_WAITS_FOR = (topics.CONTRACTS, topics.WALLETS)
"""A usage watermark is run only once these are read up to its tick's barrier (schemas.barrier)."""
FORWARDED_BARRIER = (topics.CONTRACTS,)
"""What invoicing must read before it closes on the forwarded watermark."""


SUBSCRIPTION = Subscription(
    consumer=CONSUMER,
    topics=(topics.USAGE_METERED, topics.CONTRACTS, topics.WALLETS, topics.INVOICES_FINALIZED),
    handler=on_batch,
    waits=watermark_waits(topics.USAGE_METERED, "usage.watermark", WATERMARK_WAITS_FOR),
    # Usage, contract events and top-ups of a contract whose earlier message is dead-lettered wait.
    hold_topics=frozenset({topics.USAGE_METERED.name, topics.CONTRACTS.name, topics.WALLETS.name}),
)
