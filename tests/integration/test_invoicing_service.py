"""The invoicing service over Kafka and PostgreSQL: watermark-driven period close, documents, ledger.

Inputs are real CloudEvents on ``charges.rated.v1`` (charges, wallet draws, one watermark per
partition) and ``contracts.v1``; the service runs with the real worker runtime. What rating would
have accrued in the ledger for each charge is posted by the test (:class:`Story`), so that the
ledger proof is complete: after the close every unbilled account is cleared, ``verify`` passes and
the trial balance is zero. Expected amounts are computed here from the rules, never by the domain.

The helpers in the first section are shared with ``tests/scenarios/test_invoicing_stories.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from typing import Any

import asyncpg
import orjson
import pytest

from domain.contracts import chart
from domain.contracts.periods import period_containing
from libs.errors import DatabaseUnavailableError, RetryableError
from libs.ids import derive_id
from libs.ledger import (
    AccountSpec,
    Entry,
    build_entry,
    credit,
    debit,
    ensure_accounts,
    post,
    verify,
)
from libs.messaging.broker import start_producer, stop_client
from libs.messaging.partitioner import partition_for
from libs.money import round_ledger
from schemas import topics
from schemas.events import ChargeRated, WalletDrawn, Watermark
from schemas.inputs import ContractCreated, ContractTerminated
from services.invoicing.closer import Closer
from services.invoicing.main import SERVICE as INVOICING
from tests.conftest import Stack
from tests.fleet import event_bytes, running, wait_until

pytestmark = pytest.mark.integration

JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
MAR = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
PLACES = {"USD": 2, "JPY": 0, "EUR": 2, "KWD": 3}


# --- independent oracles --------------------------------------------------------------------------------


def half_even(amount: Fraction, places: int) -> Decimal:
    """R6 rounding with ``decimal``'s own quantize (not libs.money): an exact amount → shown amount."""
    with localcontext() as ctx:
        ctx.prec = 100
        value = Decimal(amount.numerator) / Decimal(amount.denominator)
        return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def shown(amount: Fraction, currency: str) -> str:
    """The document string of an exact amount: rounded once, exactly the currency's digits."""
    return str(half_even(amount, PLACES[currency]))


def money(text: str) -> Fraction:
    return Fraction(Decimal(text))


# --- a billing story: what the platform and rating publish ------------------------------------------------


@dataclass
class ContractInfo:
    contract_id: str
    renter_id: str
    currency: str
    billing_mode: str
    price: Decimal
    rate: Decimal
    anchor: int


