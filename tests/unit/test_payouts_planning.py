"""R15 payout planning, pure: examples that read like the rule, and hypothesis properties.

Expected cents are computed here from the rule's words (floor, half-even), never by calling the helper
under test for the same number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.payouts.domain.planning import (
    InvoiceEarnings,
    InvoicePaid,
    InvoiceRef,
    Payee,
    PlanningInputs,
    PriorPayout,
    Rate,
    StatementMonth,
    latest_rate,
    payout_id_for,
    plan_payouts,
    released_minor,
)

JAN_END = datetime(2026, 2, 1, tzinfo=UTC)
FEB_END = datetime(2026, 3, 1, tzinfo=UTC)
AT = datetime(2026, 2, 1, 1, tzinfo=UTC)
REF = InvoiceRef("ctr-1", datetime(2026, 1, 1, tzinfo=UTC))


def payee(**changes: object) -> Payee:
    values: dict[str, object] = {
        "supplier_id": "sup-1",
        "payout_currency": "USD",
        "rail": "ach",
        "minimum_payout": Fraction(0),
        "pay_when_paid": False,
        "on_hold": False,
        "event_id": "payee-1",
    }
    values.update(changes)
    return Payee(**values)  # type: ignore[arg-type]


def statement(month: str = "2026-01", net_minor: int = 10_000, currency: str = "USD", **kw: object) -> StatementMonth:
    return StatementMonth(
        supplier_id=str(kw.get("supplier_id", "sup-1")),
        currency=currency,
        month=month,
        net_minor=net_minor,
        issued_at=kw.get("issued_at", JAN_END),  # type: ignore[arg-type]
    )


def inputs(**kw: object) -> PlanningInputs:
    values: dict[str, object] = {
        "at": AT,
        "statements": (statement(),),
        "earnings": (),
        "invoices": {},
        "payees": {"sup-1": payee()},
        "rates": (),
        "prior": (),
    }
    values.update(kw)
    return PlanningInputs(**values)  # type: ignore[arg-type]


def invoice(total_minor: int, remaining_minor: int, ref: InvoiceRef = REF) -> InvoicePaid:
    return InvoicePaid(ref, "inv-1", "USD", total_minor, remaining_minor)


# --- examples ------------------------------------------------------------------------------------------------


def test_a_positive_net_is_planned_in_the_statement_currency_with_a_deterministic_id() -> None:
    [plan] = plan_payouts(inputs())
    assert (plan.state, plan.reason, plan.amount_minor, plan.payout_amount_minor) == ("planned", None, 10_000, 10_000)
    assert plan.months == ("2026-01",) and plan.rail == "ach" and plan.rate_id is None
    assert plan.payout_id == payout_id_for("sup-1", "USD", ["2026-01"])
    assert plan_payouts(inputs())[0].payout_id == plan.payout_id  # no random ids


def test_a_statement_not_final_at_planning_is_not_planned() -> None:
    assert plan_payouts(inputs(at=JAN_END - timedelta(seconds=1))) == []


def test_months_already_paid_out_are_not_planned_again() -> None:
    prior = PriorPayout("sup-1", "USD", ("2026-01",), 10_000)
    assert plan_payouts(inputs(prior=(prior,))) == []


def test_negative_net_counts_as_zero_and_the_other_months_are_summed() -> None:
    months = (statement("2026-01", -500), statement("2026-02", 700, issued_at=FEB_END))
    [plan] = plan_payouts(inputs(at=FEB_END, statements=months))
    assert plan.months == ("2026-01", "2026-02") and plan.amount_minor == 700


def test_no_payee_means_no_payout_with_that_reason() -> None:
    [plan] = plan_payouts(inputs(payees={}))
    assert (plan.state, plan.reason) == (None, "no_payee")


def test_below_the_minimum_waits_and_an_amount_equal_to_it_is_paid() -> None:
    [low] = plan_payouts(inputs(payees={"sup-1": payee(minimum_payout=Fraction("100.01"))}))
    assert (low.state, low.reason) == (None, "below_minimum")
    [equal] = plan_payouts(inputs(payees={"sup-1": payee(minimum_payout=Fraction(100))}))
    assert equal.state == "planned"


def test_below_the_minimum_wins_over_on_hold_and_on_hold_is_planned_but_held() -> None:
    [low] = plan_payouts(inputs(payees={"sup-1": payee(minimum_payout=Fraction(500), on_hold=True)}))
    assert low.reason == "below_minimum" and low.state is None
    [held] = plan_payouts(inputs(payees={"sup-1": payee(on_hold=True)}))
    assert (held.state, held.reason, held.amount_minor) == ("on_hold", "on_hold", 10_000)


def test_below_minimum_months_wait_and_are_paid_with_the_next_month() -> None:
    months = (statement("2026-01", 3_000), statement("2026-02", 4_000, issued_at=FEB_END))
    settings = {"sup-1": payee(minimum_payout=Fraction(50))}
    [jan] = plan_payouts(inputs(statements=months, payees=settings))
    assert jan.reason == "below_minimum" and jan.months == ("2026-01",)
    [both] = plan_payouts(inputs(at=FEB_END, statements=months, payees=settings))
    assert both.state == "planned" and both.months == ("2026-01", "2026-02") and both.amount_minor == 7_000
    assert both.payout_id != jan.payout_id


def test_fx_uses_the_latest_direct_rate_at_or_before_planning_half_even() -> None:
    rates = (
        Rate("r-old", "USD", "EUR", Fraction("0.5"), AT - timedelta(days=2)),
        Rate("r-now", "USD", "EUR", Fraction("0.92345"), AT - timedelta(hours=1)),
        Rate("r-late", "USD", "EUR", Fraction("0.1"), AT + timedelta(seconds=1)),
        Rate("r-inverse", "EUR", "USD", Fraction("2"), AT),
    )
    # 123.45 USD x 0.92345 = 113.9999025 → 114.00 EUR; the difference -0.0000975 EUR is FX.
    [plan] = plan_payouts(
        inputs(statements=(statement(net_minor=12_345),), payees={"sup-1": payee(payout_currency="EUR")}, rates=rates)
    )
    assert (plan.rate_id, plan.payout_currency, plan.payout_amount_minor) == ("r-now", "EUR", 11_400)
    assert plan.converted_exact == Fraction("113.9999025")
    assert plan.amount_minor == 12_345


def test_fx_half_even_ties_go_to_the_even_cent() -> None:
    rates = (Rate("r", "USD", "EUR", Fraction("0.5"), AT),)
    for net, want in ((1, 0), (3, 2), (5, 2), (7, 4)):  # 0.005 → 0.00, 0.015 → 0.02, 0.025 → 0.02, 0.035 → 0.04
        [plan] = plan_payouts(
            inputs(statements=(statement(net_minor=net),), payees={"sup-1": payee(payout_currency="EUR")}, rates=rates)
        )
        assert plan.payout_amount_minor == want


def test_an_amount_converted_to_zero_waits_below_the_minimum_even_when_the_minimum_is_zero() -> None:
    rates = (Rate("r", "USD", "EUR", Fraction("0.5"), AT),)  # 0.01 USD = 0.005 EUR → 0.00 EUR
    settings = {"sup-1": payee(payout_currency="EUR", minimum_payout=Fraction(0))}
    [plan] = plan_payouts(inputs(statements=(statement(net_minor=1),), payees=settings, rates=rates))
    assert (plan.state, plan.reason, plan.payout_amount_minor) == (None, "below_minimum", 0)
    [plan] = plan_payouts(inputs(statements=(statement(net_minor=3),), payees=settings, rates=rates))
    assert (plan.state, plan.payout_amount_minor) == ("planned", 2)


def test_no_direct_rate_means_no_payout_and_an_inverse_pair_is_not_used() -> None:
    rates = (Rate("r-inverse", "EUR", "USD", Fraction("1.1"), AT),)
    [plan] = plan_payouts(inputs(payees={"sup-1": payee(payout_currency="EUR")}, rates=rates))
    assert (plan.state, plan.reason) == (None, "no_fx_rate")


def test_the_minimum_is_compared_after_conversion() -> None:
    rates = (Rate("r", "USD", "JPY", Fraction("150"), AT),)
    settings = {"sup-1": payee(payout_currency="JPY", minimum_payout=Fraction(15_000))}
    [plan] = plan_payouts(inputs(payees=settings, rates=rates))  # 100.00 USD = 15,000 JPY: equal is paid
    assert plan.state == "planned" and plan.payout_amount_minor == 15_000
    settings = {"sup-1": payee(payout_currency="JPY", minimum_payout=Fraction(15_001))}
    assert plan_payouts(inputs(payees=settings, rates=rates))[0].reason == "below_minimum"


def test_each_statement_currency_is_its_own_payout_converted_on_its_own() -> None:
    rates = (Rate("r-eur", "EUR", "USD", Fraction("1.1"), AT),)
    months = (statement(net_minor=1_000), statement(net_minor=2_000, currency="EUR"))
    plans = plan_payouts(inputs(statements=months, rates=rates))
    assert [(p.currency, p.payout_currency, p.payout_amount_minor) for p in plans] == [
        ("EUR", "USD", 2_200),
        ("USD", "USD", 1_000),
    ]
    assert plans[0].payout_id != plans[1].payout_id


def test_pay_when_paid_holds_earnings_of_an_unissued_invoice_entirely() -> None:
    earnings = (InvoiceEarnings("sup-1", "USD", REF, Fraction(6_000 * 3600, 100)),)
    [plan] = plan_payouts(inputs(earnings=earnings, payees={"sup-1": payee(pay_when_paid=True)}))
    assert (plan.held_minor, plan.amount_minor) == (6_000, 4_000)


def test_pay_when_paid_releases_pro_rata_by_floor_then_the_rest_exactly() -> None:
    # E = 100.00 on an invoice of 300.00: paid 100.00 → floor(10000 × 10000 / 30000) = 3333 released.
    earnings = (InvoiceEarnings("sup-1", "USD", REF, Fraction(10_000 * 3600, 100)),)
    settings = {"sup-1": payee(pay_when_paid=True)}
    [partly] = plan_payouts(
        inputs(
            statements=(statement(net_minor=10_000),),
            earnings=earnings,
            invoices={REF: invoice(30_000, 20_000)},
            payees=settings,
        )
    )
    assert (partly.held_minor, partly.amount_minor) == (10_000 - 3_333, 3_333)
    # Paid in full later: the rest (6667) is released; a new month carries it.
    prior = (PriorPayout("sup-1", "USD", ("2026-01",), 3_333),)
    months = (statement(net_minor=10_000), statement("2026-02", 500, issued_at=FEB_END))
    [rest] = plan_payouts(
        inputs(
            at=FEB_END,
            statements=months,
            earnings=earnings,
            invoices={REF: invoice(30_000, 0)},
            payees=settings,
            prior=prior,
        )
    )
    assert (rest.months, rest.held_minor, rest.amount_minor) == (("2026-02",), 0, 500 + 6_667)


def test_prepaid_and_carried_credit_count_as_paid() -> None:
    # Total 50.00, amount due 20.00 after prepaid 30.00: 60 % paid before any money arrives.
    assert released_minor(1_000, invoice(5_000, 2_000)) == 600


def test_invoice_with_a_non_positive_total_is_paid_from_issue() -> None:
    assert released_minor(1_000, invoice(0, 0)) == 1_000
    assert released_minor(1_000, invoice(-200, 0)) == 1_000


def test_earnings_are_rounded_once_per_invoice_not_per_hour() -> None:
    # Three hours of 0.005 USD each: 0.015 → 0.02 (half even) once, not 3 × round(0.005) = 0.
    ref2 = InvoiceRef("ctr-2", REF.period_start)
    hours = tuple(InvoiceEarnings("sup-1", "USD", ref2, Fraction("0.005") * 3600) for _ in range(3))
    [plan] = plan_payouts(inputs(earnings=hours, payees={"sup-1": payee(pay_when_paid=True)}))
    assert plan.held_minor == 2


def test_nothing_payable_when_holds_exceed_the_nets() -> None:
    earnings = (InvoiceEarnings("sup-1", "USD", REF, Fraction(20_000 * 3600, 100)),)
    [plan] = plan_payouts(inputs(earnings=earnings, payees={"sup-1": payee(pay_when_paid=True)}))
    assert (plan.state, plan.reason, plan.amount_minor) == (None, "nothing_payable", -10_000)


def test_latest_rate_breaks_ties_by_rate_id_not_arrival() -> None:
    a = Rate("a", "USD", "EUR", Fraction(1), AT)
    b = Rate("b", "USD", "EUR", Fraction(2), AT)
    assert latest_rate([a, b], "USD", "EUR", AT) == latest_rate([b, a], "USD", "EUR", AT) == b


# --- properties ------------------------------------------------------------------------------------------------

earn = st.integers(min_value=-10_000, max_value=10**9)
totals = st.integers(min_value=1, max_value=10**9)


@given(earn, totals, st.data())
def test_released_never_exceeds_earnings_and_grows_with_payment(e: int, total: int, data: st.DataObject) -> None:
    paid_a = data.draw(st.integers(min_value=0, max_value=total))
    paid_b = data.draw(st.integers(min_value=paid_a, max_value=total))
    a = released_minor(e, invoice(total, total - paid_a))
    b = released_minor(e, invoice(total, total - paid_b))
    if e > 0:
        assert 0 <= a <= b <= e
        if paid_b < total:
            assert b == e * paid_b // total  # floor, pro rata
    else:
        assert a == b == e  # nothing to hold


@given(earn, totals)
def test_full_payment_releases_exactly_all(e: int, total: int) -> None:
    assert released_minor(e, invoice(total, 0)) == e


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 10**6)), min_size=1, max_size=8),
    st.lists(st.integers(1, 10**6), min_size=4, max_size=4),
    st.lists(st.integers(0, 100), min_size=4, max_size=4),
)
def test_over_successive_plannings_payouts_add_up_to_nets_minus_what_is_still_held(
    hours: list[tuple[int, int]], invoice_totals: list[int], paid_percent: list[int]
) -> None:
    """Pay-when-paid over three months: every planning pays what became payable; at the end (every
    invoice paid) the payouts sum to the nets exactly, and never exceed what was released."""
    refs = [InvoiceRef(f"ctr-{i}", REF.period_start) for i in range(4)]
    earnings = tuple(InvoiceEarnings("sup-1", "USD", refs[i], Fraction(x * 36, 1)) for i, x in hours)
    per_ref: dict[int, int] = {}
    for i, x in hours:
        per_ref[i] = per_ref.get(i, 0) + x
    e_minor = {i: x * 36 * 100 // 3600 for i, x in per_ref.items()}  # x × 36 / 3600 USD = x cents
    jan_net = sum(e_minor.values())
    months = (
        statement("2026-01", jan_net),
        statement("2026-02", 100, issued_at=FEB_END),
        statement("2026-03", 100, issued_at=FEB_END + timedelta(days=31)),
    )
    settings = {"sup-1": payee(pay_when_paid=True)}
    stages = [
        (AT, {}),
        (
            FEB_END,
            {
                refs[i]: invoice(t, t - t * p // 100, refs[i])
                for i, (t, p) in enumerate(zip(invoice_totals, paid_percent, strict=True))
            },
        ),
        (FEB_END + timedelta(days=31), {refs[i]: invoice(t, 0, refs[i]) for i, t in enumerate(invoice_totals)}),
    ]
    prior: list[PriorPayout] = []
    for at, invoices in stages:
        plans = plan_payouts(
            inputs(at=at, statements=months, earnings=earnings, invoices=invoices, payees=settings, prior=tuple(prior))
        )
        for plan in plans:
            released = sum(h.released_minor for h in plan.holdings)
            paid_so_far = sum(p.amount_minor for p in prior)
            assert plan.held_minor + released == jan_net
            if plan.is_payout:
                assert paid_so_far + plan.amount_minor <= sum(max(s.net_minor, 0) for s in months if s.issued_at <= at)
                prior.append(PriorPayout("sup-1", "USD", plan.months, plan.amount_minor))
    assert sum(p.amount_minor for p in prior) == jan_net + 200


@given(st.randoms(use_true_random=False))
def test_plans_do_not_depend_on_the_order_of_their_inputs(rnd: Any) -> None:
    refs = [InvoiceRef(f"ctr-{i}", REF.period_start) for i in range(3)]
    statements = [
        statement("2026-01", 12_345),
        statement("2026-02", -100, issued_at=FEB_END),
        statement("2026-01", 5_000, currency="EUR"),
        statement("2026-01", 7_000, supplier_id="sup-2"),
    ]
    earnings = [InvoiceEarnings("sup-1", "USD", refs[i % 3], Fraction(1_000 + i, 7)) for i in range(9)]
    rates = [
        Rate("a", "EUR", "USD", Fraction("1.1"), AT),
        Rate("b", "EUR", "USD", Fraction("1.2"), AT),
        Rate("c", "USD", "EUR", Fraction("0.9"), AT - timedelta(hours=1)),
    ]
    invoices = {r: invoice(50_000, 10_000 * i, r) for i, r in enumerate(refs[:2])}
    payees = {"sup-1": payee(pay_when_paid=True), "sup-2": payee(payout_currency="EUR", on_hold=True)}

    def run(shuffle: bool) -> list[Any]:
        lists = [list(statements), list(earnings), list(rates)]
        if shuffle:
            for items in lists:
                rnd.shuffle(items)
        return plan_payouts(
            inputs(at=FEB_END, statements=lists[0], earnings=lists[1], rates=lists[2], invoices=invoices, payees=payees)
        )

    assert run(False) == run(True)
