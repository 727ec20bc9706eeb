"""invoicing's consumer: record what arrives, never close here.

``charges.rated.v1`` and ``contracts.v1`` in one consumer group ("invoicing"):

* ``charge.rated`` / ``wallet.drawn`` are stored until a document carries them, with what rating
  accrued in the ledger for each charge (``round_ledger`` of the exact amount). One that arrives
  after its period's end was passed by its partition's watermark is *late* (R3): its contract is
  queued in ``late_work`` (a credit note may be due when no later invoice will come).
* ``charges.watermark`` is recorded (forward moves only). The period close itself runs in the
  background closer (:mod:`services.invoicing.closer`), in chunks, so a first-of-month close never
  blocks this consumer and never holds one giant transaction.
* ``contracts.v1`` updates the service's projection; a newly known contract gets its close progress
  row (first period of its term), remembering the partition's watermark at arrival.

Deterministic: lateness is decided by the order of records on the partition (a watermark on
partition p follows every charge written to p before it), never by the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from fractions import Fraction
from typing import Any

from domain.contracts.periods import period_containing
from domain.contracts.store import apply_contract_event, contract_partition
from libs.errors import DomainRuleError
from libs.messaging.consume import Subscription, Tx
from libs.money import round_ledger
from schemas import topics
from schemas.barrier import watermark_waits
from schemas.envelope import Envelope
from schemas.events import ChargeRated, WalletDrawn, Watermark
from services.invoicing import store
from services.invoicing.statements import month_of

CONSUMER = "invoicing"


def _late_through(marks: dict[int, datetime], contract_id: str, period_end: datetime) -> datetime | None:
    """The watermark that already passed ``period_end`` on the contract's partition (None: on time)."""
    mark = marks.get(contract_partition(contract_id))
    return mark if mark is not None and period_end <= mark else None


def _charge_row(event: Envelope[Any], data: ChargeRated, late: bool) -> store.ChargeRow:
    return store.ChargeRow(
        charge_id=data.charge_id,
        event_id=event.id,
        contract_id=data.contract_id,
        renter_id=data.renter_id,
        supplier_id=data.supplier_id,
        allocation_id=data.allocation_id,
        currency=data.currency,
        meter=data.meter,
        hour_start=data.hour_start,
        period_start=data.period_start,
        period_end=data.period_end,
        charge_x3600=data.charge_x3600,
        earning_x3600=data.earning_x3600,
        # What rating posted for this charge (chart docstring): the accrual rounding point.
        accrued_units=round_ledger(Fraction(data.charge_x3600) / 3600, data.currency),
        earning_units=round_ledger(Fraction(data.earning_x3600) / 3600, data.currency),
        provisioned_gpu_seconds=data.delta_provisioned_gpu_seconds,
        billable_gpu_seconds=data.delta_billable_gpu_seconds,
        maintenance_gpu_seconds=data.delta_maintenance_gpu_seconds,
        outage_gpu_seconds=data.delta_outage_gpu_seconds,
        late=late,
    )


def _draw_row(event: Envelope[Any], data: WalletDrawn, late: bool) -> store.DrawRow:
    return store.DrawRow(
        draw_id=data.draw_id,
        event_id=event.id,
        contract_id=data.contract_id,
        currency=data.currency,
        period_start=data.period_start,
        period_end=data.period_end,
        drawn_x3600=data.drawn_x3600,
        reason=data.reason,
        at=data.at,
        late=late,
    )


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    conn = tx.conn
    marks = await store.current_watermarks(conn)
    new_marks: list[tuple[int, datetime]] = []
    charges: list[store.ChargeRow] = []
    draws: list[store.DrawRow] = []
    late: dict[str, datetime] = {}
    pending: set[tuple[str, str, str]] = set()

    def note_late(contract_id: str, through: datetime | None) -> bool:
        if through is None:
            return False
        late[contract_id] = max(late.get(contract_id, through), through)
        return True

    for event in events:
        data = event.data
        if isinstance(data, Watermark):
            if not 0 <= data.partition < topics.CHARGES_RATED.partitions:
                raise DomainRuleError(
                    f"watermark for partition {data.partition}: {topics.CHARGES_RATED.name} has "
                    f"{topics.CHARGES_RATED.partitions}"
                )
            current = marks.get(data.partition)
            if current is None or data.through > current:  # watermarks only move forward
                marks[data.partition] = data.through
                new_marks.append((data.partition, data.through))
        elif isinstance(data, ChargeRated):
            is_late = note_late(data.contract_id, _late_through(marks, data.contract_id, data.period_end))
            charges.append(_charge_row(event, data, is_late))
            pending.add((data.supplier_id, data.currency, month_of(data.hour_start)))
        elif isinstance(data, WalletDrawn):
            is_late = note_late(data.contract_id, _late_through(marks, data.contract_id, data.period_end))
            draws.append(_draw_row(event, data, is_late))
        else:
            change = await apply_contract_event(conn, store.SCHEMA, event)
            if change.before is None and change.after is not None:
                terms = change.after
                term_end = terms.term_end
                first = period_containing(terms.billing_anchor_day, terms.starts_at)
                has_period = term_end is None or term_end > terms.starts_at
                partition = contract_partition(terms.contract_id)
                await store.ensure_contract_state(
                    conn, terms.contract_id, partition, first if has_period else None, marks.get(partition)
                )

    # Lock order (store module doc): late_work, then supplier_pending, each in key order.
    await store.insert_charges(conn, charges)
    await store.insert_draws(conn, draws)
    await store.mark_late(conn, late)
    await store.mark_supplier_pending(conn, pending)
    await store.record_watermarks(conn, new_marks)


SUBSCRIPTION = Subscription(
    consumer=CONSUMER,
    topics=(topics.CHARGES_RATED, topics.CONTRACTS),
    handler=on_batch,
    batch_max=1000,
    # A period closes on a charges watermark only once contracts are read up to its tick's barrier.
    waits=watermark_waits(topics.CHARGES_RATED, "charges.watermark", (topics.CONTRACTS,)),
    # Charges of a contract behind a dead-lettered charge wait; a bad contract event holds nothing (event time).
    hold_topics=frozenset({topics.CHARGES_RATED.name}),
)
