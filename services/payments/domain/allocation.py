"""R11: which invoices the money a renter sent pays, computed from the facts in event time. Pure.

The result is a function of the *set* of facts of one renter in one currency — invoices, credit notes,
money in (receipts, collections, dispute reversals) and money out (refunds, disputes) — never of the
order the fleet learnt them in: the payments service recomputes it whenever a fact arrives and posts
the difference. The walk, in event time:

* an invoice exists from the end of its period (``exists_at``); at one instant, invoices come first,
  then credit notes, then money in (ordered by ``order_key``, i.e. ``receipt_id``), then money out;
* money in pays first the open invoice whose number its reference contains (case-insensitive; if
  several, the oldest), then the other open invoices oldest first (due date, period start,
  ``contract_id``, number); each takes at most its remaining amount; the rest is credit balance;
* credit balance pays invoices as they are issued (the same order);
* a credit note changes what an invoice asks for: a negative one reduces the remaining amount, and
  what exceeds it is refunded from what was paid on that invoice (a refund to the original payment),
  any further excess becoming credit balance (Settle extension); a positive one (a late charge on a
  contract that has ended) raises the remaining amount (Settle extension);
* money out (a refund or a dispute) takes back at most what was paid on its invoice.

Amounts are integers in the currency's minor unit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


@dataclass(frozen=True)
class InvoiceFact:
    invoice_id: str
    number: str
    contract_id: str
    exists_at: datetime
    """The end of the invoice's period (R11: an invoice exists from the end of its period)."""
    due_at: datetime
    period_start: datetime
    amount_due_minor: int

    @property
    def order(self) -> tuple[datetime, datetime, str, str]:
        """R11's "oldest first": due date, then period start, then contract (then number, to be total)."""
        return (self.due_at, self.period_start, self.contract_id, self.number)


@dataclass(frozen=True)
class CreditNoteFact:
    credit_note_id: str
    invoice_number: str
    at: datetime
    total_minor: int
    """Signed: negative credits the invoice, positive charges more."""


MoneyInKind = Literal["receipt", "collection", "dispute_reversal", "dispute_loss"]
MoneyOutKind = Literal["refund", "dispute"]


@dataclass(frozen=True)
class MoneyIn:
    source_id: str
    kind: MoneyInKind
    amount_minor: int
    at: datetime
    reference: str = ""
    order_key: str = ""
    """Several receipts at one instant apply in this order (R11: ``receipt_id``)."""

    def __post_init__(self) -> None:
        assert self.amount_minor > 0, f"money in {self.source_id} must be positive"


@dataclass(frozen=True)
class MoneyOut:
    source_id: str
    kind: MoneyOutKind
    invoice_number: str
    amount_minor: int
    at: datetime

    def __post_init__(self) -> None:
        assert self.amount_minor > 0, f"money out {self.source_id} must be positive"


@dataclass(frozen=True)
class Application:
    """``amount_minor`` of ``source_id`` paid ``invoice_number`` at ``at`` (negative: taken back)."""

    source_id: str
    invoice_number: str
    amount_minor: int
    at: datetime


@dataclass(frozen=True)
class StatusPoint:
    at: datetime
    amount_due_minor: int
    paid_minor: int
    remaining_minor: int


@dataclass(frozen=True)
class InvoiceBalance:
    invoice: InvoiceFact
    amount_due_minor: int
    """After credit notes (never below zero)."""
    paid_minor: int
    remaining_minor: int
    paid_at: datetime | None
    """When the remaining amount last reached zero (None while something remains)."""
    changed_at: datetime
    """The instant of the last fact that changed what is due, paid or remaining (the invoice's own
    instant when nothing did): a status's ``as_of`` — a function of the facts, never of how they were
    batched."""
    history: tuple[StatusPoint, ...] = ()
    """What the invoice asked for and had been paid after each instant that changed it, from its issue on
    (the last point is this balance): a reader that wants "paid as of T" (R15's planning) gets it whatever
    facts one recomputation took in."""

    @property
    def status(self) -> Literal["open", "partially_paid", "paid"]:
        if self.remaining_minor == 0:
            return "paid"
        return "partially_paid" if self.paid_minor > 0 else "open"


