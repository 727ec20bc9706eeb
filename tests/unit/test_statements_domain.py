"""Supplier statements (R12): earnings lines, largest-remainder chargebacks, carried negative nets.

Expected cents are worked out by hand from the rules (or with ``decimal``'s own half-even quantize);
the split property checks the largest-remainder characterisation, not a copy of the algorithm.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contracts.terms import ContractTerms, PricedFields, SlaTierTerms
from libs.errors import CurrencyMismatchError, DomainRuleError
from services.invoicing.domain import AllocationOutage, InvoiceInputs, PeriodTotals, assemble_invoice
from services.invoicing.statements import (
    AllocationEarnings,
    ChargebackPart,
    StatementInputs,
    assemble_statement,
    chargeback_month,
    month_bounds,
    split_chargeback,
    statement_due,
    to_event,
)

ISSUED_AT = datetime(2026, 2, 1, 0, 10, tzinfo=UTC)


def earning(allocation_id: str, amount: str, billable_gpu_seconds: int = 3_600) -> AllocationEarnings:
    return AllocationEarnings(allocation_id, Decimal(amount) * 3600, billable_gpu_seconds)


def chargeback(
    allocation_id: str, amount_minor: int, *, month: str = "2026-01", supplier: str = "sup-1"
) -> ChargebackPart:
    return ChargebackPart(
        supplier_id=supplier,
        allocation_id=allocation_id,
        contract_id="ctr-1",
        currency="USD",
        period_start=datetime(2026, 1, 1, tzinfo=UTC),
        period_end=datetime(2026, 2, 1, tzinfo=UTC),
        month=month,
        amount_minor=amount_minor,
    )


def inputs(
    *,
    month: str = "2026-01",
    earnings: tuple[AllocationEarnings, ...] = (),
    chargebacks: tuple[ChargebackPart, ...] = (),
    previous_net_minor: int | None = None,
    currency: str = "USD",
) -> StatementInputs:
    return StatementInputs(
        supplier_id="sup-1",
        currency=currency,
        month=month,
        earnings=earnings,
        chargebacks=chargebacks,
        previous_net_minor=previous_net_minor,
        issued_at=ISSUED_AT,
    )


# --- largest remainder -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credit_minor", "shares", "expected"),
    [
        # 33.33.. each; the three remainders tie: the smallest id gets the one unit left
        (100, {"c": 1, "a": 1, "b": 1}, {"a": 34, "b": 33, "c": 33}),
        # 4.2857.., 4.2857.., 1.4285..: floors 4 + 4 + 1 = 9; remainders 2/7, 2/7, 3/7 -> z
        (10, {"x": 3, "y": 3, "z": 1}, {"x": 4, "y": 4, "z": 2}),
        # 2.5 each: tie, "a" before "b"
        (5, {"b": 3_600, "a": 3_600}, {"a": 3, "b": 2}),
        # ids compare as strings: "alloc-10" < "alloc-9"
        (1, {"alloc-9": 7, "alloc-10": 7}, {"alloc-10": 1, "alloc-9": 0}),
        # 1979 over 2:2:1 = 791.6, 791.6, 395.8: floors 791+791+395 = 1977; remainders .6 .6 .8 -> c, then a
        (1979, {"a": 2, "b": 2, "c": 1}, {"a": 792, "b": 791, "c": 396}),
        # a zero share never gets a unit
        (7, {"a": 0, "b": 5}, {"a": 0, "b": 7}),
        (0, {"a": 1, "b": 2}, {"a": 0, "b": 0}),
        (0, {}, {}),
    ],
)
def test_split_chargeback_by_largest_remainder(
    credit_minor: int, shares: dict[str, int], expected: dict[str, int]
) -> None:
    assert split_chargeback(credit_minor, shares) == expected


def test_split_chargeback_refuses_what_cannot_be_split() -> None:
    with pytest.raises(DomainRuleError):
        split_chargeback(10, {"a": 0})
    with pytest.raises(DomainRuleError):
        split_chargeback(10, {})
    with pytest.raises(ValueError, match="absolute value"):
        split_chargeback(-10, {"a": 1})
    with pytest.raises(ValueError, match="negative"):
        split_chargeback(10, {"a": -1, "b": 2})


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 10**9),
    st.dictionaries(st.text("abc0123", min_size=1, max_size=4), st.integers(0, 10**7), min_size=1, max_size=8),
)
def test_property_split_sums_exactly_and_stays_within_one_unit(credit_minor: int, shares: dict[str, int]) -> None:
    total = sum(shares.values())
    if total == 0:
        if credit_minor:
            with pytest.raises(DomainRuleError):
                split_chargeback(credit_minor, shares)
        return
    parts = split_chargeback(credit_minor, shares)
    assert set(parts) == set(shares)
    assert sum(parts.values()) == credit_minor
    exact = {a: Fraction(credit_minor * s, total) for a, s in shares.items()}
    for a in shares:
        assert abs(parts[a] - exact[a]) < 1
        assert parts[a] - (exact[a].numerator // exact[a].denominator) in (0, 1)
    # largest remainder: whoever got the extra unit has a larger remainder than whoever did not,
    # or the same remainder and a smaller id
    remainder = {a: exact[a] - (exact[a].numerator // exact[a].denominator) for a in shares}
    bumped = [a for a in shares if parts[a] > exact[a]]
    plain = [a for a in shares if parts[a] <= exact[a]]
    for winner in bumped:
        for loser in plain:
            assert remainder[winner] > remainder[loser] or (remainder[winner] == remainder[loser] and winner < loser)


# --- statements ------------------------------------------------------------------------------------------


def test_statement_lines_rounded_once_each_and_the_total_is_their_sum() -> None:
    draft = assemble_statement(
        inputs(
            earnings=(
                earning("a2", "0.005"),  # half -> even: 0.00
                earning("a1", "0.005"),
                earning("a3", "12.345"),  # 1234.5 -> 1234
                earning("a4", "12.355"),  # 1235.5 -> 1236
                earning("a5", "0", billable_gpu_seconds=0),  # no billable seconds: no line
            )
        )
    )
    assert [(line.allocation_id, line.amount_minor) for line in draft.lines] == [
        ("a1", 0),
        ("a2", 0),
        ("a3", 1234),
        ("a4", 1236),
    ]
    for line in draft.lines:
        assert line.amount_minor == round(line.exact * 100)  # Fraction's round is half to even
    assert draft.earnings_total_minor == 0 + 0 + 1234 + 1236  # not round(24.71) of the exact sum
    assert (draft.sla_chargebacks_minor, draft.carried_minor, draft.net_minor) == (0, 0, 2470)


def test_statement_with_a_largest_remainder_chargeback_including_a_tie() -> None:
    # A contract's SLA credit of 1.00 over three allocations with equal outage: 34 / 33 / 33
    parts = split_chargeback(100, {"a1": 1_800, "a2": 1_800, "a3": 1_800})
    assert parts == {"a1": 34, "a2": 33, "a3": 33}
    draft = assemble_statement(
        inputs(
            earnings=(earning("a1", "10"), earning("a2", "20"), earning("a3", "30")),
            chargebacks=tuple(chargeback(a, -p) for a, p in parts.items()),
        )
    )
    assert draft.earnings_total_minor == 6000
    assert draft.sla_chargebacks_minor == -100
    assert draft.net_minor == 5900
    event = to_event(draft, "STM-2026-000001", "stm-1")
    dumped = event.model_dump(mode="json")
    assert dumped["earnings"] == {"a1": "10.00", "a2": "20.00", "a3": "30.00"}
    assert (dumped["earnings_total"], dumped["sla_chargebacks"], dumped["carried"], dumped["net"]) == (
        "60.00",
        "-1.00",
        "0.00",
        "59.00",
    )


def test_negative_net_is_carried_month_after_month_until_earnings_cover_it() -> None:
    jan = assemble_statement(inputs(earnings=(earning("a1", "3"),), chargebacks=(chargeback("a1", -800),)))
    assert jan.net_minor == 300 - 800
    assert jan.carried_forward_minor == -500
    assert jan.payable_minor == 0

    feb_inputs = inputs(month="2026-02", previous_net_minor=jan.net_minor)
    assert statement_due(feb_inputs)  # only a carried balance: still a statement
    feb = assemble_statement(feb_inputs)
    assert (feb.lines, feb.earnings_total_minor, feb.carried_minor, feb.net_minor) == ((), 0, -500, -500)
    assert to_event(feb, "STM-2026-000002", "stm-2").model_dump(mode="json")["carried"] == "-5.00"

    mar = assemble_statement(inputs(month="2026-03", earnings=(earning("a1", "7"),), previous_net_minor=feb.net_minor))
    assert (mar.carried_minor, mar.net_minor, mar.payable_minor) == (-500, 200, 200)

    apr_inputs = inputs(month="2026-04", previous_net_minor=mar.net_minor)
    assert not statement_due(apr_inputs)  # a positive net does not carry
    assert assemble_statement(apr_inputs).carried_minor == 0


def test_jpy_statement_has_no_decimals() -> None:
    draft = assemble_statement(
        inputs(currency="JPY", earnings=(earning("a1", "1234.5"), earning("a2", "1235.5")), previous_net_minor=-9)
    )
    expected = [int(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)) for v in ("1234.5", "1235.5")]
    assert [line.amount_minor for line in draft.lines] == expected == [1234, 1236]
    dumped = to_event(draft, "STM-2026-000003", "stm-3").model_dump(mode="json")
    assert (dumped["earnings_total"], dumped["carried"], dumped["net"]) == ("2470", "-9", "2461")


def test_chargeback_lands_on_the_month_of_the_period_last_second() -> None:
    assert chargeback_month(datetime(2026, 2, 1, tzinfo=UTC)) == "2026-01"  # anchor 1: Jan 31 23:59:59
    assert chargeback_month(datetime(2026, 2, 15, tzinfo=UTC)) == "2026-02"  # anchor 15: Feb 14 23:59:59
    assert chargeback_month(datetime(2026, 1, 1, tzinfo=UTC)) == "2025-12"
    assert month_bounds("2025-12") == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


def test_statement_refuses_foreign_chargebacks() -> None:
    with pytest.raises(CurrencyMismatchError):
        assemble_statement(inputs(currency="EUR", chargebacks=(chargeback("a1", -1),)))
    with pytest.raises(DomainRuleError):
        assemble_statement(inputs(chargebacks=(chargeback("a1", -1, supplier="sup-2"),)))
    with pytest.raises(DomainRuleError):
        assemble_statement(inputs(chargebacks=(chargeback("a1", -1, month="2026-02"),)))
    with pytest.raises(DomainRuleError):
        assemble_statement(inputs(earnings=(earning("a1", "1", billable_gpu_seconds=0),)))


def test_invoice_sla_credit_reaches_the_suppliers_statements() -> None:
    """Story: a renter's 10 % SLA credit of 33.34 is borne by two suppliers by outage share."""
    period = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    terms = ContractTerms(
        contract_id="ctr-1",
        renter_id="rnt-1",
        currency="USD",
        billing_mode="postpaid",
        starts_at=period[0],
        ends_at=None,
        billing_anchor_day=1,
        payment_terms_days=30,
        base=PricedFields(
            price_per_gpu_hour=Decimal("2"),
            supplier_rate_per_gpu_hour=Decimal("1.5"),
            commitment_per_period=Decimal(0),
            credit_limit=None,
            sla_tiers=(SlaTierTerms(Decimal("0.99"), Decimal("10")),),
            tax_rate=Decimal(0),
        ),
    )
    invoice = assemble_invoice(
        InvoiceInputs(
            terms=terms,
            period_start=period[0],
            period_end=period[1],
            totals=PeriodTotals(Decimal("333.4") * 3600, 720_000, 0, 14_400),
            allocation_outages=(
                AllocationOutage("a-1", "sup-1", 7_200),
                AllocationOutage("a-2", "sup-2", 3_600),
                AllocationOutage("a-3", "sup-1", 3_600),
            ),
            drawn_x3600=Decimal(0),
            corrections=(),
            credit_carried_in_minor=0,
            issued_at=period[1] + timedelta(minutes=1),
        )
    )
    assert invoice.sla_credit.amount_minor == -3334
    # 3334 over 2:1:1 = 1667, 833.5, 833.5: the tie goes to a-2 (smaller id)
    assert {c.allocation_id: c.amount_minor for c in invoice.chargebacks} == {
        "a-1": -1667,
        "a-2": -834,
        "a-3": -833,
    }

    sup1 = assemble_statement(
        inputs(
            earnings=(earning("a-1", "100"), earning("a-3", "50")),
            chargebacks=tuple(c for c in invoice.chargebacks if c.supplier_id == "sup-1"),
        )
    )
    assert sup1.sla_chargebacks_minor == -1667 - 833
    assert sup1.net_minor == 15000 - 2500


