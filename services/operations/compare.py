"""What two databases say about money, side by side: documents, charges, ledger balances and entries.

``settle rebuild`` and ``settle replay --dry-run`` compute derived state in another database from the
input archive; :func:`snapshot` reads what both hold and :func:`differences` lists where they part.

Compared, each by its natural key (never by row ids or the time a row was written):

* invoices (contract, period start), credit notes (contract, period start, issue time) and statements
  (supplier, currency, month): the finalized document, less its number; numbers are given in close
  order (gapless per series), so only the set of numbers per series is compared, and the invoice a
  credit note corrects is compared as (contract, period start), not by its number;
* rated charges (charge id): contract, allocation, meter, hour, exact charge and earning;
* ledger balances per account, and the journal entries by canonical content: (cause, kind) → occurred
  time, correlation, description, reversed entry and the postings (account, asset, amount) in order.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

NUMBER_FIELDS = frozenset({"number", "credit_note_number"})
"""Document fields assigned in close order: compared as a set per series, not per document."""


@dataclass
class Snapshot:
    invoices: dict[str, Any] = field(default_factory=dict)
    credit_notes: dict[str, Any] = field(default_factory=dict)
    statements: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, list[str]] = field(default_factory=dict)
    charges: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    """(cause id | kind) → the entry's canonical content (JSON text)."""

    def counts(self) -> dict[str, int]:
        return {
            "invoices": len(self.invoices),
            "credit_notes": len(self.credit_notes),
            "statements": len(self.statements),
            "charges": len(self.charges),
            "accounts": len(self.balances),
            "entries": len(self.entries),
        }

    def entries_digest(self) -> str:
        """SHA-256 over the sorted canonical entries: equal digests, equal journals (order-free)."""
        digest = hashlib.sha256()
        for key in sorted(self.entries):
            digest.update(key.encode() + b"\x00" + self.entries[key].encode() + b"\n")
        return digest.hexdigest()


def _document(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(text)
    return {k: v for k, v in doc.items() if k not in NUMBER_FIELDS}


def naming_corrected_invoice(note: dict[str, Any], invoice_by_number: Mapping[str, str]) -> dict[str, Any]:
    """A credit note with the invoice it corrects named by what it is — its key (contract and period
    start) — rather than by its number, which is given in close order: two runs that close in another
    order name the same invoice with different numbers. A number no invoice has stays, marked unknown."""
    number = note["invoice_number"]
    return {**note, "invoice_number": invoice_by_number.get(number, f"unknown invoice {number}")}


BILLING_KINDS: tuple[str, ...] = ("rating.%", "invoice.%", "credit_note.%", "statement.%", "metering.%")
"""Journal entry kinds (LIKE patterns) the billing fleet — metering, rating, invoicing — writes: what a
rebuild recomputes. Money-movement services (payments, payouts) are not rebuilt: they act on the outside
world (processors, banks), so their entries are left out of a rebuild's comparison."""


async def snapshot(conn: asyncpg.Connection, *, kinds: tuple[str, ...] | None = None) -> Snapshot:
    """Everything :func:`differences` compares, read in one repeatable-read transaction.

    ``kinds``: only journal entries whose kind matches one of these LIKE patterns, and balances summed
    from their postings (None: every entry, and the accounts' balances)."""
    out = Snapshot()
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        numbers: dict[str, list[str]] = {}
        invoice_by_number: dict[str, str] = {}
        for row in await conn.fetch("select number, document::text as doc from invoicing.invoices"):
            doc = _document(row["doc"])
            key = invoice_by_number[row["number"]] = f"{doc['contract_id']}|{doc['period_start']}"
            out.invoices[key] = doc
            numbers.setdefault(row["number"][:8], []).append(row["number"])
        with contextlib.suppress(asyncpg.UndefinedTableError):
            for row in await conn.fetch("select number, document::text as doc from invoicing.credit_notes"):
                doc = _document(row["doc"])
                doc = naming_corrected_invoice(doc, invoice_by_number)
                key = f"{doc['contract_id']}|{doc.get('period_start')}|{doc.get('issued_at')}"
                out.credit_notes[key] = doc
                numbers.setdefault(row["number"][:7], []).append(row["number"])
        for row in await conn.fetch("select number, document::text as doc from invoicing.statements"):
            doc = _document(row["doc"])
            out.statements[f"{doc['supplier_id']}|{doc['currency']}|{doc['month']}"] = doc
            numbers.setdefault(row["number"][:8], []).append(row["number"])
        out.numbers = {series: sorted(found) for series, found in numbers.items()}
        for row in await conn.fetch(
            """select charge_id, contract_id, allocation_id, meter, hour_start, charge_x3600, earning_x3600
                 from rating.charges"""
        ):
            out.charges[row["charge_id"]] = (
                row["contract_id"],
                row["allocation_id"],
                row["meter"],
                row["hour_start"].isoformat(),
                str(row["charge_x3600"].normalize()),
                str(row["earning_x3600"].normalize()),
            )
        if kinds is None:
            for row in await conn.fetch("select code, balance from ledger.accounts"):
                out.balances[row["code"]] = int(row["balance"])
        else:
            for row in await conn.fetch(
                """select p.account as code, sum(p.amount) as balance
                     from ledger.postings p join ledger.entries e on e.id = p.entry_id
                    where e.kind like any($1::text[]) group by p.account""",
                list(kinds),
            ):
                out.balances[row["code"]] = int(row["balance"])
        for row in await conn.fetch(
            """select e.cause_id, e.kind, e.occurred_at, e.correlation_id, e.description, r.cause_id as reverses,
                      r.kind as reverses_kind,
                      (select jsonb_agg(jsonb_build_array(p.account, p.asset, p.amount::text) order by p.seq)
                         from ledger.postings p where p.entry_id = e.id)::text as postings
                 from ledger.entries e left join ledger.entries r on r.id = e.reverses
                where $1::text[] is null or e.kind like any($1::text[])""",
            list(kinds) if kinds is not None else None,
        ):
            content = {
                "occurred_at": row["occurred_at"].isoformat(),
                "correlation_id": row["correlation_id"],
                "description": row["description"],
                "reverses": None if row["reverses"] is None else f"{row['reverses']}|{row['reverses_kind']}",
                "postings": orjson.loads(row["postings"] or "[]"),
            }
            out.entries[f"{row['cause_id']}|{row['kind']}"] = orjson.dumps(
                content, option=orjson.OPT_SORT_KEYS
            ).decode()
    return out


def _diff_maps(kind: str, a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]) -> Iterable[str]:
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if left == right:
            continue
        if left is None:
            yield f"{kind} {key}: only in {names[1]}: {right}"
        elif right is None:
            yield f"{kind} {key}: only in {names[0]}: {left}"
        elif isinstance(left, dict) and isinstance(right, dict):
            fields = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
            shown = "; ".join(f"{f}: {left.get(f)} → {right.get(f)}" for f in fields[:4])
            yield f"{kind} {key}: {shown}" + (f" (+{len(fields) - 4} fields)" if len(fields) > 4 else "")
        else:
            yield f"{kind} {key}: {left} → {right}"


