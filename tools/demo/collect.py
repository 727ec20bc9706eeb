"""The demo's collections: the payments worker against ``settle fakepsp``, and what finance does by hand
after the clock has run — a wire from the renter without a card, a partial refund, a dispute lost.

Amounts come from the finalized invoices and the attempts in the database (read-only), never from
the payments service's code; every action goes in as a real message on its topic.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from libs.ids import derive_id
from libs.messaging.broker import publish_keyed
from libs.money import currency_exponent
from schemas import topics
from schemas.envelope import encode
from schemas.events import PaymentCommand, ProcessorEventReceived
from schemas.inputs import PaymentReceived
from services.invoicing import read_model as invoicing
from services.webhooks.domain import event_id_for
from tools.demo.scenario import PLATFORM, Scenario

GATEWAY_TIMEOUT_S = 1.0
"""The workers' SETTLE_GATEWAY_TIMEOUT_S: the held answer of tok_timeout_after_charge outlasts it."""
HANG_MS = 2500
"""fakepsp --hang-ms: how long the processor holds that answer (the charge is made at once)."""
INQUIRY_DELAYS_S = (2, 5, 10, 30, 60)
"""The inquiry schedule, shortened for the demo (R14's default: 1 min, 5 min, 1 h, then daily)."""
INTERRUPTED_AFTER_S = 5
WIRE_OVERPAYMENT = Decimal("250.00")
OPERATOR = "finance@demo"


