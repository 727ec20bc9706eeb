"""The demo's settlement: suppliers paid (payouts and saga run next to the fleet), a renter paying late, and
the bank played by the demo after the last tick — every file acknowledged, one ACH payout returned (R03),
the processor paid out and its balance transactions imported, a camt.053 statement of the accounts
(receipts, top-ups, the processor's payouts, every supplier payout, the return, a bank fee and one line
nobody can explain) imported, and reconciliation run (R15-R17).

Everything goes in through the project's own code paths: the bank's answers as the messages
``settle payouts files ack`` and ``settle payouts returns import`` publish (dated on the demo's clock
instead of the wall clock), ``services.reconcile`` for the imports and the run. Amounts come from the
scenario, the payout files and fakepsp's answers, never from the services' computations.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from lxml import etree
from lxml.builder import ElementMaker

from libs.ids import derive_id
from libs.messaging.broker import publish_keyed
from libs.money import currency_exponent, format_minor
from libs.settings import Settings
from schemas import topics
from schemas.envelope import encode
from schemas.events import PayoutFileAcknowledged, PayoutReturnsReceived
from schemas.inputs import PaymentReceived
from services.invoicing import read_model as invoicing
from services.payments.gateways.registry import build_gateways
from services.payouts import operator
from services.payouts.files import RAILS
from services.payouts.rails.iso20022 import schema
from services.payouts.rails.nacha import read_nacha
from services.reconcile.domain.entries import ProcessorLine
from services.reconcile.imports import line_of_transaction, read_bank_file
from services.reconcile.run import (
    explain_break,
    import_bank_file,
    import_processor_lines,
    post_bank_fee,
    run_reconciliation,
)
from tools.demo.collect import admin
from tools.demo.scenario import PLATFORM, Scenario

FILES_INTERVAL_S = 0.5
"""The payouts worker's file rounds in the demo (default 5 s): a tick's payouts leave within a second."""
DISPUTE_POLICY = "supplier_charged_back"
"""The demo's SETTLE_SAGA_DISPUTE_LOST: a lost dispute reverses the revenue and the supplier's share."""
RETURN_CODE = "R03"
BANK_FEE = Decimal("25.00")
UNEXPLAINED = Decimal("77.77")
WINDOW_DAYS = 3
CAMT = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
ACCOUNTS = {"USD": "000111222333", "EUR": "DE89370400440532013000", "JPY": "JP-000333444"}
"""Our bank accounts per currency (USD and EUR are the debtor accounts of the payout files)."""
WALLET = "USDC-0x5aAeb6053F3E94C9b9A09f3366"
"""Our token wallet (the stablecoin rail's sender): its transfers are a statement of their own."""


BANK_DAYS = 3
"""Days the clock runs on after the two months while the bank answers (ticks at 00:00): a hard-declined
invoice's saga passes its deadline (due + 15 d + 2 d) and the inquiry's grace (1 d) within them."""


def bank_days(scenario: Scenario) -> list[datetime]:
    return [scenario.end + timedelta(days=n) for n in range(1, BANK_DAYS + 1)]


def worker_env_extra(folder: Path) -> dict[str, str]:
    return {
        "SETTLE_PAYOUT_OUTBOX_DIR": str(folder / "payouts"),
        "SETTLE_PAYOUT_FILES_INTERVAL_S": str(FILES_INTERVAL_S),
        "SETTLE_SAGA_FOLLOW_PAYOUTS": "1",
        "SETTLE_SAGA_DISPUTE_LOST": DISPUTE_POLICY,
    }


async def payout_work(pool: asyncpg.Pool) -> int:
    """Ticks payouts can plan and has not yet, planned payouts not yet in a file, files built but not sent.

    A tick is plannable once invoicing closed a month on every partition of statements.finalized.v1 and the
    tick is before the end of the month after it, and payments answered it (payments.watermark) on every
    partition of invoices.payments.v1 (README "Payouts": on a fresh database the ticks of the first month
    wait for its close, on purpose)."""
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                """select (select count(*) from payouts.ticks t
                            where not t.planned
                              and (select count(*) from payouts.statement_marks) = $1
                              and t.at < ((select min(month) from payouts.statement_marks) || '-01')::timestamp
                                         at time zone 'UTC' + interval '2 months'
                              and (select count(*) from payouts.payment_marks) = $2
                              and t.at <= (select min(through) from payouts.payment_marks))
                        + (select count(*) from payouts.payouts where state = 'planned')
                        + (select count(*) from payouts.payout_files where state = 'built')""",
                topics.STATEMENTS_FINALIZED.partitions,
                topics.INVOICE_PAYMENTS.partitions,
            )
        )


