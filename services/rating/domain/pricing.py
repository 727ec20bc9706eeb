"""R4, R13: exact x3600 amounts, usage state, pricing a revision of an allocation-hour with the terms in
force, repricing after an amendment, the period of an hour, the platform take. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from fractions import Fraction
from typing import Protocol

from domain.contracts.periods import period_containing
from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError, InvalidAmountError
from libs.money import Exact
from libs.times import HOUR, floor_hour, seconds_between

GPU_METER = "gpu_seconds"
"""The meter whose usage is GPU-seconds priced per GPU-hour (R3, R4); every other meter is an add-on."""

SECONDS_PER_HOUR = 3600

# Every x3600 computation runs in this context: generous precision and every loss of information
# trapped, so a result is exact or the operation raises (never a silent rounding before R6).
_EXACT = Context(
    prec=120,
    rounding=ROUND_HALF_EVEN,
    traps=[Inexact, Rounded, InvalidOperation, Overflow, DivisionByZero],
)
_ZERO = Decimal(0)


def _canonical(value: Decimal) -> Decimal:
    """Same value, fewest places and never a positive exponent (``"0E-12"`` → ``"0"``, ``"9000.00"``
    → ``"9000"``), so ``str()`` of a result is a plain decimal string for any realistic amount."""
    if value.is_zero():
        return _ZERO
    reduced = value.normalize(_EXACT)
    exponent = reduced.as_tuple().exponent
    # normalize() writes 9000 as 9E+3; bring it back to an integer exponent of 0.
    if isinstance(exponent, int) and exponent > 0:
        return reduced.quantize(Decimal(1), context=_EXACT)
    return reduced


def exact_from_x3600(value_x3600: Decimal) -> Exact:
    """An ``*_x3600`` decimal → the exact amount in major units (the once-per-line ``/ 3600``)."""
    return Fraction(value_x3600) / SECONDS_PER_HOUR


def x3600_from_exact(amount: Exact) -> Decimal:
    """An exact amount → its ``*_x3600`` decimal, exactly.

    Raises InvalidAmountError when ``amount × 3600`` is not a terminating decimal (which never
    happens for sums of usage charges and decimal top-ups).
    """
    scaled = Fraction(amount) * SECONDS_PER_HOUR
    den = scaled.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        raise InvalidAmountError(f"{amount} × 3600 is not a terminating decimal")
    places = max(twos, fives)
    digits = scaled.numerator * (10**places // scaled.denominator)
    result = _canonical(Decimal(digits).scaleb(-places, _EXACT))
    assert Fraction(result) == scaled
    return result


def require_exact(amount: Exact, what: str) -> Exact:
    # bool is an int; float and Decimal are refused so no binary fraction or context sneaks in.
    if isinstance(amount, bool) or not isinstance(amount, Fraction | int):
        raise InvalidAmountError(f"{what} must be an exact Fraction, got {type(amount).__name__}")
    return Fraction(amount)


# ====================================================================================================
# Usage (the input of pricing)
# ====================================================================================================


class SegmentLike(Protocol):
    @property
    def start_at(self) -> datetime: ...

    @property
    def end_at(self) -> datetime: ...


class UsageRecordLike(Protocol):
    """What :func:`usage_state_of` reads of a ``schemas.events.UsageMetered`` (structurally)."""

    @property
    def meter(self) -> str: ...

    @property
    def hour_start(self) -> datetime: ...

    @property
    def gpu_count(self) -> int: ...

    @property
    def billable_gpu_seconds(self) -> int: ...

    @property
    def billable_segments(self) -> Sequence[SegmentLike]: ...

    @property
    def quantity(self) -> Decimal: ...


@dataclass(frozen=True)
class UsageState:
    """The full state of one allocation-hour of one meter at some revision (what gets priced).

    ``billable_segments`` are half-open ``[start, end)`` intervals inside the hour, sorted and
    disjoint, without the GPU factor; ``quantity`` is the add-on quantity (0 for GPU-seconds).
    Construction raises DomainRuleError when these invariants do not hold.
    """

    meter: str
    hour_start: datetime
    gpu_count: int
    billable_segments: tuple[tuple[datetime, datetime], ...] = ()
    quantity: Decimal = _ZERO

    def __post_init__(self) -> None:
        if self.hour_start.tzinfo is None or floor_hour(self.hour_start) != self.hour_start:
            raise DomainRuleError(f"hour_start {self.hour_start} is not a UTC hour boundary")
        if self.gpu_count < 0:
            raise DomainRuleError("gpu_count must not be negative")
        if not isinstance(self.quantity, Decimal) or not self.quantity.is_finite() or self.quantity < 0:
            raise DomainRuleError(f"quantity {self.quantity!r} must be a finite non-negative Decimal")
        if self.meter != GPU_METER and self.billable_segments:
            raise DomainRuleError(f"add-on meter {self.meter!r} carries no billable segments")
        hour_end = self.hour_start + HOUR
        cursor = self.hour_start
        for start, end in self.billable_segments:
            if not (cursor <= start < end <= hour_end):
                raise DomainRuleError(
                    f"segment [{start}, {end}) is empty, outside hour {self.hour_start}, "
                    "or overlaps/precedes the previous one"
                )
            cursor = end

    @property
    def billable_seconds(self) -> int:
        """Billable seconds of the hour, without the GPU factor."""
        return sum(seconds_between(a, b) for a, b in self.billable_segments)


def usage_state_of(record: UsageRecordLike) -> UsageState:
    """The priced state of a ``UsageMetered`` record (full state, not its delta).

    Raises DomainRuleError when the record is inconsistent: for GPU-seconds,
    ``billable_gpu_seconds`` must equal ``gpu_count × Σ segment seconds``.
    """
    state = UsageState(
        meter=record.meter,
        hour_start=record.hour_start,
        gpu_count=record.gpu_count,
        billable_segments=tuple((s.start_at, s.end_at) for s in record.billable_segments),
        quantity=record.quantity,
    )
    if state.meter == GPU_METER and state.gpu_count * state.billable_seconds != record.billable_gpu_seconds:
        raise DomainRuleError(
            f"billable_gpu_seconds {record.billable_gpu_seconds} != gpu_count {state.gpu_count} × "
            f"segment seconds {state.billable_seconds}"
        )
    return state


# ====================================================================================================
# Pricing (R4, R13)
# ====================================================================================================


@dataclass(frozen=True)
class Priced:
    """What one usage state costs the renter and earns the supplier, exactly (R4).

    ``charge_x3600 = Σ gpu_seconds × price_per_gpu_hour`` and ``earning_x3600 = Σ gpu_seconds ×
    supplier_rate_per_gpu_hour`` over the hour's billable seconds, each second at the version in
    force at it; the exact amounts are these divided by 3600. ``versions``: the contract versions
    whose prices priced at least one second (sorted; empty when nothing was priced; for an add-on,
    the version in force at the hour's first in-term instant).
    ``gpu_seconds``: the GPU-seconds priced (0 for add-ons).
    """

    charge_x3600: Decimal
    earning_x3600: Decimal
    versions: tuple[int, ...]
    gpu_seconds: int = 0


def _clip_to_term(terms: ContractTerms, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    term_end = terms.term_end
    clipped_start = max(start, terms.starts_at)
    clipped_end = end if term_end is None else min(end, term_end)
    return clipped_start, max(clipped_start, clipped_end)


def _hour_overlaps_term(terms: ContractTerms, hour_start: datetime) -> bool:
    start, end = _clip_to_term(terms, hour_start, hour_start + HOUR)
    return start < end


def _addon_price(terms: ContractTerms, hour_start: datetime, meter: str) -> tuple[Decimal, int] | None:
    """(price per unit, version) of an add-on meter for the hour; None when the hour is outside the term."""
    if not _hour_overlaps_term(terms, hour_start):
        return None
    at = max(hour_start, terms.starts_at)
    # A meter the contract does not price is charged 0 (documented extension).
    return terms.fields_at(at).meter_prices.get(meter, _ZERO), terms.version_at(at)


def price_usage(usage: UsageState, terms: ContractTerms) -> Priced:
    """Price the full state of one allocation-hour (R4).

    GPU-seconds: each billable segment is clipped to the term ``[starts_at, term_end)`` (metering
    clips already; a later termination may have shortened the term since), cut at the contract's
    change points, and each piece adds ``seconds × gpu_count × price`` to ``charge_x3600`` and
    ``seconds × gpu_count × supplier_rate`` to ``earning_x3600``.
    Add-on meters: ``charge_x3600 = quantity × meter_price × 3600``, ``earning_x3600 = 0``.
    """
    if usage.meter != GPU_METER:
        return _price_addon(usage, terms)
    charge = earning = _ZERO
    versions: set[int] = set()
    gpu_seconds = 0
    for segment_start, segment_end in usage.billable_segments:
        start, end = _clip_to_term(terms, segment_start, segment_end)
        if start >= end:
            continue
        for piece_start, piece_end, fields, version in terms.constant_pieces(start, end):
            piece_gpu_seconds = seconds_between(piece_start, piece_end) * usage.gpu_count
            if piece_gpu_seconds == 0:
                continue
            amount = Decimal(piece_gpu_seconds)
            charge = _EXACT.add(charge, _EXACT.multiply(amount, fields.price_per_gpu_hour))
            earning = _EXACT.add(earning, _EXACT.multiply(amount, fields.supplier_rate_per_gpu_hour))
            versions.add(version)
            gpu_seconds += piece_gpu_seconds
    assert gpu_seconds <= usage.gpu_count * usage.billable_seconds
    return Priced(_canonical(charge), _canonical(earning), tuple(sorted(versions)), gpu_seconds)


def _price_addon(usage: UsageState, terms: ContractTerms) -> Priced:
    priced = _addon_price(terms, usage.hour_start, usage.meter)
    if priced is None or usage.quantity.is_zero():
        return Priced(_ZERO, _ZERO, ())
    price, version = priced
    charge = _EXACT.multiply(_EXACT.multiply(usage.quantity, price), Decimal(SECONDS_PER_HOUR))
    return Priced(_canonical(charge), _ZERO, (version,))


@dataclass(frozen=True)
class ChargeDelta:
    """The signed change a usage revision (or a re-pricing) makes to what was charged and earned.

    ``charge_x3600``/``earning_x3600`` = current − previously priced (negative for a correction
    that lowers usage or a price); ``priced`` is the new full pricing the shell stores as the
    "previously priced" of the next revision; ``versions`` are its versions.
    """

    charge_x3600: Decimal
    earning_x3600: Decimal
    versions: tuple[int, ...]
    gpu_seconds: int
    priced: Priced

    @property
    def is_zero(self) -> bool:
        return self.charge_x3600.is_zero() and self.earning_x3600.is_zero() and self.gpu_seconds == 0


def rate_revision(previous: Priced | None, usage: UsageState, terms: ContractTerms) -> ChargeDelta:
    """Rate a usage revision as the signed delta new − previously charged (R3, R4).

    ``previous`` is the pricing stored for the same (allocation, meter, hour), ``None`` for the first
    revision. The same call re-prices a stored hour after a late amendment or termination: pass the
    stored state and the new terms. Summing every delta of an hour gives ``price_usage`` of its last
    state under the last terms.
    """
    current = price_usage(usage, terms)
    base = previous if previous is not None else Priced(_ZERO, _ZERO, ())
    delta = ChargeDelta(
        charge_x3600=_canonical(_EXACT.subtract(current.charge_x3600, base.charge_x3600)),
        earning_x3600=_canonical(_EXACT.subtract(current.earning_x3600, base.earning_x3600)),
        versions=current.versions,
        gpu_seconds=current.gpu_seconds - base.gpu_seconds,
        priced=current,
    )
    assert _EXACT.add(base.charge_x3600, delta.charge_x3600) == current.charge_x3600
    return delta


def _gpu_pricing_at(terms: ContractTerms, at: datetime) -> tuple[Decimal, Decimal] | None:
    if not terms.in_term(at):
        return None
    fields = terms.fields_at(at)
    return fields.price_per_gpu_hour, fields.supplier_rate_per_gpu_hour


def _addon_prices(terms: ContractTerms, hour_start: datetime) -> dict[str, Decimal] | None:
    if not _hour_overlaps_term(terms, hour_start):
        return None
    return dict(terms.fields_at(max(hour_start, terms.starts_at)).meter_prices)


def reprice_needed(
    terms_before: ContractTerms, terms_after: ContractTerms, hour_start: datetime, *, meter: str | None = None
) -> bool:
    """Whether an hour priced with ``terms_before`` may be priced differently with ``terms_after``.

    True exactly when, at some second of ``[hour_start, hour_start + 1h)``, the GPU price, the
    supplier rate or being inside the term differs (GPU-seconds), or when the add-on prices of the
    hour differ (add-ons). ``meter=None`` answers for every meter of the hour. Equal values written
    differently (``2.5`` and ``2.50``) are the same price. Use :func:`affected_since` to find the
    hours worth asking about.
    """
    assert floor_hour(hour_start) == hour_start, "hours start on the hour"
    hour_end = hour_start + HOUR
    if meter is None or meter == GPU_METER:
        # Pricing is constant between these cuts: amendments change it only at their effective_at,
        # the term only at its start and end.
        cuts = {hour_start}
        for terms in (terms_before, terms_after):
            cuts.update(terms.change_points(hour_start, hour_end))
            bounds = (terms.starts_at, terms.term_end)
            cuts.update(b for b in bounds if b is not None and hour_start < b < hour_end)
        if any(_gpu_pricing_at(terms_before, c) != _gpu_pricing_at(terms_after, c) for c in cuts):
            return True
    if meter is None or meter != GPU_METER:
        before, after = _addon_prices(terms_before, hour_start), _addon_prices(terms_after, hour_start)
        if meter is None:
            return before != after
        return (None if before is None else before.get(meter, _ZERO)) != (
            None if after is None else after.get(meter, _ZERO)
        )
    return False


def affected_since(terms_before: ContractTerms, terms_after: ContractTerms) -> datetime | None:
    """The earliest instant from which the two versions of a contract's terms may price differently.

    The effective times of versions present in only one of them, and the earlier end of term when
    the ends differ; ``None`` when nothing differs. Stored hours with ``hour_start + 1h`` after this
    instant are the candidates for :func:`reprice_needed`.
    """
    assert terms_before.contract_id == terms_after.contract_id
    before = {(v.version, v.event_id): v.effective_at for v in terms_before.amendments}
    after = {(v.version, v.event_id): v.effective_at for v in terms_after.amendments}
    candidates = [at for key, at in (before | after).items() if (key in before) != (key in after)]
    end_before, end_after = terms_before.term_end, terms_after.term_end
    if end_before != end_after:
        candidates.append(min(t for t in (end_before, end_after) if t is not None))
    if terms_before.base != terms_after.base or terms_before.starts_at != terms_after.starts_at:
        candidates.append(min(terms_before.starts_at, terms_after.starts_at))
    return min(candidates) if candidates else None


def period_of_hour(terms: ContractTerms, hour_start: datetime) -> tuple[datetime, datetime]:
    """The billing period ``[start, end)`` an hour belongs to (R1).

    Periods start at 00:00, so an hour never straddles two of them.
    """
    assert floor_hour(hour_start) == hour_start, "hours start on the hour"
    start, end = period_containing(terms.billing_anchor_day, hour_start)
    assert start <= hour_start
    assert hour_start + HOUR <= end
    return start, end


def period_at(terms: ContractTerms, at: datetime) -> tuple[datetime, datetime]:
    """The billing period ``[start, end)`` containing the instant ``at`` (a top-up's period, R1, R8)."""
    return period_containing(terms.billing_anchor_day, at)


def platform_take(charge_x3600: Decimal, earning_x3600: Decimal) -> Exact:
    """R13: the platform's revenue for the same usage, exact: (charge − earning) / 3600."""
    return exact_from_x3600(charge_x3600) - exact_from_x3600(earning_x3600)
