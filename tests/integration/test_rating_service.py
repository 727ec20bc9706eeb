"""The rating service through Kafka and PostgreSQL: usage → charge.rated + ledger, corrections, watermarks,
top-ups, invoices and credit exposure, and one wallet hammered by concurrent transactions.

Expected amounts are computed here from the rules (R4: gpu_seconds × price / 3600, exact; the ledger
accrues each allocation-hour's exact amount rounded once to ledger units), never read from the service.

The builders at the top are shared with ``tests/scenarios/test_rating_stories.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
import pytest

from domain.contracts.store import contract_partition
from libs.ids import derive_id
from libs.ledger import balances, verify
from libs.messaging.broker import start_producer, stop_client
from libs.messaging.consume import Tx
from libs.money import ledger_scale, round_half_even
from schemas import topics
from schemas.envelope import Envelope, decode_data, decode_raw
from schemas.events import InvoiceFinalized, InvoiceLines, Segment, UsageMetered, Watermark
from services.rating.handlers import on_batch
from services.rating.main import SERVICE
from tests.conftest import Stack
from tests.fleet import event_bytes, members_share, publish, read_topic, running, wait_until

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
GPU = "gpu_seconds"
Item = tuple[topics.Topic, str, bytes]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ====================================================================================================
# Builders of input events (CloudEvents bytes, keyed by contract_id like the platform and metering)
# ====================================================================================================


def contract_created(
    contract_id: str,
    *,
    renter_id: str = "renter-1",
    currency: str = "USD",
    billing_mode: str = "postpaid",
    price: str = "2.00",
    rate: str = "1.40",
    starts_at: datetime,
    ends_at: datetime | None = None,
    credit_limit: str | None = None,
    anchor_day: int = 1,
    meter_prices: dict[str, str] | None = None,
) -> Item:
    data: dict[str, Any] = {
        "contract_id": contract_id,
        "renter_id": renter_id,
        "currency": currency,
        "billing_mode": billing_mode,
        "price_per_gpu_hour": price,
        "supplier_rate_per_gpu_hour": rate,
        "commitment_per_period": "0",
        "credit_limit": credit_limit,
        "sla_tiers": [],
        "tax_rate": "0.20",
        "starts_at": starts_at.isoformat().replace("+00:00", "Z"),
        "ends_at": None if ends_at is None else ends_at.isoformat().replace("+00:00", "Z"),
        "billing_anchor_day": anchor_day,
        "meter_prices": meter_prices or {},
    }
    value = event_bytes("contract.created", data, id=f"created-{contract_id}", time=starts_at)
    return topics.CONTRACTS, contract_id, value


def contract_amended(
    contract_id: str, effective_at: datetime, *, event_id: str, sent_at: datetime | None = None, **fields: str
) -> Item:
    data = {
        "contract_id": contract_id,
        "effective_at": effective_at.isoformat().replace("+00:00", "Z"),
        **fields,
    }
    value = event_bytes("contract.amended", data, id=event_id, time=sent_at or effective_at)
    return topics.CONTRACTS, contract_id, value


def contract_terminated(contract_id: str, effective_at: datetime, *, event_id: str) -> Item:
    data = {"contract_id": contract_id, "effective_at": effective_at.isoformat().replace("+00:00", "Z")}
    return (
        topics.CONTRACTS,
        contract_id,
        event_bytes("contract.terminated", data, id=event_id, time=effective_at),
    )


def topped_up(contract_id: str, amount: str, made_at: datetime, *, currency: str = "USD", event_id: str) -> Item:
    data = {
        "contract_id": contract_id,
        "amount": amount,
        "currency": currency,
        "payment_ref": f"pay-{event_id}",
    }
    return topics.WALLETS, contract_id, event_bytes("wallet.topped_up", data, id=event_id, time=made_at)


@dataclass(frozen=True)
class Hour:
    """What metering says about one allocation-hour at one revision (full state)."""

    contract_id: str
    allocation_id: str
    hour_start: datetime
    gpu_count: int
    segments: tuple[tuple[int, int], ...] = ((0, 3600),)
    """Billable seconds as (from, to) offsets inside the hour."""
    revision: int = 1
    renter_id: str = "renter-1"
    supplier_id: str = "supplier-1"
    meter: str = GPU
    quantity: str = "0"

    @property
    def billable_gpu_seconds(self) -> int:
        return self.gpu_count * sum(b - a for a, b in self.segments) if self.meter == GPU else 0

    @property
    def usage_id(self) -> str:
        return derive_id("usage", self.allocation_id, self.meter, self.hour_start.isoformat(), self.revision)


def usage(hour: Hour, previous: Hour | None = None) -> Item:
    """A ``usage.metered`` record; its deltas are against ``previous`` (the prior revision)."""
    billable = hour.billable_gpu_seconds
    before = 0 if previous is None else previous.billable_gpu_seconds
    quantity = Decimal(hour.quantity)
    delta_quantity = quantity - (Decimal(0) if previous is None else Decimal(previous.quantity))
    record = UsageMetered(
        usage_id=hour.usage_id,
        allocation_id=hour.allocation_id,
        contract_id=hour.contract_id,
        renter_id=hour.renter_id,
        supplier_id=hour.supplier_id,
        gpu_model="H100",
        meter=hour.meter,
        hour_start=hour.hour_start,
        revision=hour.revision,
        gpu_count=hour.gpu_count if hour.meter == GPU else 0,
        provisioned_gpu_seconds=billable,
        billable_gpu_seconds=billable,
        maintenance_gpu_seconds=0,
        outage_gpu_seconds=0,
        billable_segments=[
            Segment(start_at=hour.hour_start + a * SECOND, end_at=hour.hour_start + b * SECOND)
            for a, b in (hour.segments if hour.meter == GPU else ())
        ],
        delta_provisioned_gpu_seconds=billable - before,
        delta_billable_gpu_seconds=billable - before,
        delta_maintenance_gpu_seconds=0,
        delta_outage_gpu_seconds=0,
        quantity=quantity,
        delta_quantity=delta_quantity,
    )
    value = event_bytes("usage.metered", record, id=f"usage-ev-{hour.usage_id}", time=hour.hour_start + HOUR)
    return topics.USAGE_METERED, hour.contract_id, value


def invoice_finalized(
    contract_id: str,
    period_start: datetime,
    period_end: datetime,
    amount_due: str,
    *,
    renter_id: str = "renter-1",
    number: int = 1,
) -> Item:
    invoice = InvoiceFinalized(
        invoice_id=f"inv-{contract_id}-{number}",
        number=f"INV-{period_end.year}-{number:06d}",
        contract_id=contract_id,
        renter_id=renter_id,
        currency="USD",
        billing_mode="postpaid",
        period_start=period_start,
        period_end=period_end,
        issued_at=period_end,
        due_at=period_end + 30 * 24 * HOUR,
        lines=InvoiceLines(usage=amount_due, commitment_true_up="0.00", adjustments="0.00", sla_credit="0.00"),
        adjustment_lines=[],
        subtotal=amount_due,
        tax_rate="0",
        tax="0.00",
        total=amount_due,
        prepaid_applied="0.00",
        credit_applied="0.00",
        amount_due=amount_due,
        credit_carried_forward="0.00",
        uptime=None,
        sla_credit_percent="0",
    )
    value = event_bytes("invoice.finalized", invoice, id=f"ev-{invoice.invoice_id}", time=period_end)
    return topics.INVOICES_FINALIZED, contract_id, value


def watermark_bytes(through: datetime, partition: int, barrier: dict[str, list[int]] | None = None) -> bytes:
    mark = Watermark(through=through, partition=partition, source="metering", barrier=barrier)
    return event_bytes("usage.watermark", mark, id=f"wm-{partition}-{through.isoformat()}", time=through)


async def publish_watermark(
    stack: Stack, through: datetime, partitions: Iterable[int] | None = None, *, with_barrier: bool = False
) -> None:
    """``usage.watermark(through, p)`` to partition p of usage.metered.v1 (every partition by default).

    ``tests.fleet.publish`` picks the partition from the key; a watermark addresses its partition.
    ``with_barrier``: the watermark carries the input topics' end offsets now, as metering's do when
    the tick had a barrier (rating then reads contracts and wallets up to them first)."""
    from services.clock.main import input_barrier

    parts = range(topics.USAGE_METERED.partitions) if partitions is None else partitions
    barrier = await input_barrier(stack.bootstrap_servers, stack.settings.topic_prefix) if with_barrier else None
    producer = await start_producer(stack.bootstrap_servers, client_id="test-watermarks")
    try:
        name = stack.settings.topic_prefix + topics.USAGE_METERED.name
        for p in parts:
            value = watermark_bytes(through, p, barrier)
            await (await producer.send(name, value=value, key=b"watermark", partition=p))
    finally:
        await stop_client(producer)


# ====================================================================================================
# Reading results
# ====================================================================================================


@dataclass(frozen=True)
class Out:
    """One event rating published (decoded CloudEvent) and where it landed."""

    type: str
    id: str
    time: str
    data: dict[str, Any]
    partition: int
    offset: int


async def outputs(stack: Stack, topic: topics.Topic) -> list[Out]:
    records = await read_topic(stack, topic)
    found = []
    for r in records:
        doc = orjson.loads(r.value)
        found.append(Out(doc["type"], doc["id"], doc["time"], doc["data"], r.partition, r.offset))
    return sorted(found, key=lambda o: (o.partition, o.offset))


async def sent_count(stack: Stack, topic: topics.Topic, type_: str | None = None) -> int:
    """Outbox rows of a topic the relay has published (optionally of one event type)."""
    rows = await stack.pool.fetch(
        "select value from settle.outbox where topic = $1 and sent_at is not null", topic.name
    )
    return sum(1 for r in rows if type_ is None or orjson.loads(bytes(r["value"]))["type"] == type_)


async def wait_sent(
    stack: Stack, topic: topics.Topic, n: int, type_: str | None = None, *, timeout_s: float = 30
) -> None:
    async def check() -> bool:
        return await sent_count(stack, topic, type_) >= n

    await wait_until(check, timeout_s=timeout_s, what=f"{n} {type_ or 'events'} on {topic.name}")


async def forwarded_through(stack: Stack, through: datetime) -> bool:
    """charges.watermark(through, p) is published for every partition p."""
    rows = await stack.pool.fetch(
        "select partition, value from settle.outbox where topic = $1 and sent_at is not null",
        topics.CHARGES_RATED.name,
    )
    stamp = through.isoformat().replace("+00:00", "Z")
    marks = [(r["partition"], orjson.loads(bytes(r["value"]))) for r in rows]
    done = {p for p, doc in marks if doc["type"] == "charges.watermark" and doc["data"]["through"] == stamp}
    return done == set(range(topics.CHARGES_RATED.partitions))


async def handled(stack: Stack, n: int) -> bool:
    """rating has consumed at least n distinct events (its inbox)."""
    return int(await stack.pool.fetchval("select count(*) from settle.inbox where consumer = 'rating'")) >= n


async def account_units(stack: Stack) -> dict[str, int]:
    """Every ledger account's balance on its normal side, in ledger units."""
    async with stack.pool.acquire() as conn:
        return {b.code: b.normal_units for b in await balances(conn)}


