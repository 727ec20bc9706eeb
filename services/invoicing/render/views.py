"""What a document shows, as strings: parties, display formatting (never rounds, never floats), the
consistency check (the lines add up to the totals, R10, R12), and the view the templates print.
No weasyprint here: :mod:`services.invoicing.render.documents` renders these views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from typing import Union

from libs.errors import DomainRuleError, InvalidAmountError
from libs.money import currency_exponent
from libs.times import format_utc
from schemas.events import AdjustmentLine, CreditNoteIssued, InvoiceFinalized, StatementFinalized

Document = Union[InvoiceFinalized, CreditNoteIssued, StatementFinalized]  # noqa: UP007 (a runtime alias)

PLATFORM_NAME_DEFAULT = "Settle GPU Marketplace"

_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)  # fixed English names: calendar.month_name follows the process locale
_UPTIME_PERCENT_PLACES = Decimal("0.001")


# --- parties ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parties:
    """Who the document is from and to, for display only (events carry ids, not names).

    ``platform_address`` is the issuer's postal address, one line per item. Renters and suppliers
    without an entry in ``renter_names`` / ``supplier_names`` are shown by their id.
    """

    platform_name: str = PLATFORM_NAME_DEFAULT
    platform_address: tuple[str, ...] = ()
    renter_names: Mapping[str, str] = field(default_factory=dict)
    supplier_names: Mapping[str, str] = field(default_factory=dict)

    def renter_name(self, renter_id: str) -> str:
        return self.renter_names.get(renter_id, renter_id)

    def supplier_name(self, supplier_id: str) -> str:
        return self.supplier_names.get(supplier_id, supplier_id)


# --- formatting (display only: never rounds, never floats) ------------------------------------------------


def _minor_units(amount: Decimal, currency: str) -> int:
    """The exact number of minor units in a document amount; refuses more digits than ISO 4217 has."""
    if not amount.is_finite():
        raise InvalidAmountError(f"{currency} amount {amount} is not a finite decimal")
    factor: int = 10 ** currency_exponent(currency)
    scaled = Fraction(amount) * factor
    if scaled.denominator != 1:
        # Document amounts are rounded once, upstream (R6); rounding again here would print a figure
        # that is not the one in the ledger.
        raise InvalidAmountError(
            f"{currency} amount {amount} has more than {currency_exponent(currency)} decimal places"
        )
    return scaled.numerator


def format_amount(amount: Decimal, currency: str) -> str:
    """``Decimal("1234.5"), "USD"`` → ``"USD 1,234.50"``; JPY ``1500`` → ``"JPY 1,500"``.

    Exactly the currency's ISO 4217 minor digits (padded with zeros, never rounded: an amount with
    more digits raises :class:`InvalidAmountError`), comma thousands separators, ASCII minus.
    """
    places = currency_exponent(currency)
    minor = _minor_units(amount, currency)
    sign = "-" if minor < 0 else ""
    unit: int = 10**places
    major, fraction = divmod(abs(minor), unit)
    digits = f"{major:,}"  # int formatting: exact, no float involved
    if places:
        digits += "." + str(fraction).rjust(places, "0")
    return f"{currency} {sign}{digits}"


def format_percent(fraction_value: Decimal) -> str:
    """A fraction as a percentage, exactly: ``Decimal("0.0825")`` → ``"8.25%"``, ``"0.20"`` → ``"20%"``."""
    if not fraction_value.is_finite():
        raise InvalidAmountError(f"rate {fraction_value} is not a finite decimal")
    return _plain(fraction_value.scaleb(2)) + "%"


def _plain(value: Decimal) -> str:
    """A decimal without exponent notation or trailing zeros (``2E+1`` → ``"20"``)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _format_uptime(uptime: Decimal) -> str:
    # Truncated, not rounded: a displayed uptime never reaches a tier threshold the real one missed.
    return _plain(uptime.scaleb(2).quantize(_UPTIME_PERCENT_PLACES, rounding=ROUND_DOWN)) + "%"


def _format_date(value: date) -> str:
    return value.isoformat()


def _last_day(period_end: datetime) -> date:
    """The last calendar day inside a half-open period ``[start, end)``.

    Periods end at 00:00 (R1), so this is ``end − 1 day``; taking the day of the last second
    (R1's "last second inside the period") gives the same day and stays right for any end time.
    """
    return (period_end - timedelta(seconds=1)).date()


