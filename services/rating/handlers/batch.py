"""What every rating handler shares: the batch (transaction, terms loaded so far, ledger accounts
used), exact x3600 sums, alert display amounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from fractions import Fraction
from typing import Any

from domain.contracts import store as contracts_store
from domain.contracts.terms import ContractTerms
from libs.errors import DomainRuleError
from libs.ledger import AccountSpec
from libs.messaging.consume import Tx
from libs.money import Exact, exact_to_decimal_str
from schemas import topics
from schemas.envelope import Envelope
from services.rating import store

CONSUMER = "rating"
CONTRACT_TYPES = frozenset({"contract.created", "contract.amended", "contract.terminated"})
ZERO = Decimal(0)
# x3600 sums run in a context that traps any loss, like the domain's: a result is exact or raises.
_EXACT = Context(prec=120, traps=[Inexact, Rounded, InvalidOperation])


def add_x3600(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def display_amount(amount: Exact) -> Decimal:
    """An exact amount for an alert's decimal field: exact when it has at most 12 places, else half
    to even at 12 places. Display only: nothing is computed from alerts, and nothing booked rounds."""
    text = exact_to_decimal_str(Fraction(amount), 12).rstrip("0").rstrip(".")
    return Decimal(text or "0")


@dataclass
class Batch:
    """What one batch shares: the transaction, the terms loaded so far, the ledger accounts used."""

    tx: Tx
    terms: dict[str, ContractTerms | None] = field(default_factory=dict)
    accounts: dict[str, AccountSpec] = field(default_factory=dict)

    async def terms_of(self, contract_id: str) -> ContractTerms | None:
        if contract_id not in self.terms:
            self.terms[contract_id] = await contracts_store.load_terms(self.tx.conn, store.SCHEMA, contract_id)
        return self.terms[contract_id]

    def use(self, *specs: AccountSpec) -> tuple[str, ...]:
        for spec in specs:
            self.accounts[spec.code] = spec
        return tuple(spec.code for spec in specs)


def contract_of(event: Envelope[Any]) -> str | None:
    return getattr(event.data, "contract_id", None)


def watermark_partition(event: Envelope[Any]) -> int:
    partition = int(event.data.partition)
    if not 0 <= partition < topics.USAGE_METERED.partitions:
        raise DomainRuleError(
            f"watermark for partition {partition}: {topics.USAGE_METERED.name} has "
            f"{topics.USAGE_METERED.partitions} partitions"
        )
    return partition
