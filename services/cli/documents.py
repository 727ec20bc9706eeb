"""``settle invoices …`` and ``settle statements …``: the finalized documents, as JSON and PDF.

Documents are stored as their event data when they are finalized (``invoicing.invoices.document``
…), so listing and showing only read them back; the PDF is rendered on demand from the same data
(:mod:`services.invoicing.render`). ``list --json`` prints one JSON object per line per document,
amounts as decimal strings with exactly the currency's digits (``"153.40"``, JPY ``"1500"``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from rich.table import Table

from libs.errors import ConfigurationError
from schemas.events import CreditNoteIssued, InvoiceFinalized, StatementFinalized
from services.cli.app import invoices_app, statements_app
from services.cli.runtime import console, read_only, run_async
from services.invoicing import read_model
from services.payments import read_model as payments_read_model

_MONTH_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_NUMBER_RE = re.compile(r"^(INV|CN|STM)-[0-9]{4}-[0-9]{6}$")
_MODELS: dict[str, type[InvoiceFinalized] | type[CreditNoteIssued] | type[StatementFinalized]] = {
    "invoice": InvoiceFinalized,
    "credit_note": CreditNoteIssued,
    "statement": StatementFinalized,
}

MonthOption = Annotated[str | None, typer.Option("--month", help="YYYY-MM.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _check_month(month: str | None) -> None:
    if month is not None and not _MONTH_RE.match(month):
        raise ConfigurationError(f"--month {month!r} is not YYYY-MM")


def _check_number(number: str) -> None:
    if not _NUMBER_RE.match(number):
        raise ConfigurationError(f"{number!r} is not a document number (INV-YYYY-NNNNNN, CN-…, STM-…)")


# --- queries (also used by the demo and the tests) ----------------------------------------------------------


async def list_invoices(
    conn: asyncpg.Connection,
    *,
    contract: str | None = None,
    renter: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Finalized invoices (``invoice.finalized`` data) with their payment status (R11: ``payment_status``,
    ``amount_paid``, ``amount_remaining``), by number; ``month`` is the period start's."""
    _check_month(month)
    docs = await read_model.list_invoices(conn, contract_id=contract, renter_id=renter, month=month)
    return await payments_read_model.invoice_payment_fields(conn, docs)


async def list_credit_notes(
    conn: asyncpg.Connection,
    *,
    contract: str | None = None,
    renter: str | None = None,
    month: str | None = None,
) -> list[dict[str, Any]]:
    """Credit notes (``credit_note.issued`` data), by number; ``month`` is the month of issue."""
    _check_month(month)
    return await read_model.list_credit_notes(conn, contract_id=contract, renter_id=renter, month=month)


async def list_statements(
    conn: asyncpg.Connection, *, supplier: str | None = None, month: str | None = None
) -> list[dict[str, Any]]:
    """Finalized statements (``statement.finalized`` data), by number."""
    _check_month(month)
    return await read_model.list_statements(conn, supplier_id=supplier, month=month)


def _in_schema_order(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored data in its event model's field order (jsonb keeps no order), unknown keys last."""
    model = (
        StatementFinalized
        if "statement_id" in doc
        else (CreditNoteIssued if "credit_note_id" in doc else InvoiceFinalized)
    )
    ordered = {name: doc[name] for name in model.model_fields if name in doc}
    ordered.update((k, v) for k, v in doc.items() if k not in ordered)
    return ordered


def to_json_lines(documents: list[dict[str, Any]]) -> list[str]:
    """One compact JSON object per document (amounts stay decimal strings, times RFC 3339)."""
    return [json.dumps(_in_schema_order(doc), ensure_ascii=False, separators=(",", ":")) for doc in documents]


async def load_document(
    conn: asyncpg.Connection, number: str
) -> InvoiceFinalized | CreditNoteIssued | StatementFinalized:
    _check_number(number)
    found = await read_model.get_document(conn, number)
    if found is None:
        raise ConfigurationError(f"no finalized document {number}")
    kind, data = found
    return _MODELS[kind].model_validate(data)


async def show_document(conn: asyncpg.Connection, number: str) -> str:
    """The full document as stable JSON (sorted keys, indented)."""
    from services.invoicing.render import document_json

    return document_json(await load_document(conn, number)).decode("utf-8")


async def write_pdf(conn: asyncpg.Connection, number: str, out: Path | None = None) -> Path:
    """Render the document's PDF to ``out`` (default ``<number>.pdf`` in the current folder)."""
    from services.invoicing.render import render_document_pdf

    model = await load_document(conn, number)
    path = out if out is not None else Path(f"{number}.pdf")
    pdf = render_document_pdf(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pdf)
    return path


async def export_documents(conn: asyncpg.Connection, folder: Path) -> list[Path]:
    """Write every finalized invoice, credit note and statement as ``<number>.json`` + ``<number>.pdf``
    into ``folder`` (what the demo leaves behind). Returns the paths written."""
    from services.invoicing.render import DocumentRenderer, document_json

    renderer = DocumentRenderer()
    written: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a CLI command: nothing else runs on this loop)
    groups: list[
        tuple[type[InvoiceFinalized] | type[CreditNoteIssued] | type[StatementFinalized], list[dict[str, Any]]]
    ] = [
        (InvoiceFinalized, await read_model.list_invoices(conn)),
        (CreditNoteIssued, await read_model.list_credit_notes(conn)),
        (StatementFinalized, await read_model.list_statements(conn)),
    ]
    for model_type, docs in groups:
        for data in docs:
            model = model_type.model_validate(data)
            json_path, pdf_path = folder / f"{model.number}.json", folder / f"{model.number}.pdf"
            json_path.write_bytes(document_json(model))
            pdf_path.write_bytes(renderer.pdf(model))
            written += [json_path, pdf_path]
    return written


