"""Invoices and credit notes (R1, R3, R5, R6, R7, R10): billing stories with hand-computed cents.

Expectations never come from the implementation: proration is recomputed hour by hour (or from the
seconds written out by hand), rounding uses ``decimal``'s own ROUND_HALF_EVEN quantize, and tiers are
picked by reading the rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contracts.terms import ContractTerms, FieldChanges, PricedFields, SlaTierTerms, TermsVersion
from libs.errors import DomainRuleError
from services.invoicing.domain import (
    AllocationOutage,
    CreditNoteInputs,
    InvoiceDraft,
    InvoiceInputs,
    LateCorrection,
    PeriodTotals,
    PriorChargeback,
    assemble_credit_note,
    assemble_invoice,
    credit_note_to_event,
    needs_credit_note,
    to_event,
)

JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
DEC = (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
PLACES = {"USD": 2, "JPY": 0, "KWD": 3}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- independent oracles --------------------------------------------------------------------------------


def oracle_minor(amount: Fraction | Decimal | str | int, places: int) -> int:
    """Half-even rounding to minor units with ``decimal``'s quantize (not libs.money)."""
    with localcontext() as ctx:
        ctx.prec = 100
        if isinstance(amount, Fraction):
            value = Decimal(amount.numerator) / Decimal(amount.denominator)
        else:
            value = Decimal(amount)
        return int(value.scaleb(places).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def hourly_commitment(
    period: tuple[datetime, datetime],
    schedule: list[tuple[datetime, str]],
    term_start: datetime,
    term_end: datetime | None = None,
) -> Fraction:
    """R5 by brute force, hour by hour (valid when every boundary is on the hour)."""
    start, end = period
    hours_total = 0
    accumulated = Fraction(0)
    hour = start
    while hour < end:
        hours_total += 1
        if term_start <= hour and (term_end is None or hour < term_end):
            in_force = [value for effective_at, value in schedule if effective_at <= hour]
            accumulated += Fraction(Decimal(in_force[-1]))
        hour += timedelta(hours=1)
    return accumulated / hours_total


# --- builders -------------------------------------------------------------------------------------------


def tiers(*pairs: tuple[str, str]) -> tuple[SlaTierTerms, ...]:
    return tuple(SlaTierTerms(Decimal(below), Decimal(percent)) for below, percent in pairs)


def make_terms(
    *,
    currency: str = "USD",
    billing_mode: str = "postpaid",
    starts_at: datetime = JAN[0],
    ends_at: datetime | None = None,
    anchor: int = 1,
    commitment: str = "0",
    sla: tuple[SlaTierTerms, ...] = (),
    tax: str = "0",
    amendments: tuple[tuple[datetime, FieldChanges], ...] = (),
    payment_terms_days: int = 30,
) -> ContractTerms:
    base = PricedFields(
        price_per_gpu_hour=Decimal("2"),
        supplier_rate_per_gpu_hour=Decimal("1.5"),
        commitment_per_period=Decimal(commitment),
        credit_limit=None,
        sla_tiers=sla,
        tax_rate=Decimal(tax),
    )
    versions = tuple(
        TermsVersion(version=i + 2, effective_at=effective_at, changes=changes, event_id=f"amend-{i}")
        for i, (effective_at, changes) in enumerate(amendments)
    )
    return ContractTerms(
        contract_id="ctr-1",
        renter_id="rnt-1",
        currency=currency,
        billing_mode=billing_mode,  # type: ignore[arg-type]
        starts_at=starts_at,
        ends_at=ends_at,
        billing_anchor_day=anchor,
        payment_terms_days=payment_terms_days,
        base=base,
        amendments=versions,
    )


def x3600(amount: str) -> Decimal:
    """An exact amount written in major units → its x3600 wire form."""
    return Decimal(amount) * 3600


def close(
    terms: ContractTerms,
    period: tuple[datetime, datetime] = JAN,
    *,
    usage: str = "0",
    provisioned: int = 0,
    maintenance: int = 0,
    outage: int = 0,
    outages: tuple[AllocationOutage, ...] | None = None,
    drawn: str = "0",
    corrections: tuple[LateCorrection, ...] = (),
    carried_in_minor: int = 0,
    issued_at: datetime | None = None,
) -> InvoiceDraft:
    if outages is None:
        outages = (AllocationOutage("alloc-1", "sup-1", outage),) if outage else ()
    return assemble_invoice(
        InvoiceInputs(
            terms=terms,
            period_start=period[0],
            period_end=period[1],
            totals=PeriodTotals(x3600(usage), provisioned, maintenance, outage),
            allocation_outages=outages,
            drawn_x3600=x3600(drawn),
            corrections=corrections,
            credit_carried_in_minor=carried_in_minor,
            issued_at=issued_at or period[1] + timedelta(minutes=5),
        )
    )


def line_sum(draft: InvoiceDraft) -> int:
    return (
        draft.usage.amount_minor
        + draft.commitment_true_up.amount_minor
        + sum(a.amount.amount_minor for a in draft.adjustments)
        + draft.sla_credit.amount_minor
    )


# --- R5 commitment --------------------------------------------------------------------------------------


def test_commitment_prorated_over_a_mid_period_start() -> None:
    starts_at = at("2026-01-11T07:00:00Z")
    terms = make_terms(starts_at=starts_at, commitment="310")
    draft = close(terms, usage="100")

    # 744 hours in January; the term covers the hours from Jan 11 07:00: 744 - 10*24 - 7 = 497.
    prorated = hourly_commitment(JAN, [(JAN[0], "310")], starts_at)
    assert prorated == Fraction(310 * 497, 744)
    assert draft.commitment_prorated == prorated
    assert draft.usage.amount_minor == 10000
    # true-up = round(prorated - usage) once: 207.0833.. - 100 = 107.0833.. -> 107.08
    assert draft.commitment_true_up.amount_minor == oracle_minor(prorated - 100, 2) == 10708
    assert draft.subtotal_minor == 10000 + 10708
    assert to_event(draft, "INV-2026-000001", "inv-1").lines.commitment_true_up == Decimal("107.08")


def test_commitment_amendment_splits_the_period_on_the_hour() -> None:
    split_at = at("2026-01-21T08:00:00Z")
    terms = make_terms(commitment="300", amendments=((split_at, FieldChanges(commitment_per_period=Decimal("600"))),))
    draft = close(terms, usage="3.30")

    prorated = hourly_commitment(JAN, [(JAN[0], "300"), (split_at, "600")], JAN[0])
    assert prorated == Fraction(300 * 488 + 600 * 256, 744)  # 20 d 8 h = 488 h, then 256 h
    assert draft.commitment_prorated == prorated
    # 403.2258.. - 3.30 = 399.9258.. -> 399.93
    assert draft.commitment_true_up.amount_minor == oracle_minor(prorated - Fraction("3.30"), 2) == 39993


def test_commitment_amendment_splits_the_period_by_the_second() -> None:
    split_at = at("2026-01-21T08:00:30Z")
    terms = make_terms(commitment="300", amendments=((split_at, FieldChanges(commitment_per_period=Decimal("600"))),))
    draft = close(terms)

    before_s = 20 * 86400 + 8 * 3600 + 30
    period_s = 31 * 86400
    expected = Fraction(300 * before_s + 600 * (period_s - before_s), period_s)
    assert draft.commitment_prorated == expected
    assert draft.commitment_true_up.amount_minor == oracle_minor(expected, 2)


def test_usage_above_commitment_has_no_true_up_and_term_end_prorates() -> None:
    ends_at = at("2026-01-16T00:00:00Z")
    terms = make_terms(commitment="310", ends_at=ends_at)
    draft = close(terms, usage="150.01")
    assert draft.commitment_prorated == Fraction(310 * 15, 31)  # 150.00: usage is above it
    assert draft.commitment_true_up.amount_minor == 0

    below = close(terms, usage="149.995")
    assert below.commitment_true_up.amount_minor == oracle_minor(Fraction(150) - Fraction("149.995"), 2) == 0
    assert below.commitment_true_up.exact == Fraction("0.005")  # kept exact for the rounding account


# --- R7 SLA ----------------------------------------------------------------------------------------------

SLA = tiers(("0.999", "5"), ("0.99", "10"), ("0.95", "25"))


@pytest.mark.parametrize(
    ("provisioned", "maintenance", "outage", "percent"),
    [
        (360_000, 0, 3_600, 5),  # uptime == 0.99 exactly: the 0.99 tier does NOT apply, 0.999 does
        (400_000, 40_000, 3_600, 5),  # 1 - 3600/360000 = 0.99 with maintenance taken out
        (3_600_000, 0, 3_600, 0),  # uptime == 0.999 exactly: no tier is above it
        (360_000, 0, 3_601, 10),  # just below 0.99
        (360_000, 0, 18_000, 10),  # 0.95 exactly: the 0.99 tier (smallest above 0.95)
        (360_000, 0, 18_001, 25),  # just below 0.95
        (360_000, 0, 0, 0),  # full uptime
        (7_200, 7_200, 0, 0),  # no provisioned - maintenance seconds: no uptime, no credit
    ],
)
def test_sla_tier_is_the_smallest_threshold_strictly_above_uptime(
    provisioned: int, maintenance: int, outage: int, percent: int
) -> None:
    terms = make_terms(sla=SLA)
    draft = close(terms, usage="1000", provisioned=provisioned, maintenance=maintenance, outage=outage)
    assert draft.sla.credit_percent == percent
    assert draft.sla_credit.amount_minor == -oracle_minor(Fraction(1000 * percent, 100), 2)
    available = provisioned - maintenance
    expected_uptime = None if available <= 0 else 1 - Fraction(outage, available)
    assert draft.sla.uptime == expected_uptime


def test_sla_uptime_on_the_event_is_truncated_not_rounded() -> None:
    terms = make_terms(sla=SLA)
    # uptime = 1 - 1/3 * 10^-12 ... something that would round up to the threshold
    draft = close(terms, usage="1000", provisioned=3 * 10**13, outage=1)
    event = to_event(draft, "INV-2026-000001", "inv-1")
    assert event.uptime == Decimal("0.999999999999")  # 0.99999999999996.. truncated
    assert event.sla_credit_percent == 0

    exact_099 = to_event(close(terms, usage="1000", provisioned=360_000, outage=3_600), "INV-2026-000002", "i")
    assert exact_099.uptime == Decimal("0.99")
    assert exact_099.sla_credit_percent == Decimal("5")
    assert exact_099.lines.sla_credit == Decimal("-50.00")

    no_seconds = to_event(close(terms, usage="1000"), "INV-2026-000003", "i")
    assert no_seconds.uptime is None


def test_sla_credit_is_a_percent_of_exact_usage_not_of_the_rounded_line() -> None:
    terms = make_terms(sla=tiers(("1", "50")))
    draft = close(terms, usage="1.0149", provisioned=3_600, outage=36)
    assert draft.usage.amount_minor == 101
    # 50 % of the exact 1.0149 = 0.50745 -> -0.51; 50 % of the line 1.01 would be 0.505 -> 0.50
    assert draft.sla_credit.amount_minor == -oracle_minor(Fraction("0.50745"), 2) == -51


def test_tiers_and_tax_in_force_at_the_last_second_apply_to_the_whole_period() -> None:
    last = JAN[1] - timedelta(seconds=1)
    terms = make_terms(
        sla=tiers(("0.9", "10")),
        tax="0.10",
        amendments=(
            (last, FieldChanges(tax_rate=Decimal("0.20"), sla_tiers=tiers(("0.999", "20")))),
            (JAN[1], FieldChanges(tax_rate=Decimal("0.50"))),  # next period: not this one
        ),
    )
    draft = close(terms, usage="100", provisioned=360_000, outage=3_600)  # uptime 0.99
    assert draft.tax_rate == Decimal("0.20")
    assert draft.sla.credit_percent == 20
    assert draft.sla_credit.amount_minor == -2000
    assert draft.tax.amount_minor == oracle_minor(Fraction(8000, 100) * Fraction("0.20"), 2) == 1600


def test_fields_at_the_period_end_apply_even_when_the_term_ended_before_it() -> None:
    """R7 as written: the tiers and tax rate in force at the period's end, also after an early end of term."""
    terms = make_terms(
        ends_at=at("2026-01-20T00:00:00Z"),
        tax="0.10",
        amendments=(
            (at("2026-01-19T23:59:59Z"), FieldChanges(tax_rate=Decimal("0.15"))),
            (at("2026-01-25T00:00:00Z"), FieldChanges(tax_rate=Decimal("0.30"))),
        ),
    )
    draft = close(terms, usage="100")
    assert draft.rates_at == at("2026-01-31T23:59:59Z")
    assert draft.tax_rate == Decimal("0.30")
    assert draft.tax.amount_minor == 3000


# --- R6 rounding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "usage", "expected_minor"),
    [
        ("USD", "10.125", 1012),  # x.xx5 exact -> even
        ("USD", "10.135", 1014),
        ("USD", "0.005", 0),
        ("USD", "0.015", 2),
        ("USD", "10.1250000001", 1013),  # just above the half
        ("KWD", "1.0005", 1000),
        ("KWD", "1.0015", 1002),
        ("JPY", "1500.5", 1500),
        ("JPY", "1501.5", 1502),
    ],
)
def test_usage_line_rounds_half_to_even_once(currency: str, usage: str, expected_minor: int) -> None:
    draft = close(make_terms(currency=currency), usage=usage)
    assert draft.usage.amount_minor == expected_minor == oracle_minor(usage, PLACES[currency])
    assert draft.usage.exact == Fraction(Decimal(usage))
    assert draft.usage.rounding_difference(currency) == Fraction(Decimal(usage)) - Fraction(
        expected_minor, 10 ** PLACES[currency]
    )