def differences(
    a: Snapshot, b: Snapshot, *, names: tuple[str, str] = ("live", "rebuilt"), limit: int = 50
) -> list[str]:
    """Every difference (at most ``limit``), as lines ``kind key: a → b``; empty when identical."""
    out: list[str] = []
    for kind, left, right in (
        ("invoice", a.invoices, b.invoices),
        ("credit note", a.credit_notes, b.credit_notes),
        ("statement", a.statements, b.statements),
        ("numbers", a.numbers, b.numbers),
        ("charge", a.charges, b.charges),
        ("balance", a.balances, b.balances),
        ("entry", a.entries, b.entries),
    ):
        for line in _diff_maps(kind, left, right, names):
            out.append(line)
            if len(out) >= limit:
                return out
    return out


_DIGESTS = {
    "charges": """select charge_id, contract_id, allocation_id, meter, hour_start, charge_x3600::text,
                         earning_x3600::text
                    from rating.charges order by charge_id""",
    "balances": "select code, balance::text from ledger.accounts order by code",
    "entries": """select e.cause_id, e.kind, e.occurred_at, e.correlation_id, e.description, r.cause_id, r.kind,
                         (select string_agg(p.account || ' ' || p.asset || ' ' || p.amount::text, ',' order by p.seq)
                            from ledger.postings p where p.entry_id = e.id)
                    from ledger.entries e left join ledger.entries r on r.id = e.reverses
                   order by e.cause_id, e.kind""",
    "invoices": """select contract_id, period_start, (document - 'number')::text from invoicing.invoices
                    order by contract_id, period_start""",
    "statements": """select supplier_id, currency, month, (document - 'number')::text from invoicing.statements
                      order by supplier_id, currency, month""",
}


async def digests(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Per kind: (rows, SHA-256 over its rows in key order), streamed — for states too large to hold
    (``settle bench replay``). Equal digests, equal content, as :func:`snapshot` compares it."""
    out: dict[str, tuple[int, str]] = {}
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        for kind, sql in _DIGESTS.items():
            digest = hashlib.sha256()
            rows = 0
            async for row in conn.cursor(sql, prefetch=10_000):
                digest.update(orjson.dumps([str(v) if v is not None else None for v in row]) + b"\n")
                rows += 1
            out[kind] = (rows, digest.hexdigest())
    return out
