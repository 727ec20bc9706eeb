"""Bank statements for reconciliation (R17): camt.053 and BAI2 to bank lines in integer minor units.

Both readers are tolerant of what they do not use and strict about money:

* **camt.053** (any ``camt.053.001.xx`` version; elements are matched by local name): one
  :class:`BankLine` per transaction detail (``NtryDtls/TxDtls``) of an entry, or per entry when it has
  none. Amounts are decimal strings converted exactly with the currency's ISO 4217 exponent; more
  decimal places than the currency has is an error. When a statement states both its opening and
  closing booked balances (``OPBD``, ``CLBD``), opening + booked credits − booked debits must equal
  closing, or the statement is refused: a statement that does not add up is never half-read.
* **BAI2**: comma-separated records ending in ``/``, ``88`` continuations joined, amounts in the
  currency's minor units without a decimal point (as the format states them). The account (``49``),
  group (``98``) and file (``99``) control totals and record counts are checked. Detail type codes
  100–399 are credits, 400–699 debits, others informational (kept, status ``info``).

Nothing here matches anything: :mod:`services.payouts` reconciles these lines with the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from lxml import etree

from libs.errors import UnknownCurrencyError
from libs.money import currency_exponent
from services.payouts.rails.port import BankFileError

__all__ = ["BankLine", "Statement", "parse_bai2", "parse_camt053"]

Direction = Literal["credit", "debit"]
LineStatus = Literal["booked", "pending", "info"]

_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@dataclass(frozen=True, slots=True)
class BankLine:
    """One movement on our bank account as the bank reports it.

    ``amount_minor`` is positive; ``direction`` says which way it went (``signed_minor`` combines
    them). ``end_to_end_id`` is the reference we sent (our payout id for ISO 20022 rails) when the
    bank reports it; ``bank_reference`` the bank's own; ``return_reason`` the ISO or ACH code when the
    line is a return.
    """

    account: str
    currency: str
    amount_minor: int
    direction: Direction
    status: LineStatus
    booking_date: date | None
    value_date: date | None
    type_code: str
    end_to_end_id: str | None = None
    bank_reference: str | None = None
    customer_reference: str | None = None
    description: str = ""
    return_reason: str | None = None

    def __post_init__(self) -> None:
        assert self.amount_minor >= 0, "amounts are positive; the direction carries the sign"

    @property
    def signed_minor(self) -> int:
        return self.amount_minor if self.direction == "credit" else -self.amount_minor


@dataclass(frozen=True, slots=True)
class Statement:
    account: str
    currency: str
    statement_id: str
    opening_minor: int | None
    closing_minor: int | None
    lines: tuple[BankLine, ...] = field(default=())


def _to_minor(text: str, currency: str, what: str) -> int:
    """A decimal string (``"1234.5"``, ``"-3"``) → signed minor units, exactly. Raises BankFileError."""
    try:
        exponent = currency_exponent(currency)
    except UnknownCurrencyError as exc:
        raise BankFileError(f"{what}: {exc}") from exc
    raw = text.strip()
    negative = raw.startswith("-")
    whole, _, frac = raw.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise BankFileError(f"{what}: {text!r} is not a decimal amount")
    if len(frac.rstrip("0")) > exponent:
        raise BankFileError(f"{what}: {text!r} has more decimal places than {currency} ({exponent})")
    minor = int(whole) * int(10**exponent) + int(frac.rstrip("0").ljust(exponent, "0") or "0")
    return -minor if negative else minor


# ------------------------------------------------------------------------------------------- camt.053


def _local(element: etree._Element) -> str:
    return str(etree.QName(element).localname)


def _children(element: etree._Element | None, name: str) -> Iterator[etree._Element]:
    if element is None:
        return
    for child in element:
        if isinstance(child.tag, str) and _local(child) == name:
            yield child


def _child(element: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        element = next(_children(element, name), None)
    return element


def _text(element: etree._Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _date(element: etree._Element | None) -> date | None:
    """``<Dt>`` or ``<DtTm>`` inside a date choice (BookgDt, ValDt)."""
    day = _text(element, "Dt")
    if day:
        return date.fromisoformat(day[:10])
    moment = _text(element, "DtTm")
    return datetime.fromisoformat(moment).date() if moment else None


def _amount(element: etree._Element | None, what: str) -> tuple[int, str] | None:
    if element is None or not element.text:
        return None
    currency = element.get("Ccy")
    if not currency:
        raise BankFileError(f"{what}: amount without a currency")
    return _to_minor(element.text, str(currency), what), str(currency)


def _direction(value: str | None, what: str) -> Direction:
    if value == "CRDT":
        return "credit"
    if value == "DBIT":
        return "debit"
    raise BankFileError(f"{what}: credit/debit indicator {value!r} is neither CRDT nor DBIT")


def _status(entry: etree._Element) -> LineStatus:
    # camt.053.001.02–.05 write <Sts>BOOK</Sts>; .06 and later <Sts><Cd>BOOK</Cd></Sts>
    code = _text(entry, "Sts", "Cd") or _text(entry, "Sts") or "BOOK"
    return "booked" if code == "BOOK" else "pending" if code in ("PDNG", "FUTR") else "info"


def _type_code(node: etree._Element | None) -> str:
    bank_code = _child(node, "BkTxCd")
    domain = _text(bank_code, "Domn", "Cd")
    if domain:
        return "/".join(
            x
            for x in (domain, _text(bank_code, "Domn", "Fmly", "Cd"), _text(bank_code, "Domn", "Fmly", "SubFmlyCd"))
            if x
        )
    return _text(bank_code, "Prtry", "Cd") or ""


def _reference(value: str | None) -> str | None:
    return None if value in (None, "NOTPROVIDED") else value


def parse_camt053(content: bytes) -> list[Statement]:
    """Statements of a camt.053 (BkToCstmrStmt), each with its bank lines. Raises BankFileError."""
    try:
        root = etree.fromstring(content, _SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise BankFileError(f"camt.053 is not well-formed XML: {exc}") from exc
    report = _child(root, "BkToCstmrStmt")
    if _local(root) != "Document" or report is None:
        raise BankFileError("not a camt.053 (Document/BkToCstmrStmt)")
    statements = []
    for stmt in _children(report, "Stmt"):
        statement_id = _text(stmt, "Id") or ""
        account = _text(stmt, "Acct", "Id", "IBAN") or _text(stmt, "Acct", "Id", "Othr", "Id") or ""
        currency = _text(stmt, "Acct", "Ccy")
        balances: dict[str, int] = {}
        for balance in _children(stmt, "Bal"):
            kind = _text(balance, "Tp", "CdOrPrtry", "Cd") or _text(balance, "Tp", "CdOrPrtry", "Prtry") or ""
            parsed = _amount(_child(balance, "Amt"), f"statement {statement_id} balance {kind}")
            if parsed is None:
                raise BankFileError(f"statement {statement_id}: balance {kind} without an amount")
            minor, balance_currency = parsed
            currency = currency or balance_currency
            sign = -1 if _text(balance, "CdtDbtInd") == "DBIT" else 1
            balances[kind] = sign * minor
        lines: list[BankLine] = []
        for n, entry in enumerate(_children(stmt, "Ntry"), 1):
            what = f"statement {statement_id} entry {n}"
            parsed = _amount(_child(entry, "Amt"), what)
            if parsed is None:
                raise BankFileError(f"{what}: no amount")
            entry_minor, entry_currency = parsed
            currency = currency or entry_currency
            # A reversal (``RvslInd``) already states the direction it books: CRDT undoes a debit (ISO 20022).
            direction = _direction(_text(entry, "CdtDbtInd"), what)
            status = _status(entry)
            booking_date = _date(_child(entry, "BookgDt"))
            value_date = _date(_child(entry, "ValDt"))
            entry_reference = _text(entry, "AcctSvcrRef")
            details = [tx for block in _children(entry, "NtryDtls") for tx in _children(block, "TxDtls")]
            if not details:
                lines.append(
                    BankLine(
                        currency=entry_currency,
                        amount_minor=abs(entry_minor),
                        direction=direction,
                        type_code=_type_code(entry),
                        description=_text(entry, "AddtlNtryInf") or "",
                        account=account,
                        status=status,
                        booking_date=booking_date,
                        value_date=value_date,
                        bank_reference=entry_reference,
                    )
                )
                continue
            detail_sum = 0
            for tx in details:
                tx_amount = _amount(_child(tx, "Amt"), what) or _amount(_child(tx, "AmtDtls", "TxAmt", "Amt"), what)
                if tx_amount is None and len(details) > 1:
                    raise BankFileError(f"{what}: a batch entry's transaction has no amount")
                tx_minor, tx_currency = tx_amount or (entry_minor, entry_currency)
                tx_direction = direction
                indicator = _text(tx, "CdtDbtInd")
                if indicator is not None:
                    tx_direction = _direction(indicator, what)
                detail_sum += tx_minor if tx_direction == direction else -tx_minor
                ustrd = " ".join(e.text or "" for e in _children(_child(tx, "RmtInf"), "Ustrd")).strip()
                lines.append(
                    BankLine(
                        currency=tx_currency,
                        amount_minor=abs(tx_minor),
                        direction=tx_direction,
                        type_code=_type_code(tx) or _type_code(entry),
                        end_to_end_id=_reference(_text(tx, "Refs", "EndToEndId")),
                        customer_reference=_reference(_text(tx, "Refs", "InstrId")),
                        description=ustrd or _text(tx, "AddtlTxInf") or _text(entry, "AddtlNtryInf") or "",
                        return_reason=_text(tx, "RtrInf", "Rsn", "Cd") or _text(tx, "RtrInf", "Rsn", "Prtry"),
                        account=account,
                        status=status,
                        booking_date=booking_date,
                        value_date=value_date,
                        bank_reference=_text(tx, "Refs", "AcctSvcrRef") or entry_reference,
                    )
                )
            if len(details) > 1 and detail_sum != entry_minor:
                raise BankFileError(f"{what}: its transactions add up to {detail_sum}, the entry says {entry_minor}")
        if currency is None:
            raise BankFileError(f"statement {statement_id}: no currency stated")
        opening, closing = balances.get("OPBD"), balances.get("CLBD")
        if opening is not None and closing is not None:
            entries_total = _booked_entries_total(stmt, currency)
            if opening + entries_total != closing:
                raise BankFileError(
                    f"statement {statement_id}: opening {opening} + booked entries {entries_total} ≠ closing {closing}"
                )
        statements.append(Statement(account, currency, statement_id, opening, closing, tuple(lines)))
    return statements


def _booked_entries_total(stmt: etree._Element, currency: str) -> int:
    total = 0
    for entry in _children(stmt, "Ntry"):
        if _status(entry) != "booked":
            continue
        parsed = _amount(_child(entry, "Amt"), "entry")
        assert parsed is not None  # checked while reading the lines
        sign = 1 if _text(entry, "CdtDbtInd") == "CRDT" else -1
        total += sign * parsed[0]
    return total


# ----------------------------------------------------------------------------------------------- BAI2

_EXTRA_FUNDS_FIELDS = {"": 0, "Z": 0, "0": 0, "1": 0, "2": 0, "V": 2, "S": 3}


def _bai_records(text: str) -> list[list[str]]:
    """Logical records as ``[code, part, part, …]``: the rest of each physical line without its ending
    ``/``, then one part per ``88`` continuation (which carries on with the record's next field)."""
    records: list[list[str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        code, _, rest = line.partition(",")
        rest = rest.rstrip().removesuffix("/")
        if code == "88":
            if not records:
                raise BankFileError(f"BAI2 line {number}: a continuation before any record")
            records[-1].append(rest)
            continue
        records.append([code, rest])
    return records


def _fields(record: list[str]) -> list[str]:
    """A logical record's fields: its parts are consecutive fields (a continuation starts a new field)."""
    code, *parts = record
    return [code, *",".join(parts).split(",")]


def _int(value: str, what: str) -> int:
    value = value.strip()
    try:
        return int(value) if value else 0
    except ValueError as exc:
        raise BankFileError(f"BAI2 {what}: {value!r} is not a whole number of minor units") from exc


def _bai_date(value: str) -> date | None:
    try:
        return datetime.strptime(value, "%y%m%d").date() if value.strip() else None
    except ValueError as exc:
        raise BankFileError(f"BAI2 date {value!r} is not YYMMDD") from exc


def _parse_16(record: list[str], account: str, currency: str, as_of: date | None) -> tuple[BankLine, int]:
    """A transaction detail: type, amount, funds type (+ its fields), bank ref, customer ref, text.
    The text is the rest of the record, commas included; a continuation of it joins with a space."""
    tokens: list[tuple[str, str]] = []  # (separator before the field, field)
    for n, part in enumerate(record[1:]):
        for k, piece in enumerate(part.split(",")):
            tokens.append(("," if k else (" " if n else ""), piece))
    parts = [piece for _, piece in tokens]
    if len(parts) < 3:
        raise BankFileError(f"BAI2 16 record for account {account} is too short")
    type_code, amount_text, funds = parts[0].strip(), parts[1], parts[2].strip().upper()
    index = 3
    value_date = None
    if funds == "D":
        distributions = _int(parts[3], "distribution count")
        index = 4 + 2 * distributions
    elif funds in _EXTRA_FUNDS_FIELDS:
        if funds == "V":
            value_date = _bai_date(parts[3])
        index = 3 + _EXTRA_FUNDS_FIELDS[funds]
    else:
        raise BankFileError(f"BAI2 funds type {funds!r} unknown")
    bank_ref = parts[index].strip() if len(parts) > index else ""
    customer_ref = parts[index + 1].strip() if len(parts) > index + 1 else ""
    text_tokens = tokens[index + 2 :]
    text = "".join(sep + piece if k else piece for k, (sep, piece) in enumerate(text_tokens)).strip()
    amount = _int(amount_text, f"16 amount of account {account}")
    if not type_code.isdigit():
        raise BankFileError(f"BAI2 type code {type_code!r} is not numeric")
    code = int(type_code)
    direction: Direction = "credit" if 100 <= code < 400 else "debit"
    status: LineStatus = "booked" if 100 <= code < 700 else "info"
    line = BankLine(
        account=account,
        currency=currency,
        amount_minor=amount,
        direction=direction,
        status=status,
        booking_date=as_of,
        value_date=value_date or as_of,
        type_code=type_code,
        bank_reference=bank_ref or None,
        customer_reference=customer_ref or None,
        description=text,
    )
    return line, amount


def parse_bai2(content: bytes) -> list[Statement]:
    """One :class:`Statement` per account (03 … 49) of a BAI2 file, control totals checked.
    Opening/closing are the 03 record's ledger balances (type 010 and 015) when stated."""
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BankFileError(f"BAI2 files are ASCII; byte {exc.start} is not") from exc
    records = _bai_records(text)
    if not records or records[0][0] != "01":
        raise BankFileError("a BAI2 file starts with a file header (01)")
    if records[-1][0] != "99":
        raise BankFileError("a BAI2 file ends with a file trailer (99)")
    physical = [line for line in text.splitlines() if line.strip()]
    statements: list[Statement] = []
    file_total = 0
    groups = 0
    group_currency = "USD"
    as_of: date | None = None
    group_total = group_accounts = 0
    group_start = account_start = 0
    account: list[str] | None = None
    account_total = 0
    lines: list[BankLine] = []
    opening = closing = None
    # physical line index of each logical record, for record counts (88s count as records)
    starts = [n for n, line in enumerate(physical) if not line.startswith("88,")]
    for index, record in enumerate(records):
        code = record[0]
        position = starts[index]
        if code == "01":
            continue
        if code == "02":
            f = _fields(record)
            as_of = _bai_date(f[4]) if len(f) > 4 else None
            group_currency = (f[6].strip() if len(f) > 6 else "") or "USD"
            group_total = group_accounts = 0
            group_start = position
        elif code == "03":
            f = _fields(record)
            number = f[1].strip()
            currency = (f[2].strip() if len(f) > 2 else "") or group_currency
            try:
                currency_exponent(currency)
            except UnknownCurrencyError as exc:
                raise BankFileError(f"BAI2 account {number}: {exc}") from exc
            account = [number, currency]
            account_start = position
            account_total = 0
            lines = []
            opening = closing = None
            summary = f[3:]
            for k in range(0, len(summary) - 1, 4):  # (type code, amount, item count, funds type)
                type_code, amount_text = summary[k].strip(), summary[k + 1].strip()
                if not type_code:
                    continue
                amount = _int(amount_text, f"03 amount of account {number}")
                account_total += amount
                if type_code == "010":
                    opening = amount
                elif type_code == "015":
                    closing = amount
        elif code == "16":
            if account is None:
                raise BankFileError("BAI2 16 record outside an account")
            line, amount = _parse_16(record, account[0], account[1], as_of)
            lines.append(line)
            account_total += amount
        elif code == "49":
            if account is None:
                raise BankFileError("BAI2 49 record without its 03")
            f = _fields(record)
            stated_total, stated_records = _int(f[1], "49 control total"), _int(f[2], "49 record count")
            actual_records = position - account_start + 1 + _continuations_after(physical, position)
            if stated_total != account_total:
                raise BankFileError(
                    f"BAI2 account {account[0]}: control total {stated_total}, records add up to {account_total}"
                )
            if stated_records != actual_records:
                raise BankFileError(
                    f"BAI2 account {account[0]}: {stated_records} records stated, {actual_records} found"
                )
            statements.append(
                Statement(account[0], account[1], f"{as_of or ''}:{account[0]}", opening, closing, tuple(lines))
            )
            group_total += account_total
            group_accounts += 1
            account = None
        elif code == "98":
            f = _fields(record)
            actual_records = position - group_start + 1 + _continuations_after(physical, position)
            checks = (
                (_int(f[1], "98 total"), group_total),
                (_int(f[2], "98 accounts"), group_accounts),
                (_int(f[3], "98 records"), actual_records),
            )
            if any(stated != actual for stated, actual in checks):
                raise BankFileError(
                    f"BAI2 group trailer: (total, accounts, records) stated {[c[0] for c in checks]}, "
                    f"found {[c[1] for c in checks]}"
                )
            file_total += group_total
            groups += 1
        elif code == "99":
            f = _fields(record)
            checks = (
                (_int(f[1], "99 total"), file_total),
                (_int(f[2], "99 groups"), groups),
                (_int(f[3], "99 records"), len(physical)),
            )
            if any(stated != actual for stated, actual in checks):
                raise BankFileError(
                    f"BAI2 file trailer: (total, groups, records) stated {[c[0] for c in checks]}, "
                    f"found {[c[1] for c in checks]}"
                )
        else:
            raise BankFileError(f"BAI2 record code {code!r} unknown")
    return statements


def _continuations_after(physical: list[str], position: int) -> int:
    count = 0
    while position + 1 + count < len(physical) and physical[position + 1 + count].startswith("88,"):
        count += 1
    return count
