"""``contract.*``: the projection, usage held for an unknown contract, late amendments and
terminations re-pricing the stored hours they affect (R4)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from domain.contracts import store as contracts_store
from domain.contracts.terms import ContractTerms
from libs.ids import derive_id
from schemas.envelope import Envelope
from services.rating import store
from services.rating.domain import (
    affected_since,
    rate_revision,
    reprice_needed,
)
from services.rating.handlers.batch import Batch
from services.rating.handlers.exposure import track_exposure
from services.rating.handlers.usage import NO_USAGE_CHANGE, HourRef, book_charge, on_usage
from services.rating.handlers.wallets import release_topups
from services.rating.handlers.watermarks import forward_watermark


async def on_contract(batch: Batch, event: Envelope[Any]) -> None:
    change = await contracts_store.apply_contract_event(batch.tx.conn, store.SCHEMA, event)
    if change.after is None:
        return  # an amendment or termination before its contract: held by the projection
    batch.terms[change.contract_id] = change.after
    if change.before is None:
        await release_topups(batch, change.after, event)
        for held in await store.take_held_usage(batch.tx.conn, change.contract_id):
            await on_usage(batch, held)
        await forward_watermark(batch, contracts_store.contract_partition(change.contract_id), event)
    elif change.after != change.before:
        await _reprice(batch, change.before, change.after, event)
        if change.after.billing_mode == "postpaid":
            await _recheck_limit(batch, change.after, event)


async def _recheck_limit(batch: Batch, terms: ContractTerms, event: Envelope[Any]) -> None:
    """R9 at an amendment: a limit lowered below the exposure is a crossing now (alert and suspend
    request, at the amendment's time), not at the exposure's next movement — a contract with no more
    usage would otherwise never be alerted. A limit raised above it re-arms the alert. The limit in force
    at the amendment's time decides: one that takes effect later is checked when the usage watermark
    passes that moment (``watermarks.check_limits_taking_effect``), or by a movement after it."""
    await track_exposure(
        batch,
        terms.contract_id,
        terms,
        event,
        Decimal(0),
        Decimal(0),
        at=event.time,
        limit_at=event.time,
        trigger_id=derive_id("limit_amended", event.id),
    )


async def _reprice(batch: Batch, before: ContractTerms, after: ContractTerms, event: Envelope[Any]) -> None:
    """Re-price the stored hours a late amendment or termination changes; emit the deltas."""
    since = affected_since(before, after)
    if since is None:
        return
    await batch.flush()  # re-price what is stored, including this batch's usage
    for hour in await store.priced_hours_ending_after(batch.tx.conn, after.contract_id, since):
        if not reprice_needed(before, after, hour.hour_start, meter=hour.meter):
            continue
        delta = rate_revision(hour.priced, hour.state, after)
        if delta.priced == hour.priced:
            continue
        batch.save_priced(replace(hour, priced=delta.priced))
        if delta.charge_x3600.is_zero() and delta.earning_x3600.is_zero():
            continue  # same money (e.g. only the version numbers moved): nothing to tell anyone
        await book_charge(
            batch,
            after,
            event,
            charge_id=derive_id("charge", hour.usage_id, "reprice", event.id),
            hour=HourRef(
                hour.allocation_id,
                hour.meter,
                hour.hour_start,
                hour.supplier_id,
                hour.usage_id,
                hour.revision,
            ),
            delta=delta,
            previous=hour.priced,
            usage_deltas=NO_USAGE_CHANGE,
        )
