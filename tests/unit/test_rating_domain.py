"""Rating stories: pricing by the second (R4), corrections as deltas (R3), the platform's take (R13),
prepaid wallets (R8) and credit limits (R9).

Expected amounts are computed here from the rules: per-second brute force over the price schedule,
exact fractions, and a running account of usage and top-ups per period for the wallet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contracts.build import amend_terms, terminate_terms, terms_from_created
from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError, InvalidAmountError
from libs.money import parse_decimal, round_ledger, round_minor
from schemas.events import Segment, UsageMetered
from schemas.inputs import ContractAmended, ContractCreated, ContractTerminated
from services.rating.domain import (
    GPU_METER,
    Drawn,
    Exhausted,
    LowBalance,
    Priced,
    Resume,
    UsageState,
    WalletSignal,
    WalletState,
    affected_since,
    apply_charge,
    apply_topup,
    check_credit,
    credit_exposure,
    exact_from_x3600,
    ledger_delta,
    limit_crossed,
    period_at,
    period_of_hour,
    platform_take,
    price_usage,
    rate_revision,
    reprice_needed,
    usage_state_of,
    wallet_order_key,
    x3600_from_exact,
)

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def contract(**overrides: Any) -> ContractTerms:
    data: dict[str, Any] = {
        "contract_id": "c-1",
        "renter_id": "r-1",
        "currency": "USD",
        "billing_mode": "postpaid",
        "price_per_gpu_hour": "2.00",
        "supplier_rate_per_gpu_hour": "1.40",
        "commitment_per_period": "0",
        "tax_rate": "0.20",
        "starts_at": "2026-03-01T00:00:00Z",
        "billing_anchor_day": 1,
        "meter_prices": {"egress_gb": "0.08"},
    }
    data.update(overrides)
    return terms_from_created("e-created", ContractCreated.model_validate(data))


def amend(terms: ContractTerms, effective_at: datetime, **fields: str) -> ContractTerms:
    event = ContractAmended.model_validate({"contract_id": terms.contract_id, "effective_at": effective_at, **fields})
    return amend_terms(terms, f"e-amend-{terms.next_version}", event)


def terminate(terms: ContractTerms, effective_at: datetime) -> ContractTerms:
    return terminate_terms(
        terms,
        ContractTerminated.model_validate({"contract_id": terms.contract_id, "effective_at": effective_at}),
    )


def gpu_usage(hour_start: datetime, gpu_count: int, *segments: tuple[int, int]) -> UsageState:
    """Usage of one hour: segments as (from second, to second) offsets inside the hour."""
    return UsageState(
        meter=GPU_METER,
        hour_start=hour_start,
        gpu_count=gpu_count,
        billable_segments=tuple((hour_start + a * SECOND, hour_start + b * SECOND) for a, b in segments),
    )


def exact(value_x3600: Decimal) -> Fraction:
    return Fraction(value_x3600) / 3600


# --- the independent reference: R4 second by second ----------------------------------------------


def seconds_of(usage: UsageState) -> Iterator[datetime]:
    for start, end in usage.billable_segments:
        second = start
        while second < end:
            yield second
            second += SECOND


def price_in_force(schedule: Sequence[tuple[datetime, Decimal]], base: Decimal, second: datetime) -> Decimal:
    """R4: the price whose effective_at is latest and not after the second (schedule in arrival order)."""
    in_force = [(eff, index, price) for index, (eff, price) in enumerate(schedule) if eff <= second]
    return max(in_force)[2] if in_force else base


def brute_force(
    usage: UsageState,
    base: tuple[Decimal, Decimal],
    schedule: Sequence[tuple[datetime, Decimal, Decimal]] = (),
    term: tuple[datetime, datetime | None] | None = None,
) -> tuple[Fraction, Fraction]:
    """(charge, earning) in exact major units: Σ over billable seconds of gpu_count × price / 3600."""
    charge = earning = Fraction(0)
    for second in seconds_of(usage):
        if term is not None and (second < term[0] or (term[1] is not None and second >= term[1])):
            continue
        price = price_in_force([(e, p) for e, p, _ in schedule], base[0], second)
        rate = price_in_force([(e, r) for e, _, r in schedule], base[1], second)
        charge += Fraction(usage.gpu_count) * Fraction(price) / 3600
        earning += Fraction(usage.gpu_count) * Fraction(rate) / 3600
    return charge, earning


# ====================================================================================================
# R4 pricing
# ====================================================================================================


def test_a_full_hour_of_8_gpus_costs_8_gpu_hours() -> None:
    priced = price_usage(gpu_usage(at("2026-03-02T14:00:00"), 8, (0, 3600)), contract())
    assert exact(priced.charge_x3600) == 8 * Fraction("2.00")
    assert exact(priced.earning_x3600) == 8 * Fraction("1.40")
    assert priced.gpu_seconds == 8 * 3600
    assert priced.versions == (1,)


def test_a_price_amendment_at_14_30_splits_that_hour() -> None:
    terms = amend(contract(), at("2026-03-02T14:30:00"), price_per_gpu_hour="3.00", supplier_rate_per_gpu_hour="2.00")
    priced = price_usage(gpu_usage(at("2026-03-02T14:00:00"), 8, (0, 3600)), terms)
    # 8 GPUs, half an hour at 2.00 and half an hour at 3.00: 8 × 0.5 × 2 + 8 × 0.5 × 3 = 8 + 12.
    assert exact(priced.charge_x3600) == Fraction(20)
    assert exact(priced.earning_x3600) == 8 * Fraction(1, 2) * Fraction("1.40") + 8 * Fraction(1, 2) * 2
    assert priced.versions == (1, 2)


def test_an_hour_with_an_outage_is_priced_only_for_its_billable_segments() -> None:
    usage = gpu_usage(at("2026-03-02T09:00:00"), 4, (0, 600), (1800, 3600))
    priced = price_usage(usage, contract())
    assert exact(priced.charge_x3600) == Fraction(4 * (600 + 1800), 3600) * 2
    assert priced.gpu_seconds == 4 * 2400


def test_jpy_and_usd_prices_are_exact_and_round_once_per_line() -> None:
    jpy = contract(currency="JPY", price_per_gpu_hour="450", supplier_rate_per_gpu_hour="300")
    priced = price_usage(gpu_usage(at("2026-03-02T10:00:00"), 3, (0, 1234)), jpy)
    # 3 GPUs × 1234 s × ¥450/h = ¥462.75 exactly, ¥463 on the invoice.
    assert exact(priced.charge_x3600) == Fraction(3 * 1234 * 450, 3600)
    assert round_minor(exact(priced.charge_x3600), "JPY") == 463

    usd = contract(price_per_gpu_hour="2.35", supplier_rate_per_gpu_hour="1.85")
    priced = price_usage(gpu_usage(at("2026-03-02T10:00:00"), 7, (1, 3600)), usd)
    # 7 × 3599 s × $2.35/h = $16.44543…, $16.45 on the invoice.
    assert exact(priced.charge_x3600) == Fraction(7 * 3599) * Fraction("2.35") / 3600
    assert round_minor(exact(priced.charge_x3600), "USD") == 1645


def test_seconds_outside_the_term_are_not_billable() -> None:
    # The contract starts at 10:20 and was terminated at 10:50 after metering emitted the hour.
    terms = terminate(contract(starts_at="2026-03-02T10:20:00Z"), at("2026-03-02T10:50:00"))
    priced = price_usage(gpu_usage(at("2026-03-02T10:00:00"), 2, (0, 3600)), terms)
    assert priced.gpu_seconds == 2 * 1800
    assert exact(priced.charge_x3600) == Fraction(2 * 1800, 3600) * 2


def test_x3600_amounts_travel_as_plain_decimal_strings() -> None:
    free = contract(price_per_gpu_hour="0.000000000000", supplier_rate_per_gpu_hour="0.000000")
    priced = price_usage(gpu_usage(at("2026-03-02T10:00:00"), 8, (0, 3600)), free)
    assert str(priced.charge_x3600) == "0"
    priced = price_usage(gpu_usage(at("2026-03-02T10:00:00"), 8, (0, 3600)), contract(price_per_gpu_hour="2.50"))
    assert parse_decimal(str(priced.charge_x3600)) == 8 * 3600 * Fraction("2.50")


@st.composite
def hour_usages(draw: st.DrawFn) -> UsageState:
    cuts = sorted(draw(st.lists(st.integers(0, 3600), max_size=8, unique=True)))
    segments = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
    return gpu_usage(at("2026-03-02T14:00:00"), draw(st.integers(0, 16)), *segments)


prices = st.integers(0, 100_000).map(lambda n: Decimal(n).scaleb(-3))


@given(
    usage=hour_usages(),
    base=st.tuples(prices, prices),
    amendments=st.lists(st.tuples(st.integers(-600, 4200), prices, prices), max_size=4),
    term_offsets=st.tuples(st.integers(-3600, 1800), st.one_of(st.none(), st.integers(1800, 7200))),
)
@settings(max_examples=60, deadline=None)
def test_pricing_equals_the_per_second_sum_of_the_price_in_force(
    usage: UsageState,
    base: tuple[Decimal, Decimal],
    amendments: list[tuple[int, Decimal, Decimal]],
    term_offsets: tuple[int, int | None],
) -> None:
    hour = usage.hour_start
    starts_at = hour + term_offsets[0] * SECOND
    terms = contract(starts_at=starts_at, price_per_gpu_hour=str(base[0]), supplier_rate_per_gpu_hour=str(base[1]))
    schedule = []
    for offset_s, price, rate in amendments:
        effective_at = hour + offset_s * SECOND
        terms = amend(terms, effective_at, price_per_gpu_hour=str(price), supplier_rate_per_gpu_hour=str(rate))
        schedule.append((effective_at, price, rate))
    term_end = None
    if term_offsets[1] is not None:
        term_end = hour + term_offsets[1] * SECOND
        terms = terminate(terms, term_end)
    priced = price_usage(usage, terms)
    charge, earning = brute_force(usage, base, schedule, (starts_at, term_end))
    assert exact(priced.charge_x3600) == charge
    assert exact(priced.earning_x3600) == earning
    # R13: the two sides of the same usage differ by the platform's take.
    assert platform_take(priced.charge_x3600, priced.earning_x3600) == charge - earning


# --- corrections and late amendments -------------------------------------------------------------


def test_corrections_rate_as_signed_deltas() -> None:
    terms = contract(price_per_gpu_hour="3.00", supplier_rate_per_gpu_hour="2.00")
    hour = at("2026-03-02T14:00:00")
    original = gpu_usage(hour, 4, (0, 3600))
    first = rate_revision(None, original, terms)
    assert exact(first.charge_x3600) == 4 * 3
    # A late outage event removes the last 15 minutes: the correction is −4 GPUs × ¼ h × 3.00.
    corrected = gpu_usage(hour, 4, (0, 2700))
    second = rate_revision(first.priced, corrected, terms)
    assert exact(second.charge_x3600) == -4 * Fraction(1, 4) * 3
    assert exact(second.earning_x3600) == -4 * Fraction(1, 4) * 2
    assert second.gpu_seconds == -4 * 900
    # Then the outage is quarantined (its end came before its start): the hour is whole again.
    third = rate_revision(second.priced, original, terms)
    assert exact(third.charge_x3600) == 4 * Fraction(1, 4) * 3
    total = sum((exact(d.charge_x3600) for d in (first, second, third)), Fraction(0))
    assert total == exact(price_usage(original, terms).charge_x3600)


def test_an_unchanged_revision_rates_to_a_zero_delta() -> None:
    terms = contract()
    usage = gpu_usage(at("2026-03-02T14:00:00"), 2, (0, 3600))
    first = rate_revision(None, usage, terms)
    again = rate_revision(first.priced, usage, terms)
    assert again.is_zero
    assert str(again.charge_x3600) == "0"


def test_an_amendment_arriving_after_the_hour_was_rated_produces_the_difference() -> None:
    before = contract()
    hour = at("2026-03-02T14:00:00")
    usage = gpu_usage(hour, 8, (0, 3600))
    rated = rate_revision(None, usage, before)
    # The amendment effective 14:20 arrives after the hour was rated at 2.00.
    after = amend(before, at("2026-03-02T14:20:00"), price_per_gpu_hour="2.60")
    assert affected_since(before, after) == at("2026-03-02T14:20:00")
    assert not reprice_needed(before, after, hour - HOUR)
    assert reprice_needed(before, after, hour)
    assert reprice_needed(before, after, hour + HOUR)
    delta = rate_revision(rated.priced, usage, after)
    # 8 GPUs × 40 minutes × (2.60 − 2.00) per hour.
    assert exact(delta.charge_x3600) == 8 * Fraction(40, 60) * (Fraction("2.60") - 2)
    assert delta.earning_x3600 == 0  # the supplier rate did not change
    assert delta.versions == (1, 2)
    assert (
        exact(rated.charge_x3600 + delta.charge_x3600)
        == brute_force(
            usage,
            (Decimal("2.00"), Decimal("1.40")),
            [(at("2026-03-02T14:20:00"), Decimal("2.60"), Decimal("1.40"))],
        )[0]
    )


def test_an_amendment_that_changes_no_price_reprices_nothing() -> None:
    before = contract()
    after = amend(before, at("2026-03-02T14:20:00"), tax_rate="0.25", commitment_per_period="100")
    assert not reprice_needed(before, after, at("2026-03-02T14:00:00"))
    # Setting the same price again, written differently, is no change either.
    same = amend(before, at("2026-03-02T14:20:00"), price_per_gpu_hour="2.0")
    assert not reprice_needed(before, same, at("2026-03-02T14:00:00"))


def test_a_late_termination_reprices_the_hours_after_it_to_zero() -> None:
    before = contract()
    hour = at("2026-03-05T10:00:00")
    usage = gpu_usage(hour, 2, (0, 3600))
    rated = rate_revision(None, usage, before)
    after = terminate(before, at("2026-03-05T10:45:00"))
    assert affected_since(before, after) == at("2026-03-05T10:45:00")
    assert reprice_needed(before, after, hour)
    assert not reprice_needed(before, after, hour - HOUR)
    delta = rate_revision(rated.priced, usage, after)
    assert exact(delta.charge_x3600) == -2 * Fraction(1, 4) * 2


# --- add-on meters (extension) -----------------------------------------------------------------------


def addon(hour_start: datetime, meter: str, quantity: str) -> UsageState:
    return UsageState(meter=meter, hour_start=hour_start, gpu_count=0, quantity=Decimal(quantity))


def test_an_add_on_meter_is_charged_quantity_times_its_price_and_earns_the_supplier_nothing() -> None:
    priced = price_usage(addon(at("2026-03-02T14:00:00"), "egress_gb", "12.5"), contract())
    assert exact(priced.charge_x3600) == Fraction("12.5") * Fraction("0.08")
    assert priced.earning_x3600 == 0
    assert priced.gpu_seconds == 0


def test_an_add_on_meter_without_a_price_is_charged_nothing() -> None:
    priced = price_usage(addon(at("2026-03-02T14:00:00"), "energy_kwh", "40"), contract())
    assert priced.charge_x3600 == 0
    assert priced.versions == (1,)  # the version whose (missing) price applied


def test_an_add_on_price_change_applies_from_the_next_hour() -> None:
    terms = amend(contract(), at("2026-03-02T14:30:00"), meter_prices={"egress_gb": "0.10"})  # type: ignore[arg-type]
    in_hour = price_usage(addon(at("2026-03-02T14:00:00"), "egress_gb", "10"), terms)
    next_hour = price_usage(addon(at("2026-03-02T15:00:00"), "egress_gb", "10"), terms)
    assert exact(in_hour.charge_x3600) == 10 * Fraction("0.08")
    assert exact(next_hour.charge_x3600) == 10 * Fraction("0.10")
    assert not reprice_needed(contract(), terms, at("2026-03-02T14:00:00"), meter="egress_gb")
    assert reprice_needed(contract(), terms, at("2026-03-02T15:00:00"), meter="egress_gb")
    assert not reprice_needed(contract(), terms, at("2026-03-02T15:00:00"), meter=GPU_METER)


# --- the usage record --------------------------------------------------------------------------------


def metered(
    hour_start: datetime, gpu_count: int, billable_gpu_seconds: int, *segments: tuple[int, int]
) -> UsageMetered:
    return UsageMetered(
        usage_id="u-1",
        allocation_id="a-1",
        contract_id="c-1",
        renter_id="r-1",
        supplier_id="s-1",
        gpu_model="H100",
        meter=GPU_METER,
        hour_start=hour_start,
        revision=1,
        gpu_count=gpu_count,
        provisioned_gpu_seconds=gpu_count * 3600,
        billable_gpu_seconds=billable_gpu_seconds,
        maintenance_gpu_seconds=0,
        outage_gpu_seconds=gpu_count * 3600 - billable_gpu_seconds,
        billable_segments=[
            Segment(start_at=hour_start + a * SECOND, end_at=hour_start + b * SECOND) for a, b in segments
        ],
        delta_provisioned_gpu_seconds=gpu_count * 3600,
        delta_billable_gpu_seconds=billable_gpu_seconds,
        delta_maintenance_gpu_seconds=0,
        delta_outage_gpu_seconds=gpu_count * 3600 - billable_gpu_seconds,
    )


def test_a_usage_record_is_priced_from_its_full_state() -> None:
    hour = at("2026-03-02T14:00:00")
    state = usage_state_of(metered(hour, 8, 8 * 3000, (0, 1000), (1600, 3600)))
    assert state == gpu_usage(hour, 8, (0, 1000), (1600, 3600))


def test_an_inconsistent_usage_record_is_refused() -> None:
    hour = at("2026-03-02T14:00:00")
    with pytest.raises(DomainRuleError):
        usage_state_of(metered(hour, 8, 8 * 3600, (0, 1000)))  # GPU-seconds do not match the segments
    with pytest.raises(DomainRuleError):
        gpu_usage(hour, 1, (0, 1000), (900, 2000))  # overlapping segments would bill twice
    with pytest.raises(DomainRuleError):
        gpu_usage(hour, 1, (0, 3601))  # outside the hour
    with pytest.raises(DomainRuleError):
        UsageState(meter=GPU_METER, hour_start=hour + SECOND, gpu_count=1)


def test_an_hour_belongs_to_the_billing_period_containing_it() -> None:
    terms = contract(billing_anchor_day=15, starts_at="2026-02-20T00:00:00Z")
    assert period_of_hour(terms, at("2026-03-14T23:00:00")) == (
        at("2026-02-15T00:00:00"),
        at("2026-03-15T00:00:00"),
    )
    assert period_of_hour(terms, at("2026-03-15T00:00:00")) == (
        at("2026-03-15T00:00:00"),
        at("2026-04-15T00:00:00"),
    )
    assert period_at(terms, at("2026-03-15T00:00:00") - SECOND)[1] == at("2026-03-15T00:00:00")


def test_x3600_conversions_are_exact() -> None:
    assert x3600_from_exact(Fraction(20)) == Decimal(72000)
    assert exact_from_x3600(x3600_from_exact(Fraction(1, 7200))) == Fraction(1, 7200)
    with pytest.raises(InvalidAmountError):
        x3600_from_exact(Fraction(1, 7))


# ====================================================================================================
# R8 prepaid wallet
# ====================================================================================================

MARCH = at("2026-03-01T00:00:00")
APRIL = at("2026-04-01T00:00:00")


def run(
    state: WalletState, *steps: tuple[str, datetime, Fraction | int, datetime]
) -> tuple[WalletState, list[WalletSignal]]:
    signals: list[WalletSignal] = []
    for kind, period_start, amount, when in steps:
        step = apply_topup if kind == "topup" else apply_charge
        state, emitted = step(state, period_start, Fraction(amount), when)
        signals.extend(emitted)
    return state, signals


def test_a_wallet_exhausted_mid_period_then_topped_up_settles_the_overage_first() -> None:
    state, signals = run(
        WalletState(),
        ("topup", MARCH, 100, at("2026-03-01T00:00:00")),
        ("charge", MARCH, 60, at("2026-03-03T00:00:00")),
        ("charge", MARCH, 30, at("2026-03-05T00:00:00")),  # 40 → 10: below 20 % of 100
        ("charge", MARCH, 25, at("2026-03-07T00:00:00")),  # 10 drawn, 15 overage: exhausted
        ("charge", MARCH, 5, at("2026-03-08T00:00:00")),  # 20 overage
        ("topup", MARCH, 50, at("2026-03-10T00:00:00")),  # settles the 20, 30 left: resume
        ("charge", MARCH, 12, at("2026-03-12T00:00:00")),
    )
    usage = Fraction(60 + 30 + 25 + 5 + 12)
    assert state.drawn(MARCH) == min(usage, 0 + 100 + 50)
    assert state.overage(MARCH) == 0
    assert state.balance == 100 + 50 - usage
    assert signals == [
        Drawn(MARCH, Fraction(60), "charge", at("2026-03-03T00:00:00")),
        Drawn(MARCH, Fraction(30), "charge", at("2026-03-05T00:00:00")),
        LowBalance(Fraction(10), Fraction(20), at("2026-03-05T00:00:00")),
        Drawn(MARCH, Fraction(10), "charge", at("2026-03-07T00:00:00")),
        Exhausted(MARCH, Fraction(15), at("2026-03-07T00:00:00")),
        Drawn(MARCH, Fraction(20), "topup_settlement", at("2026-03-10T00:00:00")),
        Resume(Fraction(30), at("2026-03-10T00:00:00")),
        Drawn(MARCH, Fraction(12), "charge", at("2026-03-12T00:00:00")),
    ]


def test_a_top_up_smaller_than_the_overage_keeps_the_wallet_exhausted() -> None:
    state, signals = run(
        WalletState(),
        ("topup", MARCH, 100, at("2026-03-01T00:00:00")),
        ("charge", MARCH, 150, at("2026-03-05T00:00:00")),
        ("topup", MARCH, 30, at("2026-03-06T00:00:00")),
    )
    assert state.balance == 0
    assert state.drawn(MARCH) == 130
    assert state.overage(MARCH) == 20
    assert state.exhausted
    assert not any(isinstance(s, Resume) for s in signals)
    assert LowBalance(Fraction(0), Fraction(6), at("2026-03-06T00:00:00")) in signals


def test_a_top_up_never_settles_an_earlier_periods_overage() -> None:
    state, _ = run(
        WalletState(),
        ("topup", MARCH, 100, at("2026-03-01T00:00:00")),
        ("charge", MARCH, 150, at("2026-03-20T00:00:00")),
        ("topup", APRIL, 80, at("2026-04-01T00:00:00")),
        ("charge", APRIL, 30, at("2026-04-02T00:00:00")),
    )
    assert state.drawn(MARCH) == min(150, 0 + 100)
    assert state.overage(MARCH) == 50  # invoiced with March
    assert state.drawn(APRIL) == min(30, 0 + 80)
    assert state.balance == 50


def test_a_late_top_up_settles_its_own_period_then_the_later_periods_already_in_overage() -> None:
    """A top-up made in March that arrives after April's first charges ran into overage (they were applied at
    an earlier watermark): in event time the money was there before April, so April draws min(usage, balance
    at its start) — the top-up settles March's overage, then April's."""
    state, signals = run(
        WalletState(),
        ("charge", MARCH, 10, at("2026-03-20T00:00:00")),  # no money: 10 overage, exhausted
        ("charge", APRIL, 12, at("2026-04-01T12:00:00")),  # 12 overage
        ("topup", MARCH, 100, at("2026-03-31T23:00:00")),  # arrives late
        ("charge", APRIL, 12, at("2026-04-02T00:00:00")),
    )
    assert (state.drawn(MARCH), state.overage(MARCH)) == (10, 0)
    assert (state.drawn(APRIL), state.overage(APRIL)) == (24, 0) == (min(24, 100 - 10), 0)
    assert state.balance == 100 - 10 - 24
    late = at("2026-03-31T23:00:00")
    assert [s for s in signals if s.at == late] == [
        Drawn(MARCH, Fraction(10), "topup_settlement", late),
        Drawn(APRIL, Fraction(12), "topup_settlement", late),
        Resume(Fraction(78), late),
    ]


def test_a_late_top_up_settles_only_with_its_own_money_not_with_later_top_ups() -> None:
    """R8: a period draws min(usage, balance at its start + its top-ups). A 1.00 January top-up that arrives
    after March's 100.00 was applied pays 1.00 of February's overage — March's money was not there yet."""
    jan, feb = at("2026-01-01T00:00:00"), at("2026-02-01T00:00:00")
    state, _ = run(
        WalletState(),
        ("charge", feb, 10, at("2026-02-10T00:00:00")),  # no money: 10 overage
        ("topup", MARCH, 100, at("2026-03-05T00:00:00")),
        ("topup", jan, 1, at("2026-01-20T00:00:00")),  # arrives late
    )
    assert (state.drawn(feb), state.overage(feb)) == (1, 9)
    assert state.balance == 100


