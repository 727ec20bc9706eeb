"""R15 payout planning, pure: given what is known at the planning instant, which payouts to plan.

Planning runs at each close, planning time ``at`` = the tick. Per supplier per *statement* currency:

* the months: every statement month of the pair final by ``at`` (``issued_at <= at``) and not yet paid
  out; none → nothing to plan;
* payable = Σ max(net, 0) over every final month of the pair − held now − Σ earlier payouts of the pair.
  Every earlier payout was computed the same way, so this telescopes to R15's "the statement's net when
  positive (of the months paid now), plus earnings released since the last payout, minus what is held";
* held (pay-when-paid only) = Σ over the supplier's invoices of (E − released), where E = the exact
  earnings of the supplier's allocation-hours billed by that invoice within final months, rounded once
  (R6), and released = ``floor(E × paid / total)`` in minor units, with paid = total − amount remaining at
  ``at``; an invoice with nothing remaining releases E exactly (the payment that makes it paid releases
  the rest), one not yet issued releases nothing, one whose total is not positive is paid from its issue.
  Money given back whose supplier share was clawed back (``settled_back``) counts as paid here, so the
  refund that re-opens an invoice is not held as well as clawed back (extension, issue 11);
* held also (every supplier, extension, issue 11): all of E of an invoice under an active saga hold
  (``hold_earnings``: past due, until a payment status shows it paid) — not pro rata;
* then, in this order: no payee at or before ``at`` → ``no_payee``; payable ≤ 0 → ``nothing_payable``
  (a Settle extension: a payout is never zero or negative); payout currency ≠ statement currency and no
  direct rate (1 statement currency = rate payout currency) with ``as_of <= at`` → ``no_fx_rate``;
  converted amount (half-even to the payout currency's minor unit) below ``minimum_payout`` →
  ``below_minimum`` (an amount equal to it is paid; below the minimum wins over on_hold); ``on_hold`` →
  a payout planned in state ``on_hold`` (never sent until an operator releases it); else ``planned``.

A plan without a payout leaves its months unpaid: the next planning takes them again. The payout id is
derived from (supplier, statement currency, months), so planning the same months twice names the same
payout. Nothing here reads a clock or draws a random id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction

from libs.ids import derive_id
from libs.money import currency_exponent, round_half_even, round_minor
from schemas.events import PayoutReason, PayoutState
from services.payouts.domain.compensations import SagaHold

Reason = PayoutReason
State = PayoutState


@dataclass(frozen=True)
class StatementMonth:
    """A final statement (R12): its ``net`` in minor units of ``currency``."""

    supplier_id: str
    currency: str
    month: str
    net_minor: int
    issued_at: datetime


@dataclass(frozen=True)
class InvoiceRef:
    """An invoice is one per contract per billing period (R10): the contract and the period start name it."""

    contract_id: str
    period_start: datetime


@dataclass(frozen=True)
class InvoiceEarnings:
    """A supplier's exact earnings (× 3600) of allocation-hours that the invoice ``ref`` bills, summed over
    the hours of final statement months only."""

    supplier_id: str
    currency: str
    ref: InvoiceRef
    earning_x3600: Fraction


@dataclass(frozen=True)
class InvoicePaid:
    """An issued invoice at planning time: its total and what remains to be paid on it (minor units)."""

    ref: InvoiceRef
    invoice_id: str
    currency: str
    total_minor: int
    remaining_minor: int


@dataclass(frozen=True)
class Payee:
    """The latest ``supplier.payee_updated`` at or before planning."""

    supplier_id: str
    payout_currency: str
    rail: str
    minimum_payout: Fraction
    pay_when_paid: bool
    on_hold: bool
    event_id: str


@dataclass(frozen=True)
class Rate:
    """``fx.rate``: 1 ``base`` = ``rate`` ``quote``."""

    rate_id: str
    base: str
    quote: str
    rate: Fraction
    as_of: datetime


@dataclass(frozen=True)
class PriorPayout:
    """A payout already planned (any state): its months are paid out and its amount counts as paid."""

    supplier_id: str
    currency: str
    months: tuple[str, ...]
    amount_minor: int


@dataclass(frozen=True)
class PlanningInputs:
    at: datetime
    statements: Sequence[StatementMonth]
    earnings: Sequence[InvoiceEarnings]
    invoices: Mapping[InvoiceRef, InvoicePaid]
    """Invoices issued at or before ``at``, with what remained on them at ``at``."""
    payees: Mapping[str, Payee]
    rates: Sequence[Rate]
    prior: Sequence[PriorPayout]
    holds: Mapping[InvoiceRef, SagaHold] = field(default_factory=dict)
    """Invoices under the saga's ``hold_earnings`` (services.payouts.domain.compensations)."""
    settled_back: Mapping[InvoiceRef, int] = field(default_factory=dict)
    """Per invoice: refunded / credited / disputed amounts (invoice currency, minor) whose supplier shares
    were clawed back."""


