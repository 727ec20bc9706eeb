"""Invoices and credit notes (R1, R3, R5, R6, R7, R10): pure, no I/O, no clock.

The shell gathers one contract period close into :class:`InvoiceInputs`; :func:`assemble_invoice`
turns it into an :class:`InvoiceDraft`; the shell assigns the number and id and emits
:func:`to_event`. Late corrections of a contract whose last period is already invoiced go on a credit
note instead (:func:`needs_credit_note`, :func:`assemble_credit_note`).

Units:

* ``*_x3600`` — exact decimals times 3600, as on ``charges.rated.v1`` / ``wallet.drawn``; the exact
  amount is ``x3600 / 3600``, divided once per line (R4).
* ``exact`` — :class:`fractions.Fraction`, major units, never rounded.
* ``*_minor`` — ``int`` minor units of the contract's currency; an exact amount becomes minor units
  only through :func:`libs.money.round_minor` (half to even, once per line, R6).
* ``*_gpu_seconds`` — ``gpu_count x seconds``.

Sign convention: invoice lines are signed as the renter reads them (an SLA credit is negative; a
credit note that gives money back has a negative total).

Invariants (asserted in :func:`assemble_invoice`): subtotal = usage + true-up + adjustments + SLA
credit; total = subtotal + tax; tax = 0 when the subtotal is not positive; amount due and credit
carried forward are ≥ 0, at most one of them non-zero, and
``amount_due - credit_carried_forward = total - prepaid_applied - credit_applied``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from domain.contracts.periods import last_second, period_containing
from domain.contracts.terms import BillingMode, ContractTerms, PricedFields, SlaTierTerms
from libs.errors import DomainRuleError
from libs.money import Exact, currency_exponent, format_minor, minor_to_exact, round_minor
from libs.times import seconds_between
from schemas.events import AdjustmentLine, CreditNoteIssued, InvoiceFinalized, InvoiceLines
from services.invoicing.statements import ChargebackPart, chargeback_month, month_of, split_chargeback

__all__ = [
    "MAX_ADJUSTMENT_LINES",
    "AdjustmentDraft",
    "AdjustmentKind",
    "AllocationOutage",
    "CreditNoteDraft",
    "CreditNoteInputs",
    "InvoiceDraft",
    "InvoiceInputs",
    "LateCorrection",
    "PeriodTax",
    "PeriodTotals",
    "PriorChargeback",
    "RoundedAmount",
    "SlaEvaluation",
    "assemble_credit_note",
    "assemble_invoice",
    "compute_uptime",
    "credit_note_to_event",
    "evaluate_sla",
    "needs_credit_note",
    "prorate_commitment",
    "rates_instant",
    "select_sla_tier",
    "tax_on",
    "to_event",
]

AdjustmentKind = Literal["usage", "commitment_true_up", "sla_credit"]
"""``commitment_true_up`` lines exist only when the shell asks for the re-evaluation
(:attr:`LateCorrection.true_up_billed_minor`); see :func:`_assemble_adjustments`."""

MAX_ADJUSTMENT_LINES = 256
"""Adjustment lines one document carries (the ``invoices.finalized.v1`` schema's bound)."""

UPTIME_PLACES = 12
"""Decimal places of the uptime shown on an invoice (truncated, see :func:`_uptime_decimal`)."""


# --- inputs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodTotals:
    """A contract period's usage and GPU-seconds, all meters, inside the period and the term.

    As totals they are ≥ 0 with ``outage ≤ provisioned - maintenance``; as the delta of a late
    correction (:attr:`LateCorrection.delta`) they are signed.
    """

    usage_x3600: Decimal
    """Σ ``charge_x3600`` of the period's charges (every meter, every revision)."""
    provisioned_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    """Outage inside a maintenance window is already maintenance (metering, R7)."""

    @property
    def usage_exact(self) -> Exact:
        """Exact usage charges in major units: ``usage_x3600 / 3600``, divided once."""
        return Fraction(self.usage_x3600) / 3600

    def plus(self, delta: PeriodTotals) -> PeriodTotals:
        return PeriodTotals(
            usage_x3600=self.usage_x3600 + delta.usage_x3600,
            provisioned_gpu_seconds=self.provisioned_gpu_seconds + delta.provisioned_gpu_seconds,
            maintenance_gpu_seconds=self.maintenance_gpu_seconds + delta.maintenance_gpu_seconds,
            outage_gpu_seconds=self.outage_gpu_seconds + delta.outage_gpu_seconds,
        )


@dataclass(frozen=True)
class AllocationOutage:
    """One allocation's outage GPU-seconds in a contract period: its share of the SLA chargeback."""

    allocation_id: str
    supplier_id: str
    outage_gpu_seconds: int


@dataclass(frozen=True)
class PriorChargeback:
    """What an allocation has already been charged back for a period (signed as on statements, ≤ 0)."""

    allocation_id: str
    supplier_id: str
    amount_minor: int


@dataclass(frozen=True)
class LateCorrection:
    """Charges of an already-invoiced period that were rated after its document (R3).

    ``before + delta`` are the period's totals after the correction; the SLA credit of the period is
    re-evaluated on them (R7) against ``credited_minor``.
    """

    period_start: datetime
    period_end: datetime
    delta: PeriodTotals
    """Signed sums of the late charges of this period (usage x3600 and GPU-seconds deltas)."""
    before: PeriodTotals
    """The period's totals as of the last document that covered it."""
    credited_minor: int
    """SLA credit already on documents for this period (≤ 0): its invoice line + earlier SLA adjustments."""
    allocation_outages: tuple[AllocationOutage, ...] = ()
    """Per-allocation outage GPU-seconds of the period AFTER the correction (sum = after.outage)."""
    charged_back: tuple[PriorChargeback, ...] = ()
    """Chargebacks already passed on for this period, per allocation (sum = ``credited_minor``)."""
    drawn_delta_x3600: Decimal = Decimal(0)
    """Prepaid only: Σ ``drawn_x3600`` of wallet draws for this period made since its document
    (money the wallet paid, or returned when negative, for the late charges)."""
    true_up_billed_minor: int | None = None
    """Commitment true-up already on documents for this period (≥ 0): its invoice line + earlier
    ``commitment_true_up`` adjustments. ``None``: the true-up is not re-evaluated (R5 is then
    applied only at the period's own close, as before this field existed)."""

    @property
    def after(self) -> PeriodTotals:
        return self.before.plus(self.delta)


@dataclass(frozen=True)
class InvoiceInputs:
    """Everything one period close of one contract needs (gathered by the shell)."""

    terms: ContractTerms
    period_start: datetime
    period_end: datetime
    totals: PeriodTotals
    """The period's usage and seconds, rated before the close."""
    allocation_outages: tuple[AllocationOutage, ...]
    """Per-allocation outage GPU-seconds of the period (sum = ``totals.outage_gpu_seconds``)."""
    drawn_x3600: Decimal
    """Prepaid: Σ ``drawn_x3600`` of the period's wallet draws (R8); postpaid: 0."""
    corrections: tuple[LateCorrection, ...]
    """Late corrections of earlier, already-invoiced periods of this contract; one per period."""
    credit_carried_in_minor: int
    """Credit carried from the previous invoice of the contract (≥ 0)."""
    issued_at: datetime
    """Finalization instant (from the clock tick that closed the period)."""


# --- outputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundedAmount:
    """An exact amount and the minor units a document shows for it (rounded once, R6)."""

    exact: Exact
    amount_minor: int

    def rounding_difference(self, currency: str) -> Exact:
        """``exact - shown``, major units: what the rounding account absorbs for this amount."""
        return self.exact - minor_to_exact(self.amount_minor, currency)


def _rounded(exact: Exact, currency: str) -> RoundedAmount:
    return RoundedAmount(exact, round_minor(exact, currency))


@dataclass(frozen=True)
class AdjustmentDraft:
    """A line correcting an earlier period (R3), naming that period."""

    period_start: datetime
    period_end: datetime
    kind: AdjustmentKind
    amount: RoundedAmount
    """``usage``: exact = the late usage delta. ``sla_credit``: exact = new exact credit - the minor
    amount already credited (as exact); shown = round(new exact credit) - already credited."""


@dataclass(frozen=True)
class SlaEvaluation:
    """R7 for one period: uptime, the tier that applies and the (negative) credit."""

    uptime: Exact | None
    """``None``: no provisioned - maintenance seconds, hence no credit."""
    tier: SlaTierTerms | None
    credit: RoundedAmount
    """≤ 0: -percent/100 x exact usage charges, rounded once."""

    @property
    def credit_percent(self) -> Decimal:
        return self.tier.credit_percent if self.tier is not None else Decimal(0)


@dataclass(frozen=True)
class InvoiceDraft:
    """A finalizable invoice; the shell adds number and id (:func:`to_event`).

    Every amount keeps its exact value beside its minor units so the shell can post
    (accrued - invoiced) to the rounding account.
    """

    contract_id: str
    renter_id: str
    currency: str
    billing_mode: BillingMode
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    due_at: datetime
    rates_at: datetime
    """The instant whose SLA tiers and tax rate apply to the whole period (R7)."""
    commitment_prorated: Exact
    usage: RoundedAmount
    commitment_true_up: RoundedAmount
    adjustments: tuple[AdjustmentDraft, ...]
    sla: SlaEvaluation
    subtotal_minor: int
    tax_rate: Decimal
    tax: RoundedAmount
    total_minor: int
    prepaid_applied: RoundedAmount
    credit_applied_minor: int
    """The credit carried in from the previous invoice (R10 subtracts all of it)."""
    amount_due_minor: int
    credit_carried_forward_minor: int
    chargebacks: tuple[ChargebackPart, ...]
    """The SLA credit of this period and the SLA adjustments, passed on to suppliers (R12)."""

    @property
    def sla_credit(self) -> RoundedAmount:
        return self.sla.credit

    @property
    def adjustments_minor(self) -> int:
        return sum(a.amount.amount_minor for a in self.adjustments)


@dataclass(frozen=True)
class CreditNoteInputs:
    """Late corrections of a contract that no later invoice can carry (:func:`needs_credit_note`)."""

    terms: ContractTerms
    corrections: tuple[LateCorrection, ...]
    issued_at: datetime


@dataclass(frozen=True)
class PeriodTax:
    """The tax of a credit note's lines for one corrected period, at that period's rate."""

    period_start: datetime
    period_end: datetime
    tax_rate: Decimal
    taxable_minor: int
    """Σ of the period's rounded adjustment lines on the note."""
    tax: RoundedAmount


@dataclass(frozen=True)
class CreditNoteDraft:
    """A finalizable credit note; the shell adds number, id and the invoice it corrects."""

    contract_id: str
    renter_id: str
    currency: str
    billing_mode: BillingMode
    issued_at: datetime
    adjustments: tuple[AdjustmentDraft, ...]
    subtotal_minor: int
    taxes: tuple[PeriodTax, ...]
    tax_minor: int
    total_minor: int
    """Signed: negative gives money back to the renter (the usual case)."""
    prepaid_applied: RoundedAmount
    """Prepaid: the wallet draws of the late charges (negative: already returned to the wallet)."""
    chargebacks: tuple[ChargebackPart, ...]

    @property
    def is_empty(self) -> bool:
        """No line: the corrections change nothing a document shows; no credit note is issued."""
        return not self.adjustments

    @property
    def amount_due_minor(self) -> int:
        """Signed settlement after the wallet: negative is owed to the renter, positive by the renter."""
        return self.total_minor - self.prepaid_applied.amount_minor


# --- rules ----------------------------------------------------------------------------------------------


def rates_instant(terms: ContractTerms, period_end: datetime) -> datetime:
    """R7: the instant whose SLA tiers and tax rate apply to the whole period: the period's last
    second, or the term's last second when the term ended before it."""
    at = last_second(period_end)
    term_end = terms.term_end
    if term_end is not None and last_second(term_end) < at:
        at = last_second(term_end)
    return at


def prorate_commitment(terms: ContractTerms, period_start: datetime, period_end: datetime) -> Exact:
    """R5: Σ over the pieces of ``[period_start, period_end) ∩ term`` in which one commitment is in force
    of ``commitment x piece_seconds / period_seconds`` (exact, major units, ≥ 0)."""
    period_seconds = seconds_between(period_start, period_end)
    assert period_seconds > 0
    start = max(period_start, terms.starts_at)
    term_end = terms.term_end
    end = period_end if term_end is None else min(period_end, term_end)
    prorated = Fraction(0)
    if start >= end:
        return prorated
    for piece_start, piece_end, fields, _version in terms.constant_pieces(start, end):
        commitment = Fraction(fields.commitment_per_period)
        if commitment > 0:
            prorated += commitment * seconds_between(piece_start, piece_end) / period_seconds
    return prorated


def compute_uptime(totals: PeriodTotals) -> Exact | None:
    """R7: ``1 - outage / (provisioned - maintenance)``; ``None`` when there are no such seconds."""
    available = totals.provisioned_gpu_seconds - totals.maintenance_gpu_seconds
    if available <= 0:
        return None
    return 1 - Fraction(totals.outage_gpu_seconds, available)


def select_sla_tier(tiers: Iterable[SlaTierTerms], uptime: Exact | None) -> SlaTierTerms | None:
    """R7: the tier with the smallest ``below_uptime`` strictly greater than ``uptime`` (exact).

    ``None`` when uptime is ``None`` or reaches every threshold. Two tiers with the same threshold:
    the larger credit percent (an order-independent choice; contracts should not have them).
    """
    if uptime is None:
        return None
    above = [tier for tier in tiers if Fraction(tier.below_uptime) > uptime]
    if not above:
        return None
    return min(above, key=lambda tier: (tier.below_uptime, -tier.credit_percent))


def evaluate_sla(fields: PricedFields, totals: PeriodTotals, currency: str) -> SlaEvaluation:
    """R7 for one period with the fields in force at :func:`rates_instant`."""
    uptime = compute_uptime(totals)
    tier = select_sla_tier(fields.sla_tiers, uptime)
    percent = Fraction(tier.credit_percent) if tier is not None else Fraction(0)
    credit_exact = -percent / 100 * totals.usage_exact
    return SlaEvaluation(uptime=uptime, tier=tier, credit=_rounded(credit_exact, currency))


def tax_on(subtotal_minor: int, tax_rate: Decimal, currency: str) -> RoundedAmount:
    """R10/R6: tax on the ROUNDED subtotal, rounded once; zero when the subtotal is not positive."""
    if subtotal_minor <= 0:
        return RoundedAmount(Fraction(0), 0)
    return _rounded(minor_to_exact(subtotal_minor, currency) * Fraction(tax_rate), currency)


def needs_credit_note(terms: ContractTerms, last_invoiced_period_end: datetime | None) -> bool:
    """Whether late corrections must go on a credit note: the term has ended and the period that
    contains its last second is already invoiced, so no later invoice of the contract exists."""
    term_end = terms.term_end
    if term_end is None or last_invoiced_period_end is None or term_end <= terms.starts_at:
        return False
    _, last_period_end = period_containing(terms.billing_anchor_day, last_second(term_end))
    return last_invoiced_period_end >= last_period_end


# --- checks ---------------------------------------------------------------------------------------------


def _check_period(terms: ContractTerms, start: datetime, end: datetime) -> None:
    if period_containing(terms.billing_anchor_day, start) != (start, end):
        raise DomainRuleError(f"[{start}, {end}) is not a billing period of contract {terms.contract_id} (R1)")
    term_end = terms.term_end
    if end <= terms.starts_at or (term_end is not None and start >= term_end):
        raise DomainRuleError(f"period [{start}, {end}) does not overlap the term of {terms.contract_id}")


def _check_totals(totals: PeriodTotals, what: str) -> None:
    if not totals.usage_x3600.is_finite() or totals.usage_x3600 < 0:
        raise DomainRuleError(f"{what}: usage_x3600 {totals.usage_x3600} is not a finite amount >= 0")
    seconds = (totals.provisioned_gpu_seconds, totals.maintenance_gpu_seconds, totals.outage_gpu_seconds)
    if min(seconds) < 0:
        raise DomainRuleError(f"{what}: negative GPU-seconds {seconds}")
    if totals.maintenance_gpu_seconds + totals.outage_gpu_seconds > totals.provisioned_gpu_seconds:
        raise DomainRuleError(f"{what}: maintenance + outage exceed provisioned GPU-seconds {seconds}")


def _outage_shares(outages: Iterable[AllocationOutage], total_gpu_seconds: int, what: str) -> dict[str, int]:
    shares: dict[str, int] = {}
    for outage in outages:
        if outage.allocation_id in shares:
            raise DomainRuleError(f"{what}: allocation {outage.allocation_id} listed twice")
        if outage.outage_gpu_seconds < 0:
            raise DomainRuleError(f"{what}: allocation {outage.allocation_id} has negative outage seconds")
        shares[outage.allocation_id] = outage.outage_gpu_seconds
    if sum(shares.values()) != total_gpu_seconds:
        raise DomainRuleError(
            f"{what}: allocation outages sum to {sum(shares.values())}, the period has {total_gpu_seconds}"
        )
    return shares


def _check_drawn(terms: ContractTerms, drawn_x3600: Decimal, what: str) -> None:
    if not drawn_x3600.is_finite():
        raise DomainRuleError(f"{what}: drawn_x3600 is not finite")
    if terms.billing_mode != "prepaid" and drawn_x3600 != 0:
        raise DomainRuleError(f"{what}: wallet draws on postpaid contract {terms.contract_id}")


# --- adjustments (R3) -----------------------------------------------------------------------------------


def _chargeback_parts(
    terms: ContractTerms,
    period_start: datetime,
    period_end: datetime,
    credit_minor: int,
    outages: tuple[AllocationOutage, ...],
    prior: tuple[PriorChargeback, ...],
    month: str,
) -> list[ChargebackPart]:
    """Split a period's (cumulative) rounded SLA credit over its allocations by outage share and
    return what changes against what was already charged back, landing on ``month``."""
    what = f"period [{period_start}, {period_end})"
    shares = {o.allocation_id: o.outage_gpu_seconds for o in outages}
    suppliers = {o.allocation_id: o.supplier_id for o in outages}
    prior_minor: dict[str, int] = {}
    for p in prior:
        if p.allocation_id in prior_minor:
            raise DomainRuleError(f"{what}: prior chargeback of {p.allocation_id} listed twice")
        if suppliers.setdefault(p.allocation_id, p.supplier_id) != p.supplier_id:
            raise DomainRuleError(f"{what}: allocation {p.allocation_id} has two suppliers")
        prior_minor[p.allocation_id] = p.amount_minor
    new_parts = split_chargeback(-credit_minor, shares) if credit_minor < 0 else {a: 0 for a in shares}
    parts: list[ChargebackPart] = []
    for allocation_id in sorted(suppliers):
        change = -new_parts.get(allocation_id, 0) - prior_minor.get(allocation_id, 0)
        if change != 0:
            parts.append(
                ChargebackPart(
                    supplier_id=suppliers[allocation_id],
                    allocation_id=allocation_id,
                    contract_id=terms.contract_id,
                    currency=terms.currency,
                    period_start=period_start,
                    period_end=period_end,
                    month=month,
                    amount_minor=change,
                )
            )
    return parts


def _assemble_adjustments(
    terms: ContractTerms, corrections: tuple[LateCorrection, ...], month: str
) -> tuple[tuple[AdjustmentDraft, ...], tuple[ChargebackPart, ...]]:
    """R3: per corrected period a ``usage`` line (the late usage delta, rounded once); when asked
    (``true_up_billed_minor`` given), a ``commitment_true_up`` line when the R5 true-up of the
    corrected usage differs from what was billed; and, when the re-evaluated SLA credit differs
    from what was credited, an ``sla_credit`` line. Lines of one period follow R10's order."""
    currency = terms.currency
    seen: set[datetime] = set()
    lines: list[AdjustmentDraft] = []
    chargebacks: list[ChargebackPart] = []
    for c in sorted(corrections, key=lambda c: c.period_start):
        what = f"correction of period [{c.period_start}, {c.period_end})"
        if c.period_start in seen:
            raise DomainRuleError(f"{what}: one correction per period (the shell sums them)")
        seen.add(c.period_start)
        _check_period(terms, c.period_start, c.period_end)
        _check_totals(c.before, what + " before")
        _check_totals(c.after, what + " after")
        _check_drawn(terms, c.drawn_delta_x3600, what)
        if c.credited_minor > 0:
            raise DomainRuleError(f"{what}: credited_minor must be <= 0 (a credit), got {c.credited_minor}")
        if sum(p.amount_minor for p in c.charged_back) != c.credited_minor:
            raise DomainRuleError(f"{what}: prior chargebacks do not sum to the credited amount")
        _outage_shares(c.allocation_outages, c.after.outage_gpu_seconds, what)

        usage_delta = c.delta.usage_exact
        if usage_delta != 0:
            lines.append(AdjustmentDraft(c.period_start, c.period_end, "usage", _rounded(usage_delta, currency)))

        if c.true_up_billed_minor is not None:
            # R5 re-evaluated on the corrected usage: the true-up the period should carry, minus
            # what documents already billed for it (the exact part keeps the rounding honest).
            if c.true_up_billed_minor < 0:
                raise DomainRuleError(f"{what}: true_up_billed_minor must be >= 0, got {c.true_up_billed_minor}")
            prorated = prorate_commitment(terms, c.period_start, c.period_end)
            after_usage = c.after.usage_exact
            true_up = _rounded(prorated - after_usage if after_usage < prorated else Fraction(0), currency)
            true_up_change_minor = true_up.amount_minor - c.true_up_billed_minor
            if true_up_change_minor != 0:
                exact = true_up.exact - minor_to_exact(c.true_up_billed_minor, currency)
                lines.append(
                    AdjustmentDraft(
                        c.period_start,
                        c.period_end,
                        "commitment_true_up",
                        RoundedAmount(exact, true_up_change_minor),
                    )
                )

        fields = terms.fields_at(rates_instant(terms, c.period_end))
        sla = evaluate_sla(fields, c.after, currency)
        sla_change_minor = sla.credit.amount_minor - c.credited_minor
        if sla_change_minor != 0:
            exact = sla.credit.exact - minor_to_exact(c.credited_minor, currency)
            lines.append(
                AdjustmentDraft(c.period_start, c.period_end, "sla_credit", RoundedAmount(exact, sla_change_minor))
            )
        chargebacks += _chargeback_parts(
            terms,
            c.period_start,
            c.period_end,
            sla.credit.amount_minor,
            c.allocation_outages,
            c.charged_back,
            month,
        )
    if len(lines) > MAX_ADJUSTMENT_LINES:
        raise DomainRuleError(f"{len(lines)} adjustment lines; one document carries at most {MAX_ADJUSTMENT_LINES}")
    return tuple(lines), tuple(chargebacks)


def _sum_drawn(drawn: Iterable[Decimal]) -> Exact:
    return sum((Fraction(d) / 3600 for d in drawn), Fraction(0))


# --- invoice --------------------------------------------------------------------------------------------


def assemble_invoice(inputs: InvoiceInputs) -> InvoiceDraft:
    """R5, R6, R7, R10 (and R3 adjustments) for one contract period close.

    Raises :class:`DomainRuleError` when the inputs contradict each other or the rules (a period
    that is not a billing period of the contract, negative totals, draws on a postpaid contract,
    allocation outages that do not add up, a correction of a period not before this one).
    """
    terms = inputs.terms
    currency = terms.currency
    currency_exponent(currency)  # raises UnknownCurrencyError
    _check_period(terms, inputs.period_start, inputs.period_end)
    _check_totals(inputs.totals, "period")
    _check_drawn(terms, inputs.drawn_x3600, "period")
    if inputs.credit_carried_in_minor < 0:
        raise DomainRuleError(f"credit carried in must be >= 0, got {inputs.credit_carried_in_minor}")
    for c in inputs.corrections:
        if c.period_end > inputs.period_start:
            raise DomainRuleError(f"correction of [{c.period_start}, {c.period_end}) is not of an earlier period")
    _outage_shares(inputs.allocation_outages, inputs.totals.outage_gpu_seconds, "period")

    # R5: commitment true-up, exact difference rounded once; usage before any credit.
    usage_exact = inputs.totals.usage_exact
    prorated = prorate_commitment(terms, inputs.period_start, inputs.period_end)
    true_up_exact = prorated - usage_exact if usage_exact < prorated else Fraction(0)

    # R7: tiers and tax rate in force at the period's (or the term's) last second.
    rates_at = rates_instant(terms, inputs.period_end)
    fields = terms.fields_at(rates_at)
    sla = evaluate_sla(fields, inputs.totals, currency)

    month = chargeback_month(inputs.period_end)
    adjustments, adjustment_chargebacks = _assemble_adjustments(terms, inputs.corrections, month)
    chargebacks = _chargeback_parts(
        terms,
        inputs.period_start,
        inputs.period_end,
        sla.credit.amount_minor,
        inputs.allocation_outages,
        (),
        month,
    )

    usage = _rounded(usage_exact, currency)
    true_up = _rounded(true_up_exact, currency)
    adjustments_minor = sum(a.amount.amount_minor for a in adjustments)
    subtotal = usage.amount_minor + true_up.amount_minor + adjustments_minor + sla.credit.amount_minor
    tax = tax_on(subtotal, fields.tax_rate, currency)
    total = subtotal + tax.amount_minor

    # R10: prepaid applied = the draws of the period (and of the late charges on this invoice),
    # summed exactly and rounded once; the wallet never pays tax, true-up or credits.
    prepaid = _rounded(_sum_drawn([inputs.drawn_x3600, *(c.drawn_delta_x3600 for c in inputs.corrections)]), currency)
    due = total - prepaid.amount_minor - inputs.credit_carried_in_minor
    amount_due, carried_forward = (due, 0) if due >= 0 else (0, -due)

    draft = InvoiceDraft(
        contract_id=terms.contract_id,
        renter_id=terms.renter_id,
        currency=currency,
        billing_mode=terms.billing_mode,
        period_start=inputs.period_start,
        period_end=inputs.period_end,
        issued_at=inputs.issued_at,
        due_at=inputs.issued_at + timedelta(days=terms.payment_terms_days),
        rates_at=rates_at,
        commitment_prorated=prorated,
        usage=usage,
        commitment_true_up=true_up,
        adjustments=adjustments,
        sla=sla,
        subtotal_minor=subtotal,
        tax_rate=fields.tax_rate,
        tax=tax,
        total_minor=total,
        prepaid_applied=prepaid,
        credit_applied_minor=inputs.credit_carried_in_minor,
        amount_due_minor=amount_due,
        credit_carried_forward_minor=carried_forward,
        chargebacks=(*adjustment_chargebacks, *chargebacks),
    )
    # Paired assertions: the same sums computed a second way.
    lines = (draft.usage, draft.commitment_true_up, draft.sla_credit, *(a.amount for a in draft.adjustments))
    assert draft.subtotal_minor == sum(line.amount_minor for line in lines)
    assert draft.total_minor == draft.subtotal_minor + draft.tax.amount_minor
    assert draft.subtotal_minor > 0 or draft.tax.amount_minor == 0
    assert min(draft.amount_due_minor, draft.credit_carried_forward_minor) == 0
    assert draft.amount_due_minor >= 0
    assert draft.credit_carried_forward_minor >= 0
    assert draft.amount_due_minor - draft.credit_carried_forward_minor == (
        draft.total_minor - draft.prepaid_applied.amount_minor - draft.credit_applied_minor
    )
    assert draft.commitment_true_up.amount_minor >= 0
    assert draft.sla_credit.amount_minor <= 0
    return draft


def _decimal(amount_minor: int, currency: str) -> Decimal:
    """Minor units → a Decimal whose ``str`` has exactly the currency's digits (``"153.40"``)."""
    return Decimal(format_minor(amount_minor, currency))


def _uptime_decimal(uptime: Exact) -> Decimal:
    """Uptime for display, truncated (not rounded) to :data:`UPTIME_PLACES` places.

    Truncation keeps the comparison with any threshold of at most that many places: the shown
    uptime is below a threshold exactly when the exact one is, so the document never shows an
    uptime that seems to reach a tier that applied. Below 10⁻⁶ six places are shown instead, so
    that ``str`` never switches to exponent notation (which the wire format refuses).
    """
    places = UPTIME_PLACES
    scaled = (uptime.numerator * 10**places) // uptime.denominator
    if 0 <= scaled < 10**6:
        places = 6
        scaled = (uptime.numerator * 10**places) // uptime.denominator
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled)).rjust(places + 1, "0")
    return Decimal(f"{sign}{digits[:-places]}.{digits[-places:]}")