def test_a_negative_correction_reduces_overage_first_then_returns_drawn_money() -> None:
    state, _ = run(
        WalletState(),
        ("topup", MARCH, 100, at("2026-03-01T00:00:00")),
        ("charge", MARCH, 120, at("2026-03-05T00:00:00")),
    )
    state, signals = apply_charge(state, MARCH, Fraction(-30), at("2026-03-06T00:00:00"))
    assert state.overage(MARCH) == 0
    assert state.drawn(MARCH) == 90 == min(Fraction(120 - 30), 100)
    assert state.balance == 10
    assert signals == (Drawn(MARCH, Fraction(-10), "correction", at("2026-03-06T00:00:00")),)
    # Only a top-up lifts a suspension.
    assert state.exhausted
    with pytest.raises(DomainRuleError):
        apply_charge(state, MARCH, Fraction(-91), at("2026-03-06T00:00:00"))


def test_low_balance_is_emitted_once_per_crossing_and_rearmed_by_a_top_up() -> None:
    state, signals = run(
        WalletState(),
        ("topup", MARCH, 100, at("2026-03-01T00:00:00")),
        ("charge", MARCH, 70, at("2026-03-02T00:00:00")),  # 30: above 20
        ("charge", MARCH, 15, at("2026-03-03T00:00:00")),  # 15: crosses 20
        ("charge", MARCH, 5, at("2026-03-04T00:00:00")),  # 10: still below, no repeat
        ("charge", MARCH, -20, at("2026-03-05T00:00:00")),  # correction: back to 30
        ("charge", MARCH, 15, at("2026-03-06T00:00:00")),  # 15: crosses again, but not re-armed
        ("topup", MARCH, 10, at("2026-03-07T00:00:00")),  # 25; threshold now 20 % of 10 = 2
        ("charge", MARCH, Fraction(23), at("2026-03-08T00:00:00")),  # 2: not below 2
        ("charge", MARCH, Fraction(1, 2), at("2026-03-09T00:00:00")),  # 1.5: crosses 2
    )
    lows = [s for s in signals if isinstance(s, LowBalance)]
    assert lows == [
        LowBalance(Fraction(15), Fraction(20), at("2026-03-03T00:00:00")),
        LowBalance(Fraction(3, 2), Fraction(2), at("2026-03-09T00:00:00")),
    ]
    assert state.balance == Fraction(3, 2)


