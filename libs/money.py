"""Exact money.

Three representations, each with one job:

* **Exact amounts** are :class:`fractions.Fraction` in major units (dollars, euros, yen). Every
  rule of docs/billing-rules.md that says "exact" computes in this type: nothing is ever lost to a
  division, and the ``/ 3600`` of R4 is done once per line.
* **Minor units** are ``int`` (cents, yen): what documents show. An exact amount becomes minor
  units only through :func:`round_minor`, half to even (R6) — the one rounding point of documents.
* **Ledger units** are ``int`` at the ledger's scale for the currency, ``exponent + LEDGER_EXTRA_DIGITS``
  decimal places (``USD/8``, ``JPY/6``). Accruals posted per allocation-hour are exact amounts rounded
  half to even to that scale by :func:`round_ledger` (the accrual rounding point); when a document
  clears an accrual, the difference between what was accrued and what the document says is posted
  to the rounding account, so the ledger always adds up to the documents.

Currency exponents come from ISO 4217 data (the ``iso4217`` package), never a hand-written table.
No ``float`` ever touches an amount: constructors refuse it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

import iso4217

from libs.errors import InvalidAmountError, UnknownCurrencyError

__all__ = [
    "LEDGER_EXTRA_DIGITS",
    "Exact",
    "check_decimal",
    "currency_exponent",
    "exact_to_decimal_str",
    "format_ledger",
    "format_minor",
    "ledger_scale",
    "ledger_to_exact",
    "minor_to_exact",
    "minor_to_ledger",
    "parse_decimal",
    "round_half_even",
    "round_ledger",
    "round_minor",
]

Exact = Fraction
"""An exact amount in major units. Alias so signatures say what they mean."""

LEDGER_EXTRA_DIGITS = 6
"""Ledger scale = ISO 4217 exponent + this: micro-cents for USD (``USD/8``), micro-yen (``JPY/6``)."""

_LEDGER_FACTOR: int = 1_000_000  # 10 ** LEDGER_EXTRA_DIGITS
_DECIMAL_RE = re.compile(r"^-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


@lru_cache(maxsize=512)
def currency_exponent(currency: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (USD 2, JPY 0, KWD 3).

    Raises UnknownCurrencyError for codes that are not active ISO 4217 currencies with a minor unit.
    """
    if not _CURRENCY_RE.match(currency):
        raise UnknownCurrencyError(f"currency {currency!r} is not a three-letter ISO 4217 code")
    try:
        exponent = iso4217.Currency(currency).exponent
    except (ValueError, KeyError) as exc:
        raise UnknownCurrencyError(f"currency {currency!r} is not in ISO 4217") from exc
    if exponent is None:
        raise UnknownCurrencyError(f"currency {currency!r} has no minor unit (not a money currency)")
    return int(exponent)


def ledger_scale(currency: str) -> int:
    """Decimal places of the ledger's integer unit for a currency (``USD`` → 8)."""
    return currency_exponent(currency) + LEDGER_EXTRA_DIGITS


def check_decimal(text: str, *, field: str = "amount", max_places: int = 12) -> None:
    """Raise InvalidAmountError unless ``text`` is a plain decimal string (see :func:`parse_decimal`).

    The cheap half of parsing, for validators that keep a ``Decimal`` and need no ``Fraction``."""
    if not isinstance(text, str):
        raise InvalidAmountError(f"{field} must be a decimal string, got {type(text).__name__}")
    if not _DECIMAL_RE.fullmatch(text):  # fullmatch: ``$`` alone would let a trailing newline through
        raise InvalidAmountError(f"{field} {text!r} is not a plain decimal string")
    places = len(text.partition(".")[2])
    if places > max_places:
        raise InvalidAmountError(f"{field} {text!r} has {places} decimal places; at most {max_places}")


def parse_decimal(text: str, *, field: str = "amount", max_places: int = 12) -> Exact:
    """Parse a decimal string (never a float) into an exact amount.

    Accepts ``"12"``, ``"-0.5"``, ``"2.350"``; refuses exponents, spaces, NaN, infinities, more than
    ``max_places`` decimal places and more than 18 integer digits.
    """
    check_decimal(text, field=field, max_places=max_places)
    return Fraction(Decimal(text))


def round_half_even(value: Exact) -> int:
    """Round an exact rational to the nearest integer, ties to even (banker's rounding)."""
    floor = value.numerator // value.denominator
    remainder = value - floor
    if remainder > Fraction(1, 2):
        return floor + 1
    if remainder < Fraction(1, 2):
        return floor
    return floor if floor % 2 == 0 else floor + 1


def round_minor(amount: Exact, currency: str) -> int:
    """R6: an exact amount in major units → minor units, rounded once, half to even."""
    return round_half_even(amount * 10 ** currency_exponent(currency))


def round_ledger(amount: Exact, currency: str) -> int:
    """Accrual rounding point: an exact amount → ledger units, half to even."""
    return round_half_even(amount * 10 ** ledger_scale(currency))


def minor_to_exact(amount_minor: int, currency: str) -> Exact:
    return Fraction(amount_minor, 10 ** currency_exponent(currency))


def ledger_to_exact(amount_units: int, currency: str) -> Exact:
    return Fraction(amount_units, 10 ** ledger_scale(currency))


def minor_to_ledger(amount_minor: int, currency: str) -> int:
    """Minor units are exactly representable in ledger units: a multiply, never a rounding."""
    return amount_minor * _LEDGER_FACTOR


def _format_scaled(units: int, places: int) -> str:
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(places + 1, "0")
    if places == 0:
        return sign + digits
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def format_minor(amount_minor: int, currency: str) -> str:
    """Minor units → decimal string with exactly the currency's places (``15340, USD`` → ``"153.40"``)."""
    return _format_scaled(amount_minor, currency_exponent(currency))


def format_ledger(amount_units: int, currency: str) -> str:
    """Ledger units → decimal string at ledger scale (``USD`` → 8 places)."""
    return _format_scaled(amount_units, ledger_scale(currency))


def exact_to_decimal_str(amount: Exact, places: int = 12) -> str:
    """Display an exact amount with ``places`` decimals, half to even (display only, never stored)."""
    # Exact integer rounding: a Decimal division would round at 28 digits first (double rounding,
    # InvalidOperation for large amounts) and str() of a Decimal may use exponent notation.
    return _format_scaled(round_half_even(Fraction(amount) * 10**places), places)


assert _LEDGER_FACTOR == 10**LEDGER_EXTRA_DIGITS