@dataclass(frozen=True)
class Allocation:
    invoices: dict[str, InvoiceBalance]
    """By invoice number."""
    applications: tuple[Application, ...]
    credit_balance_minor: int
    money_in_minor: int
    credit_note_refunds: tuple[Application, ...]
    """Paid money a credit note gave back (``source_id`` = the credit note; amounts positive)."""
    money_out_taken: dict[str, int]
    """Per money-out id, what it actually took back (capped at what was paid)."""
    credit_note_excess_minor: int
    """Credit-note amounts beyond what the invoice asked for and had been paid: credit balance."""

    @property
    def applied_minor(self) -> int:
        return sum(b.paid_minor for b in self.invoices.values())

    @property
    def refunded_by_credit_notes_minor(self) -> int:
        return sum(a.amount_minor for a in self.credit_note_refunds)


@dataclass
class _Open:
    fact: InvoiceFact
    due: int
    paid: int = 0
    paid_at: datetime | None = None
    changed_at: datetime | None = None
    history: list[StatusPoint] = field(default_factory=list)

    def snapshot(self, at: datetime) -> None:
        """The state at the end of instant ``at`` (one point per instant; none when nothing moved)."""
        point = StatusPoint(at, max(self.due, 0), self.paid, self.remaining)
        if self.history and self.history[-1].at == at:
            self.history[-1] = point
        elif not self.history or (self.history[-1].amount_due_minor, self.history[-1].paid_minor) != (
            point.amount_due_minor,
            point.paid_minor,
        ):
            self.history.append(point)

    @property
    def remaining(self) -> int:
        return max(self.due - self.paid, 0)


@dataclass
class _Walk:
    invoices: dict[str, _Open] = field(default_factory=dict)
    credit: int = 0
    applications: list[Application] = field(default_factory=list)
    refunds: list[Application] = field(default_factory=list)
    taken: dict[str, int] = field(default_factory=dict)
    excess: int = 0

    def open_oldest_first(self) -> list[_Open]:
        return sorted((i for i in self.invoices.values() if i.remaining > 0), key=lambda i: i.fact.order)

    def pay(self, inv: _Open, source_id: str, amount: int, at: datetime) -> int:
        take = min(amount, inv.remaining)
        if take > 0:
            inv.paid += take
            inv.changed_at = at
            if inv.remaining == 0:
                inv.paid_at = at
            self.applications.append(Application(source_id, inv.fact.number, take, at))
        return take

    def spread(self, source_id: str, amount: int, at: datetime, reference: str) -> int:
        """Pay the referenced invoice, then the others oldest first; returns what is left."""
        wanted = reference.casefold()
        if wanted:
            matching = [i for i in self.open_oldest_first() if i.fact.number.casefold() in wanted]
            if matching:
                amount -= self.pay(matching[0], source_id, amount, at)
        for inv in self.open_oldest_first():
            if amount == 0:
                break
            amount -= self.pay(inv, source_id, amount, at)
        return amount

    def use_credit(self, at: datetime) -> None:
        if self.credit > 0:
            self.credit = self.spread("credit_balance", self.credit, at, "")

    def credit_note(self, note: CreditNoteFact) -> None:
        inv = self.invoices.get(note.invoice_number)
        if inv is None:  # the caller keeps a note until its invoice is known
            return
        inv.changed_at = note.at
        if note.total_minor >= 0:
            inv.due += note.total_minor
            if inv.remaining > 0:
                inv.paid_at = None
            return
        credit = -note.total_minor
        reduced = min(credit, inv.remaining)  # an open invoice: the note reduces the amount due
        back = min(credit - reduced, inv.paid)  # a paid one: a refund to the original payment
        inv.due -= reduced + back
        if back > 0:
            inv.paid -= back
            self.refunds.append(Application(note.credit_note_id, inv.fact.number, back, note.at))
            self.applications.append(Application(note.credit_note_id, inv.fact.number, -back, note.at))
        beyond = credit - reduced - back
        if beyond > 0:
            self.excess += beyond
            self.credit += beyond
        if inv.remaining == 0 and inv.paid_at is None:
            inv.paid_at = note.at

    def money_out(self, out: MoneyOut) -> None:
        inv = self.invoices.get(out.invoice_number)
        take = min(out.amount_minor, inv.paid) if inv is not None else 0
        self.taken[out.source_id] = take
        if inv is None or take == 0:
            return
        inv.paid -= take
        inv.changed_at = out.at
        inv.paid_at = None if inv.remaining > 0 else inv.paid_at
        self.applications.append(Application(out.source_id, inv.fact.number, -take, out.at))