def test_an_empty_wallet_that_is_charged_is_exhausted() -> None:
    state, signals = apply_charge(WalletState(), MARCH, Fraction(5), at("2026-03-01T01:00:00"))
    assert signals == (Exhausted(MARCH, Fraction(5), at("2026-03-01T01:00:00")),)
    assert state.overage(MARCH) == 5
    _, signals = apply_charge(state, MARCH, Fraction(5), at("2026-03-01T02:00:00"))
    assert signals == ()  # already exhausted: one suspend request


def test_wallet_amounts_must_be_exact() -> None:
    with pytest.raises(InvalidAmountError):
        apply_charge(WalletState(), MARCH, 1.5, MARCH)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmountError):
        apply_topup(WalletState(), MARCH, Fraction(0), MARCH)


def test_the_charge_closing_a_period_goes_before_a_top_up_at_that_instant() -> None:
    last_hour_of_march = ("charge", MARCH, at("2026-03-31T23:00:00") + HOUR)
    topup_at_april = ("topup", APRIL, APRIL)
    ops = [topup_at_april, last_hour_of_march]
    ops.sort(key=lambda op: wallet_order_key(op[1], op[2], op[0]))  # type: ignore[arg-type]
    assert ops == [last_hour_of_march, topup_at_april]
    # Within a period, a top-up at the same instant as a charge goes first.
    assert wallet_order_key(MARCH, at("2026-03-02T00:00:00"), "topup") < wallet_order_key(
        MARCH, at("2026-03-02T00:00:00"), "charge"
    )


