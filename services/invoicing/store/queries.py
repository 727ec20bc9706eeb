"""Reading documents back (CLI, demo): lists of invoices, credit notes and statements, one document
by number. Read only."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.invoicing.store.tables import SCHEMA


async def list_invoice_documents(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Finalized invoices' ``invoice.finalized`` data by number (``month``: YYYY-MM of the period start)."""
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.invoices
             where ($1::text is null or contract_id = $1) and ($2::text is null or renter_id = $2)
               and ($3::text is null or to_char(period_start at time zone 'UTC', 'YYYY-MM') = $3)
             order by number""",
        contract_id,
        renter_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def list_credit_note_documents(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Credit notes' ``credit_note.issued`` data, by number. ``month``: ``YYYY-MM`` of issue."""
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.credit_notes
             where ($1::text is null or contract_id = $1) and ($2::text is null or renter_id = $2)
               and ($3::text is null or to_char(issued_at at time zone 'UTC', 'YYYY-MM') = $3)
             order by number""",
        contract_id,
        renter_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def list_statement_documents(
    conn: asyncpg.Connection, *, supplier_id: str | None = None, month: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""select document from {SCHEMA}.statements
             where ($1::text is null or supplier_id = $1) and ($2::text is null or month = $2)
             order by number""",
        supplier_id,
        month,
    )
    return [dict(r["document"]) for r in rows]


async def find_document(conn: asyncpg.Connection, number: str) -> tuple[str, dict[str, Any]] | None:
    """(kind, data) of the document with this number: ``invoice``, ``credit_note`` or ``statement``."""
    for kind, table in (
        ("invoice", "invoices"),
        ("credit_note", "credit_notes"),
        ("statement", "statements"),
    ):
        row = await conn.fetchrow(f"select document from {SCHEMA}.{table} where number = $1", number)
        if row is not None:
            return kind, dict(row["document"])
    return None
