"""R8 prepaid wallet stories where operations arrive late: a usage correction (or a top-up) of a period older
than periods the wallet already ran.

R8: "over a period, the exact amount drawn is min(usage charges of the period, balance at its start + top-ups
before its end)". Expected amounts are worked out here from those words — the final per-period usage and
top-ups, walked period by period from an empty wallet — never from the order in which the operations reached
the wallet. (The on-time wallet stories are in ``test_rating_domain``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.errors import DomainRuleError
from services.rating.domain import (
    Drawn,
    Exhausted,
    LowBalance,
    Resume,
    WalletSignal,
    WalletState,
    apply_charge,
    apply_topup,
    resettle_wallet,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


P1 = at("2026-03-01T00:00:00")
P2 = at("2026-04-01T00:00:00")
P3 = at("2026-05-01T00:00:00")

Step = tuple[str, datetime, Fraction | int, datetime]


def run(state: WalletState, *steps: Step) -> tuple[WalletState, list[WalletSignal]]:
    signals: list[WalletSignal] = []
    for kind, period_start, amount, when in steps:
        step = apply_topup if kind == "topup" else apply_charge
        state, emitted = step(state, period_start, Fraction(amount), when)
        signals.extend(emitted)
    return state, signals


def r8_drawn(
    periods: Sequence[datetime], usage: dict[datetime, Fraction], topups: dict[datetime, Fraction]
) -> tuple[dict[datetime, Fraction], Fraction]:
    """R8 in its own words: per period, oldest first, drawn = min(usage charges of the period, balance at its
    start + top-ups before its end); the balance at the next period's start is what is left. Returns drawn per
    period and the balance after the last one."""
    balance = Fraction(0)
    drawn: dict[datetime, Fraction] = {}
    for period in sorted(periods):
        usage_charges = usage.get(period, Fraction(0))
        top_ups = topups.get(period, Fraction(0))
        drawn[period] = min(usage_charges, balance + top_ups)
        balance = balance + top_ups - drawn[period]
    return drawn, balance


def test_a_late_positive_correction_draws_only_from_its_own_periods_money() -> None:
    """P1 had 100.00 and used it all; P2 got its own 50.00 and used 10.00. A +20.00 correction of P1 then
    arrives: P1 had no more money (P2's top-up came after its end), so the 20.00 is P1 overage; P2 keeps its
    draw and the wallet keeps 40.00."""
    late = at("2026-03-20T00:00:00")
    state, _ = run(
        WalletState(),
        ("topup", P1, 100, at("2026-03-01T00:00:00")),
        ("charge", P1, 100, at("2026-03-10T00:00:00")),
        ("topup", P2, 50, P2),
        ("charge", P2, 10, at("2026-04-02T00:00:00")),
    )
    state, signals = apply_charge(state, P1, Fraction(20), late)
    assert (state.usage(P1), state.drawn(P1), state.overage(P1)) == (120, 100, 20) == (120, min(120, 100), 20)
    assert (state.usage(P2), state.drawn(P2), state.overage(P2)) == (10, 10, 0)
    assert state.balance == 40
    assert signals == ()  # nothing drawn, nothing returned; the balance did not move


def test_a_late_positive_correction_takes_what_its_period_had_left_from_later_periods() -> None:
    """P1 left 30.00 that P2 drew. A late +20.00 of P1 draws 20.00 of them: P2 had 20.00 less at its start, so it
    draws 20.00 less (a correction of P2's draw) and that is P2 overage."""
    late = at("2026-03-20T00:00:00")
    state, _ = run(
        WalletState(),
        ("topup", P1, 100, at("2026-03-01T00:00:00")),
        ("charge", P1, 70, at("2026-03-10T00:00:00")),
        ("charge", P2, 25, at("2026-04-02T00:00:00")),
    )
    assert (state.drawn(P2), state.balance) == (25, 5)
    state, signals = apply_charge(state, P1, Fraction(20), late)
    assert (state.drawn(P1), state.overage(P1)) == (90, 0)
    assert (state.drawn(P2), state.overage(P2)) == (10, 15) == (min(25, 100 - 90), 15)
    assert state.balance == 0
    assert signals[:2] == (
        Drawn(P1, Fraction(20), "charge", late),
        Drawn(P2, Fraction(-15), "correction", late),
    )
    assert sum(s.amount for s in signals if isinstance(s, Drawn)) == 5  # what left the wallet: 5 → 0


def test_a_late_negative_correction_passes_the_returned_money_on_to_later_periods_overage() -> None:
    """P1 drew 80.00 of 100.00; P2 charged 50.00 on the 20.00 left (30.00 overage). A −10.00 correction of P1
    then arrives: P2 started with 30.00, so it draws 30.00 (10.00 more, from P1's returned money) and the
    wallet stays at 0."""
    late = at("2026-03-20T00:00:00")
    state, _ = run(
        WalletState(),
        ("topup", P1, 100, at("2026-03-01T00:00:00")),
        ("charge", P1, 80, at("2026-03-10T00:00:00")),
        ("charge", P2, 50, at("2026-04-02T00:00:00")),
    )
    assert (state.drawn(P2), state.overage(P2), state.balance) == (20, 30, 0)
    state, signals = apply_charge(state, P1, Fraction(-10), late)
    assert (state.usage(P1), state.drawn(P1), state.overage(P1)) == (70, 70, 0)
    assert (state.drawn(P2), state.overage(P2)) == (30, 20) == (min(50, 100 - 70), 20)
    assert state.balance == 0
    assert signals == (
        Drawn(P1, Fraction(-10), "correction", late),
        Drawn(P2, Fraction(10), "correction", late),
    )
    assert state.exhausted  # the wallet is still empty: nothing to resume


def test_a_late_negative_correction_flows_through_every_later_period() -> None:
    late = at("2026-03-20T00:00:00")
    state, _ = run(
        WalletState(),
        ("topup", P1, 100, at("2026-03-01T00:00:00")),
        ("charge", P1, 90, at("2026-03-10T00:00:00")),
        ("charge", P2, 10, at("2026-04-02T00:00:00")),  # 10 left: all drawn
        ("topup", P3, 5, P3),
        ("charge", P3, 25, at("2026-05-02T00:00:00")),  # 5 drawn, 20 overage
    )
    state, signals = apply_charge(state, P1, Fraction(-40), late)
    # P1 draws 50, P2 starts with 50 and draws 10, P3 starts with 40 + 5 and draws 25: 20 left.
    assert [state.drawn(p) for p in (P1, P2, P3)] == [50, 10, 25]
    assert state.balance == 20
    assert signals == (
        Drawn(P1, Fraction(-40), "correction", late),
        Drawn(P3, Fraction(20), "correction", late),
    )
    with pytest.raises(DomainRuleError):
        apply_charge(state, P1, Fraction(-51), late)


def test_a_late_correction_of_a_period_between_two_others_changes_only_it_and_later_ones() -> None:
    state, _ = run(
        WalletState(),
        ("topup", P1, 60, at("2026-03-01T00:00:00")),
        ("charge", P1, 80, at("2026-03-10T00:00:00")),  # 60 drawn, 20 overage
        ("topup", P2, 40, P2),
        ("charge", P3, 30, at("2026-05-02T00:00:00")),  # P3 starts with 40
    )
    state, signals = apply_charge(state, P2, Fraction(25), at("2026-04-10T00:00:00"))
    assert [state.drawn(p) for p in (P1, P2, P3)] == [60, 25, 15]
    assert state.overage(P1) == 20  # P2's top-up never pays an earlier period
    assert state.balance == 0
    assert [(s.period_start, s.amount, s.reason) for s in signals if isinstance(s, Drawn)] == [
        (P2, 25, "charge"),
        (P3, -15, "correction"),
    ]


def test_a_late_charge_that_empties_the_wallet_alerts_and_suspends() -> None:
    late = at("2026-03-20T00:00:00")
    state, _ = run(
        WalletState(),
        ("topup", P1, 100, at("2026-03-01T00:00:00")),
        ("charge", P1, 50, at("2026-03-10T00:00:00")),
        ("charge", P2, 30, at("2026-04-02T00:00:00")),  # 20 left: not below 20 % of 100
    )
    state, signals = apply_charge(state, P1, Fraction(45), late)
    assert [state.drawn(p) for p in (P1, P2)] == [95, 5]
    assert state.balance == 0
    assert signals == (
        Drawn(P1, Fraction(45), "charge", late),
        Drawn(P2, Fraction(-25), "correction", late),
        LowBalance(Fraction(0), Fraction(20), late),
        Exhausted(P2, Fraction(25), late),  # the overage of the period running now
    )


def test_a_late_top_up_and_a_late_correction_of_one_period_give_r8_in_either_order() -> None:
    """P1 charged 10.00 and P2 12.00 on an empty wallet. Then, late, P1 gets a 15.00 top-up and a −5.00
    correction. R8: P1 draws min(5, 15) = 5 and leaves 10, P2 draws min(12, 10) = 10: 2.00 overage, nothing
    left — whichever of the two arrives first (a late top-up settles with its own money only, as before)."""
    topup: Step = ("topup", P1, 15, at("2026-03-31T23:00:00"))
    correction: Step = ("charge", P1, -5, at("2026-03-31T23:30:00"))
    for late in ((topup, correction), (correction, topup)):
        state, signals = run(
            WalletState(),
            ("charge", P1, 10, at("2026-03-20T00:00:00")),
            ("charge", P2, 12, at("2026-04-01T12:00:00")),
            *late,
        )
        assert [(state.drawn(p), state.overage(p)) for p in (P1, P2)] == [(5, 0), (10, 2)]
        assert state.balance == 0
        assert sum(s.amount for s in signals if isinstance(s, Drawn)) == 15  # all of the top-up, nothing more
        assert not any(isinstance(s, Resume) for s in signals)  # it never lifted the balance above zero


def test_a_state_saved_off_the_rule_is_put_back_by_resettling() -> None:
    """A wallet saved by the code before 2026-12-08 after fault 1 (P1's late +20 drew P2's top-up): P1 drawn 120,
    P2 10, balance 20. Resettling returns P1's 20 and the balance is R8's 40 again; a consistent state is
    left alone."""
    legacy = WalletState(
        balance=Fraction(20),
        last_topup=Fraction(50),
        usage_by_period={P1: Fraction(120), P2: Fraction(10)},
        drawn_by_period={P1: Fraction(120), P2: Fraction(10)},
        overage_by_period={P1: Fraction(0), P2: Fraction(0)},
        topups_by_period={P1: Fraction(100), P2: Fraction(50)},
        low_balance_armed=True,
    )
    when = at("2026-04-05T00:00:00")
    state, signals = resettle_wallet(legacy, when)
    assert [state.drawn(p) for p in (P1, P2)] == [100, 10]
    assert (state.overage(P1), state.balance) == (20, 40)
    assert signals == (Drawn(P1, Fraction(-20), "correction", when),)
    assert resettle_wallet(state, when) == (state, ())


# --- the rule, whatever the arrival order ------------------------------------------------------------------

PERIODS = [P1, P2, P3, at("2026-06-01T00:00:00")]

operation = st.one_of(
    st.tuples(st.just("topup"), st.integers(0, 3), st.integers(1, 20_000).map(lambda n: Fraction(n, 100))),
    st.tuples(st.just("charge"), st.integers(0, 3), st.integers(1, 400_000).map(lambda n: Fraction(n, 3600))),
    st.tuples(st.just("correction"), st.integers(0, 3), st.integers(0, 100).map(lambda n: Fraction(n, 100))),
)


@given(operations=st.lists(operation, max_size=30), data=st.data())
@settings(max_examples=400)
def test_drawn_per_period_is_r8_whatever_order_the_operations_arrive_in(
    operations: list[tuple[str, int, Fraction]], data: st.DataObject
) -> None:
    """Top-ups and charges of four periods (a correction lowers its period's usage by a share of what was
    charged before it, in the story's own order), delivered to the wallet in any order — a correction is
    never delivered before the charges it corrects, as rating emits it after them. After every delivery,
    each period's drawn is R8's: min(usage charges of the period, balance at its start + top-ups before its
    end), over what has arrived so far."""
    # The story in event time: resolve each correction to a negative amount of its period's usage so far.
    story: list[tuple[str, int, Fraction]] = []
    usage_so_far = [Fraction(0)] * len(PERIODS)
    for kind, index, value in operations:
        if kind == "correction":
            amount = -usage_so_far[index] * value
            if amount == 0:
                continue
            story.append(("charge", index, amount))
        else:
            story.append((kind, index, value))
        if kind != "topup":
            usage_so_far[index] += story[-1][2]
    # Any arrival order in which each negative correction comes after the positive charges of its period
    # that preceded it in the story (its usage can never go below zero).
    order = data.draw(st.permutations(range(len(story))))
    before: dict[int, list[int]] = {
        i: [j for j in range(i) if story[j][0] == "charge" and story[j][1] == story[i][1] and story[j][2] > 0]
        for i, (kind, _, amount) in enumerate(story)
        if kind == "charge" and amount < 0
    }
    arrival: list[int] = []
    waiting = list(order)
    while waiting:
        ready = next(i for i in waiting if all(j in arrival for j in before.get(i, [])))
        waiting.remove(ready)
        arrival.append(ready)

    state = WalletState()
    usage: dict[datetime, Fraction] = {}
    topups: dict[datetime, Fraction] = {}
    signalled: dict[datetime, Fraction] = {}
    for n, i in enumerate(arrival):
        kind, index, amount = story[i]
        period = PERIODS[index]
        when = period + timedelta(hours=n)
        balance_before = state.balance
        if kind == "topup":
            state, signals = apply_topup(state, period, amount, when)
            topups[period] = topups.get(period, Fraction(0)) + amount
        else:
            state, signals = apply_charge(state, period, amount, when)
            usage[period] = usage.get(period, Fraction(0)) + amount
        drawn, balance = r8_drawn(PERIODS, usage, topups)
        for p in PERIODS:
            assert state.drawn(p) == drawn.get(p, Fraction(0)), f"period {p} after {n + 1} arrivals"
            assert state.usage(p) == usage.get(p, Fraction(0))
            assert state.overage(p) == state.usage(p) - state.drawn(p) >= 0
        assert state.balance == balance >= 0
        moved = Fraction(0)
        for signal in signals:
            if isinstance(signal, Drawn):
                signalled[signal.period_start] = signalled.get(signal.period_start, Fraction(0)) + signal.amount
                moved += signal.amount
        # What the signals say was drawn is what left the wallet, and adds up to each period's drawn.
        assert moved == balance_before - state.balance + (amount if kind == "topup" else 0)
        assert all(signalled.get(p, Fraction(0)) == state.drawn(p) for p in PERIODS)
        assert resettle_wallet(state, when) == (state, ())