Op = tuple[str, int]
wallet_ops = st.one_of(
    st.tuples(st.just("charge"), st.integers(1, 400_000)),  # an x3600 amount: n / 3600
    st.tuples(st.just("topup"), st.integers(1, 20_000)),  # cents: n / 100
    st.tuples(st.just("correction"), st.integers(0, 100)),  # percent of the period's usage so far
)


@given(periods=st.lists(st.lists(wallet_ops, max_size=20), min_size=1, max_size=4))
@settings(max_examples=300)
def test_drawn_per_period_is_usage_capped_by_balance_at_start_plus_top_ups(periods: list[list[Op]]) -> None:
    state = WalletState()
    ledger_units = 0
    balance = Fraction(0)
    for index, ops in enumerate(periods):
        period_start = MARCH + timedelta(days=31 * index)
        balance_at_start = state.balance
        usage = topups = drawn_signalled = Fraction(0)
        for step, (kind, n) in enumerate(ops):
            when = period_start + step * HOUR
            before = state.balance
            if kind == "topup":
                amount = Fraction(n, 100)
                topups += amount
                state, signals = apply_topup(state, period_start, amount, when)
            else:
                amount = Fraction(n, 3600) if kind == "charge" else -usage * Fraction(n, 100)
                usage += amount
                state, signals = apply_charge(state, period_start, amount, when)
            assert state.balance >= 0
            drawn_signalled += sum((s.amount for s in signals if isinstance(s, Drawn)), Fraction(0))
            # The ledger posts round_ledger(before) − round_ledger(after): no drift, never negative.
            ledger_units -= ledger_delta(before, state.balance, "USD")
            assert ledger_units == round_ledger(state.balance, "USD") >= 0
        assert state.usage(period_start) == usage
        assert state.drawn(period_start) == min(usage, balance_at_start + topups)
        assert drawn_signalled == state.drawn(period_start)
        assert state.drawn(period_start) <= usage
        balance += topups - state.drawn(period_start)
        assert state.balance == balance


