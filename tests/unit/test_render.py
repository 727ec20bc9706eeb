"""Document rendering (services.invoicing.render): what an invoice, credit note and statement show.

Documents are built here directly from minor-unit integers, with the R10/R12 arithmetic done in
the test (tax rounded half to even by ``round(Fraction)``, amount due and carried credit split by
sign). Expected display strings come from this file's own formatter (digits grouped by a regex),
never from the renderer. Only four PDFs are rendered (~0.1–0.3 s each); everything else is
checked on the HTML or on the view.
"""

from __future__ import annotations

import html as html_lib
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.errors import DomainRuleError, InvalidAmountError
from schemas.events import (
    AdjustmentLine,
    CreditNoteIssued,
    InvoiceFinalized,
    InvoiceLines,
    StatementFinalized,
)
from services.invoicing.render import (
    Parties,
    document_json,
    format_amount,
    render_credit_note_html,
    render_invoice_html,
    render_invoice_pdf,
    render_statement_html,
    render_statement_pdf,
    write_documents,
)
from services.invoicing.render.documents import build_view

try:
    import pypdf

    HAVE_PYPDF = True
except ImportError:  # pragma: no cover - pypdf is a test extra; the HTML is checked instead
    HAVE_PYPDF = False

# ISO 4217 minor digits, written out here so expectations do not come from the code under test.
EXPONENTS = {"USD": 2, "JPY": 0, "KWD": 3, "CLF": 4}


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def dec(minor: int, currency: str) -> Decimal:
    """Minor units → the document's decimal string value (``15340`` USD → ``Decimal("153.40")``)."""
    return Decimal(minor).scaleb(-EXPONENTS[currency])


def shown(minor: int, currency: str) -> str:
    """How a finance document prints an amount: code, minus, grouped digits, exact minor digits."""
    places = EXPONENTS[currency]
    digits = str(abs(minor)).rjust(places + 1, "0")
    whole, fraction = (digits[:-places], digits[-places:]) if places else (digits, "")
    whole = re.sub(r"(?<=\d)(?=(\d{3})+$)", ",", whole)
    sign = "-" if minor < 0 else ""
    return f"{currency} {sign}{whole}" + (f".{fraction}" if places else "")


@dataclass(frozen=True)
class Adj:
    start: datetime
    end: datetime
    kind: str
    minor: int


def make_invoice(
    *,
    currency: str = "USD",
    usage: int,
    true_up: int = 0,
    adjustments: tuple[Adj, ...] = (),
    sla_credit: int = 0,
    tax_rate: str = "0.20",
    prepaid: int = 0,
    credit_in: int = 0,
    renter_id: str = "renter-1",
    number: str = "INV-2026-000153",
    uptime: str | None = None,
    sla_percent: str = "0",
) -> InvoiceFinalized:
    """An invoice whose totals follow R10, computed here in minor units."""
    adjustments_minor = sum(a.minor for a in adjustments)
    subtotal = usage + true_up + adjustments_minor + sla_credit
    tax = round(Fraction(subtotal) * Fraction(tax_rate)) if subtotal > 0 else 0  # half to even
    total = subtotal + tax
    remaining = total - prepaid - credit_in
    return InvoiceFinalized(
        invoice_id="inv-" + number,
        number=number,
        contract_id="contract-9",
        renter_id=renter_id,
        currency=currency,
        billing_mode="prepaid" if prepaid else "postpaid",
        period_start=at(2026, 11, 1),
        period_end=at(2026, 12, 1),
        issued_at=at(2026, 12, 1) + timedelta(minutes=5),
        due_at=at(2026, 12, 31) + timedelta(minutes=5),
        lines=InvoiceLines(
            usage=dec(usage, currency),
            commitment_true_up=dec(true_up, currency),
            adjustments=dec(adjustments_minor, currency),
            sla_credit=dec(sla_credit, currency),
        ),
        adjustment_lines=[
            AdjustmentLine(period_start=a.start, period_end=a.end, kind=a.kind, amount=dec(a.minor, currency))
            for a in adjustments
        ],
        subtotal=dec(subtotal, currency),
        tax_rate=Decimal(tax_rate),
        tax=dec(tax, currency),
        total=dec(total, currency),
        prepaid_applied=dec(prepaid, currency),
        credit_applied=dec(credit_in, currency),
        amount_due=dec(max(remaining, 0), currency),
        credit_carried_forward=dec(max(-remaining, 0), currency),
        uptime=None if uptime is None else Decimal(uptime),
        sla_credit_percent=Decimal(sla_percent),
    )


