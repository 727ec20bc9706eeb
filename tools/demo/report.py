"""What the demo prints after the fleet went idle, and the documents it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from libs.ledger import verify
from libs.messaging import deadletters
from libs.messaging.broker import read_all
from libs.settings import Settings
from schemas import topics
from schemas.events import InvoiceFinalized, StatementFinalized
from services.invoicing import read_model as invoicing
from tools.demo.scenario import Scenario


async def read_events(bootstrap_servers: str, prefix: str, topic: topics.Topic) -> list[dict[str, Any]]:
    """Every event currently on a topic (all partitions, from the beginning), decoded."""
    return [orjson.loads(r.value) for r in await read_all(bootstrap_servers, prefix + topic.name, topic.partitions)]


def _short(text: str, tag: str) -> str:
    return text.removeprefix(tag + "-")


async def print_report(
    pool: asyncpg.Pool,
    bootstrap_servers: str,
    settings: Settings,
    scenario: Scenario,
    folder: Path,
    first_letter: int,
    elapsed_s: float,
    console: Console,
) -> bool:
    tag = scenario.tag
    async with pool.acquire() as conn:
        invoices = [d for d in await invoicing.list_invoices(conn) if d["contract_id"].startswith(tag)]
        notes = [d for d in await invoicing.list_credit_notes(conn) if d["contract_id"].startswith(tag)]
        statements = [d for d in await invoicing.list_statements(conn) if d["supplier_id"].startswith(tag)]
        letters = [
            r for r in await deadletters.list_dead_letters(conn, include_redriven=True) if r["id"] > first_letter
        ]
        report = await verify(conn)
        quarantined = await conn.fetch(
            "select allocation_id, kind, reason from metering.anomalies where allocation_id like $1 || '%' order by 1",
            tag,
        )

    table = Table(title=f"Invoices ({len(invoices)})", title_justify="left")
    for column in (
        "number",
        "contract",
        "cur",
        "period",
        "usage",
        "true-up",
        "adjust.",
        "SLA",
        "tax",
        "total",
        "prepaid",
        "due",
    ):
        table.add_column(column, justify="right" if column not in ("number", "contract", "cur", "period") else "left")
    for d in sorted(invoices, key=lambda d: (d["contract_id"], d["period_start"])):
        lines = d["lines"]
        table.add_row(
            d["number"],
            _short(d["contract_id"], tag),
            d["currency"],
            f"{d['period_start'][:10]}…{d['period_end'][5:10]}",
            lines["usage"],
            lines["commitment_true_up"],
            lines["adjustments"],
            lines["sla_credit"],
            d["tax"],
            d["total"],
            d["prepaid_applied"],
            d["amount_due"],
        )
    console.print(table)
    if notes:
        console.print(f"credit notes: {', '.join(n['number'] + ' ' + n['total'] + ' ' + n['currency'] for n in notes)}")

    table = Table(title=f"Supplier statements ({len(statements)})", title_justify="left")
    for column in (
        "number",
        "supplier",
        "month",
        "cur",
        "allocations",
        "earnings",
        "SLA chargebacks",
        "carried",
        "net",
    ):
        table.add_column(
            column,
            justify="right" if column in ("allocations", "earnings", "SLA chargebacks", "carried", "net") else "left",
        )
    for d in sorted(statements, key=lambda d: (d["supplier_id"], d["month"], d["currency"])):
        table.add_row(
            d["number"],
            _short(d["supplier_id"], tag),
            d["month"],
            d["currency"],
            str(len(d["earnings"])),
            d["earnings_total"],
            d["sla_chargebacks"],
            d["carried"],
            d["net"],
        )
    console.print(table)

    alerts = [
        e
        for e in await read_events(bootstrap_servers, settings.topic_prefix, topics.BILLING_ALERTS)
        if str(e["data"].get("contract_id", "")).startswith(tag)
    ]
    commands = [
        e
        for e in await read_events(bootstrap_servers, settings.topic_prefix, topics.PLATFORM_COMMANDS)
        if str(e["data"].get("contract_id", "")).startswith(tag)
    ]
    table = Table(title=f"Wallet and credit events ({len(alerts) + len(commands)})", title_justify="left")
    for column in ("when", "event", "contract", "detail"):
        table.add_column(column)
    for e in sorted(alerts + commands, key=lambda e: (e["time"], e["type"])):
        data = e["data"]
        detail = " ".join(
            f"{k}={data[k]}"
            for k in ("balance", "threshold", "overage", "exposure", "credit_limit", "reason")
            if k in data
        )
        table.add_row(e["time"][:16], e["type"], _short(data["contract_id"], tag), detail)
    console.print(table)

    table = Table(
        title=f"Dead letters ({len(letters)}) and quarantined lifecycle events ({len(quarantined)})",
        title_justify="left",
    )
    for column in ("consumer", "where", "reason"):
        table.add_column(column)
    for r in letters:
        table.add_row(r["consumer"], f"{r['topic']}/{r['partition']}/{r['offset']}", r["reason"][:110])
    for q in quarantined:
        table.add_row("metering", _short(q["allocation_id"], tag), f"{q['kind']}: {q['reason'][:100]}")
    console.print(table)

    table = Table(title="Ledger", title_justify="left")
    table.add_column("asset")
    table.add_column("trial balance (units)", justify="right")
    for asset, total in sorted(report.trial_balance.items()):
        table.add_row(asset, str(total))
    console.print(table)
    console.print(
        f"{report.entries} journal entries, {report.postings} postings, {report.accounts} accounts: "
        + (
            "[bold green]verified[/] — every entry balances, every balance matches its postings, "
            "the trial balance is zero"
            if report.ok
            else f"[bold red]VERIFICATION FAILED[/] {report}"
        )
    )

    from services.invoicing.render import write_documents

    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before rendering)
    models: list[Any] = [InvoiceFinalized.model_validate(d) for d in invoices]
    models += [StatementFinalized.model_validate(d) for d in statements]
    with Progress(
        TextColumn("writing documents"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console
    ) as progress:
        task = progress.add_task("documents", total=len(models))
        for model in models:
            write_documents(model, folder)
            progress.advance(task)
    console.print(f"documents (JSON + PDF): {folder}")
    console.print(f"demo finished in {elapsed_s:.0f} s (fleet) — run it again: it bills the next two months")
    return report.ok
