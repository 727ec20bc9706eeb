"""Issue 11's invariant as an operator check: every saga's state matches what payments, payouts and the
ledger hold (``settle sagas verify``).

The saga worker decides from events; this reads the other side's own records, afterwards, and lists
where they part. Checked per saga:

* ``needs_operator`` says why; ``compensated`` has compensations, all done;
* **collection** (where payments knows the invoice): ``completed`` ⇒ payments has it ``paid`` with
  nothing remaining; an invoice payments has ``past_due`` ⇒ its saga holds the earnings
  (``hold_earnings``) and is not ``completed``;
* **hold_earnings** answered by payouts ⇒ payouts holds the invoice's earnings
  (``payouts.earnings_holds``), released once payments has the invoice paid;
* **clawback / reverse_supplier_share** answered by payouts ⇒ each supplier line it answered is one
  ``payouts.clawbacks`` row of that amount, and the ledger has its entry: exactly
  Dr ``supplier_clawbacks_receivable`` / Cr ``supplier_clawbacks`` (``dispute_losses`` for a lost
  dispute's share) of that amount — the reversal postings exist and balance;
* **reverse_revenue** (where payments knows the invoice) ⇒ payments recorded the dispute lost and its
  ``dispute_loss`` entry is in the ledger for the dispute's amount;
* a compensation payouts answered ``failed`` while the saga counts it done (acknowledgements not awaited)
  is a violation: the saga cannot see it;
* a payout the saga saw settle (``SETTLE_SAGA_FOLLOW_PAYOUTS``) is ``completed`` at payouts;
* with payouts followed (``follow_payouts``): a ``completed`` saga has no payout at payouts that is not
  completed and whose plan named its invoice (``payouts.payouts.invoice_numbers``, kept since migration
  0103; a waiting plan with nothing payable owes nothing) — the cycle did not end while payouts still owes
  a supplier of it.

And the other way round, for the whole database: every clawback at payouts, and every clawback entry in
the ledger, traces back to a saga's compensation — nothing compensated that no saga asked for, nothing
posted twice.

A compensation payouts has not answered yet is *waiting*, not a violation (with acknowledgements not
awaited the saga counts a request in the outbox as done; payouts may be behind). Read-only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from domain.contracts import chart
from libs.money import format_minor, minor_to_ledger
from services.payments import processor_events

SUPPLIER_SIDE = ("clawback", "reverse_supplier_share")


@dataclass(frozen=True)
class Violation:
    invoice_number: str
    rule: str
    detail: str

    def line(self) -> str:
        return f"{self.invoice_number or '-'}: {self.rule}: {self.detail}"


@dataclass
class SagaCheck:
    sagas: Counter[str] = field(default_factory=Counter)
    """Sagas checked, by state."""
    compensations: Counter[str] = field(default_factory=Counter)
    """Compensations checked against the acting side, by kind."""
    waiting: list[str] = field(default_factory=list)
    """``kind:ref`` of compensations payouts has not answered yet."""
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {
            "sagas": dict(self.sagas),
            "compensations": dict(self.compensations),
            "waiting": self.waiting,
            "violations": [v.__dict__ for v in self.violations],
        }


async def _entry_postings(conn: asyncpg.Connection, entry_ids: list[str]) -> dict[str, list[tuple[str, int]]]:
    rows = await conn.fetch(
        "select entry_id, account, amount from ledger.postings where entry_id = any($1::text[]) order by entry_id, seq",
        entry_ids,
    )
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in rows:
        out[r["entry_id"]].append((r["account"], int(r["amount"])))
    return {entry: sorted(p) for entry, p in out.items()}


async def _clawback_postings(conn: asyncpg.Connection) -> dict[str, list[tuple[str, int]]]:
    """Every ``payout.clawback`` entry's postings, by its cause — the clawback id (the ledger's (cause, kind)
    key, ``services.payouts.compensations.clawback_entry``)."""
    rows = await conn.fetch(
        """select e.cause_id, p.account, p.amount from ledger.entries e join ledger.postings p on p.entry_id = e.id
            where e.kind = 'payout.clawback'"""
    )
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in rows:
        out[r["cause_id"]].append((r["account"], int(r["amount"])))
    return {cause: sorted(p) for cause, p in out.items()}


def _pair(debit_account: str, credit_account: str, units: int) -> list[tuple[str, int]]:
    """An entry's postings as the ledger keeps them (in account order): one debit, one credit."""
    return sorted([(debit_account, units), (credit_account, -units)])


