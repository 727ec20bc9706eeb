"""The three sources as :class:`~services.reconcile.domain.matching.Record`s (pure).

* :func:`bank_record` — a booked bank line (credit → ``in``, debit → ``out``), references: end-to-end
  id, bank and customer references, id-like words of the remittance text; dated by booking date (else
  value date).
* :func:`processor_record` — a processor balance transaction: gross amount, sign → direction, fee
  apart; a ``payout`` line is money arriving at our bank (``in``), referenced by its payout id.
* :func:`ledger_records` — postings on the accounts of :data:`LEDGER_RULES`: which accounts are money
  that a bank or a processor must confirm, and which side is ``in``.

  ===============================================  ============  ===================================
  account                                          counterpart   notes
  ===============================================  ============  ===================================
  ``platform:cash_clearing:<CUR>``                 bank          receipts, top-ups (Dr = in);
                                                                 processor payouts ledgered from
                                                                 the report (Dr = in)
  ``platform:processor_clearing:<gw>:<CUR>``       processor     collections (Dr = in), refunds and
                                                                 disputes (Cr = out); the report's
                                                                 own fee/payout entries are skipped
  ``platform:payouts_in_transit:<CUR>``            bank          payouts (Cr = out) netted per payout
                                                                 key over planned/held/released/
                                                                 retried/rejected; returns one by
                                                                 one; completions skipped
  ===============================================  ============  ===================================

  A posting's references are its entry's cause id (our attempt id for a collection, the payout id for
  a payout), the id-like words of its description (the processor's dispute id in ``dispute dp_… on
  INV-…``) and, for the report's entries (``<gateway>:<processor id>``), the processor id alone.
  Payments' dispute fees (``payments.dispute_fee``) are skipped like the report's fee entries: the
  processor reports them inside its dispute line, not as a movement of their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction

from libs.money import round_half_even
from services.reconcile.domain.entries import PAYOUT_KIND, REPORT_KINDS, ProcessorLine
from services.reconcile.domain.matching import (
    PROCESSOR_PAYOUT,
    Counterpart,
    Direction,
    Match,
    Record,
    normalize_references,
    reference_tokens,
)

LEDGER_EXTRA_FACTOR = 1_000_000
"""Ledger units per minor unit (``libs.money``: the ledger keeps six more digits)."""


@dataclass(slots=True)
class BankEntry:
    """A bank line as stored (``reconcile.bank_lines``): the rails' ``BankLine`` plus its identity. Not
    frozen, for speed, like :class:`~services.reconcile.domain.matching.Record`."""

    line_hash: str
    file_id: str
    account: str
    currency: str
    amount_minor: int
    direction: str
    """``credit`` or ``debit``, as the bank says."""
    status: str
    booking_date: date | None
    value_date: date | None
    type_code: str = ""
    end_to_end_id: str | None = None
    bank_reference: str | None = None
    customer_reference: str | None = None
    description: str = ""
    return_reason: str | None = None


def bank_record(line: BankEntry) -> Record | None:
    """A booked line with an amount and a date as a record; None for pending, informational or empty lines."""
    day = line.booking_date or line.value_date
    if line.status != "booked" or line.amount_minor <= 0 or day is None:
        return None
    return Record(
        source="bank",
        source_id=line.line_hash,
        amount_minor=line.amount_minor,
        currency=line.currency,
        on=day,
        direction="in" if line.direction == "credit" else "out",
        references=normalize_references(
            (line.end_to_end_id, line.bank_reference, line.customer_reference, *reference_tokens(line.description))
        ),
        kind=line.type_code,
        note=" · ".join(
            x
            for x in (
                line.description or line.type_code,
                f"return {line.return_reason}" if line.return_reason else "",
                f"bank ref {line.bank_reference}" if line.bank_reference else "",
            )
            if x
        ),
    )


def processor_record(line: ProcessorLine) -> Record | None:
    """A balance transaction as a record (None when its gross amount is zero: a fee-only adjustment)."""
    if line.amount_minor == 0:
        return None
    if line.type == PROCESSOR_PAYOUT:
        # The balance goes down by the payout; our bank account goes up by as much.
        direction: Direction = "in" if line.amount_minor < 0 else "out"
        references = normalize_references((line.source, line.txn_id))
    else:
        direction = "in" if line.amount_minor > 0 else "out"
        references = normalize_references((line.reference, line.source, line.txn_id))
    return Record(
        source="processor",
        source_id=f"{line.gateway}:{line.txn_id}",
        amount_minor=abs(line.amount_minor),
        currency=line.currency,
        on=line.created_at.date(),
        direction=direction,
        references=references,
        kind=line.type,
        fee_minor=line.fee_minor,
        note=f"{line.type} {line.source}" + (f" (fee {line.fee_minor})" if line.fee_minor else ""),
    )


@dataclass(slots=True)
class LedgerPosting:
    """One posting on a reconciled account with its entry's identity (``ledger_source`` reads them). Not
    frozen, for speed, like :class:`~services.reconcile.domain.matching.Record`."""

    entry_id: str
    cause_id: str
    kind: str
    occurred_at: datetime
    account: str
    currency: str
    amount_units: int
    """Ledger units, debit positive."""
    description: str = ""
    """The entry's description: its id-like words are references too (``dispute dp_… on INV-…``)."""


@dataclass(frozen=True, slots=True)
class LedgerRule:
    prefix: str
    counterpart: Counterpart
    skip_kinds: tuple[str, ...] = ()
    net_kinds: tuple[str, ...] = ()
    """Entries of these kinds are summed per payout id (the cause id up to its first ``:``)."""


