"""What the demo prints after the fleet went idle, and the documents it writes."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
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
from libs.money import format_minor
from libs.settings import Settings
from schemas import topics
from schemas.events import InvoiceFinalized, StatementFinalized
from services.invoicing import read_model as invoicing
from services.operations import saga_check
from services.payments import read_model as payments
from tools.demo.collect import WIRE_OVERPAYMENT
from tools.demo.scenario import Scenario
from tools.demo.settlement import RETURN_CODE


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
    collections: tuple[dict[str, Any], dict[str, Any]] | None = None,
    settled: dict[str, Any] | None = None,
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

    collected_ok = True
    if collections is not None:
        collected_ok = await print_collections(pool, scenario, invoices, collections[0], collections[1], console)

    settled_ok = True
    if settled is not None:
        settled_ok = await print_settlement(pool, scenario, settled, console)

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
    console.print(f"demo finished in {elapsed_s:.0f} s (fleet) — run it again: it bills two later months")
    return report.ok and collected_ok and settled_ok


async def print_collections(
    pool: asyncpg.Pool,
    scenario: Scenario,
    invoices: list[dict[str, Any]],
    done: dict[str, Any],
    processor: dict[str, Any],
    console: Console,
) -> bool:
    """The Collections section; True when the processor charged exactly once per succeeded attempt."""
    tag = scenario.tag
    async with pool.acquire() as conn:
        shown = await payments.invoice_payment_fields(conn, invoices)
        attempts = [
            a
            for a in await conn.fetch(
                """select a.attempt_id, a.try_no, a.call_no, a.gateway, a.state, a.code, a.decline_kind, a.inquiries,
                          a.amount_minor, a.currency, a.at, a.decision, t.invoice_number, t.renter_id
                     from payments.attempts a join payments.intents t using (intent_id)
                    where t.renter_id like $1 || '%' order by a.at, t.invoice_number, a.try_no, a.call_no""",
                tag,
            )
        ]
        waiting = await conn.fetch(
            "select invoice_number, renter_id, state, reason from payments.intents where renter_id like $1 || '%' "
            "and state not in ('succeeded', 'settled_otherwise') order by invoice_number",
            tag,
        )
        credits = [c for c in await payments.credit_balances(conn) if c["renter_id"].startswith(tag)]
        refunds = [r for r in await payments.refunds(conn) if r["renter_id"].startswith(tag)]
        disputes = [d for d in await payments.disputes(conn) if d["renter_id"].startswith(tag)]
        receipts = [
            r for r in await payments.receipts(conn) if r["renter_id"].startswith(tag) and r["kind"] == "receipt"
        ]
        commands = [c for c in await payments.commands(conn) if c["renter_id"].startswith(tag)]

    postpaid = {c["contract_id"] for c in scenario.contracts if c["billing_mode"] == "postpaid"}
    counts: Counter[str] = Counter()
    amounts: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for d in shown:
        if d["contract_id"] in postpaid:
            counts[d["payment_status"]] += 1
            amounts[(d["payment_status"], d["currency"])] += Decimal(d["amount_due"])
    table = Table(title="Collections: postpaid invoices by payment status", title_justify="left")
    table.add_column("status")
    table.add_column("invoices", justify="right")
    table.add_column("amount due", justify="right")
    for status in ("open", "partially_paid", "paid", "past_due"):
        table.add_row(
            status,
            str(counts[status]),
            ", ".join(f"{v} {cur}" for (s, cur), v in sorted(amounts.items()) if s == status) or "—",
        )
    console.print(table)
    cards = ", ".join(f"{_short(r, tag)} {t}" for r, t in sorted(scenario.methods.items()))
    none = ", ".join(_short(r, tag) for r in scenario.without_method)
    console.print(f"cards (fake processor tokens): {cards}; no method: {none}")

    table = Table(title=f"Collection attempts ({len(attempts)})", title_justify="left")
    for column in ("due", "invoice", "renter", "token", "try", "gateway", "amount", "outcome", "code", "routing"):
        table.add_column(column, justify="right" if column in ("try", "amount") else "left")
    for a in attempts:
        decision = a["decision"]
        if isinstance(decision, str):
            decision = orjson.loads(decision)
        outcome = a["state"] + (f" (after {a['inquiries']} inquiry)" if a["inquiries"] else "")
        if a["decline_kind"]:
            outcome += f" [{a['decline_kind']}]"
        table.add_row(
            a["at"].strftime("%Y-%m-%d"),
            a["invoice_number"],
            _short(a["renter_id"], tag),
            scenario.methods.get(a["renter_id"], "—"),
            f"{a['try_no']}.{a['call_no']}",
            a["gateway"],
            f"{format_minor(a['amount_minor'], a['currency'])} {a['currency']}",
            outcome,
            a["code"] or "",
            str((decision or {}).get("reason", ""))[:60],
        )
    console.print(table)
    for w in waiting:
        console.print(f"  {w['invoice_number']} ({_short(w['renter_id'], tag)}): {w['state']} — {w['reason']}")

    wire = done.get("wire")
    if wire:
        numbers = ", ".join(d["number"] + " " + d["amount_due"] for d in wire["invoices"]) or "nothing open"
        console.print(
            f"wire from {_short(wire['renter_id'], tag)} (no card): {wire['amount']} {wire['currency']} for {numbers} "
            f"+ {WIRE_OVERPAYMENT} over"
        )
    for r in receipts:
        console.print(
            f"  receipt {r['receipt_id']}: {r['amount']} {r['currency']}, applied {r['applied']}, "
            f"unapplied {r['unapplied']} (reference {r['reference']!r})"
        )
    for c in credits:
        console.print(f"  credit balance: {_short(c['renter_id'], tag)} {c['credit_balance']} {c['currency']}")
    for c in commands:
        console.print(f"operator command {c['command_id']} ({c['type']}, by {c['requested_by']}): {c['outcome']}")
    for r in refunds:
        console.print(
            f"refund {r['amount']} {r['currency']} on {r['invoice_number']} ({_short(r['renter_id'], tag)}): "
            f"{r['state']} via {r['gateway'] or 'bank'}"
        )
    for d in disputes:
        console.print(
            f"dispute {d['dispute_id']} on {d['invoice_number']} ({_short(d['renter_id'], tag)}): {d['amount']} "
            f"{d['currency']}, {d['state']}, fee {d['fee']}"
        )

    succeeded = [a for a in attempts if a["state"] == "succeeded"]
    by_attempt = processor.get("charges_by_attempt", {})
    ours = {a["attempt_id"] for a in attempts}
    theirs = {k: n for k, n in by_attempt.items() if k in ours}
    charges = sum(theirs.values())
    ok = charges == len(succeeded) and set(theirs) == {a["attempt_id"] for a in succeeded}
    ok = ok and all(n == 1 for n in theirs.values())
    console.print(
        f"processor: {charges} charges for this run's attempts ({processor.get('charges', 0)} in all), "
        f"{len(succeeded)} succeeded attempts — "
        + (
            "[bold green]equal: no double charge[/]"
            if ok
            else f"[bold red]MISMATCH[/] charges by attempt {theirs}, succeeded {[a['attempt_id'] for a in succeeded]}"
        )
    )
    return ok


COMPENSATION_KINDS = {
    "hold_earnings": "collection failed (hard decline, silent past the deadline and the inquiry's grace)",
    "clawback": "refund after the supplier was paid out",
    "reverse_revenue": "dispute lost",
    "reverse_supplier_share": "dispute lost (policy supplier_charged_back)",
}


WALL_CLOCK = "expected: fakepsp dates its lines by the wall clock, the demo's ledger by the simulated months"


def expected_break(b: Any, settled: dict[str, Any], breaks: list[Any] | None = None) -> str:
    """Why a reconciliation break is expected in the demo, or "" when it is not (the demo fails then).

    Expected: the bank fee and the unexplained credit (one bank line each, missing in the ledger); on the
    processor leg, a ledger movement and the processor's line of the same amount, currency and direction
    that differ only by date (a ``timing`` pair by reference, or two single breaks): fakepsp has no
    simulated clock. A break an operator explained (an earlier run's unknown credit) says so."""
    if b.explanation:
        return f"explained by an operator: {b.explanation}"
    if b.leg == "processor":
        sources = {r.source for r in b.records}
        if len(b.records) == 2 and sources == {"ledger", "processor"} and b.reason == "timing":
            one, two = b.records
            if (one.amount_minor, one.currency, one.direction) == (two.amount_minor, two.currency, two.direction):
                return WALL_CLOCK
        if len(b.records) == 1:
            (record,) = b.records
            for other in breaks or []:
                if other is not b and other.leg == "processor" and len(other.records) == 1:
                    (twin,) = other.records
                    if twin.source != record.source and (twin.amount_minor, twin.currency, twin.direction) == (
                        record.amount_minor,
                        record.currency,
                        record.direction,
                    ):
                        return WALL_CLOCK
        return ""
    if b.leg == "bank" and b.reason in ("missing_in_ledger", "timing") and len(b.records) == 1:
        record = b.records[0]
        for line in settled.get("bank_lines", []):
            if (
                line.expected_break
                and record.amount_minor == line.amount_minor
                and record.currency == line.currency
                and record.on == line.on
                and line.text in record.note
            ):
                return f"expected: {line.expected_break}"
    return ""


async def print_settlement(pool: asyncpg.Pool, scenario: Scenario, settled: dict[str, Any], console: Console) -> bool:
    """The Payouts, Reconciliation and Sagas sections; True when nothing is inconsistent."""
    from services.payouts import operator
    from services.saga import read_model as saga_read

    tag = scenario.tag
    ok = True
    async with pool.acquire() as conn:
        payouts_ = [p for p in await operator.list_payouts(conn) if p["supplier_id"].startswith(tag)]
        sagas = [s for s in await saga_read.sagas(conn) if str(s["renter_id"] or "").startswith(tag)]
        compensations = await conn.fetch(
            """select s.invoice_number, s.state as saga_state, c.kind, c.ref, c.state, c.attempts, c.last_reason
                 from saga.compensations c join saga.sagas s using (saga_id)
                where s.renter_id like $1 || '%' order by c.requested_at, s.invoice_number, c.kind""",
            tag,
        )
        flags = await conn.fetch(
            "select supplier_id, kind, code from payouts.payee_flags where supplier_id like $1 || '%'", tag
        )

    table = Table(title=f"Payouts ({len(payouts_)})", title_justify="left")
    for column in ("payout", "supplier", "months", "statement", "pays", "rail", "state", "rate", "why / file"):
        table.add_column(column, justify="right" if column in ("statement", "pays") else "left")
    for p in sorted(payouts_, key=lambda p: (p["planned_at"], p["supplier_id"], p["currency"])):
        why = p.get("reason") or ""
        if Decimal(p["held"]):
            why = f"{why} held {p['held']} (pay-when-paid)".strip()
        table.add_row(
            p["payout_id"][:8],
            _short(p["supplier_id"], tag),
            ",".join(p["months"]),
            f"{p['amount']} {p['currency']}",
            f"{p['payout_amount']} {p['payout_currency']}" if p.get("payout_amount") else "—",
            str(p["rail"] or "—"),
            p["state"],
            p.get("rate_id", "").removeprefix(tag + "-") + (f" @ {p['rate']}" if p.get("rate") else ""),
            why or str(p.get("file_id") or ""),
        )
    console.print(table)
    payees = ", ".join(
        f"{_short(s, tag)} {d['rail']} {d['payout_currency']}"
        + (" pay-when-paid" if d["pay_when_paid"] else "")
        + (f" minimum {d['minimum_payout']}" if Decimal(d["minimum_payout"]) else "")
        for s, d in sorted(scenario.payees.items())
    )
    console.print(f"payees (suppliers.v1): {payees}")
    late = settled.get("late_wire")
    if late:
        console.print(
            f"late payment: {_short(late['renter_id'], tag)} wired {late['amount']} {late['currency']} on "
            f"{late['received_at']:%Y-%m-%d %H:%M} for {', '.join(f'{n} (due {d[:10]})' for n, d in late['invoices'])}"
            f" — releases {_short(scenario.pay_when_paid or '', tag)}'s held earnings at the next planning"
        )
    table = Table(title=f"Payout files ({len(settled['files'])}) in payouts/", title_justify="left")
    for column in ("file", "rail", "payouts", "total", "effective", "state", "name"):
        table.add_column(column, justify="right" if column in ("payouts", "total") else "left")
    async with pool.acquire() as conn:
        states = {f["file_id"]: f["state"] for f in await operator.list_files(conn)}
    for f in settled["files"]:
        table.add_row(
            f["file_id"],
            f["rail"],
            str(f["count"]),
            f"{f['total']} {f['currency']}",
            f["effective_date"],
            states.get(f["file_id"], f["state"]),
            f["name"],
        )
    console.print(table)
    returned = settled.get("returned")
    if returned:
        state = next((p["state"] for p in payouts_ if p["payout_id"] == returned["payout_id"]), "?")
        flagged = [f for f in flags if f["supplier_id"] == returned["supplier_id"]]
        console.print(
            f"ACH return {RETURN_CODE} of {returned['payout_id'][:8]} ({_short(returned['supplier_id'], tag)}, "
            f"{returned['amount']} USD) imported from {Path(returned['path']).name}: payout {state}, payee flagged "
            f"{[(f['kind'], f['code']) for f in flagged]}"
        )
        if state != "returned" or not flagged:
            console.print("[bold red]the returned payout was not reversed and flagged[/]")
            ok = False
    stuck = [p for p in payouts_ if p["state"] in ("planned", "waiting_operator")]
    if stuck:
        console.print(f"[bold red]payouts not sent:[/] {[(p['payout_id'][:8], p['state']) for p in stuck]}")
        ok = False

    result, run_id, _ = settled["reconciliation"]
    processor = settled["processor"]
    console.print(
        f"[bold]Reconciliation[/] (R17) as of {result.as_of} · window {result.window_days} business days · run "
        f"{run_id}: bank statement {Path(settled['statement']).name} ({len(settled['bank_lines'])} lines), "
        f"processor: {processor['lines']} balance transactions ({processor['entries']} fee/payout entries posted), "
        + "processor payouts "
        + (
            ", ".join(
                f"{p['id']} {format_minor(p['amount'], p['currency'])} {p['currency']}" for p in processor["payouts"]
            )
            or "none"
        )
    )
    table = Table(title="Reconciliation per source", title_justify="left")
    for column in ("source", "currency", "matched", "amount", "unmatched", "amount "):
        table.add_column(column, justify="left" if column in ("source", "currency") else "right")
    for (source, currency), t in sorted(result.totals.items()):
        table.add_row(
            source,
            currency,
            str(t.matched_count),
            format_minor(t.matched_minor, currency),
            str(t.unmatched_count),
            format_minor(t.unmatched_minor, currency),
        )
    console.print(table)
    by_how = Counter(f"{m.leg} by {m.how}" for m in result.matches)
    console.print(f"{len(result.matches)} matches (" + ", ".join(f"{n} {k}" for k, n in sorted(by_how.items())) + ")")
    table = Table(title=f"Reconciliation breaks ({len(result.breaks)})", title_justify="left")
    for column in ("reason", "leg", "age", "records", "verdict"):
        table.add_column(column)
    unexpected = 0
    for b in result.breaks:
        label = expected_break(b, settled, list(result.breaks))
        unexpected += not label
        table.add_row(
            b.reason,
            b.leg,
            f"{b.age_days} d",
            "\n".join(
                f"{r.source} {'+' if r.direction == 'in' else '−'}{format_minor(r.amount_minor, r.currency)} "
                f"{r.currency} {r.on} {r.note[:60]}"
                for r in b.records
            ),
            label or "[bold red]UNEXPECTED[/]",
        )
    console.print(table)
    if unexpected:
        ok = False
    completed = sum(1 for p in payouts_ if p["state"] == "completed")
    console.print(
        f"{len(result.breaks) - unexpected} expected break(s), {unexpected} unexpected; "
        f"{completed} payouts completed by the bank's statement (payout.settlements_confirmed)"
    )
    after, after_id, _ = settled["reconciliation_after"]
    console.print(
        "Finance acts on the bank's breaks: " + ("; ".join(settled["actions"]) or "nothing to do")
        + f". Run {after_id}: {len(after.matches)} matches (was {len(result.matches)}), {len(after.breaks)} breaks, "
        f"{len(after.explained_breaks)} explained by an operator"
    )  # fmt: skip
    explained_now = len(after.explained_breaks) - len(result.explained_breaks)
    if len(settled["actions"]) != 2 or len(after.matches) != len(result.matches) + 1 or explained_now != 1:
        console.print("[bold red]the bank fee did not match after it was posted, or the credit was not explained[/]")
        ok = False

    by_state = Counter(s["state"] for s in sagas)
    console.print(
        f"[bold]Sagas[/] ({len(sagas)} billing cycles): "
        + ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    )
    table = Table(title=f"Compensations ({len(compensations)})", title_justify="left")
    for column in ("invoice", "saga", "compensation", "ref", "state", "answer"):
        table.add_column(column)
    for c in compensations:
        table.add_row(
            c["invoice_number"], c["saga_state"], c["kind"], _short(c["ref"], tag), c["state"], c["last_reason"][:70]
        )
    console.print(table)
    if returned:
        async with pool.acquire() as conn:
            following = await conn.fetch(
                "select invoice_number, state from saga.sagas where facts::text like '%' || $1 || '%' order by 1",
                returned["payout_id"],
            )
        console.print(
            f"payout {returned['payout_id'][:8]} returned (reversed by payouts, payee flagged; no compensation is "
            f"requested): recorded by the sagas of "
            + (", ".join(f"{r['invoice_number']} ({r['state']})" for r in following) or "no invoice")
        )
    seen = {c["kind"] for c in compensations}
    for kind, why in COMPENSATION_KINDS.items():
        if kind not in seen:
            console.print(f"[yellow]no {kind} compensation in this run[/] ({why} did not happen)")
    async with pool.acquire() as conn:
        check = await saga_check.check(conn, follow_payouts=True)  # the demo's saga follows payouts
    checked = ", ".join(f"{n} {kind}" for kind, n in sorted(check.compensations.items())) or "none"
    console.print(
        f"Saga invariant (settle sagas verify): {sum(check.sagas.values())} sagas against payments, payouts and the "
        f"ledger; compensations checked: {checked}; {len(check.waiting)} waiting for payouts' answer; "
        f"{len(check.violations)} violation(s)"
    )
    for v in check.violations:
        console.print(f"[bold red]violation[/] {v.line()}", highlight=False)
    return ok and check.ok
