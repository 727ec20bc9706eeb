"""``settle bank import``, ``settle processor import``, ``settle reconcile`` (R17; README "Reconciliation").

Exit codes as everywhere: 0 done; 1 ``reconcile`` found breaks older than the window that are not
timing differences (an operator must act); 2 it could not do its work (bad file, nothing running…).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from libs.errors import ConfigurationError
from libs.money import format_minor
from libs.times import parse_utc
from services.cli.app import app, bank_app, breaks_app, processor_app
from services.cli.runtime import console, database, run_async
from services.payouts.rails.port import BankFileError
from services.reconcile import metrics as reconcile_metrics
from services.reconcile.domain.matching import MAX_WINDOW_DAYS, Reconciliation, Record
from services.reconcile.imports import line_of_transaction, read_bank_file, read_processor_file
from services.reconcile.run import (
    BreakActionRefused,
    explain_break,
    import_bank_file,
    import_processor_lines,
    post_bank_fee,
    run_reconciliation,
)
from services.reconcile.store import record_json, stored_breaks, totals_json

EXIT_BREAKS = 1
T = TypeVar("T")


@bank_app.command("import")
@run_async
async def bank_import(
    file: Annotated[Path, typer.Argument(help="A camt.053 (any version) or BAI2 statement file.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Import a bank statement (format detected). Importing the same file again changes nothing."""
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror}") from None
    try:
        parsed = read_bank_file(content)
    except BankFileError as exc:
        raise ConfigurationError(f"{file.name}: {exc}") from None
    async with database() as pool, pool.acquire() as conn:
        new_file, inserted = await import_bank_file(conn, parsed, file.name)
    summary = {
        "file_id": parsed.file_id,
        "format": parsed.format,
        "statements": parsed.statements,
        "lines": len(parsed.lines),
        "new_file": new_file,
        "lines_inserted": inserted,
    }
    if as_json:
        print(json.dumps(summary))
    elif not new_file:
        console.print(f"{file.name}: already imported (file {parsed.file_id[:12]}); nothing changed")
    else:
        repeated = len(parsed.lines) - inserted
        console.print(
            f"{file.name}: {parsed.format}, {parsed.statements} statement(s), {len(parsed.lines)} line(s), "
            f"{inserted} new" + (f" ({repeated} already imported from another file)" if repeated else "")
        )