def allocate(
    invoices: list[InvoiceFact],
    money_in: list[MoneyIn],
    *,
    credit_notes: list[CreditNoteFact] | None = None,
    money_out: list[MoneyOut] | None = None,
) -> Allocation:
    """R11 for one renter in one currency. The inputs may come in any order; the result does not."""
    numbers = [i.number for i in invoices]
    assert len(numbers) == len(set(numbers)), "one fact per invoice"
    sources = [m.source_id for m in money_in]
    assert len(sources) == len(set(sources)), "one fact per money-in id (a repeated receipt has no effect)"
    by_instant: dict[datetime, list[tuple[int, tuple[str, ...], object]]] = defaultdict(list)
    for inv in invoices:
        by_instant[inv.exists_at].append((0, (inv.contract_id, inv.number), inv))
    for note in credit_notes or []:
        by_instant[note.at].append((1, (note.credit_note_id,), note))
    for m in money_in:
        # A dispute's return or write-off comes after the withdrawal it answers when both share an
        # instant (it names the invoice the withdrawal re-opened).
        rank = 4 if m.kind in ("dispute_reversal", "dispute_loss") else 2
        by_instant[m.at].append((rank, (m.order_key or m.source_id, m.source_id), m))
    for out in money_out or []:
        by_instant[out.at].append((3, (out.source_id,), out))

    walk = _Walk()
    total_in = 0
    for at in sorted(by_instant):
        issued = False
        for _, _, fact in sorted(by_instant[at], key=lambda e: (e[0], e[1])):
            if isinstance(fact, InvoiceFact):
                walk.invoices[fact.number] = _Open(fact, fact.amount_due_minor, paid_at=None, changed_at=at)
                walk.invoices[fact.number].history.append(
                    StatusPoint(at, max(fact.amount_due_minor, 0), 0, max(fact.amount_due_minor, 0))
                )
                issued = True
                if fact.amount_due_minor <= 0:
                    walk.invoices[fact.number].paid_at = at
                continue
            if issued:  # the instant's invoices are all in: credit balance pays them (oldest first)
                walk.use_credit(at)
                issued = False
            if isinstance(fact, CreditNoteFact):
                walk.credit_note(fact)
                walk.use_credit(at)
            elif isinstance(fact, MoneyIn):
                total_in += fact.amount_minor
                walk.credit += walk.spread(fact.source_id, fact.amount_minor, at, fact.reference)
            elif isinstance(fact, MoneyOut):
                walk.money_out(fact)
                walk.use_credit(at)  # Settle: a re-opened invoice is paid from credit balance like a new one
        if issued:
            walk.use_credit(at)
        for o in walk.invoices.values():
            if o.changed_at == at:
                o.snapshot(at)

    balances = {
        number: InvoiceBalance(
            o.fact,
            max(o.due, 0),
            o.paid,
            o.remaining,
            o.paid_at if o.remaining == 0 else None,
            o.changed_at or o.fact.exists_at,
            tuple(o.history),
        )
        for number, o in walk.invoices.items()
    }
    result = Allocation(
        invoices=balances,
        applications=tuple(walk.applications),
        credit_balance_minor=walk.credit,
        money_in_minor=total_in,
        credit_note_refunds=tuple(walk.refunds),
        money_out_taken=dict(walk.taken),
        credit_note_excess_minor=walk.excess,
    )
    _check(result, sum(walk.taken.values()))
    return result


def remaining_at(
    invoices: list[InvoiceFact],
    money_in: list[MoneyIn],
    *,
    number: str,
    at: datetime,
    credit_notes: list[CreditNoteFact] | None = None,
    money_out: list[MoneyOut] | None = None,
) -> int:
    """R14: what invoice ``number`` still asks for when an attempt starts at ``at`` — R11 over the facts
    dated at or before ``at`` only. The walk is causal (a fact never changes what came before it), so money
    received after ``at`` never lowers the amount charged, however early the fleet happened to read it: it
    goes where R11 sends it (other invoices, then the credit balance)."""
    result = allocate(
        [i for i in invoices if i.exists_at <= at],
        [m for m in money_in if m.at <= at],
        credit_notes=[n for n in credit_notes or [] if n.at <= at],
        money_out=[o for o in money_out or [] if o.at <= at],
    )
    balance = result.invoices.get(number)
    return 0 if balance is None else balance.remaining_minor


def _check(result: Allocation, taken_back: int) -> None:
    """Money is conserved: what came in is applied, refunded, taken back or held as credit."""
    applied = result.applied_minor
    assert result.credit_balance_minor >= 0
    assert all(0 <= b.paid_minor <= b.amount_due_minor for b in result.invoices.values())
    # in + credit-note excess = applied (net) + credit + refunded by notes + taken back by money out
    lhs = result.money_in_minor + result.credit_note_excess_minor
    rhs = applied + result.credit_balance_minor + result.refunded_by_credit_notes_minor + taken_back
    assert lhs == rhs, f"allocation does not conserve money: {lhs} != {rhs}"