async def assert_ledger_ok(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report
    assert not await stack.pool.fetchval("select count(*) from settle.dead_letters"), "nothing is dead-lettered"


def exact_x3600(value: str) -> Fraction:
    return Fraction(Decimal(value)) / 3600


def ledger_units(amount: Fraction, currency: str) -> int:
    """An exact amount at the ledger's scale, half to even (the accrual rounding point)."""
    return round_half_even(amount * 10 ** ledger_scale(currency))


def per_second_charge(
    gpu_count: int, segments: Sequence[tuple[datetime, datetime]], schedule: Sequence[tuple[datetime, str]]
) -> Fraction:
    """R4 second by second: Σ gpu_count × (the price whose effective_at is latest and not after the
    second) / 3600.

    ``schedule``: (effective_at, price) in any order; the earliest entry must cover the first second."""
    ordered = sorted(schedule)
    total = Fraction(0)
    for start, end in segments:
        second = start
        while second < end:
            price = [p for eff, p in ordered if eff <= second][-1]
            total += Fraction(gpu_count) * Fraction(Decimal(price)) / 3600
            second += SECOND
    return total


# ====================================================================================================
# Tests
# ====================================================================================================

T0 = at("2026-12-01T00:00:00")


async def test_usage_is_rated_exactly_with_corrections_add_ons_and_both_ledger_sides(stack: Stack) -> None:
    cid = "c-usd-1"
    h0 = Hour(cid, "alloc-a", T0 + 10 * HOUR, gpu_count=8)  # a full hour: 8 × 3600 GPU-seconds
    h1 = Hour(cid, "alloc-a", T0 + 11 * HOUR, gpu_count=8, segments=((0, 1234), (2000, 3600)))
    h1_rev2 = Hour(cid, "alloc-a", T0 + 11 * HOUR, gpu_count=8, segments=((0, 1234),), revision=2)  # correction
    h2 = Hour(cid, "alloc-b", T0 + 10 * HOUR, gpu_count=3, segments=((17, 3599),), supplier_id="supplier-2")
    egress = Hour(cid, "alloc-a", T0 + 10 * HOUR, gpu_count=0, segments=(), meter="egress_gb", quantity="12.5")
    items = [
        contract_created(cid, starts_at=T0, price="2.35", rate="1.70", meter_prices={"egress_gb": "0.08"}),
        usage(h0),
        usage(h1),
        usage(h2),
        usage(egress),
        usage(h0),  # redelivered: same id, same bytes → no second charge
        usage(h1_rev2, previous=h1),
    ]
    await publish(stack, items)
    async with running(stack, [SERVICE]):
        await wait_sent(stack, topics.CHARGES_RATED, 5, "charge.rated")
        await publish_watermark(stack, T0 + 12 * HOUR)
        await wait_sent(stack, topics.CHARGES_RATED, 6, "charges.watermark")

    out = await outputs(stack, topics.CHARGES_RATED)
    charges = [o for o in out if o.type == "charge.rated"]
    assert len(charges) == 5
    by_usage = {c.data["usage_id"]: c for c in charges}
    # R4 from the rules: gpu_seconds × price, exact; × 3600 on the wire.
    expected = {
        h0.usage_id: (8 * 3600 * Fraction("2.35"), 8 * 3600 * Fraction("1.70")),
        h1.usage_id: (8 * (1234 + 1600) * Fraction("2.35"), 8 * (1234 + 1600) * Fraction("1.70")),
        h1_rev2.usage_id: (-8 * 1600 * Fraction("2.35"), -8 * 1600 * Fraction("1.70")),  # signed delta
        h2.usage_id: (3 * 3582 * Fraction("2.35"), 3 * 3582 * Fraction("1.70")),
        egress.usage_id: (Fraction("12.5") * Fraction("0.08") * 3600, Fraction(0)),  # add-ons earn nothing
    }
    for usage_id, (charge_x3600, earning_x3600) in expected.items():
        data = by_usage[usage_id].data
        assert Fraction(Decimal(data["charge_x3600"])) == charge_x3600, usage_id
        assert Fraction(Decimal(data["earning_x3600"])) == earning_x3600, usage_id
        assert data["charge_id"] == derive_id("charge", usage_id)
        assert (data["period_start"], data["period_end"]) == ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        assert data["currency"] == "USD"
        assert data["billing_mode"] == "postpaid"
    assert by_usage[h1_rev2.usage_id].data["delta_billable_gpu_seconds"] == -8 * 1600
    assert by_usage[h0.usage_id].time == "2026-12-01T11:00:00Z"  # when the hour's usage is complete
    assert by_usage[h0.usage_id].data["price_versions"] == [1]

    # Everything of the contract is on its partition, and the forwarded watermark comes after it.
    partition = contract_partition(cid)
    assert {c.partition for c in charges} == {partition}
    marks = [o for o in out if o.type == "charges.watermark"]
    assert sorted(m.data["partition"] for m in marks) == list(range(6))
    assert all(m.data["through"] == "2026-12-01T12:00:00Z" and m.data["source"] == "rating" for m in marks)
    mark = next(m for m in marks if m.partition == partition)
    assert all(c.offset < mark.offset for c in charges)

    # Ledger: per allocation-hour, the exact final amount rounded once (the corrected hour telescopes).
    final = {  # allocation-hour → (charge, earning, supplier) exact, major units
        "h0": (
            Fraction(8 * 3600) * Fraction("2.35") / 3600,
            Fraction(8 * 3600) * Fraction("1.70") / 3600,
            "supplier-1",
        ),
        "h1": (
            Fraction(8 * 1234) * Fraction("2.35") / 3600,
            Fraction(8 * 1234) * Fraction("1.70") / 3600,
            "supplier-1",
        ),
        "h2": (
            Fraction(3 * 3582) * Fraction("2.35") / 3600,
            Fraction(3 * 3582) * Fraction("1.70") / 3600,
            "supplier-2",
        ),
        "egress": (Fraction("12.5") * Fraction("0.08"), Fraction(0), "supplier-1"),
    }
    units = await account_units(stack)
    receivable = sum(ledger_units(c, "USD") for c, _, _ in final.values())
    cost = sum(ledger_units(e, "USD") for _, e, _ in final.values())
    assert units["renter:renter-1:unbilled_receivable:USD"] == receivable
    assert units["platform:unbilled_revenue:USD"] == receivable
    assert units["platform:cost_of_revenue:USD"] == cost
    assert units["supplier:supplier-2:payable_accrued:USD"] == ledger_units(final["h2"][1], "USD")
    assert units["supplier:supplier-1:payable_accrued:USD"] == cost - ledger_units(final["h2"][1], "USD")
    await assert_ledger_ok(stack)


async def test_top_ups_before_their_contract_wait_and_invoices_move_exposure(stack: Stack) -> None:
    prepaid, postpaid = "c-pre-1", "c-post-1"
    items = [
        topped_up(prepaid, "50.00", T0 + HOUR, event_id="top-1"),  # before the contract: held
        contract_created(prepaid, billing_mode="prepaid", starts_at=T0, price="5.00", rate="3.00"),
        contract_created(postpaid, starts_at=T0, price="10.00", rate="6.00", credit_limit="1000"),
        usage(Hour(prepaid, "alloc-p", T0 + 2 * HOUR, gpu_count=2)),  # 10.00
        usage(Hour(postpaid, "alloc-q", T0 + 2 * HOUR, gpu_count=1)),  # 10.00 in December
        usage(Hour(postpaid, "alloc-q", at("2027-01-01T05:00:00"), gpu_count=1)),  # 10.00 in January
        invoice_finalized(postpaid, T0, at("2027-01-01T00:00:00"), "12.00"),  # December incl. tax
    ]
    await publish(stack, items)
    async with running(stack, [SERVICE]):
        await wait_until(lambda: handled(stack, len(items)), what="every event handled")
        await publish_watermark(stack, T0 + 3 * HOUR, [contract_partition(prepaid)])
        await wait_sent(stack, topics.CHARGES_RATED, 1, "charges.watermark")

    units = await account_units(stack)
    wallet = f"renter:renter-1:wallet:{prepaid}:USD"
    assert units["platform:cash_clearing:USD"] == 50 * 10**8  # money received, posted on arrival
    assert units[wallet] == 40 * 10**8  # 50 − the 10.00 hour drawn at the watermark
    assert units[f"renter:renter-1:prepaid_applied:{prepaid}:USD"] == 10 * 10**8
    drawn = [o for o in await outputs(stack, topics.CHARGES_RATED) if o.type == "wallet.drawn"]
    assert [(d.data["reason"], exact_x3600(d.data["drawn_x3600"])) for d in drawn] == [("charge", Fraction(10))]

    # R9: the December charge is invoiced (amount due 12.00), January's is still uninvoiced.
    row = await stack.pool.fetchrow(
        "select invoiced_due, uninvoiced_x3600 from rating.credit_exposure where contract_id = $1", postpaid
    )
    assert Fraction(row["invoiced_due"]) == 12
    assert Fraction(row["uninvoiced_x3600"]) / 3600 == 10
    await assert_ledger_ok(stack)


async def test_one_wallet_under_concurrent_transactions_never_overdraws(stack: Stack) -> None:
    """Many transactions race on one prepaid wallet (usage, top-ups, watermarks, each its own transaction,
    all at once): the wallet account never goes below zero and drawn = min(usage, top-ups)."""
    cid = "c-race"
    partition = contract_partition(cid)
    price = Fraction("7.25")

    def envelope(item: Item | bytes, topic: topics.Topic | None = None) -> Envelope[Any]:
        value = item if isinstance(item, bytes) else item[2]
        chosen = topic if topic is not None else (item[0] if not isinstance(item, bytes) else topics.USAGE_METERED)
        raw = decode_raw(value)
        model = chosen.model_for(raw.type)
        assert model is not None
        return decode_data(raw, model)

    async def transaction(events: list[Envelope[Any]]) -> None:
        async with stack.pool.acquire() as conn, conn.transaction():
            tx = Tx(conn, "rating")
            await on_batch(tx, events)
            await tx.flush()

    await transaction([envelope(contract_created(cid, billing_mode="prepaid", starts_at=T0, price="7.25"))])
    hours = [Hour(cid, f"alloc-{n % 5}", T0 + (n // 5) * HOUR, gpu_count=1 + n % 3) for n in range(60)]
    top_ups = [topped_up(cid, "20.00", T0 + n * 37 * 60 * SECOND, event_id=f"race-top-{n}") for n in range(8)]
    marks = [watermark_bytes(T0 + n * HOUR, partition) for n in range(1, 14)]
    # Round 1: usage and top-ups of one wallet, each its own transaction, all at once.
    first: list[list[Envelope[Any]]] = [[envelope(usage(h))] for h in hours[:40]] + [[envelope(t)] for t in top_ups]
    # Round 2: watermarks (each runs the wallet over everything due) racing with more usage, with
    # redeliveries of usage already rated, and with each other.
    second: list[list[Envelope[Any]]] = [[envelope(m)] for m in marks] + [[envelope(usage(h))] for h in hours[40:]]
    second += [[envelope(usage(hours[n])), envelope(marks[n % len(marks)])] for n in range(0, 60, 7)]
    # Round 0: contracts created while their first usage arrives (held, then rated; never lost in between).
    newcomers = [f"c-new-{n}" for n in range(40)]
    arriving: list[list[Envelope[Any]]] = []
    for c in newcomers:
        arriving += [
            [envelope(usage(Hour(c, f"alloc-{c}", T0, gpu_count=1)))],
            [envelope(contract_created(c, starts_at=T0))],
        ]
    results = await asyncio.gather(*(transaction(w) for w in arriving), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    for work in (first, second):
        order = sorted(range(len(work)), key=lambda i: (i * 7919) % len(work))  # a fixed shuffle
        results = await asyncio.gather(*(transaction(work[i]) for i in order), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
    await transaction([envelope(watermark_bytes(T0 + 24 * HOUR, partition))])  # everything is due now

    assert await stack.pool.fetchval("select count(*) from rating.usage_held") == 0
    rated = await stack.pool.fetchval("select count(*) from rating.charges where contract_id like 'c-new-%'")
    assert rated == len(newcomers)
    usage_total = sum((Fraction(h.billable_gpu_seconds) * price / 3600 for h in hours), Fraction(0))
    top_up_total = Fraction(8 * 20)
    assert usage_total > top_up_total  # the story: the wallet runs dry
    row = await stack.pool.fetchrow(
        "select sum(drawn_x3600) as drawn, sum(overage_x3600) as overage from rating.wallet_periods"
        " where contract_id = $1",
        cid,
    )
    assert Fraction(row["drawn"]) / 3600 == min(usage_total, top_up_total)
    assert Fraction(row["overage"]) / 3600 == usage_total - top_up_total
    units = await account_units(stack)
    assert units[f"renter:renter-1:wallet:{cid}:USD"] == 0
    assert units[f"renter:renter-1:prepaid_applied:{cid}:USD"] == ledger_units(top_up_total, "USD")
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report
    # The floor is the database's: any transaction that took the wallet below zero would have failed above.
    floor = await stack.pool.fetchval(
        "select floor from ledger.accounts where code = $1", f"renter:renter-1:wallet:{cid}:USD"
    )
    assert floor == 0
    # What the wallet said it drew (wallet.drawn in the outbox) is the same amount.
    rows = await stack.pool.fetch("select value from settle.outbox where topic = $1", topics.CHARGES_RATED.name)
    drawn_events = [orjson.loads(bytes(r["value"])) for r in rows]
    drawn_total = sum(
        (exact_x3600(d["data"]["drawn_x3600"]) for d in drawn_events if d["type"] == "wallet.drawn"),
        Fraction(0),
    )
    assert drawn_total == top_up_total


async def test_two_rating_consumers_share_the_partitions_and_wallets_still_hold(stack: Stack) -> None:
    """A consumer group of two workers: a contract's usage, top-ups and contract events may be handled by
    different members at once; every wallet still draws exactly min(usage, top-ups), never goes negative,
    and the ledger verifies."""
    contracts = [f"c-duo-{n}" for n in range(6)]
    price = Fraction("3.10")
    hours = [
        Hour(c, f"alloc-{c}-{a}", T0 + h * HOUR, gpu_count=2 + a) for c in contracts for a in range(2) for h in range(6)
    ]
    # Half of the wallets run dry (3 × 9.00 < 93.00 of usage), half keep money (3 × 40.00).
    top_up = {c: "9.00" if n % 2 == 0 else "40.00" for n, c in enumerate(contracts)}
    top_ups = [
        topped_up(c, top_up[c], T0 + n * 3000 * SECOND, event_id=f"duo-top-{c}-{n}")
        for c in contracts
        for n in range(3)
    ]
    created = [contract_created(c, billing_mode="prepaid", starts_at=T0, price="3.10", rate="2.00") for c in contracts]
    async with running(stack, [SERVICE]) as first, running(stack, [SERVICE]) as second:
        await members_share(first, second)
        # The watermarks carry their barrier (as metering's do): whichever member handles a top-up, the
        # member running the wallet at a watermark first reads wallets up to it.
        await publish(stack, created + top_ups[::2] + [usage(h) for h in hours[::2]])
        await publish_watermark(stack, T0 + 3 * HOUR, with_barrier=True)
        await publish(stack, top_ups[1::2] + [usage(h) for h in hours[1::2]])
        await publish_watermark(stack, T0 + 8 * HOUR, with_barrier=True)
        everything = len(created) + len(top_ups) + len(hours) + 2 * topics.USAGE_METERED.partitions
        await wait_until(lambda: handled(stack, everything), what="every event handled by the group")
        await wait_until(lambda: forwarded_through(stack, T0 + 8 * HOUR), what="08:00 forwarded everywhere")
    assert first.processed > 0
    assert second.processed > 0  # both members of the group consumed
    units = await account_units(stack)
    for c in contracts:
        spent = sum(
            (Fraction(h.billable_gpu_seconds) * price / 3600 for h in hours if h.contract_id == c),
            Fraction(0),
        )
        paid = 3 * Fraction(top_up[c])
        drawn = await stack.pool.fetchval(
            "select sum(drawn_x3600) from rating.wallet_periods where contract_id = $1", c
        )
        assert Fraction(drawn) / 3600 == min(spent, paid), c
        assert units[f"renter:renter-1:wallet:{c}:USD"] == ledger_units(max(paid - spent, Fraction(0)), "USD")
    await assert_ledger_ok(stack)
