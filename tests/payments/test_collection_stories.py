"""R14 collection as a billing story: Kafka, PostgreSQL, the payments worker and ``settle fakepsp``
over HTTP, with the real Stripe and LedgerPay adapters.

Renters' cards are the fake processor's scripted tokens, so each renter is one R14 case: paid on the
due date, a soft decline paid on retry, a hard decline that stops until the method changes, a 5xx
that fails over to the other gateway, an unknown outcome resolved by inquiry (never by a new charge),
and dunning exhausted → past due and a suspend request. At the end the charges are counted at the
processor: one per invoice collected, none twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from libs.ledger import verify
from schemas import topics
from schemas.inputs import ClockTicked, PaymentMethodEvent
from services.payments.gateways.port import ChargeResult
from services.payments.main import SERVICE as PAYMENTS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until
from tests.integration.test_payments_service import FEB, invoice, receipt
from tests.payments.processes import admin, against_fakepsp, fakepsp

pytestmark = pytest.mark.integration

DUE = FEB + timedelta(days=15)
RENTERS = {
    "rnt-ok": "tok_visa",
    "rnt-soft": "tok_chain_soft_ok",
    "rnt-hard": "tok_stolen",
    "rnt-5xx": "tok_chain_500_then_ok",
    "rnt-dun": "tok_insufficient_funds",
    "rnt-unk": "tok_timeout_after_charge",
}


def method(renter: str, token: str, method_id: str) -> PaymentMethodEvent:
    return PaymentMethodEvent(
        renter_id=renter, method_id=method_id, kind="card", gateway_token=token, currency="USD", default=True
    )


async def _tick(stack: Stack, at: datetime) -> None:
    await publish(
        stack,
        [(topics.CLOCK_TICKS, "clock", event_bytes("clock.ticked", ClockTicked(at=at), id=f"tick-{at:%m%d}", time=at))],
    )

    async def quiet() -> bool:
        async with stack.pool.acquire() as conn:
            now = await conn.fetchval("select at from payments.clock where id = 1")
            busy = await conn.fetchval("select count(*) from payments.attempts where state in ('pending', 'sending')")
        return now is not None and now >= at and busy == 0

    await wait_until(quiet, timeout_s=60, what=f"the tick {at} and its attempts")


async def _lifted_by(stack: Stack, type_: str, data: PaymentMethodEvent, event_id: str, at: datetime) -> None:
    """Publish a method event of the renter and wait until its hard-declined intent is no longer stopped."""
    await publish(stack, [(topics.PAYMENT_METHODS, data.renter_id, event_bytes(type_, data, id=event_id, time=at))])

    async def lifted() -> bool:
        return (await _intents(stack))[data.renter_id]["state"] != "hard_declined"

    await wait_until(lifted, what=f"{type_} {data.method_id} to lift the hard decline's stop")


def _finalized(renter: str, n: int) -> tuple[Any, str, bytes]:
    """INV-2026-00000n: the renter's 100.00 postpaid invoice of January, due on DUE."""
    inv = invoice(f"INV-2026-{n:06d}", f"ctr-{renter}", renter, due="100.00", start=FEB - timedelta(days=31), end=FEB)
    return topics.INVOICES_FINALIZED, inv.contract_id, event_bytes("invoice.finalized", inv, id=f"i-{renter}", time=FEB)


async def _stored(stack: Stack, n: int) -> None:
    async def stored() -> bool:
        async with stack.pool.acquire() as conn:
            return await conn.fetchval("select count(*) from payments.invoices") == n

    await wait_until(stored, what=f"{n} invoice(s) stored")


async def _intents(stack: Stack) -> dict[str, dict[str, Any]]:
    async with stack.pool.acquire() as conn:
        rows = await conn.fetch("select * from payments.intents")
    return {r["renter_id"]: dict(r) for r in rows}


async def _attempts(stack: Stack, renter: str) -> list[dict[str, Any]]:
    async with stack.pool.acquire() as conn:
        rows = await conn.fetch(
            """select a.* from payments.attempts a join payments.intents t using (intent_id)
                where t.renter_id = $1 order by a.try_no, a.call_no""",
            renter,
        )
    return [dict(r) for r in rows]


