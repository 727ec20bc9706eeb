"""metering's SQL. Facts and emitted hours are JSON; every write happens in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import zip_longest
from typing import Any

import asyncpg

from libs.times import format_utc, parse_utc
from services.metering.domain import HourUsage, LifecycleFact, ProvisionData


# --- JSON codecs --------------------------------------------------------------------------------------------
def fact_to_json(fact: LifecycleFact) -> dict[str, Any]:
    provision = None
    if fact.provision is not None:
        p = fact.provision
        provision = {
            "contract_id": p.contract_id,
            "renter_id": p.renter_id,
            "supplier_id": p.supplier_id,
            "server_id": p.server_id,
            "gpu_model": p.gpu_model,
            "gpu_count": p.gpu_count,
        }
    return {
        "event_id": fact.event_id,
        "kind": fact.kind,
        "at": format_utc(fact.at),
        "window_id": fact.window_id,
        "provision": provision,
        "arrival_seq": fact.arrival_seq,
    }


def fact_from_json(doc: dict[str, Any]) -> LifecycleFact:
    p = doc["provision"]
    return LifecycleFact(
        event_id=doc["event_id"],
        kind=doc["kind"],
        at=parse_utc(doc["at"]),
        window_id=doc["window_id"],
        provision=None if p is None else ProvisionData(**p),
        arrival_seq=doc["arrival_seq"],
    )


def hour_to_json(usage: HourUsage) -> dict[str, Any]:
    return {
        "gpu_count": usage.gpu_count,
        "provisioned_gpu_seconds": usage.provisioned_gpu_seconds,
        "billable_gpu_seconds": usage.billable_gpu_seconds,
        "maintenance_gpu_seconds": usage.maintenance_gpu_seconds,
        "outage_gpu_seconds": usage.outage_gpu_seconds,
        "billable_segments": [[format_utc(a), format_utc(b)] for a, b in usage.billable_segments],
    }


def hour_from_json(doc: dict[str, Any]) -> HourUsage:
    return HourUsage(
        gpu_count=doc["gpu_count"],
        provisioned_gpu_seconds=doc["provisioned_gpu_seconds"],
        billable_gpu_seconds=doc["billable_gpu_seconds"],
        maintenance_gpu_seconds=doc["maintenance_gpu_seconds"],
        outage_gpu_seconds=doc["outage_gpu_seconds"],
        billable_segments=tuple((parse_utc(a), parse_utc(b)) for a, b in doc["billable_segments"]),
    )


# --- allocations --------------------------------------------------------------------------------------------
@dataclass
class AllocationRow:
    allocation_id: str
    facts: list[LifecycleFact]
    next_seq: int
    contract_id: str | None
    closed_through: datetime | None
    idle: bool
    last_event_at: datetime | None
    provision: ProvisionData | None = None
    changed: bool = field(default=False, compare=False)
    held: tuple[str, ...] = field(default=(), compare=False)
    """Event ids the last evaluation holds (set by the lifecycle consumer, saved by :func:`save_held`)."""


def _row(r: asyncpg.Record) -> AllocationRow:
    facts = [fact_from_json(f) for f in r["facts"]]
    return AllocationRow(
        r["allocation_id"], facts, r["next_seq"], r["contract_id"], r["closed_through"], r["idle"], r["last_event_at"]
    )


async def lock_allocations(
    conn: asyncpg.Connection, allocation_ids: Sequence[str], *, create: bool = True, share: bool = False
) -> dict[str, AllocationRow]:
    """Lock allocation rows in id order (creating missing ones); the one lock order of metering."""
    ids = sorted(set(allocation_ids))
    if create:
        await conn.execute(
            "insert into metering.allocations (allocation_id) select unnest($1::text[]) on conflict do nothing", ids
        )
    mode = "for share" if share else "for update"
    rows = await conn.fetch(
        f"""select allocation_id, facts, next_seq, contract_id, closed_through, idle, last_event_at
              from metering.allocations where allocation_id = any($1) order by allocation_id {mode}""",
        ids,
    )
    return {r["allocation_id"]: _row(r) for r in rows}


async def save_allocation(conn: asyncpg.Connection, row: AllocationRow) -> None:
    p = row.provision
    await conn.execute(
        """update metering.allocations
              set facts = $2, next_seq = $3, contract_id = coalesce($4, contract_id),
                  renter_id = coalesce($5, renter_id),
                  supplier_id = coalesce($6, supplier_id), gpu_model = coalesce($7, gpu_model),
                  gpu_count = coalesce($8, gpu_count), closed_through = $9, idle = $10, last_event_at = $11,
                  updated_at = now()
            where allocation_id = $1""",
        row.allocation_id,
        [fact_to_json(f) for f in row.facts],
        row.next_seq,
        p.contract_id if p else None,
        p.renter_id if p else None,
        p.supplier_id if p else None,
        p.gpu_model if p else None,
        p.gpu_count if p else None,
        row.closed_through,
        row.idle,
        row.last_event_at,
    )


async def allocations_of_contract(conn: asyncpg.Connection, contract_id: str) -> list[str]:
    rows = await conn.fetch(
        "select allocation_id from metering.allocations where contract_id = $1 order by 1", contract_id
    )
    return [r["allocation_id"] for r in rows]


async def claim_behind(conn: asyncpg.Connection, target: datetime, limit: int) -> list[AllocationRow]:
    """Allocations whose hours are not emitted up to ``target`` (contract known), locked, skipping ones
    another transaction holds."""
    rows = await conn.fetch(
        """select a.allocation_id, a.facts, a.next_seq, a.contract_id, a.closed_through, a.idle, a.last_event_at
             from metering.allocations a
             join metering.contracts c on c.contract_id = a.contract_id
            where not a.idle and (a.closed_through is null or a.closed_through < $1)
            order by a.allocation_id
            limit $2
              for update of a skip locked""",
        target,
        limit,
    )
    return [_row(r) for r in rows]


async def count_behind(conn: asyncpg.Connection, target: datetime) -> int:
    return int(
        await conn.fetchval(
            """select count(*) from metering.allocations a join metering.contracts c on c.contract_id = a.contract_id
            where not a.idle and (a.closed_through is null or a.closed_through < $1)""",
            target,
        )
    )


# --- held lifecycle events ----------------------------------------------------------------------------------
HELD_REASONS = {
    "decommissioned": "decommission before any provisioning: nothing to end until the allocation is provisioned",
    "ended": "window end whose start has not arrived: no effect until its start arrives",
}


def held_reason(kind: str) -> str:
    return HELD_REASONS["decommissioned" if kind == "decommissioned" else "ended"]


async def save_held(conn: asyncpg.Connection, rows: Sequence[AllocationRow]) -> None:
    """Make ``metering.held_events`` say what the rows' evaluations hold (``row.held``): events no
    longer held leave it, newly held ones join with the time they were first seen held."""
    if not rows:
        return
    unique = {f.event_id: (f, row.allocation_id) for row in rows for f in row.facts if f.event_id in row.held}
    await conn.execute(
        "delete from metering.held_events where allocation_id = any($1::text[]) and not (event_id = any($2::text[]))",
        [row.allocation_id for row in rows],
        sorted(unique),
    )
    if unique:
        items = sorted(unique.items())
        await conn.execute(
            """insert into metering.held_events (event_id, allocation_id, kind, at, reason)
               select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
               on conflict (event_id) do nothing""",
            [event_id for event_id, _ in items],
            [allocation_id for _, (_, allocation_id) in items],
            [fact.kind for _, (fact, _) in items],
            [fact.at for _, (fact, _) in items],
            [held_reason(fact.kind) for _, (fact, _) in items],
        )


# --- emitted hours ------------------------------------------------------------------------------------------
async def emitted_hours(
    conn: asyncpg.Connection, allocation_id: str, meter: str, start: datetime | None, end: datetime | None
) -> dict[datetime, tuple[int, HourUsage]]:
    rows = await conn.fetch(
        """select hour_start, revision, usage from metering.hours
            where allocation_id = $1 and meter = $2
              and ($3::timestamptz is null or hour_start >= $3) and ($4::timestamptz is null or hour_start < $4)""",
        allocation_id,
        meter,
        start,
        end,
    )
    return {r["hour_start"]: (r["revision"], hour_from_json(r["usage"])) for r in rows}


async def save_hours(
    conn: asyncpg.Connection, allocation_id: str, meter: str, hours: Sequence[tuple[datetime, int, HourUsage]]
) -> None:
    if not hours:
        return
    await conn.execute(
        """insert into metering.hours (allocation_id, meter, hour_start, revision, usage)
           select $1, $2, h, r, u::jsonb from unnest($3::timestamptz[], $4::int[], $5::text[]) as x(h, r, u)
           on conflict (allocation_id, meter, hour_start)
           do update set revision = excluded.revision, usage = excluded.usage""",
        allocation_id,
        meter,
        [h for h, _, _ in hours],
        [r for _, r, _ in hours],
        [_dumps(hour_to_json(u)) for _, _, u in hours],
    )


def _dumps(doc: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(doc).decode()


# --- samples ------------------------------------------------------------------------------------------------
async def add_samples(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, datetime, Decimal]]
) -> list[asyncpg.Record]:
    """Add aggregated quantities; returns the rows whose hour was already emitted (late samples)."""
    if not rows:
        return []
    return list(
        await conn.fetch(
            """insert into metering.samples (allocation_id, meter, hour_start, quantity)
           select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::numeric[])
           on conflict (allocation_id, meter, hour_start)
           do update set quantity = metering.samples.quantity + excluded.quantity
           returning allocation_id, meter, hour_start, quantity, emitted_quantity, revision""",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
    )


async def pending_samples(conn: asyncpg.Connection, allocation_id: str, before: datetime) -> list[asyncpg.Record]:
    """Sample aggregates of closed hours (ending at or before ``before``) not yet emitted as they are."""
    return list(
        await conn.fetch(
            """select meter, hour_start, quantity, emitted_quantity, revision from metering.samples
            where allocation_id = $1 and hour_start + interval '1 hour' <= $2
              and emitted_quantity is distinct from quantity
            order by hour_start, meter""",
            allocation_id,
            before,
        )
    )


async def mark_samples_emitted(
    conn: asyncpg.Connection, allocation_id: str, emitted: Sequence[tuple[str, datetime, Decimal, int]]
) -> None:
    if not emitted:
        return
    await conn.execute(
        """update metering.samples s set emitted_quantity = x.q, revision = x.r
             from unnest($2::text[], $3::timestamptz[], $4::numeric[], $5::int[]) as x(m, h, q, r)
            where s.allocation_id = $1 and s.meter = x.m and s.hour_start = x.h""",
        allocation_id,
        [e[0] for e in emitted],
        [e[1] for e in emitted],
        [e[2] for e in emitted],
        [e[3] for e in emitted],
    )


# --- clock and anomalies ------------------------------------------------------------------------------------
async def advance_target(conn: asyncpg.Connection, at: datetime) -> datetime | None:
    target: datetime | None = await conn.fetchval(
        """update metering.clock set target = greatest(coalesce(target, $1), $1) where id = 1 returning target""", at
    )
    return target


async def close_pending(conn: asyncpg.Connection) -> bool:
    """True while the target's watermark is unsent (a close is running) or ticks wait behind it."""
    row = await conn.fetchrow(
        """select c.target, c.watermark_sent, exists(select 1 from metering.queued_ticks) as queued
             from metering.clock c where c.id = 1"""
    )
    assert row is not None
    if row["queued"]:
        return True
    return row["target"] is not None and (row["watermark_sent"] is None or row["watermark_sent"] < row["target"])


