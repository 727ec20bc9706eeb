"""The saga's compensations as payouts applies them, pure: the supplier share rule of a clawback (a Settle
extension of R15) and the saga's earnings hold in planning. Expected cents are computed here from the
rule's words, never by calling the helper under test for the same number."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from services.payouts.domain.compensations import SagaHold, supplier_share
from services.payouts.domain.planning import InvoiceEarnings, plan_payouts
from tests.unit.test_payouts_planning import AT, REF, inputs, invoice, payee


def half_even(e: int, amount: int, total: int) -> int:
    return int((Decimal(e) * Decimal(amount) / Decimal(total)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# --- the share rule -------------------------------------------------------------------------------------------


def test_share_is_earnings_times_refunded_over_total_rounded_half_even() -> None:
    # E = 75.00 on an invoice of 100.00, 40.00 refunded → 30.00
    assert supplier_share(7_500, 4_000, 10_000, 0) == 3_000
    # E = 0.05, a third refunded: 1.666… → 2 (half-even only matters on exact halves)
    assert supplier_share(5, 1_000, 3_000, 0) == 2
    # an exact half goes to the even cent: 0.03 × 1/2 = 1.5 → 2; 0.05 × 1/2 = 2.5 → 2
    assert supplier_share(3, 1, 2, 0) == 2
    assert supplier_share(5, 1, 2, 0) == 2


def test_share_never_exceeds_what_is_left_of_the_earnings() -> None:
    # 30.00 clawed back already; a lost dispute of the whole 100.00 takes the remaining 45.00, not 75.00
    assert supplier_share(7_500, 10_000, 10_000, 3_000) == 4_500
    assert supplier_share(7_500, 10_000, 10_000, 7_500) == 0
    # more refunded than the invoice's total counts as the total
    assert supplier_share(7_500, 50_000, 10_000, 0) == 7_500


def test_no_share_without_earnings_amount_or_total() -> None:
    assert supplier_share(0, 4_000, 10_000, 0) == 0
    assert supplier_share(-100, 4_000, 10_000, 0) == 0
    assert supplier_share(7_500, 0, 10_000, 0) == 0
    assert supplier_share(7_500, 4_000, 0, 0) == 0


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=1, max_value=10**9),
    st.lists(st.integers(min_value=0, max_value=10**9), max_size=12),
)
def test_successive_shares_never_sum_to_more_than_the_earnings(e: int, total: int, refunds: list[int]) -> None:
    clawed = 0
    for amount in refunds:
        share = supplier_share(e, amount, total, clawed)
        assert 0 <= share <= e - clawed
        assert share <= half_even(e, min(amount, total), total)  # never more than the proportional share
        clawed += share
    assert clawed <= e


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1, max_value=10**9))
def test_a_full_refund_takes_back_exactly_the_earnings_once(e: int, total: int) -> None:
    first = supplier_share(e, total, total, 0)
    assert first == e
    assert supplier_share(e, total, total, first) == 0  # the same refund again (a retried attempt): nothing


@given(
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=1, max_value=10**7),
    st.data(),
)
def test_partial_refunds_summing_to_the_total_never_take_more_than_the_earnings(
    e: int, total: int, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=total), max_size=6)))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    clawed = 0
    for amount in parts:
        clawed += supplier_share(e, amount, total, clawed)
    assert clawed <= e
    assert abs(clawed - e) <= len(parts)  # each part rounded once: at most a cent off per part


# --- the saga's hold in planning --------------------------------------------------------------------------------

E_60 = (InvoiceEarnings("sup-1", "USD", REF, Fraction(6_000 * 3600, 100)),)


def test_a_saga_hold_holds_all_tied_earnings_of_a_supplier_not_paid_when_paid() -> None:
    hold = SagaHold(held_at=AT - timedelta(hours=1), released_at=None)
    [plan] = plan_payouts(
        inputs(earnings=E_60, invoices={REF: invoice(8_000, 8_000)}, holds={REF: hold}, payees={"sup-1": payee()})
    )
    assert (plan.held_minor, plan.amount_minor) == (6_000, 4_000)
    assert [(h.ref, h.earnings_minor, h.released_minor) for h in plan.holdings] == [(REF, 6_000, 0)]


def test_a_saga_hold_holds_what_was_not_paid_and_releases_the_paid_part_pro_rata() -> None:
    hold = SagaHold(held_at=AT - timedelta(hours=1), released_at=None)
    pwp = {"sup-1": payee(pay_when_paid=True)}
    # half paid: R15 releases 30.00 of 60.00 to a pay-when-paid supplier, and the saga's hold (for what the
    # renter did not pay) keeps the other 30.00 — from any supplier, pay-when-paid or not
    for payees in (pwp, None):
        kwargs = {"payees": payees} if payees else {}
        [plan] = plan_payouts(inputs(earnings=E_60, invoices={REF: invoice(8_000, 4_000)}, holds={REF: hold}, **kwargs))
        assert plan.held_minor == 3_000, payees
    # nothing paid: all of it held
    [plan] = plan_payouts(inputs(earnings=E_60, invoices={REF: invoice(8_000, 8_000)}, holds={REF: hold}))
    assert plan.held_minor == 6_000


def test_a_released_hold_holds_nothing_from_its_release_on() -> None:
    paid_at = AT - timedelta(minutes=30)
    hold = SagaHold(held_at=AT - timedelta(hours=1), released_at=paid_at)
    [plan] = plan_payouts(inputs(earnings=E_60, invoices={REF: invoice(8_000, 0)}, holds={REF: hold}))
    assert (plan.held_minor, plan.amount_minor) == (0, 10_000)
    # planning before the payment still held it
    assert hold.active(paid_at - timedelta(seconds=1)) and not hold.active(paid_at)


def test_a_hold_requested_after_planning_time_does_not_reach_back() -> None:
    hold = SagaHold(held_at=AT + timedelta(days=1), released_at=None)
    [plan] = plan_payouts(inputs(earnings=E_60, invoices={REF: invoice(8_000, 8_000)}, holds={REF: hold}))
    assert plan.held_minor == 0


def test_money_given_back_and_clawed_back_is_not_held_again_under_pay_when_paid() -> None:
    # paid in full, then 40.00 refunded: payments re-opens 40.00 of the invoice. The supplier's share of the
    # refund was clawed back (a statement line), so pay-when-paid does not hold a share of it as well.
    pwp = {"sup-1": payee(pay_when_paid=True)}
    reopened = {REF: invoice(8_000, 4_000)}
    [held] = plan_payouts(inputs(earnings=E_60, invoices=reopened, payees=pwp))
    assert held.held_minor == 6_000 - 6_000 * 4_000 // 8_000  # without the clawback: 30.00 held
    [plan] = plan_payouts(inputs(earnings=E_60, invoices=reopened, payees=pwp, settled_back={REF: 4_000}))
    assert plan.held_minor == 0