async def test_r14_collects_each_invoice_once_through_declines_errors_and_unknown_outcomes(stack: Stack) -> None:
    with fakepsp("--hang-ms", "4000") as base:
        story = against_fakepsp(stack, base, gateway_timeout_s=1.0)
        items: list[tuple[Any, str, bytes]] = []
        for n, (renter, token) in enumerate(RENTERS.items(), start=1):
            m = method(renter, token, f"pm-{renter}")
            items.append(
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m-{renter}", time=FEB))
            )
            items.append(_finalized(renter, n))
        async with running(story, [PAYMENTS]):
            await publish(story, items)
            await _stored(stack, len(RENTERS))
            await _tick(story, DUE)
            intents = await _intents(story)
            assert intents["rnt-ok"]["state"] == "succeeded"
            assert intents["rnt-hard"]["state"] == "hard_declined"
            assert intents["rnt-soft"]["state"] == "waiting_retry"
            assert intents["rnt-soft"]["next_try_at"] == DUE + timedelta(days=1)
            assert intents["rnt-5xx"]["state"] == "succeeded"
            failover = await _attempts(story, "rnt-5xx")
            assert [(a["try_no"], a["call_no"], a["state"]) for a in failover] == [(1, 1, "error"), (1, 2, "succeeded")]
            assert failover[0]["gateway"] != failover[1]["gateway"], "a definite 5xx fails over to another gateway"
            unknown = await _attempts(story, "rnt-unk")
            assert [a["state"] for a in unknown] == ["unknown"], "a timeout after sending is unknown, never retried"

            # The wall clock moves on to the first inquiry (R14: after 1 min): the processor has the charge.
            async with story.pool.acquire() as conn:
                await conn.execute("update payments.attempts set next_inquiry_at = now() where state = 'unknown'")

            async def inquired() -> bool:
                return [a["state"] for a in await _attempts(story, "rnt-unk")] == ["succeeded"]

            await wait_until(inquired, timeout_s=60, what="the unknown attempt resolved by inquiry")

            # Dunning: day 1, 3, 5, 7, 10 and 14 after the first try.
            for day in (1, 3, 5, 7, 10, 14):
                await _tick(story, DUE + timedelta(days=day))
            intents = await _intents(story)
            assert intents["rnt-soft"]["state"] == "succeeded"
            assert intents["rnt-dun"]["state"] == "past_due"
            assert intents["rnt-dun"]["tries"] == 7
            assert intents["rnt-hard"]["state"] == "hard_declined"
            assert len(await _attempts(story, "rnt-hard")) == 1, "a hard decline stops retries"

            # A new default method lifts the hard decline's stop; the next tick collects.
            fresh = method("rnt-hard", "tok_visa", "pm-new")
            later = DUE + timedelta(days=20)
            await _lifted_by(story, "payment_method.attached", fresh, "m-new", later)
            await _tick(story, later + timedelta(hours=1))
            assert (await _intents(story))["rnt-hard"]["state"] == "succeeded"
            stats = await admin(base, "GET", "/_admin/stats")

        statuses = _latest(await read_topic(story, topics.INVOICE_PAYMENTS))
        events = [orjson.loads(r.value) for r in await read_topic(story, topics.PAYMENTS)]
        commands = [orjson.loads(r.value) for r in await read_topic(story, topics.PLATFORM_COMMANDS)]
        async with story.pool.acquire() as conn:
            succeeded = await conn.fetch("select attempt_id from payments.attempts where state = 'succeeded'")
            report = await verify(conn)

    collected = {"rnt-ok", "rnt-soft", "rnt-hard", "rnt-5xx", "rnt-unk"}
    assert {s["renter_id"]: s["status"] for s in statuses.values()} == {
        **{r: "paid" for r in collected},
        "rnt-dun": "past_due",
    }
    # At the processor: exactly one charge per collected invoice, and per succeeded attempt.
    assert stats["charges"] == len(collected) == len(succeeded)
    assert all(n == 1 for n in stats["charges_by_attempt"].values()), stats["charges_by_attempt"]
    assert set(stats["charges_by_attempt"]) == {r["attempt_id"] for r in succeeded}
    kinds = Counter(e["type"] for e in events)
    assert kinds["payment.succeeded"] == len(collected)
    assert kinds["invoice.past_due"] == 1
    suspends = [c for c in commands if c["type"] == "platform.suspend_requested"]
    assert [(c["data"]["contract_id"], c["data"]["reason"]) for c in suspends] == [("ctr-rnt-dun", "payment_past_due")]
    assert report.ok, report
    await _no_card_numbers_anywhere(story)