def _adjustment_lines(adjustments: Iterable[AdjustmentDraft], currency: str) -> list[AdjustmentLine]:
    return [
        AdjustmentLine(
            period_start=a.period_start,
            period_end=a.period_end,
            kind=a.kind,
            amount=_decimal(a.amount.amount_minor, currency),
        )
        for a in adjustments
    ]


def to_event(draft: InvoiceDraft, number: str, invoice_id: str) -> InvoiceFinalized:
    """The ``invoice.finalized`` payload; amounts carry exactly the currency's minor digits."""
    currency = draft.currency

    def money(amount_minor: int) -> Decimal:
        return _decimal(amount_minor, currency)

    return InvoiceFinalized(
        invoice_id=invoice_id,
        number=number,
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=currency,
        billing_mode=draft.billing_mode,
        period_start=draft.period_start,
        period_end=draft.period_end,
        issued_at=draft.issued_at,
        due_at=draft.due_at,
        lines=InvoiceLines(
            usage=money(draft.usage.amount_minor),
            commitment_true_up=money(draft.commitment_true_up.amount_minor),
            adjustments=money(draft.adjustments_minor),
            sla_credit=money(draft.sla_credit.amount_minor),
        ),
        adjustment_lines=_adjustment_lines(draft.adjustments, currency),
        subtotal=money(draft.subtotal_minor),
        tax_rate=draft.tax_rate,
        tax=money(draft.tax.amount_minor),
        total=money(draft.total_minor),
        prepaid_applied=money(draft.prepaid_applied.amount_minor),
        credit_applied=money(draft.credit_applied_minor),
        amount_due=money(draft.amount_due_minor),
        credit_carried_forward=money(draft.credit_carried_forward_minor),
        uptime=None if draft.sla.uptime is None else _uptime_decimal(draft.sla.uptime),
        sla_credit_percent=draft.sla.credit_percent,
    )


