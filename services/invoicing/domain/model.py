"""The values invoicing's rules take and give: period totals, late corrections, invoice and credit
note inputs and drafts (units: see :mod:`services.invoicing.domain`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from domain.contracts.terms import BillingMode, ContractTerms, SlaTierTerms
from libs.money import Exact, minor_to_exact, round_minor
from services.invoicing.statements import ChargebackPart

AdjustmentKind = Literal["usage", "commitment_true_up", "sla_credit"]
"""``commitment_true_up`` lines exist only when the shell asks for the re-evaluation
(:attr:`LateCorrection.true_up_billed_minor`); see :func:`assemble_adjustments`."""

MAX_ADJUSTMENT_LINES = 256
"""Adjustment lines one document carries (the ``invoices.finalized.v1`` schema's bound)."""

UPTIME_PLACES = 12
"""Decimal places of the uptime shown on an invoice (truncated, see :mod:`services.invoicing.domain.invoice`)."""


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


@dataclass(frozen=True)
class RoundedAmount:
    """An exact amount and the minor units a document shows for it (rounded once, R6)."""

    exact: Exact
    amount_minor: int

    def rounding_difference(self, currency: str) -> Exact:
        """``exact - shown``, major units: what the rounding account absorbs for this amount."""
        return self.exact - minor_to_exact(self.amount_minor, currency)


def rounded_amount(exact: Exact, currency: str) -> RoundedAmount:
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
        """No line and no wallet draw: the corrections change nothing a document shows or settles; no
        credit note is issued. (A late draw alone — a late top-up settling the last period's overage —
        is a credit note with no line: the wallet paid what the invoice asked.)"""
        return not self.adjustments and self.prepaid_applied.amount_minor == 0

    @property
    def amount_due_minor(self) -> int:
        """Signed settlement after the wallet: negative is owed to the renter, positive by the renter."""
        return self.total_minor - self.prepaid_applied.amount_minor
