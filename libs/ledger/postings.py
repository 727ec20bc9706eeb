"""Pure ledger values: account specs, postings and balanced entries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from libs.errors import UnbalancedEntryError
from libs.money import ledger_scale

AccountType = Literal["asset", "liability", "equity", "revenue", "expense"]
NormalBalance = Literal["debit", "credit"]

_NORMAL: dict[str, NormalBalance] = {
    "asset": "debit",
    "expense": "debit",
    "liability": "credit",
    "equity": "credit",
    "revenue": "credit",
}


def asset_of(currency: str) -> str:
    """The ledger asset of a currency: ``USD`` → ``USD/8`` (integer units of 10^-8 USD)."""
    return f"{currency}/{ledger_scale(currency)}"


@dataclass(frozen=True)
class AccountSpec:
    """An account to create on first use. ``floor_units``: lowest balance on the normal side."""

    code: str
    currency: str
    type: AccountType
    owner: str
    normal_balance: NormalBalance | None = None
    """Defaults from the type; a contra account (e.g. SLA contra-revenue) sets the opposite side."""
    floor_units: int | None = None
    description: str = ""

    @property
    def normal(self) -> NormalBalance:
        return self.normal_balance or _NORMAL[self.type]


@dataclass(frozen=True)
class Posting:
    account: str
    currency: str
    amount_units: int
    """Ledger units; debit positive, credit negative, never zero."""


def debit(account: str, amount_units: int, currency: str) -> Posting:
    return Posting(account, currency, amount_units)


def credit(account: str, amount_units: int, currency: str) -> Posting:
    return Posting(account, currency, -amount_units)


@dataclass(frozen=True)
class Entry:
    """One journal entry: balanced per currency, at least two postings, never changed once posted."""

    id: str
    cause_id: str
    kind: str
    occurred_at: datetime
    postings: tuple[Posting, ...]
    correlation_id: str | None = None
    description: str = ""
    reverses: str | None = None

    def __post_init__(self) -> None:
        assert self.occurred_at.tzinfo is not None, "ledger times are UTC"
        assert len(self.postings) >= 2, f"entry {self.id} needs at least two postings"
        totals: dict[str, int] = defaultdict(int)
        for posting in self.postings:
            assert posting.amount_units != 0, f"zero posting in entry {self.id}"
            totals[posting.currency] += posting.amount_units
        unbalanced = {c: t for c, t in totals.items() if t != 0}
        if unbalanced:
            raise UnbalancedEntryError(f"entry {self.id} ({self.kind}) does not balance: {unbalanced}")


def build_entry(
    *,
    id: str,
    cause_id: str,
    kind: str,
    occurred_at: datetime,
    postings: Iterable[Posting],
    correlation_id: str | None = None,
    description: str = "",
) -> Entry | None:
    """Merge postings per account, drop zero amounts; ``None`` when nothing is left to post."""
    merged: dict[tuple[str, str], int] = defaultdict(int)
    for posting in postings:
        merged[(posting.account, posting.currency)] += posting.amount_units
    kept = tuple(Posting(a, c, amount) for (a, c), amount in sorted(merged.items()) if amount != 0)
    if not kept:
        return None
    return Entry(id, cause_id, kind, occurred_at, kept, correlation_id, description)
