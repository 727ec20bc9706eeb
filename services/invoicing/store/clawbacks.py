"""Supplier clawbacks waiting for a statement (``payout.clawback``, R15; table ``invoicing.clawbacks``,
migration 0031). Lock order: a clawback row, then ``supplier_pending`` (store module doc)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from libs.errors import DomainRuleError
from services.invoicing.store.tables import SCHEMA


@dataclass(frozen=True)
class ClawbackRow:
    clawback_id: str
    supplier_id: str
    currency: str
    month: str
    amount_minor: int
    """< 0, as on the statement."""
    invoice_number: str
    kind: str
    ref: str
    event_id: str


async def insert_clawbacks(conn: asyncpg.Connection, rows: Sequence[ClawbackRow]) -> list[ClawbackRow]:
    """Record clawbacks (key order); returns the new ones (a redelivered clawback id is not new; one that
    comes back with other amounts is refused)."""
    new: list[ClawbackRow] = []
    for r in sorted(rows, key=lambda r: r.clawback_id):
        inserted = await conn.fetchval(
            f"""insert into {SCHEMA}.clawbacks (clawback_id, supplier_id, currency, month, amount_minor,
                    invoice_number, kind, ref, event_id) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                on conflict (clawback_id) do nothing returning true""",
            r.clawback_id,
            r.supplier_id,
            r.currency,
            r.month,
            r.amount_minor,
            r.invoice_number,
            r.kind,
            r.ref,
            r.event_id,
        )
        if inserted:
            new.append(r)
            continue
        old = await conn.fetchrow(
            f"select supplier_id, currency, month, amount_minor from {SCHEMA}.clawbacks where clawback_id = $1",
            r.clawback_id,
        )
        assert old is not None
        if tuple(old) != (r.supplier_id, r.currency, r.month, r.amount_minor):
            # the same key with another payload is an error, not a duplicate (dead-lettered with this reason)
            raise DomainRuleError(f"clawback {r.clawback_id} seen before with other amounts: {tuple(old)}")
    return new


async def claim_statement_clawbacks(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], month: str
) -> dict[tuple[str, str], int]:
    """Month ``month``'s statement of a (supplier, currency) carries every clawback of that pair landing in
    ``month`` or an earlier month (one that would land on an already stated month goes on the next
    statement) that no statement carries yet. Claims them; returns the sum per pair (≤ 0)."""
    rows = await conn.fetch(
        f"""update {SCHEMA}.clawbacks c set stated_month = $3
              from unnest($1::text[], $2::text[]) as k(supplier_id, currency)
             where c.supplier_id = k.supplier_id and c.currency = k.currency
               and c.stated_month is null and c.month <= $3
            returning c.supplier_id, c.currency, c.amount_minor""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        month,
    )
    sums: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["supplier_id"], r["currency"])
        sums[key] = sums.get(key, 0) + int(r["amount_minor"])
    return sums
