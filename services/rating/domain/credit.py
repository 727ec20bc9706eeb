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
    if limit is None:
        return False
    bound = Fraction(limit)
    return Fraction(exposure_before) <= bound < Fraction(exposure_after)
