"""``settle payouts …``: supplier payouts planned at each close (R15), and the operator's hold/release.

``list``, ``show`` and ``plan --dry-run`` are reads (they start nothing and write nothing). ``hold`` and
``release`` write ONE transaction: the payout's state, an audit row in ``payouts.operator_actions``
(who, why, from which state to which), the ledger move between ``payouts_in_transit`` and
``payouts_on_hold`` and the ``payout.held`` / ``payout.released`` event in the outbox.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from libs.errors import ConfigurationError, SettleError
from libs.ids import derive_id
from libs.messaging.broker import publish_keyed, start_producer, stop_client
from libs.messaging.envelope import OPERATOR_SOURCE_PREFIX
from libs.settings import get_settings
from libs.times import parse_utc
from schemas import topics
from schemas.envelope import encode
from schemas.events import PayoutFileAcknowledged, PayoutReturnsReceived
from services.cli.app import payouts_app
from services.cli.runtime import console, database, read_only, resolve, run_async
from services.operations import audit
from services.payouts import operator

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who acts (default: the login name).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit).")]


def _print(docs: list[dict[str, Any]], title: str) -> None:
    table = Table("payout", "supplier", "months", "amount", "pays", "rail", "state", "reason", title=title)
    for d in docs:
        pays = f"{d['payout_currency']} {d['payout_amount']}" if d.get("payout_amount") is not None else "-"
        table.add_row(
            str(d["payout_id"]),
            str(d["supplier_id"]),
            ",".join(d["months"]),
            f"{d['currency']} {d['amount']}",
            pays + (f" @ {d['rate']} ({d['rate_id']})" if "rate_id" in d else ""),
            str(d["rail"] or "-"),
            str(d["state"]),
            str(d.get("reason", "")),
        )
    console.print(table)


@payouts_app.command("list")
@run_async
async def payouts_list(
    supplier: Annotated[str | None, typer.Option("--supplier", help="Only this supplier.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="planned, on_hold or waiting (or a rail's).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Payouts (planned, on hold, …) and per supplier and statement currency the plan waiting with its
    reason (below_minimum, no_payee, no_fx_rate, nothing_payable)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        docs = await operator.list_payouts(conn, supplier=supplier, state=state)
    if as_json:
        for doc in docs:
            print(json.dumps(doc))
        return
    _print(docs, "payouts")


@payouts_app.command("show")
@run_async
async def payouts_show(payout_id: Annotated[str, typer.Argument(help="A payout id (settle payouts list).")]) -> None:
    """One payout in full, as JSON: the masked account, pay-when-paid holdings, operator actions."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        doc = await operator.show_payout(conn, payout_id)
    print(json.dumps(doc, indent=2))