@dataclass(frozen=True)
class HeldEarnings:
    """One (supplier, invoice) under pay-when-paid, at planning time (minor units of the statement currency)."""

    ref: InvoiceRef
    earnings_minor: int
    released_minor: int

    @property
    def held_minor(self) -> int:
        return self.earnings_minor - self.released_minor


@dataclass(frozen=True)
class Plan:
    """What planning decided for one (supplier, statement currency): a payout (``state`` set) or a reason."""

    payout_id: str
    supplier_id: str
    currency: str
    months: tuple[str, ...]
    amount_minor: int
    """Payable in the statement currency (may be ≤ 0 when there is no payout)."""
    held_minor: int
    state: State | None
    reason: Reason | None
    payout_currency: str | None = None
    payout_amount_minor: int | None = None
    rate_id: str | None = None
    rate: Fraction | None = None
    converted_exact: Fraction | None = None
    """amount × rate before rounding (payout currency, major units): the FX difference's source."""
    rail: str | None = None
    payee_event_id: str | None = None
    holdings: tuple[HeldEarnings, ...] = ()

    @property
    def is_payout(self) -> bool:
        return self.state is not None


def payout_id_for(supplier_id: str, currency: str, months: Sequence[str]) -> str:
    """Deterministic: the same supplier, statement currency and months name the same payout."""
    assert months, "a payout pays at least one statement month"
    return derive_id("payout", supplier_id, currency, *sorted(months))


def invoice_earnings_minor(earning_x3600: Fraction, currency: str) -> int:
    """E: the exact earnings tied to one invoice, rounded once (R6)."""
    return round_minor(earning_x3600 / 3600, currency)


def released_minor(earnings_minor: int, invoice: InvoicePaid | None, settled_back_minor: int = 0) -> int:
    """Released so far of E (R15): floor(E × paid / total), the rest exactly once nothing remains.
    ``settled_back_minor``: money given back whose supplier share was clawed back counts as paid."""
    if invoice is None:
        return 0  # not yet issued: all its hours' earnings are held
    remaining = invoice.remaining_minor - max(settled_back_minor, 0)
    if earnings_minor <= 0 or invoice.total_minor <= 0 or remaining <= 0:
        return earnings_minor  # nothing to hold back, or the invoice is paid
    paid = min(max(invoice.total_minor - remaining, 0), invoice.total_minor)
    released = earnings_minor * paid // invoice.total_minor
    assert 0 <= released <= earnings_minor
    return released


def latest_rate(rates: Iterable[Rate], base: str, quote: str, at: datetime) -> Rate | None:
    """The direct pair's latest rate with ``as_of <= at`` (ties: the greatest rate id, so the choice
    does not depend on arrival order)."""
    usable = [r for r in rates if r.base == base and r.quote == quote and r.as_of <= at]
    return max(usable, key=lambda r: (r.as_of, r.rate_id), default=None)


def convert(amount_minor: int, currency: str, rate: Fraction, payout_currency: str) -> tuple[int, Fraction]:
    """``amount`` (minor units of ``currency``) × ``rate`` → (payout minor units half-even, exact major)."""
    exact = Fraction(amount_minor, 10 ** currency_exponent(currency)) * rate
    return round_half_even(exact * 10 ** currency_exponent(payout_currency)), exact


