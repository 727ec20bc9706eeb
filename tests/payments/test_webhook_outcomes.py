"""Webhooks into the books, end to end: ``settle fakepsp`` signs and delivers Stripe webhooks (late,
twice) to the webhooks worker, which publishes them on ``processor.events.v1``; the payments worker
reads them. An attempt whose answer never came back is resolved by the webhook (long before its first
inquiry is due), and a dispute opened and lost at the processor reaches the invoice and the ledger.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from domain.contracts import chart
from libs.ledger import balances, verify
from libs.messaging.worker import Service
from libs.money import minor_to_ledger
from schemas import topics
from services.payments import config as payments_config
from services.payments.collector import collector_task
from services.payments.gateways.registry import build_gateways
from services.payments.handlers import subscription
from services.webhooks.main import SERVICE as WEBHOOKS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, running, wait_until
from tests.integration.test_payments_service import FEB, invoice
from tests.payments.processes import admin, fakepsp, free_port
from tests.payments.test_collection_stories import _attempts, method

pytestmark = pytest.mark.integration
SECRET = "whsec_story"
STRIPE_ONLY = payments_config.parse(
    {"gateways": [{"name": "stripe", "kinds": ["card"]}], "hard_decline_codes": {"stripe": ["stolen_card"]}}
)


async def test_webhooks_resolve_an_unanswered_attempt_and_carry_a_lost_dispute(stack: Stack) -> None:
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhooks/stripe"
    with fakepsp("--webhook-url", hook, "--webhook-secret", SECRET, "--hang-ms", "20000") as base:
        settings = stack.settings.model_copy(
            update={
                "webhooks_port": port,
                "webhooks_host": "127.0.0.1",
                "stripe_webhook_secret": SECRET,
                "stripe_api_base": base,
                "stripe_api_key": "sk_test_settle",
                "gateways_enabled": "stripe",
                "gateway_timeout_s": 2.0,
            }
        )
        story = dataclasses.replace(stack, settings=settings)
        payments = Service(
            name="payments",
            subscriptions=(subscription(STRIPE_ONLY),),
            tasks=(collector_task(STRIPE_ONLY, build_gateways),),  # type: ignore[arg-type]
        )
        start, end = FEB - timedelta(days=31), FEB
        items: list[tuple[Any, str, bytes]] = []
        for n, (renter, token) in enumerate((("rnt-hang", "tok_timeout_after_charge"), ("rnt-disp", "tok_visa")), 1):
            m = method(renter, token, f"pm-{n}")
            inv = invoice(f"INV-2026-{n:06d}", f"ctr-{n}", renter, due="90.00", start=start, end=end)
            items += [
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m{n}", time=FEB)),
                (
                    topics.INVOICES_FINALIZED,
                    inv.contract_id,
                    event_bytes("invoice.finalized", inv, id=f"i{n}", time=FEB),
                ),
            ]
        async with running(story, [WEBHOOKS, payments]):
            await publish(story, items)

            async def stored() -> bool:
                return await story.pool.fetchval("select count(*) from payments.invoices") == 2

            await wait_until(stored, what="invoices stored")
            await publish(
                story,
                [
                    (
                        topics.CLOCK_TICKS,
                        "clock",
                        event_bytes("clock.ticked", {"at": FEB + timedelta(days=15)}, id="t1", time=FEB),
                    )
                ],
            )

            async def both_collected() -> bool:
                states = [a["state"] for r in ("rnt-hang", "rnt-disp") for a in await _attempts(story, r)]
                return states == ["succeeded", "succeeded"]

            await wait_until(both_collected, timeout_s=40, what="the unanswered attempt resolved by its webhook")
            hung = (await _attempts(story, "rnt-hang"))[0]
            assert hung["inquiries"] == 0, "resolved by the webhook, not by asking"
            charge = (await _attempts(story, "rnt-disp"))[0]["charge_id"]

            dispute = await admin(base, "POST", "/_admin/disputes", {"charge": charge})
            await admin(base, "POST", f"/_admin/disputes/{dispute['id']}/close", {"status": "lost"})

            async def lost() -> bool:
                return await story.pool.fetchval("select count(*) from payments.disputes where state = 'lost'") == 1

            await wait_until(lost, timeout_s=40, what="the dispute opened and lost, through the webhooks")
            stats = await admin(base, "GET", "/_admin/stats")

        async with story.pool.acquire() as conn:
            status = await conn.fetchrow("select * from payments.invoice_status where number = 'INV-2026-000002'")
            ledger = {b.code: b.balance_units for b in await balances(conn)}
            report = await verify(conn)
    assert stats["charges"] == 2, "the unanswered attempt charged once"
    assert (status["paid_minor"], status["status"]) == (9000, "paid"), "a lost dispute is written off, not dunned"
    assert ledger[chart.dispute_losses("USD").code] == minor_to_ledger(9000 + 1500, "USD")
    assert report.ok, report
