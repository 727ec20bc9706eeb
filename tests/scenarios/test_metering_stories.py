"""Metering stories (R2, R3), end to end through Kafka and PostgreSQL.

Expected GPU-seconds are computed here from the rules by hand, not by the service's code.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas import topics
from services.metering.main import SERVICE as METERING
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until

pytestmark = pytest.mark.integration
DAY = datetime(2026, 12, 1, tzinfo=UTC)
_ids = itertools.count()


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


def contract(
    contract_id: str = "c-1", *, starts_at: datetime = DAY, ends_at: datetime | None = None
) -> tuple[Any, ...]:
    data = {
        "contract_id": contract_id,
        "renter_id": "r-1",
        "currency": "USD",
        "billing_mode": "postpaid",
        "price_per_gpu_hour": "2.00",
        "supplier_rate_per_gpu_hour": "1.50",
        "commitment_per_period": "0",
        "credit_limit": None,
        "sla_tiers": [],
        "tax_rate": "0",
        "starts_at": starts_at.isoformat(),
        "ends_at": ends_at.isoformat() if ends_at else None,
        "billing_anchor_day": 1,
    }
    return (
        topics.CONTRACTS,
        contract_id,
        event_bytes("contract.created", data, id=f"{contract_id}-created", time=starts_at),
    )


def lifecycle(type_: str, when: datetime, allocation_id: str = "a-1", **extra: Any) -> tuple[Any, ...]:
    data: dict[str, Any] = {"allocation_id": allocation_id, **extra}
    if type_ == "gpu.allocation.provisioned":
        data = {
            "allocation_id": allocation_id,
            "contract_id": extra.get("contract_id", "c-1"),
            "renter_id": "r-1",
            "supplier_id": "s-1",
            "server_id": "srv-1",
            "gpu_model": "H100",
            "gpu_count": extra.get("gpu_count", 8),
        }
    return (topics.INFRA_LIFECYCLE, allocation_id, event_bytes(type_, data, id=f"lc-{next(_ids)}", time=when))


def tick(when: datetime) -> tuple[Any, ...]:
    return (
        topics.CLOCK_TICKS,
        "clock",
        event_bytes("clock.ticked", {"at": when.isoformat()}, id=f"tick-{when.isoformat()}", time=when),
    )


async def usage_records(stack: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_topic(stack, topics.USAGE_METERED)]


async def watermarks_through(stack: Stack, when: datetime) -> bool:
    """The watermark for ``when`` was written and everything in the outbox is published."""
    sent = await stack.pool.fetchval("select watermark_sent from metering.clock")
    unsent = await stack.pool.fetchval("select count(*) from settle.outbox where sent_at is null")
    return sent is not None and sent >= when and unsent == 0


def hours(records: list[dict[str, Any]], meter: str = "gpu_seconds") -> dict[tuple[str, str], dict[str, Any]]:
    """Latest revision per (allocation, hour) as emitted."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r["type"] != "usage.metered" or r["data"]["meter"] != meter:
            continue
        key = (r["data"]["allocation_id"], r["data"]["hour_start"])
        if key not in latest or r["data"]["revision"] > latest[key]["revision"]:
            latest[key] = r["data"]
    return latest


async def test_an_allocation_decommissioned_before_its_provisioning_arrives_bills_its_hours(stack: Stack) -> None:
    """An 8-GPU allocation's decommission (12:00) arrives before its provisioning (10:00)."""
    await publish(
        stack,
        [
            contract(),
            lifecycle("gpu.allocation.decommissioned", at(12, 30)),
            lifecycle("gpu.allocation.provisioned", at(10, 15), gpu_count=8),
            tick(at(14)),
        ],
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(14)), what="watermark at 14:00")
    got = hours(await usage_records(stack))
    # 10:15-11:00 = 2700 s, 11:00-12:00 = 3600 s, 12:00-12:30 = 1800 s; × 8 GPUs
    assert {h: d["billable_gpu_seconds"] for (_, h), d in got.items()} == {
        "2026-12-01T10:00:00Z": 8 * 2700,
        "2026-12-01T11:00:00Z": 8 * 3600,
        "2026-12-01T12:00:00Z": 8 * 1800,
    }
    # Every partition of usage.metered.v1 got the watermark, after the usage records.
    records = await read_topic(stack, topics.USAGE_METERED)
    marks = [r for r in records if orjson.loads(r.value)["type"] == "usage.watermark"]
    assert sorted(r.partition for r in marks) == list(range(topics.USAGE_METERED.partitions))
    usage_partition = next(r.partition for r in records if orjson.loads(r.value)["type"] == "usage.metered")
    in_partition = [
        orjson.loads(r.value)["type"] for r in sorted(records, key=lambda r: r.offset) if r.partition == usage_partition
    ]
    assert in_partition[-1] == "usage.watermark"


