"""``settle payments`` and ``settle receipts``: what collections, refunds and receipts did, and the
operator's instructions (retry, refund, refund paid, apply), which go to the payments service as commands on
``payments.commands.v1`` — applied once per command id, audited in ``payments.commands``."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from rich.table import Table

from libs.errors import ConfigurationError, SettleError
from libs.messaging.broker import publish_keyed, start_producer, stop_client
from libs.messaging.envelope import OPERATOR_SOURCE_PREFIX
from libs.settings import get_settings
from schemas import topics
from schemas.envelope import encode
from schemas.events import PaymentCommand
from services.cli.app import payments_app, receipts_app
from services.cli.runtime import console, read_only, resolve, run_async
from services.payments import read_model

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
ByOption = Annotated[str, typer.Option("--by", help="Who asks (kept in the audit trail).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail).")]
CommandIdOption = Annotated[
    str | None, typer.Option("--command-id", help="Idempotency key: the same id again has no effect (default: new).")
]


def _print_json_lines(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str))


@payments_app.command("list")
@run_async
async def payments_list(
    renter: Annotated[str | None, typer.Option("--renter", help="Only this renter.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only attempts in this state (unknown, …).")] = None,
    refunds: Annotated[bool, typer.Option("--refunds", help="List refunds instead of collection attempts.")] = False,
    disputes: Annotated[bool, typer.Option("--disputes", help="List disputes instead.")] = False,
    overpaid: Annotated[
        bool, typer.Option("--overpaid", help="With --refunds: only refunds that gave back more than is now owed.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Collection attempts (every gateway call), or refunds, or disputes, oldest first."""
    if overpaid and not refunds:
        raise ConfigurationError("--overpaid lists refunds: add --refunds")
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        if refunds:
            rows = await read_model.refunds(conn, renter=renter, state=state)
            if overpaid:
                rows = [r for r in rows if Decimal(r["overpaid"]) > 0]
        elif disputes:
            rows = await read_model.disputes(conn, renter=renter)
        else:
            rows = await read_model.attempts(conn, renter=renter, state=state)
    if as_json:
        _print_json_lines(rows)
        return
    if not rows:
        console.print("nothing to list")
        return
    columns = list(rows[0])[:10]
    table = Table(*columns, title="refunds" if refunds else "disputes" if disputes else "payment attempts")
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "" for c in columns))
    console.print(table)


@payments_app.command("show")
@run_async
async def payments_show(
    payment_id: Annotated[str, typer.Argument(help="An attempt id (from `settle payments list`).")],
) -> None:
    """One attempt: its routing decision and reason, the processor's answer, the intent's tries and
    schedule, the invoices it paid (JSON)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        detail = await read_model.attempt_detail(conn, payment_id)
    if detail is None:
        raise ConfigurationError(f"no payment attempt {payment_id}")
    print(json.dumps(detail, ensure_ascii=False, indent=2, default=str))


def _command(command_id: str | None, by: str, reason: str, **fields: Any) -> PaymentCommand:
    """An operator command: its idempotency key (given, else new), who asks and why, and its fields."""
    return PaymentCommand(command_id=command_id or uuid.uuid4().hex, requested_by=by, reason=reason, **fields)


async def _already_applied(command_id: str) -> str | None:
    """The outcome of a command the payments worker has already applied under this id, if any (a re-run of
    the same command would publish the same event id with a new time: a dead letter, not a second effect).
    Best effort: with no database to ask, None (the worker still applies a command id once)."""
    try:
        async with read_only() as ctx, ctx.pool.acquire() as conn:
            row = await conn.fetchrow("select type, outcome from payments.commands where command_id = $1", command_id)
    except SettleError:
        return None
    return None if row is None else f"{row['type']}: {row['outcome']}"


async def _send(command_type: str, data: PaymentCommand) -> None:
    settings = get_settings()
    done = await _already_applied(data.command_id)
    if done is not None:
        console.print(f"command {data.command_id} was already applied ({done}); nothing sent")
        return
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    value = encode(
        event_id=f"cmd-{data.command_id}",
        source=OPERATOR_SOURCE_PREFIX + (os.environ.get("USER") or "operator"),
        type=command_type,
        time=datetime.now(UTC),
        data=data,
    )
    producer = await start_producer(targets.bootstrap_servers, client_id="settle-payments-cli")
    try:
        await publish_keyed(
            producer, [(topics.PAYMENT_COMMANDS, data.renter_id.encode(), value)], prefix=settings.topic_prefix
        )
    finally:
        await stop_client(producer)
    console.print(f"{command_type} {data.command_id} sent; its outcome: `settle payments commands` (payments.commands)")


@payments_app.command("retry")
@run_async
async def payments_retry(
    invoice: Annotated[str, typer.Argument(help="The invoice number whose collection to try again.")],
    renter: Annotated[str, typer.Option("--renter", help="The invoice's renter.")],
    currency: Annotated[str, typer.Option("--currency", help="The invoice's currency.")],
    by: ByOption,
    reason: ReasonOption,
    command_id: CommandIdOption = None,
) -> None:
    """A try now for a collection that waits, stopped on a hard decline, or went past due."""
    await _send(
        "payment.retry_requested",
        _command(command_id, by, reason, renter_id=renter, currency=currency, invoice_number=invoice),
    )


@payments_app.command("refund")
@run_async
async def payments_refund(
    invoice: Annotated[str, typer.Argument(help="The invoice number whose payment to give back.")],
    amount: Annotated[str, typer.Option("--amount", help="Decimal amount, at most what was paid on the invoice.")],
    renter: Annotated[str, typer.Option("--renter", help="The invoice's renter.")],
    currency: Annotated[str, typer.Option("--currency", help="The invoice's currency.")],
    by: ByOption,
    reason: ReasonOption,
    command_id: CommandIdOption = None,
) -> None:
    """Give money paid on an invoice back (never more than was paid: R11), to the card that paid it;
    paid by bank receipt, it becomes a manual refund. The invoice owes the amount again unless a
    credit note reduces it (the usual path: a credit note on a paid invoice refunds by itself)."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise typer.BadParameter(f"{amount!r} is not a decimal amount") from None
    await _send(
        "payment.refund_requested",
        _command(command_id, by, reason, renter_id=renter, currency=currency, invoice_number=invoice, amount=value),
    )


