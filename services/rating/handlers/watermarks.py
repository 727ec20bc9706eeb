"""``usage.watermark(T, p)``: run the prepaid wallets of partition p, then forward
``charges.watermark(T, p)`` (KERNEL.md); operator paths that rate held usage or forward ungated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from domain.contracts import store as contracts_store
from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.messaging.consume import Tx
from libs.times import format_utc
from schemas import topics
from schemas.barrier import barrier_offsets, emit_watermark
from schemas.envelope import Envelope
from schemas.events import (
    Watermark,
)
from services.rating import store
from services.rating.handlers.batch import Batch, watermark_partition
from services.rating.handlers.exposure import track_exposure
from services.rating.handlers.usage import on_usage
from services.rating.handlers.wallets import run_wallet

FORWARDED_BARRIER = (topics.CONTRACTS,)
"""What invoicing must read before it closes on the forwarded watermark."""


async def on_watermark(batch: Batch, event: Envelope[Any]) -> None:
    mark: Watermark = event.data
    partition = watermark_partition(event)
    row = await store.load_watermark(batch.tx.conn, partition)
    if row is not None and mark.through <= row.received_through:
        return  # watermarks only move forward
    after = None if row is None else row.received_through
    await check_limits_taking_effect(batch, partition, after, mark.through, event)
    await store.save_received(batch.tx.conn, partition, mark.through, barrier_offsets(mark.barrier, FORWARDED_BARRIER))
    await forward_watermark(batch, partition, event)


async def check_limits_taking_effect(
    batch: Batch, partition: int, after: datetime | None, through: datetime, cause: Envelope[Any]
) -> None:
    """R9 for a limit amended ahead of time: when the usage watermark passes the instant a credit-limit
    version takes effect, the exposure is checked against it as a movement of zero at that instant — a
    contract with no usage after it would otherwise never be alerted (the amendment itself was checked
    against the limit in force when it arrived). Alerting only on a crossing, a limit the exposure already
    crossed, or one checked at its amendment, fires nothing again. The versions were read, and their
    contracts locked, with the batch (:func:`read_limits_taking_effect`)."""
    for contract_id, at in batch.limits.get(partition, []):
        if (after is not None and at <= after) or at > through:
            continue
        await track_exposure(
            batch,
            contract_id,
            await batch.terms_of(contract_id),
            cause,
            Decimal(0),
            Decimal(0),
            at=at,
            limit_at=at,
            trigger_id=derive_id("limit_in_force", contract_id, format_utc(at)),
        )


async def read_limits_taking_effect(batch: Batch, marks: Sequence[Envelope[Any]]) -> set[str]:
    """Read into ``batch.limits`` the credit-limit versions these usage watermarks pass (from each
    partition's stored watermark to the batch's latest); returns their contracts, to lock with the batch's
    others."""
    upto: dict[int, datetime] = {}
    for mark in marks:
        partition = watermark_partition(mark)
        upto[partition] = max(upto.get(partition, mark.data.through), mark.data.through)
    conn = batch.tx.conn
    for partition, through in sorted(upto.items()):
        row = await store.load_watermark(conn, partition)
        if row is not None and through <= row.received_through:
            continue
        after = None if row is None else row.received_through
        batch.limits[partition] = await store.limits_taking_effect(conn, partition, after, through)
    return {c for versions in batch.limits.values() for c, _ in versions}


async def forward_watermark(batch: Batch, partition: int, cause: Envelope[Any]) -> None:
    """Forward the partition's latest received watermark unless usage is held for it (KERNEL.md):
    first every prepaid wallet of the partition runs up to it, so its draws precede it on the topic."""
    await batch.flush()  # the wallet run reads the charges booked before it
    row = await store.load_watermark(batch.tx.conn, partition)
    if row is None or (row.forwarded_through is not None and row.forwarded_through >= row.received_through):
        return
    if await store.held_usage_count(batch.tx.conn, partition) > 0:
        return
    through = row.received_through
    for contract_id in await store.prepaid_contracts(batch.tx.conn, [partition]):
        await run_wallet(batch, contract_id, through, cause)
    emit_watermark(
        batch.tx.emitter,
        topics.CHARGES_RATED,
        type="charges.watermark",
        source="rating",
        through=through,
        partition=partition,
        event_id=derive_id("charges.watermark", partition, format_utc(through)),
        cause=cause,
        barrier=row.received_barrier,
    )
    await store.save_forwarded(batch.tx.conn, partition, through)


async def forward_ungated(tx: Tx, partition: int, cause: Envelope[Any]) -> None:
    """Forward the partition's watermark after an operator dropped or released the usage that gated it
    (:mod:`services.operations.held`). The caller holds the locks a watermark batch takes
    (:func:`store.lock_batch`: the partition, then its prepaid contracts)."""
    batch = Batch(tx)
    await forward_watermark(batch, partition, cause)
    await batch.flush()
    await ensure_accounts(tx.conn, batch.accounts.values())


async def rate_held_now(tx: Tx, contract_id: str, cause: Envelope[Any]) -> int:
    """Rate the usage held for a contract rating knows now (an operator's release), then forward its
    partition's watermark. Returns how many held records were rated. Locks as for a contract event."""
    batch = Batch(tx)
    released = await store.take_held_usage(tx.conn, contract_id)
    for held in released:
        await on_usage(batch, held)
    await forward_watermark(batch, contracts_store.contract_partition(contract_id), cause)
    await batch.flush()
    await ensure_accounts(tx.conn, batch.accounts.values())
    return len(released)