async def test_an_outage_inside_a_maintenance_window_counts_once(stack: Stack) -> None:
    await publish(
        stack,
        [
            contract(),
            lifecycle("gpu.allocation.provisioned", at(9), gpu_count=4),
            lifecycle("gpu.maintenance.started", at(10), window_id="m-1"),
            lifecycle("gpu.outage.started", at(10, 15), incident_id="o-1"),
            lifecycle("gpu.outage.ended", at(11, 30), incident_id="o-1"),
            lifecycle("gpu.maintenance.ended", at(11), window_id="m-1"),
            tick(at(12)),
        ],
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(12)), what="watermark at 12:00")
    got = hours(await usage_records(stack))
    h10, h11 = got[("a-1", "2026-12-01T10:00:00Z")], got[("a-1", "2026-12-01T11:00:00Z")]
    assert (h10["maintenance_gpu_seconds"], h10["outage_gpu_seconds"], h10["billable_gpu_seconds"]) == (4 * 3600, 0, 0)
    # 11:00-11:30 outage (maintenance over), 11:30-12:00 billable
    assert (h11["maintenance_gpu_seconds"], h11["outage_gpu_seconds"], h11["billable_gpu_seconds"]) == (
        0,
        4 * 1800,
        4 * 1800,
    )
    assert h11["billable_segments"] == [{"start_at": "2026-12-01T11:30:00Z", "end_at": "2026-12-01T12:00:00Z"}]


async def test_a_late_outage_produces_a_correction_not_an_edit(stack: Stack) -> None:
    await publish(stack, [contract(), lifecycle("gpu.allocation.provisioned", at(9), gpu_count=2), tick(at(12))])
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(12)), what="first watermark")
        await publish(
            stack,
            [
                lifecycle("gpu.outage.started", at(10, 30), incident_id="o-9"),
                lifecycle("gpu.outage.ended", at(11, 15), incident_id="o-9"),
            ],
        )
        await wait_until(
            lambda: _count(stack, "select count(*) from metering.hours where revision > 1", 2),
            what="corrections of 10:00 and 11:00",
        )
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.outbox where sent_at is null", 0, exact=True),
            what="outbox drained",
        )
    records = [r["data"] for r in await usage_records(stack) if r["type"] == "usage.metered"]
    by_hour: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_hour[r["hour_start"]].append(r)
    first, second = sorted(by_hour["2026-12-01T10:00:00Z"], key=lambda r: r["revision"])
    assert (first["revision"], first["billable_gpu_seconds"]) == (1, 2 * 3600)  # the original is untouched
    assert (second["revision"], second["delta_billable_gpu_seconds"], second["delta_outage_gpu_seconds"]) == (
        2,
        -2 * 1800,
        2 * 1800,
    )
    # The outage's start and end arrive before the next close (in one batch or two): the hours after
    # the start wait for the end, so 11:00 is corrected once, with the final window (11:00-11:15).
    eleven = sorted(by_hour["2026-12-01T11:00:00Z"], key=lambda r: r["revision"])
    assert [r["revision"] for r in eleven] == [1, 2]
    assert eleven[-1]["billable_gpu_seconds"] == 2 * 2700
    assert sum(r["delta_billable_gpu_seconds"] for r in eleven) == 2 * 2700
    assert sum(r["delta_outage_gpu_seconds"] for r in eleven) == 2 * 900
    assert [r["revision"] for r in by_hour["2026-12-01T09:00:00Z"]] == [1]  # untouched hour: no correction


LATE_OUTAGE_HOURS = {
    "2026-12-01T10:00:00Z": (2 * 1800, 2 * 1800),  # 10:30-11:00 out
    "2026-12-01T11:00:00Z": (2 * 2700, 2 * 900),  # 11:00-11:15 out
}
"""(billable, outage) GPU-seconds of the hours a late 2-GPU outage 10:30-11:15 changes; every other
hour stays fully billable."""


