"""Payments as billing stories over Kafka and PostgreSQL: money received applied per R11.

The story publishes what invoicing and the platform would (finalized invoices, credit notes, money
received), deliberately in an adverse order — money before the invoices it pays, later invoices
before earlier ones, a receipt twice — runs the payments worker, and reads what it published and
stored. The expected cents are worked out here from R11's text, never by calling the service.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from libs.ledger import verify
from schemas import topics
from schemas.events import InvoiceFinalized, InvoiceLines
from schemas.inputs import PaymentReceived
from services.payments import read_model
from services.payments.main import SERVICE as PAYMENTS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until

pytestmark = pytest.mark.integration

FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
APR = datetime(2026, 4, 1, tzinfo=UTC)


def invoice(
    number: str, contract: str, renter: str, *, due: str, start: datetime, end: datetime, currency: str = "USD"
) -> InvoiceFinalized:
    zero = Decimal("0.00")
    return InvoiceFinalized(
        invoice_id=f"inv-{number}",
        number=number,
        contract_id=contract,
        renter_id=renter,
        currency=currency,
        billing_mode="postpaid",
        period_start=start,
        period_end=end,
        issued_at=end,
        due_at=end + timedelta(days=15),
        lines=InvoiceLines(usage=Decimal(due), commitment_true_up=zero, adjustments=zero, sla_credit=zero),
        adjustment_lines=[],
        subtotal=Decimal(due),
        tax_rate=Decimal("0"),
        tax=zero,
        total=Decimal(due),
        prepaid_applied=zero,
        credit_applied=zero,
        amount_due=Decimal(due),
        credit_carried_forward=zero,
        uptime=None,
        sla_credit_percent=Decimal("0"),
    )


def receipt(renter: str, receipt_id: str, amount: str, at: datetime, reference: str = "", currency: str = "USD"):
    return PaymentReceived(
        renter_id=renter,
        receipt_id=receipt_id,
        amount=Decimal(amount),
        currency=currency,
        received_at=at,
        rail="wire",
        reference=reference,
    )


def r11_oracle(invoices: list[InvoiceFinalized], receipts: list[PaymentReceived]) -> tuple[dict[str, Decimal], dict]:
    """R11 read literally: walk event time; at one instant invoices first, then receipts by receipt_id."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in sorted(receipts, key=lambda r: (r.received_at, r.receipt_id)):
        if (r.renter_id, r.receipt_id) not in seen:
            seen.add((r.renter_id, r.receipt_id))
            unique.append(r)
    timeline: list[tuple[datetime, int, str, Any]] = [(i.period_end, 0, i.number, i) for i in invoices]
    timeline += [(r.received_at, 1, r.receipt_id, r) for r in unique]
    paid: dict[str, Decimal] = {i.number: Decimal("0.00") for i in invoices}
    credit: dict[tuple[str, str], Decimal] = defaultdict(lambda: Decimal("0.00"))
    issued: list[InvoiceFinalized] = []

    def order(i: InvoiceFinalized) -> tuple:
        return (i.due_at, i.period_start, i.contract_id)

    def pay(renter: str, currency: str, amount: Decimal, reference: str) -> Decimal:
        mine = [i for i in issued if i.renter_id == renter and i.currency == currency]
        named = [i for i in mine if reference and i.number.lower() in reference.lower()]
        for inv in sorted(named, key=order) + sorted((i for i in mine if i not in named), key=order):
            take = min(amount, inv.amount_due - paid[inv.number])
            paid[inv.number] += take
            amount -= take
        return amount

    for _, kind, _, item in sorted(timeline, key=lambda t: t[:3]):
        if kind == 0:
            issued.append(item)
            key = (item.renter_id, item.currency)
            credit[key] = pay(item.renter_id, item.currency, credit[key], "")
        else:
            key = (item.renter_id, item.currency)
            credit[key] = pay(item.renter_id, item.currency, credit[key] + item.amount, item.reference)
    return paid, {k: v for k, v in credit.items() if v}


def status_of(amount_due: Decimal, paid: Decimal) -> str:
    if paid >= amount_due:
        return "paid"
    return "partially_paid" if paid > 0 else "open"


