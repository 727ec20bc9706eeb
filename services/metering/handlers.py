"""metering's consumers and its closer (the only writers of ``usage.metered.v1``).

Why over 500 lines: the lifecycle consumer, the closer and the tick barrier share one ordering
argument (what is emitted before a watermark); it is kept in one module so it can be read whole.

* ``metering`` (lifecycle, contracts, clock ticks): records every lifecycle fact, recomputes the
  allocation's state from event times, and for hours already emitted emits corrections (new
  revisions with signed deltas, R3) — once per allocation per batch, after the batch's facts are
  all in. Ticks only move the clock's target.
* ``metering-samples`` (telemetry, the high-volume path): adds quantities to hourly aggregates in
  bulk; a sample for an hour already emitted yields a correction right away.
* the closer (background task): emits every closed hour (ending at or before the target) of every
  allocation whose contract is known, a chunk of allocations per transaction; when none is behind,
  sends ``usage.watermark`` to every partition (see README, "Time and watermarks").

Late windows (issue 8 item 5). A late outage or maintenance start, whose hours were emitted already,
opens a window that runs "up to now" (R2). Correcting every emitted hour from its start as open at
once, and reversing most of them when the end arrives a moment later, nets right but costs two
records per hour (hundreds in the demo). Two things avoid that, both without any new state:

* coalescing: a batch records all of its lifecycle facts first and corrects each touched allocation
  once, from its state before the batch to its state after (:func:`correct_hours`), so a start and an
  end in one batch correct only what the final window changed;
* deferral: hours after the start of a window that is still open are left as emitted
  (:func:`~services.metering.domain.deferred_from`), to be corrected with the final window when its
  end arrives, or with the window open by the next close — which reconciles from that hour and
  never marks such an allocation idle — before the close's watermark. Coalescing alone would not
  help a start and an end that land in separate batches (the usual case when they are published
  apart); deferring to the close keeps R2's open window exactly, and since every watermark still
  follows every correction of the hours it covers, invoices are those of correcting at once. What
  is left: a close between the start and the end bills the window open (R2) and the end corrects
  it back — at most two records per hour from the start's hour to that close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from domain.contracts import store as contracts
from domain.contracts.terms import ContractTerms
from libs import limits
from libs.ids import derive_id
from libs.messaging.consume import Tx
from libs.messaging.outbox import Emitter, write_outbox
from libs.messaging.positions import load_positions
from libs.messaging.worker import Runtime
from libs.observability import metrics
from libs.times import HOUR, ceil_hour, floor_hour, format_utc
from schemas import topics
from schemas.barrier import barrier_offsets, emit_watermark
from schemas.envelope import Envelope
from schemas.events import MeteringAnomaly, Segment, UsageMetered
from schemas.topics import Topic
from services.metering import store
from services.metering.domain import (
    AllocationState,
    HourUsage,
    ProvisionData,
    anomaly_id,
    correction_range,
    deferred_from,
    diff_usage,
    evaluate_allocation,
    fact_from_event,
    find_anomalies,
    find_fact_anomalies,
    sample_hour,
    usage_by_hour,
)

log = structlog.get_logger("settle.metering")
SCHEMA = "metering"
GPU_SECONDS = "gpu_seconds"
STALE_AFTER = timedelta(seconds=limits.STALE_ALLOCATION_AFTER_S)
WINDOW_OPEN_LIMIT = timedelta(seconds=limits.WINDOW_OPEN_LIMIT_S)


# --- building usage records ---------------------------------------------------------------------------------
def _zero(gpu_count: int) -> HourUsage:
    return HourUsage(gpu_count, 0, 0, 0, 0, ())


def usage_record(
    provision: ProvisionData,
    allocation_id: str,
    hour: datetime,
    revision: int,
    current: HourUsage,
    previous: HourUsage | None,
) -> UsageMetered:
    before = previous or _zero(current.gpu_count)
    return UsageMetered(
        usage_id=derive_id("usage", allocation_id, GPU_SECONDS, format_utc(hour), revision),
        allocation_id=allocation_id,
        contract_id=provision.contract_id,
        renter_id=provision.renter_id,
        supplier_id=provision.supplier_id,
        gpu_model=provision.gpu_model,
        meter=GPU_SECONDS,
        hour_start=hour,
        revision=revision,
        gpu_count=current.gpu_count,
        provisioned_gpu_seconds=current.provisioned_gpu_seconds,
        billable_gpu_seconds=current.billable_gpu_seconds,
        maintenance_gpu_seconds=current.maintenance_gpu_seconds,
        outage_gpu_seconds=current.outage_gpu_seconds,
        billable_segments=[Segment(start_at=a, end_at=b) for a, b in current.billable_segments],
        delta_provisioned_gpu_seconds=current.provisioned_gpu_seconds - before.provisioned_gpu_seconds,
        delta_billable_gpu_seconds=current.billable_gpu_seconds - before.billable_gpu_seconds,
        delta_maintenance_gpu_seconds=current.maintenance_gpu_seconds - before.maintenance_gpu_seconds,
        delta_outage_gpu_seconds=current.outage_gpu_seconds - before.outage_gpu_seconds,
    )


def sample_record(
    provision: ProvisionData,
    allocation_id: str,
    meter: str,
    hour: datetime,
    revision: int,
    quantity: Decimal,
    previous: Decimal | None,
) -> UsageMetered:
    return UsageMetered(
        usage_id=derive_id("usage", allocation_id, meter, format_utc(hour), revision),
        allocation_id=allocation_id,
        contract_id=provision.contract_id,
        renter_id=provision.renter_id,
        supplier_id=provision.supplier_id,
        gpu_model=provision.gpu_model,
        meter=meter,
        hour_start=hour,
        revision=revision,
        gpu_count=0,
        provisioned_gpu_seconds=0,
        billable_gpu_seconds=0,
        maintenance_gpu_seconds=0,
        outage_gpu_seconds=0,
        billable_segments=[],
        delta_provisioned_gpu_seconds=0,
        delta_billable_gpu_seconds=0,
        delta_maintenance_gpu_seconds=0,
        delta_outage_gpu_seconds=0,
        quantity=quantity,
        delta_quantity=quantity - (previous or Decimal(0)),
    )


def _emit_usage(
    emitter: Emitter, record: UsageMetered, cause: Envelope[Any] | None, correlation_id: str | None = None
) -> None:
    emitter.emit(
        topics.USAGE_METERED,
        key=record.contract_id,
        type="usage.metered",
        data=record,
        time=record.hour_start + HOUR,
        cause=cause,
        event_id=record.usage_id,
        correlation_id=correlation_id,
    )


async def reconcile_hours(
    conn: asyncpg.Connection,
    emitter: Emitter,
    row: store.AllocationRow,
    state: AllocationState,
    terms: ContractTerms,
    start: datetime | None,
    end: datetime | None,
    through: datetime,
    cause: Envelope[Any] | None,
    correlation_id: str | None = None,
) -> int:
    """Make the emitted hours in ``[start, end)`` (ending at or before ``through``) match ``state``:
    emit revision 1 for new hours and a correction for changed ones. Returns records emitted."""
    provision = state.provision
    if provision is None:
        return 0
    current = usage_by_hour(state, terms.starts_at, terms.term_end, through, hours_from=start, hours_to=end)
    upper = through if end is None else min(end, through)
    emitted = await store.emitted_hours(conn, row.allocation_id, GPU_SECONDS, start, upper)
    changes: list[tuple[datetime, int, HourUsage]] = []
    for hour in sorted(set(current) | set(emitted)):
        if hour + HOUR > through:
            continue
        previous = emitted.get(hour)
        now = current.get(hour) or _zero(provision.gpu_count)
        if diff_usage(previous[1] if previous else None, now) is None and previous is not None:
            continue
        if previous is None and now.provisioned_gpu_seconds == 0:
            continue
        revision = previous[0] + 1 if previous else 1
        _emit_usage(
            emitter,
            usage_record(provision, row.allocation_id, hour, revision, now, previous[1] if previous else None),
            cause,
            correlation_id,
        )
        changes.append((hour, revision, now))
    await store.save_hours(conn, row.allocation_id, GPU_SECONDS, changes)
    return len(changes)


# --- anomalies ----------------------------------------------------------------------------------------------
async def raise_anomalies(
    conn: asyncpg.Connection,
    emitter: Emitter,
    allocation_id: str,
    state: AllocationState,
    at: datetime,
    *,
    through: datetime | None,
    last_event_at: datetime | None,
    cause: Envelope[Any] | None,
) -> None:
    """Quarantines are raised as they happen; a held end (its start not here yet) only when it is
    still held as its hour closes — out-of-order delivery that sorts itself out is not news."""
    found = [a for a in find_fact_anomalies(state) if through is not None or a.kind != "event_held"]
    if through is not None:
        found += find_anomalies(state, last_event_at, through, STALE_AFTER, WINDOW_OPEN_LIMIT)
    if not found:
        return
    rows = [
        (anomaly_id(allocation_id, a.kind, a.key), allocation_id, a.kind, a.reason, list(a.event_ids), at)
        for a in found
    ]
    new = await store.record_anomalies(conn, rows)
    for (aid, _, kind, reason, event_ids, when), anomaly in zip(rows, found, strict=True):
        if aid not in new:
            continue
        metrics.DOMAIN_EVENTS.labels("metering", kind).inc()
        emitter.emit(
            topics.METERING_ANOMALY,
            key=allocation_id,
            type=f"metering.{anomaly.kind}",
            time=when,
            cause=cause,
            event_id=aid,
            data=MeteringAnomaly(
                anomaly_id=aid,
                allocation_id=allocation_id,
                kind=anomaly.kind,
                reason=reason,
                event_ids=event_ids[:16],
                at=when,
            ),
        )


# --- the metering consumer: lifecycle, contracts, ticks -----------------------------------------------------
def _provision_of(state: AllocationState) -> ProvisionData | None:
    return state.provision


def _idle(state: AllocationState, closed_through: datetime | None) -> bool:
    """Nothing more to emit for the future: the hour of the decommission is closed (a tick inside that hour
    has not emitted it yet)."""
    return (
        state.decommissioned_at is not None
        and closed_through is not None
        and ceil_hour(state.decommissioned_at) <= closed_through
    )


@dataclass
class _Touched:
    """An allocation whose facts changed in this batch: its state before the batch's first change
    and the batch's last event for it (the cause its corrections name)."""

    before: AllocationState
    cause: Envelope[Any]