def _envelope(tag: str, type_: str, data: Any, at: datetime, *parts: str, source: str = PLATFORM) -> bytes:
    event_id = derive_id("demo-settle", tag, type_, *parts)
    return encode(event_id=event_id, source=source, type=type_, time=at, data=data.model_dump(mode="json"))


async def late_wire(
    pool: asyncpg.Pool, producer: Any, prefix: str, scenario: Scenario, tick: datetime
) -> dict[str, Any] | None:
    """Before ``tick``: the late renter wires what its invoices already due cost, 12 hours after the latest
    due date (after the due date, before the tick). None while none of its invoices is due that early."""
    if scenario.late_renter is None:
        return None
    async with pool.acquire() as conn:
        documents = [d for d in await invoicing.list_invoices(conn) if d["renter_id"] == scenario.late_renter]
    due = [
        d
        for d in documents
        if Decimal(d["amount_due"]) > 0
        and datetime.fromisoformat(d["due_at"].replace("Z", "+00:00")) + timedelta(hours=12) < tick
    ]
    if not due:
        return None
    currency = due[0]["currency"]
    paid = [d for d in due if d["currency"] == currency]
    at = max(datetime.fromisoformat(d["due_at"].replace("Z", "+00:00")) for d in paid) + timedelta(hours=12)
    amount = sum((Decimal(d["amount_due"]) for d in paid), Decimal(0))
    wire = PaymentReceived(
        renter_id=scenario.late_renter,
        receipt_id=f"{scenario.tag}-wire-late",
        amount=amount,
        currency=currency,
        received_at=at,
        rail="wire",
        reference=f"Late payment for {', '.join(d['number'] for d in paid)}",
    )
    value = _envelope(scenario.tag, "payment.received", wire, at, "late-wire")
    await publish_keyed(producer, [(topics.PAYMENTS_RECEIVED, scenario.late_renter.encode(), value)], prefix=prefix)
    return {
        "renter_id": scenario.late_renter,
        "amount": str(amount),
        "currency": currency,
        "received_at": at,
        "receipt_id": wire.receipt_id,
        "reference": wire.reference,
        "invoices": [(d["number"], d["due_at"]) for d in paid],
    }


# --- the bank's files ------------------------------------------------------------------------------------------
def _nacha_record(fields: dict[tuple[int, int], str]) -> str:
    """One 94-character NACHA record from (first, last) 1-based column → text."""
    line = [" "] * 94
    for (first, last), text in fields.items():
        assert len(text) == last - first + 1, (first, last, text)
        line[first - 1 : last] = text
    return "".join(line)


