"""The gateway port: what the payments service asks of any card or debit processor.

Every call carries our own idempotency key; an adapter never raises for a processor answer. It maps
the answer to one of four outcomes, and a transport failure after the request may have reached the
processor (timeout, connection reset mid-response) to ``unknown`` — never to ``failed``. Amounts are
integers in the currency's minor unit. Adapters are I/O; the payments domain never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Outcome = Literal["succeeded", "declined", "error", "unknown"]
"""``declined``: the processor refused (``code`` says why; soft or hard is configuration).
``error``: definitely not charged (4xx validation, 5xx before processing, connection refused).
``unknown``: we cannot tell whether money moved; resolve with :meth:`Gateway.inquire`."""


@dataclass(frozen=True)
class ChargeRequest:
    attempt_id: str
    """Ours; sent as metadata so an inquiry can find the charge without its processor id."""
    idempotency_key: str
    amount_minor: int
    currency: str
    """ISO 4217, upper case (adapters lower-case it for processors that want that)."""
    token: str
    """A processor token (``tok_…``/``pm_…``); never a card or account number."""
    invoice_number: str
    renter_id: str


@dataclass(frozen=True)
class ChargeResult:
    outcome: Outcome
    charge_id: str | None = None
    """The processor's id of the charge (PaymentIntent id, PSP reference), when it told us."""
    code: str | None = None
    """Decline or error code as the processor spells it (``card_declined/insufficient_funds``…)."""
    message: str = ""
    fee_minor: int | None = None


@dataclass(frozen=True)
class InquiryResult:
    found: bool
    """False: the processor has no charge for this attempt (it never made one)."""
    result: ChargeResult | None = None


@dataclass(frozen=True)
class RefundResult:
    outcome: Outcome
    refund_id: str | None = None
    code: str | None = None
    message: str = ""


@dataclass(frozen=True)
class BalanceTransaction:
    """One line of the processor's balance report (charges, refunds, fees, disputes, payouts)."""

    id: str
    type: str
    """``charge``, ``refund``, ``dispute``, ``dispute_reversal``, ``payout``, ``adjustment``."""
    source: str
    """The charge, refund, dispute or payout it belongs to."""
    amount_minor: int
    fee_minor: int
    net_minor: int
    currency: str
    created: datetime
    available_on: datetime
    reference: str | None = None
    """Our attempt id or idempotency key when the processor echoes it (metadata)."""


class Gateway(Protocol):
    name: str
    """Configuration name (``stripe``, ``ledgerpay``…): the routing key and the ledger's clearing account."""

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Create and confirm one charge. Replaying the same key returns the first result."""
        ...

    async def inquire(self, attempt_id: str, idempotency_key: str) -> InquiryResult:
        """What became of an attempt whose outcome is unknown (R14 inquiry), found by our attempt id."""
        ...

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        """Refund part or all of a succeeded charge."""
        ...

    async def balance_transactions(self, *, since: datetime | None = None) -> list[BalanceTransaction]:
        """The processor's balance report (reconciliation, fees)."""
        ...

    async def close(self) -> None: ...