def holdings_of(
    supplier_id: str,
    currency: str,
    earnings: Sequence[InvoiceEarnings],
    invoices: Mapping[InvoiceRef, InvoicePaid],
    *,
    pay_when_paid: bool = True,
    holds: Mapping[InvoiceRef, SagaHold] | None = None,
    settled_back: Mapping[InvoiceRef, int] | None = None,
    at: datetime | None = None,
) -> tuple[HeldEarnings, ...]:
    """Per invoice of the supplier: E and what of it is released at ``at``. Pay-when-paid: every invoice,
    pro rata (R15). Any supplier: an invoice under an active saga hold releases only what its renter paid
    (the same pro rata) — the hold is for the unpaid part."""
    per_invoice: dict[InvoiceRef, Fraction] = defaultdict(Fraction)
    for e in earnings:
        if (e.supplier_id, e.currency) == (supplier_id, currency):
            per_invoice[e.ref] += e.earning_x3600
    holds = holds or {}
    settled_back = settled_back or {}
    out = []
    for ref in sorted(per_invoice, key=lambda r: (r.contract_id, r.period_start)):
        e_minor = invoice_earnings_minor(per_invoice[ref], currency)
        hold = holds.get(ref)
        if hold is not None and at is not None and hold.active(at):
            # The saga holds what the renter has not paid: the part its money covers is released pro rata,
            # as R15 releases a pay-when-paid supplier's (a negative E: nothing to hold).
            out.append(HeldEarnings(ref, e_minor, released_minor(e_minor, invoices.get(ref), settled_back.get(ref, 0))))
        elif pay_when_paid:
            out.append(HeldEarnings(ref, e_minor, released_minor(e_minor, invoices.get(ref), settled_back.get(ref, 0))))
    return tuple(out)


def plan_pair(inputs: PlanningInputs, supplier_id: str, currency: str) -> Plan | None:
    """The plan of one (supplier, statement currency); None when no final month is left unpaid."""
    at = inputs.at
    final = [
        s for s in inputs.statements if (s.supplier_id, s.currency) == (supplier_id, currency) and s.issued_at <= at
    ]
    prior = [p for p in inputs.prior if (p.supplier_id, p.currency) == (supplier_id, currency)]
    paid_months = {m for p in prior for m in p.months}
    months = tuple(sorted({s.month for s in final} - paid_months))
    if not months:
        return None
    payee = inputs.payees.get(supplier_id)
    holdings = holdings_of(
        supplier_id,
        currency,
        inputs.earnings,
        inputs.invoices,
        pay_when_paid=payee is not None and payee.pay_when_paid,
        holds=inputs.holds,
        settled_back=inputs.settled_back,
        at=at,
    )
    held = sum(h.held_minor for h in holdings)
    nets = sum(max(s.net_minor, 0) for s in final)
    amount = nets - held - sum(p.amount_minor for p in prior)
    base = Plan(
        payout_id=payout_id_for(supplier_id, currency, months),
        supplier_id=supplier_id,
        currency=currency,
        months=months,
        amount_minor=amount,
        held_minor=held,
        state=None,
        reason=None,
        holdings=holdings,
    )
    if payee is None:
        return _with(base, reason="no_payee")
    base = _with(base, payout_currency=payee.payout_currency, rail=payee.rail, payee_event_id=payee.event_id)
    if amount <= 0:
        return _with(base, reason="nothing_payable")
    if payee.payout_currency == currency:
        payout_minor = amount
        base = _with(base, payout_amount_minor=amount)
    else:
        rate = latest_rate(inputs.rates, currency, payee.payout_currency, at)
        if rate is None:
            return _with(base, reason="no_fx_rate")
        payout_minor, exact = convert(amount, currency, rate.rate, payee.payout_currency)
        base = _with(
            base, payout_amount_minor=payout_minor, rate_id=rate.rate_id, rate=rate.rate, converted_exact=exact
        )
    # A payout is at least one minor unit: a tiny amount converted to zero waits like one below the minimum.
    minimum_minor = max(payee.minimum_payout * 10 ** currency_exponent(payee.payout_currency), 1)
    if payout_minor < minimum_minor:
        return _with(base, reason="below_minimum")
    if payee.on_hold:
        return _with(base, state="on_hold", reason="on_hold")
    return _with(base, state="planned")


def plan_payouts(inputs: PlanningInputs) -> list[Plan]:
    """Every (supplier, statement currency) with a final month not yet paid out, in key order."""
    pairs = sorted({(s.supplier_id, s.currency) for s in inputs.statements if s.issued_at <= inputs.at})
    plans = [plan for pair in pairs if (plan := plan_pair(inputs, *pair)) is not None]
    for plan in plans:
        assert plan.held_minor >= 0
        assert plan.is_payout == (plan.state is not None)
        if plan.is_payout:
            assert plan.amount_minor > 0 and plan.payout_amount_minor is not None
    return plans


def _with(plan: Plan, **changes: object) -> Plan:
    return replace(plan, **changes)  # type: ignore[arg-type]
