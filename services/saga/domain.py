"""The billing cycle's saga as a pure function of what it has seen (issue 11, foundation).

One saga per contract billing period (= per renter invoice). It follows the cycle across services:

    invoice finalized → collected (or dunning) → supplier earnings released (pay-when-paid)
        → payout sent → settled at the bank

and compensates when a step fails. Design: the saga keeps *facts* (:class:`Facts`), merged by
:func:`apply` in a way that is commutative and idempotent (sets keyed by the event's own ids, maxima of
revisions and of event time), and its state is :func:`evaluate` of those facts under a :class:`Policy`.
So the same events in any order, repeated any number of times, give the same state — the property the
tests check with hypothesis. Deadlines are event time (``clock.ticked``): a step that has not answered
by its deadline is asked first (an inquiry), and only compensated when the inquiry's grace has passed.

Compensations are *requested* (:class:`Compensation` keys are (kind, ref), so each is requested at most
once per key; a failed one is retried with its attempt number, never under a new key). What each
requires:

* collection failed after dunning (``invoice.past_due``) → ``hold_earnings`` of the invoice (the suspend
  request is sent by payments with the past-due; the saga records it as a step, exposure is kept);
* a refund or credit note after the supplier's earnings were released / paid out → ``clawback`` (R15:
  a negative line on the supplier's next statement);
* a dispute lost → ``reverse_revenue``, and with ``supplier_charged_back`` also ``reverse_supplier_share``;
* payout returned or rejected → the saga waits for the payee's details to change, then for a new payout.

No wall clock, no random ids: everything here is a function of its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import CompensationKind, SagaState

State = SagaState
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "needs_operator"})
OPEN: frozenset[str] = frozenset(
    {
        "pending",
        "collecting",
        "inquiring",
        "compensating",
        "compensation_failed",
        "awaiting_payout",
        "payout_sent",
        "payout_returned",
    }
)
OPERATOR = "an operator (settle sagas retry)"
DisputePolicy = Literal["platform_absorbs", "supplier_charged_back"]


@dataclass(frozen=True)
class Policy:
    """Configuration of the saga (not code): deadlines in days of event time and the dispute policy."""

    dispute_lost: DisputePolicy = "supplier_charged_back"  # R15: a lost dispute is clawed back
    dunning_days: int = 15
    """R14: retries on day 1..14 after the first try on the due date, so dunning ends by due + 15 days."""
    collection_margin_days: int = 2
    inquiry_grace_days: int = 1
    follow_payouts: bool = False
    """Follow the payout steps (needs payouts.v1 wired to sagas); without it a paid cycle completes when
    the supplier's earnings are released, and a refund after that is clawed back (they may be paid out)."""
    payout_deadline_days: int = 45
    """From release to payout sent: the next month's statement is final and planned by then."""
    settle_deadline_days: int = 5
    await_acknowledgement: bool = False
    """Wait for the acting side to answer each compensation (``CompensationResult``; payouts answers with
    ``payout.compensation_applied|failed``): without it, a request durably in the outbox counts as done and
    the answer, when it comes, is only recorded (``Facts.comp_acked``)."""
    compensation_max_attempts: int = 5
    compensation_retry_hours: tuple[int, ...] = (1, 6, 24, 24)


# --- inputs ---------------------------------------------------------------------------------------------


class Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InvoiceFinalized(Fact):
    kind: Literal["invoice_finalized"] = "invoice_finalized"
    invoice_id: str
    number: str
    contract_id: str
    renter_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    due_at: datetime
    amount_due_minor: int


class PaymentStatus(Fact):
    kind: Literal["payment_status"] = "payment_status"
    revision: int
    status: Literal["open", "partially_paid", "paid", "past_due"]
    amount_paid_minor: int
    amount_remaining_minor: int
    at: datetime


class PastDue(Fact):
    """``invoice.past_due`` from payments: dunning exhausted; payments sent the suspend request with it."""

    kind: Literal["past_due"] = "past_due"
    at: datetime
    reason: str = ""


class Collected(Fact):
    """``payment.succeeded`` / ``receipt.recorded`` naming the invoice: a step of the saga's story."""

    kind: Literal["collected"] = "collected"
    payment_id: str
    amount_minor: int
    at: datetime


