"""An independent R11 oracle: what the money a renter sent pays, from BILLING_RULES.md alone.

Input: the invoices and credit notes as the fleet's documents state them (their amounts are checked
against :mod:`tests.scenarios.oracle` elsewhere) and the ``payment.received`` events as published. No
payments code is used. Output per invoice: amount due after credit notes, paid, remaining and the
status; per (renter, currency): the credit balance left.

R11 as written, walked in event time per renter and currency: an invoice exists from the end of its
period; at one instant invoices come first (oldest first among themselves), then credit notes, then
receipts in ``receipt_id`` order; a repeated (renter, receipt_id) counts once. A receipt pays the open
invoice its reference names, then the other open invoices oldest first (due date, period start,
contract), each at most its remaining amount; the rest is credit balance, which pays invoices as they are
issued. A credit note on an open invoice reduces what it asks for; on what was already paid it is a
refund (paid goes down). Two readings the rules leave open are refused rather than guessed: a positive
credit note, and a credit note larger than its invoice's amount due.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tests.scenarios.oracle import exponent_of


@dataclass
class InvoicePaid:
    key: str
    renter_id: str
    currency: str
    due_at: datetime
    period_start: datetime
    contract_id: str
    amount_due_minor: int
    paid_minor: int = 0

    @property
    def remaining_minor(self) -> int:
        return self.amount_due_minor - self.paid_minor

    @property
    def status(self) -> str:
        if self.remaining_minor == 0:
            return "paid"
        return "partially_paid" if self.paid_minor > 0 else "open"

    def order(self) -> tuple[datetime, datetime, str, str]:
        return (self.due_at, self.period_start, self.contract_id, self.key)


@dataclass(frozen=True)
class Walked:
    invoices: dict[str, InvoicePaid]
    credit_minor: dict[tuple[str, str], int]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def to_minor(amount: str, currency: str) -> int:
    """A document amount (at most the currency's digits) in minor units, exactly."""
    value = Decimal(amount).scaleb(exponent_of(currency))
    assert value == value.to_integral_value(), (amount, currency)
    return int(value)


def walk(
    invoices: Mapping[str, Mapping[str, Any]],
    credit_notes: Iterable[Mapping[str, Any]],
    receipts: Iterable[Mapping[str, Any]],
) -> Walked:
    """``invoices``: key → invoice document (``renter_id``, ``currency``, ``contract_id``, ``period_start``,
    ``period_end``, ``due_at``, ``amount_due``); ``credit_notes``: documents whose ``invoice_number`` is such
    a key; ``receipts``: ``payment.received`` data. A receipt's ``reference`` names an invoice by key."""
    events: dict[tuple[str, str], list[tuple[datetime, int, tuple[Any, ...], Any]]] = defaultdict(list)
    state: dict[str, InvoicePaid] = {}
    for key, doc in invoices.items():
        paid = InvoicePaid(
            key=key,
            renter_id=doc["renter_id"],
            currency=doc["currency"],
            due_at=_time(doc["due_at"]),
            period_start=_time(doc["period_start"]),
            contract_id=doc["contract_id"],
            amount_due_minor=to_minor(doc["amount_due"], doc["currency"]),
        )
        events[(paid.renter_id, paid.currency)].append((_time(doc["period_end"]), 0, paid.order(), paid))
    for note in credit_notes:
        target = invoices[note["invoice_number"]]
        # R10: a prepaid note's wallet part is settled by the wallet; the renter owes or is owed the rest.
        total = to_minor(note["total"], note["currency"]) - to_minor(note.get("prepaid_applied", "0"), note["currency"])
        events[(target["renter_id"], target["currency"])].append(
            (_time(note["issued_at"]), 1, (note["invoice_number"],), (note["invoice_number"], total))
        )
    seen: set[tuple[str, str]] = set()
    for receipt in receipts:
        if (receipt["renter_id"], receipt["receipt_id"]) in seen:
            continue
        seen.add((receipt["renter_id"], receipt["receipt_id"]))
        minor = to_minor(receipt["amount"], receipt["currency"])
        events[(receipt["renter_id"], receipt["currency"])].append(
            (_time(receipt["received_at"]), 2, (receipt["receipt_id"],), (receipt.get("reference") or "", minor))
        )

    credit: dict[tuple[str, str], int] = {}
    for book, happenings in events.items():
        balance = 0
        issued: list[InvoicePaid] = []
        for _, rank, _, what in sorted(happenings, key=lambda e: (e[0], e[1], e[2])):
            if rank == 0:
                invoice: InvoicePaid = what
                state[invoice.key] = invoice
                issued.append(invoice)
                take = min(balance, invoice.remaining_minor)
                invoice.paid_minor += take
                balance -= take
            elif rank == 1:
                key, total = what
                assert total <= 0, f"a positive credit note ({key}, {total}) is not modelled"
                invoice = state[key]
                assert -total <= invoice.amount_due_minor, f"a credit note above its invoice ({key}) is not modelled"
                invoice.amount_due_minor += total
                refund = max(invoice.paid_minor - invoice.amount_due_minor, 0)
                invoice.paid_minor -= refund  # back to the original payment, not to the credit balance
            else:
                reference, amount = what
                wanted = reference.lower()
                named = [i for i in issued if i.remaining_minor > 0 and wanted and i.key.lower() in wanted]
                named_keys = {i.key for i in named}
                rest = [i for i in issued if i.remaining_minor > 0 and i.key not in named_keys]
                rest.sort(key=InvoicePaid.order)
                for invoice in [*sorted(named, key=InvoicePaid.order), *rest]:  # each at most its remaining
                    take = min(amount, invoice.remaining_minor)
                    invoice.paid_minor += take
                    amount -= take
                balance += amount
        credit[book] = balance
    return Walked(state, credit)


__all__ = ["InvoicePaid", "Walked", "to_minor", "walk"]
