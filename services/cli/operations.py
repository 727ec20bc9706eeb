"""``settle held …``, ``settle invoices quarantine …`` and ``settle audit``: data set aside, made visible
and operable (:mod:`services.operations`). Every drop, release and retry is one transaction with its
audit row in ``settle.operator_actions``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Column, Table

from services.cli.app import app, held_app, quarantine_app, statements_app
from services.cli.runtime import console, database, run_async
from services.operations import audit, held, quarantine

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who acts (default: the login name).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit).")]


def _waiting(seconds: float) -> str:
    minutes = max(0, int(seconds)) // 60
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}d {rest // 60}h" if days else f"{rest // 60}h {rest % 60:02d}m"


def _when(value: object) -> str:
    return "-" if value is None else str(value)


# --- held ---------------------------------------------------------------------------------------------------
@held_app.command("list")
@run_async
async def held_list(
    service: Annotated[
        str | None, typer.Option("--service", help="metering, rating or invoicing (default: all).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What is held, why, since when (event time and received time) and its ids."""
    if service is not None and service not in held.SERVICES:
        raise typer.BadParameter(f"--service is one of {', '.join(held.SERVICES)}")
    async with database() as pool, pool.acquire() as conn:
        items = await held.list_held(conn, service)
    if as_json:
        for item in items:
            print(json.dumps(item.as_json(), default=str))
        return
    # Never cut an id short (release and drop take it) nor a key: fold them instead.
    table = Table(
        Column("id", overflow="fold", min_width=min(64, max((len(i.id) for i in items), default=2))),
        "status",
        "event time (UTC)",
        "received (UTC)",
        "waiting",
        Column("keys", overflow="fold"),
        "why",
    )
    now = datetime.now(UTC)
    for item in items:
        keys = "\n".join(f"{k}={v}" for k, v in item.keys.items() if v is not None and k != "event_id")
        table.add_row(
            item.id,
            item.status,
            _when(item.event_time and item.event_time.strftime("%Y-%m-%d %H:%M:%S")),
            item.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            _waiting((now - item.received_at).total_seconds()),
            keys,
            item.reason,
        )
    console.print(table)
    console.print(f"{len(items)} held item(s)")


@held_app.command("release")
@run_async
async def held_release(item_id: str, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Stop waiting: rating usage is rated now if its contract is known, else it no longer gates its
    partition's watermark (rated when the contract arrives). Other kinds cannot be released."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        result = await held.release(conn, item_id, reason=reason, actor=actor or audit.default_actor())
    console.print(f"released {result.item_id} (audit #{result.action_id}): {result.outcome}")


@held_app.command("drop")
@run_async
async def held_drop(item_id: str, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Remove from the hold for good: dead-lettered with the reason (redrivable), audited; dropping rating
    usage un-gates its partition's watermark."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        result = await held.drop(conn, item_id, reason=reason, actor=actor or audit.default_actor())
    letter = f"; dead letter {result.dead_letter_id}" if result.dead_letter_id is not None else ""
    console.print(f"dropped {result.item_id} (audit #{result.action_id}): {result.outcome}{letter}")


# --- quarantined invoice closes -----------------------------------------------------------------------------
@quarantine_app.command("list")
@run_async
async def quarantine_list(as_json: JsonOption = False) -> None:
    """Contracts whose close broke a rule: the reason, since when, the period waiting."""
    async with database() as pool, pool.acquire() as conn:
        rows = await quarantine.list_quarantined(conn)
    if as_json:
        for row in rows:
            print(json.dumps(row.as_json()))
        return
    table = Table("contract", "partition", "blocked since", "next period", "reason")
    for row in rows:
        doc = row.as_json()
        table.add_row(
            row.contract_id,
            str(row.partition),
            doc["blocked_since"][:19] + "Z",
            f"{_when(doc['next_period_start'])} – {_when(doc['next_close_at'])}",
            row.reason,
        )
    console.print(table)
    console.print(f"{len(rows)} quarantined close(s); they hold back their months' statements")


@quarantine_app.command("retry")
@run_async
async def quarantine_retry(
    contract_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit).")] = "retry after fixing the cause",
    actor: ActorOption = None,
) -> None:
    """Clear the block so the closer tries the contract again (audited); blocked again if it still fails."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        action_id = await quarantine.retry(conn, contract_id, reason=reason, actor=actor or audit.default_actor())
    console.print(f"{contract_id}: block cleared (audit #{action_id}); the closer retries it on its next round")


@statements_app.command("blocked")
@run_async
async def statements_blocked(as_json: JsonOption = False) -> None:
    """Supplier statements the close set aside (a rule broken, a bug): the reason, since when, and the
    later statement that took their items (R12: nothing is lost, the next month's statement carries them)."""
    async with database() as pool, pool.acquire() as conn:
        rows = await quarantine.list_blocked_statements(conn)
    if as_json:
        for row in rows:
            print(json.dumps(row.as_json()))
        return
    table = Table("supplier", "currency", "month", "blocked at", "items went to", "reason")
    for row in rows:
        doc = row.as_json()
        table.add_row(
            row.supplier_id, row.currency, row.month, doc["blocked_at"][:19] + "Z", row.carried_to or "(waiting)",
            row.reason,
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} blocked statement(s); fix the cause: the pair's next close states their items")


# --- audit --------------------------------------------------------------------------------------------------
@app.command("audit")
@run_async
async def audit_list(
    item: Annotated[str | None, typer.Option("--item", help="Only this item id.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most recent N.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Operator actions (drops, releases, retries): who, when, what and why, newest first."""
    async with database() as pool, pool.acquire() as conn:
        rows = await audit.list_actions(conn, item_id=item, limit=limit)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    table = Table("#", "at", "actor", "action", "item", "reason")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            row["actor"],
            row["action"],
            row["item_id"],
            row["reason"],
        )
    console.print(table)