@pytest.mark.parametrize("delivery", ["together", "separate_batches", "close_between"])
async def test_a_late_outage_costs_one_correction_per_hour_it_changes(stack: Stack, delivery: str) -> None:
    """Two days are emitted (48 hours), then an outage of 10:30-11:15 on the first day arrives late.

    * ``together``: start and end published together (one batch, or two: the same outcome);
    * ``separate_batches``: the end is published only once the start has been consumed;
    * ``close_between``: a tick closes 48:00-49:00 between the start and the end. R2 bills the
      window open at that close (10:00-49:00 corrected), and the end gives back 11:15-49:00.

    Before issue 8 item 5 the first two also corrected every hour 10:00-48:00 as an open outage and
    then reversed 11:00-48:00 (38 + 37 = 75 corrections instead of 2).
    """
    day2 = at(48)
    await publish(stack, [contract(), lifecycle("gpu.allocation.provisioned", at(0), gpu_count=2), tick(day2)])
    start = lifecycle("gpu.outage.started", at(10, 30), incident_id="o-late")
    end = lifecycle("gpu.outage.ended", at(11, 15), incident_id="o-late")
    consumed = "select count(*) from settle.inbox where consumer = 'metering' and topic like '%infra.lifecycle%'"
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, day2), what="two days emitted")
        if delivery == "together":
            await publish(stack, [start, end])
        else:
            await publish(stack, [start])
            await wait_until(lambda: _count(stack, consumed, 2), what="the late start consumed")
            if delivery == "close_between":
                await publish(stack, [tick(at(49))])
                await wait_until(lambda: watermarks_through(stack, at(49)), what="a close with the outage open")
            await publish(stack, [end])
        await wait_until(lambda: _count(stack, consumed, 3), what="the late end consumed")
        last = at(50)
        await publish(stack, [tick(last)])
        await wait_until(lambda: watermarks_through(stack, last), what="the next close")
    records = [r["data"] for r in await usage_records(stack) if r["type"] == "usage.metered"]
    assert len({r["usage_id"] for r in records}) == len(records)
    # (1) The final usage of every hour is exact.
    final = hours(await usage_records(stack))
    assert len(final) == 50
    for (_, hour), data in final.items():
        expected = LATE_OUTAGE_HOURS.get(hour, (2 * 3600, 0))
        assert (data["billable_gpu_seconds"], data["outage_gpu_seconds"]) == expected, hour
    # (2) Corrections: one per allocation-hour whose usage changed, or the bound of a close between.
    corrections = [r for r in records if r["revision"] > 1]
    if delivery == "close_between":
        # Open at the 49:00 close: 10:00-48:00 corrected (38) and 48:00 first emitted as outage;
        # the end corrects 11:00-49:00 (38). Two per hour at most, from the start's hour to the close.
        assert len(corrections) == 38 + 38
    else:
        assert len(corrections) == len(LATE_OUTAGE_HOURS)
        assert sorted(r["hour_start"] for r in corrections) == sorted(LATE_OUTAGE_HOURS)
    # The signed deltas of every hour add up to its final state (nothing edited in place).
    for hour in {r["hour_start"] for r in corrections}:
        revisions = [r for r in records if r["hour_start"] == hour]
        assert sum(r["delta_billable_gpu_seconds"] for r in revisions) == final[("a-1", hour)]["billable_gpu_seconds"]


async def _count(stack: Stack, sql: str, n: int, *, exact: bool = False) -> bool:
    value = int(await stack.pool.fetchval(sql))
    return value == n if exact else value >= n


async def test_lifecycle_for_an_unknown_contract_is_held_until_it_arrives(stack: Stack) -> None:
    await publish(
        stack, [lifecycle("gpu.allocation.provisioned", at(8), contract_id="c-late", gpu_count=1), tick(at(10))]
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(10)), what="watermark (nothing to wait for)")
        assert hours(await usage_records(stack)) == {}
        await publish(stack, [contract("c-late")])
        await wait_until(lambda: _count(stack, "select count(*) from metering.hours", 2), what="held hours emitted")
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.outbox where sent_at is null", 0, exact=True),
            what="outbox drained",
        )
    got = hours(await usage_records(stack))
    assert {h: d["billable_gpu_seconds"] for (_, h), d in got.items()} == {
        "2026-12-01T08:00:00Z": 3600,
        "2026-12-01T09:00:00Z": 3600,
    }


