"""Closing a month's supplier statements (R12), a chunk of (supplier, currency) pairs per transaction:
the month may close once every partition's watermark passed it and every contract period ending by
then is invoiced. What a statement carries is claimed in :mod:`services.invoicing.store.membership`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import structlog

from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, ensure_accounts, post
from libs.messaging.outbox import Emitter, write_outbox
from schemas import topics
from schemas.events import StatementsClosed
from services.invoicing import statements, store
from services.invoicing.entries import statement_entry
from services.invoicing.invoice_close import PRODUCER, number_series

log = structlog.get_logger("settle.invoicing.closer")


def _next_month(month: str) -> str:
    _, end = statements.month_bounds(month)
    return statements.month_of(end)


async def close_statement_chunk(
    conn: asyncpg.Connection, limit: int, only: Sequence[tuple[str, str]] | None = None
) -> bool:
    """Close up to ``limit`` (supplier, currency) statements of the next month when it may close.
    Returns whether anything moved (statements written or the month advanced)."""
    locked, month = await store.lock_statement_progress(conn)
    if not locked:
        return False
    first = month is None
    if month is None:
        # The first month is chosen only once it may close: by then every partition's watermark has
        # passed it, so every earlier month's earnings have arrived too.
        month = await store.earliest_pending_month(conn)
        if month is None:
            return False
    month_start, month_end = statements.month_bounds(month)
    marks = await store.current_watermarks(conn)
    if len(marks) < topics.CHARGES_RATED.partitions or min(marks.values()) < month_end:
        return False
    if await store.unclosed_contracts(conn, month_end) > 0:
        return False  # invoices first: their chargebacks land on this month
    if first:
        await store.set_statement_month(conn, month)
    pairs = await store.statement_pairs(conn, month, limit, only=only)
    if not pairs:
        if only is None:
            await store.set_statement_month(conn, _next_month(month))
            await _announce_closed(conn, month, month_end)
            log.info("statements closed", month=month)
        return only is None
    issued_at = await store.statement_issue_instant(conn, month_end)
    assert issued_at is not None
    await store.take_pending(conn, pairs, month)
    earnings = await store.claim_statement_earnings(conn, pairs, month, month_start, month_end)
    parts = await store.claim_statement_chargebacks(conn, pairs, month)
    clawbacks = await store.claim_statement_clawbacks(conn, pairs, month)
    previous = await store.previous_nets(conn, pairs)
    drafts: list[tuple[statements.StatementDraft, int, int]] = []
    for supplier_id, currency in pairs:
        mine = [e for e in earnings if (e.supplier_id, e.currency) == (supplier_id, currency)]
        inputs = statements.StatementInputs(
            supplier_id=supplier_id,
            currency=currency,
            month=month,
            earnings=tuple(
                statements.AllocationEarnings(
                    e.allocation_id, e.earning_x3600, e.billable_gpu_seconds, e.late_earning_x3600
                )
                for e in mine
            ),
            chargebacks=tuple(
                # A part whose month was already stated (a late credit note) lands on this one.
                statements.ChargebackPart(
                    c.supplier_id,
                    c.allocation_id,
                    c.contract_id,
                    c.currency,
                    c.period_start,
                    c.period_end,
                    month,
                    c.amount_minor,
                )
                for c in parts
                if (c.supplier_id, c.currency) == (supplier_id, currency)
            ),
            previous_net_minor=previous.get((supplier_id, currency)),
            issued_at=issued_at,
            clawbacks_minor=clawbacks.get((supplier_id, currency), 0),
        )
        if not statements.statement_due(inputs):
            continue
        accrued_units = sum(e.earning_units for e in mine)
        drafts.append((statements.assemble_statement(inputs), accrued_units, sum(e.charges for e in mine)))
    if not drafts:
        return True
    series = number_series("STM", issued_at)
    numbers = await store.allocate_numbers(conn, series, len(drafts))
    emitter = Emitter(PRODUCER)
    rows: list[store.StatementRow] = []
    entries: list[Entry] = []
    specs: list[AccountSpec] = []
    for (draft, accrued_units, count), n in zip(drafts, numbers, strict=True):
        statement_id = derive_id("statement", draft.supplier_id, draft.currency, draft.month)
        number = f"{series}-{n:06d}"
        event = statements.to_event(draft, number, statement_id)
        emitter.emit(
            topics.STATEMENTS_FINALIZED,
            key=draft.supplier_id,
            type="statement.finalized",
            data=event,
            time=issued_at,
            cause=None,
            event_id=derive_id("event", "statement.finalized", statement_id),
            correlation_id=statement_id,
        )
        rows.append(
            store.StatementRow(
                statement_id,
                number,
                draft.supplier_id,
                draft.currency,
                draft.month,
                issued_at,
                draft.net_minor,
                event.model_dump(mode="json"),
            )
        )
        entry, accounts = statement_entry(
            draft,
            accrued_units=accrued_units,
            charges=count,
            entry_id=derive_id("entry", "statement", statement_id),
            cause_id=statement_id,
        )
        specs += accounts
        if entry is not None:
            entries.append(entry)
    await store.insert_statements(conn, rows)
    await ensure_accounts(conn, specs)
    await write_outbox(conn, emitter.drain())
    await post(conn, entries)  # last: it holds the ledger's chain heads until commit
    return True


async def _announce_closed(conn: asyncpg.Connection, month: str, month_end: datetime) -> None:
    """``statements.closed`` on every partition of statements.finalized.v1, after the month's last
    statement (same lanes, later outbox rows): a consumer that has it from every partition has every
    statement of ``month`` — payouts plans a month-closing tick only then (R15: every month final by
    the tick, whatever arrived first)."""
    issued_at = await store.statement_issue_instant(conn, month_end)
    assert issued_at is not None  # the month closed: every partition's watermark passed its end
    emitter = Emitter(PRODUCER)
    for partition in range(topics.STATEMENTS_FINALIZED.partitions):
        emitter.emit(
            topics.STATEMENTS_FINALIZED,
            key=f"statements-closed-{partition}",
            type="statements.closed",
            data=StatementsClosed(month=month, issued_at=issued_at, partition=partition),
            time=issued_at,
            cause=None,
            event_id=derive_id("event", "statements.closed", month, partition),
            partition=partition,
        )
    await write_outbox(conn, emitter.drain())
