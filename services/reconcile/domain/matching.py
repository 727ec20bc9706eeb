"""R17 matching: ledger ↔ processor reports ↔ bank statements, transaction by transaction (pure).

Three sources of :class:`Record` (amounts are positive integers of minor units; ``direction`` says
whether the money came in to the platform or went out, as that source saw it):

* **ledger** — movements on the platform's cash clearing, processor clearing and payouts-in-transit
  accounts (``services.reconcile.ledger_source`` reads them). ``counterpart`` says which other source
  must confirm the movement: ``processor`` (collections and refunds at a processor) or ``bank``
  (wire receipts, supplier payouts and their returns, processor payouts to our bank account).
* **processor** — balance transactions of the processors' reports (gross ``amount_minor``; the fee is
  apart in ``fee_minor`` and is ledgered from the report, :mod:`services.reconcile.domain.entries`).
  Lines of kind ``payout`` are the processor sweeping its balance to our bank account, net of fees.
* **bank** — booked lines of our bank statements (camt.053, BAI2).

Two legs are matched, each pairwise, then joined into three-way groups:

1. *processor leg*: ledger records whose counterpart is the processor ↔ processor lines other than
   payouts (a collection by our attempt id, a refund by its charge);
2. *bank leg*: ledger records whose counterpart is the bank ↔ bank lines (receipts by wire, supplier
   payouts, returns, processor payouts ledgered from the report);
3. a processor payout line joins the bank-leg group of the ledger record that carries its payout id with
   the same amount and currency — ledger ↔ processor ↔ bank in one match.

Within a leg: **by reference first** (a shared normalized reference and the same direction; the best
candidate has the same currency, then the same amount, then the nearest date, then the smallest sort
position). A reference pair is a match when currency, amount and date (within the window) agree; else a
break ``currency_mismatch``, ``amount_mismatch`` or ``timing`` holding both records. A record left over
that shares a reference, amount, currency and direction with a record already matched by reference is
a ``duplicate``. **Then by amount, currency and direction** with dates at most ``window_days`` business
days apart (Monday to Friday; a weekend day counts as the next Monday), earliest first — greedy on each
(currency, direction, amount) bucket in date order, which pairs as many records as any assignment can.
What is left is a break: ``timing`` while its date is within the window of the reconciliation date (it
may still arrive), else ``missing_in_bank`` / ``missing_at_processor`` (a ledger record nobody
confirmed) or ``missing_in_ledger`` (a bank or processor line the ledger does not know).

Every input record ends in exactly one match or one break; nothing is forced to balance. The result
depends only on the *set* of records: inputs are sorted on a total key first, no wall clock is read.
A break's age is in calendar days from its oldest record's date to the reconciliation date.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Literal

Source = Literal["ledger", "processor", "bank"]
Direction = Literal["in", "out"]
Counterpart = Literal["bank", "processor"]
Reason = Literal[
    "missing_in_bank",
    "missing_in_ledger",
    "missing_at_processor",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate",
    "timing",
]
REASONS: tuple[Reason, ...] = (
    "missing_in_bank",
    "missing_in_ledger",
    "missing_at_processor",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate",
    "timing",
)
Leg = Literal["processor", "bank"]
How = Literal["reference", "amount"]

DEFAULT_WINDOW_DAYS = 3
"""Business days two dates of one movement may lie apart (a wire booked on Friday, valued on Tuesday; a
processor payout initiated on day 0 and credited by day 2), and how long an unmatched record is
``timing`` before it becomes missing. Settable per run (``settle reconcile --window-days``)."""
MAX_WINDOW_DAYS = 60
PROCESSOR_PAYOUT = "payout"
"""``kind`` of a processor line that moves the processor balance to our bank account."""


@dataclass(slots=True)
class Record:
    """One money movement as one source reports it. ``amount_minor`` > 0 (the direction is the sign).

    Never changed once made, but not ``frozen``: a run makes millions of records and matches, and a
    frozen dataclass is about four times as slow to construct (its ``__init__`` goes through
    ``object.__setattr__``; measured 0.88 vs 0.21 µs here) — some 3 s of a million-line run
    (``settle bench reconcile``). Nothing hashes a record. The same holds for :class:`Match` and for
    the rows the sources are read into (``sources.BankEntry``, ``sources.LedgerPosting``)."""

    source: Source
    source_id: str
    """Unique within its source: the ledger entry id and account, the processor's balance transaction
    id, the bank line's hash."""
    amount_minor: int
    currency: str
    on: date
    direction: Direction
    references: tuple[str, ...] = ()
    """Normalized (:func:`normalize_references`): our attempt or payout id, the processor's charge or
    payout id, the bank's end-to-end id and references."""
    counterpart: Counterpart = "bank"
    """Ledger records only: which source must confirm this movement."""
    kind: str = ""
    """The ledger entry's kind, the processor line's type, the bank line's type code."""
    fee_minor: int = 0
    """Processor lines only: the processor's fee on this line (ledgered from the report)."""
    note: str = field(default="", compare=False)
    """For the operator: the bank's remittance text, the ledger entry's kind and account, the processor
    line's type and object. Never used to match."""

    def __post_init__(self) -> None:
        assert self.amount_minor > 0, f"{self.source} {self.source_id}: amounts are positive"
        assert len(self.currency) == 3, f"{self.source} {self.source_id}: currency {self.currency!r}"

    @property
    def sort_key(self) -> tuple[date, str, str, int, str, str]:
        return (self.on, self.currency, self.direction, self.amount_minor, self.source, self.source_id)


