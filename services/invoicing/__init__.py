"""Invoicing: invoices and credit notes per contract period (R3, R5-R7, R10), supplier statements
per month (R12).

``domain`` (invoices, credit notes) and ``statements`` (supplier statements) are the pure core: no
I/O, no clock, time and totals come from arguments. The I/O shell (handlers, store) gathers the
inputs, assigns numbers and ids, posts to the ledger and emits the events built here.

Layout: ``handlers`` (the consumer records), ``closer`` (the background loop) running
``invoice_close`` (contract periods) and ``statement_close`` (months), whose ledger entries are built
purely in ``entries``; ``store`` (SQL, one module per purpose); ``render`` (JSON and PDF files).
Which charges, draws, earnings and chargebacks a document carries is decided by the named claims of
:mod:`services.invoicing.store.membership` (``claim_invoice_charges``, ``claim_invoice_draws``,
``find_late_corrections``/``claim_late_corrections``, ``claim_statement_earnings``,
``claim_statement_chargebacks``).
"""

from services.invoicing.domain import (
    AdjustmentDraft,
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
    assemble_credit_note,
    assemble_invoice,
    credit_note_to_event,
    needs_credit_note,
)
from services.invoicing.domain import to_event as invoice_to_event
from services.invoicing.statements import (
    AllocationEarnings,
    ChargebackPart,
    StatementDraft,
    StatementInputs,
    StatementLine,
    assemble_statement,
    chargeback_month,
    split_chargeback,
    statement_due,
)
from services.invoicing.statements import to_event as statement_to_event

__all__ = [
    "AdjustmentDraft",
    "AllocationEarnings",
    "AllocationOutage",
    "ChargebackPart",
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
    "StatementDraft",
    "StatementInputs",
    "StatementLine",
    "assemble_credit_note",
    "assemble_invoice",
    "assemble_statement",
    "chargeback_month",
    "credit_note_to_event",
    "invoice_to_event",
    "needs_credit_note",
    "split_chargeback",
    "statement_due",
    "statement_to_event",
]