PAYOUT_NET_KINDS = ("payout.planned", "payout.held", "payout.released", "payout.retried", "payout.rejected")
"""Per payout attempt (its ledger key: the payout id, or a retry's rail reference) one movement to the bank:
planned/held/released and a retry put it in transit, a reject (refused before settlement) takes it back."""

LEDGER_RULES: tuple[LedgerRule, ...] = (
    # payout.completed is the consequence of a match (in transit → cash), never a movement to match again.
    LedgerRule("platform:cash_clearing:", "bank", skip_kinds=("payout.completed",)),
    # Fees are checked where they are ledgered (the report's own entries; payments' dispute fees come from
    # the processor's dispute webhook and are part of its dispute line): never matched as movements.
    LedgerRule("platform:processor_clearing:", "processor", skip_kinds=(*REPORT_KINDS, "payments.dispute_fee")),
    LedgerRule("platform:payouts_in_transit:", "bank", skip_kinds=("payout.completed",), net_kinds=PAYOUT_NET_KINDS),
)


def rule_for(account: str, rules: Iterable[LedgerRule] = LEDGER_RULES) -> LedgerRule | None:
    return next((r for r in rules if account.startswith(r.prefix)), None)


def _minor(units: int) -> int:
    whole, rest = divmod(units, LEDGER_EXTRA_FACTOR)
    # Cash moves in whole minor units; a residue (never expected on these accounts) rounds half-even.
    return whole if rest == 0 else round_half_even(Fraction(units, LEDGER_EXTRA_FACTOR))


def _references(posting: LedgerPosting) -> tuple[str, ...]:
    refs = [posting.cause_id, *reference_tokens(posting.description)]
    if posting.kind in REPORT_KINDS and ":" in posting.cause_id:
        refs.append(posting.cause_id.split(":", 1)[1])
    return normalize_references(refs)


def _compact_uuid(payout_id: str) -> str | None:
    """The rails carry a first attempt's payout id (a UUID) without its dashes (ISO's 35 characters)."""
    compact = payout_id.replace("-", "")
    return compact if len(compact) == 32 and compact != payout_id else None


def ledger_records(postings: Iterable[LedgerPosting], rules: Iterable[LedgerRule] = LEDGER_RULES) -> list[Record]:
    """Records of the postings on reconciled accounts (others are ignored); see the module docstring."""
    rules = tuple(rules)
    records: list[Record] = []
    netted: dict[tuple[str, str, str], list[LedgerPosting]] = defaultdict(list)
    rule_of: dict[str, LedgerRule | None] = {}  # a few accounts, millions of postings
    for posting in postings:
        if posting.account not in rule_of:
            rule_of[posting.account] = rule_for(posting.account, rules)
        rule = rule_of[posting.account]
        if rule is None or posting.kind in rule.skip_kinds:
            continue
        if posting.kind in rule.net_kinds:
            netted[(posting.account, posting.currency, posting.cause_id.split(":", 1)[0])].append(posting)
            continue
        minor = _minor(posting.amount_units)
        if minor == 0:
            continue
        records.append(
            Record(
                source="ledger",
                source_id=f"{posting.entry_id}:{posting.account}",
                amount_minor=abs(minor),
                currency=posting.currency,
                on=posting.occurred_at.date(),
                direction="in" if minor > 0 else "out",
                references=_references(posting),
                counterpart=rule.counterpart,
                kind=posting.kind,
                note=f"{posting.kind} · {posting.account}",
            )
        )
    for (account, currency, payout_id), group in sorted(netted.items()):
        rule = rule_for(account, rules)
        assert rule is not None
        minor = _minor(sum(p.amount_units for p in group))
        if minor == 0:
            continue  # e.g. planned, then held: nothing should reach the bank
        records.append(
            Record(
                source="ledger",
                source_id=f"payout:{payout_id}:{account}",
                amount_minor=abs(minor),
                currency=currency,
                on=max(p.occurred_at for p in group).date(),
                direction="in" if minor > 0 else "out",
                references=normalize_references([payout_id, _compact_uuid(payout_id)]),
                counterpart=rule.counterpart,
                kind=min(p.kind for p in group),
                note=f"payout {payout_id} · {account} ({len(group)} entr{'y' if len(group) == 1 else 'ies'})",
            )
        )
    return records


__all__ = [
    "LEDGER_RULES",
    "PAYOUT_KIND",
    "PAYOUT_NET_KINDS",
    "BankEntry",
    "LedgerPosting",
    "LedgerRule",
    "PayoutConfirmation",
    "bank_record",
    "ledger_records",
    "processor_record",
]


@dataclass(frozen=True, slots=True)
class PayoutConfirmation:
    """A supplier payout (one attempt, by its ledger key) matched to a posted bank transaction (R16: only
    then is it ``completed``)."""

    reference: str
    amount_minor: int
    currency: str
    booked_on: date
    bank_record: str


def payout_confirmations(matches: Iterable[Match]) -> list[PayoutConfirmation]:
    """From the bank-leg matches of a run: every netted payout record (``payout:<key>:<account>``, money
    out) matched with a booked bank line (the first by its id when several). Sorted; one per key."""
    found: dict[str, PayoutConfirmation] = {}
    for match in matches:
        if match.leg != "bank":
            continue
        payouts = [
            r
            for r in match.records
            if r.source == "ledger" and r.direction == "out" and r.source_id.startswith("payout:")
        ]
        if not payouts:
            continue
        bank = [r for r in match.records if r.source == "bank"]
        if not bank:
            continue
        line = bank[0] if len(bank) == 1 else min(bank, key=lambda r: r.source_id)
        for r in payouts:
            key = r.source_id.split(":", 2)[1]
            if key not in found:
                found[key] = PayoutConfirmation(key, r.amount_minor, r.currency, line.on, line.source_id)
    return [found[k] for k in sorted(found)]
