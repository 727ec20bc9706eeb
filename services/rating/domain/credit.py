"""R9: credit exposure and the limit crossing. Pure."""

from __future__ import annotations

from decimal import (
    Decimal,
)
from fractions import Fraction

from libs.money import Exact


def credit_exposure(unpaid_invoiced: Exact, uninvoiced_charges: Exact) -> Exact:
    """R9: exposure = unpaid invoiced amounts + rated but not yet invoiced usage charges."""
    return Fraction(unpaid_invoiced) + Fraction(uninvoiced_charges)


def check_credit(limit: Decimal | None, exposure_before: Exact, exposure_after: Exact) -> bool:
    """True exactly when exposure crosses the credit limit upward: ``before ≤ limit < after`` (R9).

    No limit (``None``) never fires. The caller emits the limit-exceeded event and a suspend
    request; the charge itself is always booked.
    """
    return limit_crossed(limit, was_over=over_limit(limit, exposure_before), exposure_after=exposure_after)[0]


def over_limit(limit: Decimal | None, exposure: Exact) -> bool:
    """Whether ``exposure`` is above ``limit`` (no limit: never)."""
    return limit is not None and Fraction(exposure) > Fraction(limit)


def limit_crossed(limit: Decimal | None, *, was_over: bool, exposure_after: Exact) -> tuple[bool, bool]:
    """R9 with a limit that may change: (fires, over now). A movement fires when it finds the exposure
    above the limit in force and the previous movement did not (``was_over``). With one limit throughout
    this is :func:`check_credit`; a limit lowered below the exposure fires at the next movement."""
    now = over_limit(limit, exposure_after)
    return now and not was_over, now