@pytest.mark.parametrize(("usage", "tax_minor"), [("10.25", 102), ("10.35", 104), ("10.45", 104)])
def test_tax_is_on_the_rounded_subtotal_half_to_even(usage: str, tax_minor: int) -> None:
    draft = close(make_terms(tax="0.1"), usage=usage)
    assert draft.tax.amount_minor == tax_minor == oracle_minor(Decimal(usage) * Decimal("0.1"), 2)
    assert draft.total_minor == draft.subtotal_minor + tax_minor


def test_tax_on_the_rounded_subtotal_differs_from_tax_on_exact_usage() -> None:
    # exact usage 10.0149 -> line 10.01; 50 % of 10.01 = 5.005 -> 5.00 (of the exact usage: 5.00745 -> 5.01)
    draft = close(make_terms(tax="0.5"), usage="10.0149")
    assert draft.subtotal_minor == 1001
    assert draft.tax.amount_minor == oracle_minor(Decimal("10.01") * Decimal("0.5"), 2) == 500
    assert oracle_minor(Decimal("10.0149") * Decimal("0.5"), 2) == 501


def test_jpy_invoice_has_no_decimals() -> None:
    terms = make_terms(currency="JPY", tax="0.10", sla=tiers(("0.99", "5")), payment_terms_days=14)
    # 6 GPU-hours at 250 JPY = 1500 JPY; uptime 1 - 300/21700 < 0.99
    draft = close(terms, usage="1500", provisioned=21_700, outage=300)
    assert draft.usage.amount_minor == 1500
    assert draft.sla_credit.amount_minor == -75
    assert draft.subtotal_minor == 1425
    assert draft.tax.amount_minor == oracle_minor(Decimal(1425) * Decimal("0.10"), 0) == 142  # 142.5 -> 142
    event = to_event(draft, "INV-2026-000007", "inv-7")
    assert (event.lines.usage, event.lines.sla_credit, event.subtotal) == (
        Decimal("1500"),
        Decimal("-75"),
        Decimal("1425"),
    )
    assert event.model_dump(mode="json")["total"] == "1567"
    assert event.model_dump(mode="json")["lines"]["commitment_true_up"] == "0"
    assert event.due_at == draft.issued_at + timedelta(days=14)


