"""Bank files and processor reports → the rows reconciliation stores (no database here).

* Bank files: the payout rails' readers (``services.payouts.rails.statements``: camt.053 of any version,
  BAI2 with its controls checked) give ``BankLine``s; :func:`read_bank_file` detects the format (XML →
  camt.053, a first record ``01,`` → BAI2) and gives each line its identity: a SHA-256 of its content
  and of its ordinal among equal lines of the file, so the same line in an overlapping statement is one
  row, while two equal payments on one statement stay two.
* Processor reports: the gateway port's ``BalanceTransaction`` (``Gateway.balance_transactions``, over
  HTTP) or a JSON file in Stripe's list shape (``{"data": [balance transactions]}`` or a bare list), each
  line with ``id, type, source, amount, fee, net, currency, created, available_on`` and optionally
  ``reference`` or ``metadata.attempt_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from libs.errors import ConfigurationError
from services.payments.gateways.port import BalanceTransaction
from services.payouts.rails.port import BankFileError
from services.payouts.rails.statements import BankLine, parse_bai2, parse_camt053
from services.reconcile.domain.entries import ProcessorLine
from services.reconcile.domain.sources import BankEntry

BankFormat = Literal["camt053", "bai2"]
MAX_BANK_FILE_BYTES = 512 * 1024 * 1024
"""A bank file larger than this is refused before parsing (a day of a busy account is a few MB)."""


@dataclass(frozen=True)
class BankFile:
    file_id: str
    format: BankFormat
    statements: int
    lines: tuple[BankEntry, ...]


def detect_format(content: bytes) -> BankFormat:
    head = content.lstrip()[:64]
    if head.startswith(b"<"):
        return "camt053"
    if head.startswith(b"01,"):
        return "bai2"
    raise ConfigurationError("not a bank statement: expected camt.053 (XML) or BAI2 (first record 01,)")


def _identity(line: BankLine) -> str:
    return "\x1f".join(
        str(x if x is not None else "")
        for x in (
            line.account,
            line.currency,
            line.amount_minor,
            line.direction,
            line.status,
            line.booking_date,
            line.value_date,
            line.type_code,
            line.end_to_end_id,
            line.bank_reference,
            line.customer_reference,
            line.description,
            line.return_reason,
        )
    )


def bank_entries(lines: Iterable[BankLine], file_id: str) -> tuple[BankEntry, ...]:
    seen: Counter[str] = Counter()
    out = []
    for line in lines:
        identity = _identity(line)
        ordinal = seen[identity]
        seen[identity] += 1
        digest = hashlib.sha256(f"{identity}\x1e{ordinal}".encode()).hexdigest()
        out.append(
            BankEntry(
                line_hash=digest,
                file_id=file_id,
                account=line.account,
                currency=line.currency,
                amount_minor=line.amount_minor,
                direction=line.direction,
                status=line.status,
                booking_date=line.booking_date,
                value_date=line.value_date,
                type_code=line.type_code,
                end_to_end_id=line.end_to_end_id,
                bank_reference=line.bank_reference,
                customer_reference=line.customer_reference,
                description=line.description,
                return_reason=line.return_reason,
            )
        )
    return tuple(out)


def read_bank_file(content: bytes) -> BankFile:
    """Parse a camt.053 or BAI2 file. Raises ConfigurationError (not a statement, too large) or
    BankFileError (a statement that does not add up — never half-read)."""
    if len(content) > MAX_BANK_FILE_BYTES:
        raise ConfigurationError(f"bank file of {len(content):,} bytes is over {MAX_BANK_FILE_BYTES:,}")
    kind = detect_format(content)
    statements = parse_camt053(content) if kind == "camt053" else parse_bai2(content)
    file_id = hashlib.sha256(content).hexdigest()
    lines = [line for statement in statements for line in statement.lines]
    return BankFile(file_id, kind, len(statements), bank_entries(lines, file_id))


def line_of_transaction(gateway: str, t: BalanceTransaction) -> ProcessorLine:
    return ProcessorLine(
        gateway=gateway,
        txn_id=t.id,
        type=t.type,
        source=t.source,
        amount_minor=t.amount_minor,
        fee_minor=t.fee_minor,
        net_minor=t.net_minor,
        currency=t.currency.upper(),
        created_at=t.created,
        available_at=t.available_on,
        reference=t.reference,
    )


def _moment(value: Any) -> datetime:
    if isinstance(value, int):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def read_processor_file(content: bytes, gateway: str) -> list[ProcessorLine]:
    """A report file (module docstring) → lines. Raises ConfigurationError naming the bad line."""
    try:
        body = json.loads(content)
    except ValueError as exc:
        raise ConfigurationError(f"processor report is not JSON: {exc}") from None
    rows = body.get("data") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise ConfigurationError('processor report: expected {"data": [...]} or a list of balance transactions')
    lines = []
    for n, row in enumerate(rows, 1):
        try:
            metadata = row.get("metadata") or {}
            amount, fee = int(row["amount"]), int(row.get("fee", 0))
            if isinstance(amount, bool) or not isinstance(row["amount"], int):
                raise TypeError("amounts are integers of minor units")
            lines.append(
                ProcessorLine(
                    gateway=gateway,
                    txn_id=str(row["id"]),
                    type=str(row["type"]),
                    source=str(row.get("source") or row["id"]),
                    amount_minor=amount,
                    fee_minor=fee,
                    net_minor=int(row.get("net", amount - fee)),
                    currency=str(row["currency"]).upper(),
                    created_at=_moment(row["created"]),
                    available_at=_moment(row.get("available_on", row["created"])),
                    reference=row.get("reference") or metadata.get("attempt_id") or metadata.get("idempotency_key"),
                )
            )
        except (KeyError, TypeError, ValueError, AssertionError, AttributeError) as exc:
            raise ConfigurationError(f"processor report line {n}: {exc!r}") from None
    return lines


__all__ = [
    "BankFile",
    "BankFileError",
    "bank_entries",
    "detect_format",
    "line_of_transaction",
    "read_bank_file",
    "read_processor_file",
]
