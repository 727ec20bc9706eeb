"""Payout files stories (R16, R17), end to end over Kafka and PostgreSQL: the payouts worker (its planning
consumer, its bank-results consumer and its file task) runs with the real runtime and relay; invoicing's
``statement.finalized``, the platform's payees and ticks, and the bank's answers are real CloudEvents;
the operator's and reconciliation's commands are ``settle …`` run as processes.

Four suppliers, January 2026 statements final at the Feb 2 tick (a Monday):

* ``sup-ach`` (USD, ACH) 120.00: sent in a NACHA file, acknowledged, returned R03 (no account): reversed,
  payee flagged, not resent at the next tick; a payee update with a new account → attempt 2 in a new file;
* ``sup-sepa`` (EUR, SEPA) 80.00: sent in a pain.001; the bank's statement shows the debit; ``settle
  reconcile`` matches it and confirms it: ``completed``, in transit → cash;
* ``sup-rej`` (EUR, SEPA) 45.50: in the same pain.001, rejected by a pacs.002 (AC04): reversed, flagged;
* ``sup-big`` (USD, ACH) 100,000,000.00: over ACH's limit, no fallback: ``waiting_operator``;
* ``sup-wide`` (USD, ACH, fallback wire) 100,000,000.00: over ACH's limit, sent by wire (pain.001).

And the crash story: a file built and committed, its transmission killed; the restart sends the very same
bytes under the same name, and there is one file row.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from domain.contracts import chart
from libs.errors import OperatorRequestError
from libs.messaging.partitioner import partition_for
from schemas import topics
from schemas.events import PayoutReturnsReceived, PayoutSettlementConfirmed, StatementFinalized
from schemas.inputs import PayeeUpdated
from services.payouts import files, metrics, operator
from services.payouts.main import SERVICE as PAYOUTS
from services.payouts.rails.nacha import read_nacha
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, running
from tests.integration.test_invoicing_service import assert_ledger_sound, balance_units, count, outbox_events
from tests.scenarios.test_payouts_stories import settle_cli, statements_closed, ticked, wait_rows
from tests.unit.test_rails_nacha import place

pytestmark = pytest.mark.integration

FEB2 = datetime(2026, 2, 2, tzinfo=UTC)
ACH_1 = {"holder_name": "Ach Supplier Inc", "routing_number": "021000021", "account_number": "000123456789"}
ACH_2 = {"holder_name": "Ach Supplier Inc", "routing_number": "011000015", "account_number": "000555666777"}
SEPA_1 = {"holder_name": "Sepa GmbH", "iban": "DE89370400440532013000"}
SEPA_2 = {"holder_name": "Rej SARL", "iban": "FR1420041010050500013M02606"}
UNITS = 10**8  # ledger units per major unit (USD and EUR: minor × 10^6)


def payee(
    supplier: str,
    currency: str,
    rail: str,
    account: dict[str, str],
    *,
    at: datetime,
    n: int,
    fallback: str | None = None,
) -> tuple:
    data = PayeeUpdated(
        fallback_rail=fallback,
        supplier_id=supplier,
        payout_currency=currency,
        rail=rail,
        account=account,
        minimum_payout="0",
        pay_when_paid=False,
        on_hold=False,
    )
    return topics.SUPPLIERS, supplier, event_bytes("supplier.payee_updated", data, id=f"payee-{supplier}-{n}", time=at)


def statement(supplier: str, currency: str, net: str, n: int, month: str = "2026-01") -> tuple:
    stm_id = f"stm-{supplier}" if month == "2026-01" else f"stm-{supplier}-{month}"
    data = StatementFinalized(
        statement_id=stm_id,
        number=f"STM-2026-{n:06d}",
        supplier_id=supplier,
        currency=currency,
        month=month,
        earnings={},
        earnings_total=net,
        sla_chargebacks="0",
        carried="0",
        net=net,
        issued_at=datetime(2026, int(month[5:]) + 1, 1, tzinfo=UTC),
    )
    return (
        topics.STATEMENTS_FINALIZED,
        supplier,
        event_bytes("statement.finalized", data, id=stm_id, time=data.issued_at + timedelta(days=1)),
    )


def nacha_return(original_trace: str, routing: str, account: str, amount: int, code: str) -> bytes:
    """A bank's return file (one returned credit, addenda 99) from the published layouts."""
    records = [
        place({(1, 1): "1", (2, 3): "01", (4, 13): " 021000021", (14, 23): " 011000015", (24, 29): "260205",
               (30, 33): "0600", (34, 34): "A", (35, 37): "094", (38, 39): "10", (40, 40): "1",
               (41, 63): "SETTLE PLATFORM".ljust(23), (64, 86): "RETURNING BANK".ljust(23)}),
        place({(1, 1): "5", (2, 4): "220", (5, 20): "SETTLE".ljust(16), (41, 50): "1234567890", (51, 53): "CCD",
               (54, 63): "PAYOUT".ljust(10), (70, 75): "260204", (79, 79): "1", (80, 87): "01100001",
               (88, 94): "0000001"}),
        place({(1, 1): "6", (2, 3): "21", (4, 11): routing[:8], (12, 12): routing[8], (13, 29): account.ljust(17),
               (30, 39): f"{amount:010d}", (40, 54): "RETURN".ljust(15), (55, 76): "ACH SUPPLIER INC".ljust(22),
               (79, 79): "1", (80, 94): "011000010000001"}),
        place({(1, 1): "7", (2, 3): "99", (4, 6): code, (7, 21): original_trace, (28, 35): "01100001",
               (80, 94): "011000010000001"}),
        place({(1, 1): "8", (2, 4): "220", (5, 10): "000002", (11, 20): f"{int(routing[:8]):010d}",
               (21, 32): "0" * 12, (33, 44): f"{amount:012d}", (45, 54): "1234567890", (80, 87): "01100001",
               (88, 94): "0000001"}),
        place({(1, 1): "9", (2, 7): "000001", (8, 13): "000001", (14, 21): "00000002",
               (22, 31): f"{int(routing[:8]):010d}", (32, 43): "0" * 12, (44, 55): f"{amount:012d}"}),
    ]  # fmt: skip
    records += ["9" * 94] * (10 - len(records))
    return "\n".join(records).encode("ascii")


