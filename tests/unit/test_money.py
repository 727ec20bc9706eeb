"""libs.money (R6 rounding, decimal parsing, minor-unit formatting) and libs.ids.derive_id.

Expectations are computed independently of the implementation: by hand from the rule (half to
even at exact halves), by Python's ``decimal`` module with ROUND_HALF_EVEN, or by a brute-force
search for the nearest integer over exact integers.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.errors import InvalidAmountError, PermanentError, UnknownCurrencyError
from libs.ids import derive_id
from libs.money import (
    currency_exponent,
    exact_to_decimal_str,
    format_ledger,
    format_minor,
    ledger_scale,
    ledger_to_exact,
    minor_to_exact,
    minor_to_ledger,
    parse_decimal,
    round_half_even,
    round_ledger,
    round_minor,
)

# Exponents from ISO 4217 (checked by hand against the standard's table, not read from the code).
ISO_EXPONENTS = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "BHD": 3, "CLF": 4, "KRW": 0}
CURRENCIES = st.sampled_from(sorted(ISO_EXPONENTS))


def nearest_half_even(numerator: int, denominator: int) -> int:
    """Brute force: the integer nearest to numerator/denominator, ties to the even one.

    Scans candidates around the truncated quotient and compares distances as exact integers
    (|n − q·d| is the distance times d), so no rounding logic is shared with the implementation.
    """
    assert denominator > 0
    around = numerator // denominator
    candidates = range(around - 2, around + 3)
    return min(candidates, key=lambda q: (abs(numerator - q * denominator), q % 2))


def decimal_half_even(value: Decimal, places: int) -> int:
    """Python's decimal module, ROUND_HALF_EVEN, at enough precision to be exact."""
    with localcontext() as context:
        context.prec = 200
        return int(value.scaleb(places).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# --- R6: half to even at exact halves ----------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected_minor"),
    [
        ("0.125", "USD", 12),  # 12.5 cents → even 12
        ("0.135", "USD", 14),  # 13.5 cents → even 14
        ("0.145", "USD", 14),
        ("0.155", "USD", 16),
        ("-0.125", "USD", -12),  # negative halves also go to even, not away from zero
        ("-0.135", "USD", -14),
        ("-0.005", "USD", 0),
        ("0.005", "USD", 0),
        ("0.015", "USD", 2),
        ("0.1251", "USD", 13),  # just above a half
        ("0.1249", "USD", 12),  # just below a half
        ("-0.1251", "USD", -13),
        ("153.4", "USD", 15340),
        ("2.5", "JPY", 2),  # JPY has no minor digits
        ("3.5", "JPY", 4),
        ("-2.5", "JPY", -2),
        ("-3.5", "JPY", -4),
        ("1500.4999", "JPY", 1500),
        ("1.0005", "KWD", 1000),  # KWD has three
        ("1.0015", "KWD", 1002),
        ("-1.0005", "KWD", -1000),
        ("1.00051", "KWD", 1001),
        ("0", "EUR", 0),
    ],
)
def test_round_minor_is_half_to_even_at_exact_halves(amount: str, currency: str, expected_minor: int) -> None:
    assert round_minor(Fraction(amount), currency) == expected_minor


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 0),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 2),
        (Fraction(-1, 2), 0),
        (Fraction(-3, 2), -2),
        (Fraction(7, 3), 2),
        (Fraction(-7, 3), -2),
        (Fraction(8, 3), 3),
        (Fraction(-8, 3), -3),
        (Fraction(4), 4),
    ],
)
def test_round_half_even_integers(value: Fraction, expected: int) -> None:
    assert round_half_even(value) == expected


terminating_decimals = st.builds(
    lambda digits, places: Decimal(digits).scaleb(-places),
    st.integers(min_value=-(10**24), max_value=10**24),
    st.integers(min_value=0, max_value=14),
)


@given(value=terminating_decimals, currency=CURRENCIES)
def test_round_minor_agrees_with_decimal_half_even(value: Decimal, currency: str) -> None:
    assert round_minor(Fraction(value), currency) == decimal_half_even(value, ISO_EXPONENTS[currency])


@given(value=terminating_decimals, currency=CURRENCIES)
def test_round_ledger_agrees_with_decimal_half_even(value: Decimal, currency: str) -> None:
    ledger_places = ISO_EXPONENTS[currency] + 6
    assert round_ledger(Fraction(value), currency) == decimal_half_even(value, ledger_places)


