"""R1, R5, R7, R10 single rules: the instant whose rates apply, prorated commitment, uptime, SLA
tier and credit, tax, whether a credit note is needed; and the input checks."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from domain.contracts.periods import last_second, period_containing
from domain.contracts.terms import ContractTerms, PricedFields, SlaTierTerms
from libs.errors import DomainRuleError
from libs.money import Exact, minor_to_exact
from libs.times import seconds_between
from services.invoicing.domain.model import AllocationOutage, PeriodTotals, RoundedAmount, SlaEvaluation, rounded_amount


def rates_instant(period_end: datetime) -> datetime:
    """R7: the instant whose SLA tiers and tax rate apply to the whole period: the period's last second
    (also when the term ended before it: an amendment effective in between is in force at the period's
    end, as the rule says)."""
    return last_second(period_end)


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
    return SlaEvaluation(uptime=uptime, tier=tier, credit=rounded_amount(credit_exact, currency))


def tax_on(subtotal_minor: int, tax_rate: Decimal, currency: str) -> RoundedAmount:
    """R10/R6: tax on the ROUNDED subtotal, rounded once; zero when the subtotal is not positive."""
    if subtotal_minor <= 0:
        return RoundedAmount(Fraction(0), 0)
    return rounded_amount(minor_to_exact(subtotal_minor, currency) * Fraction(tax_rate), currency)


def needs_credit_note(terms: ContractTerms, last_invoiced_period_end: datetime | None) -> bool:
    """Whether late corrections must go on a credit note: the term has ended and the period that
    contains its last second is already invoiced, so no later invoice of the contract exists."""
    term_end = terms.term_end
    if term_end is None or last_invoiced_period_end is None:
        return False
    if term_end <= terms.starts_at:
        return True  # emptied after an invoice went out: no period will be invoiced again
    _, last_period_end = period_containing(terms.billing_anchor_day, last_second(term_end))
    return last_invoiced_period_end >= last_period_end


def check_billing_period(terms: ContractTerms, start: datetime, end: datetime) -> None:
    """``[start, end)`` is one of the contract's billing periods (R1) — whether or not the term still
    overlaps it: a correction of an invoiced period stays valid after a termination shortened the term."""
    if period_containing(terms.billing_anchor_day, start) != (start, end):
        raise DomainRuleError(f"[{start}, {end}) is not a billing period of contract {terms.contract_id} (R1)")


def check_period(terms: ContractTerms, start: datetime, end: datetime) -> None:
    check_billing_period(terms, start, end)
    term_end = terms.term_end
    if end <= terms.starts_at or (term_end is not None and start >= term_end):
        raise DomainRuleError(f"period [{start}, {end}) does not overlap the term of {terms.contract_id}")


def check_totals(totals: PeriodTotals, what: str) -> None:
    if not totals.usage_x3600.is_finite() or totals.usage_x3600 < 0:
        raise DomainRuleError(f"{what}: usage_x3600 {totals.usage_x3600} is not a finite amount >= 0")
    seconds = (totals.provisioned_gpu_seconds, totals.maintenance_gpu_seconds, totals.outage_gpu_seconds)
    if min(seconds) < 0:
        raise DomainRuleError(f"{what}: negative GPU-seconds {seconds}")
    if totals.maintenance_gpu_seconds + totals.outage_gpu_seconds > totals.provisioned_gpu_seconds:
        raise DomainRuleError(f"{what}: maintenance + outage exceed provisioned GPU-seconds {seconds}")


def outage_shares(outages: Iterable[AllocationOutage], total_gpu_seconds: int, what: str) -> dict[str, int]:
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


def check_drawn(terms: ContractTerms, drawn_x3600: Decimal, what: str) -> None:
    if not drawn_x3600.is_finite():
        raise DomainRuleError(f"{what}: drawn_x3600 is not finite")
    if terms.billing_mode != "prepaid" and drawn_x3600 != 0:
        raise DomainRuleError(f"{what}: wallet draws on postpaid contract {terms.contract_id}")
