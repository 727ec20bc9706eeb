"""Business days, cut-offs, effective dates and the rail choice with fallback (R16)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payouts.rails.calendar import (
    CALENDARS,
    DEFAULT_RAILS,
    choose_rail,
    effective_date,
    rail_configs,
)

FED, TARGET, ALWAYS = CALENDARS["FED"], CALENDARS["TARGET"], CALENDARS["ALWAYS"]
NY, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("day", "fed_open", "target_open"),
    [
        (date(2026, 7, 3), True, True),  # Independence Day falls on a Saturday: the Fed does not close on Friday
        (date(2027, 7, 5), False, True),  # ... on a Sunday in 2027: closed Monday
        (date(2026, 11, 26), False, True),  # Thanksgiving
        (date(2026, 10, 12), False, True),  # Columbus Day: Fed closed, TARGET2 open
        (date(2026, 11, 11), False, True),  # Veterans Day
        (date(2026, 4, 3), True, False),  # Good Friday: TARGET2 closed, Fed open
        (date(2026, 4, 6), True, False),  # Easter Monday
        (date(2026, 5, 1), True, False),  # Labour Day
        (date(2026, 12, 24), True, True),
        (date(2026, 12, 25), False, False),
        (date(2026, 12, 5), False, False),  # a Saturday
        (date(2026, 12, 7), True, True),
    ],
)
def test_fed_and_target2_days(day: date, fed_open: bool, target_open: bool) -> None:
    assert FED.is_business_day(day) is fed_open
    assert TARGET.is_business_day(day) is target_open
    assert ALWAYS.is_business_day(day)


def test_add_business_days_skips_weekends_and_holidays() -> None:
    assert FED.add_business_days(date(2026, 11, 25), 1) == date(2026, 11, 27)
    assert FED.add_business_days(date(2026, 12, 24), 1) == date(2026, 12, 28)
    assert TARGET.add_business_days(date(2026, 4, 2), 1) == date(2026, 4, 7)
    assert FED.add_business_days(date(2026, 12, 5), 0) == date(2026, 12, 7)  # a Saturday rolls to Monday


def test_ach_effective_date_around_the_cutoff() -> None:
    ach = DEFAULT_RAILS["ach"]
    friday = datetime(2026, 12, 4, 15, 59, tzinfo=NY)
    assert effective_date(ach, friday) == date(2026, 12, 7)  # next business day after Friday
    assert effective_date(ach, friday + timedelta(minutes=1)) == date(2026, 12, 8)  # counted on Monday, +1
    assert effective_date(ach, datetime(2026, 12, 4, 21, 30, tzinfo=UTC)) == date(2026, 12, 8)  # 16:30 in New York
    # daylight saving: 19:59 UTC on 9 March 2026 is 15:59 EDT, still before the cut-off
    assert effective_date(ach, datetime(2026, 3, 9, 19, 59, tzinfo=UTC)) == date(2026, 3, 10)
    assert effective_date(ach, datetime(2026, 11, 25, 10, 0, tzinfo=NY)) == date(2026, 11, 27)


def test_sepa_wire_and_instant_effective_dates() -> None:
    sepa = DEFAULT_RAILS["sepa"]
    assert effective_date(sepa, datetime(2026, 4, 2, 14, 0, tzinfo=BERLIN)) == date(2026, 4, 2)
    assert effective_date(sepa, datetime(2026, 4, 2, 15, 0, tzinfo=BERLIN)) == date(2026, 4, 7)  # Easter
    assert effective_date(DEFAULT_RAILS["wire"], datetime(2026, 12, 7, 16, 59, tzinfo=NY)) == date(2026, 12, 7)
    sunday_night = datetime(2026, 12, 6, 23, 30, tzinfo=NY)
    assert effective_date(DEFAULT_RAILS["fednow"], sunday_night) == date(2026, 12, 6)
    assert effective_date(DEFAULT_RAILS["rtp"], datetime(2026, 12, 25, 12, 0, tzinfo=UTC)) == date(2026, 12, 25)
    with pytest.raises(AssertionError):
        effective_date(sepa, datetime(2026, 4, 2, 14, 0))  # naive on purpose


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    st.sampled_from(sorted(DEFAULT_RAILS)),
)
def test_property_effective_date_is_an_open_day_not_before_submission(at: datetime, rail: str) -> None:
    config = DEFAULT_RAILS[rail]
    result = effective_date(config, at)
    local = at.astimezone(ZoneInfo(config.timezone))
    assert CALENDARS[config.calendar].is_business_day(result)
    assert result >= local.date()
    assert (result - local.date()).days <= 10  # the longest closure (Easter, Christmas) plus the offset
    if config.cutoff is None and config.offset_days == 0:
        assert result == local.date()


def test_choose_rail_with_fallback() -> None:
    assert choose_rail(5_000_00, "USD", "ach", "wire").rail == "ach"
    big = 20_000_000_00  # $20M: over RTP's $10M
    choice = choose_rail(big, "USD", "rtp", "wire")
    assert (choice.rail, choice.wait_for_operator) == ("wire", False)
    assert choice.reason == f"fallback: rtp: {big} over its limit of 1000000000 minor units"
    waits = choose_rail(big, "USD", "rtp", None)
    assert waits.wait_for_operator and waits.rail is None
    assert waits.reason == f"wait_for_operator: rtp: {big} over its limit of 1000000000 minor units; no fallback rail"
    both = choose_rail(big, "USD", "rtp", "fednow")
    assert both.wait_for_operator and "fednow: " in both.reason and "rtp: " in both.reason
    assert choose_rail(100, "EUR", "ach", "sepa").rail == "sepa"
    assert choose_rail(100, "EUR", "ach", None).reason == "wait_for_operator: ach: does not carry EUR; no fallback rail"
    assert choose_rail(100, "USD", "carrier-pigeon", "ach").rail == "ach"
    # exactly at the limit is allowed
    assert choose_rail(1_000_000_00, "USD", "fednow", None).rail == "fednow"
    assert choose_rail(1_000_000_01, "USD", "fednow", None).wait_for_operator


def test_rail_configs_override_and_refuse() -> None:
    configs = rail_configs(
        {"ach": {"cutoff": "14:30", "limit_minor": 25_000_00}, "sepa": {"currencies": ["EUR", "SEK"]}}
    )
    assert configs["ach"].cutoff == time(14, 30) and configs["ach"].limit_minor == 25_000_00
    assert configs["sepa"].carries("SEK") and configs["wire"] == DEFAULT_RAILS["wire"]
    assert choose_rail(30_000_00, "USD", "ach", "wire", configs).rail == "wire"
    assert effective_date(configs["ach"], datetime(2026, 12, 7, 14, 45, tzinfo=NY)) == date(2026, 12, 9)
    with pytest.raises(ValueError, match="unknown rail"):
        rail_configs({"swift": {}})
    with pytest.raises(ValueError, match="bad setting"):
        rail_configs({"ach": {"limit_minor": "lots"}})
    with pytest.raises(ValueError, match="bad setting"):
        rail_configs({"ach": {"limit_minor": True}})