# --- R10 tax sign, prepaid, carried credit ----------------------------------------------------------------


def test_tax_is_zero_when_the_subtotal_is_zero() -> None:
    draft = close(make_terms(tax="0.2"))
    assert (draft.subtotal_minor, draft.tax.amount_minor, draft.total_minor, draft.amount_due_minor) == (
        0,
        0,
        0,
        0,
    )
    event = to_event(draft, "INV-2026-000001", "inv-1")
    assert event.model_dump(mode="json")["total"] == "0.00"  # every period gets an invoice, even all-zero


def test_tax_is_zero_when_the_subtotal_is_negative_and_the_rest_is_carried() -> None:
    terms = make_terms(starts_at=DEC[0], tax="0.2")
    correction = LateCorrection(
        period_start=DEC[0],
        period_end=DEC[1],
        delta=PeriodTotals(x3600("-50"), 0, 0, 0),
        before=PeriodTotals(x3600("80"), 0, 0, 0),
        credited_minor=0,
    )
    draft = close(terms, usage="10", corrections=(correction,))
    assert draft.subtotal_minor == 1000 - 5000
    assert draft.tax.amount_minor == 0
    assert draft.total_minor == -4000
    assert draft.amount_due_minor == 0
    assert draft.credit_carried_forward_minor == 4000


