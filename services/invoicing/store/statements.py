"""Statement progress per month (R12): the month lock, which (supplier, currency) pairs need a
statement, pending rows, carried nets, statement rows. Which earnings and chargebacks a statement
carries is decided in :mod:`services.invoicing.store.membership`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.invoicing.store.tables import SCHEMA


async def lock_statement_progress(conn: asyncpg.Connection) -> tuple[bool, str | None]:
    """(locked, next month). Not locked when another worker is closing statements right now."""
    row = await conn.fetchrow(f"select next_month from {SCHEMA}.statement_progress where id for update skip locked")
    if row is None:
        return False, None
    return True, row["next_month"]


async def set_statement_month(conn: asyncpg.Connection, month: str) -> None:
    await conn.execute(f"update {SCHEMA}.statement_progress set next_month = $1 where id", month)


async def earliest_pending_month(conn: asyncpg.Connection) -> str | None:
    value: str | None = await conn.fetchval(f"select min(month) from {SCHEMA}.supplier_pending")
    return value


async def unclosed_contracts(conn: asyncpg.Connection, boundary: datetime) -> int:
    """Known contracts with a period ending at or before ``boundary`` that is not invoiced yet."""
    return int(await conn.fetchval(f"select count(*) from {SCHEMA}.contract_state where next_close_at <= $1", boundary))


async def statement_issue_instant(conn: asyncpg.Connection, boundary: datetime) -> datetime | None:
    """The instant the last partition's watermark reached ``boundary`` (first watermark ≥ it, latest
    over partitions): when a month's statements become final."""
    value: datetime | None = await conn.fetchval(
        f"""select max(first_through) from (
                select min(through) as first_through from {SCHEMA}.watermarks where through >= $1
                 group by partition) f""",
        boundary,
    )
    return value


async def statement_pairs(
    conn: asyncpg.Connection, month: str, limit: int, *, only: Sequence[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """(supplier, currency) that need a statement for ``month`` and have none yet, sorted (``only``:
    among these pairs)."""
    rows = await conn.fetch(
        f"""select supplier_id, currency from (
                select supplier_id, currency from {SCHEMA}.supplier_pending where month <= $1
                union
                select supplier_id, currency from {SCHEMA}.supplier_balances
                 where last_net_minor < 0 and last_month < $1) p
             where not exists (select 1 from {SCHEMA}.statements s
                                where s.supplier_id = p.supplier_id and s.currency = p.currency
                                  and s.month = $1)
               and not exists (select 1 from {SCHEMA}.statements_blocked b
                                where b.supplier_id = p.supplier_id and b.currency = p.currency
                                  and b.month = $1)
               and ($3::text[] is null
                    or (p.supplier_id, p.currency) in (select * from unnest($3::text[], $4::text[])))
             order by supplier_id, currency limit $2""",
        month,
        limit,
        None if only is None else [p[0] for p in only],
        None if only is None else [p[1] for p in only],
    )
    return [(r["supplier_id"], r["currency"]) for r in rows]


async def block_statement(conn: asyncpg.Connection, supplier_id: str, currency: str, month: str, reason: str) -> None:
    """Set a (supplier, currency) aside for ``month``: its items wait for the next month's close."""
    await conn.execute(
        f"""insert into {SCHEMA}.statements_blocked (supplier_id, currency, month, reason)
            values ($1, $2, $3, $4)
            on conflict (supplier_id, currency, month) do update set reason = excluded.reason""",
        supplier_id,
        currency,
        month,
        reason[:2000],
    )


async def take_pending(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], month: str) -> None:
    """Lock and delete the pending rows of these pairs for months ≤ ``month`` before reading their items."""
    await conn.execute(
        f"""with locked as (
                select p.supplier_id, p.currency, p.month from {SCHEMA}.supplier_pending p
                  join unnest($1::text[], $2::text[]) as k(supplier_id, currency)
                    on k.supplier_id = p.supplier_id and k.currency = p.currency
                 where p.month <= $3 order by 1, 2, 3 for update of p)
            delete from {SCHEMA}.supplier_pending d using locked
             where d.supplier_id = locked.supplier_id and d.currency = locked.currency
               and d.month = locked.month""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        month,
    )


async def previous_nets(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    rows = await conn.fetch(
        f"""select b.supplier_id, b.currency, b.last_net_minor from {SCHEMA}.supplier_balances b
              join unnest($1::text[], $2::text[]) as k(supplier_id, currency)
                on k.supplier_id = b.supplier_id and k.currency = b.currency""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["supplier_id"], r["currency"]): int(r["last_net_minor"]) for r in rows}


@dataclass(frozen=True)
class StatementRow:
    statement_id: str
    number: str
    supplier_id: str
    currency: str
    month: str
    issued_at: datetime
    net_minor: int
    document: dict[str, Any]


async def insert_statements(conn: asyncpg.Connection, rows: Sequence[StatementRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        f"""insert into {SCHEMA}.statements (statement_id, number, supplier_id, currency, month, issued_at,
                net_minor, document) values ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [
            (
                r.statement_id,
                r.number,
                r.supplier_id,
                r.currency,
                r.month,
                r.issued_at,
                r.net_minor,
                r.document,
            )
            for r in rows
        ],
    )
    await conn.executemany(
        f"""insert into {SCHEMA}.supplier_balances (supplier_id, currency, last_month, last_net_minor)
            values ($1, $2, $3, $4)
            on conflict (supplier_id, currency) do update
               set last_month = excluded.last_month, last_net_minor = excluded.last_net_minor""",
        [
            (r.supplier_id, r.currency, r.month, r.net_minor)
            for r in sorted(rows, key=lambda r: (r.supplier_id, r.currency))
        ],
    )
