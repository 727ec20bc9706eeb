"""What documents already carried for an invoiced period: the base a late correction is measured
against (R3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.invoicing.store.tables import SCHEMA


@dataclass(frozen=True)
class CarriedPeriod:
    """What documents already carried for one invoiced period (the base of a late correction)."""

    usage_x3600: Decimal
    provisioned_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    true_up_minor: int
    sla_credit_minor: int
    allocation_outages: dict[tuple[str, str], int]
    """(allocation, supplier) → outage GPU-seconds of the period: carried + the given open charges."""
    charged_back: dict[tuple[str, str], int]
    """(allocation, supplier) → Σ chargebacks passed on for the period (≤ 0 as on statements)."""


async def carried_periods(
    conn: asyncpg.Connection,
    contract_id: str,
    period_starts: Sequence[datetime],
    open_charge_ids: Sequence[str],
) -> dict[datetime, CarriedPeriod]:
    if not period_starts:
        return {}
    starts = sorted(set(period_starts))
    totals = {
        r["period_start"]: r
        for r in await conn.fetch(
            f"""select period_start, coalesce(sum(charge_x3600), 0) as usage_x3600,
                       coalesce(sum(provisioned_gpu_seconds), 0) as provisioned,
                       coalesce(sum(maintenance_gpu_seconds), 0) as maintenance,
                       coalesce(sum(outage_gpu_seconds), 0) as outage
                  from {SCHEMA}.charges
                 where contract_id = $1 and period_start = any($2) and document_id is not null
                 group by period_start""",
            contract_id,
            starts,
        )
    }
    billed = {
        r["period_start"]: r
        for r in await conn.fetch(
            f"""select period_start, true_up_minor, sla_credit_minor from {SCHEMA}.periods
                 where contract_id = $1 and period_start = any($2)""",
            contract_id,
            starts,
        )
    }
    outages: dict[datetime, dict[tuple[str, str], int]] = {s: {} for s in starts}
    for r in await conn.fetch(
        f"""select period_start, allocation_id, supplier_id, sum(outage_gpu_seconds) as outage
              from {SCHEMA}.charges
             where contract_id = $1 and period_start = any($2)
               and (document_id is not null or charge_id = any($3))
             group by period_start, allocation_id, supplier_id""",
        contract_id,
        starts,
        list(open_charge_ids),
    ):
        outages[r["period_start"]][(r["allocation_id"], r["supplier_id"])] = int(r["outage"])
    backs: dict[datetime, dict[tuple[str, str], int]] = {s: {} for s in starts}
    for r in await conn.fetch(
        f"""select period_start, allocation_id, supplier_id, sum(amount_minor) as amount_minor
              from {SCHEMA}.chargebacks where contract_id = $1 and period_start = any($2)
             group by period_start, allocation_id, supplier_id""",
        contract_id,
        starts,
    ):
        backs[r["period_start"]][(r["allocation_id"], r["supplier_id"])] = int(r["amount_minor"])
    result: dict[datetime, CarriedPeriod] = {}
    for start in starts:
        t = totals.get(start)
        b = billed.get(start)
        result[start] = CarriedPeriod(
            usage_x3600=Decimal(t["usage_x3600"]) if t else Decimal(0),
            provisioned_gpu_seconds=int(t["provisioned"]) if t else 0,
            maintenance_gpu_seconds=int(t["maintenance"]) if t else 0,
            outage_gpu_seconds=int(t["outage"]) if t else 0,
            true_up_minor=int(b["true_up_minor"]) if b else 0,
            sla_credit_minor=int(b["sla_credit_minor"]) if b else 0,
            allocation_outages=outages[start],
            charged_back=backs[start],
        )
    return result