def test_prepaid_applied_and_credit_carried_to_the_next_invoice() -> None:
    terms = make_terms(billing_mode="prepaid", sla=tiers(("0.99", "10")))
    # January: usage 100.00 all drawn from the wallet, uptime 0.98 -> 10 % credit
    jan = close(terms, JAN, usage="100", provisioned=360_000, outage=7_200, drawn="100")
    assert jan.sla_credit.amount_minor == -1000
    assert jan.total_minor == 9000
    assert jan.prepaid_applied.amount_minor == 10000
    assert jan.amount_due_minor == 0
    assert jan.credit_carried_forward_minor == 1000  # SLA credits never refill the wallet

    # February: usage 40.00, the wallet paid 20.00, the January credit is applied
    feb = close(terms, FEB, usage="40", drawn="20", carried_in_minor=jan.credit_carried_forward_minor)
    assert feb.total_minor == 4000
    assert feb.amount_due_minor == 4000 - 2000 - 1000
    assert feb.credit_carried_forward_minor == 0
    event = to_event(feb, "INV-2026-000002", "inv-2")
    assert (event.prepaid_applied, event.credit_applied, event.amount_due, event.credit_carried_forward) == (
        Decimal("20.00"),
        Decimal("10.00"),
        Decimal("10.00"),
        Decimal("0.00"),
    )