class Refunded(Fact):
    kind: Literal["refunded"] = "refunded"
    refund_id: str
    amount_minor: int
    at: datetime
    credit_note_id: str | None = None
    """The credit note this refund carries back to the renter (None: an operator's or processor's refund)."""


class CreditNote(Fact):
    kind: Literal["credit_note"] = "credit_note"
    credit_note_id: str
    amount_minor: int
    at: datetime


class DisputeOpened(Fact):
    kind: Literal["dispute_opened"] = "dispute_opened"
    dispute_id: str
    amount_minor: int
    at: datetime


class DisputeClosed(Fact):
    kind: Literal["dispute_closed"] = "dispute_closed"
    dispute_id: str
    won: bool
    amount_minor: int
    at: datetime


class PayoutSent(Fact):
    kind: Literal["payout_sent"] = "payout_sent"
    payout_id: str
    supplier_id: str = ""
    """Whose payout (an invoice's earnings may go to several suppliers); empty when not known."""
    at: datetime


class PayoutSettled(Fact):
    kind: Literal["payout_settled"] = "payout_settled"
    payout_id: str
    supplier_id: str = ""
    """Whose payout (an invoice's earnings may go to several suppliers); empty when not known."""
    at: datetime


class PayoutReturned(Fact):
    """Returned by the bank or rejected by the rail: reversed by payouts, the payee is flagged."""

    kind: Literal["payout_returned"] = "payout_returned"
    payout_id: str
    reason: str
    supplier_id: str = ""
    at: datetime


class PayoutOwed(Fact):
    """Payouts planned the supplier's earnings of the invoice (``payout.planned|held|waiting`` naming the
    invoice): a payout to this supplier is owed, sent or not — so the cycle knows every supplier it waits
    for, even one whose payout is never sent (below its minimum, no payee, on hold, no FX rate)."""

    kind: Literal["payout_owed"] = "payout_owed"
    supplier_id: str = Field(min_length=1)
    at: datetime
    plan: str = ""
    """What the planning said, for an operator: ``planned``, ``held: on_hold``, ``waiting: below_minimum``…"""


class PayeeUpdated(Fact):
    kind: Literal["payee_updated"] = "payee_updated"
    at: datetime


class Tick(Fact):
    kind: Literal["tick"] = "tick"
    at: datetime


class CompensationResult(Fact):
    """What the side that acts on a compensation answered (done, or failed with a reason)."""

    kind: Literal["compensation_result"] = "compensation_result"
    compensation: CompensationKind
    ref: str
    attempt: int = Field(ge=1)
    ok: bool
    reason: str = ""
    at: datetime
    acknowledged: bool = True
    """An answer from the acting side (False: the worker's own "done" when acknowledgements are not awaited)."""


class InquiryAnswered(Fact):
    """The answer to an inquiry: payments' to ``collection`` (``collection.answered``), payouts' to ``payout``
    and ``settlement`` (``payout.inquiry_answered``) — what the asked side knows of the invoice. Informational
    (paid, past due, sent and settled come only from their own events): it is what an operator reads when
    the saga gives up."""

    kind: Literal["inquiry_answered"] = "inquiry_answered"
    inquiry: str = "collection"
    asked_at: datetime
    known: bool
    detail: str
    by: str = "payments"
    """Who answered (``payments``, ``payouts``): the reason says it."""


class OperatorRetry(Fact):
    """``settle sagas retry``: after an operator's fix, the failed compensations get new attempts and a
    timed-out step is asked again."""

    kind: Literal["operator_retry"] = "operator_retry"
    command_id: str
    at: datetime


Input = (
    InvoiceFinalized
    | PaymentStatus
    | PastDue
    | Collected
    | Refunded
    | CreditNote
    | DisputeOpened
    | DisputeClosed
    | PayoutSent
    | PayoutSettled
    | PayoutReturned
    | PayoutOwed
    | PayeeUpdated
    | Tick
    | CompensationResult
    | InquiryAnswered
    | OperatorRetry
)