def pacs002_reject(original_msg: str, end_to_end: str, code: str) -> bytes:
    ns = "urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{ns}"><FIToFIPmtStsRpt>'
        f"<GrpHdr><MsgId>STS-0001</MsgId><CreDtTm>2026-02-03T09:00:00Z</CreDtTm></GrpHdr>"
        f"<OrgnlGrpInfAndSts><OrgnlMsgId>{original_msg}</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId>"
        f"</OrgnlGrpInfAndSts><TxInfAndSts><OrgnlEndToEndId>{end_to_end}</OrgnlEndToEndId><TxSts>RJCT</TxSts>"
        f"<StsRsnInf><Rsn><Cd>{code}</Cd></Rsn></StsRsnInf></TxInfAndSts></FIToFIPmtStsRpt></Document>"
    ).encode()


def bai2_debit(amount_minor: int, reference: str) -> bytes:
    """Our EUR account's statement of Feb 3: one outgoing payment, with the controls computed."""
    detail = f"16,495,{amount_minor},Z,BK7001,{reference},SEPA CREDIT TRANSFER"
    account = ["03,DE89370400440532013000,EUR,010,5000000,,Z/", f"{detail}/"]
    account.append(f"49,{amount_minor + 5000000},{len(account) + 1}/")
    group = ["02,SETTLE,COBADEFF,1,260203,0600,EUR,2/", *account]
    group.append(f"98,{amount_minor + 5000000},1,{len(group) + 1}/")
    lines = ["01,COBADEFF,SETTLE,260203,0600,1,,,2/", *group]
    lines.append(f"99,{amount_minor + 5000000},1,{len(lines) + 1}/")
    return ("\n".join(lines) + "\n").encode("ascii")


def bank_result(kind: str, data: Any, key: str, n: int) -> tuple:
    return (
        topics.PAYOUT_BANK_RESULTS,
        key,
        event_bytes(kind, data, id=f"bank-{n}", time=datetime(2026, 2, 3, tzinfo=UTC)),
    )


def returns_message(rail: str, content: bytes, n: int) -> tuple:
    digest = hashlib.sha256(content).hexdigest()
    data = PayoutReturnsReceived(
        rail=rail, name=f"answer-{n}", sha256=digest, content_b64=base64.b64encode(content).decode()
    )
    return bank_result("payout_returns.received", data, f"returns-{n}", n)


async def payout_of(stack: Stack, supplier: str) -> dict[str, Any]:
    code, out, err = await settle_cli(stack, "payouts", "list", "--json", "--supplier", supplier)
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(docs) == 1, docs
    return docs[0]


async def file_docs(stack: Stack) -> dict[str, dict[str, Any]]:
    code, out, err = await settle_cli(stack, "payouts", "files", "list", "--json")
    assert code == 0, err
    return {d["file_id"]: d for d in (json.loads(line) for line in out.splitlines() if line.strip())}