@dataclass
class Story:
    """Events to publish (with their partitions) and the ledger accruals rating would have posted."""

    contracts: dict[str, ContractInfo] = field(default_factory=dict)
    items: list[tuple[str, str | None, bytes, int]] = field(default_factory=list)
    accruals: list[Entry] = field(default_factory=list)
    specs: list[AccountSpec] = field(default_factory=list)
    _n: int = 0

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}-{self._n}"

    def _keyed(self, topic: topics.Topic, key: str, value: bytes) -> None:
        self.items.append((topic.name, key, value, partition_for(key.encode(), topic.partitions)))

    def contract(
        self,
        contract_id: str,
        *,
        renter: str = "rnt-1",
        currency: str = "USD",
        mode: str = "postpaid",
        price: str = "2",
        rate: str = "1.5",
        commitment: str = "0",
        tiers: Iterable[tuple[str, str]] = (),
        tax: str = "0",
        starts_at: datetime = JAN[0],
        ends_at: datetime | None = None,
        anchor: int = 1,
        payment_terms_days: int = 30,
    ) -> ContractInfo:
        data = ContractCreated(
            contract_id=contract_id,
            renter_id=renter,
            currency=currency,
            billing_mode=mode,
            price_per_gpu_hour=price,
            supplier_rate_per_gpu_hour=rate,
            commitment_per_period=commitment,
            credit_limit=None,
            sla_tiers=[{"below_uptime": b, "credit_percent": c} for b, c in tiers],
            tax_rate=tax,
            starts_at=starts_at,
            ends_at=ends_at,
            billing_anchor_day=anchor,
            payment_terms_days=payment_terms_days,
        )
        self._keyed(
            topics.CONTRACTS,
            contract_id,
            event_bytes("contract.created", data, id=self._id("ctr"), time=starts_at),
        )
        info = ContractInfo(contract_id, renter, currency, mode, Decimal(price), Decimal(rate), anchor)
        self.contracts[contract_id] = info
        return info

    def terminate(self, contract_id: str, effective_at: datetime) -> None:
        data = ContractTerminated(contract_id=contract_id, effective_at=effective_at)
        self._keyed(
            topics.CONTRACTS,
            contract_id,
            event_bytes("contract.terminated", data, id=self._id("term"), time=effective_at),
        )

    def charge(
        self,
        contract_id: str,
        allocation: str,
        supplier: str,
        hour_start: datetime,
        *,
        billable: int,
        provisioned: int | None = None,
        maintenance: int = 0,
        outage: int = 0,
        revision: int = 1,
        charge_x3600: Decimal | None = None,
    ) -> ChargeRated:
        """One allocation-hour's charge: ``billable`` GPU-seconds at the contract's price (R4)."""
        c = self.contracts[contract_id]
        period = period_containing(c.anchor, hour_start)
        charge_id = self._id("chg")
        data = ChargeRated(
            charge_id=charge_id,
            usage_id=f"use-{charge_id}",
            allocation_id=allocation,
            contract_id=contract_id,
            renter_id=c.renter_id,
            supplier_id=supplier,
            meter="gpu_seconds",
            hour_start=hour_start,
            revision=revision,
            currency=c.currency,
            billing_mode=c.billing_mode,
            period_start=period[0],
            period_end=period[1],
            delta_provisioned_gpu_seconds=billable + maintenance + outage if provisioned is None else provisioned,
            delta_billable_gpu_seconds=billable,
            delta_maintenance_gpu_seconds=maintenance,
            delta_outage_gpu_seconds=outage,
            delta_quantity=Decimal(0),
            charge_x3600=billable * c.price if charge_x3600 is None else charge_x3600,
            earning_x3600=billable * c.rate,
            price_versions=[1],
        )
        self._keyed(
            topics.CHARGES_RATED,
            contract_id,
            event_bytes("charge.rated", data, id=self._id("ev"), time=hour_start + timedelta(hours=1)),
        )
        self._accrue(
            data.charge_id,
            [
                (
                    chart.unbilled_receivable(c.renter_id, c.currency),
                    chart.unbilled_revenue(c.currency),
                    round_ledger(Fraction(data.charge_x3600) / 3600, c.currency),
                ),
                (
                    chart.cost_of_revenue(c.currency),
                    chart.payable_accrued(supplier, c.currency),
                    round_ledger(Fraction(data.earning_x3600) / 3600, c.currency),
                ),
            ],
            c.currency,
        )
        return data

    def topup(self, contract_id: str, amount: str) -> None:
        """Only the ledger side (rating's): cash → wallet, so that draws never cross the wallet's floor."""
        c = self.contracts[contract_id]
        self._accrue(
            self._id("topup"),
            [
                (
                    chart.cash_clearing(c.currency),
                    chart.wallet(c.renter_id, contract_id, c.currency),
                    round_ledger(money(amount), c.currency),
                ),
            ],
            c.currency,
        )

    def draw(self, contract_id: str, at: datetime, drawn: str) -> WalletDrawn:
        """A prepaid drawdown of ``drawn`` (major units, exact) for the period containing ``at``."""
        c = self.contracts[contract_id]
        period = period_containing(c.anchor, at)
        data = WalletDrawn(
            draw_id=self._id("draw"),
            contract_id=contract_id,
            renter_id=c.renter_id,
            currency=c.currency,
            period_start=period[0],
            period_end=period[1],
            drawn_x3600=Decimal(drawn) * 3600,
            reason="charge",
            at=at,
        )
        self._keyed(topics.CHARGES_RATED, contract_id, event_bytes("wallet.drawn", data, id=self._id("ev"), time=at))
        self._accrue(
            data.draw_id,
            [
                (
                    chart.wallet(c.renter_id, contract_id, c.currency),
                    chart.prepaid_applied(c.renter_id, contract_id, c.currency),
                    round_ledger(money(drawn), c.currency),
                ),
            ],
            c.currency,
        )
        return data

    def watermark(self, through: datetime) -> None:
        """``charges.watermark`` to every partition of charges.rated.v1, as rating sends it."""
        for p in range(topics.CHARGES_RATED.partitions):
            data = Watermark(through=through, partition=p, source="rating")
            value = event_bytes("charges.watermark", data, id=self._id(f"wm{p}"), time=through)
            self.items.append((topics.CHARGES_RATED.name, f"watermark-{p}", value, p))

    def _accrue(self, cause: str, moves: list[tuple[AccountSpec, AccountSpec, int]], currency: str) -> None:
        postings = []
        for debit_spec, credit_spec, units in moves:
            self.specs += [debit_spec, credit_spec]
            postings += [debit(debit_spec.code, units, currency), credit(credit_spec.code, units, currency)]
        entry = build_entry(
            id=derive_id("test-accrual", cause),
            cause_id=cause,
            kind="rating.accrual",
            occurred_at=JAN[0],
            postings=postings,
        )
        if entry is not None:
            self.accruals.append(entry)

    async def publish(self, stack: Stack) -> None:
        """Post the accruals, then send every event to its partition, in order; then start afresh."""
        async with stack.pool.acquire() as conn, conn.transaction():
            await ensure_accounts(conn, self.specs)
            await post(conn, self.accruals)
        await publish_to_partitions(stack, self.items)
        self.items, self.accruals, self.specs = [], [], []