# --- facts ------------------------------------------------------------------------------------------------


class Facts(BaseModel):
    """Everything a saga has seen, merged commutatively. Stored as JSON with the saga."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    invoice: InvoiceFinalized | None = None
    status: PaymentStatus | None = None
    """The highest revision seen."""
    paid_at: datetime | None = None
    """Earliest event time of a ``paid`` status: pay-when-paid released the supplier's earnings then."""
    past_due_at: datetime | None = None
    collected: dict[str, int] = {}
    refunds: dict[str, int] = {}
    credit_note_refunds: dict[str, str] = {}
    """refund id → the credit note it carries back (R11: a credit note on a paid invoice becomes a refund)."""
    credit_notes: dict[str, int] = {}
    disputes_open: dict[str, int] = {}
    disputes_closed: dict[str, bool] = {}
    """dispute id → won."""
    payouts_sent: dict[str, datetime] = {}
    payouts_settled: dict[str, datetime] = {}
    payouts_returned: dict[str, datetime] = {}
    payout_suppliers: dict[str, str] = {}
    """payout attempt → its supplier (when the event named one): the cycle is paid out once every
    supplier's latest payout settled."""
    payouts_owed: dict[str, datetime] = {}
    """supplier → the earliest planning that owed it a payout of this invoice's earnings."""
    payout_plans: dict[str, tuple[datetime, str]] = {}
    """supplier → the latest planning that owed it a payout, and its word (the greatest (time, plan)): later
    than everything sent to the supplier, it owes more than what settled (earnings released in parts); its
    word says why a payout owed is not sent."""
    payee_updated_at: datetime | None = None
    now: datetime | None = None
    """Event time: the latest tick (or event) seen."""
    ticks: list[datetime] = []
    """Every tick the saga was given (sorted; a saga is given a tick only when a deadline or retry of it has
    come, so a handful): a question is asked at the first tick at or after its deadline, and its grace runs
    from then — a tick far past the deadline asks, it does not give up unasked."""
    comp_done: dict[str, int] = {}
    """``kind:ref`` → attempt that succeeded."""
    comp_failed: dict[str, dict[int, datetime]] = {}
    """``kind:ref`` → attempt → when it failed."""
    comp_acked: dict[str, int] = {}
    """``kind:ref`` → the attempt the acting side answered as applied (its acknowledgement)."""
    operator_retries: dict[str, datetime] = {}
    inquiry_answers: dict[str, tuple[datetime, str]] = {}
    """inquiry (``collection``, ``payout``, ``settlement``) → the latest answer: (when asked, who answered
    and what; the greatest pair). Shown only for a question asked at or after the current deadline."""


