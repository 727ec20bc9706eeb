"""Payout stories (R15), end to end over Kafka and PostgreSQL: invoicing, payments and payouts run with
the real worker runtime and relay; the platform's inputs (contracts, payees, FX rates, money received,
clock ticks) and rating's output (charges, watermarks) are real CloudEvents on their topics.

One marketplace, January and February 2026, six suppliers:

* ``sup-min`` (minimum 500.00): 60.00 earned in January waits (below_minimum); a payee update dated
  Feb 15 lowers the minimum to 50.00 — the Feb 10 planning does not see it, the Mar 1 planning does;
* ``sup-hold`` (on_hold): its payout is planned on hold, then an operator releases it (CLI, audited);
* ``sup-pwp`` (pay_when_paid): 150.00 earned on an invoice of 200.00; nothing is payable until the renter
  pays 33.33 (Feb 5) → floor(150.00 × 33.33 / 200.00) = 24.99 released at Feb 10; the renter pays the
  rest (Feb 20); at Mar 1 February's 15.00 is held (its invoice is unpaid) and January's rest, 125.01,
  is paid exactly;
* ``sup-fx`` (EUR statement, paid in USD): 41.10 EUR at the Jan 31 rate 1.0857 → 44.62 USD half-even,
  the 0.00227 USD difference an FX gain; a later rate is not used;
* ``sup-norate`` (EUR statement, paid in GBP, only a GBP/EUR rate published): no_fx_rate;
* ``sup-nopayee``: no payee, no payout.

Expected amounts are computed here from the rule's words, never by the service's domain. The operator's
view is the real ``settle payouts list --json`` run as its own process against the story's database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from domain.contracts import chart
from libs.messaging.partitioner import partition_for
from schemas import topics
from schemas.events import SagaEvent, StatementsClosed, Watermark
from schemas.inputs import ClockTicked, FxRate, PayeeUpdated, PaymentReceived
from services.invoicing.main import SERVICE as INVOICING
from services.payments.collector import refresh_gauges
from services.payments.main import SERVICE as PAYMENTS
from services.payouts.main import SERVICE as PAYOUTS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until
from tests.integration.test_invoicing_service import (
    FEB,
    JAN,
    Story,
    assert_ledger_sound,
    balance_units,
    count,
    outbox_events,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HOUR = timedelta(hours=1)
ACH = {"holder_name": "Supplier Inc", "routing_number": "021000021", "account_number": "000123456789"}
WIRE = {"holder_name": "Held Ltd", "routing_number": "021000021", "account_number": "98765432"}
SEPA = {"holder_name": "Norate GmbH", "iban": "DE89370400440532013000"}


def payee(supplier: str, *, at: datetime, n: int, currency: str = "USD", rail: str = "ach", **kw: Any) -> tuple:
    account = {"ach": ACH, "wire": WIRE, "sepa": SEPA}[rail]
    data = PayeeUpdated(
        supplier_id=supplier,
        payout_currency=currency,
        rail=rail,
        account=account,
        minimum_payout=kw.get("minimum", "0"),
        pay_when_paid=kw.get("pay_when_paid", False),
        on_hold=kw.get("on_hold", False),
    )
    return (
        topics.SUPPLIERS,
        supplier,
        event_bytes("supplier.payee_updated", data, id=f"payee-{supplier}-{n}", time=at),
    )


def fx(rate_id: str, base: str, quote: str, rate: str, as_of: datetime) -> tuple:
    data = FxRate(rate_id=rate_id, base=base, quote=quote, rate=rate, as_of=as_of)
    return (topics.FX_RATES, f"{base}/{quote}", event_bytes("fx.rate", data, id=f"fx-{rate_id}", time=as_of))


def tick(at: datetime) -> tuple:
    return (topics.CLOCK_TICKS, "clock", event_bytes("clock.ticked", ClockTicked(at=at), id=f"tick-{at:%m%d}", time=at))


def _key_on(partition: int, topic: topics.Topic, stem: str) -> str:
    """A key the relay's partitioner puts on ``partition`` (markers address each partition)."""
    return next(
        k for k in (f"{stem}-{i}" for i in range(10_000)) if partition_for(k.encode(), topic.partitions) == partition
    )


def charges_rated_through(at: datetime) -> list[tuple]:
    """Rating's ``charges.watermark`` at ``at`` on every partition of charges.rated.v1."""
    topic = topics.CHARGES_RATED
    return [
        (
            topic,
            _key_on(p, topic, "watermark"),
            event_bytes(
                "charges.watermark",
                Watermark(through=at, partition=p, source="rating"),
                id=f"rated-mark-{at:%Y%m%d%H}-{p}",
                time=at,
            ),
        )
        for p in range(topic.partitions)
    ]