@payments_app.command("refund-paid")
@run_async
async def payments_refund_paid(
    refund: Annotated[str, typer.Argument(help="The refund id (`settle payments list --refunds --state manual`).")],
    renter: Annotated[str, typer.Option("--renter", help="The refund's renter.")],
    currency: Annotated[str, typer.Option("--currency", help="The refund's currency.")],
    reference: Annotated[str, typer.Option("--reference", help="The bank's reference of the payment out.")],
    by: ByOption,
    reason: ReasonOption,
    paid_on: Annotated[
        str | None, typer.Option("--paid-on", help="Day the money left (YYYY-MM-DD, UTC; default: now).")
    ] = None,
    command_id: CommandIdOption = None,
) -> None:
    """Report a manual refund (the invoice was paid by a bank receipt) paid back over the bank: the
    refund is done, ``Dr refunds_payable / Cr cash_clearing`` on that day with the bank reference
    (reconciliation matches the bank's debit line), ``payment.refunded`` published."""
    paid_at = None
    if paid_on is not None:
        try:
            paid_at = datetime.combine(date.fromisoformat(paid_on), time(12), UTC)
        except ValueError:
            raise typer.BadParameter(f"{paid_on!r} is not a YYYY-MM-DD day") from None
    await _send(
        "refund.mark_paid_requested",
        _command(
            command_id, by, reason, renter_id=renter, currency=currency, refund_id=refund, reference=reference,
            paid_at=paid_at,
        ),
    )  # fmt: skip


@payments_app.command("commands")
@run_async
async def payments_commands(as_json: JsonOption = False) -> None:
    """Operators' payment commands and what each did (the audit trail)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        rows = await read_model.commands(conn)
    if as_json:
        _print_json_lines(rows)
        return
    table = Table("command", "type", "renter", "by", "reason", "at", "outcome", title="payment commands")
    for r in rows:
        table.add_row(r["command_id"], r["type"], r["renter_id"], r["requested_by"], r["reason"], r["at"], r["outcome"])
    console.print(table)


@receipts_app.command("list")
@run_async
async def receipts_list(
    renter: Annotated[str | None, typer.Option("--renter", help="Only this renter.")] = None,
    unmatched: Annotated[bool, typer.Option("--unmatched", help="Only receipts that paid no invoice.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Money received (and collected), with what it paid and what waits as credit balance."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        rows = await read_model.receipts(conn, renter=renter, unmatched=unmatched)
    if as_json:
        _print_json_lines(rows)
        return
    table = Table("receipt", "kind", "renter", "amount", "applied", "unapplied", "received", "rail", "reference")
    for r in rows:
        table.add_row(
            r["receipt_id"],
            r["kind"],
            r["renter_id"],
            f"{r['currency']} {r['amount']}",
            r["applied"],
            r["unapplied"],
            r["received_at"],
            r["rail"] or "",
            r["reference"],
        )
    console.print(table)


@receipts_app.command("apply")
@run_async
async def receipts_apply(
    receipt: Annotated[str, typer.Argument(help="The receipt id.")],
    renter: Annotated[str, typer.Option("--renter", help="The renter it was recorded for.")],
    to: Annotated[str, typer.Option("--to", help="The renter it belongs to.")],
    currency: Annotated[str, typer.Option("--currency", help="The receipt's currency.")],
    by: ByOption,
    reason: ReasonOption,
    reference: Annotated[str, typer.Option("--reference", help="A new reference (e.g. the invoice number).")] = "",
    command_id: CommandIdOption = None,
) -> None:
    """Move a receipt recorded for the wrong renter to the right one; both allocations are recomputed
    (R11), so it pays the new renter's invoices (the one its reference names first)."""
    await _send(
        "receipt.apply_requested",
        _command(
            command_id,
            by,
            reason,
            renter_id=renter,
            currency=currency,
            receipt_id=receipt,
            to_renter_id=to,
            reference=reference,
        ),
    )


@payments_app.command("pci-scan")
@run_async
async def payments_pci_scan(
    topics_too: Annotated[bool, typer.Option("--topics/--no-topics", help="Also read every topic.")] = True,
) -> None:
    """Look for card numbers (13–19 digits passing Luhn) in every table and topic; exit 1 on any."""
    from libs.messaging.broker import read_all
    from services.operations import pci

    findings: list[pci.Finding] = []
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        findings += await pci.scan_database(conn)
    if topics_too:
        settings = get_settings()
        targets = await resolve(settings)
        assert targets.bootstrap_servers is not None
        for topic in topics.REGISTRY:
            records = await read_all(targets.bootstrap_servers, settings.topic_prefix + topic.name, topic.partitions)
            findings += pci.scan_records(topic.name, [r.value for r in records])
    for f in findings:
        console.print(f"[red]card number[/red] {f.masked} in {f.where}")
    console.print(f"{len(findings)} finding(s)")
    if findings:
        raise typer.Exit(1)