def _max(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


_V = TypeVar("_V")


def _add(d: dict[str, _V], key: str, value: _V) -> dict[str, _V]:
    return d if key in d else {**d, key: value}


def _supplier(facts: Facts, payout_id: str, supplier_id: str) -> dict[str, str]:
    return _add(facts.payout_suppliers, payout_id, supplier_id) if supplier_id else facts.payout_suppliers


def apply(facts: Facts, event: Input) -> Facts:
    """Merge one input into the facts; commutative and idempotent."""
    match event:
        case InvoiceFinalized():
            return facts if facts.invoice is not None else facts.model_copy(update={"invoice": event})
        case PaymentStatus():
            update: dict[str, object] = {}
            if facts.status is None or (event.revision, event.status) > (facts.status.revision, facts.status.status):
                update["status"] = event  # the highest revision (ties, never sent by payments: a fixed order)
            if event.status == "paid":
                update["paid_at"] = _min(facts.paid_at, event.at)
            if event.status == "past_due":
                update["past_due_at"] = _min(facts.past_due_at, event.at)
            return facts.model_copy(update=update) if update else facts
        case PastDue():
            return facts.model_copy(update={"past_due_at": _min(facts.past_due_at, event.at)})
        case Collected():
            return facts.model_copy(update={"collected": _add(facts.collected, event.payment_id, event.amount_minor)})
        case Refunded():
            refunded: dict[str, Any] = {"refunds": _add(facts.refunds, event.refund_id, event.amount_minor)}
            if event.credit_note_id is not None:
                refunded["credit_note_refunds"] = {**facts.credit_note_refunds, event.refund_id: event.credit_note_id}
            return facts.model_copy(update=refunded)
        case CreditNote():
            notes = _add(facts.credit_notes, event.credit_note_id, event.amount_minor)
            return facts.model_copy(update={"credit_notes": notes})
        case DisputeOpened():
            opened = _add(facts.disputes_open, event.dispute_id, event.amount_minor)
            return facts.model_copy(update={"disputes_open": opened})
        case DisputeClosed():
            closed = _add(facts.disputes_closed, event.dispute_id, event.won)
            opened = _add(facts.disputes_open, event.dispute_id, event.amount_minor)
            return facts.model_copy(update={"disputes_closed": closed, "disputes_open": opened})
        case PayoutSent():
            return facts.model_copy(
                update={
                    "payouts_sent": _add(facts.payouts_sent, event.payout_id, event.at),
                    "payout_suppliers": _supplier(facts, event.payout_id, event.supplier_id),
                }
            )
        case PayoutSettled():
            settled = _add(facts.payouts_settled, event.payout_id, event.at)
            suppliers = _supplier(facts, event.payout_id, event.supplier_id)
            return facts.model_copy(update={"payouts_settled": settled, "payout_suppliers": suppliers})
        case PayoutReturned():
            returned = _add(facts.payouts_returned, event.payout_id, event.at)
            suppliers = _supplier(facts, event.payout_id, event.supplier_id)
            return facts.model_copy(update={"payouts_returned": returned, "payout_suppliers": suppliers})
        case PayoutOwed():
            first, plan = facts.payouts_owed.get(event.supplier_id), facts.payout_plans.get(event.supplier_id)
            new_first = _min(first, event.at)
            new_plan = max(plan, (event.at, event.plan)) if plan is not None else (event.at, event.plan)
            if (first, plan) == (new_first, new_plan):
                return facts
            return facts.model_copy(
                update={
                    "payouts_owed": {**facts.payouts_owed, event.supplier_id: new_first},
                    "payout_plans": {**facts.payout_plans, event.supplier_id: new_plan},
                }
            )
        case PayeeUpdated():
            return facts.model_copy(update={"payee_updated_at": _max(facts.payee_updated_at, event.at)})
        case Tick():
            if event.at in facts.ticks:
                return facts
            ticks = sorted({*facts.ticks, event.at})
            return facts.model_copy(update={"now": _max(facts.now, event.at), "ticks": ticks})
        case CompensationResult():
            key = f"{event.compensation}:{event.ref}"
            if event.ok:
                update = {"comp_done": _add(facts.comp_done, key, event.attempt)}
                if event.acknowledged:
                    update["comp_acked"] = _add(facts.comp_acked, key, event.attempt)
                return facts.model_copy(update=update)
            failed = dict(facts.comp_failed.get(key, {}))
            if event.attempt in failed:
                return facts
            failed[event.attempt] = event.at
            return facts.model_copy(update={"comp_failed": {**facts.comp_failed, key: failed}})
        case InquiryAnswered():
            said = f"{event.by} answered: " + (event.detail if event.known else f"unknown invoice: {event.detail}")
            answer = (event.asked_at, said)
            latest = facts.inquiry_answers.get(event.inquiry)
            if latest is not None and latest >= answer:
                return facts
            return facts.model_copy(update={"inquiry_answers": {**facts.inquiry_answers, event.inquiry: answer}})
        case OperatorRetry():
            retries = _add(facts.operator_retries, event.command_id, event.at)
            return facts.model_copy(update={"operator_retries": retries})
    raise AssertionError(f"unknown saga input {event!r}")


def fold(events: Iterable[Input], facts: Facts | None = None) -> Facts:
    result = facts or Facts()
    for event in events:
        result = apply(result, event)
    return result


# --- evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Compensation:
    kind: CompensationKind
    ref: str
    """What it is about: the invoice number, a refund, credit note or dispute id."""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True)
