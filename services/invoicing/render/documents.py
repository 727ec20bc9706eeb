"""Invoices, credit notes and supplier statements as the files a finance team sends: JSON and PDF.

The event models (``schemas.events``) are the documents' data; this module only *shows* them. It
never recomputes an amount: every figure printed is a decimal string of the model, formatted for
reading (currency code, thousands separators, exactly the ISO 4217 minor digits). Before anything
is drawn the document is checked to add up (ARCHITECTURE invariant 7, R10, R12): a document whose
lines do not sum to its totals is refused with :class:`libs.errors.DomainRuleError` rather than
sent to a customer.

Pipeline: model → view (pre-formatted strings, :func:`build_view` in
:mod:`~services.invoicing.render.views`) → HTML (jinja2, autoescape on, ``templates/*.html``) → PDF
(weasyprint, A4, ``templates/documents.css``).

Cost: weasyprint's layout and font subsetting are all of it (templating is ~0.2 ms). What can be
shared across documents is built once per :class:`DocumentRenderer`: the jinja ``Environment`` with
its compiled templates, the parsed stylesheet (``weasyprint.CSS``) and the ``FontConfiguration``
(font lookup and its caches). Measured on one core (2026-11): with HarfBuzz's subsetter (Debian
``libharfbuzz-subset0``) ~10 one-page invoices/s, ~18 documents/s over a mix of invoices, statements
and credit notes; without it weasyprint falls back to fontTools (and logs a warning per document):
~3–4.5 documents/s. weasyprint is not thread-safe, so the module-level functions use one renderer
per thread; scale out with processes (two processes: ~1.8x).

The PDF's metadata dates are the document's ``issued_at``, so with HarfBuzz's subsetter the same
document renders to the same bytes; the fontTools fallback stamps the render time into the embedded
font subsets. The JSON is always byte-stable. No external resource is ever fetched: hostile text
cannot make the renderer open a URL or a file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import jinja2

from libs.errors import DomainRuleError
from schemas.events import CreditNoteIssued, InvoiceFinalized, StatementFinalized
from services.invoicing.render.views import (
    Document,
    DocumentView,
    Parties,
    ViewRow,
    build_view,
    check_document,
    format_amount,
    format_percent,
)

with warnings.catch_warnings():
    # Without HarfBuzz's subsetter (Debian ``libharfbuzz-subset0``) weasyprint warns once at import
    # and subsets fonts with fontTools: correct PDFs, ~2.5x slower, render time stamped into the
    # embedded fonts. That is a deployment choice, reported by ``harfbuzz_subset_available()``, not
    # an error; the filter is this narrow so every other warning still surfaces.
    warnings.filterwarnings("ignore", message="HarfBuzz-Subset will be required", category=DeprecationWarning)
    import weasyprint
    from weasyprint.text import ffi as weasyprint_ffi
    from weasyprint.text.fonts import FontConfiguration

__all__ = [
    "Document",
    "DocumentRenderer",
    "DocumentView",
    "Parties",
    "ViewRow",
    "build_view",
    "check_document",
    "document_json",
    "format_amount",
    "format_percent",
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


TEMPLATES_DIR = Path(__file__).parent / "templates"
STYLESHEET_NAME = "documents.css"
_FILE_STEM_RE = re.compile(r"^[A-Z]{2,3}-[0-9]{4}-[0-9]{6}$")
_TEMPLATE_BY_TYPE: dict[type[Any], str] = {
    InvoiceFinalized: "invoice.html",
    CreditNoteIssued: "credit_note.html",
    StatementFinalized: "statement.html",
}


# --- rendering ------------------------------------------------------------------------------------------


def _offline_fetcher() -> weasyprint.URLFetcher:
    # Documents need nothing from outside; allowing no protocol at all keeps rendering offline and
    # means a hostile value can never make the renderer read a file or call a host.
    return weasyprint.URLFetcher(allowed_protocols=frozenset(), allow_redirects=False)


class DocumentRenderer:
    """Renders documents to HTML and PDF, reusing what is costly to build.

    Not thread-safe (weasyprint is not): use one per thread or process. The module-level
    ``render_*`` functions do that for you.
    """

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self._environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates_dir),
            autoescape=True,  # every template, whatever its name: ids and names are untrusted text
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._stylesheet_text = (templates_dir / STYLESHEET_NAME).read_text(encoding="utf-8")
        self._font_config = FontConfiguration()
        self._url_fetcher = _offline_fetcher()
        self._stylesheet = weasyprint.CSS(
            string=self._stylesheet_text, font_config=self._font_config, url_fetcher=self._url_fetcher
        )

    def html(self, model: Document, parties: Parties | None = None, *, embed_css: bool = True) -> str:
        """The document as an HTML page. ``embed_css`` inlines the stylesheet (a standalone page);
        the PDF path leaves it out and passes the stylesheet parsed once."""
        view = build_view(model, parties)
        template = self._environment.get_template(_TEMPLATE_BY_TYPE[type(model)])
        return template.render(doc=view, css=self._stylesheet_text if embed_css else None)

    def pdf(self, model: Document, parties: Parties | None = None) -> bytes:
        """The document as A4 PDF bytes."""
        html = weasyprint.HTML(string=self.html(model, parties, embed_css=False), url_fetcher=self._url_fetcher)
        pdf_bytes = html.write_pdf(stylesheets=[self._stylesheet], font_config=self._font_config)
        assert isinstance(pdf_bytes, bytes)
        assert pdf_bytes.startswith(b"%PDF-")
        return pdf_bytes


def harfbuzz_subset_available() -> bool:
    """Whether weasyprint subsets fonts with HarfBuzz (fast, byte-reproducible PDFs) rather than
    falling back to fontTools (~2.5x slower per document, render time in the embedded fonts)."""
    return weasyprint_ffi.harfbuzz_subset is not None


_local = threading.local()


def _renderer() -> DocumentRenderer:
    renderer: DocumentRenderer | None = getattr(_local, "renderer", None)
    if renderer is None:
        renderer = DocumentRenderer()
        _local.renderer = renderer
    return renderer


def render_document_html(model: Document, parties: Parties | None = None) -> str:
    """Any document (invoice, credit note, statement) as a standalone HTML page (CSS inlined)."""
    return _renderer().html(model, parties)


def render_document_pdf(model: Document, parties: Parties | None = None) -> bytes:
    """Any document as A4 PDF bytes."""
    return _renderer().pdf(model, parties)


def render_invoice_html(invoice: InvoiceFinalized, parties: Parties | None = None) -> str:
    return render_document_html(invoice, parties)


def render_invoice_pdf(invoice: InvoiceFinalized, parties: Parties | None = None) -> bytes:
    return render_document_pdf(invoice, parties)


def render_credit_note_html(note: CreditNoteIssued, parties: Parties | None = None) -> str:
    return render_document_html(note, parties)


def render_credit_note_pdf(note: CreditNoteIssued, parties: Parties | None = None) -> bytes:
    return render_document_pdf(note, parties)


def render_statement_html(statement: StatementFinalized, parties: Parties | None = None) -> str:
    return render_document_html(statement, parties)


def render_statement_pdf(statement: StatementFinalized, parties: Parties | None = None) -> bytes:
    return render_document_pdf(statement, parties)


# --- files ----------------------------------------------------------------------------------------------


def document_json(model: Document) -> bytes:
    """The document as stable JSON bytes: sorted keys, 2-space indent, UTF-8, trailing newline.

    Amounts stay the model's decimal strings (``"153.40"``) and times RFC 3339 UTC, so
    ``type(model).model_validate_json(document_json(model)) == model``.
    """
    data = model.model_dump(mode="json")
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_atomically(path: Path, content: bytes) -> None:
    # A reader never sees half a document: write beside it, flush, then rename over it.
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes 0600; documents are for sending
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_documents(model: Document, folder: Path, parties: Parties | None = None) -> list[Path]:
    """Write ``<number>.json`` and ``<number>.pdf`` into ``folder`` (created if missing).

    Returns the two paths, JSON first. Rendering happens before anything is written, so a document
    that does not add up leaves no file behind.
    """
    if not _FILE_STEM_RE.match(model.number):
        raise DomainRuleError(f"document number {model.number!r} is not a file name we write")
    json_bytes = document_json(model)
    pdf_bytes = render_document_pdf(model, parties)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{model.number}.json", folder / f"{model.number}.pdf"]
    for path, content in zip(paths, (json_bytes, pdf_bytes), strict=True):
        _write_atomically(path, content)
    return paths