def nacha_return(trace: str, routing: str, account: str, amount_minor: int, code: str, day: date) -> bytes:
    """The bank's return file: one returned credit (transaction code 21, addenda 99 naming our trace)."""
    ymd = day.strftime("%y%m%d")
    rdfi = routing[:8]
    records = [
        _nacha_record({(1, 1): "1", (2, 3): "01", (4, 13): " 021000021", (14, 23): f" {routing}",
                       (24, 29): ymd, (30, 33): "0600", (34, 34): "A", (35, 37): "094", (38, 39): "10",
                       (40, 40): "1", (41, 63): "SETTLE PLATFORM".ljust(23), (64, 86): "RETURNING BANK".ljust(23)}),
        _nacha_record({(1, 1): "5", (2, 4): "220", (5, 20): "SETTLE".ljust(16), (41, 50): "1234567890",
                       (51, 53): "CCD", (54, 63): "PAYOUT".ljust(10), (70, 75): ymd, (79, 79): "1",
                       (80, 87): rdfi, (88, 94): "0000001"}),
        _nacha_record({(1, 1): "6", (2, 3): "21", (4, 11): rdfi, (12, 12): routing[8], (13, 29): account.ljust(17),
                       (30, 39): f"{amount_minor:010d}", (40, 54): "RETURN".ljust(15),
                       (55, 76): "SUPPLIER".ljust(22), (79, 79): "1", (80, 94): f"{rdfi}0000001"}),
        _nacha_record({(1, 1): "7", (2, 3): "99", (4, 6): code, (7, 21): trace, (28, 35): rdfi,
                       (80, 94): f"{rdfi}0000001"}),
        _nacha_record({(1, 1): "8", (2, 4): "220", (5, 10): "000002", (11, 20): f"{int(rdfi):010d}",
                       (21, 32): "0" * 12, (33, 44): f"{amount_minor:012d}", (45, 54): "1234567890",
                       (80, 87): rdfi, (88, 94): "0000001"}),
        _nacha_record({(1, 1): "9", (2, 7): "000001", (8, 13): "000001", (14, 21): "00000002",
                       (22, 31): f"{int(rdfi):010d}", (32, 43): "0" * 12, (44, 55): f"{amount_minor:012d}"}),
    ]  # fmt: skip
    records += ["9" * 94] * (10 - len(records))
    return "\n".join(records).encode("ascii")


@dataclass(frozen=True)
class BankLine:
    account: str
    currency: str
    amount_minor: int
    credit: bool
    on: date
    reference: str
    text: str
    expected_break: str = ""
    """Why reconciliation cannot match it (the fee, the unexplained line); empty for ordinary lines."""


def camt053(lines: list[BankLine], created: datetime, tag: str) -> bytes:
    """One camt.053.001.08 statement per account, balances computed, validated against the official XSD."""
    e = ElementMaker(namespace=CAMT, nsmap={None: CAMT})

    def amount(minor: int, currency: str) -> str:
        return format_minor(minor, currency)

    statements = []
    for n, account in enumerate(sorted({(x.account, x.currency) for x in lines}), start=1):
        ours = sorted((x for x in lines if (x.account, x.currency) == account), key=lambda x: (x.on, x.reference))
        number, currency = account
        opening = 1_000_000 * 10 ** currency_exponent(currency)
        closing = opening + sum(x.amount_minor if x.credit else -x.amount_minor for x in ours)
        first, last = ours[0].on.isoformat(), ours[-1].on.isoformat()
        entries = []
        for i, x in enumerate(ours, start=1):
            refs = e.Refs(e.EndToEndId(x.reference or "NOTPROVIDED"))
            entries.append(
                e.Ntry(
                    e.Amt(amount(x.amount_minor, currency), Ccy=currency),
                    e.CdtDbtInd("CRDT" if x.credit else "DBIT"),
                    e.Sts(e.Cd("BOOK")),
                    e.BookgDt(e.Dt(x.on.isoformat())),
                    e.ValDt(e.Dt(x.on.isoformat())),
                    e.AcctSvcrRef(f"BK{n:02d}{i:05d}"),
                    e.BkTxCd(e.Domn(e.Cd("PMNT"), e.Fmly(e.Cd("RCDT" if x.credit else "ICDT"), e.SubFmlyCd("OTHR")))),
                    e.NtryDtls(e.TxDtls(refs, e.RmtInf(e.Ustrd(x.text[:140])))),
                )
            )
        ident = e.Id(e.IBAN(number)) if number.startswith("DE") else e.Id(e.Othr(e.Id(number)))
        statements.append(
            e.Stmt(
                e.Id(f"{tag}-S{n:02d}"),
                e.CreDtTm(created.strftime("%Y-%m-%dT%H:%M:%SZ")),
                e.Acct(ident, e.Ccy(currency)),
                e.Bal(
                    e.Tp(e.CdOrPrtry(e.Cd("OPBD"))),
                    e.Amt(amount(opening, currency), Ccy=currency),
                    e.CdtDbtInd("CRDT"),
                    e.Dt(e.Dt(first)),
                ),
                e.Bal(
                    e.Tp(e.CdOrPrtry(e.Cd("CLBD"))),
                    e.Amt(amount(abs(closing), currency), Ccy=currency),
                    e.CdtDbtInd("CRDT" if closing >= 0 else "DBIT"),
                    e.Dt(e.Dt(last)),
                ),
                *entries,
            )
        )
    document = e.Document(
        e.BkToCstmrStmt(
            e.GrpHdr(e.MsgId(f"{tag}-STMT"), e.CreDtTm(created.strftime("%Y-%m-%dT%H:%M:%SZ"))), *statements
        )
    )
    xsd = schema("camt.053.001.08")
    if not xsd.validate(document):
        raise ValueError(f"the demo's camt.053 does not validate: {xsd.error_log}")
    content: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    return content