def _format_period(start: datetime, end: datetime) -> str:
    return f"{_format_date(start.date())} – {_format_date(_last_day(end))}"


def _format_month(month: str) -> str:
    year, number = month.split("-")
    return f"{_MONTH_NAMES[int(number) - 1]} {year}"


def _adjustment_label(line: AdjustmentLine) -> str:
    kind = {"usage": "usage", "commitment_true_up": "commitment true-up", "sla_credit": "SLA credit"}[line.kind]
    return f"Adjustment for {_format_period(line.period_start, line.period_end)} ({kind})"


# --- consistency (invariant 7: the lines add up to the totals) --------------------------------------------


def _require(condition: bool, document: str, message: str) -> None:
    if not condition:
        raise DomainRuleError(f"{document} does not add up: {message}")


def check_document(model: Document) -> None:
    """Refuse a document whose figures do not add up (R10, R12, invariant 7).

    Raises :class:`DomainRuleError` naming the first broken identity, and
    :class:`InvalidAmountError` when an amount has more digits than the currency's minor unit.
    """
    for name, value in model:
        if isinstance(value, Decimal) and name not in ("tax_rate", "uptime", "sla_credit_percent"):
            _minor_units(value, model.currency)
    if isinstance(model, InvoiceFinalized):
        lines = model.lines
        for _name, value in lines:
            _minor_units(value, model.currency)
        for line in model.adjustment_lines:
            _minor_units(line.amount, model.currency)
        doc = f"invoice {model.number}"
        adjustments_sum = sum((line.amount for line in model.adjustment_lines), Decimal(0))
        _require(
            not model.adjustment_lines or adjustments_sum == lines.adjustments,
            doc,
            f"adjustment lines sum to {adjustments_sum}, the adjustments line is {lines.adjustments}",
        )
        lines_sum = lines.usage + lines.commitment_true_up + lines.adjustments + lines.sla_credit
        _require(lines_sum == model.subtotal, doc, f"lines sum to {lines_sum}, subtotal {model.subtotal}")
        _require(
            model.subtotal + model.tax == model.total,
            doc,
            f"subtotal {model.subtotal} + tax {model.tax} != total {model.total}",
        )
        _require(
            model.amount_due >= 0 and model.credit_carried_forward >= 0,
            doc,
            "amount due and carried credit are never negative (R10)",
        )
        _require(
            not (model.amount_due and model.credit_carried_forward),
            doc,
            "an invoice either has an amount due or carries credit forward, not both (R10)",
        )
        remaining = model.total - model.prepaid_applied - model.credit_applied
        _require(
            model.amount_due - model.credit_carried_forward == remaining,
            doc,
            f"total − prepaid − credit = {remaining}, but amount due {model.amount_due} and carried "
            f"credit {model.credit_carried_forward} (R10)",
        )
    elif isinstance(model, CreditNoteIssued):
        doc = f"credit note {model.number}"
        for line in model.adjustment_lines:
            _minor_units(line.amount, model.currency)
        lines_sum = sum((line.amount for line in model.adjustment_lines), Decimal(0))
        _require(lines_sum == model.subtotal, doc, f"lines sum to {lines_sum}, subtotal {model.subtotal}")
        _require(
            model.subtotal + model.tax == model.total,
            doc,
            f"subtotal {model.subtotal} + tax {model.tax} != total {model.total}",
        )
    else:
        doc = f"statement {model.number}"
        for value in model.earnings.values():
            _minor_units(value, model.currency)
        earnings_sum = sum(model.earnings.values(), Decimal(0))
        _require(
            earnings_sum == model.earnings_total,
            doc,
            f"earnings lines sum to {earnings_sum}, earnings total {model.earnings_total}",
        )
        expected_net = model.earnings_total + model.sla_chargebacks + model.clawbacks + model.carried
        _require(
            expected_net == model.net,
            doc,
            f"earnings + chargebacks + clawbacks + carried = {expected_net}, net {model.net} (R12)",
        )


# --- view: what the templates print, all strings --------------------------------------------------------


@dataclass(frozen=True)
class ViewRow:
    """One row of a document table. ``style`` is a CSS class: line, subtotal, total, due, info, empty."""

    label: str
    amount: str = ""
    detail: str = ""
    style: str = "line"


