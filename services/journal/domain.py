"""Pure rules of a manual transfer: amount in exact ledger units, the entry, the floor decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from libs.errors import InvalidAmountError
from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, build_entry, credit, debit
from libs.money import currency_exponent, minor_to_ledger
from schemas.events import TransferRequested


def amount_minor_of(amount: Decimal, currency: str) -> int:
    """A positive amount with at most the currency's minor digits → minor units (never rounded)."""
    scaled = amount.scaleb(currency_exponent(currency))
    if amount <= 0 or scaled != scaled.to_integral_value():
        raise InvalidAmountError(
            f"transfer amount {amount} {currency} must be positive with at most "
            f"{currency_exponent(currency)} decimal places"
        )
    return int(scaled)


@dataclass(frozen=True)
class TransferPlan:
    entry: Entry
    accounts: tuple[AccountSpec, AccountSpec]
    amount_units: int


def plan_transfer(
    request: TransferRequested, *, event_id: str, occurred_at: datetime, correlation_id: str | None
) -> TransferPlan:
    units = minor_to_ledger(amount_minor_of(request.amount, request.currency), request.currency)
    if request.from_account == request.to_account:
        raise InvalidAmountError("a transfer needs two different accounts")
    floor = None
    if request.from_floor is not None:
        floor = (
            0
            if request.from_floor == 0
            else minor_to_ledger(amount_minor_of(request.from_floor, request.currency), request.currency)
        )
    source = AccountSpec(request.from_account, request.currency, request.from_type, owner="operator", floor_units=floor)
    target = AccountSpec(request.to_account, request.currency, request.to_type, owner="operator")
    entry = build_entry(
        id=derive_id("entry", "journal", request.transfer_id),
        cause_id=event_id,
        kind="journal.transfer",
        occurred_at=occurred_at,
        postings=[
            credit(request.from_account, units, request.currency),
            debit(request.to_account, units, request.currency),
        ],
        correlation_id=correlation_id,
        description=request.memo,
    )
    assert entry is not None, "a positive amount between two accounts always posts"
    return TransferPlan(entry, (source, target), units)


def allows(balance_units: int, normal_balance: str, floor_units: int | None, credit_units: int) -> bool:
    """Would crediting ``credit_units`` keep the account at or above its floor (on its normal side)?"""
    if floor_units is None:
        return True
    after = balance_units - credit_units
    normal_after = after if normal_balance == "debit" else -after
    return normal_after >= floor_units