def _minor(amount: str | Decimal, currency: str) -> int:
    return int(Decimal(amount).scaleb(currency_exponent(currency)))


def _top_ups(scenario: Scenario) -> list[BankLine]:
    """The wallet top-ups the platform's bank received (each published once; duplicates are redeliveries)."""
    seen: set[bytes] = set()
    out = []
    for d in scenario.deliveries:
        if d.topic != "wallets.v1" or d.note == "malformed" or d.value in seen:
            continue
        seen.add(d.value)
        event = orjson.loads(d.value)
        data = event["data"]
        at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        out.append(
            BankLine(
                ACCOUNTS[data["currency"]],
                data["currency"],
                _minor(data["amount"], data["currency"]),
                True,
                at.date(),
                data["payment_ref"],
                f"TOP-UP {data['contract_id']} {data['payment_ref']}",
            )
        )
    return out


# --- the bank, after the last tick ------------------------------------------------------------------------------
async def play_the_bank(
    pool: asyncpg.Pool,
    producer: Any,
    prefix: str,
    settings: Settings,
    scenario: Scenario,
    psp: str,
    folder: Path,
    wires: list[dict[str, Any]],
    idle: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """Acknowledge every file, return one ACH payout, pay the processor out, import its report and the bank's
    statement, reconcile. Returns what it did and the reconciliation (for the report)."""
    tag, end = scenario.tag, scenario.end
    bank_dir = folder / "bank"
    bank_dir.mkdir(parents=True, exist_ok=True)
    async with pool.acquire() as conn:
        files = [
            await operator.show_file(conn, f["file_id"])
            for f in await operator.list_files(conn)
            if f["created"] is not None and f["created"] >= scenario.start.isoformat().replace("+00:00", "Z")
        ]
    done: dict[str, Any] = {"files": files}

    # 1. The bank acknowledges every submitted file (what `settle payouts files ack` publishes).
    items = []
    for f in files:
        if f["state"] == "submitted":
            ack = PayoutFileAcknowledged(file_id=f["file_id"], acknowledged_by="bank@demo")
            value = encode(
                event_id=f"ack-{f['file_id']}",
                source="/settle/cli/demo",
                type="payout_file.acknowledged",
                time=end + timedelta(hours=6),
                data=ack.model_dump(mode="json"),
            )
            items.append((topics.PAYOUT_BANK_RESULTS, f["file_id"].encode(), value))

    # 2. One ACH payout comes back R03 (no account): the latest ACH file's first payout not of the
    #    pay-when-paid supplier (what `settle payouts returns import --rail ach` publishes).
    ach_files = [f for f in files if f["rail"] == "ach"]
    returned = None
    if ach_files:
        f = ach_files[-1]
        async with pool.acquire() as conn:
            suppliers = dict(
                await conn.fetch(
                    "select payout_id, supplier_id from payouts.payouts where payout_id = any($1)",
                    [p["payout_id"] for p in f["payouts"]],
                )
            )
        chosen = next((p for p in f["payouts"] if suppliers[p["payout_id"]] != scenario.pay_when_paid), f["payouts"][0])
        nacha = read_nacha((folder / "payouts" / f["name"]).read_bytes())
        entry = next(en for b in nacha.batches for en in b.entries if en.trace_number == chosen["rail_reference"])
        payee = scenario.payees[suppliers[chosen["payout_id"]]]["account"]
        day = (end + timedelta(days=2)).date()
        content = nacha_return(
            entry.trace_number,
            payee["routing_number"],
            payee["account_number"],
            entry.amount_minor,
            RETURN_CODE,
            day,
        )
        answers = RAILS["ach"].parse_returns(content)  # refused here if it did not parse, as the CLI does
        path = bank_dir / f"returns-{day:%Y%m%d}.ach"
        path.write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        data = PayoutReturnsReceived(
            rail="ach", name=path.name, sha256=digest, content_b64=base64.b64encode(content).decode()
        )
        value = encode(
            event_id=f"returns-ach-{digest}",
            source="/settle/cli/demo",
            type="payout_returns.received",
            time=datetime.combine(day, datetime.min.time(), end.tzinfo) + timedelta(hours=9),
            data=data.model_dump(mode="json"),
        )
        items.append((topics.PAYOUT_BANK_RESULTS, f"returns-{digest[:16]}".encode(), value))
        returned = {
            **chosen,
            "supplier_id": suppliers[chosen["payout_id"]],
            "file_id": f["file_id"],
            "day": day,
            "answers": len(answers),
            "path": str(path),
        }
    done["returned"] = returned
    await publish_keyed(producer, items, prefix=prefix)
    await idle()

    # 3. The processor pays its balance out; its balance transactions are imported (fees and payouts ledgered).
    processor_payouts = []
    for dialect in ("stripe", "ledgerpay"):
        for currency in ("USD", "EUR", "JPY"):
            answer = await admin(psp, "POST", "/_admin/payouts", {"dialect": dialect, "currency": currency})
            if answer.get("id"):
                processor_payouts.append(answer)
    gateways = build_gateways(
        settings.model_copy(
            update={
                "stripe_api_base": psp,
                "stripe_api_key": "sk_test_demo",
                "ledgerpay_api_base": psp + "/ledgerpay",
                "gateways_enabled": "stripe,ledgerpay",
            }
        ),
        None,
    )
    lines: list[ProcessorLine] = []
    try:
        for name in sorted(gateways):
            lines.extend(line_of_transaction(name, t) for t in await gateways[name].balance_transactions(since=None))
    finally:
        await gateways.close()
    async with pool.acquire() as conn:
        imported = await import_processor_lines(conn, lines)
    done["processor"] = {"payouts": processor_payouts, "lines": imported.lines, "entries": imported.entries_posted}

    # 4. The bank's statement: money in (top-ups, wires, the processor's payouts), every payout sent, the
    #    return, a fee and a credit nobody can explain.
    bank: list[BankLine] = _top_ups(scenario)
    for wire in wires:
        at = wire["received_at"]
        bank.append(
            BankLine(
                ACCOUNTS[wire["currency"]],
                wire["currency"],
                _minor(wire["amount"], wire["currency"]),
                True,
                at.date(),
                wire["receipt_id"],
                f"WIRE {wire['reference']}",
            )
        )
    for p in processor_payouts:
        currency = str(p["currency"]).upper()
        arrival = datetime.fromtimestamp(int(p.get("arrival_date") or p["created"]), end.tzinfo).date()
        text = f"{p['dialect'].upper()} PAYOUT {p['id']}"
        bank.append(
            BankLine(ACCOUNTS[currency], currency, abs(int(p["amount"])), int(p["amount"]) > 0, arrival, p["id"], text)
        )
    for f in files:
        account = WALLET if f["rail"] == "stablecoin" else ACCOUNTS[f["currency"]]
        for p in f["payouts"]:
            bank.append(
                BankLine(
                    account,
                    p["currency"],
                    _minor(p["amount"], p["currency"]),
                    False,
                    date.fromisoformat(f["effective_date"]),
                    p["ref"],
                    f"{f['rail'].upper()} PAYOUT {p['ref']}",
                )
            )
    if returned is not None:
        bank.append(
            BankLine(
                ACCOUNTS["USD"],
                "USD",
                _minor(returned["amount"], "USD"),
                True,
                returned["day"],
                returned["ref"],
                f"ACH RETURN {RETURN_CODE} {returned['ref']}",
            )
        )
    last = max(x.on for x in bank)
    odd = (end - timedelta(days=7)).date()  # older than the window at the statement's last day: overdue breaks
    bank.append(
        BankLine(
            ACCOUNTS["USD"],
            "USD",
            _minor(BANK_FEE, "USD"),
            False,
            odd,
            "",
            "MONTHLY ACCOUNT FEE",
            "bank fee (not ledgered)",
        )
    )
    bank.append(
        BankLine(
            ACCOUNTS["USD"],
            "USD",
            _minor(UNEXPLAINED, "USD"),
            True,
            odd,
            "",
            "WIRE FROM UNKNOWN ORDERING PARTY",
            "unexplained credit (nobody posted it)",
        )
    )
    created = datetime.combine(last + timedelta(days=1), datetime.min.time(), end.tzinfo) + timedelta(hours=6)
    content = camt053(bank, created, tag)
    statement = bank_dir / f"camt053-{last:%Y%m%d}.xml"
    statement.write_bytes(content)
    parsed = read_bank_file(content)
    async with pool.acquire() as conn:
        await import_bank_file(conn, parsed, statement.name)
    done["bank_lines"] = bank
    done["statement"] = str(statement)

    # 5. Reconciliation as of the statement's last day; its confirmations complete the payouts it matched.
    async with pool.acquire() as conn:
        result, run_id, not_booked = await run_reconciliation(conn, as_of=last, window_days=WINDOW_DAYS)
    await idle()
    done["reconciliation"] = (result, run_id, not_booked)

    # 6. Finance acts on the bank's two breaks (`settle breaks post-fee` / `explain`), then reconciles again:
    # the fee is ledgered and matches its line; the unknown credit stays a break, explained, never overdue.
    assert run_id is not None
    actions: list[str] = []
    async with pool.acquire() as conn:
        for n, b in enumerate(result.breaks, start=1):
            [record] = b.records if len(b.records) == 1 else (None,)
            if record is None or b.reason != "missing_in_ledger" or record.source != "bank" or b.explanation:
                continue  # (an earlier demo run's credit stays explained)
            if record.direction == "out" and record.amount_minor == _minor(BANK_FEE, "USD"):
                entry_id = await post_bank_fee(conn, run_id, n, reason="monthly account fee", by="demo finance")
                actions.append(f"break {n}: bank fee posted (entry {str(entry_id)[:8]})")
            elif record.direction == "in" and record.amount_minor == _minor(UNEXPLAINED, "USD"):
                why = "wire from an unknown party, asked the bank"
                await explain_break(conn, run_id, n, reason=why, by="demo finance")
                actions.append(f"break {n}: unknown credit explained")
        again = await run_reconciliation(conn, as_of=last, window_days=WINDOW_DAYS)
    await idle()
    done["actions"] = actions
    done["reconciliation_after"] = again
    return done