class Status:
    state: State
    reason: str
    waits_for: str
    """What the saga waits for next ("" when terminal)."""
    deadline: datetime | None
    steps: tuple[str, ...]
    """The story so far, in cycle order (finalized, collected, released, …)."""
    required: tuple[Compensation, ...]
    """Every compensation these facts call for (requested once each, by key)."""
    inquiry: str | None = None
    """A step past its deadline: the saga asks before it compensates."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def collection_deadline(invoice: InvoiceFinalized, policy: Policy) -> datetime:
    return invoice.due_at + timedelta(days=policy.dunning_days + policy.collection_margin_days)


def _attempts(facts: Facts, comp: Compensation) -> tuple[int, datetime | None]:
    """(failed attempts, when the last one failed)."""
    failed = facts.comp_failed.get(comp.key, {})
    return len(failed), max(failed.values()) if failed else None


def attempt_budget(facts: Facts, policy: Policy) -> int:
    """Attempts a compensation may take: the policy's, again after each operator retry."""
    return policy.compensation_max_attempts * (1 + len(facts.operator_retries))


def next_retry_at(facts: Facts, comp: Compensation, policy: Policy) -> datetime | None:
    """When a failed compensation is requested again (None: not failed, done, or out of attempts)."""
    if comp.key in facts.comp_done:
        return None
    failures, last = _attempts(facts, comp)
    if not failures or last is None or failures >= attempt_budget(facts, policy):
        return None
    hours = policy.compensation_retry_hours
    return last + timedelta(hours=hours[min(failures - 1, len(hours) - 1)])


def evaluate(facts: Facts, policy: Policy) -> Status:
    inv = facts.invoice
    if inv is None:
        return Status("pending", "events seen before the invoice", "invoice.finalized", None, (), ())
    steps: list[str] = [f"invoice {inv.number} finalized"]
    required: list[Compensation] = []
    # Paid = the latest payment status says so. R11 walks money in event time, so a status can be revised
    # back: credit or a receipt first applied to this invoice goes to an older one that arrived later
    # (the renter's invoices of one close come on several partitions). Only money going out (a refund, a
    # credit note, a dispute) keeps a once-paid cycle past payment: that is a compensation, not a re-opening.
    # A positive credit note (late charges after the term) asks for more: it re-opens, it gives nothing back.
    money_out = bool(facts.refunds or any(a < 0 for a in facts.credit_notes.values()) or facts.disputes_open)
    latest_paid = facts.status is not None and facts.status.status == "paid"
    nothing_due = inv.amount_due_minor == 0 and facts.status is None  # paid from its issue (R11), unless re-opened
    paid = latest_paid or nothing_due or (facts.paid_at is not None and money_out)
    now = facts.now
    if facts.collected:
        steps.append(f"collected {sum(facts.collected.values())} minor in {len(facts.collected)} payment(s)")
    if facts.past_due_at is not None:
        steps.append("past due after dunning; suspend requested by payments")
    post_release = False
    if paid:
        steps.append("paid; supplier earnings released (pay-when-paid)")
        post_release = True
    else:
        if facts.past_due_at is not None:
            required.append(Compensation("hold_earnings", inv.number))
        else:
            deadline = collection_deadline(inv, policy)
            grace = asked_at(facts, deadline) + timedelta(days=policy.inquiry_grace_days)
            asked_again = max(facts.operator_retries.values(), default=None)
            if asked_again is not None:
                grace = max(grace, asked_again + timedelta(days=policy.inquiry_grace_days))
            if now is None or now < deadline:
                return Status(
                    "collecting", "waiting for collection", "payment (paid or past due)", deadline, tuple(steps), ()
                )
            answered = _answer(facts, "collection", deadline)
            if now < grace:
                steps.append("collection deadline passed; payments asked")
                if answered is not None:
                    steps.append(answered)
                return Status(
                    "inquiring",
                    f"no answer from payments by {deadline.isoformat()}",
                    "an answer to the inquiry (payment status)",
                    grace,
                    tuple(steps),
                    (),
                    inquiry="collection",
                )
            required.append(Compensation("hold_earnings", inv.number))
            if answered is None:
                steps.append("no answer after the inquiry; earnings held")
                why = "collection did not answer by its deadline, even after an inquiry"
            else:
                steps.append(f"{answered}; not paid after the grace; earnings held")
                why = f"collection not finished by its deadline; {answered}"
            return _compensations(facts, policy, steps, required, final=("needs_operator", why[:2000]))
    # after payment: refunds, credit notes and lost disputes. A credit note carries late corrections (R3), whose
    # supplier side is already on the supplier's statements — the late earnings and SLA chargebacks (R12) — and
    # a credit note on a paid invoice is paid back as a refund: neither is clawed back on top (that would take
    # the supplier's share twice, or three times). Refunds an operator or the processor made are.
    paid_out = bool(facts.payouts_sent) if policy.follow_payouts else post_release
    for refund_id in sorted(facts.refunds):
        note = facts.credit_note_refunds.get(refund_id)
        if note is not None:
            steps.append(f"refund {refund_id} of credit note {note}")
            continue
        steps.append(f"refund {refund_id}")
        if paid_out:
            required.append(Compensation("clawback", refund_id))
    for note_id in sorted(facts.credit_notes):
        steps.append(f"credit note {note_id} (its corrections reach the supplier's statements)")
    for dispute_id in sorted(facts.disputes_open):
        won = facts.disputes_closed.get(dispute_id)
        steps.append(f"dispute {dispute_id} " + ("open" if won is None else "won" if won else "lost"))
        if won is False:
            required.append(Compensation("reverse_revenue", dispute_id))
            if policy.dispute_lost == "supplier_charged_back":
                required.append(Compensation("reverse_supplier_share", dispute_id))
    open_disputes = [d for d in facts.disputes_open if d not in facts.disputes_closed]
    if paid and policy.follow_payouts:
        payout = _payout_status(facts, policy, steps)
        if payout is not None and not required:
            return payout
    if open_disputes:
        return Status(
            "collecting" if not required else "compensating",
            f"dispute(s) open: {', '.join(sorted(open_disputes))}",
            "dispute closed",
            None,
            tuple(steps),
            tuple(required),
        )
    final: tuple[State, str]
    if facts.past_due_at is not None and not paid:
        final = (
            "compensated",
            "collection failed after dunning: supplier earnings held, suspend requested, exposure kept",
        )
    elif required:
        kinds = ", ".join(sorted({c.kind for c in required}))
        final = ("compensated", f"paid, then compensated ({kinds})")
    elif facts.past_due_at is not None:
        final = ("completed", "paid after past due")
    else:
        final = ("completed", "paid" if not policy.follow_payouts else "paid and settled at the bank")
    return _compensations(facts, policy, steps, required, final=final)