async def test_money_received_pays_invoices_per_r11_whatever_the_arrival_order(stack: Stack) -> None:
    """Two renters, two currencies. A wire names the second invoice and overpays the first; money
    arrives before the invoice it will pay; a receipt is repeated; a zero invoice is paid at issue."""
    invoices = [
        invoice("INV-2026-000001", "ctr-a", "rnt-1", due="100.00", start=FEB - timedelta(days=31), end=FEB),
        invoice("INV-2026-000002", "ctr-b", "rnt-1", due="50.00", start=FEB - timedelta(days=31), end=FEB),
        invoice("INV-2026-000003", "ctr-a", "rnt-1", due="80.00", start=FEB, end=MAR),
        invoice("INV-2026-000004", "ctr-b", "rnt-1", due="0.00", start=FEB, end=MAR),
        invoice("INV-2026-000005", "ctr-c", "rnt-1", due="300.00", start=MAR, end=APR),
        invoice("INV-2026-000006", "ctr-e", "rnt-1", due="40.00", start=FEB, end=MAR, currency="EUR"),
        invoice("INV-2026-000007", "ctr-d", "rnt-2", due="70.00", start=FEB - timedelta(days=31), end=FEB),
    ]
    receipts = [
        # names #2, pays the rest to #1 (oldest first)
        receipt("rnt-1", "wire-1", "120.00", FEB + timedelta(days=14), reference="Payment for inv-2026-000002"),
        # pays #1's remaining 30.00, the rest waits as credit and pays #3 when it exists on March 1
        receipt("rnt-1", "wire-2", "200.00", FEB + timedelta(days=20)),
        receipt("rnt-1", "wire-2", "200.00", FEB + timedelta(days=20)),  # the same receipt again: no effect
        # received before its invoice exists: credit balance pays #5 in part on April 1
        receipt("rnt-1", "wire-3", "100.00", MAR + timedelta(days=3)),
        receipt("rnt-1", "sepa-1", "15.50", MAR + timedelta(days=2), currency="EUR"),
        # two receipts at the same instant apply in receipt_id order
        receipt("rnt-2", "b-second", "50.00", FEB + timedelta(days=1)),
        receipt("rnt-2", "a-first", "30.00", FEB + timedelta(days=1)),
    ]
    # Adverse arrival: every receipt first, then the invoices newest first.
    items: list[tuple[Any, str, bytes]] = []
    for n, r in enumerate(receipts):
        items.append(
            (
                topics.PAYMENTS_RECEIVED,
                r.renter_id,
                event_bytes("payment.received", r, id=f"evt-rcpt-{n}", time=r.received_at),
            )
        )
    for inv in reversed(invoices):
        items.append(
            (
                topics.INVOICES_FINALIZED,
                inv.contract_id,
                event_bytes("invoice.finalized", inv, id=f"evt-{inv.number}", time=inv.issued_at),
            )
        )
    expected_paid, expected_credit = r11_oracle(invoices, receipts)
    # The oracle itself, on this story: the text's worked numbers.
    assert expected_paid["INV-2026-000002"] == Decimal("50.00")
    assert expected_paid["INV-2026-000001"] == Decimal("100.00")
    assert expected_paid["INV-2026-000003"] == Decimal("80.00")
    assert expected_paid["INV-2026-000005"] == Decimal("190.00")
    assert expected_credit == {("rnt-2", "USD"): Decimal("10.00")}

    async with running(stack, [PAYMENTS]):
        await publish(stack, items)

        async def settled() -> bool:
            async with stack.pool.acquire() as conn:
                n_in = await conn.fetchval("select count(*) from payments.money_in")
                n_inv = await conn.fetchval("select count(*) from payments.invoices")
            return n_in == 6 and n_inv == len(invoices)

        await wait_until(settled, timeout_s=90, what="every receipt and invoice stored")

        async def published() -> bool:
            records = await read_topic(stack, topics.INVOICE_PAYMENTS, timeout_s=10)
            latest = _latest(records)
            return all(latest.get(i.number, {}).get("amount_paid") == str(expected_paid[i.number]) for i in invoices)

        await wait_until(published, timeout_s=60, what="invoices.payments.v1 to carry the R11 amounts")

    latest = _latest(await read_topic(stack, topics.INVOICE_PAYMENTS, timeout_s=10))
    async with stack.pool.acquire() as conn:
        docs = await read_model.invoice_payment_fields(
            conn, [{"number": i.number, "currency": i.currency, "amount_due": str(i.amount_due)} for i in invoices]
        )
        balances = await read_model.credit_balances(conn)
        ledger_ok = await verify(conn)
    for doc, inv in zip(docs, invoices, strict=True):
        paid = expected_paid[inv.number]
        assert doc["amount_paid"] == str(paid), inv.number
        assert doc["amount_remaining"] == str(inv.amount_due - paid), inv.number
        assert doc["payment_status"] == status_of(inv.amount_due, paid), inv.number
        assert latest[inv.number]["status"] == doc["payment_status"], inv.number
    assert {(b["renter_id"], b["currency"]): Decimal(b["credit_balance"]) for b in balances} == expected_credit
    assert ledger_ok.ok, ledger_ok


