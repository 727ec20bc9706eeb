"""Which gateway an attempt goes to, and why. Pure: health figures come in as arguments.

Candidates are the configured gateways that take the method's kind, the currency and the amount.
Among those with a closed circuit, the best score wins: the rolling success rate (smoothed, so a
gateway with little history is neither trusted nor shunned) minus a weight times the cost of the
charge. One decision in ``explore_every`` (chosen by a hash of the attempt id, so a replay decides the
same) goes to the runner-up, so a gateway that recovered is noticed. A definite failure fails over to
the best gateway not yet tried in that try; an unknown outcome never does (R14).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    kinds: frozenset[str]
    currencies: frozenset[str] | None = None
    """None: every currency."""
    min_minor: int = 1
    max_minor: int | None = None
    fee_fixed_minor: int = 0
    fee_bps: int = 0
    """Cost in basis points of the amount (1/100 of a percent)."""

    def cost_minor(self, amount_minor: int) -> Fraction:
        return self.fee_fixed_minor + Fraction(amount_minor * self.fee_bps, 10_000)


@dataclass(frozen=True)
class Health:
    successes: int = 0
    attempts: int = 0
    circuit_open: bool = False

    @property
    def rate(self) -> Fraction:
        """Laplace-smoothed success rate over the rolling window."""
        return Fraction(self.successes + 1, self.attempts + 2)


@dataclass(frozen=True)
class Candidate:
    gateway: str
    eligible: bool
    why: str
    rate: Fraction = Fraction(0)
    cost_minor: Fraction = Fraction(0)
    score: Fraction = Fraction(0)


@dataclass(frozen=True)
class Decision:
    gateway: str | None
    reason: str
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, object]:
        return {
            "gateway": self.gateway,
            "reason": self.reason,
            "candidates": [
                {
                    "gateway": c.gateway,
                    "eligible": c.eligible,
                    "why": c.why,
                    "success_rate": _shown(c.rate, 3) if c.eligible else None,
                    "cost_minor": _shown(c.cost_minor, 2) if c.eligible else None,
                }
                for c in self.candidates
            ],
        }


def _shown(value: Fraction, places: int) -> str:
    return f"{Decimal(value.numerator) / Decimal(value.denominator):.{places}f}"


COST_WEIGHT = Fraction(1, 1000)
"""Score units per minor unit of cost: 10.00 of cost weighs as much as one point of success rate."""


def choose(
    attempt_id: str,
    *,
    kind: str,
    currency: str,
    amount_minor: int,
    gateways: list[GatewayConfig],
    health: dict[str, Health],
    tried: frozenset[str] = frozenset(),
    explore_every: int = 20,
) -> Decision:
    candidates: list[Candidate] = []
    for gw in gateways:
        h = health.get(gw.name, Health())
        why = ""
        if kind not in gw.kinds:
            why = f"does not take {kind}"
        elif gw.currencies is not None and currency not in gw.currencies:
            why = f"does not take {currency}"
        elif amount_minor < gw.min_minor or (gw.max_minor is not None and amount_minor > gw.max_minor):
            why = "amount outside its limits"
        elif gw.name in tried:
            why = "already failed this try"
        if why:
            candidates.append(Candidate(gw.name, False, why))
            continue
        cost = gw.cost_minor(amount_minor)
        score = h.rate - COST_WEIGHT * cost / 100
        candidates.append(Candidate(gw.name, True, "circuit open" if h.circuit_open else "ok", h.rate, cost, score))
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        return Decision(None, "no gateway takes this payment", tuple(candidates))
    closed = [c for c in eligible if c.why == "ok"]
    pool = closed or eligible  # every circuit open: try the best anyway rather than never collect
    ranked = sorted(pool, key=lambda c: (-c.score, c.cost_minor, c.gateway))
    if not closed:
        return Decision(ranked[0].gateway, "every eligible circuit is open: best score", tuple(candidates))
    if len(ranked) > 1 and _explores(attempt_id, explore_every):
        return Decision(ranked[1].gateway, "exploration (runner-up)", tuple(candidates))
    failover = " after a definite failure" if tried else ""
    return Decision(ranked[0].gateway, f"best success rate and cost{failover}", tuple(candidates))


def _explores(attempt_id: str, every: int) -> bool:
    if every <= 0:
        return False
    digest = hashlib.sha256(attempt_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % every == 0