# --- commands ---------------------------------------------------------------------------------------


def _print_invoices(docs: list[dict[str, Any]], title: str) -> None:
    table = Table("number", "contract", "renter", "period", "total", "prepaid", "due", "paid", "status", title=title)
    for d in docs:
        table.add_row(
            d["number"],
            d["contract_id"],
            d["renter_id"],
            f"{d['period_start'][:10]} – {d['period_end'][:10]}",
            f"{d['currency']} {d['total']}",
            d["prepaid_applied"],
            d["amount_due"],
            d.get("amount_paid", ""),
            d.get("payment_status", ""),
        )
    console.print(table)


@invoices_app.command("list")
@run_async
async def invoices_list(
    contract: Annotated[str | None, typer.Option("--contract", help="Only this contract.")] = None,
    renter: Annotated[str | None, typer.Option("--renter", help="Only this renter.")] = None,
    month: MonthOption = None,
    credit_notes: Annotated[bool, typer.Option("--credit-notes", help="List credit notes instead.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Finalized invoices (or credit notes); `--month` filters on the period start (notes: issue month)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        if credit_notes:
            docs = await list_credit_notes(conn, contract=contract, renter=renter, month=month)
        else:
            docs = await list_invoices(conn, contract=contract, renter=renter, month=month)
    if as_json:
        for line in to_json_lines(docs):
            print(line)
        return
    if credit_notes:
        table = Table("number", "contract", "renter", "corrects", "total", "issued", title="credit notes")
        for d in docs:
            table.add_row(
                d["number"],
                d["contract_id"],
                d["renter_id"],
                d["invoice_number"],
                f"{d['currency']} {d['total']}",
                d["issued_at"][:10],
            )
        console.print(table)
        return
    _print_invoices(docs, "invoices")


@invoices_app.command("show")
@run_async
async def invoices_show(
    number: Annotated[str, typer.Argument(help="INV-YYYY-NNNNNN or CN-YYYY-NNNNNN.")],
) -> None:
    """One invoice or credit note in full, as JSON."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        print(await show_document(conn, number), end="")


@invoices_app.command("pdf")
@run_async
async def invoices_pdf(
    number: Annotated[str, typer.Argument(help="INV-YYYY-NNNNNN or CN-YYYY-NNNNNN.")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write (default <number>.pdf).")] = None,
) -> None:
    """Write an invoice's (or credit note's) PDF."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        path = await write_pdf(conn, number, out)
    console.print(f"wrote {path}")


@statements_app.command("list")
@run_async
async def statements_list(
    supplier: Annotated[str | None, typer.Option("--supplier", help="Only this supplier.")] = None,
    month: MonthOption = None,
    as_json: JsonOption = False,
) -> None:
    """Finalized supplier statements."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        docs = await list_statements(conn, supplier=supplier, month=month)
    if as_json:
        for line in to_json_lines(docs):
            print(line)
        return
    table = Table("number", "supplier", "month", "earnings", "chargebacks", "carried", "net", title="statements")
    for d in docs:
        table.add_row(
            d["number"],
            d["supplier_id"],
            d["month"],
            f"{d['currency']} {d['earnings_total']}",
            d["sla_chargebacks"],
            d["carried"],
            d["net"],
        )
    console.print(table)


@statements_app.command("show")
@run_async
async def statements_show(number: Annotated[str, typer.Argument(help="STM-YYYY-NNNNNN.")]) -> None:
    """One statement in full, as JSON."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        print(await show_document(conn, number), end="")


@statements_app.command("pdf")
@run_async
async def statements_pdf(
    number: Annotated[str, typer.Argument(help="STM-YYYY-NNNNNN.")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write (default <number>.pdf).")] = None,
) -> None:
    """Write a statement's PDF."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        path = await write_pdf(conn, number, out)
    console.print(f"wrote {path}")
