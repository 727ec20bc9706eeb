"""Close progress per contract: which contracts are due, their next period, finalization instants,
blocked closes (:mod:`services.invoicing.closer`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.invoicing.store.tables import SCHEMA


async def ensure_contract_state(
    conn: asyncpg.Connection,
    contract_id: str,
    partition: int,
    first_period: tuple[datetime, datetime] | None,
    arrived_through: datetime | None,
) -> None:
    """Create the close progress of a newly known contract (an existing row is left alone)."""
    await conn.execute(
        f"""insert into {SCHEMA}.contract_state
                (contract_id, partition, next_period_start, next_close_at, arrived_through)
            values ($1, $2, $3, $4, $5) on conflict (contract_id) do nothing""",
        contract_id,
        partition,
        first_period[0] if first_period else None,
        first_period[1] if first_period else None,
        arrived_through,
    )


@dataclass(frozen=True)
class ContractState:
    contract_id: str
    partition: int
    next_period_start: datetime | None
    next_close_at: datetime | None
    arrived_through: datetime | None
    invoiced_through: datetime | None
    last_invoice_number: str | None
    credit_carried_minor: int
    credit_notes_issued: int


_STATE_COLUMNS = """s.contract_id, s.partition, s.next_period_start, s.next_close_at, s.arrived_through,
    s.invoiced_through, s.last_invoice_number, s.credit_carried_minor, s.credit_notes_issued"""


def _state(row: asyncpg.Record) -> ContractState:
    return ContractState(
        contract_id=row["contract_id"],
        partition=int(row["partition"]),
        next_period_start=row["next_period_start"],
        next_close_at=row["next_close_at"],
        arrived_through=row["arrived_through"],
        invoiced_through=row["invoiced_through"],
        last_invoice_number=row["last_invoice_number"],
        credit_carried_minor=int(row["credit_carried_minor"]),
        credit_notes_issued=int(row["credit_notes_issued"]),
    )


_DUE_CONTRACTS = f"""{SCHEMA}.contract_state s
      join unnest($1::int[], $2::timestamptz[]) as w(partition, through) on w.partition = s.partition
     where s.next_close_at <= w.through and s.blocked_reason is null"""
"""The closer's pending work, part one: contracts (``s``) with a period ending at or before their
partition's watermark (``$1`` partitions, ``$2`` their watermarks), quarantined ones excluded.
:func:`pick_contracts` locks them and :func:`count_pending_closes` counts them — one predicate."""

_LATE_CONTRACTS = f"""{SCHEMA}.contract_state s
      join {SCHEMA}.late_work l on l.contract_id = s.contract_id
     where s.blocked_reason is null"""
"""The closer's pending work, part two: contracts (``s``) with late charges to place (a ``late_work``
row), quarantined ones excluded. Shared by :func:`pick_contracts` and :func:`count_pending_closes`."""


async def count_pending_closes(conn: asyncpg.Connection, watermarks: dict[int, datetime]) -> int:
    """How many contract closes the closer owes: due periods plus contracts with late work (a contract
    with both counts twice, as the closer handles the two in separate picks)."""
    parts = sorted(watermarks)
    due = await conn.fetchval(f"select count(*) from {_DUE_CONTRACTS}", parts, [watermarks[p] for p in parts])
    late = await conn.fetchval(f"select count(*) from {_LATE_CONTRACTS}")
    return int(due) + int(late)


async def pick_contracts(
    conn: asyncpg.Connection, watermarks: dict[int, datetime], limit: int, only: Sequence[str] | None = None
) -> list[ContractState]:
    """Lock (``skip locked``: another worker keeps its own) up to ``limit`` contracts with work: a period
    ending at or before their partition's watermark, or late charges to look at. Sorted by id."""
    parts = sorted(watermarks)
    due = await conn.fetch(
        f"""select {_STATE_COLUMNS} from {_DUE_CONTRACTS}
               and ($4::text[] is null or s.contract_id = any($4))
             order by s.contract_id limit $3
               for update of s skip locked""",
        parts,
        [watermarks[p] for p in parts],
        limit,
        only,
    )
    picked = [_state(r) for r in due]
    if len(picked) < limit:
        late = await conn.fetch(
            f"""select {_STATE_COLUMNS} from {_LATE_CONTRACTS}
                   and not (s.contract_id = any($2::text[]))
                   and ($3::text[] is null or s.contract_id = any($3))
                 order by s.contract_id limit $1
                   for update of s skip locked""",
            limit - len(picked),
            [s.contract_id for s in picked],
            only,
        )
        picked += [_state(r) for r in late]
    picked.sort(key=lambda s: s.contract_id)
    return picked


async def take_late_work(conn: asyncpg.Connection, contract_ids: Sequence[str]) -> dict[str, datetime]:
    """Delete the late-work rows of these contracts BEFORE their charges are read (see mark_late)."""
    if not contract_ids:
        return {}
    rows = await conn.fetch(
        f"""with locked as (select contract_id from {SCHEMA}.late_work where contract_id = any($1)
                             order by contract_id for update)
            delete from {SCHEMA}.late_work l using locked where l.contract_id = locked.contract_id
            returning l.contract_id, l.through""",
        sorted(contract_ids),
    )
    return {r["contract_id"]: r["through"] for r in rows}


async def finalization_instant(
    conn: asyncpg.Connection, partition: int, period_end: datetime, arrived_through: datetime | None
) -> datetime | None:
    """The first watermark of the partition that reached the period's end (and the contract's arrival)."""
    value: datetime | None = await conn.fetchval(
        f"""select min(through) from {SCHEMA}.watermarks
             where partition = $1 and through >= greatest($2::timestamptz, $3::timestamptz)""",
        partition,
        period_end,
        arrived_through,
    )
    return value


async def block_contract(conn: asyncpg.Connection, contract_id: str, reason: str) -> None:
    await conn.execute(
        f"update {SCHEMA}.contract_state set blocked_reason = $2, updated_at = now() where contract_id = $1",
        contract_id,
        reason[:2000],
    )


async def save_progress(
    conn: asyncpg.Connection,
    contract_id: str,
    *,
    next_period: tuple[datetime, datetime] | None,
    invoiced_through: datetime | None,
    last_invoice_number: str | None,
    credit_carried_minor: int,
    credit_notes_issued: int,
) -> None:
    await conn.execute(
        f"""update {SCHEMA}.contract_state
               set next_period_start = $2, next_close_at = $3, invoiced_through = $4,
                   last_invoice_number = $5,
                   credit_carried_minor = $6, credit_notes_issued = $7, updated_at = now()
             where contract_id = $1""",
        contract_id,
        next_period[0] if next_period else None,
        next_period[1] if next_period else None,
        invoiced_through,
        last_invoice_number,
        credit_carried_minor,
        credit_notes_issued,
    )
