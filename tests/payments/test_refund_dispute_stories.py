"""Money going back, as a billing story over Kafka, PostgreSQL and ``settle fakepsp``: a credit note
on a paid invoice refunded to the card, an operator refund of a wire (manual) and one refused for
being more than was paid, a dispute opened and lost, a receipt moved to the right renter, and an
operator retry after a hard decline. Amounts are checked on the invoices, the ledger and at the
processor.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from domain.contracts import chart
from libs.ledger import balances, verify
from libs.money import minor_to_ledger
from schemas import topics
from schemas.events import AdjustmentLine, CreditNoteIssued, InvoiceFinalized, PaymentCommand, ProcessorEventReceived
from services.payments import read_model
from services.payments.main import SERVICE as PAYMENTS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until
from tests.integration.test_payments_service import FEB, invoice, receipt, wait_remaining
from tests.payments.processes import admin, against_fakepsp, fakepsp
from tests.payments.test_collection_stories import _tick, method

pytestmark = pytest.mark.integration

DUE = FEB + timedelta(days=15)
LATER = DUE + timedelta(days=2)


def command(type_: str, n: int, **fields: Any) -> tuple[Any, str, bytes]:
    data = PaymentCommand(command_id=f"cmd-{n}", requested_by="finance@test", reason="story", **fields)
    return (topics.PAYMENT_COMMANDS, data.renter_id, event_bytes(type_, data, id=f"cmd-{n}", time=LATER))


async def _status(stack: Stack, number: str) -> dict[str, Any]:
    async with stack.pool.acquire() as conn:
        row = await conn.fetchrow("select * from payments.invoice_status where number = $1", number)
    assert row is not None, number
    return dict(row)


async def test_refunds_disputes_receipts_and_operator_commands(stack: Stack) -> None:
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        start, end = FEB - timedelta(days=31), FEB
        invoices = {
            "card": invoice("INV-2026-000001", "ctr-card", "rnt-card", due="100.00", start=start, end=end),
            "wire": invoice("INV-2026-000002", "ctr-wire", "rnt-wire", due="50.00", start=start, end=end),
            "disp": invoice("INV-2026-000003", "ctr-disp", "rnt-disp", due="80.00", start=start, end=end),
            "hard": invoice("INV-2026-000004", "ctr-hard", "rnt-hard", due="60.00", start=start, end=end),
        }
        items: list[tuple[Any, str, bytes]] = [
            (topics.INVOICES_FINALIZED, i.contract_id, event_bytes("invoice.finalized", i, id=f"i-{k}", time=FEB))
            for k, i in invoices.items()
        ]
        for renter, token in (("rnt-card", "tok_visa"), ("rnt-disp", "tok_visa"), ("rnt-hard", "tok_chain_hard_ok")):
            m = method(renter, token, f"pm-{renter}")
            items.append(
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m-{renter}", time=FEB))
            )
        wire = receipt("rnt-wire", "w-1", "50.00", FEB + timedelta(days=3), reference="INV-2026-000002")
        stray = receipt("rnt-nobody", "w-2", "20.00", FEB + timedelta(days=4))
        for n, r in enumerate((wire, stray)):
            items.append(
                (
                    topics.PAYMENTS_RECEIVED,
                    r.renter_id,
                    event_bytes("payment.received", r, id=f"r-{n}", time=r.received_at),
                )
            )
        async with running(story, [PAYMENTS]):
            await publish(story, items)

            async def stored() -> bool:
                async with stack.pool.acquire() as conn:
                    return await conn.fetchval("select count(*) from payments.invoices") == len(invoices)

            await wait_until(stored, what="invoices stored")
            await _tick(story, DUE)
            assert (await _status(story, "INV-2026-000001"))["status"] == "paid"
            assert (await _status(story, "INV-2026-000003"))["status"] == "paid"
            assert (await _status(story, "INV-2026-000004"))["status"] == "open"  # hard decline

            async with story.pool.acquire() as conn:
                charge_id = await conn.fetchval(
                    """select a.charge_id from payments.attempts a join payments.intents t using (intent_id)
                        where t.renter_id = 'rnt-disp' and a.state = 'succeeded'"""
                )
            note = CreditNoteIssued(
                credit_note_id="cn-1",
                number="CN-2026-000001",
                contract_id="ctr-card",
                renter_id="rnt-card",
                currency="USD",
                invoice_number="INV-2026-000001",
                adjustment_lines=[
                    AdjustmentLine(period_start=start, period_end=end, kind="usage", amount=Decimal("-30.00"))
                ],
                subtotal=Decimal("-30.00"),
                tax=Decimal("0.00"),
                total=Decimal("-30.00"),
                issued_at=LATER,
            )
            opened = ProcessorEventReceived(
                gateway="stripe" if charge_id.startswith("ch_") or charge_id.startswith("pi_") else "ledgerpay",
                processor_event_id="evt-d1",
                processor_type="charge.dispute.created",
                object_type="dispute",
                object_id="dp_1",
                charge_id=charge_id,
                amount_minor=8000,
                currency="USD",
                status="needs_response",
                dispute_id="dp_1",
                dispute_reason="fraudulent",
                dispute_status="needs_response",
                occurred_at=LATER,
            )
            async with story.pool.acquire() as conn:
                gateway = await conn.fetchval("select gateway from payments.attempts where charge_id = $1", charge_id)
            opened = opened.model_copy(update={"gateway": gateway})
            lost = opened.model_copy(
                update={
                    "processor_event_id": "evt-d2",
                    "processor_type": "charge.dispute.closed",
                    "status": "lost",
                    "dispute_status": "lost",
                }
            )
            await publish(
                story,
                [
                    (
                        topics.CREDIT_NOTES_ISSUED,
                        "ctr-card",
                        event_bytes("credit_note.issued", note, id="cn-1", time=LATER),
                    ),
                    (
                        topics.PROCESSOR_EVENTS,
                        charge_id,
                        event_bytes("processor.dispute_opened", opened, id="pe-1", time=LATER),
                    ),
                    command(
                        "payment.refund_requested",
                        1,
                        renter_id="rnt-wire",
                        currency="USD",
                        invoice_number="INV-2026-000002",
                        amount=Decimal("20.00"),
                    ),
                    command(
                        "payment.refund_requested",
                        2,
                        renter_id="rnt-card",
                        currency="USD",
                        invoice_number="INV-2026-000001",
                        amount=Decimal("500.00"),
                    ),
                    command(
                        "payment.retry_requested",
                        3,
                        renter_id="rnt-hard",
                        currency="USD",
                        invoice_number="INV-2026-000004",
                    ),
                ],
            )

            async def effects() -> bool:
                async with story.pool.acquire() as conn:
                    done = await conn.fetchval("select count(*) from payments.commands where outcome <> 'received'")
                    refunded = await conn.fetchval("select count(*) from payments.refunds where state = 'succeeded'")
                    disputes = await conn.fetchval("select count(*) from payments.disputes")
                    busy = await conn.fetchval(
                        "select count(*) from payments.attempts where state in ('pending', 'sending')"
                    )
                return done == 3 and refunded == 1 and disputes == 1 and busy == 0

            await wait_until(effects, timeout_s=60, what="the credit note refunded, the dispute, the commands")
            assert (await _status(story, "INV-2026-000003"))["status"] == "open", "a dispute takes the payment back"
            async with story.pool.acquire() as conn:
                manual_id = await conn.fetchval("select refund_id from payments.refunds where state = 'manual'")
                cash_before = {b.code: b.balance_units for b in await balances(conn)}[chart.cash_clearing("USD").code]
            paid = {"renter_id": "rnt-wire", "currency": "USD", "refund_id": manual_id, "paid_at": LATER}
            await publish(
                story,
                [
                    # Finance paid the wire's 20.00 back over the bank; the same report again is refused.
                    command("refund.mark_paid_requested", 5, reference="BANKREF-77", **paid),
                    command("refund.mark_paid_requested", 6, reference="BANKREF-77", **paid),
                    (
                        topics.PROCESSOR_EVENTS,
                        charge_id,
                        event_bytes("processor.dispute_closed", lost, id="pe-2", time=LATER),
                    ),
                    (
                        topics.PROCESSOR_EVENTS,
                        charge_id,
                        event_bytes("processor.dispute_closed", lost, id="pe-2", time=LATER),
                    ),
                    command(
                        "receipt.apply_requested",
                        4,
                        renter_id="rnt-nobody",
                        currency="USD",
                        receipt_id="w-2",
                        to_renter_id="rnt-wire",
                        reference="INV-2026-000002",
                    ),
                ],
            )

            async def closed() -> bool:
                async with story.pool.acquire() as conn:
                    lost_ = await conn.fetchval("select count(*) from payments.disputes where state = 'lost'")
                    moved = await conn.fetchval(
                        "select count(*) from payments.commands where command_id = 'cmd-4' and outcome like 'moved%'"
                    )
                    marked = await conn.fetchval(
                        "select count(*) from payments.commands where command_id in ('cmd-5', 'cmd-6')"
                        " and outcome <> 'received'"
                    )
                return lost_ == 1 and moved == 1 and marked == 2

            await wait_until(closed, timeout_s=60, what="the dispute lost and the receipt moved")

            # The processor reports 40.00 refunded on the card's charge: our 30.00 and 10.00 someone refunded in
            # its dashboard. The same total again (another webhook) and an older, lower one change nothing.
            async with story.pool.acquire() as conn:
                card_charge = await conn.fetchrow(
                    """select a.charge_id, a.gateway from payments.attempts a join payments.intents t using (intent_id)
                        where t.renter_id = 'rnt-card' and a.state = 'succeeded'"""
                )
            refunded = ProcessorEventReceived(
                gateway=card_charge["gateway"],
                processor_event_id="evt-r1",
                processor_type="charge.refunded",
                object_type="charge",
                object_id=card_charge["charge_id"],
                charge_id=card_charge["charge_id"],
                amount_minor=10000,
                amount_refunded_minor=4000,
                currency="USD",
                status="succeeded",
                occurred_at=LATER,
            )
            await publish(
                story,
                [
                    (
                        topics.PROCESSOR_EVENTS,
                        card_charge["charge_id"],
                        event_bytes(
                            "processor.charge_refunded", refunded.model_copy(update=update), id=f"pe-{n}", time=LATER
                        ),
                    )
                    for n, update in (
                        (3, {}),
                        (4, {"processor_event_id": "evt-r2"}),
                        (5, {"processor_event_id": "evt-r0", "amount_refunded_minor": 3000}),
                    )
                ],
            )

            async def refunded_seen() -> bool:
                async with story.pool.acquire() as conn:
                    return await conn.fetchval(
                        "select count(*) from settle.inbox where event_id in ('pe-3', 'pe-4', 'pe-5')"
                    ) == 3  # fmt: skip

            await wait_until(refunded_seen, timeout_s=60, what="the processor's refund webhooks")
            stats = await admin(base, "GET", "/_admin/stats")
            paired = await _refund_paired_with_its_processor_line(story, 3000)

        async with story.pool.acquire() as conn:
            outcomes = {r["command_id"]: r["outcome"] for r in await read_model.commands(conn)}
            refund_rows = await read_model.refunds(conn)
            refunds = {r["invoice_number"]: r for r in refund_rows if r["reason"] != "refunded at the processor"}
            card, wire_inv, disp, hard = [await _status(story, f"INV-2026-00000{n}") for n in (1, 2, 3, 4)]
            ledger = {b.code: b.balance_units for b in await balances(conn)}
            report = await verify(conn)
        events = [orjson.loads(r.value) for r in await read_topic(story, topics.PAYMENTS)]

    # A credit note of 30.00 on a paid 100.00 invoice: amount due 70.00, 30.00 back to the card; then 10.00
    # refunded at the processor by someone else: recorded once as a refund already done, owed again.
    assert (card["amount_due_minor"], card["paid_minor"], card["status"]) == (7000, 6000, "partially_paid")
    card_refunds = sorted(
        (r["amount"], r["state"], r["reason"]) for r in refund_rows if r["invoice_number"] == "INV-2026-000001"
    )
    assert card_refunds == [
        ("10.00", "succeeded", "refunded at the processor"),
        ("30.00", "succeeded", "credit note cn-1 on a paid invoice"),
    ]
    assert stats["refunds"] == 1
    # R17: the card refund's ledger entry names the processor's refund id, so reconciliation pairs it with the
    # processor's refund line by reference — though fakepsp dates its lines by the wall clock (before: by
    # amount and date only, two breaks here).
    assert paired, "the refund's ledger record and the processor's refund line are not one match or break"
    # The wire: 20.00 given back by hand (manual), then the stray 20.00 receipt, moved to this renter, pays it again.
    assert refunds["INV-2026-000002"]["amount"] == "20.00"
    assert (wire_inv["paid_minor"], wire_inv["status"]) == (5000, "paid")
    assert outcomes["cmd-2"].startswith("refused"), outcomes
    # Reported paid over the bank: done, the bank's reference kept, the cash gone out of clearing, the
    # renter owed nothing more; reported twice, the second is refused.
    assert outcomes["cmd-5"] == f"refund {manual_id} paid over the bank (BANKREF-77)", outcomes
    assert outcomes["cmd-6"] == f"refused: refund {manual_id} is succeeded, not waiting for a bank payment"
    assert (refunds["INV-2026-000002"]["state"], refunds["INV-2026-000002"]["processor_id"]) == (
        "succeeded",
        "BANKREF-77",
    )
    assert ledger[chart.refunds_payable("rnt-wire", "USD").code] == 0
    assert ledger[chart.cash_clearing("USD").code] == cash_before - minor_to_ledger(2000, "USD")
    # The dispute lost: the 80.00 is written off to dispute losses, so the invoice is not dunned again.
    assert (disp["paid_minor"], disp["status"]) == (8000, "paid")
    # The operator's retry after the hard decline: tok_chain_hard_ok succeeds on the second charge.
    assert outcomes["cmd-3"].startswith("retry started"), outcomes
    assert hard["status"] == "paid"
    types = [e["type"] for e in events]
    assert types.count("payment.refunded") == 3, "the card refund, the one paid over the bank, the processor's"
    # The saga claws back an operator's or a processor's refund, not the one paying a credit note back.
    refund_notes = sorted(
        (e["data"]["amount"], e["data"]["credit_note_id"]) for e in events if e["type"] == "payment.refunded"
    )
    assert refund_notes == [("10.00", None), ("20.00", None), ("30.00", "cn-1")]
    assert types.count("payment.disputed") == 1
    assert types.count("payment.dispute_closed") == 1
    [closed] = [e["data"] for e in events if e["type"] == "payment.dispute_closed"]
    assert closed["outcome"] == "lost"  # said in a field of its own: the saga compensates on it
    assert report.ok, report
    # The processor took 80.00 and a 15.00 fee; the loss and the fee are the platform's.
    assert ledger[chart.dispute_losses("USD").code] == minor_to_ledger(8000 + 1500, "USD")


async def test_a_refund_not_yet_paid_follows_the_allocation_when_a_late_invoice_moves_the_money(stack: Stack) -> None:
    """R11 in event time: a wire with no reference pays the oldest open invoice first. Each renter's
    100.00 wire paid its February invoice in full, and a 30.00 credit note on it was due back (a manual
    refund: a bank receipt is refunded over the bank). Then an older invoice of the renter arrives late:
    the wire paid it first, so less was paid on February's invoice and less (or nothing) is due back. The
    refund rows follow — 10.00 for one renter, cancelled for the other — and refunds_payable holds what
    the rows say, before finance pays anything by hand."""
    jan = FEB - timedelta(days=31)
    dec = jan - timedelta(days=31)
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    cases = {"rnt-less": ("20.00", 1000), "rnt-none": ("50.00", None)}
    first: list[tuple[Any, str, bytes]] = []
    late: list[tuple[Any, str, bytes]] = []
    for n, (renter, (older, _)) in enumerate(cases.items()):
        feb = invoice(f"INV-2026-00010{n}", f"ctr-{renter}", renter, due="100.00", start=jan, end=FEB)
        wire = receipt(renter, f"w-{renter}", "100.00", FEB + timedelta(days=1))
        note = CreditNoteIssued(
            credit_note_id=f"cn-{renter}",
            number=f"CN-2026-00010{n}",
            contract_id=f"ctr-{renter}",
            renter_id=renter,
            currency="USD",
            invoice_number=feb.number,
            adjustment_lines=[AdjustmentLine(period_start=jan, period_end=FEB, kind="usage", amount=Decimal("-30.00"))],
            subtotal=Decimal("-30.00"),
            tax=Decimal("0.00"),
            total=Decimal("-30.00"),
            issued_at=FEB + timedelta(days=2),
        )
        first += [
            (
                topics.INVOICES_FINALIZED,
                feb.contract_id,
                event_bytes("invoice.finalized", feb, id=feb.number, time=FEB),
            ),
            (topics.PAYMENTS_RECEIVED, renter, event_bytes("payment.received", wire, id=wire.receipt_id, time=FEB)),
            (
                topics.CREDIT_NOTES_ISSUED,
                note.contract_id,
                event_bytes("credit_note.issued", note, id=note.number, time=FEB),
            ),
        ]
        old = invoice(f"INV-2025-00020{n}", f"ctr-{renter}", renter, due=older, start=dec, end=jan)
        late.append(
            (topics.INVOICES_FINALIZED, old.contract_id, event_bytes("invoice.finalized", old, id=old.number, time=jan))
        )

    async def refunds() -> dict[str, tuple[str, int]]:
        rows = await stack.pool.fetch("select renter_id, state, amount_minor from payments.refunds")
        return {r["renter_id"]: (r["state"], r["amount_minor"]) for r in rows}

    async with running(stack, [PAYMENTS]):
        await publish(stack, first)

        async def owed() -> bool:
            return await refunds() == {r: ("manual", 3000) for r in cases}

        await wait_until(owed, what="30.00 due back to each renter")
        await publish(stack, late)

        async def followed() -> bool:
            return await refunds() == {"rnt-less": ("manual", 1000), "rnt-none": ("cancelled", 3000)}

        await wait_until(followed, what="the refunds following the late invoices")
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
        held = {b.code: b.balance_units for b in await balances(conn)}
    assert report.ok, report
    for renter, (_, back) in cases.items():
        assert -held.get(chart.refunds_payable(renter, "USD").code, 0) == minor_to_ledger(back or 0, "USD"), renter


async def test_a_refund_paid_before_late_money_arrived_gives_back_the_rest_as_one_more_refund(stack: Stack) -> None:
    """R11 in event time: a 60.00 wire paid February's 100.00 invoice in part, and a 100.00 credit note on
    it first cancels the 40.00 still owed, then gives back the 60.00 paid — a manual refund (a bank receipt
    is refunded over the bank), which finance pays and reports. Then a 25.00 wire, received the same day as
    the first but read late, turns out to have paid the invoice too: the credit note now gives back 85.00.
    The refund paid keeps its 60.00 and the rest, 25.00, becomes one more manual refund (before: it stayed
    on refunds_payable with a line in the log). Finance pays it; a third wire of 15.00 read later still
    makes a second rest of 15.00. Once that is paid too, refunds_payable is empty and the renter got back
    all 100.00 it paid, in three refunds."""
    jan = FEB - timedelta(days=31)
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    renter = "rnt-rest"
    feb = invoice("INV-2026-000201", f"ctr-{renter}", renter, due="100.00", start=jan, end=FEB)
    note = _credit_note(feb, "cn-rest", "CN-2026-000201", "100.00")

    def wire(receipt_id: str, amount: str) -> tuple[Any, str, bytes]:
        data = receipt(renter, receipt_id, amount, FEB + timedelta(days=1))
        return topics.PAYMENTS_RECEIVED, renter, event_bytes("payment.received", data, id=receipt_id, time=FEB)

    async def refunds() -> list[tuple[str, str, int]]:
        rows = await stack.pool.fetch(
            "select refund_id, state, amount_minor from payments.refunds order by at, amount_minor"
        )
        return [(r["refund_id"], r["state"], r["amount_minor"]) for r in rows]

    async def states() -> list[tuple[str, int]]:
        return sorted((state, amount) for _, state, amount in await refunds())

    async def payable() -> int:
        async with stack.pool.acquire() as conn:
            held = {b.code: b.balance_units for b in await balances(conn)}
        return -held.get(chart.refunds_payable(renter, "USD").code, 0)

    async def pay_the_manual_one(n: int, want: list[tuple[str, int]]) -> None:
        [(refund_id, _, _)] = [r for r in await refunds() if r[1] == "manual"]
        fields = {"renter_id": renter, "currency": "USD", "refund_id": refund_id, "paid_at": LATER}
        await publish(stack, [command("refund.mark_paid_requested", n, reference=f"BANKREF-{n}", **fields)])

        async def reported() -> bool:
            return await states() == want

        await wait_until(reported, what=f"refunds {want}")

    async def owed(want: list[tuple[str, int]], what: str) -> None:
        async def check() -> bool:
            return await states() == want

        await wait_until(check, what=what)

    async with running(stack, [PAYMENTS]):
        await publish(
            stack,
            [
                _finalized(feb, FEB),
                wire("w-rest-a", "60.00"),
                _issued(note),
            ],
        )
        await owed([("manual", 6000)], "60.00 due back")
        await pay_the_manual_one(31, [("succeeded", 6000)])
        await publish(stack, [wire("w-rest-b", "25.00")])
        await owed([("manual", 2500), ("succeeded", 6000)], "the rest, 25.00, as one more refund")
        assert await payable() == minor_to_ledger(2500, "USD")
        await pay_the_manual_one(32, [("succeeded", 2500), ("succeeded", 6000)])
        await publish(stack, [wire("w-rest-c", "15.00")])
        await owed([("manual", 1500), ("succeeded", 2500), ("succeeded", 6000)], "a second rest, 15.00")
        await pay_the_manual_one(33, [("succeeded", 1500), ("succeeded", 2500), ("succeeded", 6000)])
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report
    assert await payable() == 0
    status = await _status(stack, feb.number)
    assert status["remaining_minor"] == 0, status
    assert len({refund_id for refund_id, _, _ in await refunds()}) == 3


async def test_a_refund_paid_before_a_late_older_invoice_is_shown_as_overpaid_not_only_logged(stack: Stack) -> None:
    """The other direction: a 100.00 wire paid February's 100.00 invoice, a 30.00 credit note gave 30.00
    back (manual) and finance paid it. Then the renter's older 100.00 invoice arrives late: the wire paid
    that one first, February's invoice was never paid, and the credit note only reduces what is owed —
    nothing was due back. The 30.00 left anyway: the refund row keeps its amount and says it overpaid
    30.00 (``settle payments list --refunds``), the gauge counts it and refunds_payable holds it as a debit
    (before: a line in the log only)."""
    from prometheus_client import REGISTRY

    from services.payments.collector import refresh_gauges
    from tests.integration.test_reconcile import settle

    jan = FEB - timedelta(days=31)
    dec = jan - timedelta(days=31)
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    renter = "rnt-over"
    feb = invoice("INV-2026-000301", f"ctr-{renter}", renter, due="100.00", start=jan, end=FEB)
    older = invoice("INV-2025-000301", f"ctr-{renter}", renter, due="100.00", start=dec, end=jan)
    wire = receipt(renter, "w-over", "100.00", FEB + timedelta(days=1))
    note = _credit_note(feb, "cn-over", "CN-2026-000301", "30.00")

    async def refunds() -> list[tuple[str, int, int]]:
        rows = await stack.pool.fetch("select state, amount_minor, overpaid_minor from payments.refunds")
        return [(r["state"], r["amount_minor"], r["overpaid_minor"]) for r in rows]

    async with running(stack, [PAYMENTS]):
        await publish(
            stack,
            [
                _finalized(feb, FEB),
                (topics.PAYMENTS_RECEIVED, renter, event_bytes("payment.received", wire, id="w-over", time=FEB)),
                _issued(note),
            ],
        )

        async def owed() -> bool:
            return await refunds() == [("manual", 3000, 0)]

        await wait_until(owed, what="30.00 due back")
        refund_id = await stack.pool.fetchval("select refund_id from payments.refunds")
        fields = {"renter_id": renter, "currency": "USD", "refund_id": refund_id, "paid_at": LATER}
        await publish(stack, [command("refund.mark_paid_requested", 41, reference="BANKREF-41", **fields)])

        async def reported() -> bool:
            return await refunds() == [("succeeded", 3000, 0)]

        await wait_until(reported, what="the 30.00 reported paid")
        await publish(
            stack,
            [_finalized(older, jan)],
        )

        async def overpaid() -> bool:
            return await refunds() == [("succeeded", 3000, 3000)]

        await wait_until(overpaid, what="the refund marked as overpaid")
    listed = settle(stack, "payments", "list", "--refunds", "--overpaid", "--json")
    assert listed.returncode == 0, listed.stderr[-1200:]
    [row] = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (row["renter_id"], row["state"], row["amount"], row["overpaid"]) == (renter, "succeeded", "30.00", "30.00")
    await refresh_gauges(stack.pool)
    assert REGISTRY.get_sample_value("settle_payment_refunds_overpaid") == 1
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
        held = {b.code: b.balance_units for b in await balances(conn)}
    assert report.ok, report
    assert held.get(chart.refunds_payable(renter, "USD").code, 0) == minor_to_ledger(3000, "USD")  # a debit


async def _refund_paired_with_its_processor_line(stack: Stack, amount_minor: int) -> bool:
    """Import the processors' balance reports and reconcile (not saved): is the card refund's ledger record
    in one match or break with the processor's refund line of the same amount?"""
    from datetime import UTC, datetime

    from services.payments.gateways.registry import build_gateways
    from services.reconcile.imports import line_of_transaction
    from services.reconcile.run import import_processor_lines, run_reconciliation

    gateways = build_gateways(stack.settings, None)
    lines = []
    try:
        for name in sorted(gateways):
            lines.extend(line_of_transaction(name, t) for t in await gateways[name].balance_transactions(since=None))
    finally:
        await gateways.close()
    as_of = max(datetime.now(UTC).date(), LATER.date()) + timedelta(days=1)  # fakepsp: wall clock; ledger: event time
    async with stack.pool.acquire() as conn:
        await import_processor_lines(conn, lines)
        result, _, _ = await run_reconciliation(conn, as_of=as_of, save=False)
    groups = [m.records for m in result.matches] + [b.records for b in result.breaks]
    [group] = [
        g
        for g in groups
        if any(r.source == "ledger" and r.kind == "payments.refunded" and r.amount_minor == amount_minor for r in g)
    ]
    return any(r.source == "processor" and r.kind == "refund" and r.amount_minor == amount_minor for r in group)