def test_prepaid_drawn_is_summed_exactly_and_rounded_once() -> None:
    terms = make_terms(billing_mode="prepaid")
    draft = close(terms, usage="0.015", drawn="0.015")
    assert draft.prepaid_applied.amount_minor == oracle_minor("0.015", 2) == 2
    assert draft.amount_due_minor == 0


def test_the_wallet_never_pays_a_true_up() -> None:
    terms = make_terms(billing_mode="prepaid", commitment="150", tax="0.1")
    draft = close(terms, usage="100", drawn="100")
    assert draft.commitment_true_up.amount_minor == 5000
    assert draft.prepaid_applied.amount_minor == 10000
    assert draft.tax.amount_minor == 1500
    assert draft.amount_due_minor == 15000 + 1500 - 10000


def test_draws_on_a_postpaid_contract_are_refused() -> None:
    with pytest.raises(DomainRuleError):
        close(make_terms(), usage="10", drawn="10")


def test_a_period_that_is_not_a_billing_period_is_refused() -> None:
    with pytest.raises(DomainRuleError):
        close(make_terms(anchor=15), JAN)


# --- R3 adjustments -------------------------------------------------------------------------------------


def test_late_correction_adjustment_names_its_period() -> None:
    terms = make_terms(starts_at=DEC[0], tax="0.1")
    correction = LateCorrection(
        period_start=DEC[0],
        period_end=DEC[1],
        delta=PeriodTotals(x3600("12.345"), 0, 0, 0),
        before=PeriodTotals(x3600("200"), 360_000, 0, 0),
        credited_minor=0,
    )
    draft = close(terms, usage="100", corrections=(correction,))
    assert [(a.period_start, a.period_end, a.kind, a.amount.amount_minor) for a in draft.adjustments] == [
        (DEC[0], DEC[1], "usage", oracle_minor("12.345", 2))
    ]
    assert draft.adjustments_minor == 1234
    assert draft.subtotal_minor == 10000 + 1234
    event = to_event(draft, "INV-2026-000002", "inv-2")
    dumped = event.model_dump(mode="json")
    assert dumped["adjustment_lines"] == [
        {
            "period_start": "2025-12-01T00:00:00Z",
            "period_end": "2026-01-01T00:00:00Z",
            "kind": "usage",
            "amount": "12.34",
        }
    ]
    assert dumped["lines"]["adjustments"] == "12.34"


