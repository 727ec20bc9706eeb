"""R11 allocation, R14 schedules and routing: pure functions, stories and properties."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments.domain import dunning, routing
from services.payments.domain.allocation import (
    CreditNoteFact,
    InvoiceFact,
    MoneyIn,
    MoneyOut,
    allocate,
    remaining_at,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def inv(number: str, *, day: int, due_day: int | None = None, amount: int, contract: str = "c1") -> InvoiceFact:
    exists = T0 + timedelta(days=day)
    due = T0 + timedelta(days=due_day if due_day is not None else day + 30)
    return InvoiceFact(f"id-{number}", number, contract, exists, due, exists - timedelta(days=30), amount)


def receipt(rid: str, amount: int, *, day: float, reference: str = "") -> MoneyIn:
    return MoneyIn(f"receipt:{rid}", "receipt", amount, T0 + timedelta(days=day), reference, rid)


def test_reference_first_then_oldest_then_credit_balance() -> None:
    a = inv("INV-2026-000001", day=0, amount=10_000)
    b = inv("INV-2026-000002", day=1, amount=5_000)
    # pays b by reference, then a (the only other open one), 2,000 left over
    result = allocate([a, b], [receipt("r1", 17_000, day=2, reference="wire for INV-2026-000002, thanks")])
    assert result.invoices[b.number].paid_minor == 5_000
    assert result.invoices[a.number].paid_minor == 10_000
    assert result.credit_balance_minor == 2_000
    assert [x.invoice_number for x in result.applications] == [b.number, a.number]


def test_partial_payment_oldest_first_by_due_date_then_period_then_contract() -> None:
    late_due = inv("INV-2026-000003", day=0, due_day=40, amount=1_000, contract="a")
    early_due = inv("INV-2026-000004", day=0, due_day=35, amount=1_000, contract="z")
    result = allocate([late_due, early_due], [receipt("r1", 1_500, day=1)])
    assert result.invoices[early_due.number].paid_minor == 1_000
    assert result.invoices[late_due.number].paid_minor == 500
    assert result.invoices[late_due.number].status == "partially_paid"
    assert result.invoices[early_due.number].status == "paid"


def test_money_before_the_invoice_waits_on_credit_balance_and_pays_it_at_issue() -> None:
    a = inv("INV-2026-000005", day=10, amount=3_000)
    result = allocate([a], [receipt("r1", 5_000, day=2)])
    assert result.invoices[a.number].paid_minor == 3_000
    assert result.invoices[a.number].paid_at == a.exists_at
    assert result.credit_balance_minor == 2_000


def test_a_status_is_dated_by_the_fact_that_changed_it_not_by_later_facts() -> None:
    """The as_of of an invoice's status: the last receipt that paid it — a later invoice of the same renter
    (or any later fact that leaves it alone) does not move it, however the facts were batched."""
    jan = inv("INV-2026-000010", day=0, amount=20_000)
    feb = inv("INV-2026-000011", day=28, amount=1_500)
    paid_part = receipt("r1", 3_333, day=5, reference=jan.number)
    paid_rest = receipt("r2", 16_667, day=20, reference=jan.number)
    alone = allocate([jan], [paid_part])
    assert alone.invoices[jan.number].changed_at == paid_part.at
    both = allocate([jan, feb], [paid_part, paid_rest])
    assert both.invoices[jan.number].changed_at == paid_rest.at  # not feb's issue, the batch's last fact
    assert both.invoices[feb.number].changed_at == feb.exists_at  # issued, nothing paid yet


def test_same_instant_invoice_comes_first_and_receipts_in_receipt_id_order() -> None:
    a = inv("INV-2026-000006", day=5, amount=1_000)
    # both at the invoice's instant: the invoice exists; r-a then r-b by receipt id
    result = allocate([a], [receipt("r-b", 700, day=5), receipt("r-a", 600, day=5)])
    assert [(x.source_id, x.amount_minor) for x in result.applications] == [
        ("receipt:r-a", 600),
        ("receipt:r-b", 400),
    ]
    assert result.credit_balance_minor == 300


def test_zero_amount_due_is_paid_from_issue() -> None:
    a = inv("INV-2026-000007", day=1, amount=0)
    result = allocate([a], [])
    assert result.invoices[a.number].status == "paid"


def test_credit_note_on_open_reduces_and_on_paid_refunds_at_most_what_was_paid() -> None:
    a = inv("INV-2026-000008", day=0, amount=10_000)
    note_open = CreditNoteFact("cn1", a.number, T0 + timedelta(days=3), -2_000)
    result = allocate([a], [receipt("r1", 4_000, day=1)], credit_notes=[note_open])
    bal = result.invoices[a.number]
    assert (bal.amount_due_minor, bal.paid_minor, bal.remaining_minor) == (8_000, 4_000, 4_000)
    assert result.credit_note_refunds == ()

    note_paid = CreditNoteFact("cn2", a.number, T0 + timedelta(days=3), -3_000)
    paid = allocate([a], [receipt("r1", 10_000, day=1)], credit_notes=[note_paid])
    bal = paid.invoices[a.number]
    assert (bal.amount_due_minor, bal.paid_minor, bal.remaining_minor) == (7_000, 7_000, 0)
    assert [r.amount_minor for r in paid.credit_note_refunds] == [3_000]


def test_refund_never_exceeds_what_was_paid_and_reopens_the_invoice() -> None:
    a = inv("INV-2026-000009", day=0, amount=10_000)
    out = MoneyOut("refund:1", "refund", a.number, 25_000, T0 + timedelta(days=4))
    result = allocate([a], [receipt("r1", 6_000, day=1)], money_out=[out])
    assert result.money_out_taken == {"refund:1": 6_000}
    assert result.invoices[a.number].status == "open"
    assert result.invoices[a.number].remaining_minor == 10_000


amounts = st.integers(min_value=1, max_value=50_000)


@st.composite
def renter_books(draw: st.DrawFn) -> tuple[list[InvoiceFact], list[MoneyIn], list[CreditNoteFact], list[MoneyOut]]:
    n = draw(st.integers(min_value=0, max_value=6))
    invoices = [
        inv(
            f"INV-2026-{i:06d}", day=draw(st.integers(0, 60)), amount=draw(st.integers(0, 50_000)), contract=f"c{i % 3}"
        )
        for i in range(1, n + 1)
    ]
    numbers = [i.number for i in invoices]
    money = [
        receipt(
            f"r{j}",
            draw(amounts),
            day=draw(st.integers(0, 70)),
            reference=draw(st.sampled_from(["", *numbers])) if numbers else "",
        )
        for j in range(draw(st.integers(0, 6)))
    ]
    notes = (
        [
            CreditNoteFact(
                f"cn{k}",
                draw(st.sampled_from(numbers)),
                T0 + timedelta(days=draw(st.integers(0, 70))),
                draw(st.integers(-30_000, 5_000)) or -1,
            )
            for k in range(draw(st.integers(0, 2)))
        ]
        if numbers
        else []
    )
    outs = (
        [
            MoneyOut(
                f"out{k}",
                "refund",
                draw(st.sampled_from(numbers)),
                draw(amounts),
                T0 + timedelta(days=draw(st.integers(0, 70))),
            )
            for k in range(draw(st.integers(0, 2)))
        ]
        if numbers
        else []
    )
    return invoices, money, notes, outs


@settings(max_examples=300, deadline=None)
@given(renter_books(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_arrival_order(books: tuple, rnd: random.Random) -> None:  # type: ignore[type-arg]
    invoices, money, notes, outs = books
    first = allocate(invoices, money, credit_notes=notes, money_out=outs)
    for lst in (invoices, money, notes, outs):
        rnd.shuffle(lst)
    again = allocate(invoices, money, credit_notes=notes, money_out=outs)
    assert first == again
    # conservation is asserted inside allocate; here: nothing is paid beyond what is due
    for bal in again.invoices.values():
        assert 0 <= bal.paid_minor <= bal.amount_due_minor
        assert bal.remaining_minor == bal.amount_due_minor - bal.paid_minor


def test_retry_schedule_is_day_1_3_5_7_10_14_then_exhausted() -> None:
    first = T0
    days = [(dunning.next_try_at(first, n) or first) - first for n in range(1, 7)]
    assert [d.days for d in days] == [1, 3, 5, 7, 10, 14]
    assert dunning.next_try_at(first, 7) is None
    assert [dunning.next_inquiry_after(n) for n in range(9)][:3] == [
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(hours=1),
    ]
    assert dunning.next_inquiry_after(8) is None


def test_an_outcome_that_stays_unknown_is_asked_8_times_at_1_min_5_min_1_h_then_daily_then_an_operator() -> None:
    """R14: after the send's timeout, ask after 1 min; each answer still unknown waits the next delay."""
    made, delay = dunning.still_unknown(0, asked=False)
    asked_at: list[timedelta] = []
    elapsed = timedelta(0)
    while delay is not None:
        elapsed += delay
        asked_at.append(elapsed)
        made, delay = dunning.still_unknown(made, asked=True)
    minute, hour, day = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
    first = [minute, 6 * minute, hour + 6 * minute]
    assert asked_at == first + [first[-1] + n * day for n in range(1, 6)]
    assert made == 8
    # A re-send (the processor had not seen the attempt) that times out starts the schedule again.
    assert dunning.still_unknown(3, asked=False) == (0, minute)