async def test_a_status_per_instant_says_what_remained_at_any_time_however_the_facts_were_batched(
    stack: Stack,
) -> None:
    """R15's planning asks "what remained on this invoice at the tick" (the latest status whose ``as_of`` is at
    or before it). Money received before the invoice existed, at 05:00 on its issue day and ten days later,
    all read before the invoice: one recomputation sees it all, and still publishes one status per instant
    that changed the invoice — so a planning at 01:00 sees 140.00 remaining, not the 200.00 due at issue
    (until 2026-12-08, second session, only the last instant was published, and a pay-when-paid supplier's
    earnings stayed held)."""
    inv = invoice("INV-2026-000001", "ctr-a", "rnt-1", due="200.00", start=FEB - timedelta(days=31), end=FEB)
    receipts = [
        receipt("rnt-1", "w-early", "60.00", FEB - timedelta(days=3)),
        receipt("rnt-1", "w-0500", "50.00", FEB + timedelta(hours=5)),
        receipt("rnt-1", "w-day10", "40.00", FEB + timedelta(days=10)),
    ]
    items: list[tuple[Any, str, bytes]] = [
        (
            topics.PAYMENTS_RECEIVED,
            r.renter_id,
            event_bytes("payment.received", r, id=f"e-{r.receipt_id}", time=r.received_at),
        )
        for r in receipts
    ]
    items.append(
        (topics.INVOICES_FINALIZED, inv.contract_id, event_bytes("invoice.finalized", inv, id="e-inv", time=FEB))
    )
    async with running(stack, [PAYMENTS]):
        await publish(stack, items)

        async def final() -> bool:
            latest = _latest(await read_topic(stack, topics.INVOICE_PAYMENTS, timeout_s=10))
            return latest.get(inv.number, {}).get("amount_remaining") == "50.00"

        await wait_until(final, timeout_s=60, what="the invoice's final status")
        statuses = [
            orjson.loads(r.value)["data"]
            for r in await read_topic(stack, topics.INVOICE_PAYMENTS, timeout_s=10)
            if orjson.loads(r.value)["type"] == "invoice.payment_status"
        ]

    def remaining_at(at: datetime) -> str | None:
        said = [s for s in statuses if datetime.fromisoformat(s["as_of"].replace("Z", "+00:00")) <= at]
        return max(said, key=lambda s: s["revision"])["amount_remaining"] if said else None

    assert remaining_at(FEB - timedelta(seconds=1)) is None  # not issued yet: the planning takes the amount due
    assert remaining_at(FEB) == "140.00"  # the early wire, applied at issue from the credit balance
    assert remaining_at(FEB + timedelta(hours=1)) == "140.00"
    assert remaining_at(FEB + timedelta(hours=5)) == "90.00"
    assert remaining_at(FEB + timedelta(days=9)) == "90.00"
    assert remaining_at(FEB + timedelta(days=10)) == "50.00"
    assert len({s["revision"] for s in statuses}) == len(statuses), "one revision per status"
    # Only the current state is "latest": credit exposure, the saga and holds follow it and skip the others.
    by_revision = sorted(statuses, key=lambda s: s["revision"])
    assert by_revision[-1]["latest"] and by_revision[-1]["amount_remaining"] == "50.00"
    assert not any(s["latest"] for s in by_revision[:-1]) and len(by_revision) == 3