# --- credit note ----------------------------------------------------------------------------------------


def assemble_credit_note(inputs: CreditNoteInputs) -> CreditNoteDraft:
    """Late corrections that no later invoice can carry (:func:`needs_credit_note`).

    Lines are built exactly as an invoice's adjustment lines (R3, R6, R7). Tax is computed per
    corrected period at the tax rate in force at that period's end (:func:`rates_instant`), on the
    sum of that period's rounded lines, rounded once, and signed: a credit note gives back tax
    (there is no zero floor as on invoices). Chargebacks land on the month of ``issued_at``.
    """
    terms = inputs.terms
    currency = terms.currency
    currency_exponent(currency)
    adjustments, chargebacks = _assemble_adjustments(terms, inputs.corrections, month_of(inputs.issued_at))
    taxes: list[PeriodTax] = []
    periods = sorted({(a.period_start, a.period_end) for a in adjustments})
    for period_start, period_end in periods:
        taxable = sum(a.amount.amount_minor for a in adjustments if a.period_start == period_start)
        rate = terms.fields_at(rates_instant(terms, period_end)).tax_rate
        tax_exact = minor_to_exact(taxable, currency) * Fraction(rate)
        taxes.append(PeriodTax(period_start, period_end, rate, taxable, _rounded(tax_exact, currency)))
    subtotal = sum(a.amount.amount_minor for a in adjustments)
    tax_minor = sum(t.tax.amount_minor for t in taxes)
    prepaid = _rounded(_sum_drawn(c.drawn_delta_x3600 for c in inputs.corrections), currency)
    draft = CreditNoteDraft(
        contract_id=terms.contract_id,
        renter_id=terms.renter_id,
        currency=currency,
        billing_mode=terms.billing_mode,
        issued_at=inputs.issued_at,
        adjustments=adjustments,
        subtotal_minor=subtotal,
        taxes=tuple(taxes),
        tax_minor=tax_minor,
        total_minor=subtotal + tax_minor,
        prepaid_applied=prepaid,
        chargebacks=chargebacks,
    )
    assert draft.subtotal_minor == sum(t.taxable_minor for t in draft.taxes)
    assert draft.total_minor == draft.subtotal_minor + draft.tax_minor
    return draft


def credit_note_to_event(
    draft: CreditNoteDraft, number: str, credit_note_id: str, invoice_number: str
) -> CreditNoteIssued:
    """The ``credit_note.issued`` payload; ``invoice_number`` is the last invoice of the contract."""
    if draft.is_empty:
        raise DomainRuleError(f"an empty credit note for contract {draft.contract_id} is not issued")
    currency = draft.currency
    return CreditNoteIssued(
        credit_note_id=credit_note_id,
        number=number,
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=currency,
        invoice_number=invoice_number,
        adjustment_lines=_adjustment_lines(draft.adjustments, currency),
        subtotal=_decimal(draft.subtotal_minor, currency),
        tax=_decimal(draft.tax_minor, currency),
        total=_decimal(draft.total_minor, currency),
        issued_at=draft.issued_at,
    )