async def test_a_window_that_ends_before_it_starts_is_quarantined_with_both_events(stack: Stack) -> None:
    await publish(
        stack,
        [
            contract(),
            lifecycle("gpu.allocation.provisioned", at(8), gpu_count=1),
            lifecycle("gpu.maintenance.ended", at(9), window_id="m-x"),
            lifecycle("gpu.maintenance.started", at(9, 30), window_id="m-x"),
            tick(at(11)),
        ],
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(11)), what="watermark")
        await wait_until(
            lambda: _count(
                stack,
                "select count(*) from settle.outbox where topic = 'metering.anomaly.v1' and sent_at is not null",
                1,
            ),
            what="anomaly published",
        )
    got = hours(await usage_records(stack))
    assert {h: d["billable_gpu_seconds"] for (_, h), d in got.items()} == {
        "2026-12-01T08:00:00Z": 3600,
        "2026-12-01T09:00:00Z": 3600,
        "2026-12-01T10:00:00Z": 3600,
    }
    anomalies = [orjson.loads(r.value)["data"] for r in await read_topic(stack, topics.METERING_ANOMALY)]
    quarantined = [a for a in anomalies if a["kind"] == "event_quarantined"]
    assert len(quarantined) == 1 and len(quarantined[0]["event_ids"]) == 2
    assert "before" in quarantined[0]["reason"]


async def test_a_termination_after_hours_were_emitted_corrects_them_to_zero(stack: Stack) -> None:
    await publish(stack, [contract(), lifecycle("gpu.allocation.provisioned", at(8), gpu_count=1), tick(at(12))])
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(12)), what="watermark")
        terminated = event_bytes(
            "contract.terminated",
            {"contract_id": "c-1", "effective_at": at(10, 30).isoformat()},
            id="c-1-terminated",
            time=at(12, 5),
        )
        await publish(stack, [(topics.CONTRACTS, "c-1", terminated)])
        await wait_until(
            lambda: _count(stack, "select count(*) from metering.hours where revision = 2", 2),
            what="corrections for 10:00 and 11:00",
        )
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.outbox where sent_at is null", 0, exact=True),
            what="outbox drained",
        )
    got = hours(await usage_records(stack))
    assert {h: d["billable_gpu_seconds"] for (_, h), d in got.items()} == {
        "2026-12-01T08:00:00Z": 3600,
        "2026-12-01T09:00:00Z": 3600,
        "2026-12-01T10:00:00Z": 1800,
        "2026-12-01T11:00:00Z": 0,
    }


async def test_telemetry_samples_are_deduplicated_and_aggregated_per_hour(stack: Stack) -> None:
    samples = []
    for n in range(600):
        when = at(8) + timedelta(seconds=12 * n)  # 08:00 .. 09:59:48
        data = {"allocation_id": "a-1", "meter": "egress_gb", "quantity": "0.25"}
        samples.append(
            (topics.USAGE_SAMPLES, "a-1", event_bytes("usage.sample.recorded", data, id=f"s-{n}", time=when))
        )
    duplicates = samples[:100]
    await publish(
        stack, [contract(), lifecycle("gpu.allocation.provisioned", at(8), gpu_count=1), *samples, *duplicates]
    )
    async with running(stack, [METERING]):
        # Ticks and samples are different topics (no order between them): tick once the samples are in,
        # or the stragglers of a closed hour arrive as corrections (also correct, but another story).
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.inbox where consumer = 'metering-samples'", 600),
            what="samples consumed",
        )
        await publish(stack, [tick(at(10))])
        await wait_until(lambda: watermarks_through(stack, at(10)), what="watermark")
        late = event_bytes(
            "usage.sample.recorded",
            {"allocation_id": "a-1", "meter": "egress_gb", "quantity": "1.5"},
            id="s-late",
            time=at(9, 59, 59),
        )
        await publish(stack, [(topics.USAGE_SAMPLES, "a-1", late)])
        await wait_until(
            lambda: _count(stack, "select count(*) from metering.samples where revision = 2", 1),
            what="late sample correction",
        )
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.outbox where sent_at is null", 0, exact=True),
            what="outbox drained",
        )
    records = [
        r["data"]
        for r in await usage_records(stack)
        if r["type"] == "usage.metered" and r["data"]["meter"] == "egress_gb"
    ]
    by_key = {(r["hour_start"], r["revision"]): r for r in records}
    assert by_key[("2026-12-01T08:00:00Z", 1)]["quantity"] == "75.00"  # 300 samples × 0.25
    assert by_key[("2026-12-01T09:00:00Z", 1)]["quantity"] == "75.00"
    correction = by_key[("2026-12-01T09:00:00Z", 2)]
    assert (correction["quantity"], correction["delta_quantity"]) == ("76.50", "1.50")


