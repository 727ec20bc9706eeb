"""The projection of ``contracts.v1`` that metering, rating and invoicing each keep in their own schema.

Table ``<schema>.contracts``: the current :class:`ContractTerms` as JSON plus the partition its key
maps to. Amendments or terminations that arrive before their contract are held in
``<schema>.contract_events_held`` and applied, in event order (CloudEvents ``time``, then ``id``: the
same in every service's projection), when the contract arrives.

Both tables are created by each service's own migration (``libs/db/migrations/0010_metering.sql``,
``0020_rating.sql``, ``0030_invoicing.sql``); migrations are checksummed and never edited, so the three
copies stay copies, and ``tests/integration/test_contract_projection.py`` fails when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import asyncpg

from domain.contracts.build import amend_terms, terminate_terms, terms_from_created
from domain.contracts.terms import ContractTerms, FieldChanges, PricedFields, SlaTierTerms, TermsVersion
from libs.messaging.partitioner import partition_for
from libs.times import format_utc, parse_utc
from schemas.envelope import Envelope
from schemas.inputs import ContractAmended, ContractCreated, ContractTerminated
from schemas.topics import CONTRACTS, PIPELINE_PARTITIONS


def contract_partition(contract_id: str) -> int:
    """The partition of usage.metered.v1 / charges.rated.v1 that owns a contract (they are aligned)."""
    return partition_for(contract_id.encode(), PIPELINE_PARTITIONS)


# --- JSON codec of ContractTerms (exact: decimals and times as strings) ----------------------------------
def _dec(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _fields_json(fields: PricedFields) -> dict[str, Any]:
    return {
        "price_per_gpu_hour": _dec(fields.price_per_gpu_hour),
        "supplier_rate_per_gpu_hour": _dec(fields.supplier_rate_per_gpu_hour),
        "commitment_per_period": _dec(fields.commitment_per_period),
        "credit_limit": _dec(fields.credit_limit),
        "sla_tiers": [[_dec(t.below_uptime), _dec(t.credit_percent)] for t in fields.sla_tiers],
        "tax_rate": _dec(fields.tax_rate),
        "meter_prices": {k: _dec(v) for k, v in sorted(fields.meter_prices.items())},
    }


def _changes_json(c: FieldChanges) -> dict[str, Any]:
    return {
        "price_per_gpu_hour": _dec(c.price_per_gpu_hour),
        "supplier_rate_per_gpu_hour": _dec(c.supplier_rate_per_gpu_hour),
        "commitment_per_period": _dec(c.commitment_per_period),
        "credit_limit": _dec(c.credit_limit),
        "credit_limit_set": c.credit_limit_set,
        "sla_tiers": None
        if c.sla_tiers is None
        else [[_dec(t.below_uptime), _dec(t.credit_percent)] for t in c.sla_tiers],
        "tax_rate": _dec(c.tax_rate),
        "meter_prices": None if c.meter_prices is None else {k: _dec(v) for k, v in sorted(c.meter_prices.items())},
    }


def terms_to_json(terms: ContractTerms) -> dict[str, Any]:
    return {
        "contract_id": terms.contract_id,
        "renter_id": terms.renter_id,
        "currency": terms.currency,
        "billing_mode": terms.billing_mode,
        "starts_at": format_utc(terms.starts_at),
        "ends_at": None if terms.ends_at is None else format_utc(terms.ends_at),
        "billing_anchor_day": terms.billing_anchor_day,
        "payment_terms_days": terms.payment_terms_days,
        "base": _fields_json(terms.base),
        "amendments": [
            {
                "version": v.version,
                "effective_at": format_utc(v.effective_at),
                "event_id": v.event_id,
                "changes": _changes_json(v.changes),
            }
            for v in terms.amendments
        ],
        "terminated_at": None if terms.terminated_at is None else format_utc(terms.terminated_at),
    }


def _d(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _tiers(rows: list[list[str]]) -> tuple[SlaTierTerms, ...]:
    return tuple(SlaTierTerms(Decimal(a), Decimal(b)) for a, b in rows)


def terms_from_json(doc: dict[str, Any]) -> ContractTerms:
    base = doc["base"]
    return ContractTerms(
        contract_id=doc["contract_id"],
        renter_id=doc["renter_id"],
        currency=doc["currency"],
        billing_mode=doc["billing_mode"],
        starts_at=parse_utc(doc["starts_at"]),
        ends_at=None if doc["ends_at"] is None else parse_utc(doc["ends_at"]),
        billing_anchor_day=doc["billing_anchor_day"],
        payment_terms_days=doc["payment_terms_days"],
        base=PricedFields(
            price_per_gpu_hour=Decimal(base["price_per_gpu_hour"]),
            supplier_rate_per_gpu_hour=Decimal(base["supplier_rate_per_gpu_hour"]),
            commitment_per_period=Decimal(base["commitment_per_period"]),
            credit_limit=_d(base["credit_limit"]),
            sla_tiers=_tiers(base["sla_tiers"]),
            tax_rate=Decimal(base["tax_rate"]),
            meter_prices=MappingProxyType({k: Decimal(v) for k, v in base["meter_prices"].items()}),
        ),
        amendments=tuple(
            TermsVersion(
                version=a["version"],
                effective_at=parse_utc(a["effective_at"]),
                event_id=a["event_id"],
                changes=FieldChanges(
                    price_per_gpu_hour=_d(a["changes"]["price_per_gpu_hour"]),
                    supplier_rate_per_gpu_hour=_d(a["changes"]["supplier_rate_per_gpu_hour"]),
                    commitment_per_period=_d(a["changes"]["commitment_per_period"]),
                    credit_limit=_d(a["changes"]["credit_limit"]),
                    credit_limit_set=a["changes"]["credit_limit_set"],
                    sla_tiers=None if a["changes"]["sla_tiers"] is None else _tiers(a["changes"]["sla_tiers"]),
                    tax_rate=_d(a["changes"]["tax_rate"]),
                    meter_prices=None
                    if a["changes"]["meter_prices"] is None
                    else MappingProxyType({k: Decimal(v) for k, v in a["changes"]["meter_prices"].items()}),
                ),
            )
            for a in doc["amendments"]
        ),
        terminated_at=None if doc["terminated_at"] is None else parse_utc(doc["terminated_at"]),
    )


# --- the store -------------------------------------------------------------------------------------------------
async def load_terms(
    conn: asyncpg.Connection, schema: str, contract_id: str, *, for_update: bool = False
) -> ContractTerms | None:
    row = await conn.fetchrow(
        f"select terms from {schema}.contracts where contract_id = $1" + (" for update" if for_update else ""),
        contract_id,
    )
    return None if row is None else terms_from_json(row["terms"])


async def load_many(conn: asyncpg.Connection, schema: str, contract_ids: list[str]) -> dict[str, ContractTerms]:
    rows = await conn.fetch(
        f"select contract_id, terms from {schema}.contracts where contract_id = any($1)", contract_ids
    )
    return {r["contract_id"]: terms_from_json(r["terms"]) for r in rows}


async def save_terms(conn: asyncpg.Connection, schema: str, terms: ContractTerms) -> None:
    await conn.execute(
        f"""insert into {schema}.contracts (contract_id, renter_id, currency, billing_mode, partition, terms)
            values ($1, $2, $3, $4, $5, $6)
            on conflict (contract_id) do update set terms = excluded.terms, updated_at = now()""",
        terms.contract_id,
        terms.renter_id,
        terms.currency,
        terms.billing_mode,
        contract_partition(terms.contract_id),
        terms_to_json(terms),
    )


@dataclass(frozen=True)
class ContractChange:
    """The effect of one contracts.v1 event on the projection (``before`` is None for a creation)."""

    contract_id: str
    before: ContractTerms | None
    after: ContractTerms | None
    """None when the event was held (its contract is not known yet)."""
    event: Envelope[Any]
    released: tuple[Envelope[Any], ...] = ()
    """Held events applied because their contract arrived with this event."""


def _apply(terms: ContractTerms | None, event_id: str, data: Any) -> ContractTerms | None:
    if isinstance(data, ContractCreated):
        return terms if terms is not None else terms_from_created(event_id, data)
    if terms is None:
        return None
    if isinstance(data, ContractAmended):
        return amend_terms(terms, event_id, data)
    if isinstance(data, ContractTerminated):
        return terminate_terms(terms, data)
    raise AssertionError(f"not a contracts.v1 model: {type(data).__name__}")


async def apply_contract_event(conn: asyncpg.Connection, schema: str, event: Envelope[Any]) -> ContractChange:
    """Apply one contracts.v1 event (created/amended/terminated) to the projection, under a row lock.

    A second ``contract.created`` for a known contract changes nothing (the first one wins; the
    platform amends contracts with ``contract.amended``).
    """
    data = event.data
    contract_id = data.contract_id
    before = await load_terms(conn, schema, contract_id, for_update=True)
    after = _apply(before, event.id, data)
    if after is None:
        await conn.execute(
            f"""insert into {schema}.contract_events_held (event_id, contract_id, type, time, data)
                values ($1, $2, $3, $4, $5) on conflict do nothing""",
            event.id,
            contract_id,
            event.type,
            event.time,
            data.model_dump(mode="json"),
        )
        return ContractChange(contract_id, before, None, event)
    released: list[Envelope[Any]] = []
    if before is None:
        for row in await conn.fetch(
            f"""delete from {schema}.contract_events_held where contract_id = $1
                returning event_id, type, time, data, held_at""",
            contract_id,
        ):
            model = CONTRACTS.model_for(row["type"])
            assert model is not None
            held = Envelope[Any](
                id=row["event_id"],
                source="/held",
                type=row["type"],
                time=row["time"],
                data=model.model_validate(row["data"]),
            )
            released.append(held)
        released.sort(key=lambda e: (e.time, e.id))
        for held in released:
            applied = _apply(after, held.id, held.data)
            assert applied is not None
            after = applied
    if after != before:
        await save_terms(conn, schema, after)
    return ContractChange(contract_id, before, after, event, tuple(released))
