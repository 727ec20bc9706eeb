"""R3 extension: late corrections that no later invoice can carry go on a credit note, taxed at the
corrected period's rate; and its ``credit_note.issued`` event."""

from __future__ import annotations

from fractions import Fraction

from libs.errors import DomainRuleError
from libs.money import currency_exponent, minor_to_exact
from schemas.events import CreditNoteIssued
from services.invoicing.domain.adjustments import assemble_adjustments, sum_drawn
from services.invoicing.domain.invoice import decimal_amount, to_adjustment_lines
from services.invoicing.domain.model import CreditNoteDraft, CreditNoteInputs, PeriodTax, rounded_amount
from services.invoicing.domain.rules import rates_instant
from services.invoicing.statements import month_of


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
    adjustments, chargebacks = assemble_adjustments(terms, inputs.corrections, month_of(inputs.issued_at))
    taxes: list[PeriodTax] = []
    periods = sorted({(a.period_start, a.period_end) for a in adjustments})
    for period_start, period_end in periods:
        taxable = sum(a.amount.amount_minor for a in adjustments if a.period_start == period_start)
        rate = terms.fields_at(rates_instant(period_end)).tax_rate
        tax_exact = minor_to_exact(taxable, currency) * Fraction(rate)
        taxes.append(PeriodTax(period_start, period_end, rate, taxable, rounded_amount(tax_exact, currency)))
    subtotal = sum(a.amount.amount_minor for a in adjustments)
    tax_minor = sum(t.tax.amount_minor for t in taxes)
    prepaid = rounded_amount(sum_drawn(c.drawn_delta_x3600 for c in inputs.corrections), currency)
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
        adjustment_lines=to_adjustment_lines(draft.adjustments, currency),
        subtotal=decimal_amount(draft.subtotal_minor, currency),
        tax=decimal_amount(draft.tax_minor, currency),
        total=decimal_amount(draft.total_minor, currency),
        issued_at=draft.issued_at,
        prepaid_applied=decimal_amount(draft.prepaid_applied.amount_minor, currency),
    )
