"""The saga's compensations as payouts applies them (issues 10, 11), pure: no I/O, no clock.

* ``hold_earnings`` (an invoice past due): every supplier's earnings tied to the invoice are held from
  payouts — whether the supplier is paid when paid or not — from the request until a payment status shows
  the invoice paid (:class:`SagaHold`; planning holds all of E while the hold is active, see
  :func:`services.payouts.domain.planning.holdings_of`).
* ``clawback`` (refund or credit note after release) and ``reverse_supplier_share`` (dispute lost under
  ``supplier_charged_back``): each supplier's share, :func:`supplier_share` — a Settle extension of R15:

      share = round_half_even(E × min(amount, total) / total)   (minor units, once per (supplier, invoice, ref))
      share = min(share, E − Σ earlier shares of that supplier on that invoice)

  E is the supplier's earnings tied to the invoice (every known month, rounded once, R6), ``amount`` the
  refunded / credited / disputed amount and ``total`` the invoice total (both in the invoice currency: only
  the ratio is used). So the shares of one (supplier, invoice) never sum to more than E, and a full refund
  of an invoice takes back exactly E.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from libs.money import round_half_even


@dataclass(frozen=True)
class SagaHold:
    """``hold_earnings`` applied to an invoice: held from ``held_at``; ``released_at`` is the later of
    ``held_at`` and the ``as_of`` of the latest payment status once it has nothing remaining (None: unpaid)."""

    held_at: datetime
    released_at: datetime | None

    def active(self, at: datetime) -> bool:
        return self.held_at <= at and (self.released_at is None or self.released_at > at)


def supplier_share(earnings_minor: int, amount_minor: int, total_minor: int, clawed_before_minor: int) -> int:
    """One supplier's share of a refund / credit note / lost dispute on an invoice (minor units, ≥ 0).

    ``earnings_minor`` = E, ``amount_minor`` = what the renter got back, ``total_minor`` = the invoice total,
    ``clawed_before_minor`` = the supplier's earlier shares on the same invoice (≥ 0)."""
    assert clawed_before_minor >= 0, "earlier shares are never negative"
    if earnings_minor <= 0 or amount_minor <= 0 or total_minor <= 0:
        return 0
    exact = Fraction(earnings_minor * min(amount_minor, total_minor), total_minor)
    share = min(round_half_even(exact), earnings_minor - clawed_before_minor)
    share = max(share, 0)
    assert 0 <= share <= earnings_minor
    return share
