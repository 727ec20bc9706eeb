"""One reconciliation run and the two imports, each in the caller's transaction (the CLI's use cases)."""

from __future__ import annotations

import contextlib
import gc
import json
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.ledger import ensure_accounts, post
from libs.messaging.outbox import Emitter, write_outbox
from schemas import topics
from schemas.events import CONFIRMATIONS_PER_EVENT, PayoutSettlementConfirmed, PayoutSettlementsConfirmed
from services.reconcile import store
from services.reconcile.domain.entries import ProcessorLine, bank_fee_entry, report_entries
from services.reconcile.domain.matching import DEFAULT_WINDOW_DAYS, Reconciliation, explain, reconcile
from services.reconcile.domain.sources import (
    BankEntry,
    LedgerPosting,
    PayoutConfirmation,
    bank_record,
    ledger_records,
    payout_confirmations,
    processor_record,
)
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: a run allocates millions of small acyclic objects, and
    full collections over them would cost more than the matching (measured: ``settle bench reconcile``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def match_rows(
    postings: Iterable[LedgerPosting],
    processor_lines: Iterable[ProcessorLine],
    bank_lines: Iterable[BankEntry],
    *,
    as_of: date,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> tuple[Reconciliation, int]:
    """A run's work once its rows are loaded: records from the three sources, then R17 matching.
    Returns (result, bank lines not booked: pending or informational)."""
    with collector_paused():
        ledger_side = ledger_records(postings)
        processor_side = [r for r in map(processor_record, processor_lines) if r]
        bank_all = list(bank_lines)
        bank_side = [r for r in map(bank_record, bank_all) if r]
        result = reconcile(ledger_side, processor_side, bank_side, as_of=as_of, window_days=window_days)
    return result, len(bank_all) - len(bank_side)


async def run_reconciliation(
    conn: asyncpg.Connection,
    *,
    as_of: date,
    window_days: int = DEFAULT_WINDOW_DAYS,
    ledger: LedgerSource | None = None,
    save: bool = True,
    timings: dict[str, float] | None = None,
) -> tuple[Reconciliation, int | None, int]:
    """Match everything dated on or before ``as_of``; store the run. Returns (result, run id, bank lines
    not booked). ``timings``, when given, receives each step's seconds (``settle bench reconcile --stored``)."""
    with collector_paused():  # reads, records and saving allocate millions of small objects, like matching
        return await _run(conn, as_of, window_days, ledger, save, _Steps(timings))


async def _run(
    conn: asyncpg.Connection,
    as_of: date,
    window_days: int,
    ledger: LedgerSource | None,
    save: bool,
    clock: _Steps,
) -> tuple[Reconciliation, int | None, int]:
    postings = await (ledger or PostgresLedgerSource(conn)).postings(as_of)
    clock.lap("read ledger postings")
    processor_lines = await store.processor_lines_through(conn, as_of)
    clock.lap("read processor lines")
    bank_lines = await store.bank_lines_through(conn, as_of)
    clock.lap("read bank lines")
    result, not_booked = match_rows(postings, processor_lines, bank_lines, as_of=as_of, window_days=window_days)
    result = explain(result, await store.explanations(conn))
    clock.lap("rows → records → R17 matching")
    run_id = None
    if save:
        async with conn.transaction():
            run_id = await store.save_run(conn, result)
            clock.lap("save the run (matches, breaks)")
            await confirm_payouts(conn, payout_confirmations(result.matches), run_id)
        clock.lap("confirm matched payouts (outbox) and commit")
    return result, run_id, not_booked


class _Steps:
    """Seconds per step of a run, into the caller's dict (nothing when it gave none)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self._into = into
        self._last = _time.perf_counter()

    def lap(self, step: str) -> None:
        now = _time.perf_counter()
        if self._into is not None:
            self._into[step] = now - self._last
        self._last = now


async def confirm_payouts(conn: asyncpg.Connection, confirmations: Sequence[PayoutConfirmation], run_id: int) -> None:
    """R16/R17 feedback: each supplier payout matched to a posted bank transaction is confirmed to the
    payouts worker (``payout.settlements_confirmed`` on ``payouts.bank_results.v1``, through the outbox, in
    the run's transaction), up to ``CONFIRMATIONS_PER_EVENT`` per event in reference order. Each
    confirmation's id derives from the payout key and the bank line, and each is sent once
    (``reconcile.confirmations``): a later run confirming the same match sends nothing again. An event's id
    derives from the ids of the confirmations it carries."""
    ids = [derive_id("event", "payout.settlement_confirmed", c.reference, c.bank_record) for c in confirmations]
    new = set(
        await conn.fetchval(
            """with sent as (
                   insert into reconcile.confirmations (event_id, reference, run_id)
                   select * from unnest($1::text[], $2::text[]) as t, (select $3::bigint) as r
                   on conflict do nothing returning event_id)
               select coalesce(array_agg(event_id), '{}') from sent""",
            ids,
            [c.reference for c in confirmations],
            run_id,
        )
    )
    # an earlier run sent the others (with its own run id): never the same id with another payload
    fresh = [(event_id, c) for event_id, c in zip(ids, confirmations, strict=True) if event_id in new]
    emitter = Emitter("reconcile")
    for at in range(0, len(fresh), CONFIRMATIONS_PER_EVENT):
        chunk = fresh[at : at + CONFIRMATIONS_PER_EVENT]
        emitter.emit(
            topics.PAYOUT_BANK_RESULTS,
            key=chunk[0][1].reference,
            type="payout.settlements_confirmed",
            time=datetime.combine(max(c.booked_on for _, c in chunk), time(0), UTC),
            cause=None,
            event_id=derive_id("event", "payout.settlements_confirmed", *(event_id for event_id, _ in chunk)),
            data=PayoutSettlementsConfirmed(
                confirmations=[
                    PayoutSettlementConfirmed(
                        reference=c.reference,
                        amount_minor=c.amount_minor,
                        currency=c.currency,
                        booked_on=c.booked_on.isoformat(),
                        bank_record=c.bank_record,
                        run_id=run_id,
                    )
                    for _, c in chunk
                ],
                run_id=run_id,
            ),
        )
    await write_outbox(conn, emitter.drain())


class BreakActionRefused(Exception):
    """An operator action that does not fit the break (the message says why)."""


async def _break_keys(conn: asyncpg.Connection, run_id: int, break_no: int) -> tuple[asyncpg.Record, list[Any]]:
    row = await store.stored_break(conn, run_id, break_no)
    if row is None:
        raise BreakActionRefused(f"run {run_id} has no break {break_no} (see `settle reconcile --json`)")
    records = row["records"]  # jsonb: decoded by the pool's codec, or text on a bare connection
    return row, json.loads(records) if isinstance(records, str) else list(records)


async def explain_break(conn: asyncpg.Connection, run_id: int, break_no: int, *, reason: str, by: str) -> int:
    """An operator explains a stored break: each of its records is explained (audited), so the break —
    in this and every later run, while no unexplained record joins it — is never overdue. Returns the
    records newly explained (0: all were already)."""
    async with conn.transaction():
        _, records = await _break_keys(conn, run_id, break_no)
        keys = [(r["source"], r["source_id"]) for r in records]
        return await store.save_explanations(
            conn, keys, action="explained", reason=reason, by=by, run_id=run_id, break_no=break_no
        )


async def post_bank_fee(conn: asyncpg.Connection, run_id: int, break_no: int, *, reason: str, by: str) -> str | None:
    """Post the fee of a stored ``missing_in_ledger`` break made of one bank debit (``Dr bank_fees / Cr
    cash_clearing`` on the line's date, :func:`~services.reconcile.domain.entries.bank_fee_entry`),
    audited. The next run matches the entry with the line. Returns the entry id, None when that line's
    fee was posted before."""
    async with conn.transaction():
        row, records = await _break_keys(conn, run_id, break_no)
        if row["reason"] != "missing_in_ledger" or len(records) != 1:
            raise BreakActionRefused(f"break {break_no} is {row['reason']} of {len(records)} record(s): a bank fee is "
                                     "one bank line the ledger does not know (missing_in_ledger)")  # fmt: skip
        [line] = records
        if (line["source"], line["direction"]) != ("bank", "out"):
            raise BreakActionRefused(f"break {break_no} is a {line['source']} record going {line['direction']}: "
                                     "a bank fee is a bank debit")  # fmt: skip
        entry, specs = bank_fee_entry(
            line_id=line["source_id"],
            amount_minor=int(line["amount_minor"]),
            currency=line["currency"],
            on=datetime.combine(date.fromisoformat(line["date"]), time(0), UTC),
            references=line["references"],
            reason=reason,
        )
        written = await store.save_explanations(
            conn,
            [("bank", line["source_id"])],
            action="bank_fee_posted",
            reason=reason,
            by=by,
            run_id=run_id,
            break_no=break_no,
            entry_id=entry.id,
        )
        if not written:
            return None
        await ensure_accounts(conn, specs)
        await post(conn, [entry])
        return entry.id