async def publish_to_partitions(stack: Stack, items: Iterable[tuple[str, str | None, bytes, int]]) -> None:
    """Send each record to an explicit partition (watermarks address every partition)."""
    producer = await start_producer(stack.bootstrap_servers, client_id="test-invoicing")
    try:
        futures = []
        for topic, key, value, partition in items:
            futures.append(
                await producer.send(
                    stack.settings.topic_prefix + topic,
                    value=value,
                    key=key.encode() if key else None,
                    partition=partition,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await stop_client(producer)


# --- reading results ---------------------------------------------------------------------------------------


async def count(stack: Stack, sql: str, *args: Any) -> int:
    return int(await stack.pool.fetchval(sql, *args))


async def wait_for_count(stack: Stack, sql: str, n: int, what: str, timeout_s: float = 30) -> None:
    async def enough() -> bool:
        return await count(stack, sql) >= n

    await wait_until(enough, timeout_s=timeout_s, what=what)


async def wait_invoices(stack: Stack, n: int, timeout_s: float = 30) -> None:
    await wait_for_count(stack, "select count(*) from invoicing.invoices", n, f"{n} invoices", timeout_s)


async def wait_statements(stack: Stack, n: int, timeout_s: float = 30) -> None:
    await wait_for_count(stack, "select count(*) from invoicing.statements", n, f"{n} statements", timeout_s)


@dataclass
class CloserRounds:
    """Counts finished :meth:`Closer.step` rounds of every closer in this process (``running`` runs the
    worker's closer in-process), so a test can wait for "the closer has looked" instead of sleeping."""

    finished: int = 0

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> CloserRounds:
        rounds = cls()
        real_step = Closer.step

        async def step(self: Closer) -> bool:
            try:
                return await real_step(self)
            finally:
                rounds.finished += 1

        monkeypatch.setattr(Closer, "step", step)
        return rounds

    async def wait_for_a_fresh_round(self, what: str, timeout_s: float = 30) -> None:
        """Until a round that STARTED after this call has finished: the one in flight now may have
        read the state before the caller's change, the next one cannot have."""
        seen = self.finished

        async def fresh() -> bool:
            return self.finished >= seen + 2

        await wait_until(fresh, timeout_s=timeout_s, what=what)


async def invoices_of(stack: Stack, contract_id: str) -> list[dict[str, Any]]:
    rows = await stack.pool.fetch(
        "select document from invoicing.invoices where contract_id = $1 order by period_start", contract_id
    )
    return [dict(r["document"]) for r in rows]


async def statement_of(stack: Stack, supplier_id: str, month: str) -> dict[str, Any]:
    row = await stack.pool.fetchrow(
        "select document from invoicing.statements where supplier_id = $1 and month = $2", supplier_id, month
    )
    assert row is not None, f"no statement for {supplier_id} {month}"
    return dict(row["document"])


def marks_of(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in published if e["type"] == "invoices.watermark"]


async def outbox_events(stack: Stack, topic: topics.Topic) -> list[dict[str, Any]]:
    """The CloudEvents written to the outbox for a topic; checks each row's partition against its key."""
    events = []
    for row in await stack.pool.fetch(
        "select partition, key, value from settle.outbox where topic = $1 order by id", topic.name
    ):
        event = orjson.loads(bytes(row["value"]))
        if event["type"] not in ("statements.closed", "invoices.watermark"):  # markers address each partition
            assert row["partition"] == partition_for(bytes(row["key"]), topic.partitions)
        assert event["subject"] == bytes(row["key"]).decode()
        events.append(event)
    return events


async def balance_units(stack: Stack, code: str) -> int:
    """Debit-positive balance of an account (0 when it does not exist)."""
    value = await stack.pool.fetchval("select balance from ledger.accounts where code = $1", code)
    return 0 if value is None else int(value)


async def assert_ledger_sound(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report
    assert all(total == 0 for total in report.trial_balance.values())


def usd(units_minor: int) -> int:
    """Minor units of USD → ledger units (USD/8)."""
    return units_minor * 10**6


# --- tests -------------------------------------------------------------------------------------------------


async def test_watermark_closes_every_period_with_documents_events_and_a_sound_ledger(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CloserRounds.install(monkeypatch)
    story = Story()
    story.contract("ctr-a", renter="rnt-a", tax="0.1")
    story.contract("ctr-zero", renter="rnt-z")  # no usage at all: still an invoice (R1)
    hour = datetime(2026, 1, 5, 10, tzinfo=UTC)
    for n in range(10):  # 10 hours x 8 GPUs at 2.00/h = 160.00
        story.charge("ctr-a", "alloc-1", "sup-1", hour + timedelta(hours=n), billable=8 * 3600)
    story.charge("ctr-a", "alloc-2", "sup-2", hour, billable=1234)  # 1234 x 2 / 3600 = 0.68555..
    story.watermark(JAN[1] - timedelta(hours=1))  # the period has not ended yet: nothing closes
    await story.publish(stack)

    async with running(stack, [INVOICING], relays=0):
        await wait_for_count(stack, "select count(*) from invoicing.watermarks", 6, "first watermarks")
        await rounds.wait_for_a_fresh_round("a close round after the first watermarks")
        assert await count(stack, "select count(*) from invoicing.invoices") == 0

        story.watermark(JAN[1])
        await story.publish(stack)
        await wait_invoices(stack, 2)

        # A contract that arrives after the watermark passed its periods is closed then (R1).
        story.contract("ctr-late", renter="rnt-l", starts_at=datetime(2025, 12, 20, tzinfo=UTC), anchor=15)
        await story.publish(stack)
        await wait_invoices(stack, 3)
        await wait_statements(stack, 2)

    usage = Fraction(10 * 8 * 3600 * 2 + 1234 * 2, 3600)
    usage_line = half_even(usage, 2)
    tax = half_even(Fraction(usage_line) * Fraction("0.1"), 2)
    [inv_a] = await invoices_of(stack, "ctr-a")
    assert inv_a["lines"] == {
        "usage": str(usage_line),
        "commitment_true_up": "0.00",
        "adjustments": "0.00",
        "sla_credit": "0.00",
    }
    assert (inv_a["subtotal"], inv_a["tax"], inv_a["total"]) == (
        str(usage_line),
        str(tax),
        str(usage_line + tax),
    )
    assert inv_a["amount_due"] == str(usage_line + tax)
    assert (inv_a["period_start"], inv_a["period_end"]) == ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert inv_a["issued_at"] == "2026-02-01T00:00:00Z"  # the first watermark that reached the period's end
    assert inv_a["due_at"] == "2026-03-03T00:00:00Z"  # + 30 days of payment terms

    [inv_zero] = await invoices_of(stack, "ctr-zero")
    assert (inv_zero["subtotal"], inv_zero["total"], inv_zero["amount_due"]) == ("0.00", "0.00", "0.00")

    [inv_late] = await invoices_of(stack, "ctr-late")
    assert (inv_late["period_start"], inv_late["period_end"]) == (
        "2025-12-15T00:00:00Z",
        "2026-01-15T00:00:00Z",
    )
    assert inv_late["issued_at"] == "2026-02-01T00:00:00Z"  # closed when it arrived: at the watermark then

    numbers = sorted([inv_a["number"], inv_zero["number"], inv_late["number"]])
    assert numbers == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]

    # Statements for January: earnings per allocation, rounded once (R12).
    s1 = await statement_of(stack, "sup-1", "2026-01")
    assert s1["earnings"] == {"alloc-1": shown(Fraction(10 * 8 * 3600 * 3, 3600 * 2), "USD")}
    s2 = await statement_of(stack, "sup-2", "2026-01")
    assert s2["earnings"] == {"alloc-2": shown(Fraction(1234 * 3, 3600 * 2), "USD")}
    assert sorted([s1["number"], s2["number"]]) == ["STM-2026-000001", "STM-2026-000002"]
    assert s1["issued_at"] == "2026-02-01T00:00:00Z"

    # Events: one outbox row per document, written with it (the relay publishes rows; kernel-tested),
    # keyed as the registry says, event time = the finalization instant.
    published = await outbox_events(stack, topics.INVOICES_FINALIZED)
    invoices = [e for e in published if e["type"] == "invoice.finalized"]
    assert sorted(e["data"]["number"] for e in invoices) == numbers
    # invoicing's mark on every partition once every invoice of a period ending by then is out (the late
    # contract, published after the watermark, is late data: its invoice comes after the mark)
    mark_events = marks_of(published)
    marks = {(e["data"]["through"], e["data"]["partition"]): i for i, e in enumerate(published) if e in mark_events}
    partitions = range(topics.INVOICES_FINALIZED.partitions)
    assert set(marks) == {(t, p) for t in ("2026-01-31T23:00:00Z", "2026-02-01T00:00:00Z") for p in partitions}
    on_time = [i for i, e in enumerate(published) if e.get("subject") in ("ctr-a", "ctr-zero")]
    assert len(on_time) == 2 and max(on_time) < min(marks[("2026-02-01T00:00:00Z", p)] for p in partitions)
    assert {e["time"] for e in invoices if e["data"]["contract_id"] == "ctr-a"} == {"2026-02-01T00:00:00Z"}
    published = await outbox_events(stack, topics.STATEMENTS_FINALIZED)
    statements = [e for e in published if e["type"] == "statement.finalized"]
    assert sorted(e["subject"] for e in statements) == ["sup-1", "sup-2"]
    # Then the month's end marker on every partition: whoever has it from each has every statement.
    closed = [e for e in published if e["type"] == "statements.closed"]
    assert sorted((e["data"]["month"], e["data"]["partition"]) for e in closed) == [
        ("2026-01", p) for p in range(topics.STATEMENTS_FINALIZED.partitions)
    ]
    assert {e["data"]["issued_at"] for e in closed} == {"2026-02-01T00:00:00Z"}
    assert published.index(closed[0]) > max(published.index(e) for e in statements)

    # Ledger: the accruals moved out of unbilled into receivable/revenue/tax; payables stated.
    assert await balance_units(stack, chart.unbilled_receivable("rnt-a", "USD").code) == 0
    assert await balance_units(stack, chart.unbilled_revenue("USD").code) == 0
    assert await balance_units(stack, chart.receivable("rnt-a", "USD").code) == usd(int((usage_line + tax) * 100))
    assert await balance_units(stack, chart.tax_payable("USD").code) == -usd(int(tax * 100))
    assert await balance_units(stack, chart.payable_accrued("sup-1", "USD").code) == 0
    assert await balance_units(stack, chart.payable_accrued("sup-2", "USD").code) == 0
    # Rounding (R6): invoiced − accrued on the renter side (credit = gained), shown − accrued earnings
    # on the supplier side; accruals are per charge at 10^-8 USD, half to even (Python's round()).
    accrued_charges = 10 * round(Fraction(8 * 3600 * 2, 3600) * 10**8) + round(Fraction(1234 * 2, 3600) * 10**8)
    accrued_earnings = 10 * round(Fraction(8 * 3600 * 3, 7200) * 10**8) + round(Fraction(1234 * 3, 7200) * 10**8)
    shown_earnings = Fraction(Decimal(s1["earnings"]["alloc-1"])) + Fraction(Decimal(s2["earnings"]["alloc-2"]))
    expected_rounding = -(int(usage_line * 10**8) - accrued_charges) + (int(shown_earnings * 10**8) - accrued_earnings)
    assert await balance_units(stack, chart.rounding("USD").code) == expected_rounding
    assert expected_rounding == -(444_444 + 416_667)  # 160.69 for 160.6855556; 0.51 for 0.5141667
    await assert_ledger_sound(stack)


async def test_a_close_that_dies_before_commit_leaves_nothing_and_the_next_run_closes_everything_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash safety: the chunk's documents, numbers, charges, ledger entries and outbox rows commit
    together or not at all; the numbers of a rolled-back close are given back (no gap)."""
    from services.invoicing import closer as closer_module

    story = Story()
    for n in range(12):
        story.contract(f"ctr-{n:02d}", renter=f"rnt-{n:02d}")
        story.charge(f"ctr-{n:02d}", f"alloc-{n}", "sup-1", datetime(2026, 1, 2, tzinfo=UTC), billable=3600)
    story.watermark(JAN[1])
    await story.publish(stack)
    real_finalize = closer_module.finalize_plans
    attempts = 0

    async def finalize_then_die(conn: asyncpg.Connection, plans: Any) -> int:
        nonlocal attempts
        written = await real_finalize(conn, plans)  # everything is written ...
        attempts += 1
        raise DatabaseUnavailableError("connection lost before commit (simulated)")  # ... and never committed
        return written  # pragma: no cover

    monkeypatch.setattr(closer_module, "finalize_plans", finalize_then_die)
    async with running(stack, [INVOICING], relays=0):

        async def died_twice() -> bool:
            return attempts >= 2

        await wait_until(died_twice, what="two failed closes")
    for table in (
        "invoicing.invoices",
        "invoicing.number_series",
        "invoicing.periods",
        "invoicing.chargebacks",
        "settle.outbox",
        "ledger.entries where kind <> 'rating.accrual'",
    ):
        assert await count(stack, f"select count(*) from {table}") == 0, table
    assert await count(stack, "select count(*) from invoicing.charges where document_id is not null") == 0

    monkeypatch.setattr(closer_module, "finalize_plans", real_finalize)
    rounds = CloserRounds.install(monkeypatch)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 12)
        await wait_statements(stack, 1)
    # Run again with a repeated watermark (new ids, same instant): nothing left to do.
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_for_count(
            stack,
            "select count(*) from settle.inbox where consumer = 'invoicing'",
            12 * 2 + 12,
            "second watermarks consumed",
        )
        await rounds.wait_for_a_fresh_round("a close round after the repeated watermarks")
    numbers = [r["number"] for r in await stack.pool.fetch("select number from invoicing.invoices order by number")]
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 13)]
    assert await count(stack, "select count(*) from invoicing.statements") == 1
    assert await count(stack, "select count(*) from ledger.entries where kind = 'invoice.finalized'") == 12
    assert (
        await count(
            stack,
            "select count(*) from settle.outbox where topic = 'invoices.finalized.v1'"
            " and convert_from(key, 'UTF8') not like 'watermark-%'",
        )
        == 12
    )
    await assert_ledger_sound(stack)


async def test_racing_closers_number_the_same_periods_without_gap_or_duplicate(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker (consumer + closer) and two more closers of other workers race over 60 contracts x 2
    periods in chunks of 3: every period gets exactly one invoice and the series has no gap.

    The extra closers run in-process (the same class a worker's background task runs): a second
    member joining the "invoicing" consumer group is refused by the mock broker (SyncGroup
    INVALID_REQUEST, LOCAL_STACK.md), and the race under test is the closers', not the consumers'.
    """
    from libs import limits

    monkeypatch.setattr(limits, "CLOSE_CHUNK_CONTRACTS", 3)  # the worker's own closer too: many small chunks
    story = Story()
    contracts = [f"ctr-{n:03d}" for n in range(60)]
    for n, contract_id in enumerate(contracts):
        story.contract(contract_id, renter=f"rnt-{n % 7}")
        story.charge(contract_id, f"alloc-{n}", f"sup-{n % 3}", datetime(2026, 1, 9, tzinfo=UTC), billable=3600 + n)
    story.watermark(JAN[1])
    story.watermark(FEB[1])  # two periods per contract
    done = asyncio.Event()

    async def drive(closer: Closer) -> int:
        chunks = 0
        while not done.is_set():
            try:
                worked = await closer.close_invoices()
            except RetryableError:
                worked = True
            chunks += worked
            if not worked:
                await asyncio.sleep(0.01)
        return chunks

    async with running(stack, [INVOICING], relays=0):
        racers = [asyncio.create_task(drive(Closer(stack.pool, chunk=3))) for _ in range(2)]
        try:
            await story.publish(stack)
            await wait_invoices(stack, 120, timeout_s=60)
        finally:
            done.set()
            chunks = await asyncio.gather(*racers)
        await wait_statements(stack, 3)
    assert all(n > 0 for n in chunks), f"every racing closer closed something: {chunks}"
    rows = await stack.pool.fetch("select number, contract_id, period_start from invoicing.invoices")
    numbers = sorted(int(r["number"].rsplit("-", 1)[1]) for r in rows)
    assert numbers == list(range(1, 121)), "gapless, no duplicates"
    assert {(r["contract_id"], r["period_start"]) for r in rows} == {
        (c, p) for c in contracts for p in (JAN[0], FEB[0])
    }
    # Each contract's invoices are numbered in period order (one contract is closed by one worker).
    by_contract: dict[str, list[tuple[datetime, str]]] = {}
    for r in rows:
        by_contract.setdefault(r["contract_id"], []).append((r["period_start"], r["number"]))
    assert all(sorted(v) == sorted(v, key=lambda x: x[1]) for v in by_contract.values())
    await assert_ledger_sound(stack)


async def test_finalized_documents_refuse_update_and_delete(stack: Stack) -> None:
    story = Story()
    story.contract("ctr-1")
    story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 3, tzinfo=UTC), billable=7200)
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        await wait_statements(stack, 1)
    statements_sql = (
        ("update invoicing.invoices set total_minor = 0", "invoices"),
        ("update invoicing.invoices set document = '{}'::jsonb", "invoices"),
        ("delete from invoicing.invoices", "invoices"),
        ("truncate invoicing.invoices cascade", "invoices"),
        ("update invoicing.statements set net_minor = 0", "statements"),
        ("delete from invoicing.statements", "statements"),
    )
    for sql, table in statements_sql:
        with pytest.raises(asyncpg.PostgresError, match=f"immutable.*{table}"):
            await stack.pool.execute(sql)
    [doc] = await invoices_of(stack, "ctr-1")
    assert doc["total"] == "4.00"


async def test_late_charge_after_the_last_invoice_is_a_credit_note(stack: Stack) -> None:
    story = Story()
    story.contract("ctr-1", tax="0.2", ends_at=datetime(2026, 1, 20, tzinfo=UTC))
    story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 3, tzinfo=UTC), billable=36_000)  # 20.00
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        # A correction for January arrives after the term's last invoice: no later invoice exists.
        story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 3, tzinfo=UTC), billable=-1801, revision=2)
        story.watermark(datetime(2026, 2, 2, tzinfo=UTC))
        await story.publish(stack)
        await wait_for_count(stack, "select count(*) from invoicing.credit_notes", 1, "a credit note")
    [note] = [dict(r["document"]) for r in await stack.pool.fetch("select document from invoicing.credit_notes")]
    delta = Fraction(-1801 * 2, 3600)
    line = half_even(delta, 2)
    tax = half_even(Fraction(line) * Fraction("0.2"), 2)  # a credit note gives tax back (signed)
    assert note["number"] == "CN-2026-000001"
    assert note["invoice_number"] == "INV-2026-000001"
    assert note["adjustment_lines"] == [
        {
            "period_start": "2026-01-01T00:00:00Z",
            "period_end": "2026-02-01T00:00:00Z",
            "kind": "usage",
            "amount": str(line),
        }
    ]
    assert (note["subtotal"], note["tax"], note["total"]) == (str(line), str(tax), str(line + tax))
    assert note["issued_at"] == "2026-02-01T00:00:00Z"  # the watermark the late charge found
    assert await count(stack, "select count(*) from invoicing.invoices") == 1
    assert await balance_units(stack, chart.unbilled_receivable("rnt-1", "USD").code) == 0
    await assert_ledger_sound(stack)