def test_late_outage_re_evaluates_the_sla_credit_of_its_period_twice() -> None:
    terms = make_terms(starts_at=DEC[0], sla=tiers(("0.995", "10"), ("0.985", "25")))
    # December was invoiced at 200.00 usage, full uptime, no credit. An outage of one hour on
    # 100 GPU-hours arrives late: billable -3600 GPU-s at 2.00/h = -2.00, uptime 0.99 -> 10 %.
    first = LateCorrection(
        period_start=DEC[0],
        period_end=DEC[1],
        delta=PeriodTotals(x3600("-2"), 0, 0, 3_600),
        before=PeriodTotals(x3600("200"), 360_000, 0, 0),
        credited_minor=0,
        allocation_outages=(AllocationOutage("a1", "sup-A", 2_400), AllocationOutage("a2", "sup-B", 1_200)),
    )
    jan = close(terms, JAN, usage="50", corrections=(first,))
    assert [(a.kind, a.amount.amount_minor) for a in jan.adjustments] == [
        ("usage", -200),
        ("sla_credit", -1980),
    ]
    # 19.80 split 2:1 -> 13.20 / 6.60, landing on the month of January's last second
    assert [(c.allocation_id, c.supplier_id, c.amount_minor, c.month, c.period_start) for c in jan.chargebacks] == [
        ("a1", "sup-A", -1320, "2026-01", DEC[0]),
        ("a2", "sup-B", -660, "2026-01", DEC[0]),
    ]
    assert jan.subtotal_minor == 5000 - 200 - 1980

    # Another late hour of outage on a2: uptime 0.98 -> 25 % of 196.00 = 49.00; 29.20 more.
    second = LateCorrection(
        period_start=DEC[0],
        period_end=DEC[1],
        delta=PeriodTotals(x3600("-2"), 0, 0, 3_600),
        before=first.after,
        credited_minor=-1980,
        allocation_outages=(AllocationOutage("a1", "sup-A", 2_400), AllocationOutage("a2", "sup-B", 4_800)),
        charged_back=(PriorChargeback("a1", "sup-A", -1320), PriorChargeback("a2", "sup-B", -660)),
    )
    feb = close(terms, FEB, usage="50", corrections=(second,))
    assert [(a.kind, a.amount.amount_minor) for a in feb.adjustments] == [
        ("usage", -200),
        ("sla_credit", -2920),
    ]
    # 49.00 split 1:2 = 1633.33.. / 3266.66..: floors 1633 + 3266, one unit to a2 (larger remainder);
    # what changes against the earlier 1320 / 660:
    assert [(c.allocation_id, c.amount_minor, c.month) for c in feb.chargebacks] == [
        ("a1", -(1633 - 1320), "2026-02"),
        ("a2", -(3267 - 660), "2026-02"),
    ]
    assert sum(c.amount_minor for c in feb.chargebacks) == -2920


def test_a_correction_of_a_later_period_is_refused() -> None:
    terms = make_terms()
    late = LateCorrection(FEB[0], FEB[1], PeriodTotals(x3600("1"), 0, 0, 0), PeriodTotals(Decimal(0), 0, 0, 0), 0)
    with pytest.raises(DomainRuleError):
        close(terms, JAN, corrections=(late,))


def test_current_sla_credit_is_charged_back_by_outage_share() -> None:
    terms = make_terms(anchor=15, starts_at=at("2026-01-15T00:00:00Z"), sla=tiers(("0.99", "10")))
    period = (at("2026-01-15T00:00:00Z"), at("2026-02-15T00:00:00Z"))
    outages = (
        AllocationOutage("b", "sup-2", 3_600),
        AllocationOutage("a", "sup-1", 3_600),
        AllocationOutage("c", "sup-1", 3_600),
    )
    draft = close(terms, period, usage="1", provisioned=360_000, outage=10_800, outages=outages)
    assert draft.sla_credit.amount_minor == -10
    # 10 cents over three equal shares: 3 each, one left for the smallest id
    assert {c.allocation_id: c.amount_minor for c in draft.chargebacks} == {"a": -4, "b": -3, "c": -3}
    assert {c.month for c in draft.chargebacks} == {"2026-02"}  # the period's last second is in February


# --- credit notes ----------------------------------------------------------------------------------------


def test_needs_credit_note_only_after_the_last_period_of_an_ended_term_is_invoiced() -> None:
    ended = make_terms(starts_at=DEC[0], ends_at=at("2026-01-20T00:00:00Z"))
    assert needs_credit_note(ended, JAN[1])
    assert not needs_credit_note(ended, DEC[1])
    assert not needs_credit_note(ended, None)
    assert not needs_credit_note(make_terms(starts_at=DEC[0]), JAN[1])  # open-ended: the next invoice carries it
    on_boundary = make_terms(starts_at=DEC[0], ends_at=JAN[1])
    assert needs_credit_note(on_boundary, JAN[1])


def test_credit_note_taxes_each_corrected_period_at_its_own_rate() -> None:
    terms = make_terms(
        starts_at=DEC[0],
        ends_at=JAN[1],
        tax="0.10",
        amendments=((at("2026-01-15T00:00:00Z"), FieldChanges(tax_rate=Decimal("0.20"))),),
    )
    corrections = (
        LateCorrection(JAN[0], JAN[1], PeriodTotals(x3600("-30"), 0, 0, 0), PeriodTotals(x3600("100"), 0, 0, 0), 0),
        LateCorrection(DEC[0], DEC[1], PeriodTotals(x3600("-10.005"), 0, 0, 0), PeriodTotals(x3600("100"), 0, 0, 0), 0),
    )
    issued_at = at("2026-02-03T10:00:00Z")
    draft = assemble_credit_note(CreditNoteInputs(terms, corrections, issued_at))
    assert [(a.period_start, a.amount.amount_minor) for a in draft.adjustments] == [
        (DEC[0], oracle_minor("-10.005", 2)),  # -1000.5 -> -1000
        (JAN[0], -3000),
    ]
    assert [(t.period_start, t.tax_rate, t.tax.amount_minor) for t in draft.taxes] == [
        (DEC[0], Decimal("0.10"), -100),
        (JAN[0], Decimal("0.20"), -600),
    ]
    assert (draft.subtotal_minor, draft.tax_minor, draft.total_minor) == (-4000, -700, -4700)
    event = credit_note_to_event(draft, "CN-2026-000001", "cn-1", "INV-2026-000031")
    assert event.model_dump(mode="json")["total"] == "-47.00"
    assert [line.period_start for line in event.adjustment_lines] == [DEC[0], JAN[0]]