async def test_files_sent_acknowledged_returned_rejected_retried_and_completed(stack: Stack, tmp_path: Path) -> None:
    bank_dir = tmp_path / "bank-outbox"
    stack.settings = stack.settings.model_copy(update={"payout_outbox_dir": bank_dir, "payout_files_interval_s": 0.2})
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    await publish(
        stack,
        [
            payee("sup-ach", "USD", "ach", ACH_1, at=jan1, n=1),
            payee("sup-sepa", "EUR", "sepa", SEPA_1, at=jan1, n=1),
            payee("sup-rej", "EUR", "sepa", SEPA_2, at=jan1, n=1),
            payee("sup-big", "USD", "ach", ACH_1, at=jan1, n=1),
            payee("sup-wide", "USD", "ach", ACH_2, at=jan1, n=1, fallback="wire"),
            statement("sup-ach", "USD", "120.00", 1),
            statement("sup-sepa", "EUR", "80.00", 2),
            statement("sup-rej", "EUR", "45.50", 3),
            statement("sup-big", "USD", "100000000.00", 4),
            statement("sup-wide", "USD", "100000000.00", 5),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
        ],
    )
    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.statements", 5, "five statements at payouts")
        await wait_rows(stack, "select count(*) from payouts.payees", 5, "five payees")
        await publish(stack, ticked(FEB2))
        await wait_rows(stack, "select count(*) from payouts.payout_files where state = 'submitted'", 3, "three files")

        # --- what left: one NACHA file, one pain.001, exactly the stored bytes --------------------------------
        listed = await file_docs(stack)
        assert sorted((d["rail"], d["state"], d["count"], d["currency"], d["total"]) for d in listed.values()) == [
            ("ach", "submitted", 1, "USD", "120.00"),
            ("sepa", "submitted", 2, "EUR", "125.50"),
            ("wire", "submitted", 1, "USD", "100000000.00"),
        ]
        ach_id = next(k for k, d in listed.items() if d["rail"] == "ach")
        sepa_id = next(k for k, d in listed.items() if d["rail"] == "sepa")
        on_disk = sorted(p.name for p in bank_dir.iterdir())
        assert on_disk == sorted(d["name"] for d in listed.values())  # no temp file left
        for d in listed.values():
            assert hashlib.sha256((bank_dir / d["name"]).read_bytes()).hexdigest() == d["sha256"]
        nacha = read_nacha((bank_dir / listed[ach_id]["name"]).read_bytes())
        [entry] = [e for b in nacha.batches for e in b.entries]
        assert (entry.amount_minor, entry.routing_number, entry.account_number.strip()) == (
            120_00,
            "021000021",
            "000123456789",
        )
        pain = (bank_dir / listed[sepa_id]["name"]).read_text()
        assert "DE89370400440532013000" in pain and '<InstdAmt Ccy="EUR">80.00</InstdAmt>' in pain

        wide = await payout_of(stack, "sup-wide")
        assert (wide["state"], wide["rail"]) == ("sent", "wire")
        big = await payout_of(stack, "sup-big")
        assert big["state"] == "waiting_operator" and "over its limit" in big["rail_reason"]
        ach = await payout_of(stack, "sup-ach")
        assert (ach["state"], ach["file_id"], ach["rail"], ach["attempt"]) == ("sent", ach_id, "ach", 1)

        # --- the bank acknowledges the ACH file (operator CLI publishes) ------------------------------------
        code, out, err = await settle_cli(stack, "payouts", "files", "ack", ach_id)
        assert code == 0, err
        await wait_rows(
            stack,
            f"select count(*) from payouts.payout_files where file_id = '{ach_id}' and state = 'acknowledged'",
            1,
            "ack",
        )

        # --- ACH return R03 ----------------------------------------------------------------------------------
        returned = nacha_return(entry.trace_number, "021000021", "000123456789", 120_00, "R03")
        path = tmp_path / "returns.ach"
        path.write_bytes(returned)
        code, out, err = await settle_cli(stack, "payouts", "returns", "import", str(path), "--rail", "ach")
        assert code == 0 and "1 answer(s) (return)" in " ".join(out.split()), out + err
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'returned'", 1, "the ACH return")
        flag = await stack.pool.fetchrow("select * from payouts.payee_flags where supplier_id = 'sup-ach'")
        assert (flag["kind"], flag["code"], flag["payee_event_id"]) == ("return", "R03", "payee-sup-ach-1")
        # planning debited the payable (no invoicing here: it started at zero); the return credits it back
        assert await balance_units(stack, chart.payable("sup-ach", "USD").code) == 0
        # the bank's file imported again under another name: another message, nothing answered twice (the
        # ledger and the dead letters are checked at the end)
        again = tmp_path / "returns-copy.ach"
        again.write_bytes(returned)
        handled = "select count(*) from settle.inbox where consumer = 'payouts-bank'"
        before = await count(stack, handled)  # the ack and the first import
        code, out, err = await settle_cli(stack, "payouts", "returns", "import", str(again), "--rail", "ach")
        assert code == 0, out + err
        await wait_rows(stack, handled, before + 1, "the copy")
        # the very same import and ack again: the worker took them, nothing is sent (no id-conflict dead letter)
        for rerun in (("returns", "import", str(path), "--rail", "ach"), ("files", "ack", ach_id)):
            code, out, err = await settle_cli(stack, "payouts", *rerun)
            assert code == 0 and "already handled" in out and "nothing sent" in out, out + err

        # --- pacs.002 reject of sup-rej ----------------------------------------------------------------------
        shown = json.loads((await settle_cli(stack, "payouts", "files", "show", sepa_id))[1])
        rej_ref = next(p["ref"] for p in shown["payouts"] if p["amount"] == "45.50")
        await publish(stack, [returns_message("sepa", pacs002_reject(shown["batch_id"], rej_ref, "AC04"), 2)])
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'rejected'", 1, "the reject")
        # the report rejects one transaction, not the message: the bank has the file (acknowledged)
        assert (await file_docs(stack))[sepa_id]["state"] == "acknowledged"
        # the same report imported again (another message): nothing is answered twice (ledger checked below)
        await publish(stack, [returns_message("sepa", pacs002_reject(shown["batch_id"], rej_ref, "AC04"), 3)])
        await wait_rows(stack, "select count(*) from settle.inbox where event_id = 'bank-3'", 1, "the repeat")
        assert await count(stack, "select count(*) from payouts.payee_flags where supplier_id = 'sup-rej'") == 1

        # --- a new tick without a payee change: nothing is sent again — also when the payee is published again
        # with the same rail and account (a new version, not new details: R16) ------------------------------
        await publish(stack, [payee("sup-ach", "USD", "ach", ACH_1, at=datetime(2026, 2, 2, 12, tzinfo=UTC), n=9)])
        await wait_rows(stack, "select count(*) from payouts.payees where supplier_id = 'sup-ach'", 2, "payee again")
        await publish(stack, ticked(datetime(2026, 2, 3, tzinfo=UTC)))
        await wait_rows(stack, "select count(*) from payouts.clock where at = '2026-02-03T00:00:00Z'", 1, "tick")
        await asyncio.sleep(1.5)  # seven file rounds at 0.2 s: each had the chance to send again
        assert await count(stack, "select count(*) from payouts.payout_files") == 3

        # --- the payee changes its account: attempt 2 in a new file ------------------------------------------
        await publish(stack, [payee("sup-ach", "USD", "ach", ACH_2, at=datetime(2026, 2, 3, 12, tzinfo=UTC), n=2)])
        await wait_rows(stack, "select count(*) from payouts.payees where supplier_id = 'sup-ach'", 3, "payee v2")
        await publish(stack, ticked(datetime(2026, 2, 4, tzinfo=UTC)))
        await wait_rows(
            stack, "select count(*) from payouts.payout_files where state = 'submitted'", 2, "the retry file"
        )
        ach = await payout_of(stack, "sup-ach")
        assert (ach["state"], ach["attempt"]) == ("sent", 2) and ach["file_id"] not in listed
        retry = read_nacha((bank_dir / (await file_docs(stack))[ach["file_id"]]["name"]).read_bytes())
        [again] = [e for b in retry.batches for e in b.entries]
        assert (again.routing_number, again.account_number.strip()) == ("011000015", "000555666777")
        # R16: trace numbers continue across the rail's files (the first reserved 2 for its one payout), so a
        # return naming this trace can only mean the retry
        assert (entry.trace_number[8:], again.trace_number[8:]) == ("0000001", "0000003")
        code, out, err = await settle_cli(stack, "payouts", "show", ach["payout_id"])
        assert code == 0, err
        attempts = json.loads(out)["attempts"]
        assert [(a["attempt"], a["outcome"], a["code"], a["payee_event_id"]) for a in attempts] == [
            (1, "returned", "R03", "payee-sup-ach-1"),
            (2, None, None, "payee-sup-ach-2"),
        ]
        assert "000555666777" not in out and "000123456789" not in out

        # --- the bank's statement shows the SEPA payout; reconciliation confirms it --------------------------
        sepa = next(p for p in shown["payouts"] if p["amount"] == "80.00")
        statement_path = tmp_path / "statement.bai"
        statement_path.write_bytes(bai2_debit(80_00, sepa["ref"]))
        code, _, err = await settle_cli(stack, "bank", "import", str(statement_path))
        assert code == 0, err
        code, _, err = await settle_cli(stack, "reconcile", "--date", "2026-02-04", "--json")
        assert code in (0, 1), err
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'completed'", 1, "completion", 60)
        assert (await payout_of(stack, "sup-sepa"))["state"] == "completed"
        await wait_rows(
            stack,
            f"select count(*) from payouts.payout_files where file_id = '{sepa_id}' and state = 'settled'",
            1,
            "settled",
        )
        shown = json.loads((await settle_cli(stack, "payouts", "files", "show", sepa_id))[1])
        assert [h["state"] for h in shown["history"]] == ["built", "submitted", "acknowledged", "settled"]
        # reconciliation runs again: the confirmation is not sent again (one outbox row for its event id: a
        # resend carrying the second run's id would be another payload under the same id — a dead letter)
        code, _, err = await settle_cli(stack, "reconcile", "--date", "2026-02-04")
        assert code in (0, 1), err
        sent = await stack.pool.fetch(
            "select convert_from(value, 'UTF8')::jsonb as e from settle.outbox where topic = 'payouts.bank_results.v1'"
            " and convert_from(value, 'UTF8')::jsonb ->> 'type' = 'payout.settlements_confirmed'"
        )
        assert len(sent) == 1  # one event, with one confirmation: the SEPA payout's
        [event] = [orjson.loads(r["e"]) if isinstance(r["e"], str) else r["e"] for r in sent]
        assert [(c["reference"], c["amount_minor"]) for c in event["data"]["confirmations"]] == [
            (sepa["payout_id"], 80_00)
        ]
        assert await count(stack, "select count(*) from reconcile.confirmations") == 1
        # a single `payout.settlement_confirmed`, what runs before 2026-12-07 sent, is still applied: the wire
        wide = await payout_of(stack, "sup-wide")
        legacy = PayoutSettlementConfirmed(
            reference=wide["payout_id"],
            amount_minor=100_000_000_00,
            currency="USD",
            booked_on="2026-02-04",
            bank_record="bank:legacy-wire",
        )
        at = datetime(2026, 2, 4, tzinfo=UTC)
        await publish(
            stack,
            [
                (
                    topics.PAYOUT_BANK_RESULTS,
                    wide["payout_id"],
                    event_bytes("payout.settlement_confirmed", legacy, id="legacy-confirm", time=at),
                )
            ],
        )
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'completed'", 2, "wire completed")
        assert (await payout_of(stack, "sup-wide"))["state"] == "completed"
        await asyncio.sleep(1.0)  # what the second run might have sent reaches the worker
        letters = await stack.pool.fetch("select consumer, reason from settle.dead_letters")
        assert not letters, [tuple(x) for x in letters]

    # --- ledger: returns and rejects reversed, the completion moved to cash, nothing counted twice ---------
    assert await balance_units(stack, "platform:payouts_in_transit:EUR") == 0  # completed 80.00 + rejected 45.50
    assert await balance_units(stack, "platform:cash_clearing:EUR") == -80 * UNITS
    assert await balance_units(stack, chart.payable("sup-rej", "EUR").code) == 0  # planned, then rejected
    assert await balance_units(stack, chart.payable("sup-ach", "USD").code) == 120 * UNITS  # returned, then retried
    # in transit: the retried ACH payout (120.00) and the one over every limit; the wire went to cash
    assert await balance_units(stack, "platform:payouts_in_transit:USD") == -(120 + 100_000_000) * UNITS
    assert await balance_units(stack, "platform:cash_clearing:USD") == -100_000_000 * UNITS
    await assert_ledger_sound(stack)

    events = await outbox_events(stack, topics.PAYOUTS)
    kinds = sorted(e["type"] for e in events if e["type"] not in ("payout.planned",))
    assert kinds == sorted(["payout.sent"] * 5 + ["payout.returned", "payout.rejected"] + ["payout.completed"] * 2), (
        kinds
    )
    returned_event = next(e for e in events if e["type"] == "payout.returned")
    assert (returned_event["data"]["return_code"], returned_event["data"]["file_id"]) == ("R03", ach_id)
    assert returned_event["data"]["state"] == "returned"
    rows = await stack.pool.fetch(
        """select payout_id, count(*) as n from payouts.payout_file_items
            where outcome is null or outcome = 'completed' group by 1"""
    )
    assert all(r["n"] == 1 for r in rows)