@processor_app.command("import")
@run_async
async def processor_import(
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", help="Gateway name (repeatable); default: every gateway in SETTLE_GATEWAYS_ENABLED."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option(help="A report file (balance transactions as JSON) instead of the gateway's API.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only lines created at or after this RFC 3339 instant.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pull processors' balance transactions (or read a report file), store them, and post the fees and
    payouts they report to the ledger (once per line)."""
    from libs.settings import get_settings
    from services.payments.gateways.registry import build_gateways

    try:
        start = parse_utc(since) if since else None
    except ValueError as exc:
        raise ConfigurationError(f"--since: {exc}") from None
    lines = []
    if file is not None:
        if not gateway or len(gateway) != 1:
            raise ConfigurationError("--file needs exactly one --gateway (whose report it is)")
        try:
            lines = read_processor_file(file.read_bytes(), gateway[0])
        except OSError as exc:
            raise ConfigurationError(f"cannot read {file}: {exc.strerror}") from None
        if start is not None:
            lines = [x for x in lines if x.created_at >= start]
    else:
        # Without --gateway: the enabled ones the registry builds (a Stripe without a key is left out).
        gateways = build_gateways(get_settings(), gateway or None)
        try:
            for name in sorted(gateways):
                try:
                    found = await gateways[name].balance_transactions(since=start)
                except Exception as exc:  # the adapter's transport errors: one line, exit 2
                    raise ConfigurationError(f"gateway {name}: balance transactions failed: {exc}") from None
                lines.extend(line_of_transaction(name, t) for t in found)
        finally:
            await gateways.close()
    async with database() as pool, pool.acquire() as conn:
        done = await import_processor_lines(conn, lines)
    summary = {
        "lines": done.lines,
        "new_lines": done.new_lines,
        "entries_posted": done.entries_posted,
        "fees": {c: format_minor(v, c) for c, v in done.fees_minor.items()},
    }
    if as_json:
        print(json.dumps(summary))
    else:
        fees = ", ".join(f"{format_minor(v, c)} {c}" for c, v in done.fees_minor.items()) or "none"
        console.print(
            f"{done.lines} line(s), {done.new_lines} new; {done.entries_posted} ledger entr(ies) posted "
            f"(fees and payouts); fees ledgered: {fees}"
        )


def _record_text(r: Record) -> str:
    """One line per record: source, its id (an entry id for the ledger, a short hash for the bank), the
    signed amount, the date, what it is (remittance text, entry kind and account, processor object) and
    its references."""
    sign = "+" if r.direction == "in" else "−"
    if r.source == "ledger":
        sid = r.source_id.split(":", 1)[0] if not r.source_id.startswith("payout:") else r.source_id.split(":")[1]
    elif r.source == "bank":
        sid = r.source_id[:12]
    else:
        sid = r.source_id
    refs = ", ".join(r.references[:3])
    return f"{r.source} {sid} {sign}{format_minor(r.amount_minor, r.currency)} {r.currency} {r.on} — {r.note}" + (
        f" [refs {refs}]" if refs else ""
    )


def _amount_json(r: Record) -> dict[str, Any]:
    return {**record_json(r), "amount": format_minor(r.amount_minor, r.currency)}


def report_json(result: Reconciliation, run_id: int | None, not_booked: int, *, with_matches: bool) -> dict[str, Any]:
    by_how = Counter(f"{m.leg}/{m.how}" for m in result.matches)
    body: dict[str, Any] = {
        "as_of": result.as_of.isoformat(),
        "window_days": result.window_days,
        "run_id": run_id,
        "totals": [
            {
                **t,
                "matched": format_minor(t["matched_minor"], t["currency"]),
                "unmatched": format_minor(t["unmatched_minor"], t["currency"]),
            }
            for t in totals_json(result)
        ],
        "matches": {"count": len(result.matches), "by_leg_and_how": dict(sorted(by_how.items()))},
        "breaks": [
            {
                "break_no": n,
                "reason": b.reason,
                "leg": b.leg,
                "age_days": b.age_days,
                "overdue": b.overdue,
                "explanation": b.explanation,
                "records": [_amount_json(r) for r in b.records],
            }
            for n, b in enumerate(result.breaks, start=1)
        ],
        "breaks_by_reason": dict(sorted(Counter(b.reason for b in result.breaks).items())),
        "overdue": len(result.overdue_breaks),
        "explained": len(result.explained_breaks),
        "bank_lines_not_booked": not_booked,
    }
    if with_matches:
        body["matches"]["list"] = [
            {"leg": m.leg, "how": m.how, "records": [_amount_json(r) for r in m.records]} for m in result.matches
        ]
    return body


def print_report(result: Reconciliation, run_id: int | None, not_booked: int, *, max_breaks: int) -> None:
    console.print(
        f"[bold]Reconciliation[/] as of {result.as_of} · window {result.window_days} business days"
        + (f" · run {run_id}" if run_id is not None else "")
    )
    totals = Table("source", "currency", "matched", "amount", "unmatched", "amount", title="Per source")
    for (source, currency), t in result.totals.items():
        totals.add_row(
            source,
            currency,
            f"{t.matched_count:,}",
            format_minor(t.matched_minor, currency),
            f"{t.unmatched_count:,}",
            format_minor(t.unmatched_minor, currency),
        )
    console.print(totals)
    by_how = Counter(f"{m.leg} by {m.how}" for m in result.matches)
    console.print(
        f"{len(result.matches):,} matches ("
        + (", ".join(f"{n:,} {k}" for k, n in sorted(by_how.items())) or "none")
        + f"); {not_booked} bank line(s) pending or informational, not matched"
    )
    if result.breaks:
        table = Table("#", "reason", "leg", "age (d)", "overdue", "records involved", title="Breaks")
        numbered = list(enumerate(result.breaks, start=1))  # the number `settle breaks explain` takes
        ordered = sorted(numbered, key=lambda nb: (not nb[1].overdue, bool(nb[1].explanation), -nb[1].age_days))
        for n, b in ordered[:max_breaks]:
            records = "\n".join(_record_text(r) for r in b.records)
            table.add_row(
                str(n),
                b.reason,
                b.leg,
                str(b.age_days),
                "[bold red]yes[/]" if b.overdue else "explained" if b.explanation else "no",
                escape(records + (f"\nexplained: {b.explanation}" if b.explanation else "")),  # not markup
            )
        console.print(table)
        if len(ordered) > max_breaks:
            console.print(f"… {len(ordered) - max_breaks:,} more breaks (--json lists every one)")
    reasons = Counter(b.reason for b in result.breaks)
    console.print(
        f"{len(result.breaks):,} break(s)"
        + (" (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")" if reasons else "")
        + f"; [bold]{len(result.overdue_breaks)} overdue[/] (older than the window, not timing, not explained)"
        + (f"; {len(result.explained_breaks)} explained by an operator" if result.explained_breaks else "")
    )


@app.command("reconcile")
@run_async
async def reconcile_cmd(
    on: Annotated[
        str | None, typer.Option("--date", help="Reconciliation date (YYYY-MM-DD, UTC); default: today.")
    ] = None,
    window_days: Annotated[
        int | None,
        typer.Option(
            "--window-days",
            min=0,
            max=MAX_WINDOW_DAYS,
            help="Business days two dates of one movement may differ (default SETTLE_RECONCILE_WINDOW_DAYS, 3).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    matches: Annotated[bool, typer.Option("--matches", help="With --json: list every match too.")] = False,
    max_breaks: Annotated[int, typer.Option(help="Breaks shown in the table (--json lists all).")] = 200,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="Write the run's gauges here (Prometheus text format, for a textfile collector)."),
    ] = None,
) -> None:
    """Match the ledger, the processors' reports and the bank statements (R17); list every break with its
    reason, age and records. Exit 1 when a break older than the window is not a timing difference."""
    try:
        as_of = date.fromisoformat(on) if on else datetime.now(UTC).date()
    except ValueError:
        raise ConfigurationError(f"--date {on!r} is not YYYY-MM-DD") from None
    from libs.settings import get_settings

    window = get_settings().reconcile_window_days if window_days is None else window_days
    async with database() as pool, pool.acquire() as conn:
        result, run_id, not_booked = await run_reconciliation(conn, as_of=as_of, window_days=window)
    reconcile_metrics.observe(result)
    if metrics_file is not None:
        from prometheus_client import REGISTRY, write_to_textfile

        write_to_textfile(str(metrics_file), REGISTRY)
    if as_json:
        print(json.dumps(report_json(result, run_id, not_booked, with_matches=matches)))
    else:
        print_report(result, run_id, not_booked, max_breaks=max_breaks)
    if result.overdue_breaks:
        raise typer.Exit(EXIT_BREAKS)


RunArgument = Annotated[int, typer.Argument(help="The run id (`settle reconcile` prints it).")]
BreakArgument = Annotated[int, typer.Argument(help="The break's number in that run (the # column, `break_no`).")]
ByOption = Annotated[str, typer.Option("--by", help="Who acts (kept in the audit trail).")]
WhyOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail and shown on the break).")]


async def _on_break(action: Callable[..., Awaitable[T]], run_id: int, break_no: int, reason: str, by: str) -> T:
    """Run an operator's action on a stored break (reason and actor required); a refusal exits 2 with why."""
    if not reason.strip() or not by.strip():
        raise ConfigurationError("--reason and --by must not be empty (the audit trail)")
    async with database() as pool, pool.acquire() as conn:
        try:
            return await action(conn, run_id, break_no, reason=reason.strip(), by=by.strip())
        except BreakActionRefused as exc:
            raise ConfigurationError(str(exc)) from None


@breaks_app.command("list")
@run_async
async def breaks_list(
    run_id: Annotated[int | None, typer.Option("--run", help="A run id (default: the latest run).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per break.")] = False,
) -> None:
    """The breaks a stored run found, numbered as `explain` and `post-fee` take them, with their
    explanations — read-only (`settle reconcile` runs the matching again)."""
    async with database() as pool, pool.acquire() as conn:
        run, rows = await stored_breaks(conn, run_id)
    if run is None:
        raise ConfigurationError("no reconciliation run" + (f" {run_id}" if run_id is not None else " yet"))
    docs = []
    for r in rows:
        records = r["records"] if not isinstance(r["records"], str) else json.loads(r["records"])
        docs.append({
            "run_id": run["run_id"], "break_no": r["break_no"], "reason": r["reason"], "leg": r["leg"],
            "age_days": r["age_days"], "overdue": r["overdue"], "explanation": r["explanation"],
            "records": records,
        })  # fmt: skip
    if as_json:
        for doc in docs:
            print(json.dumps(doc))
        return
    table = Table("#", "reason", "leg", "age (d)", "overdue", "records", "explanation",
                  title=f"Breaks of run {run['run_id']} (as of {run['as_of']})")  # fmt: skip
    for d in docs:
        records = "\n".join(
            f"{x['source']} {'+' if x['direction'] == 'in' else '−'}{format_minor(x['amount_minor'], x['currency'])} "
            f"{x['currency']} {x['date']} {x['note'][:50]}"
            for x in d["records"]
        )
        table.add_row(str(d["break_no"]), d["reason"], d["leg"], str(d["age_days"]),
                      "yes" if d["overdue"] else "no", escape(records), escape(d["explanation"]))  # fmt: skip
    console.print(table)
    console.print(f"{len(docs)} break(s), {run['overdue']} overdue")


@breaks_app.command("explain")
@run_async
async def reconcile_explain(run_id: RunArgument, break_no: BreakArgument, reason: WhyOption, by: ByOption) -> None:
    """Explain a break: its records stay unmatched, but while no unexplained record joins it the break is
    listed as explained with your reason and is never overdue (the run's exit code and alert ignore it)."""
    n = await _on_break(explain_break, run_id, break_no, reason, by)
    console.print(f"break {break_no} of run {run_id}: {n} record(s) explained" + ("" if n else " (already were)"))


@breaks_app.command("post-fee")
@run_async
async def reconcile_post_fee(run_id: RunArgument, break_no: BreakArgument, reason: WhyOption, by: ByOption) -> None:
    """Post a bank fee the ledger does not know: a missing_in_ledger break of one bank debit becomes
    Dr bank_fees / Cr cash_clearing on the line's date; the next run matches it. Once per bank line."""
    entry_id = await _on_break(post_bank_fee, run_id, break_no, reason, by)
    if entry_id is None:
        console.print(f"break {break_no} of run {run_id}: that bank line's fee was posted before; nothing changed")
    else:
        console.print(f"break {break_no} of run {run_id}: bank fee posted (entry {entry_id}); reconcile again")