def _payout_status(facts: Facts, policy: Policy, steps: list[str]) -> Status | None:
    """The payout side (when followed): None once every supplier's payout of the cycle settled.

    An invoice's earnings may go to several suppliers, each paid by its own payout: each supplier's
    payouts are followed on their own (a payout whose event names no supplier is one supplier), and the
    cycle waits for the one furthest behind — a payout returned before one in flight before one to
    (re)send. A supplier payouts owes (:class:`PayoutOwed`) but never sent to is one to send: with the
    others settled, the cycle waits for it (and asks, then needs an operator, past the payout deadline).
    A supplier whose payout settled is owed again when a later planning names the invoice (its earnings
    released in parts): the cycle waits for that payout too, its deadline counted from that planning."""
    suppliers: dict[str, list[str]] = {supplier: [] for supplier in facts.payouts_owed}
    for pid in {*facts.payouts_sent, *facts.payouts_settled, *facts.payouts_returned}:
        suppliers.setdefault(facts.payout_suppliers.get(pid, ""), []).append(pid)
    released = facts.paid_at or (facts.invoice.issued_at if facts.invoice else None)
    assert released is not None
    returned_waiting: list[datetime] = []
    in_flight: list[datetime] = []
    to_retry: list[datetime] = []
    owed_again: list[datetime] = []
    unsent: list[str] = []
    settled = 0
    for supplier, pids in suppliers.items():
        latest_plan = facts.payout_plans.get(supplier)
        owed_last = latest_plan[0] if latest_plan else None
        settled_payouts = {_payout_of(p) for p in pids if p in facts.payouts_settled}
        if _paid_out(facts, pids, settled_payouts, owed_last):
            settled += 1
            continue
        returned_last = max(
            (
                at
                for p in pids
                if (at := facts.payouts_returned.get(p)) is not None and _payout_of(p) not in settled_payouts
            ),
            default=None,
        )
        sent_after = [
            at
            for p in pids
            if (at := facts.payouts_sent.get(p)) is not None
            and p not in facts.payouts_returned
            and p not in facts.payouts_settled
        ]
        if settled_payouts and not sent_after and returned_last is None and owed_last is not None:
            owed_again.append(owed_last)
        if not sent_after and returned_last is None and latest_plan:
            unsent.append(f"{supplier}: {latest_plan[1] or 'planned'}")
        if sent_after:
            in_flight.append(max(sent_after))
        elif returned_last is not None:
            if facts.payee_updated_at is None or facts.payee_updated_at < returned_last:
                returned_waiting.append(returned_last)
            else:
                to_retry.append(facts.payee_updated_at)
    if suppliers and settled == len(suppliers):
        steps.append("payout settled at the bank" if settled == 1 else f"payouts of {settled} suppliers settled")
        return None
    if settled:
        steps.append(f"payouts settled for {settled} of {len(suppliers)} suppliers")
    if returned_waiting:
        steps.append("payout returned: reversed, payee flagged")
        return Status("payout_returned", "payout returned or rejected", "payee details changed", None, tuple(steps), ())
    if in_flight:
        steps.append("payout sent")
        deadline = max(in_flight) + timedelta(days=policy.settle_deadline_days)
        return _maybe_inquiry(facts, deadline, policy, "payout_sent", "payout settled at the bank", "settlement", steps)
    if to_retry:
        steps.append("payout returned: reversed, payee flagged")
        steps.append("payee details changed; payout to retry")
        released = max(to_retry)
    if owed_again:
        steps.append("earnings released after the last payout; payout to send")
        released = max(released, *owed_again)
    if unsent:
        steps.append(f"payouts owed, not sent ({'; '.join(sorted(unsent))})")
    deadline = released + timedelta(days=policy.payout_deadline_days)
    return _maybe_inquiry(facts, deadline, policy, "awaiting_payout", "payout sent", "payout", steps)