async def _no_card_numbers_anywhere(stack: Stack) -> None:
    """PCI posture: tokens only. Every table and every topic of the run holds nothing that looks like a
    card number and passes Luhn — and the scan does find one planted on purpose."""
    from schemas.topics import REGISTRY
    from services.operations import pci

    findings = []
    for topic in REGISTRY:
        records = await read_topic(stack, topic)
        findings += pci.scan_records(topic.name, [r.value for r in records])
    async with stack.pool.acquire() as conn:
        findings += await pci.scan_database(conn)
        assert findings == [], findings
        await conn.execute("create table public.pci_canary (note jsonb)")
        await conn.execute("""insert into public.pci_canary values ('{"card": "4242 4242 4242 4242"}')""")
        planted = await pci.scan_database(conn)
    assert [(f.where, f.masked) for f in planted] == [("public.pci_canary.note", "424242…4242")]


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


async def test_an_invoice_read_after_the_tick_that_made_it_due_is_collected_on_its_due_date(stack: Stack) -> None:
    """Payments read the clock before an invoice already due by it (it lagged on invoices.finalized.v1, not on
    the clock): the invoice still gets its intent and first try on its due date, without waiting for another
    tick — so how far behind a worker was does not change when money is collected."""
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        m = method("rnt-late", "tok_visa", "pm-late")
        inv = invoice("INV-2026-000001", "ctr-late", "rnt-late", due="100.00", start=FEB - timedelta(days=31), end=FEB)
        await publish(
            story, [(topics.PAYMENT_METHODS, "rnt-late", event_bytes("payment_method.attached", m, id="m-l", time=FEB))]
        )
        async with running(story, [PAYMENTS]):
            await _tick(story, DUE)  # nothing is due yet: payments knows no invoice
            assert await _intents(story) == {}
            await publish(
                story,
                [
                    (
                        topics.INVOICES_FINALIZED,
                        inv.contract_id,
                        event_bytes("invoice.finalized", inv, id="i-l", time=FEB),
                    )
                ],
            )

            async def collected() -> bool:
                return (await _intents(story)).get("rnt-late", {}).get("state") == "succeeded"

            await wait_until(collected, timeout_s=60, what="the late-read invoice collected without another tick")
        intent = (await _intents(story))["rnt-late"]
        assert intent["first_try_at"] == inv.due_at and intent["tries"] == 1
        assert [a["state"] for a in await _attempts(story, "rnt-late")] == ["succeeded"]


