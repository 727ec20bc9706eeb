"""Reconciliation story (R17) through PostgreSQL and the `settle` CLI, as finance would run it.

The ledger holds what the services post (written here through ``libs.ledger``, as payments and payouts
do): two wire receipts, two supplier payouts (one returned, reversed in the ledger), two card
collections at Stripe. The bank sends a camt.053 (the first receipt, the first payout) and a BAI2 (the
second payout, its return, Stripe's payout net of fees, a bank fee and a credit nobody can explain).
Stripe's report (a file here) has the two charges with their fees and the payout. Then:
``settle bank import`` both files (twice: no-op), ``settle processor import`` (fees and the payout
ledgered), ``settle reconcile`` — every match, every break with its reason and age, exit 1 while
breaks older than the window are open, exit 0 on a date when all of them are still timing.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree
from lxml.builder import ElementMaker

from domain.contracts import chart
from libs.ledger import AccountSpec, balances, build_entry, credit, debit, ensure_accounts, post, reverse, verify
from libs.money import minor_to_ledger
from services.payouts.rails.iso20022 import schema
from tests.conftest import Stack
from tests.fleet import settle_in_process

pytestmark = pytest.mark.integration

CAMT = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
TRANSIT = AccountSpec("platform:payouts_in_transit:USD", "USD", "liability", "platform")


def at(day: int, month: int = 12) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def camt053() -> bytes:
    """A camt.053.001.08 built element by element and checked against the official XSD."""
    e = ElementMaker(namespace=CAMT, nsmap={None: CAMT})

    def entry(amount: str, indicator: str, day: str, e2e: str, text: str) -> etree._Element:
        return e.Ntry(
            e.Amt(amount, Ccy="USD"),
            e.CdtDbtInd(indicator),
            e.Sts(e.Cd("BOOK")),
            e.BookgDt(e.Dt(day)),
            e.ValDt(e.Dt(day)),
            e.AcctSvcrRef(f"BK-{e2e}"),
            e.BkTxCd(
                e.Domn(e.Cd("PMNT"), e.Fmly(e.Cd("RCDT" if indicator == "CRDT" else "ICDT"), e.SubFmlyCd("ESCT")))
            ),
            e.NtryDtls(e.TxDtls(e.Refs(e.EndToEndId(e2e)), e.RmtInf(e.Ustrd(text)))),
        )

    document = e.Document(
        e.BkToCstmrStmt(
            e.GrpHdr(e.MsgId("STMT-20261203"), e.CreDtTm("2026-12-03T06:00:00Z")),
            e.Stmt(
                e.Id("S-2026-12-02"),
                e.CreDtTm("2026-12-03T06:00:00Z"),
                e.Acct(e.Id(e.Othr(e.Id("123456789"))), e.Ccy("USD")),
                e.Bal(
                    e.Tp(e.CdOrPrtry(e.Cd("OPBD"))),
                    e.Amt("10000.00", Ccy="USD"),
                    e.CdtDbtInd("CRDT"),
                    e.Dt(e.Dt("2026-12-02")),
                ),
                e.Bal(
                    e.Tp(e.CdOrPrtry(e.Cd("CLBD"))),
                    e.Amt("10700.00", Ccy="USD"),
                    e.CdtDbtInd("CRDT"),
                    e.Dt(e.Dt("2026-12-02")),
                ),
                entry("1500.00", "CRDT", "2026-12-02", "NOTPROVIDED", "ACME CORP INV-2026-000001"),
                entry("800.00", "DBIT", "2026-12-02", "po-sup-1", "Payout November 2026"),
            ),
        )
    )
    xsd = schema("camt.053.001.08")
    assert xsd.validate(document), xsd.error_log
    return etree.tostring(document, xml_declaration=True, encoding="UTF-8")


def bai2() -> bytes:
    """A BAI2 file with its account, group and file controls computed."""
    details = [
        "16,495,40000,Z,BK9001,po-sup-2,SUPPLIER PAYOUT",
        "16,258,40000,Z,BK9002,po-sup-2,ACH RETURN R03",
        "16,165,14505,Z,BK9003,,STRIPE PAYOUT po_fake00000001",
        "16,698,2500,Z,BK9004,,MONTHLY ACCOUNT FEE",
        "16,195,7777,Z,BK9005,,WIRE FROM UNKNOWN ORDERING PARTY",
    ]
    account_total = sum(int(d.split(",")[2]) for d in details)
    account = ["03,987654321,USD,010,1000000,,Z/", *(f"{d}/" for d in details)]
    account.append(f"49,{account_total + 1000000},{len(account) + 1}/")
    group = ["02,SETTLE,BANKUS33,1,261203,0600,USD,2/", *account]
    group.append(f"98,{account_total + 1000000},1,{len(group) + 1}/")
    lines = ["01,BANKUS33,SETTLE,261203,0600,1,,,2/", *group]
    lines.append(f"99,{account_total + 1000000},1,{len(lines) + 1}/")
    return ("\n".join(lines) + "\n").encode("ascii")


def stripe_report() -> bytes:
    """Stripe's balance transactions: 2.9 % + 30 on each charge, then a payout of the net."""

    def txn(i: int, kind: str, source: str, amount: int, fee: int, day: int, attempt: str | None) -> dict[str, object]:
        return {
            "id": f"txn_fake{i:08d}",
            "object": "balance_transaction",
            "type": kind,
            "source": source,
            "amount": amount,
            "fee": fee,
            "net": amount - fee,
            "currency": "usd",
            "created": int(at(day).timestamp()),
            "available_on": int(at(day + 2).timestamp()),
            "metadata": {"attempt_id": attempt} if attempt else {},
        }

    return json.dumps(
        {
            "object": "list",
            "data": [
                txn(1, "charge", "pi_fake00000001", 10_000, 320, 1, "att-1"),
                txn(2, "charge", "pi_fake00000002", 5_000, 175, 1, "att-2"),
                txn(3, "payout", "po_fake00000001", -14_505, 0, 2, None),
            ],
        }
    ).encode()