async def queue_tick(conn: asyncpg.Connection, at: datetime, barrier: dict[str, list[int]] | None, offset: int) -> None:
    await conn.execute(
        """insert into metering.queued_ticks (tick_offset, at, barrier) values ($1, $2, $3)
           on conflict (tick_offset) do nothing""",
        offset,
        at,
        barrier,
    )


async def pop_queued_tick(conn: asyncpg.Connection) -> tuple[datetime, dict[str, list[int]] | None, int] | None:
    """The earliest queued tick (removed), or None."""
    row = await conn.fetchrow(
        """delete from metering.queued_ticks
            where tick_offset = (select min(tick_offset) from metering.queued_ticks)
        returning tick_offset, at, barrier"""
    )
    return None if row is None else (row["at"], row["barrier"], int(row["tick_offset"]))


async def queued_ticks(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select count(*) from metering.queued_ticks"))


async def raise_barrier(
    conn: asyncpg.Connection, at: datetime, barrier: dict[str, list[int]], tick_offset: int
) -> None:
    """Attach a tick's barrier to the pending close of ``at`` (element-wise maximum with what is there).

    A tick older than the target, or for a target whose watermark is already sent, changes nothing."""
    row = await conn.fetchrow("select target, watermark_sent, barrier, tick_offset from metering.clock where id = 1")
    assert row is not None
    if row["target"] != at or (row["watermark_sent"] is not None and row["watermark_sent"] >= at):
        return
    merged = {topic: list(offsets) for topic, offsets in (row["barrier"] or {}).items()}
    for topic, offsets in barrier.items():
        old = merged.get(topic, [])
        merged[topic] = [max(a, b) for a, b in zip_longest(old, offsets, fillvalue=0)]
    await conn.execute(
        "update metering.clock set barrier = $1, tick_offset = greatest(tick_offset, $2) where id = 1",
        merged,
        tick_offset,
    )


async def pending_barrier(conn: asyncpg.Connection) -> tuple[dict[str, list[int]], int | None] | None:
    """The barrier of the close still to do (and the tick's offset), or None when no close waits on one."""
    row = await conn.fetchrow("select target, watermark_sent, barrier, tick_offset from metering.clock where id = 1")
    assert row is not None
    if row["target"] is None or row["barrier"] is None:
        return None
    if row["watermark_sent"] is not None and row["watermark_sent"] >= row["target"]:
        return None
    return row["barrier"], row["tick_offset"]


async def clock(conn: asyncpg.Connection, *, for_update: bool = False) -> tuple[datetime | None, datetime | None]:
    row = await conn.fetchrow(
        "select target, watermark_sent from metering.clock where id = 1" + (" for update" if for_update else "")
    )
    assert row is not None
    return row["target"], row["watermark_sent"]


async def record_anomalies(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, list[str], datetime]]
) -> set[str]:
    """Insert anomalies; returns the ids that are new (to emit exactly once)."""
    if not rows:
        return set()
    inserted = await conn.fetch(
        """insert into metering.anomalies (anomaly_id, allocation_id, kind, reason, event_ids, at)
           select i, a, k, r, string_to_array(e, chr(31)), t
             from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
               as x(i, a, k, r, e, t)
           on conflict do nothing returning anomaly_id""",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [chr(31).join(r[4]) for r in rows],
        [r[5] for r in rows],
    )
    return {r["anomaly_id"] for r in inserted}