async def test_answers_committed_in_batches_are_each_recorded_as_if_alone(stack: Stack) -> None:
    """The collector commits the gateway answers that arrive together in one transaction (one books
    recompute, one ledger post). Forty renters' invoices collected at one tick — one renter with two
    invoices, one who had already paid part by wire — end exactly as one answer at a time would leave
    them, and the answers did share transactions. A batch that fails is recorded again answer by answer:
    the bad answer fails alone."""
    from services.payments import config as payments_config
    from services.payments.collector import Recorder

    renters = [f"rnt-b{n:02d}" for n in range(40)]
    invoices = [
        invoice(f"INV-2026-{n:06d}", f"ctr-{r}", r, due="100.00", start=FEB - timedelta(days=31), end=FEB)
        for n, r in enumerate(renters, start=1)
    ]
    invoices.append(
        invoice("INV-2026-000099", "ctr-rnt-b00-2", "rnt-b00", due="7.25", start=FEB - timedelta(days=31), end=FEB)
    )
    wire = receipt("rnt-b01", "rcpt-b01", "40.00", FEB + timedelta(days=2))
    attached = [method(r, "tok_visa", f"pm-{r}") for r in renters]
    items: list[tuple[Any, str, bytes]] = [
        (
            topics.PAYMENT_METHODS,
            m.renter_id,
            event_bytes("payment_method.attached", m, id=f"m-{m.renter_id}", time=FEB),
        )
        for m in attached
    ]
    items += [
        (topics.INVOICES_FINALIZED, i.contract_id, event_bytes("invoice.finalized", i, id=f"i-{i.number}", time=FEB))
        for i in invoices
    ]
    items.append(
        (topics.PAYMENTS_RECEIVED, "rnt-b01", event_bytes("payment.received", wire, id="w-b01", time=wire.received_at))
    )
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        async with running(story, [PAYMENTS]):
            await publish(story, items)

            async def stored() -> bool:
                async with stack.pool.acquire() as conn:
                    invoices_in = await conn.fetchval("select count(*) from payments.invoices")
                    money_in = await conn.fetchval("select count(*) from payments.money_in")
                return invoices_in == len(invoices) and money_in == 1

            await wait_until(stored, what="invoices and the wire stored")
            await _tick(story, DUE)
            stats = await admin(base, "GET", "/_admin/stats")
        statuses = _latest(await read_topic(story, topics.INVOICE_PAYMENTS))
        async with story.pool.acquire() as conn:
            attempts = {
                r["renter_id"]: r
                for r in await conn.fetch(
                    """select t.renter_id, a.attempt_id, a.amount_minor, a.state from payments.attempts a
                         join payments.intents t using (intent_id) where t.invoice_number <> 'INV-2026-000099'"""
                )
            }
            books = {r["renter_id"]: r for r in await conn.fetch("select * from payments.books")}
            collected_in = await conn.fetch(
                "select txid, count(*) as n from ledger.entries where kind = 'payments.money_in' group by txid"
            )
            report = await verify(conn)

        assert {s["number"]: (s["status"], s["amount_remaining"]) for s in statuses.values()} == {
            i.number: ("paid", "0.00") for i in invoices
        }
        assert {r: a["state"] for r, a in attempts.items()} == {r: "succeeded" for r in renters}
        assert attempts["rnt-b01"]["amount_minor"] == 6000, "the card pays what the wire left"
        assert books["rnt-b00"]["money_in_minor"] == 10725 and books["rnt-b00"]["applied_minor"] == 10725
        assert books["rnt-b01"]["money_in_minor"] == 10000 and books["rnt-b01"]["credit_minor"] == 0
        assert all(b["applied_minor"] == b["money_in_minor"] and b["credit_minor"] == 0 for b in books.values())
        assert stats["charges"] == len(invoices) and all(n == 1 for n in stats["charges_by_attempt"].values())
        assert report.ok, report
        # 41 collections and the wire's receipt, and collections shared transactions.
        assert sum(r["n"] for r in collected_in) == len(invoices) + 1
        assert max(r["n"] for r in collected_in) > 1, "answers that arrived together were committed together"

        # A failing batch: an answer for no known attempt fails alone; the other is still recorded (here:
        # already succeeded, so it stays so).
        config = payments_config.load(None)
        recorder = Recorder(story.pool, config)
        writer = asyncio.create_task(recorder.run())
        try:
            known = attempts["rnt-b05"]["attempt_id"]
            ok = ChargeResult("succeeded", charge_id="ch_again")
            results = await asyncio.gather(
                recorder.record("no-such-attempt", ok, inquiry=True, claim=None),
                recorder.record(known, ok, inquiry=True, claim=None),
                return_exceptions=True,
            )
        finally:
            writer.cancel()
        assert isinstance(results[0], AssertionError) and results[1] == "succeeded", results


