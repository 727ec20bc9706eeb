"""Supplier earnings statements (R12): pure, no I/O, no clock.

One statement per supplier per currency per calendar month (UTC):

* one earnings line per allocation that delivered billable seconds in the month: the exact sum of
  the earnings of the hours delivered in the month (``Σ earning_x3600 / 3600``, divided once),
  rounded once to minor units, half to even (R6);
* ``earnings_total`` = the sum of the rounded lines (never a second rounding);
* ``sla_chargebacks`` = the sum of the chargeback parts that land on the month (negative: a
  chargeback passes an SLA credit of a renter invoice on to the supplier);
* ``carried`` = the previous month's net in the same currency when it was negative, else 0;
* ``clawbacks`` (extension of R12, from R15) = the sum of the supplier's clawbacks landing on the month
  (≤ 0: ``payout.clawback``, a share of earnings taken back after a refund, credit note or lost dispute);
* ``net`` = earnings_total + sla_chargebacks + clawbacks + carried. A negative net carries to the next
  month. Without clawbacks the statement is what R12 says, and ``clawbacks`` is 0.

Extension (like R3 for invoices): earnings of hours of a month whose statement is already final
(late corrections) land on the next statement, on the allocation's line
(:attr:`AllocationEarnings.late_earning_x3600`), still one exact sum rounded once.

A contract's rounded SLA credit is split across its allocations by :func:`split_chargeback`
(largest remainder); a chargeback lands on the month of the contract period's last second
(:func:`chargeback_month`). A month with only a carried balance still gets a statement
(:func:`statement_due`).

Amounts: ``*_minor`` are ``int`` minor units of the statement's currency; ``*_x3600`` are exact
decimals times 3600 (as on ``charges.rated.v1``); ``exact`` fields are
:class:`fractions.Fraction` in major units.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from domain.contracts.periods import last_second
from libs.errors import CurrencyMismatchError, DomainRuleError
from libs.money import Exact, currency_exponent, format_minor, minor_to_exact, round_minor
from schemas.events import StatementFinalized

__all__ = [
    "AllocationEarnings",
    "ChargebackPart",
    "StatementDraft",
    "StatementInputs",
    "StatementLine",
    "assemble_statement",
    "carried_from",
    "chargeback_month",
    "month_bounds",
    "month_of",
    "rounding_difference",
    "split_chargeback",
    "statement_due",
    "to_event",
]

_MONTH_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


# --- months -----------------------------------------------------------------------------------------


def month_of(at: datetime) -> str:
    """The UTC calendar month (``"YYYY-MM"``) that contains the instant ``at``."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: times must be UTC")
    utc = at.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``[first instant, first instant of the next month)`` of a ``"YYYY-MM"`` month, UTC."""
    if not _MONTH_RE.match(month):
        raise ValueError(f"month {month!r} is not YYYY-MM")
    year, mon = int(month[:4]), int(month[5:])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if mon == 12 else datetime(year, mon + 1, 1, tzinfo=UTC)
    return start, end


def chargeback_month(period_end: datetime) -> str:
    """R12: a chargeback lands on the month of the contract period's last second."""
    return month_of(last_second(period_end))


# --- largest-remainder split --------------------------------------------------------------------------


def split_chargeback(credit_minor: int, shares: Mapping[str, int]) -> dict[str, int]:
    """Split ``credit_minor`` (the absolute value of a rounded SLA credit, minor units, ≥ 0) across
    allocations in proportion to ``shares`` (allocation_id → outage GPU-seconds, ≥ 0), R12.

    Largest remainder: each exact part ``credit x share / Σ shares`` is first rounded down; then the
    parts with the largest remainders get one unit more each (ties: smallest ``allocation_id``, by
    string order) until the parts sum exactly to the credit.

    Invariants (asserted): the parts sum to ``credit_minor``; every part differs from its exact
    share by less than one unit; an allocation with a zero share gets 0. Every key of ``shares``
    is in the result. ``credit_minor == 0`` → all parts 0.

    Raises ``ValueError`` for a negative credit or share, and :class:`DomainRuleError` when a
    positive credit has no outage seconds to split over.
    """
    if credit_minor < 0:
        raise ValueError(f"credit_minor must be the absolute value (>= 0), got {credit_minor}")
    for allocation_id, share in shares.items():
        if share < 0:
            raise ValueError(f"allocation {allocation_id}: negative outage share {share}")
    total = sum(shares.values())
    if credit_minor == 0:
        return {allocation_id: 0 for allocation_id in shares}
    if total == 0:
        raise DomainRuleError(f"an SLA credit of {credit_minor} minor units has no outage seconds to split over")

    # Integer arithmetic: part = floor(credit x share / total), remainder kept as a numerator over
    # ``total`` so that comparisons between remainders are exact.
    parts: dict[str, int] = {}
    remainders: dict[str, int] = {}
    for allocation_id, share in shares.items():
        parts[allocation_id], remainders[allocation_id] = divmod(credit_minor * share, total)
    leftover = credit_minor - sum(parts.values())
    # Σ remainders = leftover x total and each remainder < total, so leftover < number of positive
    # remainders: only allocations with a positive remainder (hence a positive share) get a unit.
    order = sorted(shares, key=lambda allocation_id: (-remainders[allocation_id], allocation_id))
    for allocation_id in order[:leftover]:
        parts[allocation_id] += 1

    assert sum(parts.values()) == credit_minor
    assert all(abs(Fraction(parts[a] * total - credit_minor * shares[a], total)) < 1 for a in shares), (
        "a largest-remainder part is off its exact share by a unit or more"
    )
    return parts


