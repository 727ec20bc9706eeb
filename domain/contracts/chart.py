"""The chart of accounts of billing (one set per currency). Codes are ``owner:id:name:CUR``.

How money moves (all amounts in ledger units; see README "Ledger"):

* rating, per allocation-hour (R13 — both sides in one entry)::

      Dr renter unbilled_receivable   charge      Cr platform unbilled_revenue     charge
      Dr platform cost_of_revenue     earning     Cr supplier payable_accrued      earning

* rating, prepaid: a top-up ``Dr platform cash_clearing / Cr renter wallet`` (floor 0); a drawdown
  ``Dr renter wallet / Cr renter prepaid_applied``.
* invoicing, per invoice: unbilled receivable/revenue move into receivable, revenue (usage and
  commitment true-up), SLA contra-revenue and tax payable in one entry; the difference between what
  was accrued and what the invoice says goes to ``platform rounding``; prepaid drawdowns and carried
  credit are applied against the receivable.
* invoicing, per statement: supplier ``payable_accrued`` → ``payable`` (rounded lines, difference to
  rounding); SLA chargebacks ``Dr supplier payable / Cr platform sla_recovery``.
"""

from __future__ import annotations

from libs.ledger import AccountSpec


def _code(owner: str, name: str, currency: str) -> str:
    return f"{owner}:{name}:{currency}"


def renter(renter_id: str) -> str:
    return f"renter:{renter_id}"


def supplier(supplier_id: str) -> str:
    return f"supplier:{supplier_id}"


PLATFORM = "platform"


# --- renter side --------------------------------------------------------------------------------------
def unbilled_receivable(renter_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(renter(renter_id), "unbilled_receivable", currency),
        currency,
        "asset",
        renter(renter_id),
        description="usage rated, not yet invoiced",
    )


def receivable(renter_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(renter(renter_id), "receivable", currency),
        currency,
        "asset",
        renter(renter_id),
        description="invoiced, not yet paid",
    )


def credit_balance(renter_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(renter(renter_id), "credit_balance", currency),
        currency,
        "liability",
        renter(renter_id),
        floor_units=0,
        description="credit carried to the next invoice (R10)",
    )


def wallet(renter_id: str, contract_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        f"{renter(renter_id)}:wallet:{contract_id}:{currency}",
        currency,
        "liability",
        renter(renter_id),
        floor_units=0,
        description="prepaid wallet (R8): never below zero",
    )


def prepaid_applied(renter_id: str, contract_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        f"{renter(renter_id)}:prepaid_applied:{contract_id}:{currency}",
        currency,
        "liability",
        renter(renter_id),
        description="drawn from the wallet, awaiting the invoice",
    )


# --- platform side ------------------------------------------------------------------------------------------
def unbilled_revenue(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "unbilled_revenue", currency),
        currency,
        "liability",
        PLATFORM,
        description="rated usage awaiting its invoice",
    )


def revenue_usage(currency: str) -> AccountSpec:
    return AccountSpec(_code(PLATFORM, "revenue_usage", currency), currency, "revenue", PLATFORM)


def revenue_commitment(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "revenue_commitment", currency),
        currency,
        "revenue",
        PLATFORM,
        description="commitment true-ups (R5)",
    )


def sla_contra_revenue(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "sla_contra_revenue", currency),
        currency,
        "revenue",
        PLATFORM,
        normal_balance="debit",
        description="SLA credits given to renters (R7)",
    )


def tax_payable(currency: str) -> AccountSpec:
    return AccountSpec(_code(PLATFORM, "tax_payable", currency), currency, "liability", PLATFORM)


def rounding(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "rounding", currency),
        currency,
        "expense",
        PLATFORM,
        description="exact minus rounded amounts (R6): debit = given away, credit = gained",
    )


def cost_of_revenue(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "cost_of_revenue", currency),
        currency,
        "expense",
        PLATFORM,
        description="supplier earnings accrued (R13)",
    )


def sla_recovery(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "sla_recovery", currency),
        currency,
        "expense",
        PLATFORM,
        normal_balance="credit",
        description="SLA credits charged back to suppliers (R7, R12)",
    )


def cash_clearing(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "cash_clearing", currency),
        currency,
        "asset",
        PLATFORM,
        description="money received, awaiting reconciliation",
    )


def supplier_clawbacks_receivable(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "supplier_clawbacks_receivable", currency),
        currency,
        "asset",
        PLATFORM,
        description="supplier earnings clawed back (R15), until the supplier's next statement nets them "
        "against its payable",
    )


def supplier_clawbacks(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "supplier_clawbacks", currency),
        currency,
        "expense",
        PLATFORM,
        normal_balance="credit",
        description="supplier earnings taken back after a refund or credit note (R15): a recovery of cost "
        "of revenue, like sla_recovery",
    )


# --- supplier side ---------------------------------------------------------------------------------------------
def payable_accrued(supplier_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(supplier(supplier_id), "payable_accrued", currency),
        currency,
        "liability",
        supplier(supplier_id),
        description="earnings accrued, not yet on a statement",
    )


def payable(supplier_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(supplier(supplier_id), "payable", currency),
        currency,
        "liability",
        supplier(supplier_id),
        description="net of finalized statements, awaiting payout",
    )


# --- payments (R11, R14) -------------------------------------------------------------------------------------
def unapplied(renter_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(renter(renter_id), "unapplied", currency),
        currency,
        "liability",
        renter(renter_id),
        floor_units=0,
        description="money received or collected not yet applied to an invoice: the renter's credit balance (R11)",
    )


def refunds_payable(renter_id: str, currency: str) -> AccountSpec:
    return AccountSpec(
        _code(renter(renter_id), "refunds_payable", currency),
        currency,
        "liability",
        renter(renter_id),
        description="paid money given back (refunds, credit notes on paid invoices) or withdrawn (disputes)",
    )


def processor_clearing(gateway: str, currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:processor_clearing:{gateway}:{currency}",
        currency,
        "asset",
        PLATFORM,
        description="collected at a processor, awaiting its payout to the bank (R17)",
    )


def bank_fees(currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:bank_fees:{currency}",
        currency,
        "expense",
        PLATFORM,
        description="fees the bank charged on our accounts (posted from reconciled statement lines)",
    )


def processor_fees(gateway: str, currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:processor_fees:{gateway}:{currency}",
        currency,
        "expense",
        PLATFORM,
        description="processor and dispute fees",
    )


def dispute_losses(currency: str) -> AccountSpec:
    return AccountSpec(
        _code(PLATFORM, "dispute_losses", currency),
        currency,
        "expense",
        PLATFORM,
        description="lost disputes written off",
    )
