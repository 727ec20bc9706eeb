"""NACHA ACH files (R16): our own writer and reader (no well-kept library exists; STYLE.md).

Layout (NACHA Operating Rules, Appendix Three): records of 94 characters, one per line, in blocks
of 10 (the last block filled with records of ``9``s)::

    1  file header        immediate destination/origin, creation date+time, file id modifier
    5  batch header       one per (effective date, SEC code): PPD for individuals, CCD for businesses;
                          service class 220 (credits only), or 200 with an offset debit (balanced files)
    6  entry detail       one per payout: transaction code 22/32 (checking/savings credit), RDFI, amount
    7  addenda            type 05 with the payout's reference (PPD+/CCD+); 98 = NOC, 99 = return
    8  batch control      entry+addenda count, entry hash, total debits/credits
    9  file control       batch and block counts, entry hash, totals

The entry hash is the sum of the 8-digit RDFI identifications (routing number without its check
digit) of the entries, keeping its rightmost 10 digits.

Determinism: entries are ordered by (effective date, SEC code, payout id), batch numbers and trace
numbers follow that order from :attr:`PayoutBatch.first_trace` (7 digits, wrapping from 9999999 to 1),
the creation date and time come from :attr:`PayoutBatch.created_at` (in UTC) and the file id modifier
from :attr:`PayoutBatch.sequence` (0 → ``A`` … 25 → ``Z``, 26 → ``0`` … 35 → ``9``). The same batch
therefore always gives the same bytes, and a resend carries the same header fields, which is how the
bank recognises a duplicate.

The reader accepts LF or CRLF line ends and a missing last block's padding, checks every record's
length, the batch and file control totals and the entry hash, and raises :class:`BankFileError` on
any difference: a file whose totals do not add up is never half-read.
"""

from __future__ import annotations

import hashlib
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from itertools import groupby
from typing import Literal

from services.payouts.rails.payees import check_payee, check_routing_number, check_us_account_number
from services.payouts.rails.port import (
    REPRESENTABLE_CODES,
    BankFileError,
    BuiltFile,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    RailReturn,
    UsBankAccount,
)

__all__ = [
    "BLOCKING_FACTOR",
    "MAX_ENTRY_AMOUNT_MINOR",
    "RECORD_LENGTH",
    "REPRESENTABLE_RETURN_CODES",
    "RETURN_REASONS",
    "NachaAddenda",
    "NachaBatch",
    "NachaEntry",
    "NachaFile",
    "NachaOriginator",
    "NachaRail",
    "entry_hash",
    "file_id_modifier",
    "read_nacha",
]

RECORD_LENGTH = 94
BLOCKING_FACTOR = 10
MAX_ENTRY_AMOUNT_MINOR = 99_999_999_99  # the entry's amount field has 10 digits of cents
MAX_ENTRIES_PER_FILE = 99_999_999 // 2  # the file control's 8-digit entry/addenda count, one addenda each
_MODIFIERS = string.ascii_uppercase + string.digits
_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))

SecCode = Literal["PPD", "CCD"]

# Transaction codes of credits we originate (and the return/NOC codes a bank answers them with).
_CREDIT_CODES = {"checking": "22", "savings": "32"}
_DEBIT_CODES = frozenset({"27", "37", "26", "36", "28", "38"})

RETURN_REASONS: dict[str, str] = {
    "R01": "insufficient funds",
    "R02": "account closed",
    "R03": "no account / unable to locate account",
    "R04": "invalid account number structure",
    "R05": "unauthorized debit to consumer account using corporate SEC code",
    "R06": "returned per ODFI's request",
    "R07": "authorization revoked by customer",
    "R08": "payment stopped",
    "R09": "uncollected funds",
    "R10": "customer advises originator is not known to receiver and/or not authorized",
    "R11": "customer advises entry not in accordance with the terms of the authorization",
    "R12": "account sold to another DFI",
    "R13": "invalid ACH routing number",
    "R14": "representative payee deceased or unable to continue in that capacity",
    "R15": "beneficiary or account holder deceased",
    "R16": "account frozen / entry returned per OFAC instruction",
    "R17": "file record edit criteria / entry with invalid account number initiated under questionable circumstances",
    "R20": "non-transaction account",
    "R23": "credit entry refused by receiver",
    "R24": "duplicate entry",
    "R29": "corporate customer advises not authorized",
    "R31": "permissible return entry (CCD and CTX only)",
    "R33": "return of XCK entry",
    "R61": "misrouted return",
    "R67": "duplicate return",
    "R68": "untimely return",
    "R69": "field error(s)",
    "R70": "permissible return entry not accepted / return not requested by ODFI",
    "R80": "IAT entry coding error",
    "R85": "incorrectly coded outbound international payment",
}
"""Words for the common return codes (NACHA Operating Rules, Appendix Four); others read "ACH return Rnn"."""