def make_statement(earnings: dict[str, int], chargebacks: int, carried: int, currency: str) -> StatementFinalized:
    total = sum(earnings.values())
    return StatementFinalized(
        statement_id="stm-1",
        number="STM-2026-000007",
        supplier_id="supplier-7",
        currency=currency,
        month="2026-11",
        earnings={allocation: dec(minor, currency) for allocation, minor in earnings.items()},
        earnings_total=dec(total, currency),
        sla_chargebacks=dec(chargebacks, currency),
        carried=dec(carried, currency),
        net=dec(total + chargebacks + carried, currency),
        issued_at=at(2026, 12, 1),
    )


def make_credit_note() -> CreditNoteIssued:
    lines = [
        Adj(at(2026, 10, 1), at(2026, 11, 1), "usage", -1250),
        Adj(at(2026, 10, 1), at(2026, 11, 1), "sla_credit", -310),
    ]
    subtotal = sum(a.minor for a in lines)
    tax = round(Fraction(subtotal) * Fraction("0.10"))
    return CreditNoteIssued(
        credit_note_id="cn-1",
        number="CN-2027-000004",
        contract_id="contract-9",
        renter_id="renter-1",
        currency="USD",
        invoice_number="INV-2026-000153",
        adjustment_lines=[
            AdjustmentLine(period_start=a.start, period_end=a.end, kind=a.kind, amount=dec(a.minor, "USD"))
            for a in lines
        ],
        subtotal=dec(subtotal, "USD"),
        tax=dec(tax, "USD"),
        total=dec(subtotal + tax, "USD"),
        issued_at=at(2027, 1, 15),
    )


def text_of(pdf_bytes: bytes, html_fallback: str) -> str:
    """The document's text with whitespace collapsed: from the PDF (pypdf) when it is importable."""
    assert pdf_bytes.startswith(b"%PDF-")
    if HAVE_PYPDF:
        reader = pypdf.PdfReader(io.BytesIO(pdf_bytes))
        raw = "\n".join(page.extract_text() for page in reader.pages)
    else:  # pragma: no cover
        raw = html_lib.unescape(re.sub(r"<[^>]+>", " ", html_fallback.split("</head>")[1]))
    return " ".join(raw.split())


def assert_in_order(text: str, items: list[str]) -> None:
    position = 0
    for item in items:
        found = text.find(item, position)
        assert found >= 0, f"{item!r} missing (or out of order) after position {position} in: {text}"
        position = found + len(item)


# --- invoices ----------------------------------------------------------------------------------------


def test_invoice_pdf_shows_every_line_in_r10_order_with_exact_amounts() -> None:
    adjustments = (
        Adj(at(2026, 9, 1), at(2026, 10, 1), "usage", -520),
        Adj(at(2026, 10, 1), at(2026, 11, 1), "sla_credit", 75),
    )
    invoice = make_invoice(
        usage=15340,
        true_up=0,
        adjustments=adjustments,
        sla_credit=-1534,
        tax_rate="0.20",
        prepaid=10000,
        credit_in=250,
        uptime="0.985",
        sla_percent="10",
    )
    parties = Parties(
        platform_address=("1 Market Street", "San Francisco, CA"), renter_names={"renter-1": "Acme AI Labs"}
    )
    html = render_invoice_html(invoice, parties)
    text = text_of(render_invoice_pdf(invoice, parties), html)
    # Exactly these rows, in R10 order (the text check below could skip a duplicated label).
    assert [row.label for row in build_view(invoice, parties).rows] == [
        "Usage",
        "Commitment true-up",
        "Adjustment for 2026-09-01 – 2026-09-30 (usage)",
        "Adjustment for 2026-10-01 – 2026-10-31 (SLA credit)",
        "SLA credit",
    ]
    assert text.count("Commitment true-up") == 1

    subtotal = 15340 + 0 - 520 + 75 - 1534
    tax = round(Fraction(subtotal) * Fraction(1, 5))
    due = subtotal + tax - 10000 - 250
    assert (subtotal, tax, due) == (13361, 2672, 5783)  # the test's own arithmetic, checked by hand
    assert_in_order(
        text,
        [
            "Settle GPU Marketplace",
            "1 Market Street",
            "Invoice",
            "INV-2026-000153",
            "Acme AI Labs",
            "renter-1",
            "Issue date",
            "2026-12-01",
            "Due date",
            "2026-12-31",
            "Billing period",
            "2026-11-01 – 2026-11-30",  # half-open [Nov 1, Dec 1): last day Nov 30
            "Contract",
            "contract-9",
            "Billing mode",
            "Prepaid",
            "Usage",
            shown(15340, "USD"),
            "Commitment true-up",
            shown(0, "USD"),
            "Adjustment for 2026-09-01 – 2026-09-30 (usage)",
            shown(-520, "USD"),
            "Adjustment for 2026-10-01 – 2026-10-31 (SLA credit)",
            shown(75, "USD"),
            "SLA credit",
            "Uptime 98.5%",
            "10% of usage credited",
            shown(-1534, "USD"),
            "Subtotal",
            shown(subtotal, "USD"),
            "Tax (20%)",
            shown(tax, "USD"),
            "Total",
            shown(subtotal + tax, "USD"),
            "Prepaid applied",
            shown(-10000, "USD"),
            "Credit applied",
            shown(-250, "USD"),
            "Amount due",
            shown(due, "USD"),
            "Credit carried forward",
            shown(0, "USD"),
            "Payment terms: net 30 days",
        ],
    )
    for expected in ("USD 153.40", "USD 133.61", "USD 57.83"):
        assert expected in text
    assert "Page 1 of 1" in text