async def two_sepa_payouts(stack: Stack, tmp_path: Path) -> Path:
    """sup-rej (45.50 EUR) and sup-sepa (80.00 EUR) planned at FEB2, sent in one pain.001 to the returned
    directory by a payouts worker the caller runs (file rounds every 0.2 s)."""
    bank_dir = tmp_path / "bank-outbox"
    stack.settings = stack.settings.model_copy(update={"payout_outbox_dir": bank_dir, "payout_files_interval_s": 0.2})
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    await publish(
        stack,
        [
            payee("sup-rej", "EUR", "sepa", SEPA_2, at=jan1, n=1),
            payee("sup-sepa", "EUR", "sepa", SEPA_1, at=jan1, n=1),
            statement("sup-rej", "EUR", "45.50", 1),
            statement("sup-sepa", "EUR", "80.00", 2),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
        ],
    )
    return bank_dir


async def sent_sepa_file(stack: Stack) -> tuple[str, dict[str, Any]]:
    """Once the workers have the statements and payees: tick FEB2, wait for the file; its id and `show`."""
    await wait_rows(stack, "select count(*) from payouts.statements", 2, "two statements at payouts")
    await wait_rows(stack, "select count(*) from payouts.payees", 2, "two payees")
    await publish(stack, ticked(FEB2))
    await wait_rows(stack, "select count(*) from payouts.payout_files where state = 'submitted'", 1, "the file")
    [sepa_id] = list(await file_docs(stack))
    return sepa_id, json.loads((await settle_cli(stack, "payouts", "files", "show", sepa_id))[1])


