"""What invoicing lets others read: finalized invoices, credit notes and statements, as their events' data.

The read side the CLI (``settle invoices|statements``) and the tools use instead of the store's internals.
Every function reads only; documents are the ``invoice.finalized`` / ``credit_note.issued`` /
``statement.finalized`` data as finalized, ordered by number.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.invoicing import store


async def list_invoices(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Finalized invoices (``month``: ``YYYY-MM`` of the period start)."""
    return await store.list_invoice_documents(conn, contract_id=contract_id, renter_id=renter_id, month=month)


async def list_credit_notes(
    conn: asyncpg.Connection,
    *,
    contract_id: str | None = None,
    renter_id: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Issued credit notes (``month``: ``YYYY-MM`` of issue)."""
    return await store.list_credit_note_documents(conn, contract_id=contract_id, renter_id=renter_id, month=month)


async def list_statements(
    conn: asyncpg.Connection, *, supplier_id: str | None = None, month: str | None = None
) -> list[dict[str, Any]]:
    """Finalized supplier statements (``month``: ``YYYY-MM``)."""
    return await store.list_statement_documents(conn, supplier_id=supplier_id, month=month)


async def get_document(conn: asyncpg.Connection, number: str) -> tuple[str, dict[str, Any]] | None:
    """(kind, data) of the document with this number — ``invoice``, ``credit_note`` or ``statement`` — or None."""
    return await store.find_document(conn, number)