# ====================================================================================================
# R9 credit limit
# ====================================================================================================


def test_crossing_the_credit_limit_fires_once_and_again_only_after_coming_back_below() -> None:
    limit = Decimal("1000")
    walk = [
        Fraction(0),
        Fraction(400),
        Fraction(900),
        Fraction(1000),
        Fraction("1000.01"),
        Fraction(1500),
        Fraction(200),
        Fraction(1200),
    ]  # paid down to 200, then over again
    fired = [check_credit(limit, a, b) for a, b in pairwise(walk)]
    assert fired == [False, False, False, True, False, False, True]
    assert not check_credit(None, Fraction(0), Fraction(10**9))


@given(
    limit=st.integers(0, 5000).map(Decimal),
    steps=st.lists(st.integers(-3000, 3000), max_size=40),
)
def test_credit_fires_exactly_on_each_upward_crossing(limit: Decimal, steps: list[int]) -> None:
    exposure = Fraction(0)
    fired = crossings = 0
    for step in steps:
        after = max(Fraction(0), exposure + step)
        fired += check_credit(limit, exposure, after)
        crossings += (exposure > limit) is False and (after > limit) is True
        exposure = after
    assert fired == crossings


@given(
    limits=st.lists(st.one_of(st.none(), st.integers(0, 5000).map(Decimal)), min_size=1, max_size=40),
    steps=st.lists(st.integers(-3000, 3000), max_size=40),
)
def test_a_changing_limit_fires_whenever_the_exposure_is_found_over_it_after_being_under(
    limits: list[Decimal | None], steps: list[int]
) -> None:
    """R9 with amendments: each movement is judged against the limit in force then. It fires exactly when
    the exposure is above that limit and was not above the limit of the previous movement; with one
    limit throughout it is the two-exposure comparison."""
    exposure, was_over, previous_limit = Fraction(0), False, limits[0]
    for n, step in enumerate(steps):
        limit = limits[n % len(limits)]
        after = max(Fraction(0), exposure + step)
        fires, over = limit_crossed(limit, was_over=was_over, exposure_after=after)
        assert over == (limit is not None and after > limit)
        assert fires == (over and not was_over)
        if limit == previous_limit:
            assert fires == check_credit(limit, exposure, after)
        exposure, was_over, previous_limit = after, over, limit