async def test_an_operator_retries_a_rejected_payout_r16_would_not_send_again(stack: Stack, tmp_path: Path) -> None:
    """pacs.002 rejects a SEPA payout (AC04, details unchanged): R16 keeps it; `settle payouts retry` sends
    attempt 2 to the same account in a new file, once; a payout that did not fail cannot be retried."""
    bank_dir = await two_sepa_payouts(stack, tmp_path)
    async with running(stack, [PAYOUTS], relays=1):
        sepa_id, shown = await sent_sepa_file(stack)
        rej = next(p for p in shown["payouts"] if p["amount"] == "45.50")
        await publish(stack, [returns_message("sepa", pacs002_reject(shown["batch_id"], rej["ref"], "AC04"), 1)])
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'rejected'", 1, "the reject")
        rejected = await payout_of(stack, "sup-rej")

        refused = await settle_cli(stack, "payouts", "retry", (await payout_of(stack, "sup-sepa"))["payout_id"],
                                   "--reason", "why not")  # fmt: skip
        assert refused[0] != 0 and "returned or rejected" in refused[1] + refused[2], refused
        await publish(stack, ticked(datetime(2026, 2, 3, tzinfo=UTC)))
        await asyncio.sleep(1.0)  # five file rounds: R16 alone sends nothing (same payee)
        assert len(await file_docs(stack)) == 1

        code, out, err = await settle_cli(
            stack, "payouts", "retry", rejected["payout_id"], "--reason", "bank confirmed the IBAN", "--actor", "ops"
        )
        assert code == 0 and "retry of" in out, out + err
        again = await settle_cli(stack, "payouts", "retry", rejected["payout_id"], "--reason", "twice")
        # refused: already asked, or (the round at 0.2 s was quicker) already sent again
        assert again[0] != 0 and ("already retried" in again[2] or "is sent" in again[2]), again
        await wait_rows(stack, "select count(*) from payouts.payout_files", 2, "the retry's file")
        retried = await payout_of(stack, "sup-rej")
        assert (retried["state"], retried["attempt"]) == ("sent", 2) and retried["file_id"] != sepa_id
        pain = (bank_dir / (await file_docs(stack))[retried["file_id"]]["name"]).read_text()
        assert "FR1420041010050500013M02606" in pain and '<InstdAmt Ccy="EUR">45.50</InstdAmt>' in pain
        audit = await stack.pool.fetchrow(
            "select actor, action, reason, from_state from payouts.operator_actions where payout_id = $1",
            rejected["payout_id"],
        )
        assert tuple(audit) == ("ops", "retry", "bank confirmed the IBAN", "rejected")
    # planned 45.50 (no invoicing here: the payable started at zero), rejected (credited back), retried
    # (debited again, in transit again): in transit 80.00 + 45.50
    assert await balance_units(stack, chart.payable("sup-rej", "EUR").code) == 4550 * UNITS // 100
    assert await balance_units(stack, "platform:payouts_in_transit:EUR") == -(80 * UNITS + 4550 * UNITS // 100)
    await assert_ledger_sound(stack)


class KilledTransport(files.DirectoryTransport):
    """Writes part of the temp file, then 'dies' before the rename (the process was killed)."""

    def send(self, name: str, content: bytes, sha256: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f".{name}.tmp").write_bytes(content[: len(content) // 2])
        raise ConnectionError("killed")


class RenamedThenKilled(files.DirectoryTransport):
    """Sends the whole file, then dies before the database hears of it."""

    def send(self, name: str, content: bytes, sha256: str) -> Path:
        super().send(name, content, sha256)
        raise ConnectionError("killed after the rename")


async def test_a_crash_between_build_and_submit_resends_the_identical_file(stack: Stack, tmp_path: Path) -> None:
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    await publish(
        stack,
        [
            payee("sup-ach", "USD", "ach", ACH_1, at=jan1, n=1),
            payee("sup-two", "USD", "ach", ACH_2, at=jan1, n=1),
            statement("sup-ach", "USD", "120.00", 1),
            statement("sup-two", "USD", "7.25", 2),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
            *ticked(FEB2),
        ],
    )
    async with running(stack, [PAYOUTS], relays=1):  # no outbox dir: planned, nothing cut
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'planned'", 2, "two planned")
    assert await count(stack, "select count(*) from payouts.payout_files") == 0

    bank = tmp_path / "bank"
    with pytest.raises(ConnectionError):
        await files.run_round(stack.pool, KilledTransport(bank))
    row = await stack.pool.fetchrow("select * from payouts.payout_files")
    assert row["state"] == "built" and row["entry_count"] == 2  # committed before anything left
    assert await count(stack, "select count(*) from payouts.payouts where state = 'planned'") == 2
    assert not (bank / row["name"]).exists()
    planned_id = await stack.pool.fetchval("select payout_id from payouts.payouts order by payout_id limit 1")
    async with stack.pool.acquire() as conn, conn.transaction():  # in a file: too late to hold it
        with pytest.raises(OperatorRequestError, match="too late to hold"):
            await operator.hold(conn, planned_id, reason="stop it", actor="ops")

    with pytest.raises(ConnectionError):  # restart: sent in full, killed before the database knew
        await files.run_round(stack.pool, RenamedThenKilled(bank))
    first_bytes = (bank / row["name"]).read_bytes()
    assert first_bytes == bytes(row["content"])

    built, sent = await files.run_round(stack.pool, files.DirectoryTransport(bank))  # restart: a recognised resend
    assert built == [] and sent == [row["file_id"]]
    assert (bank / row["name"]).read_bytes() == first_bytes
    assert hashlib.sha256(first_bytes).hexdigest() == row["sha256"]
    assert await count(stack, "select count(*) from payouts.payout_files") == 1
    assert await count(stack, "select count(*) from payouts.payout_file_items") == 2
    assert await count(stack, "select count(*) from payouts.payouts where state = 'sent'") == 2
    assert sorted(p.name for p in bank.iterdir() if not p.name.startswith(".")) == [row["name"]]

    assert await files.run_round(stack.pool, files.DirectoryTransport(bank)) == ([], [])  # nothing twice
    # The gauges the worker exports, from the database: two ACH payouts sent, 127.25 USD in transit, the
    # file waiting for the bank's acknowledgement.
    assert metrics.PAYOUTS.labels("sent", "ach")._value.get() == 2
    assert metrics.IN_TRANSIT.labels("USD")._value.get() == 127.25
    assert metrics.OLDEST_UNACKNOWLEDGED._value.get() > 0 and metrics.WAITING_OPERATOR._value.get() == 0
    # A different file under a sent file's name is refused, never overwritten.
    with pytest.raises(files.TransportError):
        files.DirectoryTransport(bank).send(row["name"], b"other bytes", hashlib.sha256(b"other bytes").hexdigest())
    # The database refuses a payout in a second live file.
    item = await stack.pool.fetchrow("select * from payouts.payout_file_items limit 1")
    other = row["file_id"] + "-other"
    async with stack.pool.acquire() as conn:
        await conn.execute(
            """insert into payouts.payout_files (file_id, rail, tick, sequence, batch_id, name, effective_date, state,
                   content, sha256, media_type, entry_count, total_minor, currency)
               select $2, rail, tick, sequence + 1, batch_id || 'X', name || '.x', effective_date, 'built', content,
                      sha256, media_type, entry_count, total_minor, currency
                 from payouts.payout_files where file_id = $1""",
            row["file_id"],
            other,
        )
        with pytest.raises(asyncpg.UniqueViolationError, match="payout_file_items_one_live"):
            await conn.execute(
                """insert into payouts.payout_file_items (file_id, payout_id, attempt, ref, rail_reference,
                       payee_event_id, amount_minor, currency) values ($1, $2, 2, 'x', 'y', 'z', 1, 'USD')""",
                other,
                item["payout_id"],
            )


async def test_an_r01_return_is_presented_again_at_most_twice(stack: Stack, tmp_path: Path) -> None:
    bank_dir = tmp_path / "bank-outbox"
    stack.settings = stack.settings.model_copy(update={"payout_outbox_dir": bank_dir, "payout_files_interval_s": 0.2})
    await publish(
        stack,
        [
            payee("sup-nsf", "USD", "ach", ACH_1, at=datetime(2026, 1, 1, tzinfo=UTC), n=1),
            statement("sup-nsf", "USD", "64.00", 1),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
            *ticked(FEB2),
        ],
    )
    async with running(stack, [PAYOUTS], relays=1):
        for attempt in (1, 2, 3):
            await wait_rows(
                stack,
                f"select count(*) from payouts.payouts where state = 'sent' and attempt = {attempt}",
                1,
                f"attempt {attempt} sent",
            )
            item = await stack.pool.fetchrow(
                "select i.*, f.name from payouts.payout_file_items i join payouts.payout_files f using (file_id)"
                " where i.attempt = $1",
                attempt,
            )
            [entry] = [e for b in read_nacha((bank_dir / item["name"]).read_bytes()).batches for e in b.entries]
            # each presentation has a trace of its own: files continue the rail's trace numbers (2 a payout)
            assert entry.trace_number == f"02100002{2 * attempt - 1:07d}"
            returned = nacha_return(entry.trace_number, "021000021", "000123456789", 64_00, "R01")
            await publish(stack, [returns_message("ach", returned, 10 + attempt)])
            await wait_rows(
                stack,
                f"select count(*) from payouts.payee_flags where code = 'R01' and attempt = {attempt}",
                1,
                f"attempt {attempt} returned",
            )
        await asyncio.sleep(1.5)  # rounds pass: a third R01 is not presented again
        assert await count(stack, "select count(*) from payouts.payout_files") == 3
        assert await count(stack, "select count(*) from payouts.payouts where state = 'returned' and attempt = 3") == 1
        names = sorted(p.name for p in bank_dir.iterdir())
        assert len(names) == 3 and len({read_nacha((bank_dir / n).read_bytes()).file_id_modifier for n in names}) == 3
    assert await balance_units(stack, chart.payable("sup-nsf", "USD").code) == 0  # out three times, back three times
    assert await balance_units(stack, "platform:payouts_in_transit:USD") == 0
    await assert_ledger_sound(stack)


async def test_a_tick_waits_for_the_payees_and_rates_published_before_it(stack: Stack) -> None:
    """R15: the latest payee update (and FX rate) at or before planning applies — whichever partition the
    worker happens to read first. A tick carries its barrier (`settle clock tick`: the end offsets of
    ``suppliers.v1`` and ``fx.rates.v1`` among others); payouts plans it only after reading those up to
    it. Here the tick's barrier counts a payee and a rate the worker has not read yet (published just
    before the tick; a lagging or restarted worker reads the tick's partition first — the chaos test's
    flake): nothing is planned, then one payout at that rate once they are read, never ``no_payee``."""
    from services.clock.domain import tick_bytes
    from services.clock.main import input_barrier
    from tests.scenarios.test_payouts_stories import fx

    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    await publish(stack, [statement("sup-late-payee", "EUR", "100.00", 1), *statements_closed("2026-01", FEB2)])
    await publish(stack, ticked(FEB2)[1:])  # payments' answers to the tick (payments does not run here)
    barrier = await input_barrier(stack.bootstrap_servers, stack.settings.topic_prefix)
    late = [payee("sup-late-payee", "USD", "ach", ACH_1, at=jan1, n=1), fx("eur-usd-1", "EUR", "USD", "1.1", jan1)]
    for topic, key, _ in late:  # the payee and the rate were published before the tick: its barrier counts them
        barrier[topic.name][partition_for(key.encode(), topic.partitions)] += 1
    await publish(stack, [(topics.CLOCK_TICKS, "clock", tick_bytes(FEB2, barrier))])
    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.statements", 1, "January's statement at payouts")
        await asyncio.sleep(1.5)
        assert await count(stack, "select count(*) from payouts.payouts") == 0, "planned before its payee was read"
        assert await count(stack, "select count(*) from payouts.ticks") == 0, "the tick waits for its barrier"
        await publish(stack, late)
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 2 planning")
        rows = await stack.pool.fetch(
            "select state, currency, payout_currency, payout_amount_minor, rate_id from payouts.payouts"
        )
    assert [tuple(r) for r in rows] == [("planned", "EUR", "USD", 11000, "eur-usd-1")], rows
    await assert_ledger_sound(stack)


async def test_a_tick_older_than_the_last_planning_changes_nothing(stack: Stack) -> None:
    """R15 planning time never goes back. ``sup-small`` (minimum 1,000.00) waits below its minimum: at the
    Feb 2 tick with January's 100.00, at Mar 2 with January and February, 250.00. A Feb 20 tick read
    after that (the clock sent it again, or a worker read it late) used to plan again *at Feb 20*: the
    waiting plan went back to January alone. Now it is recorded and plans nothing."""
    from tests.scenarios.test_payouts_stories import payee as payee_with

    mar2 = datetime(2026, 3, 2, tzinfo=UTC)
    february = StatementFinalized(
        statement_id="stm-sup-small-02",
        number="STM-2026-000002",
        supplier_id="sup-small",
        currency="USD",
        month="2026-02",
        earnings={},
        earnings_total="150.00",
        sla_chargebacks="0",
        carried="0",
        net="150.00",
        issued_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    await publish(
        stack,
        [
            payee_with("sup-small", at=datetime(2026, 1, 1, tzinfo=UTC), n=1, minimum="1000.00"),
            statement("sup-small", "USD", "100.00", 1),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
            *ticked(FEB2),
        ],
    )

    async def waiting() -> tuple[Any, ...]:
        row = await stack.pool.fetchrow(
            "select months, amount_minor, reason, planned_at from payouts.payouts where supplier_id = 'sup-small'"
        )
        return tuple(row) if row is not None else ()

    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 1, "the Feb 2 planning")
        assert await waiting() == (["2026-01"], 10000, "below_minimum", FEB2)
        await publish(
            stack,
            [
                (
                    topics.STATEMENTS_FINALIZED,
                    "sup-small",
                    event_bytes("statement.finalized", february, id="stm-2", time=mar2),
                ),
                *statements_closed("2026-02", datetime(2026, 3, 1, tzinfo=UTC)),
                *ticked(mar2),
            ],
        )
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 2, "the Mar 2 planning")
        assert await waiting() == (["2026-01", "2026-02"], 25000, "below_minimum", mar2)
        await publish(stack, ticked(datetime(2026, 2, 20, tzinfo=UTC)))
        await wait_rows(stack, "select count(*) from payouts.ticks where planned", 3, "the Feb 20 tick handled")
        assert await waiting() == (["2026-01", "2026-02"], 25000, "below_minimum", mar2)
        assert await stack.pool.fetchval("select at from payouts.clock") == mar2
    waits = [e for e in await outbox_events(stack, topics.PAYOUTS) if e["type"] == "payout.waiting"]
    assert len(waits) == 2, waits


async def test_instant_payouts_go_one_per_message_and_ach_together_in_one_file(stack: Stack, tmp_path: Path) -> None:
    """RTP and FedNow carry one transaction per pacs.008 message (R16; both schemes require it): three RTP
    payouts of one round are three files, each its own sequence and one transaction, while the round's two
    ACH payouts share one NACHA file."""
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    rtp = [f"sup-rtp-{n}" for n in range(3)]
    items = [
        payee(s, "USD", "rtp", {**ACH_1, "account_number": f"00012345678{n}"}, at=jan1, n=1) for n, s in enumerate(rtp)
    ]
    items += [payee("sup-ach", "USD", "ach", ACH_1, at=jan1, n=1), payee("sup-two", "USD", "ach", ACH_2, at=jan1, n=1)]
    for n, supplier in enumerate([*rtp, "sup-ach", "sup-two"], start=1):
        items.append(statement(supplier, "USD", f"{10 * n}.00", n))
    await publish(stack, [*items, *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)), *ticked(FEB2)])
    async with running(stack, [PAYOUTS], relays=1):  # no outbox dir: planned, nothing cut
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'planned'", 5, "five planned")

    built, sent = await files.run_round(stack.pool, files.DirectoryTransport(tmp_path / "bank"))
    assert sorted(built) == sorted(sent) and len(built) == 4
    rows = await stack.pool.fetch(
        "select rail, sequence, entry_count, content from payouts.payout_files order by file_id"
    )
    by_rail = {r: [(x["sequence"], x["entry_count"]) for x in rows if x["rail"] == r] for r in ("rtp", "ach")}
    assert by_rail == {"rtp": [(0, 1), (1, 1), (2, 1)], "ach": [(0, 2)]}
    for row in rows:
        if row["rail"] == "rtp":
            assert b"<NbOfTxs>1</NbOfTxs>" in bytes(row["content"])
    assert await count(stack, "select count(*) from payouts.payouts where state = 'sent'") == 5
    await assert_ledger_sound(stack)