async def _payouts_owed(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """Invoice number → the payouts not completed whose plan named it (what payouts still owes on it)."""
    rows = await conn.fetch(
        """select payout_id, supplier_id, state, reason, unnest(invoice_numbers) as number from payouts.payouts
            where state <> 'completed' and invoice_numbers is not null
              and not (state = 'waiting' and reason = 'nothing_payable')"""
    )
    out: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        out[r["number"]].append(r)
    return out


async def check(conn: asyncpg.Connection, *, follow_payouts: bool = False) -> SagaCheck:
    """Every saga against payments, payouts and the ledger (see the module). ``follow_payouts``: the saga
    worker's policy (``SETTLE_SAGA_FOLLOW_PAYOUTS``); on, a completed cycle must owe no supplier a payout."""
    result = SagaCheck()
    bad = result.violations.append
    sagas = await conn.fetch("select saga_id, invoice_number, invoice_id, state, reason, facts from saga.sagas")
    comps: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for c in await conn.fetch("select saga_id, kind, ref, state, attempts, last_reason from saga.compensations"):
        comps[c["saga_id"]].append(c)
    status = {r["number"]: r for r in await conn.fetch("select * from payments.invoice_status")}
    disputes = {r["dispute_id"]: r for r in await conn.fetch("select * from payments.disputes")}
    answers: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for r in await conn.fetch("select kind, ref, outcome, reason from payouts.compensation_requests"):
        answers[(r["kind"], r["ref"])].append(r)
    applied = {(r["kind"], r["ref"]): r for r in await conn.fetch("select * from payouts.compensations_applied")}
    clawbacks = {
        (r["supplier_id"], r["kind"], r["ref"]): r for r in await conn.fetch("select * from payouts.clawbacks")
    }
    holds = {r["number"]: r for r in await conn.fetch("select number, released_at from payouts.earnings_holds")}
    payout_states = {
        r["payout_id"]: r["state"] for r in await conn.fetch("select payout_id, state from payouts.payouts")
    }
    postings = await _entry_postings(conn, [processor_events.entry_id("dispute_loss", d) for d in disputes])
    clawback_postings = await _clawback_postings(conn)
    owed = await _payouts_owed(conn) if follow_payouts else {}

    for saga in sagas:
        number, state = saga["invoice_number"], saga["state"]
        result.sagas[state] += 1
        mine = comps[saga["saga_id"]]
        kinds = {c["kind"] for c in mine}
        if state == "needs_operator" and not saga["reason"]:
            bad(Violation(number, "needs_operator_without_reason", "the saga waits for an operator but says not why"))
        if state == "compensated" and (not mine or any(c["state"] != "done" for c in mine)):
            bad(Violation(number, "compensated_not_done", f"compensations: {[(c['kind'], c['state']) for c in mine]}"))
        book = status.get(number)
        if book is not None:
            if state == "completed" and (book["status"] != "paid" or book["remaining_minor"] != 0):
                bad(
                    Violation(
                        number,
                        "completed_but_not_paid",
                        f"payments has it {book['status']} with {book['remaining_minor']} minor units remaining",
                    )
                )
            if book["status"] == "past_due" and ("hold_earnings" not in kinds or state == "completed"):
                bad(Violation(number, "past_due_not_compensated", f"payments has it past due; the saga is {state}"))
        if state == "completed" and owed.get(number):
            names = ", ".join(
                f"{r['payout_id']} of {r['supplier_id']} ({r['reason'] or r['state']})" for r in owed[number]
            )
            bad(Violation(number, "completed_while_payout_owed", f"payouts still owes a payout naming it: {names}"))
        facts = saga["facts"] or {}
        for attempt in facts.get("payouts_settled", {}):
            payout_id = attempt.split("@", 1)[0]
            if payout_states.get(payout_id) != "completed":
                bad(
                    Violation(
                        number,
                        "settled_payout_not_completed",
                        f"the saga saw payout {attempt} settle; payouts has it {payout_states.get(payout_id)}",
                    )
                )
        for c in mine:
            if c["state"] != "done":
                continue
            kind, ref = c["kind"], c["ref"]
            result.compensations[kind] += 1
            if kind == "reverse_revenue":
                _check_reverse_revenue(result, number, ref, book, disputes, postings)
                continue
            if (kind, ref) not in applied:
                failed = [a for a in answers[(kind, ref)] if a["outcome"] == "failed"]
                if failed:
                    bad(
                        Violation(
                            number, "done_but_refused", f"{kind} {ref}: payouts answered {failed[-1]['reason']!r}"
                        )
                    )
                else:
                    result.waiting.append(f"{kind}:{ref}")
                continue
            if kind == "hold_earnings":
                hold = holds.get(number)
                if hold is None:
                    bad(Violation(number, "hold_missing", "payouts answered the hold but holds nothing"))
                elif book is not None and book["status"] == "paid" and hold["released_at"] is None:
                    bad(Violation(number, "hold_not_released", "payments has the invoice paid; payouts still holds"))
                continue
            for line in applied[(kind, ref)]["lines"]:
                if line["action"] != "clawed_back":
                    continue
                _check_clawback(result, number, kind, ref, line, clawbacks, clawback_postings)

    _check_traced(result, comps, clawbacks, clawback_postings)
    return result


def _check_reverse_revenue(
    result: SagaCheck,
    number: str,
    ref: str,
    book: asyncpg.Record | None,
    disputes: dict[str, asyncpg.Record],
    postings: dict[str, list[tuple[str, int]]],
) -> None:
    if book is None:
        return  # payments never saw the invoice: nothing of its books to compare
    dispute = disputes.get(ref)
    if dispute is None or dispute["state"] != "lost":
        state = None if dispute is None else dispute["state"]
        result.violations.append(Violation(number, "dispute_not_lost", f"payments has dispute {ref} as {state}"))
        return
    entry = processor_events.entry_id("dispute_loss", ref)
    units = minor_to_ledger(dispute["amount_minor"], dispute["currency"])
    expected = _pair(
        chart.dispute_losses(dispute["currency"]).code,
        chart.unapplied(dispute["renter_id"], dispute["currency"]).code,
        units,
    )
    if postings.get(entry) != expected:
        result.violations.append(
            Violation(number, "dispute_loss_not_posted", f"{ref}: ledger entry {entry} has {postings.get(entry)}")
        )


def _check_clawback(
    result: SagaCheck,
    number: str,
    kind: str,
    ref: str,
    line: dict[str, Any],
    clawbacks: dict[tuple[str, str, str], asyncpg.Record],
    postings: dict[str, list[tuple[str, int]]],
) -> None:
    supplier, currency = line["supplier_id"], line["currency"]
    row = clawbacks.get((supplier, kind, ref))
    if row is None:
        result.violations.append(
            Violation(number, "clawback_missing", f"{kind} {ref} of {supplier}: no row at payouts")
        )
        return
    units = minor_to_ledger(row["amount_minor"], currency)
    source = chart.dispute_losses(currency) if kind == "reverse_supplier_share" else chart.supplier_clawbacks(currency)
    expected = _pair(chart.supplier_clawbacks_receivable(currency).code, source.code, units)
    posted = postings.get(row["clawback_id"])  # by the entry's cause: the clawback
    if posted != expected or Decimal(str(line["amount"])) != Decimal(format_minor(row["amount_minor"], currency)):
        result.violations.append(
            Violation(
                number,
                "clawback_not_posted",
                f"{kind} {ref} of {supplier}: answered {line['amount']} {currency}, row {row['amount_minor']} minor, "
                f"its ledger entry has {posted}",
            )
        )


def _check_traced(
    result: SagaCheck,
    comps: dict[str, list[asyncpg.Record]],
    clawbacks: dict[tuple[str, str, str], asyncpg.Record],
    clawback_postings: dict[str, list[tuple[str, int]]],
) -> None:
    asked = {(c["kind"], c["ref"]) for rows in comps.values() for c in rows}
    for (supplier, kind, ref), row in sorted(clawbacks.items()):
        if (kind, ref) not in asked:
            result.violations.append(
                Violation("", "clawback_without_saga", f"{kind} {ref} of {supplier} ({row['amount_minor']} minor)")
            )
    known = {r["clawback_id"] for r in clawbacks.values()}
    for cause in sorted(set(clawback_postings) - known):
        result.violations.append(
            Violation("", "clawback_entry_without_clawback", f"a payout.clawback ledger entry caused by {cause}")
        )