NOC_REASONS: dict[str, str] = {
    "C01": "incorrect DFI account number",
    "C02": "incorrect routing number",
    "C03": "incorrect routing number and DFI account number",
    "C05": "incorrect transaction code",
    "C06": "incorrect DFI account number and transaction code",
    "C07": "incorrect routing number, DFI account number and transaction code",
    "C09": "incorrect individual identification number",
    "C13": "addenda format error",
}

REPRESENTABLE_RETURN_CODES = REPRESENTABLE_CODES
"""R16: only these returns may be sent again with unchanged payee details (at most twice; see
:func:`services.payouts.rails.port.retry_allowed`)."""


@dataclass(frozen=True, slots=True)
class NachaOriginator:
    """Our side of the file, given by the ODFI (configuration, not per-payout data).

    ``immediate_destination`` is the 9-digit routing number of the bank (or operator) receiving the
    file, ``immediate_origin`` the 10 characters the bank assigned us (often ``1`` + tax id),
    ``company_id`` the 10-character originator id in batch headers, ``odfi_routing`` our bank's
    routing number (its first 8 digits start every trace number). With ``offset_account`` (for banks
    that want balanced files) every batch ends with one debit entry to our account for the batch's
    credit total, and its service class is 200 (mixed) instead of 220 (credits only).
    """

    immediate_destination: str
    immediate_destination_name: str
    immediate_origin: str
    immediate_origin_name: str
    company_name: str
    company_id: str
    odfi_routing: str
    entry_description: str = "PAYOUT"
    reference_code: str = ""
    offset_account: UsBankAccount | None = None

    def __post_init__(self) -> None:
        if self.offset_account is not None and (
            check_routing_number(self.offset_account.routing_number)
            or check_us_account_number(self.offset_account.account_number)
        ):
            raise InvalidBatchError("NACHA originator: the offset account's routing or account number is invalid")
        for name in ("immediate_destination", "odfi_routing"):
            value = getattr(self, name)
            if len(value) != 9 or not value.isdigit():
                raise InvalidBatchError(f"NACHA originator: {name} must be 9 digits, got {value!r}")
        limits = {
            "immediate_destination_name": 23,
            "immediate_origin": 10,
            "immediate_origin_name": 23,
            "company_name": 16,
            "company_id": 10,
            "entry_description": 10,
            "reference_code": 8,
        }
        for name, limit in limits.items():
            value = getattr(self, name)
            if len(value) > limit or not set(value) <= _PRINTABLE:
                raise InvalidBatchError(f"NACHA originator: {name} {value!r} is over {limit} ASCII characters")


@dataclass(frozen=True, slots=True)
class NachaAddenda:
    type_code: str
    raw: str  # positions 4-83 for 05; the whole record for 98/99 (fields below)
    return_code: str = ""
    original_trace: str = ""
    original_rdfi: str = ""
    corrected_data: str = ""
    trace_number: str = ""


@dataclass(frozen=True, slots=True)
class NachaEntry:
    transaction_code: str
    rdfi: str  # 8 digits
    check_digit: str
    account_number: str
    amount_minor: int
    individual_id: str
    individual_name: str
    discretionary_data: str
    trace_number: str
    addenda: tuple[NachaAddenda, ...] = ()

    @property
    def routing_number(self) -> str:
        return self.rdfi + self.check_digit

    @property
    def is_debit(self) -> bool:
        return self.transaction_code in _DEBIT_CODES