def pain002_block_reject(original_msg: str, block_id: str, code: str) -> bytes:
    """A pain.002 that accepts the message but rejects one payment-information block as a whole."""
    ns = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.10"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{ns}"><CstmrPmtStsRpt>'
        f"<GrpHdr><MsgId>STS-0002</MsgId><CreDtTm>2026-02-03T09:00:00Z</CreDtTm></GrpHdr>"
        f"<OrgnlGrpInfAndSts><OrgnlMsgId>{original_msg}</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId>"
        f"<GrpSts>PART</GrpSts></OrgnlGrpInfAndSts><OrgnlPmtInfAndSts><OrgnlPmtInfId>{block_id}</OrgnlPmtInfId>"
        f"<PmtInfSts>RJCT</PmtInfSts><StsRsnInf><Rsn><Cd>{code}</Cd></Rsn></StsRsnInf></OrgnlPmtInfAndSts>"
        f"</CstmrPmtStsRpt></Document>"
    ).encode()


async def test_a_payment_block_rejected_as_a_whole_rejects_every_payout_in_it(stack: Stack, tmp_path: Path) -> None:
    """A pain.002 rejecting a PmtInf block (OrgnlPmtInfId, no transaction named) rejects each payout the block
    of our sent file carries — reversed, flagged, `payout.rejected` — instead of being logged as about no
    payout of ours (R16)."""
    bank_dir = await two_sepa_payouts(stack, tmp_path)
    async with running(stack, [PAYOUTS], relays=1):
        sepa_id, shown = await sent_sepa_file(stack)
        pain = (bank_dir / (await file_docs(stack))[sepa_id]["name"]).read_text()
        [block_id] = re.findall(r"<PmtInfId>([^<]+)</PmtInfId>", pain)
        await publish(stack, [returns_message("sepa", pain002_block_reject(shown["batch_id"], block_id, "AM04"), 1)])
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'rejected'", 2, "both rejected")
        assert (await file_docs(stack))[sepa_id]["state"] == "rejected"  # every payout of it was
        flags = await stack.pool.fetch("select supplier_id, kind, code from payouts.payee_flags order by supplier_id")
        assert [tuple(f) for f in flags] == [("sup-rej", "reject", "AM04"), ("sup-sepa", "reject", "AM04")]
    assert await balance_units(stack, "platform:payouts_in_transit:EUR") == 0
    await assert_ledger_sound(stack)