def _payout_of(attempt: str) -> str:
    """An attempt is ``payout_id@file_id``: a payout resent after a return is a new attempt of the same payout."""
    return attempt.split("@", 1)[0]


def _paid_out(facts: Facts, pids: list[str], settled: set[str], owed_last: datetime | None) -> bool:
    """One supplier's payouts of the cycle are done: every payout of it the saga saw settled (in one of its
    attempts: a returned payout counts once it is resent and settles), and no planning owed the supplier
    more after everything sent to it (earnings released in parts: the payout of the first part settling
    does not pay the second). ``settled``: the payouts of ``pids`` with a settled attempt."""
    if not settled or any(_payout_of(p) not in settled for p in pids):
        return False
    last_sent = max(at for p in pids if (at := facts.payouts_sent.get(p) or facts.payouts_settled.get(p)))
    return owed_last is None or owed_last <= last_sent


def asked_at(facts: Facts, deadline: datetime) -> datetime:
    """When the question about a step due by ``deadline`` was asked: at the first tick at or after the
    deadline (the deadline itself for sagas stored before ticks were kept, and before any such tick)."""
    return next((t for t in facts.ticks if t >= deadline), deadline)


_NOT_DONE = {"payout": "payout not sent", "settlement": "payout not settled at the bank"}


def _answer(facts: Facts, inquiry: str, deadline: datetime) -> str | None:
    """The answer to the question asked at ``deadline`` or later (an older answer was to an earlier question)."""
    latest = facts.inquiry_answers.get(inquiry)
    return latest[1] if latest is not None and latest[0] >= deadline else None