def statements_closed(month: str, issued_at: datetime, *, rated: bool = True) -> list[tuple]:
    """What invoicing sends after a month's last statement: ``statements.closed`` on every partition —
    after rating's ``charges.watermark`` past the month's end on every partition of charges.rated.v1
    (``rated=False``: without those, as a worker whose charges partitions lag sees it)."""
    topic = topics.STATEMENTS_FINALIZED
    return (charges_rated_through(issued_at) if rated else []) + [
        (
            topic,
            _key_on(p, topic, "statements-closed"),
            event_bytes(
                "statements.closed",
                StatementsClosed(month=month, issued_at=issued_at, partition=p),
                id=f"closed-{month}-{p}",
                time=issued_at,
            ),
        )
        for p in range(topic.partitions)
    ]


def ticked(at: datetime) -> list[tuple]:
    """A tick, then what payments sends once it answered it (``payments.watermark`` on every partition of
    invoices.payments.v1): for stories that run payouts without payments."""
    topic = topics.INVOICE_PAYMENTS
    return [tick(at)] + [
        (
            topic,
            _key_on(p, topic, "watermark"),
            event_bytes(
                "payments.watermark",
                Watermark(through=at, partition=p, source="payments"),
                id=f"paid-mark-{at:%m%d%H}-{p}",
                time=at,
            ),
        )
        for p in range(topic.partitions)
    ]


def receipt(renter: str, receipt_id: str, amount: str, at: datetime, reference: str) -> tuple:
    data = PaymentReceived(
        renter_id=renter,
        receipt_id=receipt_id,
        amount=amount,
        currency="USD",
        received_at=at,
        rail="wire",
        reference=reference,
    )
    return (topics.PAYMENTS_RECEIVED, renter, event_bytes("payment.received", data, id=f"rcpt-{receipt_id}", time=at))


def inquiry(number: str, kind: str, at: datetime) -> tuple:
    """The saga's question about an invoice's payouts (``saga.step`` with ``inquiry``), as the saga sends it."""
    saga_id = f"saga-{number}"
    data = SagaEvent(
        saga_id=saga_id,
        invoice_number=number,
        contract_id=None,
        renter_id=None,
        currency=None,
        period_start=None,
        state="awaiting_payout" if kind == "payout" else "payout_sent",
        reason=f"{kind} deadline passed; asked",
        waits_for="payout sent",
        inquiry=kind,
        cause_event_id=f"tick-{at:%m%d}",
        cause_type="clock.ticked",
        at=at,
    )
    return (topics.SAGAS, saga_id, event_bytes("saga.step", data, id=f"ask-{number}-{kind}", time=at))


async def inquiry_answers(stack: Stack) -> dict[str, dict[str, Any]]:
    """payouts' answers on payouts.v1, by invoice number."""
    records = [json.loads(r.value) for r in await read_topic(stack, topics.PAYOUTS, timeout_s=10)]
    return {r["data"]["invoice_number"]: r for r in records if r["type"] == "payout.inquiry_answered"}