@dataclass(slots=True)
class Match:
    """Records of the sources that are one movement (never changed once made; not frozen: see Record)."""

    leg: Leg
    how: How
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class Break:
    reason: Reason
    leg: Leg
    age_days: int
    """Calendar days from the oldest record's date to the reconciliation date."""
    records: tuple[Record, ...]
    overdue: bool
    """Older than the window (business days): an operator must act; ``timing`` breaks never are, nor
    explained ones."""
    explanation: str = ""
    """An operator's explanation of every record of the break (:func:`explain`); empty: unexplained."""

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.source, r.source_id) for r in self.records)


@dataclass(frozen=True, slots=True)
class SourceTotals:
    matched_count: int = 0
    matched_minor: int = 0
    unmatched_count: int = 0
    unmatched_minor: int = 0


@dataclass(frozen=True)
class Reconciliation:
    as_of: date
    window_days: int
    matches: tuple[Match, ...]
    breaks: tuple[Break, ...]
    totals: dict[tuple[Source, str], SourceTotals] = field(default_factory=dict)
    """(source, currency) → matched and unmatched counts and amounts."""

    @property
    def overdue_breaks(self) -> tuple[Break, ...]:
        return tuple(b for b in self.breaks if b.overdue)

    @property
    def explained_breaks(self) -> tuple[Break, ...]:
        return tuple(b for b in self.breaks if b.explanation)


def explain(result: Reconciliation, explanations: Mapping[tuple[str, str], str]) -> Reconciliation:
    """Operators' explanations applied: a break *every* record of which (source, source id) an operator
    explained keeps its reason, age and records — it is still a break, its amounts still unmatched — but
    carries the explanation and is never overdue. A break with one record nobody explained (a new line
    joined it) stays as it is. Matching never reads explanations: they cannot make anything match."""
    if not explanations:
        return result
    breaks = []
    for b in result.breaks:
        if all(k in explanations for k in b.keys):
            text = "; ".join(dict.fromkeys(explanations[k] for k in b.keys))
            b = Break(b.reason, b.leg, b.age_days, b.records, False, text)
        breaks.append(b)
    return Reconciliation(result.as_of, result.window_days, result.matches, tuple(breaks), result.totals)


# ------------------------------------------------------------------------------------------ calendar