def test_decline_codes_are_configuration() -> None:
    codes = dunning.DeclineCodes({"stripe": frozenset({"stolen_card"})})
    assert codes.kind("stripe", "stolen_card") == "hard"
    assert codes.kind("stripe", "insufficient_funds") == "soft"
    assert codes.kind("ledgerpay", "stolen_card") == "soft"
    # Stripe's adapter spells a decline "<code>/<decline_code>": either part configured hard is hard
    assert codes.kind("stripe", "card_declined/stolen_card") == "hard"
    assert codes.kind("stripe", "card_declined/insufficient_funds") == "soft"


def test_a_dispute_lost_at_the_instant_it_opened_writes_off_the_disputed_invoice() -> None:
    t0 = T0
    first = inv("INV-2026-000001", day=0, due_day=10, amount=10_000)
    later = inv("INV-2026-000002", day=1, due_day=40, amount=5_000, contract="c2")
    at = t0 + timedelta(days=5)
    result = allocate(
        [first, later],
        [
            MoneyIn("attempt:a1", "collection", 10_000, t0 + timedelta(days=2), "INV-2026-000001"),
            MoneyIn("dispute_loss:dp1", "dispute_loss", 10_000, at, "INV-2026-000001", "dispute_loss:dp1"),
        ],
        money_out=[MoneyOut("dispute:dp1", "dispute", "INV-2026-000001", 10_000, at)],
    )
    assert result.invoices["INV-2026-000001"].status == "paid"
    assert result.invoices["INV-2026-000002"].paid_minor == 0


