"""R10: assembling a period's invoice (R5 true-up, R6 rounding, R7 SLA credit, prepaid and carried
credit applied) and its ``invoice.finalized`` event."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

from libs.errors import DomainRuleError
from libs.money import Exact, currency_exponent, format_minor
from schemas.events import AdjustmentLine, InvoiceFinalized, InvoiceLines
from services.invoicing.domain.adjustments import assemble_adjustments, chargeback_parts, sum_drawn
from services.invoicing.domain.model import UPTIME_PLACES, AdjustmentDraft, InvoiceDraft, InvoiceInputs, rounded_amount
from services.invoicing.domain.rules import (
    check_drawn,
    check_period,
    check_totals,
    evaluate_sla,
    outage_shares,
    prorate_commitment,
    rates_instant,
    tax_on,
)
from services.invoicing.statements import chargeback_month


def assemble_invoice(inputs: InvoiceInputs) -> InvoiceDraft:
    """R5, R6, R7, R10 (and R3 adjustments) for one contract period close.

    Raises :class:`DomainRuleError` when the inputs contradict each other or the rules (a period
    that is not a billing period of the contract, negative totals, draws on a postpaid contract,
    allocation outages that do not add up, a correction of a period not before this one).
    """
    terms = inputs.terms
    currency = terms.currency
    currency_exponent(currency)  # raises UnknownCurrencyError
    check_period(terms, inputs.period_start, inputs.period_end)
    check_totals(inputs.totals, "period")
    check_drawn(terms, inputs.drawn_x3600, "period")
    if inputs.credit_carried_in_minor < 0:
        raise DomainRuleError(f"credit carried in must be >= 0, got {inputs.credit_carried_in_minor}")
    for c in inputs.corrections:
        if c.period_end > inputs.period_start:
            raise DomainRuleError(f"correction of [{c.period_start}, {c.period_end}) is not of an earlier period")
    outage_shares(inputs.allocation_outages, inputs.totals.outage_gpu_seconds, "period")

    # R5: commitment true-up, exact difference rounded once; usage before any credit.
    usage_exact = inputs.totals.usage_exact
    prorated = prorate_commitment(terms, inputs.period_start, inputs.period_end)
    true_up_exact = prorated - usage_exact if usage_exact < prorated else Fraction(0)

    # R7: tiers and tax rate in force at the period's last second.
    rates_at = rates_instant(inputs.period_end)
    fields = terms.fields_at(rates_at)
    sla = evaluate_sla(fields, inputs.totals, currency)

    month = chargeback_month(inputs.period_end)
    adjustments, adjustment_chargebacks = assemble_adjustments(terms, inputs.corrections, month)
    chargebacks = chargeback_parts(
        terms,
        inputs.period_start,
        inputs.period_end,
        sla.credit.amount_minor,
        inputs.allocation_outages,
        (),
        month,
    )

    usage = rounded_amount(usage_exact, currency)
    true_up = rounded_amount(true_up_exact, currency)
    adjustments_minor = sum(a.amount.amount_minor for a in adjustments)
    subtotal = usage.amount_minor + true_up.amount_minor + adjustments_minor + sla.credit.amount_minor
    tax = tax_on(subtotal, fields.tax_rate, currency)
    total = subtotal + tax.amount_minor

    # R10: prepaid applied = the draws of the period (and of the late charges on this invoice),
    # summed exactly and rounded once; the wallet never pays tax, true-up or credits.
    prepaid = rounded_amount(
        sum_drawn([inputs.drawn_x3600, *(c.drawn_delta_x3600 for c in inputs.corrections)]), currency
    )
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


def decimal_amount(amount_minor: int, currency: str) -> Decimal:
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


def to_adjustment_lines(adjustments: Iterable[AdjustmentDraft], currency: str) -> list[AdjustmentLine]:
    return [
        AdjustmentLine(
            period_start=a.period_start,
            period_end=a.period_end,
            kind=a.kind,
            amount=decimal_amount(a.amount.amount_minor, currency),
        )
        for a in adjustments
    ]


def to_event(draft: InvoiceDraft, number: str, invoice_id: str) -> InvoiceFinalized:
    """The ``invoice.finalized`` payload; amounts carry exactly the currency's minor digits."""
    currency = draft.currency

    def money(amount_minor: int) -> Decimal:
        return decimal_amount(amount_minor, currency)

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
        adjustment_lines=to_adjustment_lines(draft.adjustments, currency),
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