@given(
    gpu_seconds=st.integers(min_value=-(10**9), max_value=10**9),
    price_units=st.integers(min_value=0, max_value=10**10),
    price_places=st.integers(min_value=0, max_value=6),
    currency=CURRENCIES,
)
def test_round_minor_of_per_second_charges_matches_brute_force(
    gpu_seconds: int, price_units: int, price_places: int, currency: str
) -> None:
    """R4 then R6: gpu_seconds × price / 3600 is usually non-terminating; rounded exactly, once."""
    price = Fraction(price_units, 10**price_places)
    charge = gpu_seconds * price / 3600
    # In minor units: gpu_seconds × price_units × 10^exponent / (3600 × 10^price_places).
    numerator = gpu_seconds * price_units * 10 ** ISO_EXPONENTS[currency]
    denominator = 3600 * 10**price_places
    assert round_minor(charge, currency) == nearest_half_even(numerator, denominator)
    ledger_numerator = gpu_seconds * price_units * 10 ** (ISO_EXPONENTS[currency] + 6)
    assert round_ledger(charge, currency) == nearest_half_even(ledger_numerator, denominator)


@pytest.mark.parametrize(
    ("charge", "currency", "expected_minor"),
    [
        # 1 GPU-second at 2.35/h = 2.35/3600 = 0.000652…: rounds to 0 cents.
        (Fraction(235, 100) / 3600, "USD", 0),
        # 30 min at 0.25/h = 0.125 exactly → a tie → 12.
        (Fraction(1800) * Fraction(25, 100) / 3600, "USD", 12),
        # 5 GPU-seconds at 1/h = 1/720 KWD = 0.0013888… → 1 fils.
        (Fraction(5, 3600), "KWD", 1),
        # 1 GPU-hour + 1 s at 1000 JPY/h = 1000.2777… → 1000.
        (Fraction(3601 * 1000, 3600), "JPY", 1000),
    ],
)
def test_round_minor_examples_with_denominator_3600(charge: Fraction, currency: str, expected_minor: int) -> None:
    assert round_minor(charge, currency) == expected_minor


def test_round_minor_is_applied_once_not_per_step() -> None:
    """Summing exact amounts and rounding once differs from rounding each part (why R6 says once)."""
    parts = [Fraction(1, 3)] * 3  # three charges of 0.333… USD
    assert round_minor(sum(parts, Fraction(0)), "USD") == 100
    assert sum(round_minor(part, "USD") for part in parts) == 99


# --- parse_decimal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", Fraction(12)),
        ("-0.5", Fraction(-1, 2)),
        ("2.350", Fraction(47, 20)),
        ("0", Fraction(0)),
        ("-0", Fraction(0)),
        ("0.000000000001", Fraction(1, 10**12)),
        ("999999999999999999", Fraction(10**18 - 1)),
    ],
)
def test_parse_decimal_accepts_plain_decimal_strings(text: str, expected: Fraction) -> None:
    assert parse_decimal(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1e5",
        "1E5",
        "1.5e-3",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "0.1234567890123",  # 13 places
        "1000000000000000000",  # 19 integer digits
        " 1",
        "1 ",
        "1.5\n",
        "+1",
        "01",
        "-01.5",
        ".5",
        "5.",
        "",
        "-",
        "1,5",
        "1_000",
        "0x10",
        "١",  # an Arabic-Indic digit: Decimal would take it, a JSON amount must not
    ],
)
def test_parse_decimal_refuses_anything_but_a_plain_decimal(text: str) -> None:
    with pytest.raises(InvalidAmountError):
        parse_decimal(text)


@pytest.mark.parametrize("value", [1.5, 0.1, 2, Decimal("1.5"), None])
def test_parse_decimal_refuses_non_strings_including_floats(value: object) -> None:
    with pytest.raises(InvalidAmountError, match="decimal string"):
        parse_decimal(value)  # type: ignore[arg-type]


def test_parse_decimal_max_places_and_readable_reason() -> None:
    assert parse_decimal("1.23", max_places=2) == Fraction(123, 100)
    with pytest.raises(InvalidAmountError, match=r"price '1\.234' has 3 decimal places; at most 2"):
        parse_decimal("1.234", field="price", max_places=2)
    with pytest.raises(InvalidAmountError, match="amount '1e5' is not a plain decimal string"):
        parse_decimal("1e5")


def test_money_errors_are_permanent_value_errors() -> None:
    """Pydantic turns ValueErrors into readable validation errors; consume() dead-letters permanents."""
    assert issubclass(InvalidAmountError, ValueError)
    assert issubclass(InvalidAmountError, PermanentError)
    assert issubclass(UnknownCurrencyError, ValueError)
    assert issubclass(UnknownCurrencyError, PermanentError)


# --- formatting and conversions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount_minor", "currency", "text"),
    [
        (15340, "USD", "153.40"),
        (1500, "JPY", "1500"),
        (-5, "USD", "-0.05"),
        (1005, "KWD", "1.005"),
        (5, "KWD", "0.005"),
        (0, "USD", "0.00"),
        (0, "JPY", "0"),
        (-1500, "JPY", "-1500"),
        (-100, "EUR", "-1.00"),
        (123456789012, "USD", "1234567890.12"),
    ],
)
def test_format_minor_examples(amount_minor: int, currency: str, text: str) -> None:
    assert format_minor(amount_minor, currency) == text