@pytest.mark.filterwarnings("ignore:HarfBuzz-Subset:DeprecationWarning")  # weasyprint on this host
async def test_list_show_and_pdf_commands(stack: Stack, tmp_path: Any) -> None:
    from services.cli import documents

    story = Story()
    story.contract("ctr-usd", renter="rnt-1", tax="0.1")
    story.contract("ctr-jpy", renter="rnt-2", currency="JPY", price="250", rate="200")
    story.charge("ctr-usd", "alloc-1", "sup-1", datetime(2026, 1, 3, tzinfo=UTC), billable=276_120)  # 153.40
    story.charge("ctr-jpy", "alloc-2", "sup-1", datetime(2026, 1, 3, tzinfo=UTC), billable=21_600)  # 1500
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 2)
        await wait_statements(stack, 2)

    async with stack.pool.acquire() as conn:
        lines = documents.to_json_lines(await documents.list_invoices(conn))
        jpy_only = documents.to_json_lines(await documents.list_invoices(conn, contract="ctr-jpy"))
        none = await documents.list_invoices(conn, month="2026-02")
        statement_lines = documents.to_json_lines(
            await documents.list_statements(conn, supplier="sup-1", month="2026-01")
        )
    assert none == []
    parsed = [json.loads(line) for line in lines]
    by_contract = {p["contract_id"]: p for p in parsed}
    usd_doc, jpy_doc = by_contract["ctr-usd"], by_contract["ctr-jpy"]
    assert usd_doc["lines"] == {
        "usage": "153.40",
        "commitment_true_up": "0.00",
        "adjustments": "0.00",
        "sla_credit": "0.00",
    }
    assert (usd_doc["subtotal"], usd_doc["tax"], usd_doc["total"]) == ("153.40", "15.34", "168.74")
    assert (usd_doc["prepaid_applied"], usd_doc["amount_due"]) == ("0.00", "168.74")
    assert (jpy_doc["lines"]["usage"], jpy_doc["total"], jpy_doc["amount_due"]) == ("1500", "1500", "1500")
    for doc in parsed:
        assert {
            "number",
            "contract_id",
            "renter_id",
            "currency",
            "period_start",
            "period_end",
            "lines",
            "subtotal",
            "tax",
            "total",
            "prepaid_applied",
            "amount_due",
        } <= set(doc)
        assert doc["period_start"] == "2026-01-01T00:00:00Z"
    assert [json.loads(line)["contract_id"] for line in jpy_only] == ["ctr-jpy"]
    statements = [json.loads(line) for line in statement_lines]
    assert {(s["currency"], s["month"], s["earnings_total"], s["net"]) for s in statements} == {
        ("USD", "2026-01", "115.05", "115.05"),
        ("JPY", "2026-01", "1200", "1200"),
    }
    for s in statements:
        assert {
            "supplier_id",
            "currency",
            "month",
            "earnings",
            "earnings_total",
            "sla_chargebacks",
            "carried",
            "net",
        } <= set(s)

    async with stack.pool.acquire() as conn:
        shown_doc = await documents.show_document(conn, usd_doc["number"])
        pdf_path = await documents.write_pdf(conn, usd_doc["number"], tmp_path / "inv.pdf")
        exported = await documents.export_documents(conn, tmp_path / "docs")
    assert json.loads(shown_doc)["number"] == usd_doc["number"]
    assert pdf_path.read_bytes().startswith(b"%PDF-")
    assert sorted(p.name for p in exported) == sorted(
        f"{n}.{ext}"
        for n in [d["number"] for d in parsed] + [s["number"] for s in statements]
        for ext in ("json", "pdf")
    )