def test_jpy_invoice_shows_no_decimals_and_every_zero_line_but_no_adjustment_rows() -> None:
    invoice = make_invoice(currency="JPY", usage=1500, true_up=1234500, tax_rate="0.10", number="INV-2026-000154")
    view = build_view(invoice)
    assert [row.label for row in view.rows] == ["Usage", "Commitment true-up", "SLA credit"]
    text = text_of(render_invoice_pdf(invoice), render_invoice_html(invoice))
    subtotal = 1500 + 1234500
    assert_in_order(
        text,
        [
            "Usage",
            "JPY 1,500",
            "Commitment true-up",
            "JPY 1,234,500",
            "SLA credit",
            "JPY 0",
            "Tax (10%)",
            shown(subtotal // 10, "JPY"),
            "Total",
            shown(subtotal * 11 // 10, "JPY"),
        ],
    )
    assert "Adjustment for" not in text
    assert not re.search(r"JPY -?[0-9,]+\.[0-9]", text), "JPY has no minor digits"


def test_tax_rate_and_uptime_are_shown_exactly() -> None:
    invoice = make_invoice(usage=100000, sla_credit=-2500, tax_rate="0.0825", uptime="0.9899999", sla_percent="2.5")
    html = render_invoice_html(invoice)
    assert "Tax (8.25%)" in html
    # 98.99999 % is truncated, never rounded up to a threshold it did not reach.
    assert "Uptime 98.999%" in html
    assert "2.5% of usage credited" in html


def test_hostile_renter_id_and_names_are_escaped_in_html() -> None:
    hostile_id = "<script>alert('x')</script>"
    invoice = make_invoice(usage=100, renter_id=hostile_id)
    parties = Parties(platform_name='Evil "><img src=x onerror=alert(1)>')
    html = render_invoice_html(invoice, parties)
    assert "<script>" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(" in html
    assert "&lt;/script&gt;" in html
    assert hostile_id in html_lib.unescape(html)  # shown as text, not dropped
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    note_html = render_credit_note_html(make_credit_note(), Parties(renter_names={"renter-1": "<b>Bold</b>"}))
    assert "<b>" not in note_html
    assert "&lt;b&gt;Bold&lt;/b&gt;" in note_html


def test_an_invoice_that_does_not_add_up_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    good = make_invoice(usage=15340)
    broken = good.model_copy(update={"total": good.total + Decimal("0.01")})
    with pytest.raises(DomainRuleError, match="does not add up"):
        render_invoice_html(broken)
    with pytest.raises(DomainRuleError):
        write_documents(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    precise_lines = good.lines.model_copy(update={"usage": Decimal("153.405")})
    too_precise = good.model_copy(update={"lines": precise_lines})
    with pytest.raises(InvalidAmountError):
        render_invoice_html(too_precise)


# --- statements and credit notes ----------------------------------------------------------------------


def test_statement_with_negative_net_is_carried_to_next_month() -> None:
    statement = make_statement(
        {"alloc-b": 1500, "alloc-a": 2000000}, chargebacks=-3500000, carried=-1000, currency="JPY"
    )
    net = 1500 + 2000000 - 3500000 - 1000
    assert net == -1499500
    text = text_of(render_statement_pdf(statement), render_statement_html(statement))
    assert_in_order(
        text,
        [
            "Earnings statement",
            "STM-2026-000007",
            "supplier-7",
            "November 2026",
            "Allocation alloc-a",
            "JPY 2,000,000",
            "Allocation alloc-b",
            "JPY 1,500",
            "Earnings total",
            "JPY 2,001,500",
            "SLA chargebacks",
            "JPY -3,500,000",
            "Carried from previous month",
            "JPY -1,000",
            "Net (carried to next month)",
            shown(net, "JPY"),
        ],
    )
    assert "Nothing is paid out for November 2026" in text
    assert "Net payable" not in text


def test_statement_with_positive_net_is_payable() -> None:
    statement = make_statement({"alloc-1": 123456}, chargebacks=-456, carried=0, currency="USD")
    html = render_statement_html(statement)
    assert "Net payable" in html
    assert shown(123000, "USD") in html
    assert "carried to next month" not in html


def test_statement_with_a_clawback_shows_it_and_one_without_does_not() -> None:
    plain = make_statement({"alloc-1": 4500}, chargebacks=0, carried=0, currency="USD")
    assert "Clawbacks" not in render_statement_html(plain)  # unchanged when there are none
    clawed = plain.model_copy(update={"clawbacks": Decimal("-30.00"), "net": Decimal("15.00")})
    text = text_of(render_statement_pdf(clawed), render_statement_html(clawed))
    assert_in_order(
        text,
        ["Earnings total", "USD 45.00", "SLA chargebacks", "Clawbacks", "USD -30.00", "Net payable", "USD 15.00"],
    )
    bad = plain.model_copy(update={"clawbacks": Decimal("-30.00")})  # net not reduced: refused
    with pytest.raises(DomainRuleError, match="clawbacks"):
        render_statement_html(bad)


def test_credit_note_pdf_names_the_invoice_it_corrects_and_is_written_with_its_json(tmp_path: Path) -> None:
    note = make_credit_note()
    paths = write_documents(note, tmp_path / "docs")
    assert [p.name for p in paths] == ["CN-2027-000004.json", "CN-2027-000004.pdf"]
    assert CreditNoteIssued.model_validate_json(paths[0].read_bytes()) == note
    subtotal = -1250 - 310
    tax = round(Fraction(subtotal, 10))
    text = text_of(paths[1].read_bytes(), render_credit_note_html(note))
    assert_in_order(
        text,
        [
            "Credit note",
            "CN-2027-000004",
            "Corrects invoice",
            "INV-2026-000153",
            "Adjustment for 2026-10-01 – 2026-10-31 (usage)",
            "USD -12.50",
            "Adjustment for 2026-10-01 – 2026-10-31 (SLA credit)",
            "USD -3.10",
            "Subtotal",
            shown(subtotal, "USD"),
            "Tax",
            shown(tax, "USD"),
            "Total",
            shown(subtotal + tax, "USD"),
        ],
    )
    assert not list((tmp_path / "docs").glob(".*")), "no temporary files are left behind"


# --- JSON -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        make_invoice(
            usage=15340,
            adjustments=(Adj(at(2026, 10, 1), at(2026, 11, 1), "usage", 99),),
            sla_credit=-10,
            uptime="0.99",
            sla_percent="5",
        ),
        make_invoice(currency="JPY", usage=1500, number="INV-2026-000155"),
        make_statement({"a": 1, "b": 2}, chargebacks=0, carried=-5, currency="KWD"),
        make_credit_note(),
    ],
    ids=["invoice-usd", "invoice-jpy", "statement-kwd", "credit-note"],
)
def test_document_json_is_stable_sorted_and_round_trips(
    model: InvoiceFinalized | CreditNoteIssued | StatementFinalized,
) -> None:
    first = document_json(model)
    assert first == document_json(model)
    assert type(model).model_validate_json(first) == model
    data = json.loads(first)

    def assert_sorted(value: object) -> None:
        if isinstance(value, dict):
            assert list(value) == sorted(value)
            for item in value.values():
                assert_sorted(item)
        elif isinstance(value, list):
            for item in value:
                assert_sorted(item)

    assert_sorted(data)
    assert first.startswith(b'{\n  "')  # indented
    assert first.endswith(b"}\n")  # one trailing newline
    if isinstance(model, InvoiceFinalized):
        exponent = EXPONENTS[model.currency]
        assert data["total"] == str(model.total)
        assert data["lines"]["usage"] in ("153.40", "1500")
        for key in ("total", "tax", "amount_due"):
            assert len(data[key].partition(".")[2]) == exponent


# --- amount formatting ------------------------------------------------------------------------------------


@given(minor=st.integers(min_value=-(10**17), max_value=10**17), currency=st.sampled_from(sorted(EXPONENTS)))
def test_format_amount_prints_exactly_the_minor_digits_with_separators(minor: int, currency: str) -> None:
    assert format_amount(dec(minor, currency), currency) == shown(minor, currency)


def test_format_amount_pads_but_never_rounds() -> None:
    assert format_amount(Decimal("153.4"), "USD") == "USD 153.40"
    assert format_amount(Decimal("0"), "KWD") == "KWD 0.000"
    assert format_amount(Decimal("1500.000"), "JPY") == "JPY 1,500"
    with pytest.raises(InvalidAmountError):
        format_amount(Decimal("1.005"), "USD")
    with pytest.raises(InvalidAmountError):
        format_amount(Decimal("1500.5"), "JPY")
    with pytest.raises(InvalidAmountError):
        format_amount(Decimal("NaN"), "USD")