# --- statement inputs and draft ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChargebackPart:
    """One allocation's part of a contract's SLA credit, passed on to its supplier (R7, R12).

    ``amount_minor`` is signed as it appears on the statement: negative for a chargeback, positive
    when a late correction reduces an SLA credit that was already charged back.
    """

    supplier_id: str
    allocation_id: str
    contract_id: str
    currency: str
    period_start: datetime
    """The contract billing period whose SLA credit this part passes on."""
    period_end: datetime
    month: str
    """``"YYYY-MM"``: the statement month the part lands on."""
    amount_minor: int


@dataclass(frozen=True)
class AllocationEarnings:
    """One allocation's earnings of the hours delivered in the month (all revisions summed)."""

    allocation_id: str
    earning_x3600: Decimal
    """Exact Σ ``earning_x3600`` of the allocation's charges for hours in the month."""
    billable_gpu_seconds: int
    """Σ ``delta_billable_gpu_seconds`` of the same charges: decides whether the line exists."""
    late_earning_x3600: Decimal = Decimal(0)
    """Signed Σ ``earning_x3600`` of the allocation's charges for hours of EARLIER months that were
    rated after those months' statements (late corrections, extension of R12 like R3 for
    invoices): they land on this month's line of the allocation, which then exists even without
    billable seconds this month. The line is still one exact sum rounded once (R6)."""

    @property
    def has_line(self) -> bool:
        return self.billable_gpu_seconds != 0 or self.late_earning_x3600 != 0


@dataclass(frozen=True)
class StatementInputs:
    """Everything one statement needs; gathered by the shell, no I/O here."""

    supplier_id: str
    currency: str
    month: str
    """``"YYYY-MM"`` (UTC calendar month)."""
    earnings: tuple[AllocationEarnings, ...]
    """One entry per allocation (the shell aggregates per allocation); may be empty."""
    chargebacks: tuple[ChargebackPart, ...]
    """The parts that land on this month for this supplier and currency; may be empty."""
    previous_net_minor: int | None
    """Net of the supplier's previous statement in this currency (``None``: there was none)."""
    issued_at: datetime
    clawbacks_minor: int = 0
    """≤ 0: the sum of the supplier's clawbacks landing on this statement (R15; extension of R12)."""


@dataclass(frozen=True)
class StatementLine:
    allocation_id: str
    exact: Exact
    """Exact earnings in major units (the R6 sum before rounding)."""
    amount_minor: int
    """``round_minor(exact)``: what the statement shows; ``exact - amount`` goes to rounding."""


@dataclass(frozen=True)
class StatementDraft:
    """A statement ready to finalize; the shell assigns number and id (:func:`to_event`)."""

    supplier_id: str
    currency: str
    month: str
    lines: tuple[StatementLine, ...]
    """Sorted by ``allocation_id``; only allocations with billable seconds in the month."""
    earnings_total_minor: int
    sla_chargebacks_minor: int
    carried_minor: int
    """≤ 0: the previous month's negative net, else 0."""
    net_minor: int
    issued_at: datetime
    clawbacks_minor: int = 0
    """≤ 0: clawbacks (R15) carried by this statement."""

    @property
    def carried_forward_minor(self) -> int:
        """≤ 0: what the next month's statement carries (the net when negative, else 0)."""
        return min(self.net_minor, 0)

    @property
    def payable_minor(self) -> int:
        """≥ 0: what may be paid out for this statement (payout minimums are the payouts' rule)."""
        return max(self.net_minor, 0)


def carried_from(previous_net_minor: int | None) -> int:
    """R12: a negative net of the previous month carries forward; a positive one does not."""
    return 0 if previous_net_minor is None else min(previous_net_minor, 0)