def write_payments_config(folder: Path) -> Path:
    """The demo's SETTLE_PAYMENTS_CONFIG: the default gateways, a short inquiry schedule."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "payments-demo.yaml"
    path.write_text(
        "# settle demo: the default gateways and decline codes, with the inquiry schedule shortened\n"
        "gateways:\n"
        "  - {name: stripe, kinds: [card, ach_debit, sepa_debit], fee_fixed_minor: 30, fee_bps: 290}\n"
        "  - {name: ledgerpay, kinds: [card], fee_fixed_minor: 20, fee_bps: 250}\n"
        "hard_decline_codes:\n"
        "  stripe: [stolen_card, lost_card, expired_card, incorrect_number, invalid_account, fraudulent,\n"
        "           pickup_card, restricted_card, account_closed, no_account, authentication_required]\n"
        '  ledgerpay: ["04", "07", "14", "41", "43", "54", "57"]\n'
        "circuit: {failures: 5, open_s: 30}\n"
        "explore_every: 20\n"
        f"interrupted_after_s: {INTERRUPTED_AFTER_S}\n"
        "dispute_fee_minor: 1500\n"
        f"inquiry_delays_s: [{', '.join(str(d) for d in INQUIRY_DELAYS_S)}]\n"
    )
    return path


def worker_env_extra(base: str, config: Path) -> dict[str, str]:
    return {
        "SETTLE_STRIPE_API_BASE": base,
        "SETTLE_STRIPE_API_KEY": "sk_test_demo",
        "SETTLE_LEDGERPAY_API_BASE": base + "/ledgerpay",
        "SETTLE_PAYMENTS_CONFIG": str(config),
        "SETTLE_GATEWAY_TIMEOUT_S": str(GATEWAY_TIMEOUT_S),
    }


async def gateway_work(pool: asyncpg.Pool) -> int:
    """Attempts and refunds the payments worker has yet to send or hear back about (for wait_idle)."""
    async with pool.acquire() as conn:
        attempts = await conn.fetchval(
            "select count(*) from payments.attempts where state in ('pending', 'sending', 'unknown')"
        )
        refunds = await conn.fetchval("select count(*) from payments.refunds where state in ('pending', 'sending')")
    return int(attempts) + int(refunds)


async def admin(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, base + path, json=body) as response:
        answer = await response.json()
        if response.status >= 400:
            raise RuntimeError(f"fakepsp {method} {path}: {response.status} {answer}")
        return answer


def _envelope(tag: str, type_: str, data: Any, at: datetime, *parts: str) -> bytes:
    event_id = derive_id("demo-collect", tag, type_, *parts)
    return encode(event_id=event_id, source=PLATFORM, type=type_, time=at, data=data.model_dump(mode="json"))


async def _until(pool: asyncpg.Pool, sql: str, *args: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pool.fetchval(sql, *args):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited {timeout_s:.0f} s for {what}")
        await asyncio.sleep(0.3)


async def by_hand(pool: asyncpg.Pool, producer: Any, prefix: str, scenario: Scenario, base: str) -> dict[str, Any]:
    """The wire, the operator refund and the dispute; returns what was done (for the report)."""
    done: dict[str, Any] = {}
    at = scenario.end
    items: list[tuple[topics.Topic, bytes | None, bytes]] = []

    # A wire from the renter without a card: every invoice it still owes, plus 250.00.
    async with pool.acquire() as conn:
        documents = [d for d in await invoicing.list_invoices(conn) if d["renter_id"] in scenario.without_method]
        owed = {
            r["number"]
            for r in await conn.fetch(
                "select number from payments.invoice_status where status <> 'paid' and number = any($1)",
                [d["number"] for d in documents],
            )
        }
    open_docs = sorted(
        (d for d in documents if Decimal(d["amount_due"]) > 0 and d["number"] in owed),
        key=lambda d: (d["due_at"], d["period_start"], d["contract_id"]),
    )
    if documents:
        # Nothing open (the late wire of tools.demo.settlement paid it all): the 250.00 alone, on account.
        first = open_docs[0] if open_docs else documents[0]
        renter, currency = first["renter_id"], first["currency"]
        paid = [d for d in open_docs if (d["renter_id"], d["currency"]) == (renter, currency)]
        amount = sum((Decimal(d["amount_due"]) for d in paid), Decimal(0)) + WIRE_OVERPAYMENT
        amount = amount.quantize(Decimal(1).scaleb(-currency_exponent(currency)))
        wire = PaymentReceived(
            renter_id=renter,
            receipt_id=f"{scenario.tag}-wire-1",
            amount=amount,
            currency=currency,
            received_at=at,
            rail="wire",
            reference=f"Payment for {paid[0]['number']}" if paid else "Payment on account",
        )
        items.append(
            (topics.PAYMENTS_RECEIVED, renter.encode(), _envelope(scenario.tag, "payment.received", wire, at, "wire"))
        )
        done["wire"] = {
            "renter_id": renter,
            "currency": currency,
            "amount": str(amount),
            "invoices": paid,
            "receipt_id": wire.receipt_id,
            "reference": wire.reference,
            "received_at": at,
        }

    # Card charges of renters whose card simply pays.
    async with pool.acquire() as conn:
        charges = await conn.fetch(
            """select a.attempt_id, a.gateway, a.charge_id, a.amount_minor, a.currency, t.renter_id, t.invoice_number
                 from payments.attempts a join payments.intents t using (intent_id)
                where a.state = 'succeeded' and t.renter_id = any($1) and a.amount_minor > 0
                order by a.at, a.attempt_id""",
            [r for r, token in scenario.methods.items() if token == "tok_visa"],
        )
    if charges:
        # Charges whose billing cycle already paid the supplier out (the saga followed the payout to the
        # bank) come first: a refund there is clawed back from the supplier (R15, the saga's clawback).
        async with pool.acquire() as conn:
            paid_out = {
                r["invoice_number"]
                for r in await conn.fetch(
                    "select invoice_number from saga.sagas where state in ('completed', 'payout_sent')"
                )
            }
        charges = sorted(charges, key=lambda c: c["invoice_number"] not in paid_out)  # stable: keeps the order
        # An operator refund of a third of a card-collected invoice (to the card that paid it).
        first = charges[0]
        places = currency_exponent(first["currency"])
        paid_amount = Decimal(first["amount_minor"]).scaleb(-places)
        refund = (paid_amount / 3).quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)
        command = PaymentCommand(
            command_id=f"{scenario.tag}-refund-1",
            renter_id=first["renter_id"],
            currency=first["currency"],
            invoice_number=first["invoice_number"],
            amount=refund,
            requested_by=OPERATOR,
            reason="goodwill: a third of the invoice back after a support case",
        )
        items.append(
            (
                topics.PAYMENT_COMMANDS,
                first["renter_id"].encode(),
                _envelope(scenario.tag, "payment.refund_requested", command, at, "refund"),
            )
        )
        done["refund"] = {"command_id": command.command_id, "invoice_number": first["invoice_number"]}
    await publish_keyed(producer, items, prefix=prefix)

    if len(charges) > 1:
        # A dispute on another card charge, opened at the processor and lost.
        other = next((c for c in charges[1:] if c["renter_id"] != charges[0]["renter_id"]), charges[1])
        dispute = await admin(base, "POST", "/_admin/disputes", {"charge": other["charge_id"], "reason": "fraudulent"})
        # Opened two days and lost one day before the end: a dispute closed at the very instant it opened
        # meets the payments service's same-instant order (money in before money out), see the README.
        opened_at, lost_at = at - timedelta(days=2), at - timedelta(days=1)
        opened = _dispute_event(other["gateway"], dispute, "charge.dispute.created", opened_at)
        await _publish_processor_event(producer, prefix, "processor.dispute_opened", opened, opened_at)
        await _until(
            pool,
            "select count(*) from payments.disputes where dispute_id = $1",
            dispute["id"],
            what="the dispute opened",
        )
        closed = await admin(base, "POST", f"/_admin/disputes/{dispute['id']}/close", {"status": "lost"})
        lost = _dispute_event(other["gateway"], closed, "charge.dispute.closed", lost_at)
        await _publish_processor_event(producer, prefix, "processor.dispute_closed", lost, lost_at)
        await _until(
            pool,
            "select count(*) from payments.disputes where dispute_id = $1 and state <> 'open'",
            dispute["id"],
            what="the dispute closed",
        )
        done["dispute"] = {"dispute_id": dispute["id"], "invoice_number": other["invoice_number"]}
    if "refund" in done:
        await _until(
            pool,
            "select count(*) from payments.commands where command_id = $1 and outcome <> 'received'",
            done["refund"]["command_id"],
            what="the operator refund",
        )
    return done


def wire_receipt(scenario: Scenario, done: dict[str, Any]) -> dict[str, Any] | None:
    """The by-hand wire as the bank saw it (None when nobody owed anything)."""
    return done.get("wire")


def _dispute_event(gateway: str, dispute: dict[str, Any], processor_type: str, at: datetime) -> ProcessorEventReceived:
    """What the webhooks worker publishes for the processor's dispute event (see services/webhooks)."""
    return ProcessorEventReceived(
        gateway=gateway,
        processor_event_id=f"evt_{dispute['id']}_{dispute['status']}",
        processor_type=processor_type,
        object_type="dispute",
        object_id=dispute["id"],
        payment_id=dispute.get("payment_intent"),
        charge_id=dispute.get("charge"),
        amount_minor=int(dispute["amount"]),
        currency=str(dispute["currency"]).upper(),
        status=dispute["status"],
        dispute_id=dispute["id"],
        dispute_reason=dispute.get("reason"),
        dispute_status=dispute["status"],
        occurred_at=at,
    )


async def _publish_processor_event(
    producer: Any, prefix: str, type_: str, data: ProcessorEventReceived, at: datetime
) -> None:
    event_id = event_id_for(data.gateway, data.processor_event_id)
    value = encode(event_id=event_id, source="/settle/webhooks", type=type_, time=at, data=data.model_dump(mode="json"))
    key = (data.payment_id or data.object_id).encode()
    await publish_keyed(producer, [(topics.PROCESSOR_EVENTS, key, value)], prefix=prefix)
