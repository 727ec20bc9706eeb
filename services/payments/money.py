"""Decimal strings of events ↔ integer minor units (payments keep minor units everywhere)."""

from __future__ import annotations

from decimal import Decimal

from libs.errors import InvalidAmountError
from libs.money import currency_exponent, format_minor


def to_minor(amount: Decimal, currency: str) -> int:
    """Exact: an amount with more places than the currency has is refused, never rounded."""
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidAmountError(f"{amount} has more decimal places than {currency} allows")
    return int(scaled)


def shown(amount_minor: int, currency: str) -> Decimal:
    return Decimal(format_minor(amount_minor, currency))