def statement_due(inputs: StatementInputs) -> bool:
    """Whether the month gets a statement: an earnings line, a chargeback part or a carried balance."""
    has_line = any(e.has_line for e in inputs.earnings)
    return (
        has_line
        or bool(inputs.chargebacks)
        or inputs.clawbacks_minor != 0
        or carried_from(inputs.previous_net_minor) != 0
    )


def _check_statement_inputs(inputs: StatementInputs) -> None:
    currency_exponent(inputs.currency)  # raises UnknownCurrencyError
    if not _MONTH_RE.match(inputs.month):
        raise ValueError(f"month {inputs.month!r} is not YYYY-MM")
    if inputs.clawbacks_minor > 0:
        raise DomainRuleError(f"clawbacks of {inputs.clawbacks_minor} minor units: a clawback is never positive")
    seen: set[str] = set()
    for e in inputs.earnings:
        if e.allocation_id in seen:
            raise DomainRuleError(f"allocation {e.allocation_id} appears twice in the month's earnings")
        seen.add(e.allocation_id)
        if not e.earning_x3600.is_finite() or not e.late_earning_x3600.is_finite():
            raise DomainRuleError(f"allocation {e.allocation_id}: earning_x3600 is not finite")
        if e.billable_gpu_seconds < 0:
            raise DomainRuleError(f"allocation {e.allocation_id}: negative billable seconds in the month")
        if e.billable_gpu_seconds == 0 and e.earning_x3600 != 0:
            raise DomainRuleError(f"allocation {e.allocation_id}: earnings without billable seconds")
    for part in inputs.chargebacks:
        if part.currency != inputs.currency:
            raise CurrencyMismatchError(f"chargeback in {part.currency} on a {inputs.currency} statement")
        if part.supplier_id != inputs.supplier_id:
            raise DomainRuleError(f"chargeback of supplier {part.supplier_id} on {inputs.supplier_id}'s statement")
        if part.month != inputs.month:
            raise DomainRuleError(f"chargeback landing on {part.month} given for {inputs.month}")


def assemble_statement(inputs: StatementInputs) -> StatementDraft:
    """R12: build a supplier's statement for one month and currency.

    Raises :class:`DomainRuleError` / :class:`CurrencyMismatchError` on inconsistent inputs.
    Invariant (asserted): ``net = Σ lines + sla_chargebacks + clawbacks + carried``.
    """
    _check_statement_inputs(inputs)
    lines: list[StatementLine] = []
    for e in sorted(inputs.earnings, key=lambda e: e.allocation_id):
        if not e.has_line:
            continue  # R12: only allocations that delivered billable seconds that month
        exact = Fraction(e.earning_x3600 + e.late_earning_x3600) / 3600  # divided once per line (R4)
        lines.append(StatementLine(e.allocation_id, exact, round_minor(exact, inputs.currency)))
    earnings_total = sum(line.amount_minor for line in lines)
    chargebacks = sum(part.amount_minor for part in inputs.chargebacks)
    carried = carried_from(inputs.previous_net_minor)
    net = earnings_total + chargebacks + inputs.clawbacks_minor + carried
    draft = StatementDraft(
        supplier_id=inputs.supplier_id,
        currency=inputs.currency,
        month=inputs.month,
        lines=tuple(lines),
        earnings_total_minor=earnings_total,
        sla_chargebacks_minor=chargebacks,
        carried_minor=carried,
        net_minor=net,
        issued_at=inputs.issued_at,
        clawbacks_minor=inputs.clawbacks_minor,
    )
    assert (
        draft.net_minor
        == sum(x.amount_minor for x in draft.lines) + draft.sla_chargebacks_minor + draft.clawbacks_minor + carried
    )
    assert draft.carried_minor <= 0
    return draft


def rounding_difference(draft: StatementDraft) -> Exact:
    """Σ (exact - rounded) of the earnings lines, in major units: what goes to the rounding account."""
    return sum((line.exact - minor_to_exact(line.amount_minor, draft.currency) for line in draft.lines), Fraction(0))


def to_event(draft: StatementDraft, number: str, statement_id: str) -> StatementFinalized:
    """The ``statement.finalized`` payload; amounts carry exactly the currency's minor digits."""

    def money(amount_minor: int) -> Decimal:
        return Decimal(format_minor(amount_minor, draft.currency))

    return StatementFinalized(
        statement_id=statement_id,
        number=number,
        supplier_id=draft.supplier_id,
        currency=draft.currency,
        month=draft.month,
        earnings={line.allocation_id: money(line.amount_minor) for line in draft.lines},
        earnings_total=money(draft.earnings_total_minor),
        sla_chargebacks=money(draft.sla_chargebacks_minor),
        carried=money(draft.carried_minor),
        net=money(draft.net_minor),
        issued_at=draft.issued_at,
        clawbacks=money(draft.clawbacks_minor),
    )