async def on_lifecycle_events(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    """Facts are recorded event by event (anomalies too); emitted hours are corrected once per
    allocation per batch, over what every change of the batch affected (:func:`correct_hours`),
    so a late window whose start and end are in one batch costs one correction per hour changed."""
    lifecycle = [e for e in events if e.type.startswith("gpu.")]
    rows = await store.lock_allocations(tx.conn, [e.data.allocation_id for e in lifecycle]) if lifecycle else {}
    terms_cache: dict[str, ContractTerms | None] = {}
    touched: dict[str, _Touched] = {}
    for event in events:
        if event.type.startswith("contract."):
            # A termination re-derives emitted hours from the stored facts: store this batch's first.
            await correct_hours(tx, rows, touched, terms_cache)
            for row in rows.values():
                if row.changed:
                    await store.save_allocation(tx.conn, row)
            await _on_contract(tx, event)
            terms_cache.clear()
        elif event.type == "clock.ticked":
            _, _, tick_offset = tx.source_of(event)
            barrier = dict(event.data.barrier) if event.data.barrier is not None else None
            current, _ = await store.clock(tx.conn)
            if (current is None or event.data.at > current) and await store.close_pending(tx.conn):
                # A later tick while a close runs (or ticks wait): it waits its turn (run_closer applies it).
                await store.queue_tick(tx.conn, event.data.at, barrier, tick_offset)
                log.info("clock tick queued", at=format_utc(event.data.at))
                continue
            target = await apply_tick(tx.conn, event.data.at, barrier, tick_offset)
            log.info("clock tick", at=format_utc(event.data.at), target=format_utc(target) if target else None)
        else:
            await _on_lifecycle(tx, event, rows[event.data.allocation_id], touched)
    await correct_hours(tx, rows, touched, terms_cache)
    for row in rows.values():
        if row.changed:
            await store.save_allocation(tx.conn, row)
    await store.save_held(tx.conn, [row for row in rows.values() if row.changed])


async def apply_tick(
    conn: asyncpg.Connection, at: datetime, barrier: dict[str, list[int]] | None, tick_offset: int
) -> datetime | None:
    """Move the close target to ``at`` (never back) and attach the tick's barrier to its close."""
    target = await store.advance_target(conn, at)
    if barrier is not None:
        await store.raise_barrier(conn, at, barrier, tick_offset)
    return target


async def _terms(
    conn: asyncpg.Connection, contract_id: str, cache: dict[str, ContractTerms | None]
) -> ContractTerms | None:
    if contract_id not in cache:
        cache[contract_id] = await contracts.load_terms(conn, SCHEMA, contract_id)
    return cache[contract_id]


async def _on_lifecycle(tx: Tx, event: Envelope[Any], row: store.AllocationRow, touched: dict[str, _Touched]) -> None:
    old_state = evaluate_allocation(row.facts)
    if row.allocation_id in touched:
        touched[row.allocation_id].cause = event
    else:
        touched[row.allocation_id] = _Touched(old_state, event)
    fact = fact_from_event(event.type, event.id, event.time, event.data, row.next_seq)
    row.facts.append(fact)
    row.next_seq += 1
    row.last_event_at = max(filter(None, (row.last_event_at, fact.at)))
    row.changed = True
    state = evaluate_allocation(row.facts)
    row.provision = state.provision
    row.held = state.held
    await raise_anomalies(
        tx.conn, tx.emitter, row.allocation_id, state, event.time, through=None, last_event_at=None, cause=event
    )


async def correct_hours(
    tx: Tx,
    rows: dict[str, store.AllocationRow],
    touched: dict[str, _Touched],
    terms_cache: dict[str, ContractTerms | None],
) -> None:
    """Correct the emitted hours of every allocation in ``touched`` once, from its state before the
    batch to its state now (then forget them).

    Which hours: :func:`correction_range`. The hours after the start of a window still open are
    left to its end or to the closer (:func:`deferred_from`): a late window's start and its end
    arriving in separate batches between two closes then still cost one correction per hour the
    final window changed, not an "open until now" correction of every hour and its reversal.
    Such an allocation is never idle, so the next close takes it and corrects what still waits
    before its watermark is sent.
    """
    for allocation_id in sorted(touched):
        row, item = rows[allocation_id], touched[allocation_id]
        state = evaluate_allocation(row.facts)
        if state.provision is None:
            continue
        terms = await _terms(tx.conn, state.provision.contract_id, terms_cache)
        if terms is None or row.closed_through is None:
            row.idle = False
            continue  # the closer emits everything once the contract is known / the clock moves
        hours = correction_range(item.before, state, row.closed_through)
        if hours is not None:
            start, end = hours
            await reconcile_hours(tx.conn, tx.emitter, row, state, terms, start, end, row.closed_through, item.cause)
        waiting = deferred_from(state, row.closed_through) is not None
        row.idle = _idle(state, row.closed_through) and not waiting
    touched.clear()


async def _on_contract(tx: Tx, event: Envelope[Any]) -> None:
    change = await contracts.apply_contract_event(tx.conn, SCHEMA, event)
    before, after = change.before, change.after
    if after is None or before is None or before.term_end == after.term_end:
        return  # a new contract is caught up by the closer; amendments do not change metered time
    # The term moved (termination): re-derive the already emitted hours from the earlier end.
    ends = [t for t in (before.term_end, after.term_end) if t is not None]
    start = min(ends)
    allocation_ids = await store.allocations_of_contract(tx.conn, after.contract_id)
    rows = await store.lock_allocations(tx.conn, allocation_ids, create=False)
    for row in rows.values():
        if row.closed_through is None:
            continue
        state = evaluate_allocation(row.facts)
        await reconcile_hours(tx.conn, tx.emitter, row, state, after, start - HOUR, None, row.closed_through, event)


# --- the samples consumer -----------------------------------------------------------------------------------
async def on_samples(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    totals: dict[tuple[str, str, datetime], Decimal] = defaultdict(Decimal)
    cause: dict[tuple[str, str, datetime], Envelope[Any]] = {}
    for event in events:
        key = (event.data.allocation_id, event.data.meter, sample_hour(event.time))
        totals[key] += event.data.quantity
        cause[key] = event
    # FOR SHARE on the allocations keeps the closer (FOR UPDATE) out while aggregates change.
    allocations = await store.lock_allocations(tx.conn, [k[0] for k in totals], share=True)
    late = await store.add_samples(tx.conn, [(a, m, h, q) for (a, m, h), q in sorted(totals.items())])
    by_allocation: dict[str, list[Any]] = defaultdict(list)
    for record in late:
        row = allocations[record["allocation_id"]]
        if row.closed_through is not None and record["hour_start"] + HOUR <= row.closed_through:
            by_allocation[row.allocation_id].append(record)
    for allocation_id, records in sorted(by_allocation.items()):
        provision = evaluate_allocation(allocations[allocation_id].facts).provision
        if provision is None:
            continue
        marked = []
        for r in records:
            revision = r["revision"] + 1
            record = sample_record(
                provision, allocation_id, r["meter"], r["hour_start"], revision, r["quantity"], r["emitted_quantity"]
            )
            _emit_usage(tx.emitter, record, cause[(allocation_id, r["meter"], r["hour_start"])])
            marked.append((r["meter"], r["hour_start"], r["quantity"], revision))
        await store.mark_samples_emitted(tx.conn, allocation_id, marked)


# --- the barrier: a close is a function of the input log ---------------------------------------------------
CONSUMER = "metering"
SAMPLES_CONSUMER = "metering-samples"
LIFECYCLE_INPUTS = (topics.INFRA_LIFECYCLE, topics.CONTRACTS)
"""Read by :data:`CONSUMER` (with the clock ticks)."""
SAMPLE_INPUTS = (topics.USAGE_SAMPLES,)
DOWNSTREAM_INPUTS = (topics.CONTRACTS, topics.WALLETS)
"""Inputs rating must have read before it acts on a watermark: carried on the watermark."""


def _offsets(barrier: dict[str, list[int]], inputs: Sequence[Topic]) -> dict[tuple[str, int], int]:
    return {(t.name, p): o for t in inputs for p, o in enumerate(barrier.get(t.name, [])[: t.partitions])}


async def lifecycle_holds(conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
    """While a close waits on a tick's barrier: read the lifecycle and contract partitions up to it,
    and no tick after that one, until the close is done."""
    pending = await store.pending_barrier(conn)
    if pending is None:
        return {}
    barrier, tick_offset = pending
    holds = _offsets(barrier, LIFECYCLE_INPUTS)
    if tick_offset is not None:
        holds[(topics.CLOCK_TICKS.name, 0)] = tick_offset + 1
    return holds


async def sample_holds(conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
    pending = await store.pending_barrier(conn)
    return {} if pending is None else _offsets(pending[0], SAMPLE_INPUTS)


async def barrier_reached(conn: asyncpg.Connection) -> bool:
    """True when no close waits on a barrier, or metering has read every input partition up to it."""
    pending = await store.pending_barrier(conn)
    if pending is None:
        return True
    for consumer, inputs in ((CONSUMER, LIFECYCLE_INPUTS), (SAMPLES_CONSUMER, SAMPLE_INPUTS)):
        needed = {k: o for k, o in _offsets(pending[0], inputs).items() if o > 0}
        have = await load_positions(conn, consumer, needed)
        if any(have.get(k, 0) < o for k, o in needed.items()):
            return False
    return True


# --- the closer ---------------------------------------------------------------------------------------------
async def close_chunk(conn: asyncpg.Connection, target: datetime, limit: int) -> int:
    """Emit closed hours of up to ``limit`` allocations behind ``target``; returns how many were handled."""
    rows = await store.claim_behind(conn, target, limit)
    if not rows:
        return 0
    correlation = f"tick:{format_utc(target)}"
    emitter = Emitter("metering")
    terms_by_contract = await contracts.load_many(conn, SCHEMA, sorted({r.contract_id for r in rows if r.contract_id}))
    for row in rows:
        assert row.contract_id is not None
        state = evaluate_allocation(row.facts)
        terms = terms_by_contract[row.contract_id]
        # From the hour the last close fell in: a tick inside an hour closes only the hours before it, so
        # that hour is closed now (already emitted hours are compared, not emitted again).
        start = None
        if row.closed_through is not None:
            # Hours after a late window's start waited for this close (deferred_from); correct them now.
            start = min(filter(None, (floor_hour(row.closed_through), deferred_from(state, row.closed_through))))
        await reconcile_hours(conn, emitter, row, state, terms, start, None, target, None, correlation)
        provision = state.provision
        if provision is not None:
            marked = []
            for r in await store.pending_samples(conn, row.allocation_id, target):
                revision = r["revision"] + 1
                record = sample_record(
                    provision,
                    row.allocation_id,
                    r["meter"],
                    r["hour_start"],
                    revision,
                    r["quantity"],
                    r["emitted_quantity"],
                )
                _emit_usage(emitter, record, None, correlation)
                marked.append((r["meter"], r["hour_start"], r["quantity"], revision))
            await store.mark_samples_emitted(conn, row.allocation_id, marked)
        await raise_anomalies(
            conn, emitter, row.allocation_id, state, target, through=target, last_event_at=row.last_event_at, cause=None
        )
        row.closed_through = target
        row.provision = provision
        row.idle = _idle(state, target)
        await store.save_allocation(conn, row)
    await write_outbox(conn, emitter.drain())
    return len(rows)


async def send_watermark_if_done(conn: asyncpg.Connection) -> datetime | None:
    """When no allocation is behind the target, send the watermark to every partition (once per target)."""
    target, sent = await store.clock(conn, for_update=True)
    if target is None or (sent is not None and sent >= target):
        return None
    if await store.count_behind(conn, target) > 0:
        return None
    pending = await store.pending_barrier(conn)
    downstream = barrier_offsets(pending[0] if pending is not None else None, DOWNSTREAM_INPUTS)
    emitter = Emitter("metering")
    for partition in range(topics.USAGE_METERED.partitions):
        emit_watermark(
            emitter,
            topics.USAGE_METERED,
            type="usage.watermark",
            source="metering",
            through=target,
            partition=partition,
            event_id=derive_id("watermark", "metering", format_utc(target), partition),
            cause=None,
            barrier=downstream,
            correlation_id=f"tick:{format_utc(target)}",
        )
    await write_outbox(conn, emitter.drain())
    await conn.execute("update metering.clock set watermark_sent = $1 where id = 1", target)
    # The next queued tick (if any) starts its own close: one close per tick, whatever the batching.
    while (queued := await store.pop_queued_tick(conn)) is not None:
        at, barrier, tick_offset = queued
        if at > target:
            await apply_tick(conn, at, barrier, tick_offset)
            log.info("queued clock tick applied", at=format_utc(at))
            break
    return target


async def run_closer(rt: Runtime) -> None:
    """Background task: close hours chunk by chunk, then send the watermark. Survives database outages."""
    idle_s = 0.05
    while not rt.stop.is_set():
        try:
            async with rt.pool.acquire() as conn:
                target, sent = await store.clock(conn)
                handled = 0
                # The hours behind the target close only once everything published before the tick
                # has been read (the tick's barrier): lag changes when a close runs, never what it holds.
                if target is not None and await barrier_reached(conn):
                    async with conn.transaction():
                        handled = await close_chunk(conn, target, limits.CLOSE_CHUNK_CONTRACTS)
                    if handled == 0 and (sent is None or sent < target):
                        async with conn.transaction():
                            done = await send_watermark_if_done(conn)
                        if done is not None:
                            log.info("watermark sent", through=format_utc(done))
            idle_s = 0.0 if handled else min(max(idle_s * 2, 0.05), 0.2)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("metering closer failed; retrying", error=repr(exc)[:300])
            idle_s = 1.0
        if idle_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), idle_s)
