"""``usage.metered`` → exact charges and earnings (R3, R4, R13): one signed ``charge.rated`` delta and
ONE ledger entry with both sides of the allocation-hour (see :mod:`services.rating.handlers`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from domain.contracts import chart
from domain.contracts import store as contracts_store
from domain.contracts.terms import ContractTerms
from libs.ids import derive_id
from libs.ledger import build_entry, credit, debit
from libs.times import HOUR, format_utc
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import (
    ChargeRated,
    UsageMetered,
)
from services.rating import store
from services.rating.domain import (
    ChargeDelta,
    Priced,
    exact_from_x3600,
    ledger_delta,
    period_of_hour,
    rate_revision,
    usage_state_of,
)
from services.rating.handlers.batch import ZERO, Batch
from services.rating.handlers.exposure import track_exposure

log = structlog.get_logger("settle.rating")


async def on_usage(batch: Batch, event: Envelope[Any]) -> None:
    usage: UsageMetered = event.data
    state = usage_state_of(usage)  # validated now, so held usage cannot fail when it is released
    terms = await batch.terms_of(usage.contract_id)
    if terms is None:
        await store.hold_usage(batch.tx.conn, event, contracts_store.contract_partition(usage.contract_id))
        return
    previous = await batch.priced((usage.allocation_id, usage.meter, usage.hour_start))
    if previous is not None and usage.revision <= previous.revision:
        # Metering emits an hour's revisions in order on one partition: an older revision arriving
        # after a newer one was priced carries a state that is already superseded.
        log.info(
            "stale usage revision skipped",
            usage_id=usage.usage_id,
            revision=usage.revision,
            priced_revision=previous.revision,
        )
        return
    delta = rate_revision(None if previous is None else previous.priced, state, terms)
    batch.save_priced(
        store.PricedHour(
            usage.allocation_id,
            usage.meter,
            usage.hour_start,
            usage.contract_id,
            usage.renter_id,
            usage.supplier_id,
            usage.usage_id,
            usage.revision,
            state,
            delta.priced,
        ),
    )
    await book_charge(
        batch,
        terms,
        event,
        charge_id=derive_id("charge", usage.usage_id),
        hour=HourRef(
            usage.allocation_id,
            usage.meter,
            usage.hour_start,
            usage.supplier_id,
            usage.usage_id,
            usage.revision,
        ),
        delta=delta,
        previous=None if previous is None else previous.priced,
        usage_deltas=(
            usage.delta_provisioned_gpu_seconds,
            usage.delta_billable_gpu_seconds,
            usage.delta_maintenance_gpu_seconds,
            usage.delta_outage_gpu_seconds,
            usage.delta_quantity,
        ),
    )


@dataclass(frozen=True)
class HourRef:
    allocation_id: str
    meter: str
    hour_start: datetime
    supplier_id: str
    usage_id: str
    revision: int


NO_USAGE_CHANGE = (0, 0, 0, 0, ZERO)


async def book_charge(
    batch: Batch,
    terms: ContractTerms,
    cause: Envelope[Any],
    *,
    charge_id: str,
    hour: HourRef,
    delta: ChargeDelta,
    previous: Priced | None,
    usage_deltas: tuple[int, int, int, int, Decimal],
) -> None:
    """Emit one ``charge.rated`` delta, post its ledger entry and feed the wallet or the exposure."""
    currency = terms.currency
    period_start, period_end = period_of_hour(terms, hour.hour_start)
    at = hour.hour_start + HOUR
    provisioned, billable, maintenance, outage, quantity = usage_deltas
    batch.tx.emit(
        topics.CHARGES_RATED,
        key=terms.contract_id,
        type="charge.rated",
        time=at,
        cause=cause,
        event_id=charge_id,
        data=ChargeRated(
            charge_id=charge_id,
            usage_id=hour.usage_id,
            allocation_id=hour.allocation_id,
            contract_id=terms.contract_id,
            renter_id=terms.renter_id,
            supplier_id=hour.supplier_id,
            meter=hour.meter,
            hour_start=hour.hour_start,
            revision=hour.revision,
            currency=currency,
            billing_mode=terms.billing_mode,
            period_start=period_start,
            period_end=period_end,
            delta_provisioned_gpu_seconds=provisioned,
            delta_billable_gpu_seconds=billable,
            delta_maintenance_gpu_seconds=maintenance,
            delta_outage_gpu_seconds=outage,
            delta_quantity=quantity,
            charge_x3600=delta.charge_x3600,
            earning_x3600=delta.earning_x3600,
            price_versions=list(delta.versions),
        ),
    )
    before = previous if previous is not None else Priced(ZERO, ZERO, ())
    # Telescoping accruals: the hour's ledger amount is always round_ledger(its exact total).
    charge_units = -ledger_delta(
        exact_from_x3600(before.charge_x3600), exact_from_x3600(delta.priced.charge_x3600), currency
    )
    earning_units = -ledger_delta(
        exact_from_x3600(before.earning_x3600), exact_from_x3600(delta.priced.earning_x3600), currency
    )
    receivable, revenue, cost, payable = batch.use(
        chart.unbilled_receivable(terms.renter_id, currency),
        chart.unbilled_revenue(currency),
        chart.cost_of_revenue(currency),
        chart.payable_accrued(hour.supplier_id, currency),
    )
    batch.tx.post(
        build_entry(
            id=derive_id("entry", "rating.charge", charge_id),
            cause_id=charge_id,
            kind="rating.charge",
            occurred_at=at,
            correlation_id=cause.correlationid,
            description=(f"{hour.allocation_id} {hour.meter} {format_utc(hour.hour_start)} revision {hour.revision}"),
            postings=[
                debit(receivable, charge_units, currency),
                credit(revenue, charge_units, currency),
                debit(cost, earning_units, currency),
                credit(payable, earning_units, currency),
            ],
        )
    )
    if delta.charge_x3600.is_zero():
        return
    postpaid = terms.billing_mode == "postpaid"
    # R9 counts as uninvoiced only the charges of periods without a finalized invoice.
    invoiced = postpaid and await batch.period_invoiced(terms.contract_id, period_start)
    row = store.ChargeRow(
        charge_id,
        terms.contract_id,
        hour.allocation_id,
        hour.meter,
        hour.hour_start,
        at,
        period_start,
        period_end,
        terms.billing_mode,
        delta.charge_x3600,
        delta.earning_x3600,
    )
    batch.insert_charge(row, invoiced=invoiced)
    if postpaid and not invoiced:
        await track_exposure(
            batch,
            terms.contract_id,
            terms,
            cause,
            delta.charge_x3600,
            ZERO,
            at=at,
            limit_at=hour.hour_start,
            trigger_id=charge_id,
        )