@payouts_app.command("plan")
@run_async
async def payouts_plan(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what planning would produce; write nothing.")
    ] = False,
    at: Annotated[str | None, typer.Option("--at", help="Planning time (RFC 3339 UTC); default the last tick.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What the next planning would produce (planning itself runs in the payouts worker at each tick)."""
    if not dry_run:
        raise ConfigurationError("planning runs at each clock tick in `settle run payouts`; use --dry-run to preview")
    when = None
    if at is not None:
        try:
            when = parse_utc(at)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        planned_at, docs = await operator.dry_run(conn, when)
    if as_json:
        for doc in docs:
            print(json.dumps(doc))
        return
    if planned_at is None:
        console.print("no tick yet: nothing would be planned")
        return
    _print(docs, f"planning at {planned_at.isoformat()} (dry run)")


@payouts_app.command("hold")
@run_async
async def payouts_hold(payout_id: str, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Put a planned payout on hold: it is not sent until released (audited, ledgered, published)."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        result = await operator.hold(conn, payout_id, reason=reason, actor=actor or audit.default_actor())
    console.print(f"held {result.payout_id} (audit #{result.action_id}): {result.from_state} → {result.to_state}")


@payouts_app.command("release")
@run_async
async def payouts_release(payout_id: str, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Release an on-hold payout: it becomes planned and its rail may send it (audited, ledgered, published)."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        result = await operator.release(conn, payout_id, reason=reason, actor=actor or audit.default_actor())
    console.print(f"released {result.payout_id} (audit #{result.action_id}): {result.from_state} → {result.to_state}")


@payouts_app.command("retry")
@run_async
async def payouts_retry(payout_id: str, reason: ReasonOption, actor: ActorOption = None) -> None:
    """One more attempt of a returned or rejected payout that R16 would not send again (its details did not
    change): the next file round sends it with the supplier's latest payee details. Audited; once per
    failed attempt."""
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        result = await operator.retry(conn, payout_id, reason=reason, actor=actor or audit.default_actor())
    console.print(
        f"retry of {result.payout_id} asked (audit #{result.action_id}); the next file round sends it — "
        f"`settle payouts show {result.payout_id}`"
    )


# --- payout files (R16) -----------------------------------------------------------------------------------
files_app = typer.Typer(help="Payout files (R16): list, show, ack (the bank accepted a file).", no_args_is_help=True)
returns_app = typer.Typer(help="The bank's returns, NOCs and rejects of payout files (R16).", no_args_is_help=True)
payouts_app.add_typer(files_app, name="files")
payouts_app.add_typer(returns_app, name="returns")


async def _handled(event_id: str) -> bool:
    """Whether the payouts worker already took this message (a re-run would send the same id with a new
    time: an id-conflict dead letter). Best effort: with no database to ask, False."""
    try:
        async with read_only() as ctx, ctx.pool.acquire() as conn:
            found = await conn.fetchval(
                "select 1 from settle.inbox where consumer = 'payouts-bank' and event_id = $1", event_id
            )
    except SettleError:
        return False
    return found is not None


async def _publish_bank_result(key: str, event_type: str, data: Any, event_id: str) -> bool:
    """Publish one message on payouts.bank_results.v1 (the payouts worker applies it); False (nothing sent)
    when the worker already took this very message."""
    if await _handled(event_id):
        console.print(f"{event_type} {event_id} was already handled by the payouts worker; nothing sent")
        return False
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    value = encode(
        event_id=event_id,
        source=OPERATOR_SOURCE_PREFIX + (os.environ.get("USER") or "operator"),
        type=event_type,
        time=datetime.now(UTC),
        data=data,
    )
    producer = await start_producer(targets.bootstrap_servers, client_id="settle-payouts-cli")
    try:
        await publish_keyed(producer, [(topics.PAYOUT_BANK_RESULTS, key.encode(), value)], prefix=settings.topic_prefix)
    finally:
        await stop_client(producer)
    return True


@files_app.command("list")
@run_async
async def files_list(
    state: Annotated[
        str | None, typer.Option("--state", help="built, submitted, acknowledged, settled, rejected.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Payout files: id, rail, state, payouts, total, created (the tick it was cut at), SHA-256."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        docs = await operator.list_files(conn, state=state)
    if as_json:
        for doc in docs:
            print(json.dumps(doc))
        return
    table = Table("file", "rail", "state", "payouts", "total", "created", "sha256", title="payout files")
    for d in docs:
        table.add_row(
            d["file_id"],
            d["rail"],
            d["state"],
            str(d["count"]),
            f"{d['currency']} {d['total']}",
            d["created"],
            d["sha256"][:16] + "…",
        )
    console.print(table)


@files_app.command("show")
@run_async
async def files_show(file_id: Annotated[str, typer.Argument(help="A file id (settle payouts files list).")]) -> None:
    """One payout file as JSON: totals, its payouts and their outcomes, its state history, its path."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        doc = await operator.show_file(conn, file_id)
    print(json.dumps(doc, indent=2))


@files_app.command("ack")
@run_async
async def files_ack(file_id: Annotated[str, typer.Argument(help="The file the bank acknowledged.")]) -> None:
    """The bank acknowledged a file: publishes payout_file.acknowledged (the payouts worker applies it)."""
    by = os.environ.get("USER") or "operator"
    data = PayoutFileAcknowledged(file_id=file_id, acknowledged_by=by)
    # One event id per (file, operator): a second operator's ack is another fact (a no-op for the worker),
    # not the same id with another payload.
    if await _publish_bank_result(file_id, "payout_file.acknowledged", data, f"ack-{file_id}-{by}"):
        console.print(f"payout_file.acknowledged {file_id} sent; see `settle payouts files show {file_id}`")


@returns_app.command("import")
@run_async
async def returns_import(
    path: Annotated[Path, typer.Argument(help="The bank's file: NACHA returns/NOCs, pacs.002/pain.002, receipts.")],
    rail: Annotated[str, typer.Option("--rail", help="ach, wire, sepa, rtp, fednow or stablecoin.")],
) -> None:
    """Publish a returns/rejects file from the bank (checked with the rail's reader first: a file that does
    not parse is refused here, before anything is published)."""
    from services.payouts.files import RAILS  # the rails' readers (lxml, NACHA) only when importing

    if rail not in RAILS:
        raise typer.BadParameter(f"unknown rail {rail!r}; one of {', '.join(sorted(RAILS))}")
    content = path.read_bytes()
    answers = RAILS[rail].parse_returns(content)
    digest = hashlib.sha256(content).hexdigest()
    data = PayoutReturnsReceived(
        rail=rail,
        name=path.name[:200],
        sha256=digest,
        content_b64=base64.b64encode(content).decode(),
    )
    # The id names the file as imported (rail, bytes, name): the same import again is deduplicated; the same
    # bytes under another name are another message, which answers nothing twice (an attempt answered once).
    event_id = derive_id("payout_returns.received", rail, digest, data.name)
    if not await _publish_bank_result(f"returns-{digest[:16]}", "payout_returns.received", data, event_id):
        return
    kinds = sorted({a.kind for a in answers})
    console.print(f"{path.name}: {len(answers)} answer(s) ({', '.join(kinds) or 'none'}) published for the {rail} rail")