def test_a_termination_that_cuts_off_an_invoiced_period_gives_a_credit_note_of_it() -> None:
    """The termination (effective Dec 10) arrives after January was invoiced: January no longer overlaps the
    term, but its correction (its usage re-rated to zero) is still a correction of an invoiced period — a
    credit note, not a refusal that would set the contract aside."""
    terms = make_terms(starts_at=DEC[0]).with_termination(at("2025-12-10T00:00:00Z"))
    assert needs_credit_note(terms, JAN[1])
    january = LateCorrection(JAN[0], JAN[1], PeriodTotals(x3600("-40"), 0, 0, 0), PeriodTotals(x3600("40"), 0, 0, 0), 0)
    draft = assemble_credit_note(CreditNoteInputs(terms, (january,), at("2026-02-03T00:00:00Z")))
    assert [(a.period_start, a.amount.amount_minor) for a in draft.adjustments] == [(JAN[0], -4000)]
    emptied = make_terms(starts_at=DEC[0]).with_termination(DEC[0])  # terminated before its start
    assert needs_credit_note(emptied, DEC[1]) and not needs_credit_note(emptied, None)


def test_a_late_wallet_draw_alone_is_a_credit_note_and_a_prepaid_note_settles_net_of_the_wallet() -> None:
    """R8/R10 after the term: a late top-up settles the last period's 30.00 overage — no line changes, but
    the wallet paid what the invoice asked, so a credit note carries the draw (owed to the renter: −30.00).
    And a late +10.00 of usage the wallet pays, taxed 10 %: the note's total is 11.00, the renter owes 1.00."""
    terms = make_terms(starts_at=DEC[0], ends_at=JAN[1], billing_mode="prepaid", tax="0.10")
    draw_only = LateCorrection(
        JAN[0], JAN[1], PeriodTotals(Decimal(0), 0, 0, 0), PeriodTotals(x3600("100"), 0, 0, 0), 0,
        drawn_delta_x3600=x3600("30"),
    )  # fmt: skip
    note = assemble_credit_note(CreditNoteInputs(terms, (draw_only,), at("2026-02-03T00:00:00Z")))
    assert not note.is_empty and note.adjustments == () and note.total_minor == 0
    assert note.amount_due_minor == -3000
    event = credit_note_to_event(note, "CN-2026-000001", "cn-1", "INV-2026-000002")
    assert (event.total, event.prepaid_applied) == (Decimal("0.00"), Decimal("30.00"))
    usage = LateCorrection(
        JAN[0], JAN[1], PeriodTotals(x3600("10"), 0, 0, 0), PeriodTotals(x3600("100"), 0, 0, 0), 0,
        drawn_delta_x3600=x3600("10"),
    )  # fmt: skip
    event = credit_note_to_event(
        assemble_credit_note(CreditNoteInputs(terms, (usage,), at("2026-02-03T00:00:00Z"))),
        "CN-2026-000002",
        "cn-2",
        "INV-2026-000002",
    )
    assert (event.total, event.prepaid_applied, event.total - event.prepaid_applied) == (
        Decimal("11.00"), Decimal("10.00"), Decimal("1.00"),
    )  # fmt: skip