@dataclass(frozen=True, slots=True)
class NachaBatch:
    service_class_code: str
    company_name: str
    company_id: str
    sec_code: str
    entry_description: str
    effective_date: date | None
    odfi: str
    batch_number: int
    entries: tuple[NachaEntry, ...]
    entry_hash: int
    total_debit_minor: int
    total_credit_minor: int


@dataclass(frozen=True, slots=True)
class NachaFile:
    immediate_destination: str
    immediate_origin: str
    created: datetime
    file_id_modifier: str
    immediate_destination_name: str
    immediate_origin_name: str
    reference_code: str
    batches: tuple[NachaBatch, ...] = field(default=())
    entry_hash: int = 0
    total_debit_minor: int = 0
    total_credit_minor: int = 0
    block_count: int = 0


# --------------------------------------------------------------------------------------------- writer


def file_id_modifier(sequence: int) -> str:
    """The n-th file of a day (0-based) → ``A``…``Z``, ``0``…``9``. A 37th file the same day is refused."""
    if not 0 <= sequence < len(_MODIFIERS):
        raise InvalidBatchError(f"NACHA allows {len(_MODIFIERS)} files per day and origin; sequence {sequence}")
    return _MODIFIERS[sequence]


def entry_hash(rdfis: Iterable[str]) -> int:
    """Sum of the 8-digit RDFI identifications, rightmost 10 digits kept."""
    return sum(int(r) for r in rdfis) % 10**10


def _text(value: str, width: int) -> str:
    """An alphanumeric field: ASCII (accents folded), upper case, left-justified, space-filled, truncated."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(ch if ch in _PRINTABLE else " " for ch in folded).upper()
    return cleaned[:width].ljust(width)


def _trace_digits(sequence: int) -> str:
    """A trace number's 7-digit sequence part: 1 … 9999999, then 1 again."""
    return _num((sequence - 1) % 9_999_999 + 1, 7)


def _num(value: int, width: int) -> str:
    digits = str(value)
    assert value >= 0 and len(digits) <= width, f"{value} does not fit {width} digits"
    return digits.zfill(width)


def _individual_id(payout_id: str) -> str:
    """The payout id when it fits the 15-character field, else a stable 15-character digest of it."""
    if len(payout_id) <= 15 and set(payout_id) <= _PRINTABLE:
        return payout_id
    return hashlib.sha256(payout_id.encode()).hexdigest()[:15].upper()


def sec_code_for(instruction: PayoutInstruction) -> SecCode:
    return "PPD" if instruction.payee_kind == "individual" else "CCD"