async def test_a_payee_flagged_by_a_return_gets_no_new_payout_until_its_account_changes(
    stack: Stack, tmp_path: Path
) -> None:
    """R16 "flags the payee": January's payout is returned R03 (no account). February's payout is not sent to
    the same account — it waits for an operator with the flag as its reason — until the supplier's account
    changes; then both go to the new account."""
    bank_dir = tmp_path / "bank-outbox"
    stack.settings = stack.settings.model_copy(update={"payout_outbox_dir": bank_dir, "payout_files_interval_s": 0.2})
    mar1, mar2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    await publish(
        stack,
        [
            payee("sup-gone", "USD", "ach", ACH_1, at=datetime(2026, 1, 1, tzinfo=UTC), n=1),
            statement("sup-gone", "USD", "64.00", 1),
            *statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC)),
            *ticked(FEB2),
        ],
    )
    async with running(stack, [PAYOUTS], relays=1):
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'sent'", 1, "January sent")
        item = await stack.pool.fetchrow(
            "select i.*, f.name from payouts.payout_file_items i join payouts.payout_files f using (file_id)"
        )
        [entry] = [e for b in read_nacha((bank_dir / item["name"]).read_bytes()).batches for e in b.entries]
        returned = nacha_return(entry.trace_number, "021000021", "000123456789", 64_00, "R03")
        await publish(stack, [returns_message("ach", returned, 1)])
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'returned'", 1, "January returned")

        await publish(
            stack, [statement("sup-gone", "USD", "36.00", 2, month="2026-02"), *statements_closed("2026-02", mar1)]
        )
        await wait_rows(stack, "select count(*) from payouts.statements", 2, "February's statement")
        await publish(stack, ticked(mar2))
        await wait_rows(
            stack, "select count(*) from payouts.payouts where state = 'waiting_operator'", 1, "February held"
        )
        held = await stack.pool.fetchrow("select * from payouts.payouts where state = 'waiting_operator'")
        assert "payee flagged" in held["rail_reason"] and "R03" in held["rail_reason"], held["rail_reason"]
        await asyncio.sleep(1.0)  # five file rounds: nothing more goes to the returned account
        assert await count(stack, "select count(*) from payouts.payout_files") == 1

        await publish(stack, [payee("sup-gone", "USD", "ach", ACH_2, at=datetime(2026, 3, 2, 12, tzinfo=UTC), n=2)])
        await publish(stack, ticked(datetime(2026, 3, 3, tzinfo=UTC)))
        await wait_rows(stack, "select count(*) from payouts.payouts where state = 'sent'", 2, "both sent again")
        accounts = set()
        for row in await stack.pool.fetch(
            "select f.name from payouts.payout_files f where f.file_id <> $1", item["file_id"]
        ):
            accounts |= {
                e.account_number.strip()
                for b in read_nacha((bank_dir / row["name"]).read_bytes()).batches
                for e in b.entries
            }
        assert accounts == {"000555666777"}
    await assert_ledger_sound(stack)