def test_an_empty_credit_note_is_not_issued() -> None:
    terms = make_terms(starts_at=DEC[0], ends_at=JAN[1])
    nothing = LateCorrection(JAN[0], JAN[1], PeriodTotals(Decimal(0), 0, 0, 0), PeriodTotals(x3600("1"), 0, 0, 0), 0)
    draft = assemble_credit_note(CreditNoteInputs(terms, (nothing,), at("2026-02-03T00:00:00Z")))
    assert draft.is_empty
    with pytest.raises(DomainRuleError):
        credit_note_to_event(draft, "CN-2026-000001", "cn-1", "INV-2026-000001")


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def invoice_cases(draw: st.DrawFn) -> tuple[ContractTerms, InvoiceInputs]:
    currency = draw(st.sampled_from(["USD", "JPY", "KWD"]))
    billing_mode = draw(st.sampled_from(["prepaid", "postpaid"]))
    tier_rows = draw(
        st.lists(
            st.tuples(st.integers(1, 1000), st.integers(0, 100)),
            max_size=4,
        )
    )
    sla = tuple(SlaTierTerms(Decimal(b).scaleb(-3), Decimal(p)) for b, p in tier_rows)
    terms = make_terms(
        currency=currency,
        billing_mode=billing_mode,
        starts_at=DEC[0],
        commitment=str(Decimal(draw(st.integers(0, 10**7))).scaleb(-2)),
        sla=sla,
        tax=str(Decimal(draw(st.integers(0, 3000))).scaleb(-4)),
    )
    usage_x3600 = Decimal(draw(st.integers(0, 10**12))).scaleb(-4)
    provisioned = draw(st.integers(0, 10**8))
    maintenance = draw(st.integers(0, provisioned))
    outage = draw(st.integers(0, provisioned - maintenance))
    split = draw(st.integers(0, outage))
    outages = tuple(
        o
        for o in (AllocationOutage("a1", "s1", split), AllocationOutage("a2", "s2", outage - split))
        if o.outage_gpu_seconds
    )
    drawn = Decimal(draw(st.integers(0, int(usage_x3600)))) if billing_mode == "prepaid" else Decimal(0)
    corrections: tuple[LateCorrection, ...] = ()
    if draw(st.booleans()):
        before_cents = draw(st.integers(0, 10**10))
        before = Decimal(before_cents).scaleb(-2)
        delta = Decimal(draw(st.integers(-before_cents, 10**10))).scaleb(-2)
        corrections = (LateCorrection(DEC[0], DEC[1], PeriodTotals(delta, 0, 0, 0), PeriodTotals(before, 0, 0, 0), 0),)
    inputs = InvoiceInputs(
        terms=terms,
        period_start=JAN[0],
        period_end=JAN[1],
        totals=PeriodTotals(usage_x3600, provisioned, maintenance, outage),
        allocation_outages=outages,
        drawn_x3600=drawn,
        corrections=corrections,
        credit_carried_in_minor=draw(st.integers(0, 10**6)),
        issued_at=JAN[1],
    )
    return terms, inputs


@settings(max_examples=300, deadline=None)
@given(invoice_cases())
def test_property_lines_add_up_and_each_amount_is_rounded_once(
    case: tuple[ContractTerms, InvoiceInputs],
) -> None:
    terms, inputs = case
    draft = assemble_invoice(inputs)
    places = PLACES[terms.currency]

    assert draft.subtotal_minor == line_sum(draft)
    assert draft.total_minor == draft.subtotal_minor + draft.tax.amount_minor
    usage = Fraction(inputs.totals.usage_x3600) / 3600
    assert draft.usage.amount_minor == oracle_minor(usage, places)
    commitment = Fraction(terms.base.commitment_per_period)
    expected_true_up = oracle_minor(commitment - usage, places) if usage < commitment else 0
    assert draft.commitment_true_up.amount_minor == expected_true_up
    if draft.subtotal_minor > 0:
        subtotal = Decimal(draft.subtotal_minor).scaleb(-places)
        assert draft.tax.amount_minor == oracle_minor(subtotal * terms.base.tax_rate, places)
    else:
        assert draft.tax.amount_minor == 0
    remaining = draft.total_minor - draft.prepaid_applied.amount_minor - inputs.credit_carried_in_minor
    assert (draft.amount_due_minor, draft.credit_carried_forward_minor) == (
        max(remaining, 0),
        max(-remaining, 0),
    )
    assert sum(c.amount_minor for c in draft.chargebacks) == draft.sla_credit.amount_minor

    # the event says the same in decimal strings
    event = to_event(draft, "INV-2026-000001", "inv-1")
    lines = event.lines
    assert lines.usage + lines.commitment_true_up + lines.adjustments + lines.sla_credit == event.subtotal
    assert event.subtotal + event.tax == event.total
    assert sum((a.amount for a in event.adjustment_lines), Decimal(0)) == lines.adjustments
    for text in (event.model_dump(mode="json")[k] for k in ("subtotal", "tax", "total", "amount_due")):
        assert len(text.partition(".")[2]) == places