def _latest(records: list[Any]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for record in records:
        event = orjson.loads(record.value)
        if event["type"] != "invoice.payment_status":
            continue  # payments.watermark: after each tick, on every partition
        data = event["data"]
        if data["revision"] > best.get(data["number"], {}).get("revision", 0):
            best[data["number"]] = data
    return best


async def test_a_tick_left_waiting_by_a_lost_race_is_released_once_by_the_collectors_safety_net(stack: Stack) -> None:
    """A tick answered while the last collection dated before it was being committed: each transaction saw
    the other's work as not yet there, so neither sent ``payments.watermark(T)`` and T stayed in
    ``payments.ticks_collecting`` with nothing left to wait for. The collector's periodic
    ``release_waiting_marks`` sends it on every partition of invoices.payments.v1, once: a second pass (or
    another worker's) finds nothing to send. A tick still waiting for a collection dated at or before it
    (``pending``/``sending``) is kept — that side is the stories' (``test_payouts_stories``)."""
    from services.payments.collector import release_waiting_marks

    tick = FEB + timedelta(days=15)
    await stack.pool.execute("insert into payments.ticks_collecting (at) values ($1)", tick)

    async def marks() -> list[tuple[int, str, str]]:
        rows = await stack.pool.fetch(
            "select partition, value from settle.outbox where topic = $1 order by partition",
            topics.INVOICE_PAYMENTS.name,
        )
        return [(r["partition"], (e := orjson.loads(bytes(r["value"])))["type"], e["data"]["through"]) for r in rows]

    await release_waiting_marks(stack.pool)
    sent = await marks()
    assert [p for p, _, _ in sent] == list(range(topics.INVOICE_PAYMENTS.partitions))
    assert {(t, datetime.fromisoformat(through.replace("Z", "+00:00"))) for _, t, through in sent} == {
        ("payments.watermark", tick)
    }
    assert await stack.pool.fetchval("select count(*) from payments.ticks_collecting") == 0
    await release_waiting_marks(stack.pool)
    assert await marks() == sent


async def wait_remaining(stack: Stack, number: str, minor: int) -> None:
    """Until payments shows ``minor`` still due on invoice ``number``."""

    async def reached() -> bool:
        async with stack.pool.acquire() as conn:
            left = await conn.fetchval("select remaining_minor from payments.invoice_status where number = $1", number)
        return bool(left == minor)

    await wait_until(reached, what=f"{number} to have {minor} minor units remaining")


async def test_a_prepaid_credit_note_settles_net_of_the_wallet(stack: Stack) -> None:
    """R10 on a credit note: a late −10.00 of prepaid usage went back to the wallet; with 10 % tax the note's
    total is −11.00, but only the tax (−1.00) is owed to the renter — the wallet already has its 10.00. The
    open invoice's remaining falls by 1.00, not 11.00."""
    from decimal import Decimal

    from tests.payments.test_refund_dispute_stories import _credit_note

    inv = invoice("INV-2026-000001", "ctr-p", "rnt-p", due="100.00", start=FEB - timedelta(days=31), end=FEB)
    note = _credit_note(inv, "cn-p", "CN-2026-000001", "10.00").model_copy(
        update={"tax": Decimal("-1.00"), "total": Decimal("-11.00"), "prepaid_applied": Decimal("-10.00")}
    )
    await publish(
        stack,
        [
            (topics.INVOICES_FINALIZED, inv.contract_id, event_bytes("invoice.finalized", inv, id="i-p", time=FEB)),
            (topics.CREDIT_NOTES_ISSUED, inv.contract_id, event_bytes("credit_note.issued", note, id="cn-p", time=FEB)),
        ],
    )

    async def settled() -> bool:
        async with stack.pool.acquire() as conn:
            return bool(await conn.fetchval("select count(*) from payments.credit_notes") == 1)

    async with running(stack, [PAYMENTS]):
        await wait_until(settled, what="the credit note recorded")

        await wait_remaining(stack, inv.number, 9_900)
