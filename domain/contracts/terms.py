"""Effective-dated contract terms (R4, R5, R7, R9): which priced fields are in force at each second.

A contract is its ``contract.created`` event plus every ``contract.amended`` (each sets a subset of
the priced fields from ``effective_at``) plus an optional ``contract.terminated`` (which can only
shorten the term). ``version`` numbers count arrivals: 1 is the creation, 2.. the amendments. At
any instant the value of a field is the one set by the version with the latest ``effective_at`` not
after that instant; equal ``effective_at`` → the later version wins. Out-of-order arrival therefore
yields the same answer as in-order arrival.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Literal, TypeVar

T = TypeVar("T")

BillingMode = Literal["prepaid", "postpaid"]


@dataclass(frozen=True)
class SlaTierTerms:
    below_uptime: Decimal
    """A fraction in (0, 1]: the tier applies when uptime < below_uptime."""
    credit_percent: Decimal
    """Percent of the period's exact usage charges, e.g. Decimal("10")."""


@dataclass(frozen=True)
class PricedFields:
    price_per_gpu_hour: Decimal
    supplier_rate_per_gpu_hour: Decimal
    commitment_per_period: Decimal
    credit_limit: Decimal | None
    sla_tiers: tuple[SlaTierTerms, ...]
    tax_rate: Decimal
    meter_prices: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class FieldChanges:
    """The fields one version sets; ``None`` means "not set by this version"."""

    price_per_gpu_hour: Decimal | None = None
    supplier_rate_per_gpu_hour: Decimal | None = None
    commitment_per_period: Decimal | None = None
    credit_limit: Decimal | None = None
    credit_limit_set: bool = False
    """``credit_limit`` may be set to null explicitly; this says whether the version touches it."""
    sla_tiers: tuple[SlaTierTerms, ...] | None = None
    tax_rate: Decimal | None = None
    meter_prices: Mapping[str, Decimal] | None = None

    def apply(self, base: PricedFields) -> PricedFields:
        return replace(
            base,
            price_per_gpu_hour=_pick(self.price_per_gpu_hour, base.price_per_gpu_hour),
            supplier_rate_per_gpu_hour=_pick(self.supplier_rate_per_gpu_hour, base.supplier_rate_per_gpu_hour),
            commitment_per_period=_pick(self.commitment_per_period, base.commitment_per_period),
            credit_limit=self.credit_limit if self.credit_limit_set else base.credit_limit,
            sla_tiers=_pick(self.sla_tiers, base.sla_tiers),
            tax_rate=_pick(self.tax_rate, base.tax_rate),
            meter_prices=_pick(self.meter_prices, base.meter_prices),
        )


def _pick(new: T | None, old: T) -> T:
    return old if new is None else new


@dataclass(frozen=True)
class TermsVersion:
    version: int
    effective_at: datetime
    changes: FieldChanges
    event_id: str


@dataclass(frozen=True)
class ContractTerms:
    contract_id: str
    renter_id: str
    currency: str
    billing_mode: BillingMode
    starts_at: datetime
    ends_at: datetime | None
    """The end of term as created (``None``: open-ended)."""
    billing_anchor_day: int
    payment_terms_days: int
    base: PricedFields
    """The fields of ``contract.created`` (version 1), in force from ``starts_at``."""
    amendments: tuple[TermsVersion, ...] = ()
    terminated_at: datetime | None = None

    # --- term ---------------------------------------------------------------------------------------
    @property
    def term_end(self) -> datetime | None:
        """End of term: the earlier of ``ends_at`` and the termination's ``effective_at``."""
        ends = [t for t in (self.ends_at, self.terminated_at) if t is not None]
        return min(ends) if ends else None

    def in_term(self, at: datetime) -> bool:
        end = self.term_end
        return self.starts_at <= at and (end is None or at < end)

    # --- versions -----------------------------------------------------------------------------------
    def _ordered(self) -> list[TermsVersion]:
        return sorted(self.amendments, key=lambda v: (v.effective_at, v.version))

    def fields_at(self, at: datetime) -> PricedFields:
        """The priced fields in force at the instant ``at`` (R4)."""
        fields = self.base
        for version in self._ordered():
            if version.effective_at > at:
                break
            fields = version.changes.apply(fields)
        return fields

    def version_at(self, at: datetime) -> int:
        """Number of the latest version in force at ``at`` (1 when only the creation applies)."""
        current = 1
        for version in self._ordered():
            if version.effective_at > at:
                break
            current = version.version
        return current

    def change_points(self, start: datetime, end: datetime) -> list[datetime]:
        """Instants in ``(start, end)`` at which some version takes effect (where a price may change)."""
        return sorted({v.effective_at for v in self.amendments if start < v.effective_at < end})

    def constant_pieces(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime, PricedFields, int]]:
        """``[start, end)`` cut at every change point: (piece start, piece end, fields, version)."""
        cuts = [start, *self.change_points(start, end), end]
        return [(a, b, self.fields_at(a), self.version_at(a)) for a, b in itertools.pairwise(cuts) if a < b]

    # --- evolution (pure; the store persists the result) ------------------------------------------------
    def with_amendment(self, version: TermsVersion) -> ContractTerms:
        assert version.version > 1 and all(v.version != version.version for v in self.amendments)
        return replace(self, amendments=(*self.amendments, version))

    def with_termination(self, effective_at: datetime) -> ContractTerms:
        """Termination can only shorten the term; a later termination than an earlier one is ignored."""
        current = self.terminated_at
        new = effective_at if current is None else min(current, effective_at)
        return replace(self, terminated_at=new)

    @property
    def next_version(self) -> int:
        return 2 + len(self.amendments)


def sla_tiers_from(rows: Sequence[Mapping[str, Decimal]]) -> tuple[SlaTierTerms, ...]:
    return tuple(SlaTierTerms(Decimal(r["below_uptime"]), Decimal(r["credit_percent"])) for r in rows)