async def test_two_ticks_read_in_one_batch_close_one_after_the_other(stack: Stack) -> None:
    """Metering was down while two ticks arrived: both are read in its first batch. Each still gets its own
    close and watermark, in order (a lagging worker must not merge 12:00's close into 14:00's)."""
    await publish(
        stack,
        [contract(), lifecycle("gpu.allocation.provisioned", at(10, 15), gpu_count=2), tick(at(12)), tick(at(14))],
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(14)), what="watermark at 14:00")
    assert await stack.pool.fetchval("select count(*) from metering.queued_ticks") == 0
    records = sorted(await read_topic(stack, topics.USAGE_METERED), key=lambda r: (r.partition, r.offset))
    for partition in range(topics.USAGE_METERED.partitions):
        marks = [
            orjson.loads(r.value)["data"]["through"]
            for r in records
            if r.partition == partition and orjson.loads(r.value)["type"] == "usage.watermark"
        ]
        assert marks == ["2026-12-01T12:00:00Z", "2026-12-01T14:00:00Z"], (partition, marks)
    usage = [orjson.loads(r.value) for r in records if orjson.loads(r.value)["type"] == "usage.metered"]
    partition = next(r.partition for r in records if orjson.loads(r.value)["type"] == "usage.metered")
    in_order = [
        (d["type"], d["data"].get("hour_start") or d["data"].get("through"))
        for d in (orjson.loads(r.value) for r in records if r.partition == partition)
    ]
    first_mark = in_order.index(("usage.watermark", "2026-12-01T12:00:00Z"))
    assert {h for t, h in in_order[:first_mark]} == {"2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"}, in_order
    assert {d["data"]["hour_start"] for d in usage} == {f"2026-12-01T{h}:00:00Z" for h in (10, 11, 12, 13)}


async def test_ticks_inside_hours_still_close_every_hour_once(stack: Stack) -> None:
    """A tick need not fall on the hour (`settle clock tick --at`, SETTLE_CLOCK_INTERVAL_S=1800): the hour it
    falls in is closed by the next tick past its end. Every billable second is emitted, once — including the
    hour of a decommission that a tick inside it did not close."""
    half_hourly = [tick(at(h, m)) for h in range(9, 13) for m in (0, 30)] + [tick(at(13))]
    await publish(
        stack,
        [
            contract(),
            lifecycle("gpu.allocation.provisioned", at(9, 10), gpu_count=2),
            lifecycle("gpu.allocation.decommissioned", at(11, 40)),
            lifecycle("gpu.allocation.provisioned", at(9), "a-2", gpu_count=1),
            *half_hourly,
        ],
    )
    async with running(stack, [METERING]):
        await wait_until(lambda: watermarks_through(stack, at(13)), what="watermark at 13:00")
    records = await usage_records(stack)
    latest = hours(records)
    a1 = {h: d["billable_gpu_seconds"] for (a, h), d in latest.items() if a == "a-1"}
    a2 = {h: d["billable_gpu_seconds"] for (a, h), d in latest.items() if a == "a-2"}
    assert a1 == {
        "2026-12-01T09:00:00Z": 2 * 50 * 60,
        "2026-12-01T10:00:00Z": 2 * 3600,
        "2026-12-01T11:00:00Z": 2 * 40 * 60,
    }
    assert a2 == {f"2026-12-01T{h:02d}:00:00Z": 3600 for h in (9, 10, 11, 12)}
    emitted = [r for r in records if r["type"] == "usage.metered" and r["data"]["meter"] == "gpu_seconds"]
    assert all(r["data"]["revision"] == 1 for r in emitted), "an hour was emitted twice"