def _maybe_inquiry(
    facts: Facts, deadline: datetime, policy: Policy, state: State, waits: str, step: str, steps: list[str]
) -> Status:
    now = facts.now
    grace = asked_at(facts, deadline) + timedelta(days=policy.inquiry_grace_days)
    if now is None or now < deadline:
        return Status(state, f"waiting for {waits}", waits, deadline, tuple(steps), ())
    answered = _answer(facts, step, deadline)
    if now < grace:
        if answered is not None:
            steps.append(answered)
        return Status(state, f"{step} deadline passed; asked", waits, grace, tuple(steps), (), inquiry=step)
    if answered is None:
        why = f"{step} did not answer by its deadline, even after an inquiry"
    else:
        steps.append(answered)
        why = f"{_NOT_DONE.get(step, step + ' not done')} by its deadline; {answered}"
    return Status("needs_operator", why[:2000], OPERATOR, None, tuple(steps), ())


def _compensations(
    facts: Facts, policy: Policy, steps: list[str], required: list[Compensation], *, final: tuple[State, str]
) -> Status:
    """Every required compensation done → ``final``; one out of attempts → needs_operator; else waiting."""
    pending = [c for c in required if c.key not in facts.comp_done]
    exhausted = [c for c in pending if _attempts(facts, c)[0] >= attempt_budget(facts, policy)]
    if exhausted:
        names = ", ".join(c.key for c in exhausted)
        return Status(
            "needs_operator",
            f"compensation failed after every retry: {names}",
            OPERATOR,
            None,
            tuple(steps),
            tuple(required),
        )
    failing = [c for c in pending if _attempts(facts, c)[0] > 0]
    if failing:
        retry = min(t for c in failing if (t := next_retry_at(facts, c, policy)) is not None)
        names = ", ".join(c.key for c in failing)
        return Status(
            "compensation_failed",
            f"compensation failed, retrying: {names}",
            "compensation retry",
            retry,
            tuple(steps),
            tuple(required),
        )
    if pending:
        names = ", ".join(c.key for c in pending)
        return Status(
            "compensating",
            f"compensations requested: {names}",
            "compensations done",
            None,
            tuple(steps),
            tuple(required),
        )
    state, reason = final
    waits = OPERATOR if state == "needs_operator" else ""
    return Status(state, reason, waits, None, tuple(steps), tuple(required))


def requested_amount_minor(facts: Facts, comp: Compensation) -> int | None:
    """What a compensation shares out (invoice currency, minor units, ≥ 0): the refund's or credit note's
    amount for a ``clawback``, the dispute's for ``reverse_*``; None for ``hold_earnings`` (the invoice)."""
    if comp.kind == "clawback":
        amount = facts.refunds.get(comp.ref, facts.credit_notes.get(comp.ref))
    elif comp.kind in ("reverse_revenue", "reverse_supplier_share"):
        amount = facts.disputes_open.get(comp.ref)
    else:
        return None
    return None if amount is None else abs(amount)


@dataclass(frozen=True)
class Request:
    """A compensation to publish now, with its attempt number (1, then one more per failure)."""

    compensation: Compensation
    attempt: int


def requests(facts: Facts, status: Status, requested: dict[str, int], policy: Policy) -> list[Request]:
    """The compensation requests to publish: each required one not yet requested (attempt 1), and each
    failed one whose retry is due by event time (the next attempt). ``requested`` is key → the highest
    attempt already requested: a key is never requested twice with the same attempt."""
    out: list[Request] = []
    for comp in status.required:
        if comp.key in facts.comp_done:
            continue
        done_attempts = requested.get(comp.key, 0)
        if done_attempts == 0:
            out.append(Request(comp, 1))
            continue
        failures, _ = _attempts(facts, comp)
        retry = next_retry_at(facts, comp, policy)
        due = retry is not None and facts.now is not None and facts.now >= retry
        if failures >= done_attempts and (due or _retried_by_operator(facts, failures, policy)):
            out.append(Request(comp, done_attempts + 1))
    return out


def _retried_by_operator(facts: Facts, failures: int, policy: Policy) -> bool:
    """Out of the previous budget, and an operator asked for a retry: try again at once."""
    return (
        bool(facts.operator_retries)
        and failures % policy.compensation_max_attempts == 0
        and (failures < attempt_budget(facts, policy))
    )