@given(amount_minor=st.integers(min_value=-(10**17), max_value=10**17), currency=CURRENCIES)
def test_format_minor_round_trips_through_parse_decimal(amount_minor: int, currency: str) -> None:
    text = format_minor(amount_minor, currency)
    exponent = ISO_EXPONENTS[currency]
    assert len(text.partition(".")[2]) == exponent  # exactly the currency's places
    assert parse_decimal(text) == Fraction(amount_minor, 10**exponent) == minor_to_exact(amount_minor, currency)
    assert round_minor(minor_to_exact(amount_minor, currency), currency) == amount_minor


@given(amount_minor=st.integers(min_value=-(10**12), max_value=10**12), currency=CURRENCIES)
def test_minor_to_ledger_is_exact(amount_minor: int, currency: str) -> None:
    units = minor_to_ledger(amount_minor, currency)
    assert ledger_to_exact(units, currency) == minor_to_exact(amount_minor, currency)
    assert parse_decimal(format_ledger(units, currency)) == minor_to_exact(amount_minor, currency)


def test_ledger_scale_is_exponent_plus_six() -> None:
    assert ledger_scale("USD") == 8
    assert ledger_scale("JPY") == 6
    assert ledger_scale("KWD") == 9
    assert format_ledger(1, "USD") == "0.00000001"


@pytest.mark.parametrize(
    ("amount", "places", "text"),
    [
        (Fraction(1, 3), 4, "0.3333"),
        (Fraction(2, 3), 4, "0.6667"),
        (Fraction(-1, 8), 2, "-0.12"),  # tie → even
        (Fraction(1, 8), 2, "0.12"),
        (Fraction(3, 8), 2, "0.38"),
        (Fraction(0), 3, "0.000"),
        # Just above a tie at the 13th place: an intermediate 28-digit Decimal division would land
        # on the tie and round it down to even.
        (Fraction(5, 10**13) + Fraction(1, 10**40), 12, "0.000000000001"),
        # Larger than a 28-digit Decimal context can hold with 12 places.
        (Fraction(10**20) + Fraction(1, 3), 12, "100000000000000000000.333333333333"),
    ],
)
def test_exact_to_decimal_str_is_exact_half_even(amount: Fraction, places: int, text: str) -> None:
    assert exact_to_decimal_str(amount, places) == text


# --- currency_exponent -----------------------------------------------------------------------------


@pytest.mark.parametrize(("currency", "exponent"), sorted(ISO_EXPONENTS.items()))
def test_currency_exponent_from_iso_4217(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("usd", "three-letter"),
        ("US", "three-letter"),
        ("USDX", "three-letter"),
        ("", "three-letter"),
        ("ABC", "not in ISO 4217"),
        ("XXX", "no minor unit"),  # "no currency": in ISO 4217 but not money
        ("XAU", "no minor unit"),  # gold
    ],
)
def test_currency_exponent_refuses_unknown_codes(code: str, reason: str) -> None:
    with pytest.raises(UnknownCurrencyError, match=reason):
        currency_exponent(code)


# --- derive_id --------------------------------------------------------------------------------------


def test_derive_id_is_a_deterministic_uuid5() -> None:
    first = derive_id("usage", "alloc-1", "2026-12-01T10:00:00Z", 1)
    assert first == derive_id("usage", "alloc-1", "2026-12-01T10:00:00Z", 1)
    assert uuid.UUID(first).version == 5
    assert str(uuid.UUID(first)) == first


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("k", "a", "bc"), ("k", "ab", "c")),
        (("k", "a|1:b"), ("k", "a", "b")),
        (("k", "a|b"), ("k", "a", "b")),  # a separator inside a part
        (("k", "1:a"), ("k", "", "a")),
        (("k",), ("k", "")),
        (("k", ""), ("k", "", "")),
        (("k", "a", "b"), ("k", "b", "a")),
        (("usage", "x"), ("charge", "x")),
        (("ka", "b"), ("k", "ab")),
    ],
)
def test_derive_id_separates_parts(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    assert derive_id(*left) != derive_id(*right)


def test_derive_id_refuses_a_kind_that_could_forge_parts() -> None:
    with pytest.raises(AssertionError):
        derive_id("a|1:b")
    with pytest.raises(AssertionError):
        derive_id("")


# Mostly separator-like characters, so that forged boundaries are tried often.
texts = st.text(alphabet=st.sampled_from("a1|:") | st.characters(codec="utf-8"), max_size=6)


@given(
    kind=st.sampled_from(["usage", "charge", "emit"]),
    left=st.lists(texts, max_size=4),
    right=st.lists(texts, max_size=4),
)
def test_derive_id_is_injective_on_parts(kind: str, left: list[str], right: list[str]) -> None:
    if left != right:
        assert derive_id(kind, *left) != derive_id(kind, *right)
    else:
        assert derive_id(kind, *left) == derive_id(kind, *right)