# --- clawbacks (R15; extension of R12) --------------------------------------------------------------------------


def test_a_statement_without_clawbacks_shows_a_zero_clawbacks_field_and_the_r12_net() -> None:
    event = to_event(assemble_statement(inputs(earnings=(earning("a1", "12.34"),))), "STM-2026-000001", "stm-1")
    doc = event.model_dump(mode="json")
    assert (doc["earnings_total"], doc["sla_chargebacks"], doc["carried"], doc["net"]) == (
        "12.34",
        "0.00",
        "0.00",
        "12.34",
    )
    assert doc["clawbacks"] == "0.00"


def test_clawbacks_are_a_negative_line_in_the_net_and_a_negative_net_carries() -> None:
    base = inputs(earnings=(earning("a1", "45.00"),))
    with_claw = StatementInputs(**{**base.__dict__, "clawbacks_minor": -3_000})
    draft = assemble_statement(with_claw)
    assert (draft.earnings_total_minor, draft.clawbacks_minor, draft.net_minor) == (4_500, -3_000, 1_500)
    assert to_event(draft, "STM-2026-000002", "stm-2").clawbacks == Decimal("-30.00")
    only = StatementInputs(**{**inputs().__dict__, "clawbacks_minor": -7_500})
    assert statement_due(only)  # a month with only a clawback still gets a statement
    alone = assemble_statement(only)
    assert (alone.net_minor, alone.carried_forward_minor) == (-7_500, -7_500)


def test_a_positive_clawback_is_refused() -> None:
    with pytest.raises(DomainRuleError):
        assemble_statement(StatementInputs(**{**inputs().__dict__, "clawbacks_minor": 1}))
