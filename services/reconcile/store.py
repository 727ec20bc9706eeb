"""SQL of the ``reconcile`` schema (migration 0080): imported lines, runs, matches, breaks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from libs.errors import ProcessorReportConflict
from services.reconcile.domain.entries import ProcessorLine
from services.reconcile.domain.matching import Reconciliation, Record
from services.reconcile.domain.sources import BankEntry
from services.reconcile.imports import BankFile

_BANK_COLUMNS = (
    "line_hash",
    "file_id",
    "line_no",
    "account",
    "currency",
    "amount_minor",
    "direction",
    "status",
    "booking_date",
    "value_date",
    "type_code",
    "end_to_end_id",
    "bank_reference",
    "customer_reference",
    "description",
    "return_reason",
)


async def save_bank_file(conn: asyncpg.Connection, bank_file: BankFile, name: str) -> tuple[bool, int]:
    """Store a file and its new lines in the caller's transaction: (file was new, lines inserted).
    A file imported before changes nothing; a line already stored from another file is skipped."""
    inserted = await conn.fetchval(
        """insert into reconcile.bank_files (file_id, name, format, statements, lines)
           values ($1, $2, $3, $4, $5) on conflict (file_id) do nothing returning 1""",
        bank_file.file_id,
        name,
        bank_file.format,
        bank_file.statements,
        len(bank_file.lines),
    )
    if inserted is None:
        return False, 0
    await conn.execute("create temporary table bank_lines_in (like reconcile.bank_lines) on commit drop")
    await conn.copy_records_to_table(
        "bank_lines_in",
        records=[
            (
                e.line_hash,
                e.file_id,
                n,
                e.account,
                e.currency,
                e.amount_minor,
                e.direction,
                e.status,
                e.booking_date,
                e.value_date,
                e.type_code,
                e.end_to_end_id,
                e.bank_reference,
                e.customer_reference,
                e.description,
                e.return_reason,
            )
            for n, e in enumerate(bank_file.lines, 1)
        ],
        columns=_BANK_COLUMNS,
    )
    status = await conn.execute(
        "insert into reconcile.bank_lines select * from bank_lines_in on conflict (line_hash) do nothing"
    )
    await conn.execute("drop table bank_lines_in")
    return True, int(status.split()[-1])


async def save_processor_lines(conn: asyncpg.Connection, lines: Sequence[ProcessorLine]) -> list[ProcessorLine]:
    """Store report lines; returns those that were new (a line already stored is skipped)."""
    if not lines:
        return []
    rows = await conn.fetch(
        """insert into reconcile.processor_lines (gateway, txn_id, type, source, amount_minor, fee_minor, net_minor,
                                                   currency, created_at, available_at, reference)
           select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                                $7::bigint[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[])
           on conflict (gateway, txn_id) do nothing
           returning gateway, txn_id""",
        [x.gateway for x in lines],
        [x.txn_id for x in lines],
        [x.type for x in lines],
        [x.source for x in lines],
        [x.amount_minor for x in lines],
        [x.fee_minor for x in lines],
        [x.net_minor for x in lines],
        [x.currency for x in lines],
        [x.created_at for x in lines],
        [x.available_at for x in lines],
        [x.reference for x in lines],
    )
    new = {(r["gateway"], r["txn_id"]) for r in rows}
    seen = [x for x in lines if (x.gateway, x.txn_id) not in new]
    if seen:
        await _refuse_contradictions(conn, seen)
    return [x for x in lines if (x.gateway, x.txn_id) in new]


async def _refuse_contradictions(conn: asyncpg.Connection, seen: Sequence[ProcessorLine]) -> None:
    """A line whose (gateway, id) is stored must be the stored line: a processor that reuses an id for
    another transaction (a test processor whose books were reset, a report of another account) would
    otherwise have its new transaction skipped without a word. Raises, naming the first few."""
    stored = {
        (r["gateway"], r["txn_id"]): r
        for r in await conn.fetch(
            """select gateway, txn_id, type, source, amount_minor, fee_minor, currency, created_at
                 from reconcile.processor_lines p
                 join unnest($1::text[], $2::text[]) as k(g, t) on p.gateway = k.g and p.txn_id = k.t""",
            [x.gateway for x in seen],
            [x.txn_id for x in seen],
        )
    }
    differ = []
    for x in seen:
        r = stored.get((x.gateway, x.txn_id))
        if r is None:  # the same id twice in this report: the first occurrence was stored
            continue
        if (r["type"], r["source"], r["amount_minor"], r["fee_minor"], r["currency"], r["created_at"]) != (
            x.type,
            x.source,
            x.amount_minor,
            x.fee_minor,
            x.currency,
            x.created_at,
        ):
            differ.append(
                f"{x.gateway} {x.txn_id}: stored {r['type']} {r['amount_minor']} {r['currency']} of {r['source']}, "
                f"now {x.type} {x.amount_minor} {x.currency} of {x.source}"
            )
    if differ:
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ProcessorReportConflict(
            f"{len(differ)} processor line(s) reuse the id of another imported line: "
            + "; ".join(differ[:3])
            + more
            + " — nothing of this report was imported"
        )


async def bank_lines_through(conn: asyncpg.Connection, through: date) -> list[BankEntry]:
    rows = await conn.fetch(
        f"select {', '.join(_BANK_COLUMNS)} from reconcile.bank_lines"
        " where coalesce(booking_date, value_date) <= $1 order by line_hash",
        through,
    )
    return [
        BankEntry(
            line_hash=r["line_hash"],
            file_id=r["file_id"],
            account=r["account"],
            currency=r["currency"],
            amount_minor=r["amount_minor"],
            direction=r["direction"],
            status=r["status"],
            booking_date=r["booking_date"],
            value_date=r["value_date"],
            type_code=r["type_code"],
            end_to_end_id=r["end_to_end_id"],
            bank_reference=r["bank_reference"],
            customer_reference=r["customer_reference"],
            description=r["description"],
            return_reason=r["return_reason"],
        )
        for r in rows
    ]


async def processor_lines_through(conn: asyncpg.Connection, through: date) -> list[ProcessorLine]:
    until = datetime.combine(through + timedelta(days=1), time(0), UTC)
    rows = await conn.fetch(
        """select gateway, txn_id, type, source, amount_minor, fee_minor, net_minor, currency, created_at,
                  available_at, reference
             from reconcile.processor_lines where created_at < $1 order by gateway, txn_id""",
        until,
    )
    return [
        ProcessorLine(
            r["gateway"],
            r["txn_id"],
            r["type"],
            r["source"],
            r["amount_minor"],
            r["fee_minor"],
            r["net_minor"],
            r["currency"],
            r["created_at"],
            r["available_at"],
            r["reference"],
        )
        for r in rows
    ]


def record_json(r: Record) -> dict[str, Any]:
    return {
        "source": r.source,
        "source_id": r.source_id,
        "kind": r.kind,
        "amount_minor": r.amount_minor,
        "currency": r.currency,
        "date": r.on.isoformat(),
        "direction": r.direction,
        "references": list(r.references),
        "note": r.note,
        **({"fee_minor": r.fee_minor} if r.source == "processor" else {}),
    }


def record_key(r: Record) -> str:
    """``source:source id``: where a matched record is kept (a bank line's hash, a ledger record's id, a
    processor line's gateway:txn id)."""
    return f"{r.source}:{r.source_id}"


def totals_json(result: Reconciliation) -> list[dict[str, Any]]:
    return [
        {
            "source": source,
            "currency": currency,
            "matched_count": t.matched_count,
            "matched_minor": t.matched_minor,
            "unmatched_count": t.unmatched_count,
            "unmatched_minor": t.unmatched_minor,
        }
        for (source, currency), t in result.totals.items()
    ]


async def save_run(conn: asyncpg.Connection, result: Reconciliation) -> int:
    """Store a run with every match and break (in the caller's transaction); returns its id."""
    run_id = int(
        await conn.fetchval(
            """insert into reconcile.runs (as_of, window_days, matches, breaks, overdue, totals)
               values ($1, $2, $3, $4, $5, $6::jsonb) returning run_id""",
            result.as_of,
            result.window_days,
            len(result.matches),
            len(result.breaks),
            len(result.overdue_breaks),
            json.dumps(totals_json(result)),
        )
    )
    # Matches keep their records' keys only (migration 0100), written by binary COPY.
    await conn.copy_records_to_table(
        "matches",
        schema_name="reconcile",
        columns=["run_id", "match_no", "leg", "how", "currency", "amount_minor", "record_keys"],
        records=[
            (
                run_id,
                n,
                m.leg,
                m.how,
                m.records[0].currency,
                m.records[0].amount_minor,
                [record_key(r) for r in m.records],
            )
            for n, m in enumerate(result.matches, 1)
        ],
    )
    # jsonb has no binary COPY encoder in asyncpg: a break's records go as text, cast in the statement.
    await conn.execute(
        """insert into reconcile.breaks (run_id, break_no, reason, leg, age_days, overdue, records, explanation)
           select $1, n, reason, leg, age, overdue, records::jsonb, explanation
             from unnest($2::int[], $3::text[], $4::text[], $5::int[], $6::bool[], $7::text[], $8::text[])
                  as t (n, reason, leg, age, overdue, records, explanation)""",
        run_id,
        list(range(1, len(result.breaks) + 1)),
        [b.reason for b in result.breaks],
        [b.leg for b in result.breaks],
        [b.age_days for b in result.breaks],
        [b.overdue for b in result.breaks],
        [json.dumps([record_json(r) for r in b.records]) for b in result.breaks],
        [b.explanation for b in result.breaks],
    )
    return run_id


async def explanations(conn: asyncpg.Connection) -> dict[tuple[str, str], str]:
    """Every record an operator explained: (source, source id) → "reason (by)"."""
    rows = await conn.fetch(
        "select source, source_id, reason, requested_by from reconcile.explanations where action = 'explained'"
    )
    return {(r["source"], r["source_id"]): f"{r['reason']} ({r['requested_by']})" for r in rows}


async def stored_break(conn: asyncpg.Connection, run_id: int, break_no: int) -> asyncpg.Record | None:
    return await conn.fetchrow("select * from reconcile.breaks where run_id = $1 and break_no = $2", run_id, break_no)


async def save_explanations(
    conn: asyncpg.Connection,
    keys: Sequence[tuple[str, str]],
    *,
    action: str,
    reason: str,
    by: str,
    run_id: int,
    break_no: int,
    entry_id: str | None = None,
) -> int:
    """One audit row per record (the first action on a record stays); returns the rows written."""
    status = await conn.execute(
        """insert into reconcile.explanations (source, source_id, action, reason, requested_by, run_id, break_no,
               entry_id)
           select source, source_id, $3, $4, $5, $6, $7, $8 from unnest($1::text[], $2::text[]) as t (source, source_id)
           on conflict do nothing""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        action,
        reason,
        by,
        run_id,
        break_no,
        entry_id,
    )
    return int(status.split()[-1])


async def stored_breaks(
    conn: asyncpg.Connection, run_id: int | None
) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    """A stored run (the latest when ``run_id`` is None) and its breaks in ``break_no`` order."""
    run = await conn.fetchrow(
        """select run_id, as_of, window_days, matches, breaks, overdue, started_at from reconcile.runs
            where ($1::bigint is null or run_id = $1) order by run_id desc limit 1""",
        run_id,
    )
    if run is None:
        return None, []
    rows = await conn.fetch("select * from reconcile.breaks where run_id = $1 order by break_no", run["run_id"])
    return run, list(rows)