async def test_a_hard_decline_stops_only_until_the_default_method_changes_also_by_detach_or_mid_attempt(
    stack: Stack,
) -> None:
    """R14: "a hard decline stops retries until the method changes". Two ways the method changes that a new
    attach does not cover: (a) the declined default is detached and an older default remains — it is
    collected with that one; (b) a new default was attached while the declined attempt was still out, so
    the decline is recorded after the change — it goes on with the new method instead of stopping."""
    from services.payments import config as payments_config
    from services.payments.collector import record

    with fakepsp() as base:
        story = against_fakepsp(stack, base)

        def attached(renter: str, token: str, method_id: str, at: datetime) -> tuple[Any, str, bytes]:
            m = method(renter, token, method_id)
            return (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=method_id, time=at))

        items = [
            attached("rnt-a", "tok_visa", "pm-a0", FEB),
            attached("rnt-a", "tok_stolen", "pm-a1", FEB + timedelta(hours=1)),
            attached("rnt-b", "tok_stolen", "pm-b1", FEB),
        ]
        items += [_finalized(renter, n) for n, renter in enumerate(("rnt-a", "rnt-b"), start=1)]
        async with running(story, [PAYMENTS]):
            await publish(story, items)
            await _stored(stack, 2)
            await _tick(story, DUE)
            intents = await _intents(story)
            assert intents["rnt-a"]["state"] == intents["rnt-b"]["state"] == "hard_declined"

            # (a) The declined default is detached; the older default is the renter's default again.
            detach = PaymentMethodEvent(
                renter_id="rnt-a",
                method_id="pm-a1",
                kind="card",
                gateway_token="tok_stolen",
                currency="USD",
                default=True,
            )
            later = DUE + timedelta(hours=2)
            await _lifted_by(story, "payment_method.detached", detach, "pm-a1-off", later)

            # (b) Rebuild the moment of the race: rnt-b's declined attempt is still out (its decline not yet
            # recorded) when a new default arrives; the attach sees no stopped intent to lift.
            async with story.pool.acquire() as conn:
                attempt = await conn.fetchrow(
                    """update payments.attempts a set state = 'sending', code = null, decline_kind = null,
                              resolved_at = null
                         from payments.intents t
                        where t.intent_id = a.intent_id and t.renter_id = 'rnt-b'
                    returning a.attempt_id, a.claim, a.gateway"""
                )
                await conn.execute(
                    "update payments.intents set state = 'collecting', hard_method = null where renter_id = 'rnt-b'"
                )
            await publish(story, [attached("rnt-b", "tok_visa", "pm-b2", later)])

            async def method_stored() -> bool:
                async with stack.pool.acquire() as conn:
                    return bool(await conn.fetchval("select count(*) from payments.methods where method_id = 'pm-b2'"))

            await wait_until(method_stored, what="the new method stored")
            assert (await _intents(story))["rnt-b"]["state"] == "collecting"
            stolen = "card_declined/stolen_card" if attempt["gateway"] == "stripe" else "43"  # hard on either gateway
            answer = ChargeResult("declined", code=stolen, message="Your card was declined.")
            config = payments_config.load(story.settings.payments_config)
            assert (
                await record(story.pool, config, attempt["attempt_id"], answer, inquiry=False, claim=attempt["claim"])
                == "declined"
            )
            intent = (await _intents(story))["rnt-b"]
            assert (intent["state"], intent["reason"]) == ("waiting_retry", "payment method changed")

            await _tick(story, DUE + timedelta(days=1))  # _tick's event id is per day
            intents = await _intents(story)
            assert intents["rnt-a"]["state"] == intents["rnt-b"]["state"] == "succeeded"
        used = {r: [(a["method_id"], a["at"]) for a in await _attempts(story, r)] for r in ("rnt-a", "rnt-b")}
        # Each next try is dated at the change (event time): the detach, the new default — never before it.
        assert used == {"rnt-a": [("pm-a1", DUE), ("pm-a0", later)], "rnt-b": [("pm-b1", DUE), ("pm-b2", later)]}


