"""The saga's state machine (services/saga/domain.py): examples per path, and order/duplication independence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.saga import domain as d

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DUE = T0 + timedelta(days=14)
POLICY = d.Policy()


def invoice(amount: int = 10_000) -> d.InvoiceFinalized:
    return d.InvoiceFinalized(
        invoice_id="inv-1",
        number="INV-2026-000001",
        contract_id="c-1",
        renter_id="r-1",
        currency="USD",
        period_start=T0 - timedelta(days=28),
        period_end=T0,
        issued_at=T0,
        due_at=DUE,
        amount_due_minor=amount,
    )


def status(revision: int, state: str, paid: int, at: datetime) -> d.PaymentStatus:
    return d.PaymentStatus(
        revision=revision,
        status=state,  # type: ignore[arg-type]
        amount_paid_minor=paid,
        amount_remaining_minor=10_000 - paid,
        at=at,
    )


def run(
    events: list[d.Input], policy: d.Policy = POLICY, *, ack: bool = True
) -> tuple[d.Status, d.Facts, dict[str, int]]:
    """What the worker does: apply each event, evaluate, request what is due (acknowledged at once)."""
    facts = d.Facts()
    requested: dict[str, int] = {}
    status = d.evaluate(facts, policy)
    for event in events:
        facts = d.apply(facts, event)
        status = d.evaluate(facts, policy)
        for req in d.requests(facts, status, requested, policy):
            assert requested.get(req.compensation.key, 0) < req.attempt, "never the same attempt twice"
            requested[req.compensation.key] = req.attempt
            if ack:
                facts = d.apply(
                    facts,
                    d.CompensationResult(
                        compensation=req.compensation.kind,
                        ref=req.compensation.ref,
                        attempt=req.attempt,
                        ok=True,
                        at=facts.now or T0,
                    ),
                )
        status = d.evaluate(facts, policy)
    return status, facts, requested


def test_paid_cycle_completes_when_earnings_are_released() -> None:
    s, _, requested = run([invoice(), status(1, "open", 0, T0), status(2, "paid", 10_000, DUE)])
    assert (s.state, s.reason) == ("completed", "paid")
    assert requested == {}
    assert any("earnings released" in step for step in s.steps)


def test_a_paid_status_revised_back_by_an_older_invoice_reopens_the_cycle_but_money_out_does_not() -> None:
    """R11 in event time: a wire first applied to this invoice goes to an older invoice of the renter that
    arrived later, so payments revises the status from paid back to open. The cycle follows the latest
    status (whichever order the two statuses came in); a refund after payment is a compensation instead."""
    paid, reopened = status(1, "paid", 10_000, DUE), status(2, "open", 0, DUE)
    for events in ([invoice(), paid, reopened], [invoice(), reopened, paid]):
        s, _, requested = run(events)
        assert s.state == "collecting" and requested == {}, s
    refund = d.Refunded(refund_id="rf_1", amount_minor=10_000, at=DUE + timedelta(days=1))
    s, _, requested = run([invoice(), paid, status(2, "open", 0, DUE + timedelta(days=1)), refund])
    assert s.state == "compensated" and requested == {"clawback:rf_1": 1}, s


def test_before_payment_the_saga_waits_for_collection_with_an_event_time_deadline() -> None:
    s, _, _ = run([invoice(), d.Tick(at=DUE + timedelta(days=3))])
    assert s.state == "collecting"
    assert s.deadline == DUE + timedelta(days=17)
    assert s.waits_for.startswith("payment")


def test_past_due_holds_the_earnings_and_ends_compensated() -> None:
    s, _, requested = run([invoice(), d.PastDue(at=DUE + timedelta(days=14)), status(3, "past_due", 0, DUE)])
    assert s.state == "compensated"
    assert "earnings held" in s.reason
    assert requested == {"hold_earnings:INV-2026-000001": 1}
    assert any("suspend requested by payments" in step for step in s.steps)


def test_paid_after_past_due_completes_but_the_hold_was_requested_once() -> None:
    s, _, requested = run([invoice(), d.PastDue(at=DUE), status(4, "paid", 10_000, DUE + timedelta(days=20))])
    assert (s.state, s.reason) == ("completed", "paid after past due")
    assert requested == {"hold_earnings:INV-2026-000001": 1}


def test_a_silent_collection_is_asked_before_it_is_compensated() -> None:
    deadline = DUE + timedelta(days=17)
    s, _, requested = run([invoice(), d.Tick(at=deadline)])
    assert (s.state, s.inquiry) == ("inquiring", "collection")
    assert requested == {}
    s, _, requested = run([invoice(), d.Tick(at=deadline), d.Tick(at=deadline + timedelta(days=1))])
    assert s.state == "needs_operator"
    assert "even after an inquiry" in s.reason
    assert requested == {"hold_earnings:INV-2026-000001": 1}
    # a first tick far past the deadline (ticks a week apart, a clock that was down) asks first: it never
    # gives up unasked; the grace runs from that tick
    late = deadline + timedelta(days=7)
    s, _, requested = run([invoice(), d.Tick(at=late)])
    assert (s.state, s.inquiry, s.deadline, requested) == ("inquiring", "collection", late + timedelta(days=1), {})
    s = run([invoice(), d.Tick(at=late + timedelta(days=1)), d.Tick(at=late)])[0]
    assert s.state == "needs_operator", "the same ticks in any order"


def test_payments_answer_to_the_inquiry_is_the_reason_an_operator_reads() -> None:
    deadline = DUE + timedelta(days=17)
    said = d.InquiryAnswered(asked_at=deadline, known=True, detail="open: collection no_method after 0 tries")
    s = run([invoice(), d.Tick(at=deadline), said])[0]
    assert (s.state, s.inquiry) == ("inquiring", "collection")
    assert s.steps[-1] == "payments answered: open: collection no_method after 0 tries"
    s, _, requested = run([said, d.Tick(at=deadline + timedelta(days=1)), invoice(), d.Tick(at=deadline)])
    assert s.state == "needs_operator"
    assert (
        s.reason
        == "collection not finished by its deadline; payments answered: open: collection no_method after 0 tries"
    )
    assert requested == {"hold_earnings:INV-2026-000001": 1}
    # a second question (after an operator's retry) and its answer: the latest answer is the one shown, in
    # whatever order the two answers are read
    later = d.InquiryAnswered(asked_at=deadline + timedelta(days=3), known=False, detail="payments has no invoice")
    for answers in ([said, later], [later, said]):
        s = run([invoice(), *answers, d.Tick(at=deadline), d.Tick(at=deadline + timedelta(days=1))])[0]
        assert s.reason.endswith("payments answered: unknown invoice: payments has no invoice"), s.reason
    # an answer never stands for a payment: a paid status still completes the cycle, unpaid never does
    assert run([invoice(), said, status(2, "paid", 10_000, deadline)])[0].state == "completed"


def test_dispute_lost_per_policy() -> None:
    events: list[d.Input] = [
        invoice(),
        status(2, "paid", 10_000, DUE),
        d.DisputeOpened(dispute_id="dp_1", amount_minor=10_000, at=DUE + timedelta(days=3)),
        d.DisputeClosed(dispute_id="dp_1", won=False, amount_minor=10_000, at=DUE + timedelta(days=30)),
    ]
    s, _, requested = run(events)  # the default is R15's: the supplier's share is clawed back
    assert s.state == "compensated"
    assert set(requested) == {"reverse_revenue:dp_1", "reverse_supplier_share:dp_1"}
    s, _, requested = run(events, d.Policy(dispute_lost="platform_absorbs"))
    assert s.state == "compensated"
    assert set(requested) == {"reverse_revenue:dp_1"}


def test_an_open_dispute_keeps_the_saga_open_and_a_won_one_completes() -> None:
    opened = d.DisputeOpened(dispute_id="dp_1", amount_minor=10_000, at=DUE)
    s, _, _ = run([invoice(), status(2, "paid", 10_000, DUE), opened])
    assert s.state == "collecting" and s.waits_for == "dispute closed"
    closed = d.DisputeClosed(dispute_id="dp_1", won=True, amount_minor=10_000, at=DUE)
    s, _, requested = run([invoice(), status(2, "paid", 10_000, DUE), opened, closed])
    assert s.state == "completed" and requested == {}


def test_refund_after_release_is_clawed_back_but_not_before_payment() -> None:
    refund = d.Refunded(refund_id="rf_1", amount_minor=2_000, at=DUE + timedelta(days=40))
    s, _, requested = run([invoice(), status(2, "paid", 10_000, DUE), refund])
    assert s.state == "compensated" and requested == {"clawback:rf_1": 1}
    note = d.CreditNote(credit_note_id="cn_1", amount_minor=500, at=T0)
    s, _, requested = run([invoice(), note, status(2, "paid", 10_000, DUE)], d.Policy(follow_payouts=True))
    assert "clawback:cn_1" not in requested  # not paid out yet: the supplier's earnings are still ours


def test_a_credit_note_and_the_refund_that_pays_it_back_are_not_clawed_back() -> None:
    """A credit note carries late corrections whose supplier side is already on the supplier's statements (late
    earnings, chargebacks); on a paid invoice it is paid back as a refund. Neither is a clawback on top —
    until 2026-12-08 both were, taking the supplier's share two more times. An operator's refund still is."""
    at = DUE + timedelta(days=40)
    note = d.CreditNote(credit_note_id="cn_1", amount_minor=-500, at=at)
    its_refund = d.Refunded(refund_id="rf_cn", amount_minor=500, at=at, credit_note_id="cn_1")
    operator = d.Refunded(refund_id="rf_op", amount_minor=2_000, at=at)
    for policy in (POLICY, d.Policy(follow_payouts=True)):
        paid_out = [d.PayoutSent(payout_id="po_1", at=DUE + timedelta(days=1))] if policy.follow_payouts else []
        s, facts, requested = run([invoice(), status(2, "paid", 10_000, DUE), *paid_out, note, its_refund], policy)
        assert requested == {} and facts.credit_note_refunds == {"rf_cn": "cn_1"}
        assert "refund rf_cn of credit note cn_1" in s.steps
        _, _, requested = run(
            [invoice(), status(2, "paid", 10_000, DUE), *paid_out, note, its_refund, operator], policy
        )
        assert requested == {"clawback:rf_op": 1}


def test_a_positive_credit_note_re_opens_a_paid_cycle_it_does_not_complete_it() -> None:
    """A credit note with a positive total (late charges after the term) asks for more money: the invoice is
    partially paid again, so the cycle collects again — it is not money out that keeps a paid cycle paid."""
    at = DUE + timedelta(days=40)
    more = d.CreditNote(credit_note_id="cn_up", amount_minor=2_000, at=at)
    reopened = d.PaymentStatus(
        revision=3, status="partially_paid", amount_paid_minor=10_000, amount_remaining_minor=2_000, at=at
    )
    s, _, requested = run([invoice(), status(2, "paid", 10_000, DUE), more, reopened])
    assert s.state != "completed" and requested == {}
    zero = invoice(0)
    s, _, _ = run(
        [zero, d.PaymentStatus(revision=1, status="paid", amount_paid_minor=0, amount_remaining_minor=0, at=T0)]
    )
    assert s.state == "completed"
    open_again = d.PaymentStatus(revision=2, status="open", amount_paid_minor=0, amount_remaining_minor=500, at=at)
    s, _, _ = run([zero, d.CreditNote(credit_note_id="cn_z", amount_minor=500, at=at), open_again])
    assert s.state != "completed"


def test_awaiting_acknowledgement_the_saga_is_compensated_only_by_the_answer_and_records_it() -> None:
    policy = d.Policy(await_acknowledgement=True)
    refund = d.Refunded(refund_id="rf_1", amount_minor=2_000, at=DUE + timedelta(days=40))
    s, facts, requested = run([invoice(), status(2, "paid", 10_000, DUE), refund], policy, ack=False)
    assert (s.state, requested) == ("compensating", {"clawback:rf_1": 1})
    comp = d.Compensation("clawback", "rf_1")
    assert d.requested_amount_minor(facts, comp) == 2_000  # what payouts shares out
    answer = d.CompensationResult(compensation="clawback", ref="rf_1", attempt=1, ok=True, at=refund.at)
    facts = d.apply(d.apply(facts, answer), answer)  # delivered twice: once
    assert d.evaluate(facts, policy).state == "compensated"
    assert facts.comp_acked == {"clawback:rf_1": 1} and facts.comp_done == {"clawback:rf_1": 1}
    # without awaiting, the worker's own "done" is not an acknowledgement; the answer still is
    own = answer.model_copy(update={"acknowledged": False})
    assert d.apply(d.Facts(), own).comp_acked == {}


def test_requested_amounts_are_the_refund_note_or_dispute_and_none_for_a_hold() -> None:
    facts = d.fold(
        [
            invoice(),
            d.CreditNote(credit_note_id="cn_1", amount_minor=-500, at=T0),
            d.DisputeOpened(dispute_id="dp_1", amount_minor=10_000, at=DUE),
        ]
    )
    assert d.requested_amount_minor(facts, d.Compensation("clawback", "cn_1")) == 500
    assert d.requested_amount_minor(facts, d.Compensation("reverse_supplier_share", "dp_1")) == 10_000
    assert d.requested_amount_minor(facts, d.Compensation("hold_earnings", "INV-2026-000001")) is None


def test_a_failed_compensation_is_retried_by_event_time_then_needs_an_operator() -> None:
    policy = d.Policy(compensation_max_attempts=2, compensation_retry_hours=(1,))
    facts = d.fold([invoice(), d.PastDue(at=DUE), d.Tick(at=DUE)])
    comp = d.Compensation("hold_earnings", "INV-2026-000001")
    requested: dict[str, int] = {}
    s = d.evaluate(facts, policy)
    assert d.requests(facts, s, requested, policy) == [d.Request(comp, 1)]
    requested[comp.key] = 1
    fail = d.CompensationResult(compensation="hold_earnings", ref=comp.ref, attempt=1, ok=False, reason="x", at=DUE)
    facts = d.apply(facts, fail)
    s = d.evaluate(facts, policy)
    assert s.state == "compensation_failed" and s.deadline == DUE + timedelta(hours=1)
    assert d.requests(facts, s, requested, policy) == []  # not yet due
    facts = d.apply(facts, d.Tick(at=DUE + timedelta(hours=1)))
    assert d.requests(facts, d.evaluate(facts, policy), requested, policy) == [d.Request(comp, 2)]
    requested[comp.key] = 2
    facts = d.apply(facts, fail.model_copy(update={"attempt": 2}))
    s = d.evaluate(facts, policy)
    assert s.state == "needs_operator" and "after every retry" in s.reason
    assert d.requests(facts, s, requested, policy) == []
    facts = d.apply(facts, d.OperatorRetry(command_id="op-1", at=DUE + timedelta(days=1)))
    s = d.evaluate(facts, policy)
    assert d.requests(facts, s, requested, policy) == [d.Request(comp, 3)]
    facts = d.apply(facts, fail.model_copy(update={"attempt": 3, "ok": True}))
    assert d.evaluate(facts, policy).state == "compensated"


def test_payout_steps_when_followed() -> None:
    policy = d.Policy(follow_payouts=True)
    base: list[d.Input] = [invoice(), status(2, "paid", 10_000, DUE)]
    assert run(base, policy)[0].state == "awaiting_payout"
    sent = d.PayoutSent(payout_id="po_1@f1", at=DUE + timedelta(days=20))
    assert run([*base, sent], policy)[0].state == "payout_sent"
    returned = d.PayoutReturned(payout_id="po_1@f1", reason="account closed", at=DUE + timedelta(days=22))
    s = run([*base, sent, returned], policy)[0]
    assert (s.state, s.waits_for) == ("payout_returned", "payee details changed")
    payee = d.PayeeUpdated(at=DUE + timedelta(days=23))
    assert run([*base, sent, returned, payee], policy)[0].state == "awaiting_payout"
    resent = d.PayoutSent(payout_id="po_1@f2", at=DUE + timedelta(days=24))
    settled = d.PayoutSettled(payout_id="po_1@f2", at=DUE + timedelta(days=25))
    s = run([*base, sent, returned, payee, resent, settled], policy)[0]
    assert (s.state, s.reason) == ("completed", "paid and settled at the bank")
    other = d.PayoutSent(payout_id="po_9@f2", at=DUE + timedelta(days=24))
    other_settled = d.PayoutSettled(payout_id="po_9@f2", at=DUE + timedelta(days=25))
    s = run([*base, sent, returned, payee, other, other_settled], policy)[0]
    assert s.state == "awaiting_payout", "another payout settling does not pay the returned one: it is to resend"
    s = run([*base, sent, returned, other, other_settled], policy)[0]
    assert s.state == "payout_returned", "nor does it while the payee is unchanged"
    refund = d.Refunded(refund_id="rf_1", amount_minor=100, at=DUE + timedelta(days=30))
    s, _, requested = run([*base, sent, returned, payee, resent, settled, refund], policy)
    assert s.state == "compensated" and requested == {"clawback:rf_1": 1}


def test_an_invoice_paying_two_suppliers_completes_when_both_payouts_settled() -> None:
    """Each supplier's payout is followed on its own: the first settlement does not complete the cycle,
    a return of the other waits for its payee, and only when both settled is the cycle done."""
    policy = d.Policy(follow_payouts=True)
    base: list[d.Input] = [invoice(), status(2, "paid", 10_000, DUE)]
    day = DUE + timedelta(days=20)
    a_sent = d.PayoutSent(payout_id="po_a@f1", supplier_id="sup-a", at=day)
    b_sent = d.PayoutSent(payout_id="po_b@f1", supplier_id="sup-b", at=day)
    a_settled = d.PayoutSettled(payout_id="po_a@f1", supplier_id="sup-a", at=day + timedelta(days=2))
    s = run([*base, a_sent, b_sent, a_settled], policy)[0]
    assert (s.state, s.waits_for) == ("payout_sent", "payout settled at the bank")
    assert "payouts settled for 1 of 2 suppliers" in s.steps
    b_returned = d.PayoutReturned(payout_id="po_b@f1", supplier_id="sup-b", reason="R03", at=day + timedelta(days=3))
    assert run([*base, a_sent, b_sent, a_settled, b_returned], policy)[0].state == "payout_returned"
    payee = d.PayeeUpdated(at=day + timedelta(days=4))
    s = run([*base, a_sent, b_sent, a_settled, b_returned, payee], policy)[0]
    assert s.state == "awaiting_payout"
    b_resent = d.PayoutSent(payout_id="po_b@f2", supplier_id="sup-b", at=day + timedelta(days=5))
    b_settled = d.PayoutSettled(payout_id="po_b@f2", supplier_id="sup-b", at=day + timedelta(days=6))
    assert run([*base, a_sent, b_sent, a_settled, b_returned, payee, b_resent], policy)[0].state == "payout_sent"
    everything = [*base, a_sent, b_sent, a_settled, b_returned, payee, b_resent, b_settled]
    s = run(everything, policy)[0]
    assert (s.state, s.reason) == ("completed", "paid and settled at the bank")
    assert "payouts of 2 suppliers settled" in s.steps
    assert run(list(reversed(everything)), policy)[0].state == "completed", "facts merge in any order"


def test_a_supplier_owed_a_payout_that_is_never_sent_keeps_the_cycle_open() -> None:
    """Two suppliers earn on the invoice; payouts plans both, but one stays below its minimum (a waiting
    plan): the other's settlement does not complete the cycle, which asks, then needs an operator past the
    payout deadline — or completes once the late payout settles. A plan owing nothing changes nothing."""
    policy = d.Policy(follow_payouts=True)
    base: list[d.Input] = [invoice(), status(2, "paid", 10_000, DUE)]
    day = DUE + timedelta(days=20)
    owed = [d.PayoutOwed(supplier_id="sup-a", at=day), d.PayoutOwed(supplier_id="sup-b", at=day)]
    a_sent = d.PayoutSent(payout_id="po_a@f1", supplier_id="sup-a", at=day)
    a_settled = d.PayoutSettled(payout_id="po_a@f1", supplier_id="sup-a", at=day + timedelta(days=2))
    s = run([*base, *owed, a_sent, a_settled], policy)[0]
    assert (s.state, s.waits_for) == ("awaiting_payout", "payout sent")
    assert "payouts settled for 1 of 2 suppliers" in s.steps
    below = d.PayoutOwed(supplier_id="sup-b", at=day + timedelta(days=1), plan="waiting: below_minimum")
    shown = run([*base, *owed, a_sent, a_settled, below], policy)[0]
    assert "payouts owed, not sent (sup-b: waiting: below_minimum)" in shown.steps, "the latest plan says why"
    assert run([*base, below, *owed, a_sent, a_settled], policy)[0].steps == shown.steps, "any order"
    without_b = run([*base, owed[0], a_sent, a_settled], policy)[0]
    assert without_b.state == "completed", "a supplier payouts never named is not waited for"
    reopened = run([*base, owed[0], a_sent, a_settled, owed[1]], policy)[0]
    assert reopened.state == "awaiting_payout", "a plan reaching the saga after it completed reopens the cycle"
    late = [*base, *owed, a_sent, a_settled, d.Tick(at=DUE + timedelta(days=45))]
    assert run(late, policy)[0].inquiry == "payout"
    s = run([*late, d.Tick(at=DUE + timedelta(days=46))], policy)[0]
    assert s.state == "needs_operator" and "payout" in s.reason
    b_sent = d.PayoutSent(payout_id="po_b@f2", supplier_id="sup-b", at=day + timedelta(days=31))
    b_settled = d.PayoutSettled(payout_id="po_b@f2", supplier_id="sup-b", at=day + timedelta(days=33))
    everything = [*base, *owed, a_sent, a_settled, b_sent, b_settled]
    s = run(everything, policy)[0]
    assert (s.state, s.reason) == ("completed", "paid and settled at the bank")
    assert run(list(reversed([*everything, *owed])), policy)[0].state == "completed", "any order, repeated"
    off = run([*base, *owed, a_sent, a_settled], d.Policy(follow_payouts=False))[0]
    assert off.state == "completed", "payouts not followed: released is the end"


def test_earnings_released_in_parts_complete_the_cycle_only_when_the_last_part_settled() -> None:
    """Pay-when-paid releases a supplier's earnings as the renter pays: the payout of the first part
    settles, then a later planning names the invoice again (the rest released) — the cycle waits for that
    payout (its deadline from that planning), and completes when it settles. A payout still in flight, or
    one returned after the first settled, keeps it open too; a plan no later than the last send does not."""
    policy = d.Policy(follow_payouts=True)
    base: list[d.Input] = [invoice(), status(3, "paid", 10_000, DUE)]
    first = DUE - timedelta(days=10)
    part_1 = [
        d.PayoutOwed(supplier_id="sup-a", at=first),
        d.PayoutSent(payout_id="po_1@f1", supplier_id="sup-a", at=first),
        d.PayoutSettled(payout_id="po_1@f1", supplier_id="sup-a", at=first + timedelta(days=2)),
    ]
    assert run([*base, *part_1], policy)[0].state == "completed"
    rest = DUE + timedelta(days=1)
    owed_rest = d.PayoutOwed(supplier_id="sup-a", at=rest)
    s = run([*base, *part_1, owed_rest], policy)[0]
    assert (s.state, s.waits_for) == ("awaiting_payout", "payout sent"), s
    assert "earnings released after the last payout; payout to send" in s.steps
    assert s.deadline == rest + timedelta(days=policy.payout_deadline_days)
    assert run([*base, *part_1, owed_rest, d.Tick(at=rest + timedelta(days=44))], policy)[0].inquiry is None
    sent_2 = d.PayoutSent(payout_id="po_2@f2", supplier_id="sup-a", at=rest)
    assert run([*base, *part_1, owed_rest, sent_2], policy)[0].state == "payout_sent"
    settled_2 = d.PayoutSettled(payout_id="po_2@f2", supplier_id="sup-a", at=rest + timedelta(days=2))
    everything = [*base, *part_1, owed_rest, sent_2, settled_2]
    assert run(everything, policy)[0].state == "completed"
    assert run(list(reversed(everything)), policy)[0].state == "completed", "any order"
    returned_2 = d.PayoutReturned(payout_id="po_2@f2", supplier_id="sup-a", reason="returned R01", at=rest)
    assert run([*base, *part_1, owed_rest, sent_2, returned_2], policy)[0].state == "payout_returned"
    early_plan = d.PayoutOwed(supplier_id="sup-a", at=first - timedelta(days=1))
    assert run([*base, *part_1, early_plan], policy)[0].state == "completed", "a plan before the send owes nothing more"


def test_a_payout_that_never_comes_is_asked_about_then_needs_an_operator() -> None:
    policy = d.Policy(follow_payouts=True)
    base: list[d.Input] = [invoice(), status(2, "paid", 10_000, DUE)]
    s = run([*base, d.Tick(at=DUE + timedelta(days=45))], policy)[0]
    assert s.inquiry == "payout"
    s = run([*base, d.Tick(at=DUE + timedelta(days=45)), d.Tick(at=DUE + timedelta(days=46))], policy)[0]
    assert s.state == "needs_operator" and s.reason
    s = run([*base, d.Tick(at=DUE + timedelta(days=46))], policy)[0]
    assert (s.state, s.inquiry) == ("awaiting_payout", "payout"), "asked at the first tick past the deadline"


def test_payouts_answer_to_the_payout_inquiry_is_the_reason_and_an_older_answer_is_not_shown() -> None:
    policy = d.Policy(follow_payouts=True)
    asked = DUE + timedelta(days=45)
    base: list[d.Input] = [
        invoice(),
        status(2, "paid", 10_000, DUE),
        d.PayoutOwed(supplier_id="sup-b", at=DUE + timedelta(days=1), plan="waiting: below_minimum"),
    ]
    said = "sup-b: payout po-b waiting (below_minimum)"
    answer = d.InquiryAnswered(inquiry="payout", asked_at=asked, known=True, detail=said, by="payouts")
    s = run([*base, d.Tick(at=asked), answer], policy)[0]
    assert (s.state, s.inquiry, s.steps[-1]) == ("awaiting_payout", "payout", f"payouts answered: {said}")
    s = run([answer, *base, d.Tick(at=asked + timedelta(days=1)), d.Tick(at=asked)], policy)[0]
    assert (s.state, s.reason) == ("needs_operator", f"payout not sent by its deadline; payouts answered: {said}")
    # an answer to a question asked before this deadline (an earlier one) is not this question's answer
    stale = d.InquiryAnswered(
        inquiry="payout", asked_at=asked - timedelta(days=1), known=True, detail=said, by="payouts"
    )
    s = run([*base, stale, d.Tick(at=asked), d.Tick(at=asked + timedelta(days=1))], policy)[0]
    assert s.reason == "payout did not answer by its deadline, even after an inquiry"
    # payments' answer to the collection inquiry is another question's: it does not answer this one
    collection = d.InquiryAnswered(asked_at=asked, known=True, detail="paid")
    ticks = [d.Tick(at=asked), d.Tick(at=asked + timedelta(days=1))]
    assert run([*base, collection, *ticks], policy)[0].reason == s.reason


# --- properties ---------------------------------------------------------------------------------------------

_EVENTS: list[d.Input] = [
    invoice(),
    status(1, "open", 0, T0),
    status(2, "partially_paid", 4_000, DUE),
    status(3, "paid", 10_000, DUE + timedelta(days=2)),
    status(3, "past_due", 4_000, DUE + timedelta(days=15)),
    d.PastDue(at=DUE + timedelta(days=15)),
    d.Collected(payment_id="pa_1", amount_minor=4_000, at=DUE),
    d.Refunded(refund_id="rf_1", amount_minor=1_000, at=DUE + timedelta(days=40)),
    d.CreditNote(credit_note_id="cn_1", amount_minor=500, at=DUE + timedelta(days=41)),
    d.DisputeOpened(dispute_id="dp_1", amount_minor=6_000, at=DUE + timedelta(days=5)),
    d.DisputeClosed(dispute_id="dp_1", won=False, amount_minor=6_000, at=DUE + timedelta(days=60)),
    d.DisputeClosed(dispute_id="dp_2", won=True, amount_minor=100, at=DUE + timedelta(days=60)),
    d.Tick(at=DUE + timedelta(days=3)),
    d.Tick(at=DUE + timedelta(days=18)),
    d.Tick(at=DUE + timedelta(days=100)),
    d.PayoutSent(payout_id="po_1", at=DUE + timedelta(days=20)),
    d.PayoutReturned(payout_id="po_1", reason="closed", at=DUE + timedelta(days=22)),
    d.PayeeUpdated(at=DUE + timedelta(days=23)),
    d.PayoutSettled(payout_id="po_2", at=DUE + timedelta(days=30)),
    d.PayoutOwed(supplier_id="sup-b", at=DUE + timedelta(days=19)),
    d.PayoutOwed(supplier_id="sup-b", at=DUE + timedelta(days=50)),
    d.InquiryAnswered(asked_at=DUE + timedelta(days=17), known=True, detail="open: collection no_method"),
    d.InquiryAnswered(asked_at=DUE + timedelta(days=19), known=False, detail="payments has no invoice"),
    d.InquiryAnswered(inquiry="payout", asked_at=DUE + timedelta(days=100), known=True, detail="x", by="payouts"),
]


@settings(max_examples=300, deadline=None)
@given(
    subset=st.lists(st.sampled_from(_EVENTS), max_size=12),
    order=st.randoms(use_true_random=False),
    dupes=st.lists(st.integers(min_value=0, max_value=11), max_size=4),
    policy=st.builds(
        d.Policy,
        dispute_lost=st.sampled_from(["platform_absorbs", "supplier_charged_back"]),
        follow_payouts=st.booleans(),
    ),
)
def test_any_order_or_duplication_of_the_same_events_ends_in_the_same_state(
    subset: list[d.Input], order: object, dupes: list[int], policy: d.Policy
) -> None:
    shuffled = list(subset)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    repeated = shuffled + [shuffled[i] for i in dupes if i < len(shuffled)]
    a, _, req_a = run(subset, policy)
    b, _, req_b = run(repeated, policy)
    assert (a.state, a.reason, a.waits_for, a.deadline) == (b.state, b.reason, b.waits_for, b.deadline)
    assert set(a.required) == set(b.required)
    # what the final facts call for was requested (once: `run` checks attempts never repeat); a request
    # made on the way (a hold before a late payment) is history, released by pay-when-paid itself
    assert {c.key for c in a.required} <= set(req_a) & set(req_b)
    if a.terminal:
        assert a.reason, "every terminal state has a reason"
    assert a.state in d.TERMINAL | d.OPEN


@settings(max_examples=200, deadline=None)
@given(subset=st.lists(st.sampled_from(_EVENTS), max_size=12))
def test_every_cycle_with_an_invoice_ends_once_time_runs_far_enough(subset: list[d.Input]) -> None:
    """No saga is stuck unseen: with the invoice and time far past every deadline, it is terminal."""
    # time runs on: ticks keep coming (a question is asked at one, given up at a later one)
    events = [invoice(), *subset, d.Tick(at=DUE + timedelta(days=400)), d.Tick(at=DUE + timedelta(days=402))]
    s, _, _ = run(events, d.Policy(follow_payouts=False))
    if not any(step.startswith("dispute") and step.endswith("open") for step in s.steps):  # no deadline yet
        assert s.terminal, s
        assert s.reason


def test_a_closed_dispute_is_lost_or_won_by_its_outcome_never_by_a_guess() -> None:
    """``payment.dispute_closed`` says its outcome in ``outcome``; one sent before that field existed says it at
    the end of its reason; one that says neither is a dead letter (a guessed "lost" would compensate)."""
    import pytest

    from libs.errors import InvalidEventError
    from libs.messaging.envelope import decode_data, decode_raw
    from schemas.events import PaymentEvent
    from services.saga.handlers import to_input
    from tests.fleet import event_bytes

    def closed(reason: str, outcome: str | None) -> object:
        data = PaymentEvent(
            payment_id="dp_1",
            renter_id="rnt-1",
            currency="USD",
            amount="80.00",
            invoice_number="INV-2026-000001",
            at=datetime(2026, 2, 20, tzinfo=UTC),
            reason=reason,
            outcome=outcome,
        )
        raw = decode_raw(event_bytes("payment.dispute_closed", data, id=f"e-{len(reason)}-{outcome}", time=data.at))
        return to_input(decode_data(raw, PaymentEvent))

    number, fact = closed("dispute dp_1 on INV-2026-000001 closed", "won")
    assert (number, fact.won, fact.amount_minor) == ("INV-2026-000001", True, 8000)
    assert closed("dispute dp_1 on INV-2026-000001 closed", "lost")[1].won is False
    assert closed("dispute dp_1 on INV-2026-000001 won", None)[1].won is True  # before the field
    assert closed("dispute dp_1 on INV-2026-000001 lost", None)[1].won is False
    with pytest.raises(InvalidEventError, match="neither won nor lost"):
        closed("dispute dp_1 on INV-2026-000001 closed by the network", None)


def test_a_prepaid_credit_note_counts_what_it_asks_of_the_renter_and_intermediate_statuses_are_skipped() -> None:
    """A prepaid credit note's total is −20.00 but the wallet's part is −30.00: it asks 10.00 more of the
    renter (payments settles ``total − prepaid_applied``), so for the saga it re-opens, it gives nothing back.
    A status about an earlier instant (``latest`` false) moves no saga."""
    from decimal import Decimal

    from libs.messaging.envelope import decode_data, decode_raw
    from schemas.events import CreditNoteIssued, InvoicePaymentStatus
    from services.saga.handlers import to_input
    from tests.fleet import event_bytes

    at = datetime(2026, 3, 20, tzinfo=UTC)
    note = CreditNoteIssued(
        credit_note_id="cn-1",
        number="CN-2026-000001",
        contract_id="c-1",
        renter_id="r-1",
        currency="USD",
        invoice_number="INV-2026-000001",
        adjustment_lines=[],
        subtotal=Decimal("-20.00"),
        tax=Decimal("0.00"),
        total=Decimal("-20.00"),
        issued_at=at,
        prepaid_applied=Decimal("-30.00"),
    )
    moved = to_input(
        decode_data(decode_raw(event_bytes("credit_note.issued", note, id="cn", time=at)), CreditNoteIssued)
    )
    assert moved is not None
    number, fact = moved
    assert number == "INV-2026-000001" and isinstance(fact, d.CreditNote) and fact.amount_minor == 1_000
    earlier = InvoicePaymentStatus(
        invoice_id="inv-1",
        number="INV-2026-000001",
        contract_id="c-1",
        renter_id="r-1",
        currency="USD",
        amount_due=Decimal("100.00"),
        amount_paid=Decimal("40.00"),
        amount_remaining=Decimal("60.00"),
        status="partially_paid",
        revision=2,
        as_of=at,
        latest=False,
    )
    raw = decode_raw(event_bytes("invoice.payment_status", earlier, id="st-2", time=at))
    assert to_input(decode_data(raw, InvoicePaymentStatus)) is None
    raw = decode_raw(
        event_bytes("invoice.payment_status", earlier.model_copy(update={"latest": True}), id="st-3", time=at)
    )
    assert to_input(decode_data(raw, InvoicePaymentStatus)) is not None


def test_payout_plans_name_the_suppliers_each_invoice_waits_for() -> None:
    """``payout.planned|held|waiting`` with the invoices whose earnings they pay become ``PayoutOwed`` for
    each invoice's saga; a waiting plan that owes nothing (``nothing_payable``) and a release do not."""
    from decimal import Decimal

    from libs.messaging.envelope import decode_data, decode_raw
    from schemas.events import PayoutEvent
    from services.saga.handlers import payout_inputs
    from tests.fleet import event_bytes

    at = datetime(2026, 3, 1, tzinfo=UTC)

    def plan(kind: str, reason: str | None) -> list[tuple[str, d.Input]]:
        data = PayoutEvent(
            payout_id="po-1",
            supplier_id="sup-b",
            currency="USD",
            months=["2026-01"],
            amount=Decimal("12.00"),
            payout_currency="USD",
            payout_amount=Decimal("12.00"),
            rail="ach",
            payee_event_id=None,
            state=None if kind == "payout.waiting" else "planned",
            reason=reason,  # type: ignore[arg-type]
            held_minor=0,
            planned_at=at,
            invoices=["inv-2", "inv-1", "inv-2"],
            invoice_numbers=["INV-2026-000002", "INV-2026-000001", "INV-2026-000002"],
        )
        raw = decode_raw(event_bytes(kind, data, id=f"e-{kind}-{reason}", time=at))
        return payout_inputs(decode_data(raw, PayoutEvent))

    def owed(word: str) -> list[tuple[str, d.Input]]:
        fact = d.PayoutOwed(supplier_id="sup-b", at=at, plan=word)
        return [("INV-2026-000001", fact), ("INV-2026-000002", fact)]

    assert plan("payout.waiting", "below_minimum") == owed("waiting: below_minimum")
    assert plan("payout.planned", None) == owed("planned")
    assert plan("payout.held", "on_hold") == owed("held: on_hold")
    assert plan("payout.waiting", "nothing_payable") == []
    assert plan("payout.released", None) == []
