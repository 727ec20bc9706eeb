"""R3: adjustment lines of late corrections (usage, SLA credit, commitment true-up re-evaluated per
corrected period) and the chargebacks they pass on (R7, R12)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError
from libs.money import Exact, minor_to_exact
from services.invoicing.domain.model import (
    MAX_ADJUSTMENT_LINES,
    AdjustmentDraft,
    AllocationOutage,
    LateCorrection,
    PriorChargeback,
    RoundedAmount,
    rounded_amount,
)
from services.invoicing.domain.rules import (
    check_billing_period,
    check_drawn,
    check_totals,
    evaluate_sla,
    outage_shares,
    prorate_commitment,
    rates_instant,
)
from services.invoicing.statements import ChargebackPart, split_chargeback


def chargeback_parts(
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


def assemble_adjustments(
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
        check_billing_period(terms, c.period_start, c.period_end)  # a later termination may have cut it off
        check_totals(c.before, what + " before")
        check_totals(c.after, what + " after")
        check_drawn(terms, c.drawn_delta_x3600, what)
        if c.credited_minor > 0:
            raise DomainRuleError(f"{what}: credited_minor must be <= 0 (a credit), got {c.credited_minor}")
        if sum(p.amount_minor for p in c.charged_back) != c.credited_minor:
            raise DomainRuleError(f"{what}: prior chargebacks do not sum to the credited amount")
        outage_shares(c.allocation_outages, c.after.outage_gpu_seconds, what)

        usage_delta = c.delta.usage_exact
        if usage_delta != 0:
            lines.append(AdjustmentDraft(c.period_start, c.period_end, "usage", rounded_amount(usage_delta, currency)))

        if c.true_up_billed_minor is not None:
            # R5 re-evaluated on the corrected usage: the true-up the period should carry, minus
            # what documents already billed for it (the exact part keeps the rounding honest).
            if c.true_up_billed_minor < 0:
                raise DomainRuleError(f"{what}: true_up_billed_minor must be >= 0, got {c.true_up_billed_minor}")
            prorated = prorate_commitment(terms, c.period_start, c.period_end)
            after_usage = c.after.usage_exact
            true_up = rounded_amount(prorated - after_usage if after_usage < prorated else Fraction(0), currency)
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

        fields = terms.fields_at(rates_instant(c.period_end))
        sla = evaluate_sla(fields, c.after, currency)
        sla_change_minor = sla.credit.amount_minor - c.credited_minor
        if sla_change_minor != 0:
            exact = sla.credit.exact - minor_to_exact(c.credited_minor, currency)
            lines.append(
                AdjustmentDraft(c.period_start, c.period_end, "sla_credit", RoundedAmount(exact, sla_change_minor))
            )
        chargebacks += chargeback_parts(
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


def sum_drawn(drawn: Iterable[Decimal]) -> Exact:
    return sum((Fraction(d) / 3600 for d in drawn), Fraction(0))