async def post_ledger(stack: Stack) -> None:
    """What payments and payouts post: receipts, collections, payouts planned, one reversed."""
    cash, transit = chart.cash_clearing("USD"), TRANSIT
    unapplied, payable = chart.unapplied("r-1", "USD"), chart.payable("s-1", "USD")
    stripe = chart.processor_clearing("stripe", "USD")

    def entry(eid: str, cause: str, kind: str, when: datetime, dr: str, cr: str, minor: int):  # type: ignore[no-untyped-def]
        units = minor_to_ledger(minor, "USD")
        made = build_entry(
            id=eid,
            cause_id=cause,
            kind=kind,
            occurred_at=when,
            postings=[debit(dr, units, "USD"), credit(cr, units, "USD")],
        )
        assert made is not None
        return made

    async with stack.pool.acquire() as conn, conn.transaction():
        await ensure_accounts(conn, [cash, transit, unapplied, payable, stripe])
        await post(
            conn,
            [
                entry("e-rcpt-1", "evt-rcpt-1", "payments.money_in", at(1), cash.code, unapplied.code, 150_000),
                entry("e-rcpt-2", "evt-rcpt-2", "payments.money_in", at(20, 11), cash.code, unapplied.code, 30_000),
                entry("e-coll-1", "att-1", "payments.money_in", at(1), stripe.code, unapplied.code, 10_000),
                entry("e-coll-2", "att-2", "payments.money_in", at(1), stripe.code, unapplied.code, 5_000),
                entry("e-po-1", "po-sup-1", "payout.planned", at(1), payable.code, transit.code, 80_000),
                entry("e-po-2", "po-sup-2", "payout.planned", at(1), payable.code, transit.code, 40_000),
            ],
        )
        # the ACH return of po-sup-2, reversed in the ledger (the rails' R16 reversal)
        await reverse(conn, "e-po-2", cause_id="po-sup-2", occurred_at=at(3), description="R03 return")


