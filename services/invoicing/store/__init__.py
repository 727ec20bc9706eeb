"""invoicing's SQL (asyncpg), one module per purpose. No billing rule here — except the membership
rules, each one named function in :mod:`~services.invoicing.store.membership`:

* ``ingest`` — what the consumer records: charges, draws, watermarks, late work, pending months;
* ``progress`` — close progress per contract (the closer);
* ``membership`` — which charges, draws, earnings and chargebacks a document carries:
  :func:`claim_invoice_charges` (R10), :func:`claim_invoice_draws` (R10/R8),
  :func:`find_late_corrections` / :func:`claim_late_corrections` (R3, late adjustments),
  :func:`claim_statement_earnings` (R12), :func:`claim_statement_chargebacks` (R12/R7) — payouts
  and pay-when-paid (R15) extend exactly these;
* ``periods`` — what documents already carried for an invoiced period (the base of a correction);
* ``documents`` — number series, invoices, credit notes, chargebacks;
* ``statements`` — statement progress per month, pairs to state, carried nets, statement rows;
* ``queries`` — reading documents back (CLI, demo);
* ``clawbacks`` — supplier clawbacks (``payout.clawback``) waiting for a statement: recorded, claimed.

Tables: ``libs/db/migrations/0030_invoicing.sql``. Units: ``*_x3600`` exact decimals × 3600 (as on
``charges.rated.v1``), ``*_units`` ledger units, ``*_minor`` minor units of the row's currency.

Lock order (every writer follows it, so no two transactions wait on each other in a cycle):
``contract_state`` rows (closer only, ``skip locked``) → ``late_work`` rows → ``clawbacks`` rows → ``supplier_pending``
rows → ``statement_progress`` → ``number_series`` rows → ledger accounts (the ledger's trigger).
Within one table rows are locked in key order.
"""

from services.invoicing.store.clawbacks import ClawbackRow, claim_statement_clawbacks, insert_clawbacks
from services.invoicing.store.documents import (
    ChargebackRow,
    CreditNoteRow,
    InvoiceRow,
    add_period_adjustments,
    allocate_numbers,
    insert_chargebacks,
    insert_credit_notes,
    insert_invoices,
)
from services.invoicing.store.ingest import (
    ChargeRow,
    DrawRow,
    current_watermarks,
    insert_charges,
    insert_draws,
    mark_late,
    mark_supplier_pending,
    record_watermarks,
)
from services.invoicing.store.membership import (
    AllocationSums,
    EarningSums,
    OpenCorrections,
    claim_invoice_charges,
    claim_invoice_draws,
    claim_late_corrections,
    claim_statement_chargebacks,
    claim_statement_earnings,
    find_late_corrections,
)
from services.invoicing.store.periods import (
    CarriedPeriod,
    carried_periods,
)
from services.invoicing.store.progress import (
    ContractState,
    block_contract,
    count_pending_closes,
    ensure_contract_state,
    finalization_instant,
    pick_contracts,
    save_progress,
    take_late_work,
)
from services.invoicing.store.queries import (
    find_document,
    list_credit_note_documents,
    list_invoice_documents,
    list_statement_documents,
)
from services.invoicing.store.statements import (
    StatementRow,
    block_statement,
    earliest_pending_month,
    insert_statements,
    lock_statement_progress,
    previous_nets,
    set_statement_month,
    statement_issue_instant,
    statement_pairs,
    take_pending,
    unclosed_contracts,
)
from services.invoicing.store.tables import (
    PARTITIONS,
    SCHEMA,
)

__all__ = [
    "PARTITIONS",
    "SCHEMA",
    "AllocationSums",
    "CarriedPeriod",
    "ChargeRow",
    "ChargebackRow",
    "ClawbackRow",
    "ContractState",
    "CreditNoteRow",
    "DrawRow",
    "EarningSums",
    "InvoiceRow",
    "OpenCorrections",
    "StatementRow",
    "add_period_adjustments",
    "allocate_numbers",
    "block_contract",
    "block_statement",
    "carried_periods",
    "claim_invoice_charges",
    "claim_invoice_draws",
    "claim_late_corrections",
    "claim_statement_chargebacks",
    "claim_statement_clawbacks",
    "claim_statement_earnings",
    "count_pending_closes",
    "current_watermarks",
    "earliest_pending_month",
    "ensure_contract_state",
    "finalization_instant",
    "find_document",
    "find_late_corrections",
    "insert_chargebacks",
    "insert_charges",
    "insert_clawbacks",
    "insert_credit_notes",
    "insert_draws",
    "insert_invoices",
    "insert_statements",
    "list_credit_note_documents",
    "list_invoice_documents",
    "list_statement_documents",
    "lock_statement_progress",
    "mark_late",
    "mark_supplier_pending",
    "pick_contracts",
    "previous_nets",
    "record_watermarks",
    "save_progress",
    "set_statement_month",
    "statement_issue_instant",
    "statement_pairs",
    "take_late_work",
    "take_pending",
    "unclosed_contracts",
]