def test_routing_prefers_health_then_cost_and_steers_around_open_circuits() -> None:
    gws = [
        routing.GatewayConfig("cheap", frozenset({"card"}), fee_bps=100),
        routing.GatewayConfig("dear", frozenset({"card", "ach_debit"}), fee_bps=400),
    ]
    even = {"cheap": routing.Health(90, 100), "dear": routing.Health(90, 100)}
    ids = [f"a{i}" for i in range(200)]
    picks = [
        routing.choose(i, kind="card", currency="USD", amount_minor=10_000, gateways=gws, health=even).gateway
        for i in ids
    ]
    assert picks.count("cheap") > 150 and "dear" in picks  # cost wins, exploration visits the other
    broken = {"cheap": routing.Health(90, 100, circuit_open=True), "dear": routing.Health(90, 100)}
    assert {
        routing.choose(i, kind="card", currency="USD", amount_minor=10_000, gateways=gws, health=broken).gateway
        for i in ids
    } == {"dear"}
    ach = routing.choose("x", kind="ach_debit", currency="USD", amount_minor=10_000, gateways=gws, health=even)
    assert ach.gateway == "dear" and any(not c.eligible for c in ach.candidates)
    failover = routing.choose(
        "x", kind="card", currency="USD", amount_minor=1, gateways=gws, health=even, tried=frozenset({"cheap"})
    )
    assert failover.gateway == "dear"


def test_the_pci_scan_finds_luhn_valid_card_numbers_only() -> None:
    from services.operations.pci import pans_in

    assert pans_in("card 4242424242424242 on file") == ["424242…4242"]
    assert pans_in("4000-0566-5566-5556 and 5555 5555 5555 4444") == ["400005…5556", "555555…4444"]
    assert pans_in("4242424242424241") == []  # fails Luhn
    assert pans_in("invoice INV-2026-000001, amount 1234567890123") == []  # fails Luhn
    assert pans_in("0000000000000000") == []  # one repeated digit is padding, not a card
    assert pans_in("tok_visa pm_card_visa 2026-02-16T00:00:00Z") == []


def test_an_invoices_history_has_one_point_per_instant_that_changed_it() -> None:
    """What payouts' planning reads (R15: paid as of the tick), whatever one recomputation took in: the state
    after each instant that moved the invoice, its issue first (with the credit applied then)."""
    result = allocate(
        [inv("A", day=0, amount=20_000)],
        [receipt("r0", 6_000, day=-3), receipt("r1", 5_000, day=0.25), receipt("r2", 1_000, day=0.25)],
    )
    points = [(p.at, p.paid_minor, p.remaining_minor) for p in result.invoices["A"].history]
    assert points == [(T0, 6_000, 14_000), (T0 + timedelta(hours=6), 12_000, 8_000)]
    assert result.invoices["A"].history[-1].remaining_minor == result.invoices["A"].remaining_minor


def test_remaining_at_an_attempt_counts_only_money_received_by_then() -> None:
    """R14 in event time: an attempt at the due date charges what was due then; a wire received later goes
    to the credit balance (R11) however early it was read."""
    invoices = [inv("A", day=0, due_day=14, amount=10_000)]
    money = [receipt("r-before", 3_000, day=13), receipt("r-after", 4_000, day=14.5)]
    due = T0 + timedelta(days=14)
    assert remaining_at(invoices, money, number="A", at=due) == 7_000
    assert remaining_at(invoices, money, number="A", at=due + timedelta(days=1)) == 3_000
    assert remaining_at(invoices, money, number="B", at=due) == 0
