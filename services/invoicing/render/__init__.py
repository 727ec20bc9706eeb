"""Invoice, credit note and statement documents: stable JSON and A4 PDF (jinja2 + weasyprint).

Public API (see :mod:`services.invoicing.render.documents` for the details)::

    render_invoice_html(invoice, parties=None) -> str        render_invoice_pdf(...) -> bytes
    render_credit_note_html(note, parties=None) -> str       render_credit_note_pdf(...) -> bytes
    render_statement_html(statement, parties=None) -> str    render_statement_pdf(...) -> bytes
    render_document_html(model, ...) / render_document_pdf(model, ...)   any of the three
    document_json(model) -> bytes                            sorted keys, indented, round-trips
    write_documents(model, folder, parties=None) -> [<number>.json, <number>.pdf]
    Parties(platform_name=..., platform_address=(), renter_names={}, supplier_names={})
    DocumentRenderer()    reuse one per thread/process when rendering many documents
    harfbuzz_subset_available() -> bool   False: weasyprint's slow fontTools fallback is in use
"""

from services.invoicing.render.documents import (
    Document,
    DocumentRenderer,
    Parties,
    check_document,
    document_json,
    format_amount,
    harfbuzz_subset_available,
    render_credit_note_html,
    render_credit_note_pdf,
    render_document_html,
    render_document_pdf,
    render_invoice_html,
    render_invoice_pdf,
    render_statement_html,
    render_statement_pdf,
    write_documents,
)

__all__ = [
    "Document",
    "DocumentRenderer",
    "Parties",
    "check_document",
    "document_json",
    "format_amount",
    "harfbuzz_subset_available",
    "render_credit_note_html",
    "render_credit_note_pdf",
    "render_document_html",
    "render_document_pdf",
    "render_invoice_html",
    "render_invoice_pdf",
    "render_statement_html",
    "render_statement_pdf",
    "write_documents",
]
