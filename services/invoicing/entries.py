"""Ledger entries of invoicing's documents (pure: no I/O, no clock): an invoice or credit note is ONE
renter entry, a statement ONE supplier entry (R6, R13).

All amounts in ledger units; ``L(x)`` = minor units × 10^6, exact). Invoice, ONE entry::

    Cr renter unbilled_receivable   A (what rating accrued for every charge the invoice carries)
    Dr platform unbilled_revenue     A     Cr platform revenue_usage   A
    Dr renter receivable             L(total)
    Cr platform revenue_commitment   round_ledger(exact true-up, incl. true-up adjustments)
    Dr platform sla_contra_revenue   round_ledger(-exact SLA credit, incl. SLA adjustments)
    Cr platform tax_payable          L(tax)
    Dr renter prepaid_applied        round_ledger(exact drawn)   Cr renter receivable  L(prepaid applied)
    Dr renter credit_balance         L(credit applied)           Cr renter receivable  L(credit applied)
    Dr renter receivable             L(credit carried forward)   Cr renter credit_balance  L(carried)
    platform rounding                the balance: (invoiced - accrued) per line, credit = gained (R6)

A credit note posts the same shape (its lines are adjustments; its tax may be negative). Statement::

    Dr supplier payable_accrued   E (what rating accrued for the earnings carried)
    Cr supplier payable           L(earnings_total)
    Dr supplier payable           L(-chargebacks)   Cr platform sla_recovery  L(-chargebacks)
    platform rounding             the balance (R6)

Prepaid decision: rating posts ``wallet → prepaid_applied`` per draw with telescoping ledger deltas,
which invoicing cannot see per draw; the invoice clears ``round_ledger(exact Σ drawn)`` — within a
few ledger units of what was posted — and leaves any residue of micro-units in the contract's
``prepaid_applied`` account. The rounding account takes exact-vs-shown differences only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from domain.contracts import chart
from libs.ledger import AccountSpec, Entry, Posting, build_entry, credit, debit
from libs.money import Exact, minor_to_ledger, round_ledger
from services.invoicing import domain, statements


@dataclass(frozen=True)
class RenterAmounts:
    """What one invoice or credit note moves in the ledger (see the module docstring)."""

    contract_id: str
    renter_id: str
    currency: str
    accrued_units: int
    """Σ ``round_ledger(charge)`` over the charges the document carries (what rating accrued)."""
    charges: int
    usage_minor: int
    """Usage line + usage adjustments, as shown."""
    true_up_exact: Exact
    sla_credit_exact: Exact
    """Signed like the line (≤ 0 for a credit)."""
    tax_minor: int
    total_minor: int
    drawn_exact: Exact
    prepaid_minor: int
    credit_applied_minor: int
    credit_carried_forward_minor: int
    lines: int


def renter_entry(
    amounts: RenterAmounts, *, entry_id: str, cause_id: str, kind: str, occurred_at: datetime
) -> tuple[Entry | None, list[AccountSpec]]:
    """The one journal entry of an invoice or credit note, and the accounts it needs."""
    cur = amounts.currency
    renter, contract = amounts.renter_id, amounts.contract_id
    accounts = {
        "unbilled_receivable": chart.unbilled_receivable(renter, cur),
        "unbilled_revenue": chart.unbilled_revenue(cur),
        "revenue_usage": chart.revenue_usage(cur),
        "receivable": chart.receivable(renter, cur),
        "revenue_commitment": chart.revenue_commitment(cur),
        "sla_contra_revenue": chart.sla_contra_revenue(cur),
        "tax_payable": chart.tax_payable(cur),
        "prepaid_applied": chart.prepaid_applied(renter, contract, cur),
        "credit_balance": chart.credit_balance(renter, cur),
        "rounding": chart.rounding(cur),
    }
    code = {name: spec.code for name, spec in accounts.items()}

    def shown(amount_minor: int) -> int:
        return minor_to_ledger(amount_minor, cur)

    accrued = amounts.accrued_units
    postings: list[Posting] = [
        credit(code["unbilled_receivable"], accrued, cur),
        debit(code["unbilled_revenue"], accrued, cur),
        credit(code["revenue_usage"], accrued, cur),
        debit(code["receivable"], shown(amounts.total_minor), cur),
        credit(code["revenue_commitment"], round_ledger(amounts.true_up_exact, cur), cur),
        debit(code["sla_contra_revenue"], round_ledger(-amounts.sla_credit_exact, cur), cur),
        credit(code["tax_payable"], shown(amounts.tax_minor), cur),
        debit(code["prepaid_applied"], round_ledger(amounts.drawn_exact, cur), cur),
        credit(code["receivable"], shown(amounts.prepaid_minor), cur),
        debit(code["credit_balance"], shown(amounts.credit_applied_minor), cur),
        credit(code["receivable"], shown(amounts.credit_applied_minor), cur),
        debit(code["receivable"], shown(amounts.credit_carried_forward_minor), cur),
        credit(code["credit_balance"], shown(amounts.credit_carried_forward_minor), cur),
    ]
    residual = sum(p.amount_units for p in postings)
    # Each shown line is within half a minor unit of its exact amount, each accrual within half a
    # ledger unit of its charge: anything larger is a bug, not rounding.
    bound = minor_to_ledger(amounts.lines + 3, cur) + amounts.charges + 1
    assert abs(residual) <= bound, f"{kind} {cause_id}: rounding residual {residual} exceeds {bound}"
    postings.append(Posting(code["rounding"], cur, -residual))
    entry = build_entry(id=entry_id, cause_id=cause_id, kind=kind, occurred_at=occurred_at, postings=postings)
    return entry, _used(entry, accounts.values())


def _used(entry: Entry | None, specs: Iterable[AccountSpec]) -> list[AccountSpec]:
    """The accounts the entry posts to (an empty prepaid or credit account is never created)."""
    codes = {p.account for p in entry.postings} if entry is not None else set()
    return [spec for spec in specs if spec.code in codes]


def statement_entry(
    draft: statements.StatementDraft, *, accrued_units: int, charges: int, entry_id: str, cause_id: str
) -> tuple[Entry | None, list[AccountSpec]]:
    """The journal entry of a statement: accrued earnings → payable (rounded lines), chargebacks, and
    clawbacks (R15): the supplier's payable settles the platform's clawback receivable that payouts posted
    (Dr supplier payable / Cr supplier_clawbacks_receivable). Without clawbacks: the same entry as before."""
    cur, supplier = draft.currency, draft.supplier_id
    accounts = [
        chart.payable_accrued(supplier, cur),
        chart.payable(supplier, cur),
        chart.sla_recovery(cur),
        chart.rounding(cur),
        chart.supplier_clawbacks_receivable(cur),
    ]
    accrued_code, payable_code, recovery_code, rounding_code, clawback_code = (a.code for a in accounts)
    chargeback_units = minor_to_ledger(-draft.sla_chargebacks_minor, cur)
    clawback_units = minor_to_ledger(-draft.clawbacks_minor, cur)
    postings = [
        debit(accrued_code, accrued_units, cur),
        credit(payable_code, minor_to_ledger(draft.earnings_total_minor, cur), cur),
        debit(payable_code, chargeback_units, cur),
        credit(recovery_code, chargeback_units, cur),
        debit(payable_code, clawback_units, cur),
        credit(clawback_code, clawback_units, cur),
    ]
    residual = sum(p.amount_units for p in postings)
    bound = minor_to_ledger(len(draft.lines) + 1, cur) + charges + 1
    assert abs(residual) <= bound, f"statement {cause_id}: rounding residual {residual} exceeds {bound}"
    postings.append(Posting(rounding_code, cur, -residual))
    entry = build_entry(
        id=entry_id,
        cause_id=cause_id,
        kind="statement.finalized",
        occurred_at=draft.issued_at,
        postings=postings,
    )
    return entry, _used(entry, accounts)


def _adjustment_sums(adjustments: Sequence[domain.AdjustmentDraft], kind: str) -> tuple[Exact, int]:
    chosen = [a.amount for a in adjustments if a.kind == kind]
    return sum((a.exact for a in chosen), Fraction(0)), sum(a.amount_minor for a in chosen)


def invoice_amounts(draft: domain.InvoiceDraft, accrued_units: int, charges: int) -> RenterAmounts:
    _, usage_adj_minor = _adjustment_sums(draft.adjustments, "usage")
    true_up_adj, _ = _adjustment_sums(draft.adjustments, "commitment_true_up")
    sla_adj, _ = _adjustment_sums(draft.adjustments, "sla_credit")
    return RenterAmounts(
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=draft.currency,
        accrued_units=accrued_units,
        charges=charges,
        usage_minor=draft.usage.amount_minor + usage_adj_minor,
        true_up_exact=draft.commitment_true_up.exact + true_up_adj,
        sla_credit_exact=draft.sla_credit.exact + sla_adj,
        tax_minor=draft.tax.amount_minor,
        total_minor=draft.total_minor,
        drawn_exact=draft.prepaid_applied.exact,
        prepaid_minor=draft.prepaid_applied.amount_minor,
        credit_applied_minor=draft.credit_applied_minor,
        credit_carried_forward_minor=draft.credit_carried_forward_minor,
        lines=4 + len(draft.adjustments),
    )


def credit_note_amounts(draft: domain.CreditNoteDraft, accrued_units: int, charges: int) -> RenterAmounts:
    _, usage_minor = _adjustment_sums(draft.adjustments, "usage")
    true_up, _ = _adjustment_sums(draft.adjustments, "commitment_true_up")
    sla, _ = _adjustment_sums(draft.adjustments, "sla_credit")
    return RenterAmounts(
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=draft.currency,
        accrued_units=accrued_units,
        charges=charges,
        usage_minor=usage_minor,
        true_up_exact=true_up,
        sla_credit_exact=sla,
        tax_minor=draft.tax_minor,
        total_minor=draft.total_minor,
        drawn_exact=draft.prepaid_applied.exact,
        prepaid_minor=draft.prepaid_applied.amount_minor,
        credit_applied_minor=0,
        credit_carried_forward_minor=0,
        lines=1 + len(draft.adjustments) + len(draft.taxes),
    )


def period_adjustment_changes(adjustments: Sequence[domain.AdjustmentDraft]) -> dict[datetime, tuple[int, int]]:
    """Per corrected period: (true-up, SLA credit) the adjustments add to what was billed."""
    changes: dict[datetime, tuple[int, int]] = {}
    for a in adjustments:
        true_up, sla = changes.get(a.period_start, (0, 0))
        if a.kind == "commitment_true_up":
            true_up += a.amount.amount_minor
        elif a.kind == "sla_credit":
            sla += a.amount.amount_minor
        changes[a.period_start] = (true_up, sla)
    return changes
