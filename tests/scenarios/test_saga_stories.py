"""The billing cycle's saga (issue 11) as stories over Kafka and PostgreSQL.

1. The payments worker itself collects against ``settle fakepsp``: one renter's card pays on the due date,
   another's is declined through dunning (R14) until the invoice is past due. The saga worker follows
   both from the events payments publishes: the paid cycle completes, the past-due one is compensated
   (hold_earnings requested once, the suspend that payments sent recorded as a step, not sent again).
   Invariant: each saga's state matches what payments' books say of the invoice.
2. The saga worker alone, fed what invoicing and payments would publish, out of order and twice: a refund
   after the supplier's earnings were released → clawback; a lost dispute under ``supplier_charged_back``
   → renter revenue and supplier share reversed; a collection that never answers → asked, then held and
   handed to an operator, whose audited retry asks again; the late payment completes it.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from domain.contracts import chart
from libs.ledger import verify
from libs.messaging.worker import Service
from libs.money import minor_to_ledger
from schemas import topics
from schemas.events import InvoicePaymentStatus, PaymentEvent, PayoutEvent
from schemas.inputs import ClockTicked
from services.cli.sagas import retry
from services.operations import saga_check
from services.payments.main import SERVICE as PAYMENTS
from services.saga import domain, read_model
from services.saga.handlers import subscription
from services.saga.main import SERVICE as SAGA
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until
from tests.integration.test_payments_service import FEB, invoice
from tests.payments.processes import against_fakepsp, fakepsp
from tests.payments.test_collection_stories import method
from tests.payments.test_inquiry_answers import collection_question
from tests.scenarios.test_payouts_stories import settle_cli

pytestmark = pytest.mark.integration

DUE = FEB + timedelta(days=15)


def tick(at: datetime) -> tuple[Any, str, bytes]:
    return (
        topics.CLOCK_TICKS,
        "clock",
        event_bytes("clock.ticked", ClockTicked(at=at), id=f"tick-{at:%m%d%H}", time=at),
    )


async def _sagas(stack: Stack) -> dict[str, dict[str, Any]]:
    async with stack.pool.acquire() as conn:
        return {r["invoice_number"]: r for r in await read_model.sagas(conn)}


async def _state_is(stack: Stack, number: str, state: str, *, inquiry: bool = False) -> bool:
    saga = (await _sagas(stack)).get(number, {})
    return saga.get("state") == state and (not inquiry or bool(saga.get("inquiry")))


async def _requests(stack: Stack) -> list[dict[str, Any]]:
    records = [orjson.loads(r.value) for r in await read_topic(stack, topics.SAGAS, timeout_s=10)]
    return [r["data"] for r in records if r["type"] == "saga.compensation_requested"]


async def test_collection_paid_completes_and_past_due_is_compensated(stack: Stack) -> None:
    renters = {"rnt-ok": "tok_visa", "rnt-dun": "tok_insufficient_funds"}
    with fakepsp() as base:
        story = against_fakepsp(stack, base, gateway_timeout_s=2.0)
        items: list[tuple[Any, str, bytes]] = []
        numbers = {}
        for n, (renter, token) in enumerate(renters.items(), start=1):
            m = method(renter, token, f"pm-{renter}")
            items.append(
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m-{renter}", time=FEB))
            )
            inv = invoice(
                f"INV-2026-{n:06d}", f"ctr-{renter}", renter, due="100.00", start=FEB - timedelta(days=31), end=FEB
            )
            numbers[renter] = inv.number
            items.append(
                (
                    topics.INVOICES_FINALIZED,
                    inv.contract_id,
                    event_bytes("invoice.finalized", inv, id=f"i-{renter}", time=FEB),
                )
            )
        async with running(story, [PAYMENTS, SAGA]):
            await publish(story, items)

            async def started() -> bool:
                sagas = await _sagas(story)
                return all(sagas.get(n, {}).get("state") == "collecting" for n in numbers.values())

            await wait_until(started, timeout_s=90, what="a saga per invoice, collecting")
            for day in (0, 1, 3, 5, 7, 10, 14):
                at = DUE + timedelta(days=day)
                await publish(story, [tick(at)])

                async def caught_up(at: datetime = at) -> bool:
                    async with story.pool.acquire() as conn:
                        now = await conn.fetchval("select at from payments.clock where id = 1")
                        busy = await conn.fetchval(
                            "select count(*) from payments.attempts where state in ('pending', 'sending')"
                        )
                    return now is not None and now >= at and busy == 0

                await wait_until(caught_up, timeout_s=90, what=f"payments at {at}")

            async def ended() -> bool:
                sagas = await _sagas(story)
                return (
                    sagas[numbers["rnt-ok"]]["state"] == "completed"
                    and sagas[numbers["rnt-dun"]]["state"] == "compensated"
                )

            await wait_until(ended, timeout_s=90, what="the paid saga completed, the past-due one compensated")

            async def published() -> bool:
                return len(await _requests(story)) >= 1

            await wait_until(published, timeout_s=60, what="the compensation request on sagas.v1")
            requests = await _requests(story)
            platform = [orjson.loads(r.value) for r in await read_topic(story, topics.PLATFORM_COMMANDS, timeout_s=10)]

        async with stack.pool.acquire() as conn:
            sagas = {r["invoice_number"]: r for r in await read_model.sagas(conn)}
            paid = await read_model.saga_detail(conn, numbers["rnt-ok"])
            dunned = await read_model.saga_detail(conn, numbers["rnt-dun"])
            # one invoice per renter here, so the renter's receivable is the invoice's (invoicing, which posts the
            # invoice to it, does not run: only what payments applied moves it)
            receivable = {
                number: await conn.fetchval(
                    "select balance from ledger.accounts where code = $1", chart.receivable(renter, "USD").code
                )
                for renter, number in numbers.items()
            }
            books = {
                r["number"]: dict(r)
                for r in await conn.fetch("select number, status, remaining_minor from payments.invoice_status")
            }
            report = await verify(conn)
    assert report.ok, report

    assert paid is not None and dunned is not None
    assert sagas[numbers["rnt-ok"]]["reason"] == "paid"
    assert any("earnings released" in s for s in paid["steps"])
    assert [c["kind"] for c in paid["compensations"]] == []
    assert "earnings held" in dunned["reason"]
    assert any("suspend requested by payments" in s for s in dunned["steps"])
    assert [(c["kind"], c["ref"], c["attempts"], c["state"]) for c in dunned["compensations"]] == [
        ("hold_earnings", numbers["rnt-dun"], 1, "done")
    ]
    # every transition names the event that caused it; the last of the past-due saga is payments' past-due
    # (or its status change), never a tick
    assert all(t["event_id"] and t["event_type"] for t in dunned["transitions"])
    assert dunned["transitions"][-1]["event_type"] in {"invoice.past_due", "invoice.payment_status"}
    assert [(r["compensation"], r["ref"], r["attempt"]) for r in requests] == [
        ("hold_earnings", numbers["rnt-dun"], 1)
    ], "requested exactly once"
    suspends = [p for p in platform if p["type"] == "platform.suspend_requested"]
    assert [p["data"]["contract_id"] for p in suspends] == ["ctr-rnt-dun"], "payments' one suspend, no second"
    # the invariant: a saga's state matches the books — completed ⇔ the invoice is paid; compensated for
    # collection ⇔ the renter's receivable for that invoice is still open (past due, remaining > 0)
    for number, saga in sagas.items():
        book = books[number]
        if saga["state"] == "completed":
            assert book["status"] == "paid" and book["remaining_minor"] == 0, number
        if saga["state"] == "compensated":
            assert book["status"] == "past_due" and book["remaining_minor"] > 0, number
        if book["status"] == "past_due":
            assert saga["state"] == "compensated", number
    # and in the ledger: the completed cycle's receivable was settled by the money applied; the compensated
    # one's was not touched — the exposure is kept
    assert receivable[numbers["rnt-ok"]] == -minor_to_ledger(10_000, "USD")
    assert receivable[numbers["rnt-dun"]] in (None, 0)
    # the same invariant as an operator reads it (`settle sagas verify`), against payments' own records; the
    # hold waits for payouts' answer (no payouts worker in this story): waiting, not a violation
    async with stack.pool.acquire() as conn:
        checked = await saga_check.check(conn)
    assert (checked.violations, checked.waiting) == ([], [f"hold_earnings:{numbers['rnt-dun']}"])
    assert checked.sagas == {"completed": 1, "compensated": 1}


async def test_payments_answers_the_inquiry_and_the_operator_reads_its_answer(stack: Stack) -> None:
    """A renter without a payment method: payments can never collect (R14 needs a method), so the invoice is
    neither paid nor past due at the saga's deadline. The saga asks; the payments worker answers from its
    records once (``collection.answered`` on payments.v1); the saga hands the cycle to an operator with that
    answer as its reason — the operator reads "no method", not "payments is silent"."""
    inv = invoice("INV-2026-000201", "ctr-nom", "rnt-nom", due="100.00", start=FEB - timedelta(days=31), end=FEB)
    deadline = inv.due_at + timedelta(days=17)
    with fakepsp() as base:
        story = against_fakepsp(stack, base, gateway_timeout_s=2.0)
        async with running(story, [PAYMENTS, SAGA]):
            await publish(
                story,
                [
                    (
                        topics.INVOICES_FINALIZED,
                        inv.contract_id,
                        event_bytes("invoice.finalized", inv, id="i-nom", time=FEB),
                    )
                ],
            )
            await wait_until(lambda: _state_is(story, inv.number, "collecting"), timeout_s=90, what="collecting")
            await publish(story, [tick(inv.due_at)])

            async def no_method() -> bool:
                async with story.pool.acquire() as conn:
                    state = await conn.fetchval(
                        "select state from payments.intents where invoice_number = $1", inv.number
                    )
                return state == "no_method"

            await wait_until(no_method, timeout_s=90, what="payments' intent waiting for a method")
            await publish(story, [tick(deadline)])
            await wait_until(
                lambda: _state_is(story, inv.number, "inquiring", inquiry=True), timeout_s=60, what="the saga asking"
            )

            async def answered() -> list[dict[str, Any]]:
                records = [orjson.loads(r.value) for r in await read_topic(story, topics.PAYMENTS, timeout_s=10)]
                return [r for r in records if r["type"] == "collection.answered"]

            async def heard() -> bool:
                async with story.pool.acquire() as conn:
                    saga = await read_model.saga_detail(conn, inv.number)
                return saga is not None and any(step.startswith("payments answered") for step in saga["steps"])

            await wait_until(heard, timeout_s=60, what="payments' answer read by the saga")
            async with story.pool.acquire() as conn:
                asking = await read_model.saga_detail(conn, inv.number)
            await publish(
                story, [tick(deadline), tick(deadline + timedelta(days=1))]
            )  # a repeated tick: no new question
            await wait_until(
                lambda: _state_is(story, inv.number, "needs_operator"), timeout_s=60, what="handed to an operator"
            )
            # a question about an invoice payments never received (as a saga would ask it): "known: false"
            async with story.pool.acquire() as conn:
                checked = await saga_check.check(conn)
            stranger = collection_question("INV-NOBODY", deadline)
            await publish(
                story, [(topics.SAGAS, stranger.saga_id, event_bytes("saga.step", stranger, id="ask-x", time=deadline))]
            )

            async def both() -> bool:
                return {a["data"]["invoice_number"] for a in await answered()} == {inv.number, "INV-NOBODY"}

            await wait_until(both, timeout_s=60, what="payments' answer about an invoice it does not know")
            answers = await answered()
        async with stack.pool.acquire() as conn:
            shown = await read_model.saga_detail(conn, inv.number)
    nobody = [a["data"] for a in answers if a["data"]["invoice_number"] == "INV-NOBODY"]
    assert len(nobody) == 1 and (nobody[0]["known"], nobody[0]["status"], nobody[0]["renter_id"]) == (
        False,
        None,
        "rnt-x",
    )
    assert nobody[0]["detail"].startswith("payments has no invoice INV-NOBODY: not received, or not read yet")
    answers = [a for a in answers if a["data"]["invoice_number"] == inv.number]
    assert len(answers) == 1, "one answer per question"
    data = answers[0]["data"]
    assert (data["invoice_number"], data["known"], data["status"], data["collection"]) == (
        inv.number,
        True,
        "open",
        "no_method",
    )
    assert (data["amount_paid"], data["amount_remaining"]) == ("0.00", "100.00")
    said = "open: paid 0.00 of 100.00 USD, 100.00 remaining; collection no_method after 0 tries"
    assert data["detail"].startswith(said), data["detail"]
    assert asking is not None and any(step.startswith(f"payments answered: {said}") for step in asking["steps"])
    assert shown is not None and shown["state"] == "needs_operator"
    assert shown["reason"].startswith(f"collection not finished by its deadline; payments answered: {said}")
    assert "no default payment method" in shown["reason"]
    assert [(c["kind"], c["ref"]) for c in shown["compensations"]] == [("hold_earnings", inv.number)]
    assert checked.violations == []


def _status(number: str, contract: str, renter: str, revision: int, status: str, paid: str, at: datetime) -> bytes:
    data = InvoicePaymentStatus(
        invoice_id=f"inv-{number}",
        number=number,
        contract_id=contract,
        renter_id=renter,
        currency="USD",
        amount_due=Decimal("100.00"),
        amount_paid=Decimal(paid),
        amount_remaining=Decimal("100.00") - Decimal(paid),
        status=status,  # type: ignore[arg-type]
        revision=revision,
        as_of=at,
    )
    return event_bytes("invoice.payment_status", data, id=f"st-{number}-{revision}", time=at)


def _payment(
    type: str, payment_id: str, number: str, renter: str, amount: str, at: datetime, reason: str = ""
) -> bytes:
    data = PaymentEvent(
        payment_id=payment_id,
        renter_id=renter,
        currency="USD",
        amount=Decimal(amount),
        invoice_number=number,
        gateway="stripe",
        at=at,
        reason=reason,
    )
    return event_bytes(type, data, id=f"pay-{type}-{payment_id}", time=at)


async def test_refund_clawback_lost_dispute_per_policy_and_an_operator_retry(stack: Stack) -> None:
    policy = domain.Policy(dispute_lost="supplier_charged_back")
    saga = Service(name="saga", subscriptions=(subscription(policy),))
    start, end = FEB - timedelta(days=31), FEB
    refunded = invoice("INV-2026-000101", "ctr-r", "rnt-r", due="100.00", start=start, end=end)
    disputed = invoice("INV-2026-000102", "ctr-d", "rnt-d", due="100.00", start=start, end=end)
    silent = invoice("INV-2026-000103", "ctr-s", "rnt-s", due="100.00", start=start, end=end)
    later = DUE + timedelta(days=10)
    items: list[tuple[Any, str, bytes]] = [
        # the status before the invoice it is about: the saga waits (pending), then starts
        (topics.INVOICE_PAYMENTS, "ctr-r", _status(refunded.number, "ctr-r", "rnt-r", 2, "paid", "100.00", DUE)),
        (topics.PAYMENTS, "rnt-r", _payment("payment.refunded", "rf_1", refunded.number, "rnt-r", "30.00", later)),
        (topics.INVOICE_PAYMENTS, "ctr-d", _status(disputed.number, "ctr-d", "rnt-d", 2, "paid", "100.00", DUE)),
        (topics.PAYMENTS, "rnt-d", _payment("payment.disputed", "dp_1", disputed.number, "rnt-d", "100.00", later)),
        (
            topics.PAYMENTS,
            "rnt-d",
            _payment(
                "payment.dispute_closed",
                "dp_1",
                disputed.number,
                "rnt-d",
                "100.00",
                later,
                f"dispute dp_1 on {disputed.number} lost",
            ),
        ),
    ]
    for inv in (refunded, disputed, silent):
        items.append(
            (
                topics.INVOICES_FINALIZED,
                inv.contract_id,
                event_bytes("invoice.finalized", inv, id=f"i-{inv.number}", time=end),
            )
        )
    deadline = silent.due_at + timedelta(days=17)
    async with running(stack, [saga]):
        await publish(stack, items)
        await publish(stack, items)  # every event twice: no effect

        async def moved() -> bool:
            sagas = await _sagas(stack)
            return (
                sagas.get(refunded.number, {}).get("state") == "compensated"
                and sagas.get(disputed.number, {}).get("state") == "compensated"
                and sagas.get(silent.number, {}).get("state") == "collecting"
            )

        await wait_until(moved, timeout_s=90, what="refund and dispute compensated, the silent one collecting")
        await publish(stack, [tick(deadline)])

        async def asking() -> bool:
            return (await _sagas(stack))[silent.number]["state"] == "inquiring"

        await wait_until(asking, timeout_s=60, what="the silent collection asked")
        await publish(stack, [tick(deadline + timedelta(days=1))])

        async def handed_over() -> bool:
            return (await _sagas(stack))[silent.number]["state"] == "needs_operator"

        await wait_until(handed_over, timeout_s=60, what="the silent collection handed to an operator")
        # what an operator sees: `settle sagas list --stuck --json` and `settle sagas show`, as processes
        code, out, err = await settle_cli(stack, "sagas", "list", "--stuck", "--json")
        assert code == 0, err
        stuck = [orjson.loads(line) for line in out.splitlines()]
        assert [(s["invoice_number"], s["state"]) for s in stuck] == [(silent.number, "needs_operator")]
        assert "even after an inquiry" in stuck[0]["reason"]
        code, out, err = await settle_cli(stack, "sagas", "show", silent.number)
        assert code == 0, err
        shown = orjson.loads(out)
        assert (
            shown["waits_for"] == "an operator (settle sagas retry)"
            and shown["compensations"][0]["kind"] == "hold_earnings"
        )
        assert [t["event_type"] for t in shown["transitions"]][-1] == "clock.ticked"

        # the operator's audited retry (once per command id): the saga asks again
        for _ in range(2):
            async with stack.pool.acquire() as conn, conn.transaction():
                before, after, _applied = await retry(
                    conn,
                    silent.number,
                    by="ops@settle",
                    reason="payments restarted",
                    command_id="op-retry-1",
                    policy=policy,
                    at=deadline,
                )
        assert (before, after) == ("needs_operator", "inquiring")
        # payments answers: paid late
        await publish(
            stack,
            [
                (
                    topics.INVOICE_PAYMENTS,
                    "ctr-s",
                    _status(silent.number, "ctr-s", "rnt-s", 2, "paid", "100.00", deadline),
                )
            ],
        )

        async def completed() -> bool:
            return (await _sagas(stack))[silent.number]["state"] == "completed"

        await wait_until(completed, timeout_s=60, what="the late payment completing the saga")

        async def all_requests() -> bool:
            return len(await _requests(stack)) >= 4

        await wait_until(all_requests, timeout_s=60, what="the compensation requests on sagas.v1")
        requests = await _requests(stack)
        async with stack.pool.acquire() as conn:
            detail = await read_model.saga_detail(conn, silent.number)
            commands = await conn.fetchval("select count(*) from saga.operator_commands")

    kinds = Counter((r["invoice_number"], r["compensation"], r["ref"]) for r in requests)
    assert kinds == {
        (refunded.number, "clawback", "rf_1"): 1,
        (disputed.number, "reverse_revenue", "dp_1"): 1,
        (disputed.number, "reverse_supplier_share", "dp_1"): 1,
        (silent.number, "hold_earnings", silent.number): 1,
    }, "each compensation requested once, though every event came twice"
    assert detail is not None and commands == 1
    assert [t["to_state"] for t in detail["transitions"]] == [
        "collecting",
        "inquiring",
        "compensating",  # hold_earnings requested (in the outbox: done in the same transaction)
        "needs_operator",
        "inquiring",
        "completed",
    ]
    assert [t["event_type"] for t in detail["transitions"]] == [
        "invoice.finalized",
        "clock.ticked",
        "clock.ticked",
        "clock.ticked",
        "operator.saga_retry",
        "invoice.payment_status",
    ]
    assert detail["operator_commands"][0]["requested_by"] == "ops@settle"


def _payout(
    type: str,
    payout_id: str,
    numbers: list[str],
    file_id: str | None,
    at: datetime,
    code: str = "",
    *,
    supplier: str = "sup-1",
    reason: str | None = None,
) -> bytes:
    state = {"payout.sent": "sent", "payout.completed": "completed", "payout.waiting": None}.get(
        type, type.removeprefix("payout.")
    )
    data = PayoutEvent(
        payout_id=payout_id,
        supplier_id=supplier,
        currency="USD",
        months=["2026-01"],
        amount=Decimal("60.00"),
        payout_currency="USD",
        payout_amount=Decimal("60.00"),
        rail="ach",
        payee_event_id="payee-1",
        state=state,  # type: ignore[arg-type]
        reason=reason,  # type: ignore[arg-type]
        held_minor=0,
        planned_at=at,
        file_id=file_id,
        return_code=code or None,
        invoices=[f"inv-{n}" for n in numbers],
        invoice_numbers=numbers,
    )
    return event_bytes(type, data, id=f"po-{type}-{payout_id}-{file_id}", time=at)


async def test_a_followed_payout_returned_then_resent_and_settled_completes_the_cycle(stack: Stack) -> None:
    """With payouts followed, a paid cycle ends only when a payout of its earnings settled at the bank. The
    saga reads payouts.v1's steps for every invoice a payout names: sent → returned (R03: reversed, payee
    flagged) → waits for the payee's new details, seen as the retry's send in another file → completed by
    the settlement (R16/R17). Every event twice: no effect."""
    policy = domain.Policy(follow_payouts=True)
    saga = Service(name="saga", subscriptions=(subscription(policy),))
    start, end = FEB - timedelta(days=31), FEB
    inv = invoice("INV-2026-000201", "ctr-p", "rnt-p", due="100.00", start=start, end=end)
    paid = DUE
    first = [
        (topics.INVOICES_FINALIZED, "ctr-p", event_bytes("invoice.finalized", inv, id="i-201", time=end)),
        (topics.INVOICE_PAYMENTS, "ctr-p", _status(inv.number, "ctr-p", "rnt-p", 2, "paid", "100.00", paid)),
        (topics.PAYOUTS, "sup-1", _payout("payout.sent", "po-1", [inv.number], "file-a", paid + timedelta(days=1))),
    ]
    returned = [
        (
            topics.PAYOUTS,
            "sup-1",
            _payout("payout.returned", "po-1", [inv.number], "file-a", paid + timedelta(days=3), "R03"),
        )
    ]
    resent = [
        (topics.PAYOUTS, "sup-1", _payout("payout.sent", "po-1", [inv.number], "file-b", paid + timedelta(days=5))),
        (
            topics.PAYOUTS,
            "sup-1",
            _payout("payout.completed", "po-1", [inv.number], "file-b", paid + timedelta(days=6)),
        ),
    ]

    async def state_is(state: str) -> bool:
        return (await _sagas(stack)).get(inv.number, {}).get("state") == state

    async with running(stack, [saga]):
        await publish(stack, first)
        await publish(stack, first)
        await wait_until(lambda: state_is("payout_sent"), timeout_s=60, what="the payout sent")
        await publish(stack, returned)
        await wait_until(lambda: state_is("payout_returned"), timeout_s=60, what="the payout returned")
        await publish(stack, resent)
        await publish(stack, resent)
        await wait_until(lambda: state_is("completed"), timeout_s=60, what="settled at the bank")
        async with stack.pool.acquire() as conn:
            shown = await read_model.saga_detail(conn, inv.number)
    assert shown is not None
    assert shown["reason"] == "paid and settled at the bank"
    moves = [(t["to_state"], t["event_type"]) for t in shown["transitions"]]
    # (the first send may share a batch with the payment: that transition names the batch's cause)
    assert [m[0] for m in moves][-4:] == ["payout_sent", "payout_returned", "payout_sent", "completed"], moves
    assert moves[-3:] == [
        ("payout_returned", "payout.returned"),
        ("payout_sent", "payout.sent"),
        ("completed", "payout.completed"),
    ], moves


def _paid_cycle(number: str, contract: str, renter: str) -> tuple[Any, list[tuple[str, str, bytes]]]:
    """A January invoice of 100.00, finalized and paid at its due date: the start of a followed cycle."""
    start, end = FEB - timedelta(days=31), FEB
    inv = invoice(number, contract, renter, due="100.00", start=start, end=end)
    return inv, [
        (topics.INVOICES_FINALIZED, contract, event_bytes("invoice.finalized", inv, id=f"i-{number}", time=end)),
        (topics.INVOICE_PAYMENTS, contract, _status(number, contract, renter, 2, "paid", "100.00", DUE)),
    ]


async def test_a_followed_cycle_waits_for_a_supplier_whose_payout_is_never_sent(stack: Stack) -> None:
    """Two suppliers earn on one invoice. Payouts plans sup-1's payout and keeps sup-2's waiting below its
    minimum; both plans name the invoice. sup-1's payout settles: the cycle does not complete — it waits
    for sup-2's payout, asks past the payout deadline (45 days of event time after the earnings were
    released), then needs an operator. Every event twice: no effect."""
    policy = domain.Policy(follow_payouts=True)
    saga = Service(name="saga", subscriptions=(subscription(policy),))
    inv, paid = _paid_cycle("INV-2026-000301", "ctr-q", "rnt-q")
    plan_at = DUE + timedelta(days=1)
    events = [
        *paid,
        (topics.PAYOUTS, "sup-1", _payout("payout.planned", "po-q1", [inv.number], None, plan_at)),
        (
            topics.PAYOUTS,
            "sup-2",
            _payout("payout.waiting", "po-q2", [inv.number], None, plan_at, supplier="sup-2", reason="below_minimum"),
        ),
        (topics.PAYOUTS, "sup-1", _payout("payout.sent", "po-q1", [inv.number], "file-q", plan_at)),
        (
            topics.PAYOUTS,
            "sup-1",
            _payout("payout.completed", "po-q1", [inv.number], "file-q", plan_at + timedelta(days=2)),
        ),
    ]

    async def saga_of() -> dict[str, Any]:
        return (await _sagas(stack)).get(inv.number, {})

    async def both_plans_seen() -> bool:
        async with stack.pool.acquire() as conn:
            facts = await conn.fetchval("select facts from saga.sagas where invoice_number = $1", inv.number)
        return facts is not None and set(facts.get("payouts_owed", {})) == {"sup-1", "sup-2"}

    async def sup_1_settled() -> bool:
        async with stack.pool.acquire() as conn:
            shown = await read_model.saga_detail(conn, inv.number, policy)
        return (
            shown is not None
            and "payouts settled for 1 of 2 suppliers" in shown["steps"]
            and "payouts owed, not sent (sup-2: waiting: below_minimum)" in shown["steps"]
        )

    # The plans come from one planning run, days before the bank settles sup-1's payout; they are keyed by
    # supplier (two partitions), so the story waits until both reached the saga before the payout moves.
    plans, moves_of_sup_1 = events[:4], events[4:]
    async with running(stack, [saga]):
        await publish(stack, plans)
        await publish(stack, plans)
        await wait_until(both_plans_seen, timeout_s=60, what="both suppliers' plans")
        await publish(stack, moves_of_sup_1)
        await publish(stack, moves_of_sup_1)
        await wait_until(sup_1_settled, timeout_s=60, what="sup-1's payout settled")
        assert (await saga_of())["state"] == "awaiting_payout", "sup-2 is still owed its payout"
        await publish(stack, [tick(DUE + timedelta(days=45, hours=1))])
        await wait_until(
            lambda: _state_is(stack, inv.number, "awaiting_payout", inquiry=True), timeout_s=60, what="asked"
        )
        await publish(stack, [tick(DUE + timedelta(days=46, hours=1))] * 2)
        await wait_until(
            lambda: _state_is(stack, inv.number, "needs_operator"), timeout_s=60, what="handed to an operator"
        )
        async with stack.pool.acquire() as conn:
            shown = await read_model.saga_detail(conn, inv.number)
    assert shown is not None
    assert shown["reason"] == "payout did not answer by its deadline, even after an inquiry"
    assert "payouts owed, not sent (sup-2: waiting: below_minimum)" in shown["steps"], (
        "the steps the worker stored, under its policy (following payouts), whatever policy the reader has"
    )
    moves = [(t["to_state"], t["event_type"]) for t in shown["transitions"]]
    assert ("completed", "payout.completed") not in moves, moves
    assert moves[-1] == ("needs_operator", "clock.ticked"), moves


async def test_a_plan_read_after_the_cycle_completed_reopens_it_and_is_counted(stack: Stack) -> None:
    """The race a lagging saga worker meets (two suppliers' plans on two partitions), made certain: sup-1's
    payout settles and the cycle completes before sup-2's plan reaches the saga. The plan reopens the
    cycle (`completed → awaiting_payout`, caused by the plan), counted by `settle_sagas_reopened_total`;
    sup-2's payout then settles and the cycle completes again. Every event twice: no effect."""

    def reopened() -> float:
        return REGISTRY.get_sample_value("settle_sagas_reopened_total", {"state": "completed"}) or 0.0

    policy = domain.Policy(follow_payouts=True)
    saga = Service(name="saga", subscriptions=(subscription(policy),))
    inv, paid = _paid_cycle("INV-2026-000302", "ctr-o", "rnt-o")
    plan_at = DUE + timedelta(days=1)
    sup_1 = [
        *paid,
        (topics.PAYOUTS, "sup-1", _payout("payout.planned", "po-o1", [inv.number], None, plan_at)),
        (topics.PAYOUTS, "sup-1", _payout("payout.sent", "po-o1", [inv.number], "file-o", plan_at)),
        (topics.PAYOUTS, "sup-1", _payout("payout.completed", "po-o1", [inv.number], "file-o", plan_at)),
    ]
    late_plan = [
        (
            topics.PAYOUTS,
            "sup-2",
            _payout("payout.planned", "po-o2", [inv.number], None, plan_at, supplier="sup-2"),
        )
    ]
    sup_2 = [
        (topics.PAYOUTS, "sup-2", _payout("payout.sent", "po-o2", [inv.number], "file-o2", plan_at, supplier="sup-2")),
        (
            topics.PAYOUTS,
            "sup-2",
            _payout("payout.completed", "po-o2", [inv.number], "file-o2", plan_at, supplier="sup-2"),
        ),
    ]

    async def owed_violations(follow_payouts: bool = True) -> list[str]:
        async with stack.pool.acquire() as conn:
            checked = await saga_check.check(conn, follow_payouts=follow_payouts)
        return [v.detail for v in checked.violations if v.rule == "completed_while_payout_owed"]

    reopened_before = reopened()
    owed_seen: list[list[str]] = []
    async with running(stack, [saga]):
        for batch, state in ((sup_1, "completed"), (late_plan, "awaiting_payout"), (sup_2, "completed")):
            await publish(stack, batch)
            await publish(stack, batch)
            await wait_until(lambda s=state: _state_is(stack, inv.number, s), timeout_s=60, what=state)
            if batch is sup_1:
                # payouts has planned sup-2's payout naming the invoice (its own record), the saga has not
                # read the plan yet: settle sagas verify sees the cycle completed while a payout is owed
                async with stack.pool.acquire() as conn:
                    await conn.execute(
                        """insert into payouts.payouts (payout_id, supplier_id, currency, months, amount_minor,
                               held_minor, payout_currency, payout_amount_minor, rail, state, planned_at,
                               invoice_numbers)
                           values ('po-o2', 'sup-2', 'USD', '{2026-01}', 6000, 0, 'USD', 6000, 'ach', 'planned', $1,
                                   $2)""",
                        plan_at,
                        [inv.number],
                    )
                owed_seen += [await owed_violations(), await owed_violations(follow_payouts=False)]
            elif batch is late_plan:
                owed_seen.append(await owed_violations())
        async with stack.pool.acquire() as conn:
            await conn.execute("update payouts.payouts set state = 'completed' where payout_id = 'po-o2'")
        owed_seen.append(await owed_violations())
        async with stack.pool.acquire() as conn:
            shown = await read_model.saga_detail(conn, inv.number)
    assert owed_seen == [
        ["payouts still owes a payout naming it: po-o2 of sup-2 (planned)"],
        [],  # the saga does not follow payouts: not checked
        [],  # reopened: waiting for it
        [],  # paid
    ], owed_seen
    assert shown is not None
    assert shown["reason"] == "paid and settled at the bank"
    moves = [(t["from_state"], t["to_state"], t["event_type"]) for t in shown["transitions"]]
    assert ("completed", "awaiting_payout", "payout.planned") in moves, moves
    assert moves[-1][1:] == ("completed", "payout.completed"), moves
    assert reopened() == reopened_before + 1
