"""``settle payouts …``: supplier payouts planned at each close (R15), and the operator's hold/release.

``list``, ``show`` and ``plan --dry-run`` are reads (they start nothing and write nothing). ``hold`` and
``release`` write ONE transaction: the payout's state, an audit row in ``payouts.operator_actions``
(who, why, from which state to which), the ledger move between ``payouts_in_transit`` and
``payouts_on_hold`` and the ``payout.held`` / ``payout.released`` event in the outbox.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from libs.errors import ConfigurationError
from libs.times import parse_utc
from services.cli.app import payouts_app
from services.cli.runtime import console, database, read_only, run_async
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
