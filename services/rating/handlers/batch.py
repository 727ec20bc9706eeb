"""What every rating handler shares: the batch (transaction, terms loaded so far, ledger accounts
used), exact x3600 sums, alert display amounts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
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
    """What one batch shares: the transaction, the terms loaded so far, the ledger accounts used, and
    the rating rows written in bulk.

    Usage is the hot path (one record per allocation-hour): its priced hours are fetched for a run of
    records at once (:meth:`prefetch`) and its writes — priced hours, charges, exposures — wait in the
    batch and go out in pipelined round trips at :meth:`flush`. Anything that reads those tables
    another way (a contract's re-pricing, a watermark's wallet run, an invoice) runs after a flush:
    :func:`services.rating.handlers.on_batch` flushes before every event that is not usage, and
    :meth:`flush` forgets what it cached, so nothing is read stale.
    """

    tx: Tx
    terms: dict[str, ContractTerms | None] = field(default_factory=dict)
    accounts: dict[str, AccountSpec] = field(default_factory=dict)
    _priced: dict[store.HourKey, store.PricedHour | None] = field(default_factory=dict)
    _priced_dirty: dict[store.HourKey, store.PricedHour] = field(default_factory=dict)
    _charges: list[tuple[store.ChargeRow, bool]] = field(default_factory=list)
    _exposures: dict[str, store.Exposure] = field(default_factory=dict)
    _exposures_dirty: set[str] = field(default_factory=set)
    _invoiced: dict[tuple[str, datetime], bool] = field(default_factory=dict)
    limits: dict[int, list[tuple[str, datetime]]] = field(default_factory=dict)
    """Per partition, the credit-limit versions this batch's usage watermarks pass, read once when the
    batch locks their contracts (``watermarks.read_limits_taking_effect``)."""

    async def prefetch_terms(self, contract_ids: Iterable[str]) -> None:
        """Load the terms of ``contract_ids`` not known yet, in one round trip (a contract with none stays
        unknown here: :meth:`terms_of` asks again, as it would have)."""
        missing = sorted({c for c in contract_ids if c not in self.terms})
        if missing:
            self.terms.update(await contracts_store.load_many(self.tx.conn, store.SCHEMA, missing))

    async def terms_of(self, contract_id: str) -> ContractTerms | None:
        if contract_id not in self.terms:
            self.terms[contract_id] = await contracts_store.load_terms(self.tx.conn, store.SCHEMA, contract_id)
        return self.terms[contract_id]

    def use(self, *specs: AccountSpec) -> tuple[str, ...]:
        for spec in specs:
            self.accounts[spec.code] = spec
        return tuple(spec.code for spec in specs)

    async def prefetch(self, keys: Iterable[store.HourKey]) -> None:
        """Load the priced hours of ``keys`` not known yet, in one round trip."""
        missing = sorted({k for k in keys if k not in self._priced})
        found = await store.load_priced_many(self.tx.conn, missing)
        for key in missing:
            self._priced[key] = found.get(key)

    async def priced(self, key: store.HourKey) -> store.PricedHour | None:
        if key not in self._priced:
            await self.prefetch((key,))
        return self._priced[key]

    def save_priced(self, hour: store.PricedHour) -> None:
        key = (hour.allocation_id, hour.meter, hour.hour_start)
        self._priced[key] = self._priced_dirty[key] = hour

    def insert_charge(self, charge: store.ChargeRow, *, invoiced: bool) -> None:
        self._charges.append((charge, invoiced))

    async def exposure(self, contract_id: str) -> store.Exposure:
        if contract_id not in self._exposures:
            self._exposures[contract_id] = await store.load_exposure(self.tx.conn, contract_id)
        return self._exposures[contract_id]

    def save_exposure(self, contract_id: str, exposure: store.Exposure) -> None:
        self._exposures[contract_id] = exposure
        self._exposures_dirty.add(contract_id)

    async def period_invoiced(self, contract_id: str, period_start: datetime) -> bool:
        key = (contract_id, period_start)
        if key not in self._invoiced:
            self._invoiced[key] = await store.period_invoiced(self.tx.conn, contract_id, period_start)
        return self._invoiced[key]

    async def flush(self) -> None:
        """Write what waits (priced hours, then charges in booking order, then exposures) and forget
        every cached row, so what runs next reads the tables."""
        conn = self.tx.conn
        await store.save_priced_many(conn, list(self._priced_dirty.values()))
        await store.insert_charges(conn, self._charges)
        await store.save_exposures(conn, {c: self._exposures[c] for c in self._exposures_dirty})
        self._priced.clear()
        self._priced_dirty.clear()
        self._charges.clear()
        self._exposures.clear()
        self._exposures_dirty.clear()
        self._invoiced.clear()


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