class NachaRail:
    """ACH credits as a NACHA file (PPD/CCD, one batch per effective date and SEC code)."""

    name = "ach"
    max_per_file = MAX_ENTRIES_PER_FILE

    def __init__(self, originator: NachaOriginator, *, line_ending: str = "\n") -> None:
        assert line_ending in ("\n", "\r\n")
        self.originator = originator
        self.line_ending = line_ending

    def validate(self, payee: Payee) -> list[str]:
        problems = check_payee(payee)
        if not isinstance(payee.account, UsBankAccount):
            problems.append("ACH pays US bank accounts (routing + account number) only")
        return problems

    def build(self, batch: PayoutBatch) -> BuiltFile:
        o = self.originator
        if len(batch.instructions) > MAX_ENTRIES_PER_FILE:
            raise InvalidBatchError(f"batch {batch.batch_id}: over {MAX_ENTRIES_PER_FILE} entries in one file")
        for i in batch.instructions:
            if i.currency != "USD":
                raise InvalidBatchError(f"payout {i.payout_id}: ACH carries USD only, not {i.currency}")
            if i.amount_minor > MAX_ENTRY_AMOUNT_MINOR:
                raise InvalidBatchError(f"payout {i.payout_id}: {i.amount_minor} cents is over the entry's 10 digits")
            problems = self.validate(i.payee)
            if problems:
                raise InvalidBatchError(f"payout {i.payout_id}: " + "; ".join(problems))
        created = batch.created_at.astimezone(UTC)
        modifier = file_id_modifier(batch.sequence)
        odfi8 = o.odfi_routing[:8]
        lines: list[str] = [
            "101"
            + " "
            + o.immediate_destination
            + _text(o.immediate_origin, 10).strip().rjust(10)  # " " + 9 digits, or 10 characters
            + created.strftime("%y%m%d%H%M")
            + modifier
            + "094"
            + "10"
            + "1"
            + _text(o.immediate_destination_name, 23)
            + _text(o.immediate_origin_name, 23)
            + _text(o.reference_code, 8)
        ]
        ordered = sorted(batch.instructions, key=lambda i: (i.effective_date, sec_code_for(i), i.payout_id))
        references: dict[str, str] = {}
        trace_sequence = batch.first_trace - 1
        file_hash = 0
        file_credit = 0
        file_debit = 0
        file_count = 0
        batch_count = 0
        for (effective, sec), group in groupby(ordered, key=lambda i: (i.effective_date, sec_code_for(i))):
            batch_count += 1
            service_class = "200" if o.offset_account is not None else "220"
            lines.append(
                "5"
                + service_class
                + _text(o.company_name, 16)
                + " " * 20
                + _text(o.company_id, 10)
                + sec
                + _text(o.entry_description, 10)
                + " " * 6
                + effective.strftime("%y%m%d")
                + "   "
                + "1"
                + odfi8
                + _num(batch_count, 7)
            )
            batch_hash = 0
            batch_credit = 0
            batch_records = 0
            for i in group:
                account = i.account
                assert isinstance(account, UsBankAccount)  # validate() above
                trace_sequence += 1
                trace = odfi8 + _trace_digits(trace_sequence)
                references[i.payout_id] = trace
                has_addenda = bool(i.reference.strip())
                lines.append(
                    "6"
                    + _CREDIT_CODES[account.account_type]
                    + account.routing_number
                    + _text(account.account_number, 17)
                    + _num(i.amount_minor, 10)
                    + _text(_individual_id(i.payout_id), 15)
                    + _text(i.payee_name, 22)
                    + "  "
                    + ("1" if has_addenda else "0")
                    + trace
                )
                batch_records += 1
                if has_addenda:
                    lines.append("705" + _text(i.reference, 80) + "0001" + trace[-7:])
                    batch_records += 1
                batch_hash += int(account.routing_number[:8])
                batch_credit += i.amount_minor
            batch_debit = 0
            if o.offset_account is not None:
                if batch_credit > MAX_ENTRY_AMOUNT_MINOR:
                    raise InvalidBatchError(
                        f"batch {batch_count}: its offset {batch_credit} is over the entry's 10 digits"
                    )
                trace_sequence += 1
                offset = o.offset_account
                lines.append(
                    "6"
                    + ("27" if offset.account_type == "checking" else "37")
                    + offset.routing_number
                    + _text(offset.account_number, 17)
                    + _num(batch_credit, 10)
                    + _text("OFFSET", 15)
                    + _text(o.company_name, 22)
                    + "  "
                    + "0"
                    + odfi8
                    + _trace_digits(trace_sequence)
                )
                batch_records += 1
                batch_hash += int(offset.routing_number[:8])
                batch_debit = batch_credit
            lines.append(
                "8"
                + service_class
                + _num(batch_records, 6)
                + _num(batch_hash % 10**10, 10)
                + _num(batch_debit, 12)
                + _num(batch_credit, 12)
                + _text(o.company_id, 10)
                + " " * 19
                + " " * 6
                + odfi8
                + _num(batch_count, 7)
            )
            file_hash += batch_hash
            file_debit += batch_debit
            file_credit += batch_credit
            file_count += batch_records
        records = len(lines) + 1
        blocks = -(-records // BLOCKING_FACTOR)
        lines.append(
            "9"
            + _num(batch_count, 6)
            + _num(blocks, 6)
            + _num(file_count, 8)
            + _num(file_hash % 10**10, 10)
            + _num(file_debit, 12)
            + _num(file_credit, 12)
            + " " * 39
        )
        lines.extend(["9" * RECORD_LENGTH] * (blocks * BLOCKING_FACTOR - records))
        assert all(len(line) == RECORD_LENGTH for line in lines), "every NACHA record is 94 characters"
        assert file_credit == sum(i.amount_minor for i in batch.instructions)
        content = (self.line_ending.join(lines) + self.line_ending).encode("ascii")
        file_id = f"ach-{o.immediate_origin.strip()}-{created:%Y%m%d}-{modifier}"
        return BuiltFile(
            file_id=file_id,
            content=content,
            references=references,
            count=len(batch.instructions),
            total_minor=file_credit,
            currency="USD",
            media_type="text/plain",
        )

    def parse_returns(self, content: bytes) -> list[RailReturn]:
        return returns_in(read_nacha(content))


# --------------------------------------------------------------------------------------------- reader


def _digits(record: str, start: int, end: int, what: str) -> int:
    """Positions are 1-based and inclusive, as in the NACHA tables."""
    value = record[start - 1 : end]
    if not value.isdigit():
        raise BankFileError(f"{what} {value!r} (positions {start}-{end}) is not numeric")
    return int(value)


def _field(record: str, start: int, end: int) -> str:
    return record[start - 1 : end].strip()


def _yymmdd(value: str) -> date | None:
    if not value.strip():
        return None
    try:
        return datetime.strptime(value, "%y%m%d").date()
    except ValueError as exc:
        raise BankFileError(f"date {value!r} is not YYMMDD") from exc


def _addenda(record: str) -> NachaAddenda:
    type_code = record[1:3]
    if type_code in ("98", "99"):
        return NachaAddenda(
            type_code=type_code,
            raw=record,
            return_code=_field(record, 4, 6),
            original_trace=_field(record, 7, 21),
            original_rdfi=_field(record, 28, 35),
            corrected_data=_field(record, 36, 64) if type_code == "98" else _field(record, 36, 79),
            trace_number=_field(record, 80, 94),
        )
    return NachaAddenda(type_code=type_code, raw=record[3:83].rstrip())


def read_nacha(content: bytes) -> NachaFile:
    """Parse a NACHA file (ours or a bank's return/NOC file) and check its controls. Raises BankFileError."""
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BankFileError(f"NACHA files are ASCII; byte {exc.start} is not") from exc
    records = [line.rstrip("\r") for line in text.split("\n")]
    while records and records[-1] == "":
        records.pop()
    for n, record in enumerate(records, 1):
        if len(record) != RECORD_LENGTH:
            raise BankFileError(f"record {n} has {len(record)} characters, not {RECORD_LENGTH}")
    if not records or records[0][0] != "1":
        raise BankFileError("a NACHA file starts with a file header (record type 1)")
    h = records[0]
    try:
        created = datetime.strptime(h[23:33], "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        created = datetime.strptime(h[23:29], "%y%m%d").replace(tzinfo=UTC)  # creation time is optional
    batches: list[NachaBatch] = []
    control: str | None = None
    n = 1
    while n < len(records):
        record = records[n]
        kind = record[0]
        if kind == "5":
            batch, n = _read_batch(records, n)
            batches.append(batch)
            continue
        if record == "9" * RECORD_LENGTH:  # block padding (a file control has blanks in 56-94)
            n += 1
            continue
        if kind == "9" and control is None:
            control = record
            n += 1
            continue
        raise BankFileError(f"record {n + 1}: unexpected record type {kind!r}")
    if control is None:
        raise BankFileError("no file control record (type 9)")
    file_hash = entry_hash(e.rdfi for b in batches for e in b.entries)
    debit = sum(b.total_debit_minor for b in batches)
    credit = sum(b.total_credit_minor for b in batches)
    count = sum(len(b.entries) + sum(len(e.addenda) for e in b.entries) for b in batches)
    expected = {
        "batch count": (_digits(control, 2, 7, "batch count"), len(batches)),
        "entry/addenda count": (_digits(control, 14, 21, "entry/addenda count"), count),
        "entry hash": (_digits(control, 22, 31, "entry hash"), file_hash),
        "total debit": (_digits(control, 32, 43, "total debit"), debit),
        "total credit": (_digits(control, 44, 55, "total credit"), credit),
    }
    for what, (stated, actual) in expected.items():
        if stated != actual:
            raise BankFileError(f"file control: {what} says {stated}, the batches add up to {actual}")
    return NachaFile(
        immediate_destination=_field(h, 4, 13),
        immediate_origin=_field(h, 14, 23),
        created=created,
        file_id_modifier=h[33],
        immediate_destination_name=_field(h, 41, 63),
        immediate_origin_name=_field(h, 64, 86),
        reference_code=_field(h, 87, 94),
        batches=tuple(batches),
        entry_hash=file_hash,
        total_debit_minor=debit,
        total_credit_minor=credit,
        block_count=_digits(control, 8, 13, "block count"),
    )


def _read_batch(records: list[str], n: int) -> tuple[NachaBatch, int]:
    h = records[n]
    n += 1
    entries: list[NachaEntry] = []
    while n < len(records) and records[n][0] in "67":
        record = records[n]
        if record[0] == "7":
            if not entries:
                raise BankFileError(f"record {n + 1}: an addenda before any entry")
            last = entries[-1]
            entries[-1] = replace(last, addenda=(*last.addenda, _addenda(record)))
        else:
            entries.append(
                NachaEntry(
                    transaction_code=record[1:3],
                    rdfi=record[3:11],
                    check_digit=record[11],
                    account_number=_field(record, 13, 29),
                    amount_minor=_digits(record, 30, 39, "amount"),
                    individual_id=_field(record, 40, 54),
                    individual_name=_field(record, 55, 76),
                    discretionary_data=_field(record, 77, 78),
                    trace_number=record[79:94],
                )
            )
            if not entries[-1].rdfi.isdigit():
                raise BankFileError(f"record {n + 1}: receiving DFI {entries[-1].rdfi!r} is not numeric")
        n += 1
    if n >= len(records) or records[n][0] != "8":
        raise BankFileError(f"record {n + 1}: a batch ends with a batch control (type 8)")
    c = records[n]
    debit = sum(e.amount_minor for e in entries if e.is_debit)
    credit = sum(e.amount_minor for e in entries if not e.is_debit)
    batch_hash = entry_hash(e.rdfi for e in entries)
    count = len(entries) + sum(len(e.addenda) for e in entries)
    checks = {
        "entry/addenda count": (_digits(c, 5, 10, "entry/addenda count"), count),
        "entry hash": (_digits(c, 11, 20, "entry hash"), batch_hash),
        "total debit": (_digits(c, 21, 32, "total debit"), debit),
        "total credit": (_digits(c, 33, 44, "total credit"), credit),
    }
    number = _digits(h, 88, 94, "batch number")
    for what, (stated, actual) in checks.items():
        if stated != actual:
            raise BankFileError(f"batch {number} control: {what} says {stated}, its entries add up to {actual}")
    if c[87:94] != h[87:94]:
        raise BankFileError(f"batch {number}: control's batch number {c[87:94]!r} differs from its header's")
    batch = NachaBatch(
        service_class_code=h[1:4],
        company_name=_field(h, 5, 20),
        company_id=_field(h, 41, 50),
        sec_code=h[50:53],
        entry_description=_field(h, 54, 63),
        effective_date=_yymmdd(h[69:75]),
        odfi=h[79:87],
        batch_number=number,
        entries=tuple(entries),
        entry_hash=batch_hash,
        total_debit_minor=debit,
        total_credit_minor=credit,
    )
    return batch, n + 1


def returns_in(nacha: NachaFile) -> list[RailReturn]:
    """Returns (addenda 99, R-codes) and notifications of change (addenda 98, C-codes) of a file."""
    found: list[RailReturn] = []
    for batch in nacha.batches:
        for entry in batch.entries:
            for addenda in entry.addenda:
                if addenda.type_code == "99":
                    code = addenda.return_code
                    found.append(
                        RailReturn(
                            kind="return",
                            code=code,
                            rail_reference=addenda.original_trace,
                            reason=RETURN_REASONS.get(code, f"ACH return {code}"),
                            amount_minor=entry.amount_minor,
                        )
                    )
                elif addenda.type_code == "98":
                    code = addenda.return_code
                    found.append(
                        RailReturn(
                            kind="notification_of_change",
                            code=code,
                            rail_reference=addenda.original_trace,
                            reason=NOC_REASONS.get(code, f"ACH notification of change {code}"),
                            corrected_data=addenda.corrected_data,
                        )
                    )
    return found
