"""One reconciliation run and the two imports, each in the caller's transaction (the CLI's use cases)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from libs.ledger import ensure_accounts, post
from services.reconcile import store
from services.reconcile.domain.entries import ProcessorLine, report_entries
from services.reconcile.domain.matching import DEFAULT_WINDOW_DAYS, Reconciliation, Record, reconcile
from services.reconcile.domain.sources import bank_record, ledger_records, processor_record
from services.reconcile.imports import BankFile
from services.reconcile.ledger_source import LedgerSource, PostgresLedgerSource


@dataclass(frozen=True)
class ProcessorImport:
    lines: int
    new_lines: int
    entries_posted: int
    fees_minor: dict[str, int]
    """Fees of the new lines, per currency (ledgered by this import)."""


async def import_bank_file(conn: asyncpg.Connection, bank_file: BankFile, name: str) -> tuple[bool, int]:
    async with conn.transaction():
        return await store.save_bank_file(conn, bank_file, name)


async def import_processor_lines(conn: asyncpg.Connection, lines: Sequence[ProcessorLine]) -> ProcessorImport:
    """Store the lines and post the fee and payout entries of the new ones, in one transaction; lines
    seen before post nothing (their entries exist: same ids, same causes)."""
    async with conn.transaction():
        new = await store.save_processor_lines(conn, lines)
        entries, specs = report_entries(new)
        if entries:
            await ensure_accounts(conn, specs)
            await post(conn, entries)
    fees: dict[str, int] = {}
    for line in new:
        fees[line.currency] = fees.get(line.currency, 0) + line.fee_minor
    return ProcessorImport(len(lines), len(new), len(entries), dict(sorted(fees.items())))


async def load_records(
    conn: asyncpg.Connection, as_of: date, ledger: LedgerSource | None = None
) -> tuple[list[Record], list[Record], list[Record], int]:
    """(ledger, processor, bank records, bank lines not booked) dated on or before ``as_of``."""
    postings = await (ledger or PostgresLedgerSource(conn)).postings(as_of)
    ledger_side = ledger_records(postings)
    processor_side = [r for r in map(processor_record, await store.processor_lines_through(conn, as_of)) if r]
    bank_lines = await store.bank_lines_through(conn, as_of)
    bank_side = [r for r in map(bank_record, bank_lines) if r]
    return ledger_side, processor_side, bank_side, len(bank_lines) - len(bank_side)


async def run_reconciliation(
    conn: asyncpg.Connection,
    *,
    as_of: date,
    window_days: int = DEFAULT_WINDOW_DAYS,
    ledger: LedgerSource | None = None,
    save: bool = True,
) -> tuple[Reconciliation, int | None, int]:
    """Match everything dated on or before ``as_of``; store the run. Returns (result, run id, bank lines
    not booked)."""
    ledger_side, processor_side, bank_side, not_booked = await load_records(conn, as_of, ledger)
    result = reconcile(ledger_side, processor_side, bank_side, as_of=as_of, window_days=window_days)
    run_id = None
    if save:
        async with conn.transaction():
            run_id = await store.save_run(conn, result)
    return result, run_id, not_booked