def cents(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


async def settle_cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """``settle …`` as its own process against the story's database (no broker needed for reads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETTLE_")}
    env.update(
        SETTLE_DATABASE_URL=stack.database_url,
        SETTLE_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        SETTLE_TOPIC_PREFIX=stack.settings.topic_prefix,
        SETTLE_STATE_DIR=str(stack.settings.state_dir),
        PYTHONPATH=str(REPO),
        NO_COLOR="1",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def payouts_list(stack: Stack) -> dict[str, dict[str, Any]]:
    code, out, err = await settle_cli(stack, "payouts", "list", "--json")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines() if line.strip()]
    by_supplier: dict[str, dict[str, Any]] = {}
    for doc in docs:  # the latest plan of each supplier
        by_supplier[doc["supplier_id"] + ("" if doc["state"] == "waiting" else ":" + ",".join(doc["months"]))] = doc
    return by_supplier


async def wait_rows(stack: Stack, sql: str, n: int, what: str, timeout_s: float = 90) -> None:
    async def enough() -> bool:
        return await count(stack, sql) >= n

    await wait_until(enough, timeout_s=timeout_s, what=what)


async def test_payouts_minimum_hold_pay_when_paid_and_fx(stack: Stack) -> None:
    story = Story()
    story.contract("ctr-a", renter="rnt-a", price="2", rate="1.5")
    story.contract("ctr-b", renter="rnt-b", price="2", rate="1.5")
    story.contract("ctr-c", renter="rnt-c", price="2", rate="1.5")
    story.contract("ctr-d", renter="rnt-d", currency="EUR", price="2", rate="1.37")
    day = datetime(2026, 1, 12, tzinfo=UTC)
    for n in range(4):  # 4 x 36,000 GPU-s x 1.5 / 3600 = 60.00
        story.charge("ctr-a", "alloc-a1", "sup-min", day + n * HOUR, billable=36_000)
    story.charge("ctr-a", "alloc-a2", "sup-nopayee", day, billable=36_000)  # 15.00
    for n in range(5):  # 75.00
        story.charge("ctr-b", "alloc-b1", "sup-hold", day + n * HOUR, billable=36_000)
    for n in range(10):  # 150.00 earned; the invoice: 10 x 36,000 x 2 / 3600 = 200.00
        story.charge("ctr-c", "alloc-c1", "sup-pwp", day + n * HOUR, billable=36_000)
    for n in range(3):  # 3 x 36,000 x 1.37 / 3600 = 41.10 EUR
        story.charge("ctr-d", "alloc-d1", "sup-fx", day + n * HOUR, billable=36_000)
    story.charge("ctr-d", "alloc-d2", "sup-norate", day, billable=36_000)  # 13.70 EUR
    story.watermark(JAN[1])
    await story.publish(stack)
    start = JAN[0]
    await publish(
        stack,
        [
            payee("sup-min", at=start, n=1, minimum="500"),
            payee("sup-hold", at=start, n=1, rail="wire", on_hold=True),
            payee("sup-pwp", at=start, n=1, pay_when_paid=True),
            payee("sup-fx", at=start, n=1),
            payee("sup-norate", at=start, n=1, currency="GBP", rail="sepa"),
            fx("eur-usd-0131", "EUR", "USD", "1.0857", datetime(2026, 1, 31, tzinfo=UTC)),
            fx("eur-usd-0202", "EUR", "USD", "1.2", datetime(2026, 2, 2, tzinfo=UTC)),
            fx("gbp-eur-0131", "GBP", "EUR", "1.17", datetime(2026, 1, 31, tzinfo=UTC)),  # the inverse pair
        ],
    )

    # No processor is called in this story (money arrives as receipts): the payments worker builds no gateway.
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    async with running(stack, [INVOICING, PAYMENTS, PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.statements", 6, "six January statements at payouts")
        await wait_rows(stack, "select count(*) from payouts.invoices", 4, "four January invoices at payouts")
        await wait_rows(stack, "select count(*) from payments.invoices", 4, "four January invoices at payments")

        # --- Feb 1: January's statements are final -------------------------------------------------------
        await publish(stack, [tick(FEB[0])])
        await wait_rows(stack, "select count(*) from payouts.payouts", 6, "a plan per supplier at Feb 1")
        plans = await payouts_list(stack)
        assert (plans["sup-min"]["state"], plans["sup-min"]["reason"], plans["sup-min"]["amount"]) == (
            "waiting",
            "below_minimum",
            "60.00",
        )
        held = plans["sup-hold:2026-01"]
        assert (held["state"], held["reason"], held["amount"], held["rail"]) == ("on_hold", "on_hold", "75.00", "wire")
        pwp = plans["sup-pwp"]
        assert (pwp["state"], pwp["reason"], pwp["amount"], pwp["held"]) == (
            "waiting",
            "nothing_payable",
            "0.00",
            "150.00",
        )
        converted = plans["sup-fx:2026-01"]
        exact = Decimal("41.10") * Decimal("1.0857")  # 44.62227
        assert converted["state"] == "planned"
        assert (converted["currency"], converted["amount"]) == ("EUR", "41.10")
        assert (converted["payout_currency"], converted["payout_amount"]) == ("USD", cents(exact))
        assert (converted["rate_id"], converted["rate"]) == ("eur-usd-0131", "1.0857")
        assert (plans["sup-norate"]["state"], plans["sup-norate"]["reason"]) == ("waiting", "no_fx_rate")
        assert (plans["sup-nopayee"]["state"], plans["sup-nopayee"]["reason"]) == ("waiting", "no_payee")
        assert all("rate_id" not in d for k, d in plans.items() if not k.startswith("sup-fx"))

        # --- the saga asks about the payouts of ctr-a's invoice (and of an invoice no plan names): payouts
        # answers once per question from its records — the two plans that named the invoice, waiting, and why
        number_a = await stack.pool.fetchval("select number from payouts.invoices where contract_id = 'ctr-a'")
        asked = datetime(2026, 3, 18, tzinfo=UTC)
        questions = [inquiry(number_a, "payout", asked), inquiry("INV-NOBODY", "settlement", asked)]
        await publish(stack, questions)
        await publish(stack, questions)  # the same questions again: no second answer

        async def both_answered() -> bool:
            return set(await inquiry_answers(stack)) == {number_a, "INV-NOBODY"}

        await wait_until(both_answered, timeout_s=60, what="payouts' answers to the saga's inquiries")
        await asyncio.sleep(1)
        answers = await inquiry_answers(stack)
        records = [json.loads(r.value) for r in await read_topic(stack, topics.PAYOUTS, timeout_s=10)]
        assert sum(r["type"] == "payout.inquiry_answered" for r in records) == 2, "one answer per question"
        said = answers[number_a]["data"]
        assert (said["inquiry"], said["known"], said["asked_at"]) == ("payout", True, "2026-03-18T00:00:00Z")
        assert [(p["supplier_id"], p["state"], p["reason"]) for p in said["payouts"]] == [
            ("sup-min", "waiting", "below_minimum"),
            ("sup-nopayee", "waiting", "no_payee"),
        ]
        assert said["detail"].startswith("sup-min: payout "), said["detail"]
        assert " waiting (below_minimum); sup-nopayee: payout " in said["detail"]
        nobody = answers["INV-NOBODY"]["data"]
        assert (nobody["inquiry"], nobody["known"], nobody["payouts"]) == ("settlement", False, [])
        assert nobody["detail"].startswith("no payout names invoice INV-NOBODY")

        # --- Feb 5: the renter of ctr-c pays 33.33 of its 200.00 invoice ----------------------------------
        number_c = await stack.pool.fetchval("select number from payouts.invoices where contract_id = 'ctr-c'")
        await publish(stack, [receipt("rnt-c", "r-1", "33.33", datetime(2026, 2, 5, tzinfo=UTC), f"pay {number_c}")])
        await wait_rows(
            stack,
            "select count(*) from payouts.invoice_status where remaining_minor = 16667",
            1,
            "the partial payment seen by payouts",
        )
        # A payee update dated Feb 15 is published now but is not "at or before" the Feb 10 planning.
        await publish(stack, [payee("sup-min", at=datetime(2026, 2, 15, tzinfo=UTC), n=2, minimum="50")])
        await wait_rows(stack, "select count(*) from payouts.payees where supplier_id = 'sup-min'", 2, "payee v2")
        # a tick, and (what the fleet's rating sends after every tick) the charges watermark that lets
        # invoicing say its close is done — payments answers the tick only then
        feb10 = datetime(2026, 2, 10, tzinfo=UTC)
        await publish(stack, [tick(feb10), *charges_rated_through(feb10)])
        await wait_rows(
            stack, "select count(*) from payouts.payouts where supplier_id = 'sup-pwp' and state = 'planned'", 1, "pwp"
        )
        plans = await payouts_list(stack)
        released = (Decimal(15_000) * 3_333 // 20_000) / 100  # floor in cents: 24.99, not 25.00
        assert plans["sup-pwp:2026-01"]["amount"] == str(released) == "24.99"
        assert plans["sup-pwp:2026-01"]["held"] == "125.01"
        assert plans["sup-min"]["reason"] == "below_minimum"

        # --- February: one more hour for ctr-c, the renter pays the rest on Feb 20, month closes ------------
        story.charge("ctr-c", "alloc-c1", "sup-pwp", datetime(2026, 2, 3, tzinfo=UTC), billable=36_000)  # 15.00
        story.watermark(FEB[1])
        await publish(stack, [receipt("rnt-c", "r-2", "166.67", datetime(2026, 2, 20, tzinfo=UTC), number_c)])
        await story.publish(stack)
        await wait_rows(stack, "select count(*) from payouts.statements where month = '2026-02'", 1, "Feb statement")
        await wait_rows(stack, "select count(*) from payouts.invoices", 8, "February invoices at payouts")
        await wait_rows(
            stack,
            "select count(*) from payouts.invoice_status where remaining_minor = 0 and as_of < '2026-03-01'",
            1,
            "the full payment seen by payouts",
        )
        await publish(stack, [tick(FEB[1])])
        await wait_rows(
            stack, "select count(*) from payouts.payouts where supplier_id = 'sup-pwp' and state = 'planned'", 2, "rest"
        )
        await wait_rows(
            stack, "select count(*) from payouts.payouts where supplier_id = 'sup-min' and state = 'planned'", 1, "min"
        )
        plans = await payouts_list(stack)
        # Jan net 150.00 + Feb net 15.00 − held (Feb's 15.00: its invoice is unpaid) − paid 24.99.
        rest = plans["sup-pwp:2026-02"]
        assert (rest["amount"], rest["held"], rest["months"]) == ("125.01", "15.00", ["2026-02"])
        minimum = plans["sup-min:2026-01"]
        assert (minimum["state"], minimum["amount"], minimum["months"]) == ("planned", "60.00", ["2026-01"])

        # --- the operator releases the held payout ------------------------------------------------------
        hold_id = held["payout_id"]
        code, out, err = await settle_cli(
            stack, "payouts", "release", hold_id, "--reason", "KYC cleared", "--actor", "ops"
        )
        assert code == 0, err
        code, out, err = await settle_cli(stack, "payouts", "release", hold_id, "--reason", "again")
        assert code == 2 and "release applies to on_hold payouts only" in (out + err)
        code, out, err = await settle_cli(stack, "payouts", "show", hold_id)
        assert code == 0, err
        shown = json.loads(out)
        assert shown["state"] == "planned" and shown["account"] == "wire:…5432"
        assert [(a["action"], a["from"], a["to"], a["actor"]) for a in shown["actions"]] == [
            ("release", "on_hold", "planned", "ops")
        ]
        assert "98765432" not in out  # never a full account number
        code, out, err = await settle_cli(stack, "payouts", "plan", "--dry-run", "--json")
        assert code == 0, err
        would = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert {(d["supplier_id"], d["reason"]) for d in would} == {
            ("sup-norate", "no_fx_rate"),
            ("sup-nopayee", "no_payee"),
        }

        async def released_event() -> bool:
            return any(e["type"] == "payout.released" for e in await outbox_events(stack, topics.PAYOUTS))

        await wait_until(released_event, timeout_s=30, what="payout.released in the outbox")

    events = await outbox_events(stack, topics.PAYOUTS)
    kinds = sorted(e["type"] for e in events)
    assert kinds.count("payout.planned") == 4  # sup-fx, sup-pwp x2, sup-min
    # Each plan names the renter invoices whose earnings it pays (the saga follows each cycle by them):
    # a plan holding an invoice's earnings entirely does not name it; the payout that releases them does,
    # whatever month they were earned in.
    numbers = {
        (r["contract_id"], r["period_start"].month): r["number"]
        for r in await stack.pool.fetch("select contract_id, period_start, number from payouts.invoices")
    }
    named = {
        (e["type"], e["data"]["supplier_id"], tuple(e["data"]["months"])): e["data"]["invoice_numbers"]
        for e in events
        if e["type"] in ("payout.planned", "payout.waiting", "payout.held")
    }
    jan_c = numbers[("ctr-c", 1)]
    assert named[("payout.waiting", "sup-pwp", ("2026-01",))] == [], "all of January held: nothing paid yet"
    assert named[("payout.planned", "sup-pwp", ("2026-01",))] == [jan_c], "24.99 of January released"
    assert named[("payout.planned", "sup-pwp", ("2026-02",))] == [jan_c], "January's rest, not February's held"
    assert named[("payout.waiting", "sup-min", ("2026-01",))] == [numbers[("ctr-a", 1)]]
    assert named[("payout.held", "sup-hold", ("2026-01",))] == [numbers[("ctr-b", 1)]]
    assert kinds.count("payout.held") == 1 and kinds.count("payout.released") == 1
    # Ledger: every payout left the supplier's payable; FX gain = exact − rounded conversion.
    usd_units = 10**8
    in_transit = Decimal("44.62") + Decimal("24.99") + Decimal("125.01") + Decimal("60.00") + Decimal("75.00")
    assert await balance_units(stack, "platform:payouts_in_transit:USD") == -int(in_transit * usd_units)
    assert await balance_units(stack, "platform:payouts_on_hold:USD") == 0
    assert await balance_units(stack, "platform:fx_gain_loss:USD") == -int((exact - Decimal("44.62")) * usd_units)
    assert await balance_units(stack, chart.payable("sup-pwp", "USD").code) == -15 * usd_units
    assert await balance_units(stack, chart.payable("sup-fx", "EUR").code) == 0
    await assert_ledger_sound(stack)


async def test_a_month_closing_tick_waits_for_that_months_statements(stack: Stack) -> None:
    """R15: planning at a tick covers every month final by then. The tick reaches payouts straight from
    the clock, its statements only after metering, rating and invoicing closed the month: the planning
    waits for invoicing's ``statements.closed``. ``sup-late`` has no payee at the Feb 1 close (January
    waits: no_payee); its payee arrives on Feb 15; at Mar 1 January and February are one payout — not
    January alone at the tick, then February when its statement arrives."""
    story = Story()
    story.contract("ctr-l", renter="rnt-l", price="2", rate="1.5")
    story.charge("ctr-l", "alloc-l1", "sup-late", datetime(2026, 1, 12, tzinfo=UTC), billable=36_000)  # 15.00
    story.watermark(JAN[1])
    await story.publish(stack)
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    async with running(stack, [INVOICING, PAYMENTS, PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.statements", 1, "January's statement at payouts")
        await publish(stack, [tick(FEB[0])])
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 1 planning")
        plans = await payouts_list(stack)
        assert (plans["sup-late"]["state"], plans["sup-late"]["reason"]) == ("waiting", "no_payee")

        await publish(stack, [payee("sup-late", at=datetime(2026, 2, 15, tzinfo=UTC), n=1)])
        await wait_rows(stack, "select count(*) from payouts.payees", 1, "the payee")
        # The Mar 1 tick first (as in production), planned only once February's statements are in.
        await publish(stack, [tick(FEB[1])])
        await wait_rows(stack, "select count(*) from payouts.ticks", 2, "the Mar 1 tick recorded")
        await asyncio.sleep(1)
        assert await count(stack, "select count(*) from payouts.payouts where state = 'planned'") == 0
        story.charge("ctr-l", "alloc-l1", "sup-late", datetime(2026, 2, 3, tzinfo=UTC), billable=36_000)  # 15.00
        story.watermark(FEB[1])
        await story.publish(stack)
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 2, "the Mar 1 planning")
        plans = await payouts_list(stack)
    payout = plans["sup-late:2026-01,2026-02"]
    assert (payout["state"], payout["amount"], payout["months"]) == ("planned", "30.00", ["2026-01", "2026-02"])
    assert [k for k in plans if k.startswith("sup-late:")] == ["sup-late:2026-01,2026-02"]
    await assert_ledger_sound(stack)


async def test_money_received_before_a_tick_releases_at_that_tick(stack: Stack) -> None:
    """R15: money applied at or before planning releases earnings at that planning. A receipt published
    just before a tick reaches payouts only through payments (applied, then a payment status), the tick
    straight from the clock: the tick carries its barrier (`settle clock tick`), payments answers it only
    after reading receipts up to it and then sends `payments.watermark`, and payouts plans the tick only
    once payments answered it — so the release is at this tick, however the two raced."""
    from libs.messaging.broker import start_producer, stop_client
    from services.clock.main import publish_tick

    story = Story()
    story.contract("ctr-p", renter="rnt-p", price="2", rate="1.5")
    for n in range(10):  # 150.00 earned on an invoice of 200.00
        story.charge("ctr-p", "alloc-p1", "sup-pwp", datetime(2026, 1, 12, tzinfo=UTC) + n * HOUR, billable=36_000)
    story.watermark(JAN[1])
    await story.publish(stack)
    await publish(stack, [payee("sup-pwp", at=JAN[0], n=1, pay_when_paid=True)])
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    async with running(stack, [INVOICING, PAYMENTS, PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.statements", 1, "January's statement at payouts")
        await wait_rows(stack, "select count(*) from payments.invoices", 1, "the invoice at payments")
        await publish(stack, [tick(FEB[0])])
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 1 planning")
        plans = await payouts_list(stack)
        assert (plans["sup-pwp"]["reason"], plans["sup-pwp"]["held"]) == ("nothing_payable", "150.00")

        number = await stack.pool.fetchval("select number from payouts.invoices")
    # Payments is down when the receipt and the tick arrive: payouts has the tick, not the money.
    async with running(stack, [INVOICING, PAYOUTS], relays=1):
        await publish(stack, [receipt("rnt-p", "r-p", "200.00", datetime(2026, 2, 5, tzinfo=UTC), number)])
        producer = await start_producer(stack.bootstrap_servers, client_id="story-clock")
        try:
            await publish_tick(producer, stack.bootstrap_servers, stack.settings.topic_prefix, FEB[0] + 9 * 24 * HOUR)
        finally:
            await stop_client(producer)
        await publish(stack, charges_rated_through(FEB[0] + 9 * 24 * HOUR))  # rating's, after the tick
        await wait_rows(stack, "select count(*) from payouts.ticks", 2, "the Feb 10 tick at payouts")
        await asyncio.sleep(1.5)
        assert await count(stack, "select count(*) from payouts.ticks where planned") == 1, "planned before payments"
        async with running(stack, [PAYMENTS], relays=1):
            await wait_rows(stack, "select count(*) from payouts.ticks where planned", 2, "the Feb 10 planning")
            plans = await payouts_list(stack)
    payout = plans["sup-pwp:2026-01"]
    assert (payout["state"], payout["amount"], payout["held"]) == ("planned", "150.00", "0.00")
    assert payout["planned_at"].startswith("2026-02-10")
    await assert_ledger_sound(stack)


async def test_credit_applied_to_an_invoice_at_its_issue_releases_at_that_ticks_planning(stack: Stack) -> None:
    """R11 + R15: money on the renter's credit balance pays the next invoice as it is issued (an invoice
    exists from the end of its period), and money applied at or before planning releases the earnings.
    The month-closing tick reaches payments before its close issued the invoice — as it always can, the
    close comes after the tick. Payments answers the tick only once invoicing's ``invoices.watermark`` says
    the invoices of that close are out, so the status "paid from credit at Feb 1" is before the tick's
    ``payments.watermark`` and the Feb 1 planning pays all 150.00 (before: held until the next month)."""
    story = Story()
    story.contract("ctr-k", renter="rnt-k", price="2", rate="1.5")
    story.watermark(JAN[0])  # invoicing is upstream: its first mark (nothing due yet) reaches payments
    await story.publish(stack)
    await publish(stack, [payee("sup-k", at=JAN[0], n=1, pay_when_paid=True)])
    stack.settings = stack.settings.model_copy(update={"gateways_enabled": ""})
    async with running(stack, [INVOICING, PAYMENTS, PAYOUTS], relays=1):
        await wait_rows(
            stack, "select count(*) from payments.invoice_marks", topics.INVOICES_FINALIZED.partitions, "marks"
        )
    # The renter pays 250.00 ahead (no invoice yet: credit balance); the Feb 1 tick arrives while the
    # close of January is not done (invoicing down).
    await publish(stack, [receipt("rnt-k", "r-k", "250.00", datetime(2026, 1, 20, tzinfo=UTC), "advance")])
    async with running(stack, [PAYMENTS, PAYOUTS], relays=1):
        await publish(stack, [tick(FEB[0])])
        await wait_rows(stack, "select count(*) from payments.ticks_unanswered", 1, "the tick waiting at payments")
        await wait_rows(stack, "select count(*) from payouts.ticks", 1, "the tick at payouts")
        await asyncio.sleep(1.5)
        assert await count(stack, "select count(*) from payouts.ticks where planned") == 0, "planned unanswered"
        assert await count(stack, "select count(*) from payments.ticks_unanswered") == 1
        await refresh_gauges(stack.pool)  # what an SRE sees meanwhile (alert SettlePaymentsWaitingForInvoicing)
        assert REGISTRY.get_sample_value("settle_payment_ticks_waiting") == 1
    await refresh_gauges(stack.pool)
    assert REGISTRY.get_sample_value("settle_payment_ticks_waiting") == 1
    for n in range(10):  # 150.00 earned on an invoice of 200.00
        story.charge("ctr-k", "alloc-k1", "sup-k", datetime(2026, 1, 12, tzinfo=UTC) + n * HOUR, billable=36_000)
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING, PAYMENTS, PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 1 planning")
        plans = await payouts_list(stack)
        status = await stack.pool.fetchrow("select * from payments.invoice_status")
    assert (status["status"], status["paid_minor"], status["remaining_minor"]) == ("paid", 20_000, 0), dict(status)
    payout = plans["sup-k:2026-01"]
    assert (payout["state"], payout["amount"], payout["held"]) == ("planned", "150.00", "0.00")
    assert payout["planned_at"].startswith("2026-02-01")
    await refresh_gauges(stack.pool)
    assert REGISTRY.get_sample_value("settle_payment_ticks_waiting") == 0
    await assert_ledger_sound(stack)


async def test_a_month_is_paid_out_only_once_its_hours_earnings_are_read(stack: Stack) -> None:
    """R15 pay-when-paid: the earnings held are every hour of the final months. Payouts reads charges.rated
    itself, and a restarted or lagging worker can read a month's statement, its ``statements.closed`` and
    the tick before that month's charges (another partition, a big backlog). Planning waits for rating's
    ``charges.watermark`` past the month's end on every partition: here the charges arrive after
    everything else, and the planning then holds all 150.00 (the invoice is not issued) instead of paying
    the statement's 150.00 out before it knew the hours were unpaid."""
    from tests.scenarios.test_payout_files_stories import statement

    feb2 = datetime(2026, 2, 2, tzinfo=UTC)
    story = Story()
    story.contract("ctr-lag", renter="rnt-lag", price="2", rate="1.5")
    for n in range(10):  # 150.00 earned, on an invoice never issued here
        story.charge("ctr-lag", "alloc-lag", "sup-lag", datetime(2026, 1, 12, tzinfo=UTC) + n * HOUR, billable=36_000)
    await publish(
        stack, [payee("sup-lag", at=JAN[0], n=1, pay_when_paid=True), statement("sup-lag", "USD", "150.00", 1)]
    )
    await publish(stack, statements_closed("2026-01", FEB[0], rated=False) + ticked(feb2))
    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.ticks", 1, "the tick at payouts")
        await wait_rows(
            stack, "select count(*) from payouts.statement_marks", topics.STATEMENTS_FINALIZED.partitions, "marks"
        )
        await asyncio.sleep(1.5)
        assert await count(stack, "select count(*) from payouts.ticks where planned") == 0, "planned unrated"
        await story.publish(stack)
        await publish(stack, charges_rated_through(FEB[0]))
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 2 planning")
        plans = await payouts_list(stack)
    assert (plans["sup-lag"]["state"], plans["sup-lag"]["reason"], plans["sup-lag"]["held"]) == (
        "waiting",
        "nothing_payable",
        "150.00",
    )
    assert await count(stack, "select count(*) from payouts.payouts where state <> 'waiting'") == 0
    await assert_ledger_sound(stack)