def settle(stack: Stack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return settle_in_process(
        {**(env or {}), "SETTLE_DATABASE_URL": stack.database_url, "SETTLE_STATE_DIR": str(stack.settings.state_dir)},
        *args,
    )


async def test_reconciliation_story(stack: Stack, tmp_path: Path) -> None:
    await post_ledger(stack)
    camt, bai, report = tmp_path / "stmt.xml", tmp_path / "stmt.bai", tmp_path / "stripe.json"
    camt.write_bytes(camt053())
    bai.write_bytes(bai2())
    report.write_bytes(stripe_report())

    first = settle(stack, "bank", "import", str(camt), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) | {"file_id": None} == {
        "file_id": None,
        "format": "camt053",
        "statements": 1,
        "lines": 2,
        "new_file": True,
        "lines_inserted": 2,
    }
    second = settle(stack, "bank", "import", str(bai), "--json")
    assert second.returncode == 0, second.stderr
    assert (json.loads(second.stdout)["format"], json.loads(second.stdout)["lines_inserted"]) == ("bai2", 5)
    again = settle(stack, "bank", "import", str(bai), "--json")
    assert json.loads(again.stdout)["new_file"] is False and json.loads(again.stdout)["lines_inserted"] == 0

    imported = settle(stack, "processor", "import", "--gateway", "stripe", "--file", str(report), "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"lines": 3, "new_lines": 3, "entries_posted": 3, "fees": {"USD": "4.95"}}
    repeat = settle(stack, "processor", "import", "--gateway", "stripe", "--file", str(report), "--json")
    assert json.loads(repeat.stdout)["entries_posted"] == 0
    async with stack.pool.acquire() as conn:
        fees = await conn.fetchval(
            "select balance from ledger.accounts where code = 'platform:processor_fees:stripe:USD'"
        )
        clearing = await conn.fetchval(
            "select balance from ledger.accounts where code = 'platform:processor_clearing:stripe:USD'"
        )
    assert (int(fees), int(clearing)) == (minor_to_ledger(495, "USD"), 0)  # 150.00 in − 4.95 fees − 145.05 out

    done = settle(stack, "reconcile", "--date", "2026-12-10", "--json", "--matches")
    assert done.returncode == 1 and done.stdout, done.stderr[-1200:]  # overdue breaks exist
    body = json.loads(done.stdout)
    groups = sorted(
        (m["leg"], m["how"], tuple(f"{r['source']}:{r['amount']}:{r['direction']}" for r in m["records"]))
        for m in body["matches"]["list"]
    )
    assert groups == [
        ("bank", "amount", ("ledger:1500.00:in", "bank:1500.00:in")),
        ("bank", "reference", ("ledger:145.05:in", "bank:145.05:in", "processor:145.05:in")),  # three-way
        ("bank", "reference", ("ledger:400.00:in", "bank:400.00:in")),  # the return
        ("bank", "reference", ("ledger:400.00:out", "bank:400.00:out")),
        ("bank", "reference", ("ledger:800.00:out", "bank:800.00:out")),
        ("processor", "reference", ("ledger:100.00:in", "processor:100.00:in")),
        ("processor", "reference", ("ledger:50.00:in", "processor:50.00:in")),
    ]
    breaks = sorted(
        (b["reason"], b["age_days"], b["overdue"], tuple(f"{r['source']}:{r['amount']}" for r in b["records"]))
        for b in body["breaks"]
    )
    assert breaks == [
        ("missing_in_bank", 20, True, ("ledger:300.00",)),  # the second receipt never reached the bank
        ("missing_in_ledger", 7, True, ("bank:25.00",)),  # the bank's fee
        ("missing_in_ledger", 7, True, ("bank:77.77",)),  # the unexplained credit
    ]
    assert body["overdue"] == 3 and body["breaks_by_reason"] == {"missing_in_bank": 1, "missing_in_ledger": 2}
    totals = {(t["source"], t["currency"]): (t["matched_count"], t["matched"]) for t in body["totals"]}
    assert totals == {
        ("bank", "USD"): (5, "3245.05"),
        ("ledger", "USD"): (7, "3395.05"),
        ("processor", "USD"): (3, "295.05"),
    }
    async with stack.pool.acquire() as conn:
        run = await conn.fetchrow("select run_id, matches, breaks, overdue from reconcile.runs")
        stored = await conn.fetch(
            "select reason, age_days from reconcile.breaks where run_id = $1 order by break_no", run["run_id"]
        )
        keys = await conn.fetch(
            "select record_keys, records from reconcile.matches where run_id = $1 order by match_no", run["run_id"]
        )
        bank_hashes = {r["line_hash"] for r in await conn.fetch("select line_hash from reconcile.bank_lines")}
    assert (run["matches"], run["breaks"], run["overdue"]) == (7, 3, 3)
    # a match keeps where its records are (source:id), not a copy of them; its bank lines are stored lines
    assert len(keys) == 7 and all(k["records"] is None and len(k["record_keys"]) >= 2 for k in keys)
    matched_bank = {key.split(":", 1)[1] for k in keys for key in k["record_keys"] if key.startswith("bank:")}
    assert len(matched_bank) == 5 and matched_bank <= bank_hashes
    assert sorted((r["reason"], r["age_days"]) for r in stored) == [
        ("missing_in_bank", 20),
        ("missing_in_ledger", 7),
        ("missing_in_ledger", 7),
    ]

    # On the day after the statements, the two bank lines are still within the window: timing, exit 0 …
    early = settle(stack, "reconcile", "--date", "2026-12-03", "--json")
    early_body = json.loads(early.stdout)
    assert sorted(b["reason"] for b in early_body["breaks"]) == ["missing_in_bank", "timing", "timing"]
    assert early.returncode == 1  # … but the November receipt is overdue whatever the date
    assert settle(stack, "reconcile", "--date", "2026-12-03", "--window-days", "12", "--json").returncode == 0

    table = settle(stack, "reconcile", "--date", "2026-12-10")
    assert table.returncode == 1
    for text in (
        "Per source",
        "Breaks",
        "missing_in_ledger",
        "missing_in_bank",
        "+77.77 USD",
        "MONTHLY ACCOUNT FEE",  # what the bank says the line is
        "[refs bk9004]",
        "e-rcpt-2",  # the ledger entry to look at
        "3 overdue",
    ):
        assert text in table.stdout, table.stdout

    # --- an operator acts on the three breaks of the first run ------------------------------------------
    numbered = {b["records"][0]["amount"]: b["break_no"] for b in body["breaks"]}
    run_id = str(body["run_id"])
    who = ("--by", "finance@test")
    refused = settle(stack, "breaks", "post-fee", run_id, str(numbered["77.77"]), "--reason", "fee?", *who)
    assert refused.returncode == 2 and "bank debit" in refused.stderr + refused.stdout  # a credit is no fee
    fee = settle(stack, "breaks", "post-fee", run_id, str(numbered["25.00"]), "--reason", "monthly fee", *who)
    assert fee.returncode == 0 and "bank fee posted" in fee.stdout, fee.stderr
    again = settle(stack, "breaks", "post-fee", run_id, str(numbered["25.00"]), "--reason", "monthly fee", *who)
    assert again.returncode == 0 and "posted before" in again.stdout, again.stderr
    assert settle(stack, "breaks", "explain", run_id, "99", "--reason", "x", *who).returncode == 2
    credit = settle(stack, "breaks", "explain", run_id, str(numbered["77.77"]), "--reason", "interest, INC-9", *who)
    assert credit.returncode == 0, credit.stderr
    after = settle(stack, "reconcile", "--date", "2026-12-10", "--json")
    after_body = json.loads(after.stdout)
    # The fee now matches its line (by amount and date); the credit is still a break, explained, not overdue;
    # the missing receipt is still overdue: exit 1 until it is explained too.
    assert (after_body["matches"]["count"], after_body["overdue"], after_body["explained"]) == (8, 1, 1)
    [explained] = [b for b in after_body["breaks"] if b["explanation"]]
    assert (explained["reason"], explained["overdue"], explained["explanation"]) == (
        "missing_in_ledger",
        False,
        "interest, INC-9 (finance@test)",
    )
    assert after.returncode == 1
    receipt = settle(stack, "breaks", "explain", str(after_body["run_id"]),
                     str(next(b["break_no"] for b in after_body["breaks"] if b["reason"] == "missing_in_bank")),
                     "--reason", "wire recalled by the renter's bank", *who)  # fmt: skip
    assert receipt.returncode == 0, receipt.stderr
    final = settle(stack, "reconcile", "--date", "2026-12-10")
    assert final.returncode == 0, final.stdout
    assert "0 overdue" in final.stdout and "2 explained by an operator" in final.stdout, final.stdout
    # the stored breaks, read back without running the matching again (the latest run, then the first)
    latest = [json.loads(x) for x in settle(stack, "breaks", "list", "--json").stdout.splitlines()]
    assert sorted((b["reason"], b["overdue"], b["explanation"]) for b in latest) == [
        ("missing_in_bank", False, "wire recalled by the renter's bank (finance@test)"),
        ("missing_in_ledger", False, "interest, INC-9 (finance@test)"),
    ]
    first = settle(stack, "breaks", "list", "--run", run_id)
    assert first.returncode == 0 and "3 break(s), 3 overdue" in first.stdout, first.stdout
    assert settle(stack, "breaks", "list", "--run", "999").returncode == 2
    async with stack.pool.acquire() as conn:
        audit = await conn.fetch(
            "select source, action, requested_by from reconcile.explanations order by action, source"
        )
        ledger = {b.code: b.balance_units for b in await balances(conn)}
        assert (await verify(conn)).ok
    assert ledger[chart.bank_fees("USD").code] == minor_to_ledger(2500, "USD")
    assert [(a["source"], a["action"]) for a in audit] == [
        ("bank", "bank_fee_posted"),
        ("bank", "explained"),
        ("ledger", "explained"),
    ]


async def test_processor_import_pulls_balance_transactions_from_fakepsp_over_http(stack: Stack, tmp_path: Path) -> None:
    """`settle processor import` asks the Stripe adapter for the balance report of a real `settle fakepsp`
    process: both charges match the ledger's collections by attempt id, the fees and the payout are
    ledgered, and the payout waits for the bank (timing) until the bank statement shows it (three-way)."""
    from services.payments.gateways.port import ChargeRequest
    from services.payments.gateways.stripe_adapter import StripeGateway
    from tests.payments.processes import admin, fakepsp

    with fakepsp("--api-key", "sk_test_fake") as base:
        gateway = StripeGateway(api_key="sk_test_fake", api_base=base, timeout_s=10, connect_timeout_s=2)
        try:
            for n, amount in ((1, 10_000), (2, 5_000)):
                made = await gateway.charge(
                    ChargeRequest(f"att-http-{n}", f"key-http-{n}", amount, "USD", "tok_visa", f"INV-{n}", "r-1")
                )
                assert made.outcome == "succeeded"
        finally:
            await gateway.close()
        payout = await admin(base, "POST", "/_admin/payouts", {"dialect": "stripe", "currency": "USD"})
        assert payout["amount"] == 10_000 + 5_000 - (320 + 175)
        today = datetime.fromtimestamp(payout["created"], UTC)

        stripe = chart.processor_clearing("stripe", "USD")
        async with stack.pool.acquire() as conn, conn.transaction():
            unapplied = chart.unapplied("r-1", "USD")
            await ensure_accounts(conn, [stripe, unapplied])
            for n, amount in ((1, 10_000), (2, 5_000)):
                units = minor_to_ledger(amount, "USD")
                made_entry = build_entry(
                    id=f"e-http-{n}", cause_id=f"att-http-{n}", kind="payments.money_in", occurred_at=today,
                    postings=[debit(stripe.code, units, "USD"), credit(unapplied.code, units, "USD")],
                )  # fmt: skip
                assert made_entry is not None
                await post(conn, [made_entry])

        env = {
            "SETTLE_STRIPE_API_BASE": base,
            "SETTLE_STRIPE_API_KEY": "sk_test_fake",
            "SETTLE_GATEWAYS_ENABLED": "stripe",
        }
        pulled = settle(stack, "processor", "import", "--json", env=env)
        assert pulled.returncode == 0, pulled.stderr[-1200:]
        assert json.loads(pulled.stdout) == {"lines": 3, "new_lines": 3, "entries_posted": 3, "fees": {"USD": "4.95"}}

    day = today.date().isoformat()
    waiting = json.loads(settle(stack, "reconcile", "--date", day, "--json", "--matches").stdout)
    assert sorted(tuple(r["source"] for r in m["records"]) for m in waiting["matches"]["list"]) == [
        ("ledger", "processor"),
        ("ledger", "processor"),
    ]
    [pending] = waiting["breaks"]
    assert (pending["reason"], [r["source"] for r in pending["records"]]) == ("timing", ["ledger", "processor"])

    bai = tmp_path / "day.bai"
    yymmdd = today.strftime("%y%m%d")
    lines = [
        f"01,BANKUS33,SETTLE,{yymmdd},0600,1,,,2/",
        f"02,SETTLE,BANKUS33,1,{yymmdd},0600,USD,2/",
        "03,987654321,USD/",
        f"16,165,14505,Z,BK1,,STRIPE PAYOUT {payout['id']}/",
        "49,14505,3/",
        "98,14505,1,5/",
        "99,14505,1,7/",
    ]
    bai.write_text("\n".join(lines) + "\n")
    assert settle(stack, "bank", "import", str(bai)).returncode == 0
    done = settle(stack, "reconcile", "--date", day, "--json", "--matches")
    assert done.returncode == 0, done.stdout
    body = json.loads(done.stdout)
    assert body["breaks"] == []
    assert sorted(tuple(r["source"] for r in m["records"]) for m in body["matches"]["list"]) == [
        ("ledger", "bank", "processor"),
        ("ledger", "processor"),
        ("ledger", "processor"),
    ]


async def test_a_processor_report_reusing_an_imported_id_is_refused_not_skipped(stack: Stack, tmp_path: Path) -> None:
    """A processor that kept its books (fakepsp restarted with its state file) reports the next charge under
    a new id: only that line is new. One whose books were reset reports another charge under an id already
    imported: `settle processor import` refuses the whole report with the ids (exit 2) instead of skipping
    the line as "seen" — before, the second `settle demo` on the same state lost its collections that way
    and reconciliation showed them `missing_at_processor`."""
    from services.payments.gateways.port import ChargeRequest
    from services.payments.gateways.stripe_adapter import StripeGateway
    from tests.payments.processes import fakepsp

    books = tmp_path / "books.json"

    async def charge(base: str, n: int, amount: int) -> None:
        gateway = StripeGateway(api_key="sk_test_fake", api_base=base, timeout_s=10, connect_timeout_s=2)
        try:
            made = await gateway.charge(
                ChargeRequest(f"att-r{n}", f"key-r{n}", amount, "USD", "tok_visa", f"INV-{n}", "r-1")
            )
            assert made.outcome == "succeeded"
        finally:
            await gateway.close()

    def pull(base: str) -> subprocess.CompletedProcess[str]:
        env = {
            "SETTLE_STRIPE_API_BASE": base,
            "SETTLE_STRIPE_API_KEY": "sk_test_fake",
            "SETTLE_GATEWAYS_ENABLED": "stripe",
        }
        return settle(stack, "processor", "import", "--json", env=env)

    async def imported() -> tuple[int, int]:
        lines = await stack.pool.fetchval("select count(*) from reconcile.processor_lines")
        entries = await stack.pool.fetchval("select count(*) from ledger.entries where cause_id like 'stripe:%'")
        return lines, entries

    with fakepsp("--api-key", "sk_test_fake", "--state-file", str(books)) as base:
        await charge(base, 1, 10_000)
        first = pull(base)
        assert first.returncode == 0, first.stderr[-1200:]
        assert json.loads(first.stdout)["new_lines"] == 1
    with fakepsp("--api-key", "sk_test_fake", "--state-file", str(books)) as base:  # restarted, books kept
        await charge(base, 2, 5_000)
        second = pull(base)
        assert second.returncode == 0, second.stderr[-1200:]
        assert (json.loads(second.stdout)["lines"], json.loads(second.stdout)["new_lines"]) == (2, 1)
    before = await imported()
    assert before[0] == 2 and before[1] == 2  # a fee entry per charge line

    with fakepsp("--api-key", "sk_test_fake") as base:  # books reset: its first charge takes the first id again
        await charge(base, 3, 7_000)
        refused = pull(base)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = refused.stdout + refused.stderr
    assert "reuse the id" in said and "stored charge 10000 USD" in said and "now charge 7000 USD" in said, said
    assert await imported() == before  # nothing of the refused report was stored or posted


async def test_payout_confirmations_go_in_batches_once_each(stack: Stack) -> None:
    """A run confirms each matched payout once, up to 200 in an event, in reference order; the next run
    that matches them again sends nothing; a new match goes alone in its own event."""
    from datetime import date

    import orjson

    from schemas.events import CONFIRMATIONS_PER_EVENT
    from services.reconcile.domain.sources import PayoutConfirmation
    from services.reconcile.run import confirm_payouts

    def confirmations(n: int, first: int = 0) -> list[PayoutConfirmation]:
        return [
            PayoutConfirmation(f"po-{k:04d}", 100 + k, "USD", date(2026, 12, 1 + k % 3), f"bank:h{k}")
            for k in range(first, first + n)
        ]

    async def sent() -> list[dict]:
        rows = await stack.pool.fetch(
            "select value from settle.outbox where topic = 'payouts.bank_results.v1' order by id"
        )
        return [orjson.loads(r["value"]) for r in rows]

    async with stack.pool.acquire() as conn:
        run = await conn.fetchval(
            "insert into reconcile.runs (as_of, window_days, matches, breaks, overdue, totals)"
            " values ('2026-12-03', 3, 0, 0, 0, '[]') returning run_id"
        )
        async with conn.transaction():
            await confirm_payouts(conn, confirmations(450), run)
        first = await sent()
        assert [len(e["data"]["confirmations"]) for e in first] == [
            CONFIRMATIONS_PER_EVENT,
            CONFIRMATIONS_PER_EVENT,
            50,
        ]
        assert {e["type"] for e in first} == {"payout.settlements_confirmed"}
        references = [c["reference"] for e in first for c in e["data"]["confirmations"]]
        assert references == [f"po-{k:04d}" for k in range(450)]
        # an event is dated by the latest bank day it carries; each item keeps its own
        assert first[2]["time"].startswith("2026-12-03") and first[2]["data"]["confirmations"][0]["booked_on"]
        assert len({e["id"] for e in first}) == 3
        async with conn.transaction():  # the next run matches the same 450 and one more
            await confirm_payouts(conn, confirmations(451), run)
        second = (await sent())[3:]
        assert [[c["reference"] for c in e["data"]["confirmations"]] for e in second] == [["po-0450"]]
    assert await stack.pool.fetchval("select count(*) from reconcile.confirmations") == 451
