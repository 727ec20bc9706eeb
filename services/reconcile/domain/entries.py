"""What processor reports put in the ledger (R17: "processor fees are ledgered from the reports").

Pure: a processor's balance transactions in, journal entries out; the CLI posts them
(``settle processor import``), once — entry ids and causes derive from the gateway and the line id, so a
second import builds the same entries and the ledger's unique (cause, kind) refuses a second posting.

* a line's fee ``f`` (charges 2.9 % + 30…; negative when the processor gives a fee back) — except a
  dispute's fee, which the payments service posts from the dispute webhook (``payments.dispute_fee``)::

      Dr platform processor_fees:<gateway>   f      Cr platform processor_clearing:<gateway>   f

* a payout (the processor sweeps its balance, net of fees, to our bank account; amount ``−p``)::

      Dr platform cash_clearing              p      Cr platform processor_clearing:<gateway>   p

  The cash side is what the bank statement must confirm: reconciliation matches it with the bank line
  and the processor's payout line (three-way). A failed payout (positive amount) books the other way.

The charges, refunds and disputes themselves are the payments service's entries; reconciliation only
checks them against these lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger.postings import AccountSpec, Entry, build_entry, credit, debit
from libs.money import minor_to_ledger

BANK_FEE_KIND = "reconcile.bank_fee"
FEE_KIND = "reconcile.processor_fee"
PAYOUT_KIND = "reconcile.processor_payout"
REPORT_KINDS = (FEE_KIND, PAYOUT_KIND)
FEES_LEDGERED_ELSEWHERE = frozenset({"dispute"})
"""Line types whose fee the payments service posts itself (``payments.dispute_fee``, from the
processor's dispute webhook): the report must not post it a second time."""


@dataclass(frozen=True, slots=True)
class ProcessorLine:
    """One balance transaction of a processor report, in integer minor units (signed as reported)."""

    gateway: str
    txn_id: str
    type: str
    """``charge``, ``refund``, ``dispute``, ``dispute_reversal``, ``payout``, ``adjustment``."""
    source: str
    """The charge, refund, dispute or payout the line belongs to (a payout line: the payout id)."""
    amount_minor: int
    fee_minor: int
    net_minor: int
    currency: str
    created_at: datetime
    available_at: datetime
    reference: str | None = None
    """Our attempt id (charge metadata) when the processor echoes it."""

    def __post_init__(self) -> None:
        assert self.net_minor == self.amount_minor - self.fee_minor, f"{self.txn_id}: net ≠ amount − fee"
        assert self.created_at.tzinfo is not None


def cause_of(line: ProcessorLine) -> str:
    """The cause id of the entries built from a line: gateway and processor id (unique across gateways)."""
    return f"{line.gateway}:{line.source if line.type == 'payout' else line.txn_id}"


def report_entries(lines: Iterable[ProcessorLine]) -> tuple[list[Entry], list[AccountSpec]]:
    """The fee and payout entries of report lines (sorted by line, none for a zero fee), and the accounts."""
    entries: list[Entry] = []
    specs: dict[str, AccountSpec] = {}
    for line in sorted(lines, key=lambda x: (x.gateway, x.txn_id)):
        clearing = chart.processor_clearing(line.gateway, line.currency)
        if line.fee_minor and line.type not in FEES_LEDGERED_ELSEWHERE:
            fees = chart.processor_fees(line.gateway, line.currency)
            units = minor_to_ledger(line.fee_minor, line.currency)
            entry = build_entry(
                id=derive_id("reconcile.fee", line.gateway, line.txn_id),
                cause_id=f"{line.gateway}:{line.txn_id}",
                kind=FEE_KIND,
                occurred_at=line.created_at,
                postings=[debit(fees.code, units, line.currency), credit(clearing.code, units, line.currency)],
                description=f"{line.gateway} fee on {line.type} {line.source} ({line.txn_id})",
            )
            assert entry is not None
            entries.append(entry)
            specs[fees.code], specs[clearing.code] = fees, clearing
        if line.type == "payout" and line.amount_minor:
            cash = chart.cash_clearing(line.currency)
            units = minor_to_ledger(-line.amount_minor, line.currency)  # a payout leaves the balance: −p
            entry = build_entry(
                id=derive_id("reconcile.payout", line.gateway, line.source),
                cause_id=cause_of(line),
                kind=PAYOUT_KIND,
                occurred_at=line.created_at,
                postings=[debit(cash.code, units, line.currency), credit(clearing.code, units, line.currency)],
                description=f"{line.gateway} payout {line.source} to our bank account",
            )
            assert entry is not None
            entries.append(entry)
            specs[cash.code], specs[clearing.code] = cash, clearing
    return entries, list(specs.values())


def bank_fee_entry(
    *, line_id: str, amount_minor: int, currency: str, on: datetime, references: Iterable[str], reason: str
) -> tuple[Entry, list[AccountSpec]]:
    """A fee the bank took from our account, seen only on its statement (a ``missing_in_ledger`` bank
    debit) and posted by an operator (``settle reconcile post-fee``)::

        Dr platform bank_fees   f      Cr platform cash_clearing   f

    Once per bank line (id and cause derive from the line's hash). The description names the line's
    references, so the next run matches the entry with the line by reference."""
    fees, cash = chart.bank_fees(currency), chart.cash_clearing(currency)
    units = minor_to_ledger(amount_minor, currency)
    refs = " ".join(references)
    entry = build_entry(
        id=derive_id("reconcile.bank_fee", line_id),
        cause_id=f"bank:{line_id}",
        kind=BANK_FEE_KIND,
        occurred_at=on,
        description=f"bank fee {refs} ({reason})"[:500] if refs else f"bank fee ({reason})"[:500],
        postings=[debit(fees.code, units, currency), credit(cash.code, units, currency)],
    )
    assert entry is not None, "a fee is never zero"
    return entry, [fees, cash]