async def test_a_fail_over_charges_what_was_due_when_its_try_started(stack: Stack) -> None:
    """R14: "for the amount still due when each attempt starts", in event time — also for a fail-over within
    a try, which starts when the try did. A wire received an hour after the due date is read while the first
    attempt is out; that attempt then ends in a definite processor error: the fail-over is for the 100.00 due
    at the due date. Whether the fleet read the wire before or after the fail-over must not change the
    charge (R11's order independence): the wire goes where R11 sends it. (Until 2026-12-08, second session,
    the fail-over charged 60.00 here and 100.00 when the wire was read later.)"""
    from services.payments import config as payments_config
    from services.payments.collector import record

    with fakepsp("--hang-ms", "4000") as base:
        story = against_fakepsp(stack, base, gateway_timeout_s=1.0)
        m = method("rnt-f", "tok_timeout_after_charge", "pm-f")
        inv = invoice("INV-2026-000001", "ctr-f", "rnt-f", due="100.00", start=FEB - timedelta(days=31), end=FEB)
        async with running(story, [PAYMENTS]):
            await publish(
                story,
                [
                    (topics.PAYMENT_METHODS, "rnt-f", event_bytes("payment_method.attached", m, id="m-f", time=FEB)),
                    (
                        topics.INVOICES_FINALIZED,
                        inv.contract_id,
                        event_bytes("invoice.finalized", inv, id="i-f", time=FEB),
                    ),
                ],
            )

            await _stored(stack, 1)
            await _tick(story, DUE)
            [first] = await _attempts(story, "rnt-f")
            assert (first["state"], first["amount_minor"]) == ("unknown", 10_000)
            wire = receipt("rnt-f", "rcp-1", "40.00", DUE + timedelta(hours=1))
            await publish(
                story,
                [
                    (
                        topics.PAYMENTS_RECEIVED,
                        "rnt-f",
                        event_bytes("payment.received", wire, id="w-1", time=wire.received_at),
                    )
                ],
            )

            async def applied() -> bool:
                async with stack.pool.acquire() as conn:
                    return await conn.fetchval("select remaining_minor from payments.invoice_status") == 6_000

            await wait_until(applied, what="the wire applied")
            config = payments_config.load(story.settings.payments_config)
            answer = ChargeResult("error", code="api_error", message="scripted: a definite processor error")
            assert (
                await record(story.pool, config, first["attempt_id"], answer, inquiry=False, claim=first["claim"])
                == "error"
            )
            attempts = await _attempts(story, "rnt-f")
        assert [(a["call_no"], a["amount_minor"]) for a in attempts] == [(1, 10_000), (2, 10_000)]
        assert attempts[0]["gateway"] != attempts[1]["gateway"]


async def test_money_received_after_the_due_date_does_not_lower_the_charge_made_on_it(stack: Stack) -> None:
    """R14 in event time: the first attempt starts on the due date, for what is due then. A wire received 12 h
    after the due date — read by payments before the tick that starts the collection — does not lower it:
    the card is charged the whole 100.00 and the wire goes to the credit balance (R11). One received before
    the due date does (60.00), and one that paid everything before it leaves nothing to charge. Until
    2026-12-08 (second session) the first renter was charged 60.00, or 100.00 when the wire was read later:
    the charge depended on how far behind the worker was."""
    cases = {"rnt-after": (DUE + timedelta(hours=12), "40.00"), "rnt-before": (DUE - timedelta(hours=1), "40.00")}
    cases["rnt-paid"] = (DUE - timedelta(hours=1), "100.00")
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        messages: list[tuple[Any, str, bytes]] = []
        for n, (renter, (at, amount)) in enumerate(sorted(cases.items()), 1):
            m = method(renter, "tok_visa", f"pm-{renter}")
            messages.append(
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m-{renter}", time=FEB))
            )
            messages.append(_finalized(renter, n))
            wire = receipt(renter, f"rcp-{renter}", amount, at)
            messages.append(
                (topics.PAYMENTS_RECEIVED, renter, event_bytes("payment.received", wire, id=f"w-{renter}", time=at))
            )
        async with running(story, [PAYMENTS]):
            await publish(story, messages)
            await _stored(stack, 3)

            async def wires_applied() -> bool:
                async with stack.pool.acquire() as conn:
                    return await conn.fetchval("select count(*) from payments.money_in where kind = 'receipt'") == 3

            await wait_until(wires_applied, what="the three wires recorded")
            await _tick(story, DUE + timedelta(days=2))

            async def collected() -> bool:
                intents = await _intents(story)
                return len(intents) == 2 and all(i["state"] != "collecting" for i in intents.values())

            await wait_until(collected, timeout_s=60, what="the collections")
            intents = await _intents(story)
            charged = {r: [a["amount_minor"] for a in await _attempts(story, r)] for r in cases}
            async with stack.pool.acquire() as conn:
                credit = {r["renter_id"]: r["credit_minor"] for r in await conn.fetch("select * from payments.books")}
                status = {
                    r["renter_id"]: r["status"] for r in await conn.fetch("select * from payments.invoice_status")
                }
        assert charged == {"rnt-after": [10_000], "rnt-before": [6_000], "rnt-paid": []}
        assert {r: i["state"] for r, i in intents.items()} == {"rnt-after": "succeeded", "rnt-before": "succeeded"}
        assert credit == {"rnt-after": 4_000, "rnt-before": 0, "rnt-paid": 0}
        assert set(status.values()) == {"paid"}