def _credit_note(inv: InvoiceFinalized, credit_note_id: str, number: str, amount: str) -> CreditNoteIssued:
    """A credit note of ``amount`` (usage, no tax) on ``inv``'s period, issued two days after February began."""
    minus = -Decimal(amount)
    return CreditNoteIssued(
        credit_note_id=credit_note_id,
        number=number,
        contract_id=inv.contract_id,
        renter_id=inv.renter_id,
        currency=inv.currency,
        invoice_number=inv.number,
        adjustment_lines=[
            AdjustmentLine(period_start=inv.period_start, period_end=inv.period_end, kind="usage", amount=minus)
        ],
        subtotal=minus,
        tax=Decimal("0.00"),
        total=minus,
        issued_at=FEB + timedelta(days=2),
    )


def _finalized(inv: InvoiceFinalized, at: datetime) -> tuple[Any, str, bytes]:
    return topics.INVOICES_FINALIZED, inv.contract_id, event_bytes("invoice.finalized", inv, id=inv.number, time=at)


def _issued(note: CreditNoteIssued) -> tuple[Any, str, bytes]:
    return (
        topics.CREDIT_NOTES_ISSUED,
        note.contract_id,
        event_bytes("credit_note.issued", note, id=note.number, time=FEB),
    )


async def test_a_second_credit_note_refund_goes_to_the_bank_when_the_card_charge_has_too_little_left(
    stack: Stack,
) -> None:
    """An invoice of 100.00 paid 40.00 by wire and 60.00 by card. A 50.00 credit note is refunded to the card;
    a second one of 30.00 cannot be (10.00 left on the charge): it is a bank refund (`manual`), never a
    refund the processor refuses as more than what is left of the charge."""
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        inv = invoice("INV-2026-000001", "ctr-mix", "rnt-mix", due="100.00", start=FEB - timedelta(days=31), end=FEB)
        wire = receipt("rnt-mix", "w-1", "40.00", FEB + timedelta(days=3), reference=inv.number)
        m = method("rnt-mix", "tok_visa", "pm-mix")
        items = [
            _finalized(inv, FEB),
            (topics.PAYMENT_METHODS, "rnt-mix", event_bytes("payment_method.attached", m, id="m-mix", time=FEB)),
            (
                topics.PAYMENTS_RECEIVED,
                "rnt-mix",
                event_bytes("payment.received", wire, id="w-1", time=wire.received_at),
            ),
        ]

        def note(n: int, amount: str, at: datetime) -> tuple[Any, str, bytes]:
            data = _credit_note(inv, f"cn-{n}", f"CN-2026-{n:06d}", amount).model_copy(update={"issued_at": at})
            return (
                topics.CREDIT_NOTES_ISSUED,
                inv.contract_id,
                event_bytes("credit_note.issued", data, id=f"cn-{n}", time=at),
            )

        async def refunds() -> list[tuple[int, str]]:
            async with stack.pool.acquire() as conn:
                rows = await conn.fetch("select amount_minor, state from payments.refunds order by created_at")
            return [(r["amount_minor"], r["state"]) for r in rows]

        async with running(story, [PAYMENTS]):
            await publish(story, items)

            await wait_remaining(story, inv.number, 6_000)  # the wire applied
            await _tick(story, DUE)
            assert (await _status(story, inv.number))["status"] == "paid"
            await publish(story, [note(1, "50.00", LATER)])

            async def first_refunded() -> bool:
                return await refunds() == [(5_000, "succeeded")]

            await wait_until(first_refunded, timeout_s=60, what="the first refund paid back to the card")
            await publish(story, [note(2, "30.00", LATER + timedelta(days=1))])

            async def second_refund() -> bool:
                return len(await refunds()) == 2

            await wait_until(second_refund, what="the second refund")
            await asyncio.sleep(1.0)  # a refund sent to the card would have been answered by now
            stats = await admin(base, "GET", "/_admin/stats")
        assert await refunds() == [(5_000, "succeeded"), (3_000, "manual")]
        assert stats["refunds"] == 1
