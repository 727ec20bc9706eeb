"""Contract test: the Stripe adapter against the public ``localstripe`` (a third party's Stripe fake,
run as its own HTTP process), so our reading of Stripe is not checked only against our own fake.

What localstripe 1.15 does and our adapter relies on: PaymentIntents created and confirmed in one
call, refunds of a PaymentIntent, balance transactions. What it does not do, and why the fleet's
story tests use ``settle fakepsp``: it keeps no idempotency keys (a replay creates a second payment),
scripts no declines on PaymentIntents, and has no Search API — which the adapter must read as "no
answer" (unknown), never as "no such charge".
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.payments.gateways.port import ChargeRequest
from services.payments.gateways.stripe_adapter import StripeGateway
from tests.payments.processes import free_port

pytestmark = pytest.mark.integration
KEY = "sk_test_contract"


@contextlib.contextmanager
def localstripe() -> Iterator[str]:
    exe = shutil.which("localstripe", path=str(Path(sys.executable).parent))
    assert exe is not None, "localstripe is a test dependency (pyproject [test])"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--from-scratch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _card(base: str) -> str:
    """A PaymentMethod made at localstripe from Stripe's public test card (never sent to Settle)."""
    form = {
        "type": "card",
        "card[number]": "4242424242424242",
        "card[exp_month]": "12",
        "card[exp_year]": "2030",
        "card[cvc]": "123",
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.post(f"{base}/v1/payment_methods", data=form) as response:
                    assert response.status == 200, await response.text()
                    return str((await response.json())["id"])
            await asyncio.sleep(0.1)
    raise AssertionError("localstripe did not start")


async def test_the_stripe_adapter_charges_refunds_and_reads_balances_at_localstripe() -> None:
    with localstripe() as base:
        method = await _card(base)
        gateway = StripeGateway(api_key=KEY, api_base=base, timeout_s=5, connect_timeout_s=2)
        try:
            request = ChargeRequest(
                attempt_id="att-1", idempotency_key="key-1", amount_minor=12_345, currency="USD",
                token=method, invoice_number="INV-2026-000001", renter_id="rnt-1",
            )  # fmt: skip
            charged = await gateway.charge(request)
            assert charged.outcome == "succeeded"
            assert charged.charge_id is not None and charged.charge_id.startswith("pi_")

            refund = await gateway.refund(charged.charge_id, 2_345, "refund-key-1")
            assert refund.outcome == "succeeded" and refund.refund_id is not None

            lines = await gateway.balance_transactions()
            assert [(t.type, t.amount_minor, t.currency) for t in lines if t.type == "charge"] == [
                ("charge", 12_345, "USD")
            ]

            # No Search API at localstripe: the adapter cannot tell, so the outcome stays unknown.
            asked = await gateway.inquire("att-1", "key-1")
            assert asked.found and asked.result is not None and asked.result.outcome == "unknown"
        finally:
            await gateway.close()