async def test_a_tick_is_planned_only_once_its_invoices_are_read(stack: Stack) -> None:
    """R15 pay-when-paid: "paid" is the invoice's total minus what remained at planning, and an invoice not
    issued holds all its hours' earnings. Payouts reads invoices.finalized.v1 itself; a restarted or lagging
    worker can read the tick, the statements, the charges and the invoice's payment status (paid in full
    at Feb 1) before the invoice. Planning waits for invoicing's ``invoices.watermark`` past the tick on every
    partition: here the invoice and its partition's mark come last, and the planning then pays all 150.00
    — until 2026-12-08 (second session) it planned without the invoice and held everything."""
    from schemas.events import InvoicePaymentStatus
    from services.payouts.files import refresh_gauges as refresh_payout_gauges
    from tests.integration.test_payments_service import invoice
    from tests.scenarios.test_payout_files_stories import statement

    feb2 = datetime(2026, 2, 2, tzinfo=UTC)
    story = Story()
    story.contract("ctr-inv", renter="rnt-inv", price="2", rate="1.5")
    for n in range(10):  # 150.00 earned on an invoice of 200.00
        story.charge("ctr-inv", "alloc-inv", "sup-inv", datetime(2026, 1, 12, tzinfo=UTC) + n * HOUR, billable=36_000)
    inv = invoice("INV-2026-000001", "ctr-inv", "rnt-inv", due="200.00", start=JAN[0], end=FEB[0])
    paid = InvoicePaymentStatus(
        invoice_id=inv.invoice_id,
        number=inv.number,
        contract_id=inv.contract_id,
        renter_id=inv.renter_id,
        currency="USD",
        amount_due="200.00",
        amount_paid="200.00",
        amount_remaining="0.00",
        status="paid",
        revision=1,
        as_of=FEB[0],
    )
    topic = topics.INVOICES_FINALIZED
    own = partition_for(inv.contract_id.encode(), topic.partitions)

    def mark(p: int) -> tuple:
        data = Watermark(through=feb2, partition=p, source="invoicing")
        return (
            topic,
            _key_on(p, topic, "watermark"),
            event_bytes("invoices.watermark", data, id=f"inv-mark-{p}", time=feb2),
        )

    await publish(
        stack, [payee("sup-inv", at=JAN[0], n=1, pay_when_paid=True), statement("sup-inv", "USD", "150.00", 1)]
    )
    await story.publish(stack)
    status = (
        topics.INVOICE_PAYMENTS,
        inv.contract_id,
        event_bytes("invoice.payment_status", paid, id="st-1", time=FEB[0]),
    )
    await publish(stack, [*statements_closed("2026-01", FEB[0]), status, *ticked(feb2)])
    await publish(stack, [mark(p) for p in range(topic.partitions) if p != own])
    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.ticks", 1, "the tick at payouts")
        await wait_rows(
            stack, "select count(*) from payouts.statement_marks", topics.STATEMENTS_FINALIZED.partitions, "marks"
        )
        await asyncio.sleep(1.5)
        assert await count(stack, "select count(*) from payouts.ticks where planned") == 0, "planned unread"
        async with stack.pool.acquire() as conn:
            await refresh_payout_gauges(conn)  # what an SRE sees meanwhile (alert SettlePayoutPlanningBehind)
        assert REGISTRY.get_sample_value("settle_payout_ticks_unplanned") == 1
        await publish(
            stack,
            [(topic, inv.contract_id, event_bytes("invoice.finalized", inv, id="inv-1", time=FEB[0])), mark(own)],
        )
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 2 planning")
        plans = await payouts_list(stack)
    assert (plans["sup-inv:2026-01"]["state"], plans["sup-inv:2026-01"]["amount"]) == ("planned", "150.00")
    assert plans["sup-inv:2026-01"]["held"] == "0.00"
    async with stack.pool.acquire() as conn:
        await refresh_payout_gauges(conn)
    assert REGISTRY.get_sample_value("settle_payout_ticks_unplanned") == 0
    await assert_ledger_sound(stack)