@lru_cache(maxsize=8192)
def business_day_index(day: date) -> int:
    """A count of Monday–Friday days since 0001-01-01 (a Monday); Saturday and Sunday count as the
    following Monday, so Friday → Monday is one business day and the index never decreases."""
    k = day.toordinal() - 1
    return (k // 7) * 5 + min(k % 7, 5)


def business_days_between(a: date, b: date) -> int:
    return abs(business_day_index(a) - business_day_index(b))


def age_bucket(age_days: int) -> str:
    """The metrics' age buckets (calendar days)."""
    if age_days <= 3:
        return "0-3d"
    if age_days <= 7:
        return "4-7d"
    if age_days <= 30:
        return "8-30d"
    return "31d+"


# ---------------------------------------------------------------------------------------- references


def normalize_references(values: Iterable[str | None]) -> tuple[str, ...]:
    """Stripped, case-folded, without empties or the ISO placeholder ``NOTPROVIDED``; sorted, unique."""
    found = {v.strip().casefold() for v in values if v and v.strip()}
    found.discard("notprovided")
    return tuple(sorted(found)) if len(found) > 1 else tuple(found)


def reference_tokens(text: str) -> tuple[str, ...]:
    """Words of a free text that look like ids (≥ 8 characters with a digit): a bank's remittance text
    often carries our payout id or the processor's payout id (``STRIPE PAYOUT po_1N…``)."""
    if not text:
        return ()
    words = text.replace(",", " ").replace(";", " ").replace("/", " ").split()
    return tuple(w for w in words if len(w) >= 8 and any(c.isdigit() for c in w))


# ------------------------------------------------------------------------------------------- matching


@dataclass
class _Outcome:
    matches: list[Match] = field(default_factory=list)
    breaks: list[tuple[Reason, Leg, tuple[Record, ...]]] = field(default_factory=list)


def _pair(
    left: Sequence[Record],
    right: Sequence[Record],
    *,
    leg: Leg,
    missing_right: Reason,
    missing_left: Reason,
    window_days: int,
    as_of_index: int,
    out: _Outcome,
) -> dict[str, int]:
    """Match ``left`` (ledger) with ``right`` (the leg's other source), both sorted. Appends to ``out``;
    returns, per ledger source_id, the index of the group (match or break) it landed in, negative for
    breaks (``-1 - break index``)."""
    taken_left = [False] * len(left)
    taken_right = [False] * len(right)
    group_of: dict[str, int] = {}

    def add_match(i: int, j: int, how: How) -> None:
        group_of[left[i].source_id] = len(out.matches)
        out.matches.append(Match(leg, how, (left[i], right[j])))

    def add_break(reason: Reason, records: tuple[Record, ...], ledger_id: str | None) -> None:
        if ledger_id is not None:
            group_of[ledger_id] = -1 - len(out.breaks)
        out.breaks.append((reason, leg, records))

    # 1. by reference
    by_reference: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(right):
        for ref in r.references:
            by_reference[ref].append(j)
    matched_by_reference: set[tuple[str, str, str, int]] = set()  # (reference, currency, direction, amount)
    for i, rec in enumerate(left):
        if not rec.references:
            continue
        found = (
            by_reference.get(rec.references[0], ())
            if len(rec.references) == 1
            else {j for ref in rec.references for j in by_reference.get(ref, ())}
        )
        candidates = [j for j in found if not taken_right[j] and right[j].direction == rec.direction]
        if not candidates:
            continue
        best = (
            candidates[0]
            if len(candidates) == 1
            else min(
                candidates,
                key=lambda j: (
                    right[j].currency != rec.currency,
                    right[j].amount_minor != rec.amount_minor,
                    business_days_between(right[j].on, rec.on),
                    j,
                ),
            )
        )
        other = right[best]
        taken_left[i] = taken_right[best] = True
        if other.currency != rec.currency:
            add_break("currency_mismatch", (rec, other), rec.source_id)
        elif other.amount_minor != rec.amount_minor:
            add_break("amount_mismatch", (rec, other), rec.source_id)
        elif business_days_between(other.on, rec.on) > window_days:
            add_break("timing", (rec, other), rec.source_id)
        else:
            add_match(i, best, "reference")
            shared = set(rec.references) & set(other.references)
            for ref in shared:
                matched_by_reference.add((ref, rec.currency, rec.direction, rec.amount_minor))

    # 2. duplicates: a leftover that repeats a movement already matched by reference
    def is_duplicate(rec: Record) -> bool:
        return any(
            (ref, rec.currency, rec.direction, rec.amount_minor) in matched_by_reference for ref in rec.references
        )

    if matched_by_reference:
        for j, r in enumerate(right):
            if not taken_right[j] and is_duplicate(r):
                taken_right[j] = True
                add_break("duplicate", (r,), None)
        for i, rec in enumerate(left):
            if not taken_left[i] and is_duplicate(rec):
                taken_left[i] = True
                add_break("duplicate", (rec,), rec.source_id)

    # 3. by amount, currency and direction within the window: earliest first in each bucket
    buckets_right: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for j, r in enumerate(right):
        if not taken_right[j]:
            buckets_right[(r.currency, r.direction, r.amount_minor)].append(j)
    buckets_left: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for i, rec in enumerate(left):
        if not taken_left[i]:
            buckets_left[(rec.currency, rec.direction, rec.amount_minor)].append(i)
    for key in sorted(buckets_left.keys() & buckets_right.keys()):
        rights = buckets_right[key]
        p = 0
        for i in buckets_left[key]:
            day = business_day_index(left[i].on)
            while p < len(rights) and business_day_index(right[rights[p]].on) < day - window_days:
                p += 1
            if p < len(rights) and business_day_index(right[rights[p]].on) <= day + window_days:
                taken_left[i] = taken_right[rights[p]] = True
                add_match(i, rights[p], "amount")
                p += 1

    # 4. leftovers
    for i, rec in enumerate(left):
        if not taken_left[i]:
            young = as_of_index - business_day_index(rec.on) <= window_days
            add_break("timing" if young else missing_right, (rec,), rec.source_id)
    for j, r in enumerate(right):
        if not taken_right[j]:
            young = as_of_index - business_day_index(r.on) <= window_days
            add_break("timing" if young else missing_left, (r,), None)
    return group_of


def reconcile(
    ledger: Iterable[Record],
    processor: Iterable[Record],
    bank: Iterable[Record],
    *,
    as_of: date,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> Reconciliation:
    """Match the three sources (module docstring). Raises ValueError on a repeated (source, source_id)
    or a window outside 0…:data:`MAX_WINDOW_DAYS`."""
    if not 0 <= window_days <= MAX_WINDOW_DAYS:
        raise ValueError(f"window of {window_days} business days is outside 0…{MAX_WINDOW_DAYS}")
    ledger_s = sorted(ledger, key=lambda r: r.sort_key)
    processor_s = sorted(processor, key=lambda r: r.sort_key)
    bank_s = sorted(bank, key=lambda r: r.sort_key)
    for name, records in (("ledger", ledger_s), ("processor", processor_s), ("bank", bank_s)):
        ids = {r.source_id for r in records}
        if len(ids) != len(records):
            raise ValueError(f"{name} records repeat a source id")
        assert all(r.source == name for r in records), f"a record in the {name} list is from another source"
    as_of_index = business_day_index(as_of)
    out = _Outcome()
    _pair(
        [r for r in ledger_s if r.counterpart == "processor"],
        [r for r in processor_s if r.kind != PROCESSOR_PAYOUT],
        leg="processor",
        missing_right="missing_at_processor",
        missing_left="missing_in_ledger",
        window_days=window_days,
        as_of_index=as_of_index,
        out=out,
    )
    bank_ledger = [r for r in ledger_s if r.counterpart == "bank"]
    group_of = _pair(
        bank_ledger,
        bank_s,
        leg="bank",
        missing_right="missing_in_bank",
        missing_left="missing_in_ledger",
        window_days=window_days,
        as_of_index=as_of_index,
        out=out,
    )

    # 3. processor payouts join the bank-leg group of the ledger record carrying their payout id
    ledger_by_reference: dict[str, list[Record]] = defaultdict(list)
    for rec in bank_ledger:
        for ref in rec.references:
            ledger_by_reference[ref].append(rec)
    joined: set[str] = set()  # ledger source ids that already have their processor payout
    extra_match: dict[int, list[Record]] = defaultdict(list)
    extra_break: dict[int, list[Record]] = defaultdict(list)
    for line in (r for r in processor_s if r.kind == PROCESSOR_PAYOUT):
        target = next(
            (
                rec
                for ref in line.references
                for rec in ledger_by_reference.get(ref, ())
                if rec.source_id not in joined
                and rec.currency == line.currency
                and rec.amount_minor == line.amount_minor
            ),
            None,
        )
        if target is None:
            young = as_of_index - business_day_index(line.on) <= window_days
            out.breaks.append(("timing" if young else "missing_in_ledger", "bank", (line,)))
            continue
        joined.add(target.source_id)
        group = group_of[target.source_id]
        (extra_match[group] if group >= 0 else extra_break[-1 - group]).append(line)
    matches = out.matches
    for n, extra in extra_match.items():
        matches[n] = Match(matches[n].leg, matches[n].how, matches[n].records + tuple(extra))
    breaks: list[Break] = []
    for n, (reason, leg, found) in enumerate(out.breaks):
        involved = found + tuple(extra_break.get(n, ()))
        oldest = min(r.on for r in involved)
        overdue = reason != "timing" and as_of_index - business_day_index(oldest) > window_days
        breaks.append(Break(reason, leg, (as_of - oldest).days, involved, overdue))
    ordered_matches = tuple(sorted(matches, key=lambda m: (m.leg, m.records[0].sort_key)))
    ordered_breaks = tuple(sorted(breaks, key=lambda b: (b.reason, b.leg, b.records[0].sort_key)))
    return Reconciliation(as_of, window_days, ordered_matches, ordered_breaks, _totals(ordered_matches, ordered_breaks))


def _totals(matches: Sequence[Match], breaks: Sequence[Break]) -> dict[tuple[Source, str], SourceTotals]:
    counts: dict[tuple[Source, str], list[int]] = {}  # matched count, matched minor, unmatched count, minor
    for groups, at in (((m.records for m in matches), 0), ((b.records for b in breaks), 2)):
        for records in groups:
            for r in records:
                cell = counts.get((r.source, r.currency))
                if cell is None:
                    cell = counts[(r.source, r.currency)] = [0, 0, 0, 0]
                cell[at] += 1
                cell[at + 1] += r.amount_minor
    return {key: SourceTotals(*counts[key]) for key in sorted(counts)}