def test_a_lowered_limit_fires_once_where_comparing_two_exposures_never_would() -> None:
    fires, over = limit_crossed(Decimal(25), was_over=False, exposure_after=Fraction(50))  # was under 100
    assert (fires, over) == (True, True)
    assert not check_credit(Decimal(25), Fraction(40), Fraction(50))
    assert limit_crossed(Decimal(25), was_over=True, exposure_after=Fraction(60)) == (False, True)


def test_exposure_is_unpaid_invoices_plus_uninvoiced_charges() -> None:
    uninvoiced = exact(price_usage(gpu_usage(at("2026-03-02T14:00:00"), 8, (0, 3600)), contract()).charge_x3600)
    assert credit_exposure(Fraction("153.40"), uninvoiced) == Fraction("153.40") + 16


# ====================================================================================================
# R13 platform take
# ====================================================================================================


def test_the_platform_keeps_the_difference_between_charge_and_earning() -> None:
    terms = contract(price_per_gpu_hour="3.00", supplier_rate_per_gpu_hour="2.10")
    rated = rate_revision(None, gpu_usage(at("2026-03-02T14:00:00"), 2, (0, 1800)), terms)
    assert platform_take(rated.charge_x3600, rated.earning_x3600) == 2 * Fraction(1, 2) * Fraction("0.90")
    correction = rate_revision(rated.priced, gpu_usage(at("2026-03-02T14:00:00"), 2, (0, 900)), terms)
    assert platform_take(correction.charge_x3600, correction.earning_x3600) == -2 * Fraction(1, 4) * Fraction("0.90")


def test_priced_is_a_plain_value() -> None:
    assert Priced(Decimal(1), Decimal(0), (1,)) == Priced(Decimal(1), Decimal(0), (1,), 0)
