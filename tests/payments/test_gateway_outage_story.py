"""A gateway outage that routing steers around (R14 routing), over HTTP: ``settle fakepsp`` takes one
dialect down. The first invoices routed to it fail with a definite 503 and fail over to the other
gateway within the same try; its circuit opens; the next day's invoices go straight to the other
gateway, each decision stored with its reason. Every invoice is paid once.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from schemas import topics
from services.payments.main import SERVICE as PAYMENTS
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, running, wait_until
from tests.integration.test_payments_service import FEB, invoice
from tests.payments.processes import admin, against_fakepsp, fakepsp
from tests.payments.test_collection_stories import _tick, method

pytestmark = pytest.mark.integration
DUE = FEB + timedelta(days=15)


async def _decisions(stack: Stack) -> list[dict[str, Any]]:
    async with stack.pool.acquire() as conn:
        rows = await conn.fetch(
            """select t.invoice_number, a.call_no, a.gateway, a.state, a.code, a.decision
                 from payments.attempts a join payments.intents t using (intent_id)
                order by t.invoice_number, a.call_no"""
        )
    return [
        {**r, "decision": json.loads(r["decision"]) if isinstance(r["decision"], str) else r["decision"]} for r in rows
    ]


async def test_routing_fails_over_and_then_steers_around_a_gateway_that_is_down(stack: Stack) -> None:
    with fakepsp() as base:
        story = against_fakepsp(stack, base)
        await admin(base, "POST", "/_admin/outage", {"on": True, "dialect": "ledgerpay"})
        items: list[tuple[Any, str, bytes]] = []
        for n in range(1, 13):
            renter = f"rnt-{n:02d}"
            # six invoices fall due on DUE, six a day later
            end = FEB if n <= 6 else FEB + timedelta(days=1)
            inv = invoice(f"INV-2026-{n:06d}", f"ctr-{n}", renter, due="40.00", start=end - timedelta(days=31), end=end)
            m = method(renter, "tok_visa", f"pm-{n}")
            items += [
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m{n}", time=FEB)),
                (
                    topics.INVOICES_FINALIZED,
                    inv.contract_id,
                    event_bytes("invoice.finalized", inv, id=f"i{n}", time=end),
                ),
            ]
        async with running(story, [PAYMENTS]):
            await publish(story, items)

            async def stored() -> bool:
                return await story.pool.fetchval("select count(*) from payments.invoices") == 12

            await wait_until(stored, what="invoices stored")
            await _tick(story, DUE)
            first = await _decisions(story)
            await _tick(story, DUE + timedelta(days=1))
            every = await _decisions(story)
            stats = await admin(base, "GET", "/_admin/stats")
            paid = await story.pool.fetchval("select count(*) from payments.invoice_status where status = 'paid'")

    down = [d for d in first if d["gateway"] == "ledgerpay"]
    assert down and all(d["state"] == "error" and d["call_no"] == 1 for d in down), first
    # each of them failed over to stripe within the same try, with that reason
    for d in down:
        (over,) = [e for e in first if e["invoice_number"] == d["invoice_number"] and e["call_no"] == 2]
        assert (over["gateway"], over["state"]) == ("stripe", "succeeded")
        assert "after a definite failure" in over["decision"]["reason"], over["decision"]
    # the second day: ledgerpay's circuit is open, new attempts go straight to stripe
    later = [d for d in every if d["invoice_number"] > "INV-2026-000006"]
    assert Counter((d["gateway"], d["call_no"], d["state"]) for d in later) == {("stripe", 1, "succeeded"): 6}, later
    for d in later:
        lp = next(c for c in d["decision"]["candidates"] if c["gateway"] == "ledgerpay")
        assert lp["why"] == "circuit open", d["decision"]
    assert paid == 12
    assert stats["charges"] == 12
