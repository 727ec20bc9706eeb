"""Invoices and credit notes (R1, R3, R5, R6, R7, R10): pure, no I/O, no clock.

The shell gathers one contract period close into :class:`InvoiceInputs`; :func:`assemble_invoice`
turns it into an :class:`InvoiceDraft`; the shell assigns the number and id and emits
:func:`to_event`. Late corrections of a contract whose last period is already invoiced go on a credit
note instead (:func:`needs_credit_note`, :func:`assemble_credit_note`).

Modules: ``model`` (inputs and drafts), ``rules`` (single rules and checks), ``adjustments`` (R3
late corrections), ``invoice`` (R10), ``credit_note``; every public name is importable from here.

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

from services.invoicing.domain.credit_note import (
    assemble_credit_note,
    credit_note_to_event,
)
from services.invoicing.domain.invoice import (
    assemble_invoice,
    to_event,
)
from services.invoicing.domain.model import (
    MAX_ADJUSTMENT_LINES,
    AdjustmentDraft,
    AdjustmentKind,
    AllocationOutage,
    CreditNoteDraft,
    CreditNoteInputs,
    InvoiceDraft,
    InvoiceInputs,
    LateCorrection,
    PeriodTax,
    PeriodTotals,
    PriorChargeback,
    RoundedAmount,
    SlaEvaluation,
)
from services.invoicing.domain.rules import (
    compute_uptime,
    evaluate_sla,
    needs_credit_note,
    prorate_commitment,
    rates_instant,
    select_sla_tier,
    tax_on,
)

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