@dataclass(frozen=True)
class DocumentView:
    """Everything a template prints, already formatted: templates hold no logic about money."""

    kind: str
    title: str
    number: str
    currency: str
    issued_at: str
    platform_name: str
    platform_address: tuple[str, ...]
    recipient_label: str
    recipient_name: str
    recipient_id: str
    meta: tuple[tuple[str, str], ...]
    amount_heading: str
    rows: tuple[ViewRow, ...]
    totals: tuple[ViewRow, ...]
    notes: tuple[str, ...]


def _invoice_view(invoice: InvoiceFinalized, parties: Parties) -> DocumentView:
    currency = invoice.currency

    def money(amount: Decimal) -> str:
        return format_amount(amount, currency)

    period = _format_period(invoice.period_start, invoice.period_end)
    lines = invoice.lines
    # R10 order: usage, commitment true-up, adjustments, SLA credit. Zero lines are shown (finance
    # checks that a true-up is zero); adjustment rows exist only when there are adjustment lines.
    rows: list[ViewRow] = [
        ViewRow("Usage", money(lines.usage), f"GPU usage, {period}"),
        ViewRow(
            "Commitment true-up",
            money(lines.commitment_true_up),
            "Minimum spend for the period, less usage" if lines.commitment_true_up else "",
        ),
    ]
    if invoice.adjustment_lines:
        ordered = sorted(invoice.adjustment_lines, key=lambda a: (a.period_start, a.kind == "sla_credit"))
        # No detail line: the label names the period, and up to 256 rows must stay readable.
        rows += [ViewRow(_adjustment_label(a), money(a.amount)) for a in ordered]
    elif lines.adjustments:
        rows.append(ViewRow("Adjustments", money(lines.adjustments)))
    sla_detail = ""
    if lines.sla_credit and invoice.uptime is not None:
        sla_detail = f"Uptime {_format_uptime(invoice.uptime)}: {_plain(invoice.sla_credit_percent)}% of usage credited"
    rows.append(ViewRow("SLA credit", money(lines.sla_credit), sla_detail))

    tax_label = f"Tax ({format_percent(invoice.tax_rate)})"
    # Applied amounts are shown subtracted so the column adds up to the amount due (R10).
    totals = (
        ViewRow("Subtotal", money(invoice.subtotal), style="subtotal"),
        ViewRow(tax_label, money(invoice.tax)),
        ViewRow("Total", money(invoice.total), style="total"),
        ViewRow(
            "Prepaid applied",
            money(-invoice.prepaid_applied),
            "Drawn from the prepaid wallet" if invoice.prepaid_applied else "",
        ),
        ViewRow(
            "Credit applied",
            money(-invoice.credit_applied),
            "Carried from the previous invoice" if invoice.credit_applied else "",
        ),
        ViewRow("Amount due", money(invoice.amount_due), style="due"),
        ViewRow(
            "Credit carried forward",
            money(invoice.credit_carried_forward),
            "To the next invoice of this contract",
            style="info",
        ),
    )

    issued = invoice.issued_at.date()
    due = invoice.due_at.date()
    terms_days = (due - issued).days
    notes: list[str] = []
    if invoice.amount_due:
        notes.append(
            f"Payment terms: net {terms_days} days. Please pay {money(invoice.amount_due)} by "
            f"{_format_date(due)}, quoting invoice number {invoice.number}."
        )
    else:
        notes.append(f"Payment terms: net {terms_days} days. Nothing is due on this invoice.")
    if invoice.credit_carried_forward:
        notes.append(
            f"A credit of {money(invoice.credit_carried_forward)} is carried to the next invoice of this contract."
        )
    if invoice.billing_mode == "prepaid":
        notes.append(
            "Usage is drawn from the prepaid wallet as it is rated; the commitment true-up, "
            "tax and any usage beyond the wallet balance are invoiced here."
        )

    return DocumentView(
        kind="invoice",
        title="Invoice",
        number=invoice.number,
        currency=currency,
        issued_at=format_utc(invoice.issued_at),
        platform_name=parties.platform_name,
        platform_address=parties.platform_address,
        recipient_label="Bill to",
        recipient_name=parties.renter_name(invoice.renter_id),
        recipient_id=invoice.renter_id,
        meta=(
            ("Invoice number", invoice.number),
            ("Issue date", _format_date(issued)),
            ("Due date", _format_date(due)),
            ("Billing period", period),
            ("Contract", invoice.contract_id),
            ("Billing mode", invoice.billing_mode.capitalize()),
            ("Currency", currency),
        ),
        amount_heading=f"Amount ({currency})",
        rows=tuple(rows),
        totals=totals,
        notes=tuple(notes),
    )


