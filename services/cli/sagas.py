"""``settle sagas``: the billing-cycle sagas (issue 11) — list, show, and the operator's retry.

``retry`` is an audited transition in one transaction: the operator's command is recorded once per
command id (``saga.operator_commands``) and applied to the saga like any event (an inquiry is asked again,
failed compensations get new attempts); what it emits goes through the outbox like the worker's."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from libs.errors import ConfigurationError
from libs.messaging.consume import Tx
from libs.settings import get_settings
from services.cli.app import sagas_app
from services.cli.runtime import console, database, read_only, run_async
from services.operations import saga_check
from services.saga import domain, read_model, store
from services.saga.main import policy_of

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str)


@sagas_app.command("list")
@run_async
async def sagas_list(
    stuck: Annotated[
        bool,
        typer.Option("--stuck", help="Only sagas that need a look: needs_operator, failing, asking, or past deadline."),
    ] = False,
    state: Annotated[str | None, typer.Option("--state", help="Only this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every saga (one per contract billing period): its state, why, what it waits for and until when."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        rows = await read_model.sagas(conn, stuck=stuck, state=state)
    if as_json:
        for row in rows:
            print(_line(row))
        return
    if not rows:
        console.print("no sagas" + (" stuck" if stuck else ""))
        return
    table = Table("saga", "invoice", "contract", "state", "waits for", "deadline", "reason", title="sagas")
    for r in rows:
        table.add_row(
            r["saga_id"][:8],
            r["invoice_number"],
            r["contract_id"] or "",
            r["state"],
            r["waits_for"],
            str(r["deadline"] or ""),
            r["reason"],
        )
    console.print(table)


@sagas_app.command("show")
@run_async
async def sagas_show(
    saga: Annotated[str, typer.Argument(help="A saga id or its invoice number.")],
) -> None:
    """One saga (JSON): each step and transition with the event behind it, what it waits for, its
    compensations (kind, state, attempts) and the operator commands applied to it."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        detail = await read_model.saga_detail(conn, saga, policy_of(get_settings()))
    if detail is None:
        raise ConfigurationError(f"no saga {saga}")
    print(json.dumps(detail, ensure_ascii=False, indent=2, default=str))


async def retry(
    conn: Any, saga: str, *, by: str, reason: str, command_id: str, policy: domain.Policy, at: datetime
) -> tuple[str, str, bool]:
    """The audited retry (in the caller's transaction): (state before, state after, applied now)."""
    row = await conn.fetchrow(
        "select saga_id, invoice_number, state, facts from saga.sagas where saga_id = $1 or invoice_number = $1 "
        "for update",
        saga,
    )
    if row is None:
        raise ConfigurationError(f"no saga {saga}")
    done = await conn.fetchrow(
        "select from_state, to_state from saga.operator_commands where command_id = $1", command_id
    )
    if done is not None:
        return done["from_state"], done["to_state"], False
    at = domain.Facts.model_validate(row["facts"]).now or at  # event time, as every other input of the saga
    tx = Tx(conn, "saga")
    cause = store.Cause(command_id, "operator.saga_retry", at)
    status = await store.advance(
        tx, row["invoice_number"], [(cause, domain.OperatorRetry(command_id=command_id, at=at))], policy
    )
    await conn.execute(
        """insert into saga.operator_commands (command_id, saga_id, requested_by, reason, from_state, to_state)
           values ($1, $2, $3, $4, $5, $6)""",
        command_id,
        row["saga_id"],
        by,
        reason,
        row["state"],
        status.state,
    )
    await tx.flush()
    return row["state"], status.state, True


@sagas_app.command("retry")
@run_async
async def sagas_retry(
    saga: Annotated[str, typer.Argument(help="A saga id or its invoice number.")],
    by: Annotated[str, typer.Option("--by", help="Who asks (kept in the audit trail).")],
    reason: Annotated[str, typer.Option("--reason", help="Why: the fix that was made (audit trail).")],
    command_id: Annotated[
        str | None, typer.Option("--command-id", help="Idempotency key: the same id again has no effect.")
    ] = None,
) -> None:
    """After an operator's fix: ask a silent step again and give failed compensations new attempts."""
    cid = command_id or str(uuid.uuid4())
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        before, after, applied = await retry(
            conn, saga, by=by, reason=reason, command_id=cid, policy=policy_of(get_settings()), at=datetime.now(UTC)
        )
    console.print(f"{saga}: {before} → {after}" + ("" if applied else f" (command {cid} was already applied)"))


@sagas_app.command("verify")
@run_async
async def sagas_verify(as_json: JsonOption = False) -> None:
    """Issue 11's invariant: every saga's state against payments' books, payouts' records and the ledger
    (compensated ⇒ the reversal postings exist and balance; see ``services.operations.saga_check``).
    Exits 1 on any violation; compensations payouts has not answered yet are listed as waiting."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        result = await saga_check.check(conn, follow_payouts=get_settings().saga_follow_payouts)
    if as_json:
        print(_line(result.as_json()))
    else:
        states = ", ".join(f"{n} {s}" for s, n in sorted(result.sagas.items()))
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.compensations.items()))
        console.print(f"{sum(result.sagas.values())} sagas ({states or 'none'})")
        console.print(f"compensations checked at payouts and in the ledger: {kinds or 'none'}")
        if result.waiting:
            console.print(f"waiting for payouts' answer: {', '.join(result.waiting)}")
        for v in result.violations:
            console.print(f"[red]violation[/] {v.line()}", highlight=False)
        console.print(f"{len(result.violations)} violation(s)")
    if not result.ok:
        raise typer.Exit(1)