async def test_a_quarantined_close_does_not_hold_back_the_invoices_mark(stack: Stack) -> None:
    """``invoices.watermark`` vouches that every invoice of a period ending by the mark is out — except the
    contracts whose close is quarantined: they wait for an operator, and payments (which answers a tick
    only behind this mark) must not stop collecting and planning for everyone meanwhile. Once the operator
    retries, the invoice comes, after the mark."""
    from services.operations import quarantine

    story = Story()
    story.contract("ctr-ok", renter="rnt-ok")
    story.contract("ctr-stuck", renter="rnt-stuck")
    hour = datetime(2026, 1, 5, 10, tzinfo=UTC)
    story.charge("ctr-ok", "alloc-ok", "sup-1", hour, billable=3600)
    story.charge("ctr-stuck", "alloc-stuck", "sup-1", hour, billable=3600)
    story.watermark(JAN[1] - timedelta(hours=1))
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_for_count(stack, "select count(*) from invoicing.contract_state", 2, "both contracts")
        await wait_for_count(stack, "select count(*) from invoicing.watermarks", 6, "first watermarks")
        async with stack.pool.acquire() as conn:  # what a failed close does (Closer._close_alone)
            await conn.execute(
                "update invoicing.contract_state set blocked_reason = 'test: R10 tax rate missing' "
                "where contract_id = 'ctr-stuck'"
            )
        story.watermark(JAN[1])
        await story.publish(stack)
        await wait_invoices(stack, 1)

        async def marked() -> bool:
            through = {e["data"]["through"] for e in marks_of(await outbox_events(stack, topics.INVOICES_FINALIZED))}
            return "2026-02-01T00:00:00Z" in through

        await wait_until(marked, what="the mark through Feb 1 despite the quarantined close")
        assert [i["contract_id"] for i in await invoices_of(stack, "ctr-stuck")] == []
        async with stack.pool.acquire() as conn, conn.transaction():
            await quarantine.retry(conn, "ctr-stuck", reason="tax rate published", actor="ops")
        await wait_invoices(stack, 2)
    published = await outbox_events(stack, topics.INVOICES_FINALIZED)
    feb = {
        i for i, e in enumerate(published) if e in marks_of(published) and e["data"]["through"].startswith("2026-02-01")
    }
    assert len(feb) == topics.INVOICES_FINALIZED.partitions, "one mark per partition, once"
    (stuck,) = [i for i, e in enumerate(published) if e.get("subject") == "ctr-stuck"]
    (ok,) = [i for i, e in enumerate(published) if e.get("subject") == "ctr-ok"]
    assert ok < min(feb) < max(feb) < stuck, "the on-time invoice before the mark, the quarantined one after"