def _credit_note_view(note: CreditNoteIssued, parties: Parties) -> DocumentView:
    currency = note.currency

    def money(amount: Decimal) -> str:
        return format_amount(amount, currency)

    ordered = sorted(note.adjustment_lines, key=lambda a: (a.period_start, a.kind == "sla_credit"))
    rows = tuple(ViewRow(_adjustment_label(a), money(a.amount)) for a in ordered) or (
        ViewRow("No correction lines", style="empty"),
    )
    return DocumentView(
        kind="credit_note",
        title="Credit note",
        number=note.number,
        currency=currency,
        issued_at=format_utc(note.issued_at),
        platform_name=parties.platform_name,
        platform_address=parties.platform_address,
        recipient_label="Issued to",
        recipient_name=parties.renter_name(note.renter_id),
        recipient_id=note.renter_id,
        meta=(
            ("Credit note number", note.number),
            ("Corrects invoice", note.invoice_number),
            ("Issue date", _format_date(note.issued_at.date())),
            ("Contract", note.contract_id),
            ("Currency", currency),
        ),
        amount_heading=f"Amount ({currency})",
        rows=rows,
        totals=(
            ViewRow("Subtotal", money(note.subtotal), style="subtotal"),
            ViewRow("Tax", money(note.tax)),
            ViewRow("Total", money(note.total), style="due"),
        ),
        notes=(
            f"This credit note corrects invoice {note.invoice_number}: the total is the change to the "
            "amount invoiced (a negative total is in your favour). The contract has ended, so no later "
            "invoice carries this correction.",
        ),
    )


def _statement_view(statement: StatementFinalized, parties: Parties) -> DocumentView:
    currency = statement.currency

    def money(amount: Decimal) -> str:
        return format_amount(amount, currency)

    rows = tuple(
        ViewRow(f"Allocation {allocation_id}", money(statement.earnings[allocation_id]))
        for allocation_id in sorted(statement.earnings)
    ) or (ViewRow("No billable deliveries this month", style="empty"),)
    month = _format_month(statement.month)
    if statement.net < 0:
        net_row = ViewRow("Net (carried to next month)", money(statement.net), style="due")
        outcome = (
            f"The net is negative: {money(statement.net)} is carried to next month and set "
            f"against next month's earnings. Nothing is paid out for {month}."
        )
    else:
        net_row = ViewRow("Net payable", money(statement.net), style="due")
        outcome = (
            f"{money(statement.net)} is payable for {month}, paid out on your payout schedule "
            "(payouts below your minimum wait for the next period)."
        )
    return DocumentView(
        kind="statement",
        title="Earnings statement",
        number=statement.number,
        currency=currency,
        issued_at=format_utc(statement.issued_at),
        platform_name=parties.platform_name,
        platform_address=parties.platform_address,
        recipient_label="Supplier",
        recipient_name=parties.supplier_name(statement.supplier_id),
        recipient_id=statement.supplier_id,
        meta=(
            ("Statement number", statement.number),
            ("Month", month),
            ("Issue date", _format_date(statement.issued_at.date())),
            ("Currency", currency),
        ),
        amount_heading=f"Earnings ({currency})",
        rows=rows,
        totals=(
            ViewRow("Earnings total", money(statement.earnings_total), style="subtotal"),
            ViewRow("SLA chargebacks", money(statement.sla_chargebacks)),
            # Only when there are any: a statement without clawbacks renders as before (R15 extension).
            *(
                (ViewRow("Clawbacks (refunds, lost disputes)", money(statement.clawbacks)),)
                if statement.clawbacks
                else ()
            ),
            ViewRow("Carried from previous month", money(statement.carried)),
            net_row,
        ),
        notes=(outcome,),
    )


def build_view(model: Document, parties: Parties | None = None) -> DocumentView:
    """Check the document adds up, then format everything a template prints."""
    check_document(model)
    parties = parties or Parties()
    if isinstance(model, InvoiceFinalized):
        return _invoice_view(model, parties)
    if isinstance(model, CreditNoteIssued):
        return _credit_note_view(model, parties)
    if isinstance(model, StatementFinalized):
        return _statement_view(model, parties)
    raise TypeError(f"not a document model: {type(model).__name__}")
