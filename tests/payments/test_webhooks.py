"""The webhooks worker over TCP: a real ``settle run``-style worker (HTTP endpoint + relay) on the test's
PostgreSQL and broker. A valid event delivered twice is one outbox row and one ``processor.events.v1``
record; a bad signature is a 400 and a metric, never a row. Then fakepsp itself delivers (late, twice,
out of order) into the worker."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import stripe
from prometheus_client import REGISTRY

from schemas import topics
from services.webhooks.domain import MalformedWebhookError, event_id_for, normalize_stripe
from services.webhooks.main import SERVICE as WEBHOOKS
from tests.conftest import Stack
from tests.fleet import read_topic, running
from tests.payments.processes import admin, eventually, fakepsp, free_port

SECRET = "whsec_webhook_test"

PAYMENT_SUCCEEDED: dict[str, Any] = {
    "id": "evt_1",
    "object": "event",
    "type": "payment_intent.succeeded",
    "created": 1_796_400_000,
    "data": {
        "object": {
            "id": "pi_1",
            "object": "payment_intent",
            "amount": 2500,
            "currency": "usd",
            "status": "succeeded",
            "latest_charge": "ch_1",
            "metadata": {"attempt_id": "att-1", "invoice_number": "INV-2026-000001"},
        }
    },
}


def signed(event: dict[str, Any], *, secret: str = SECRET, at: int | None = None) -> tuple[bytes, str]:
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=at or int(time.time()))
    return payload.encode(), header


# --- the pure normalization -------------------------------------------------------------------------------------


def test_a_payment_event_is_keyed_by_the_payment_and_carries_our_attempt() -> None:
    normalized = normalize_stripe(PAYMENT_SUCCEEDED)
    assert normalized is not None
    type_, key, data = normalized
    assert (type_, key) == ("processor.payment_succeeded", "pi_1")
    assert (data.attempt_id, data.amount_minor, data.currency, data.charge_id) == ("att-1", 2500, "USD", "ch_1")


def test_a_dispute_event_carries_the_dispute_fields_and_the_payment_key() -> None:
    event = {
        "id": "evt_2",
        "type": "charge.dispute.closed",
        "created": 1_796_400_000,
        "data": {"object": {"id": "dp_1", "object": "dispute", "amount": 900, "currency": "eur", "status": "lost",
                            "reason": "fraudulent", "charge": "ch_1", "payment_intent": "pi_1"}},
    }  # fmt: skip
    normalized = normalize_stripe(event)
    assert normalized is not None
    type_, key, data = normalized
    assert (type_, key, data.dispute_status, data.dispute_reason) == (
        "processor.dispute_closed",
        "pi_1",
        "lost",
        "fraudulent",
    )
    assert data.attempt_id is None


def test_other_types_are_ignored_and_broken_events_refused() -> None:
    assert normalize_stripe({"id": "evt_3", "type": "customer.created", "created": 1, "data": {"object": {}}}) is None
    broken = {**PAYMENT_SUCCEEDED, "data": {"object": {**PAYMENT_SUCCEEDED["data"]["object"], "currency": "xx"}}}
    with pytest.raises(MalformedWebhookError):
        normalize_stripe(broken)
    with pytest.raises(MalformedWebhookError):
        normalize_stripe(["not", "an", "event"])


# --- the worker ----------------------------------------------------------------------------------------------------


@pytest.fixture
async def endpoint(stack: Stack) -> AsyncIterator[tuple[Stack, str]]:
    port = free_port()
    settings = stack.settings.model_copy(
        update={"webhooks_port": port, "webhooks_host": "127.0.0.1", "stripe_webhook_secret": SECRET}
    )
    configured = dataclasses.replace(stack, settings=settings)
    async with running(configured, [WEBHOOKS]):
        yield configured, f"http://127.0.0.1:{port}/webhooks/stripe"


async def post(url: str, body: bytes, header: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Stripe-Signature": header} if header else {})}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def rows(stack: Stack) -> tuple[int, int]:
    received = await stack.pool.fetchval("select count(*) from webhooks.received")
    outbox = await stack.pool.fetchval(
        "select count(*) from settle.outbox where topic = $1", topics.PROCESSOR_EVENTS.name
    )
    return int(received), int(outbox)


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("settle_webhook_rejected_total", {"gateway": "stripe", "reason": reason})
    return value or 0.0


@pytest.mark.integration
async def test_a_valid_event_delivered_twice_is_published_once(endpoint: tuple[Stack, str]) -> None:
    stack, url = endpoint
    body, header = signed(PAYMENT_SUCCEEDED)
    assert await post(url, body, header) == (200, {"received": True, "outcome": "accepted"})
    body2, header2 = signed(PAYMENT_SUCCEEDED, at=int(time.time()) + 1)  # a redelivery is signed anew
    assert await post(url, body2, header2) == (200, {"received": True, "outcome": "duplicate"})
    assert await rows(stack) == (1, 1)

    records: list[Any] = []

    async def published() -> bool:
        records[:] = await read_topic(stack, topics.PROCESSOR_EVENTS, timeout_s=2)
        return len(records) >= 1

    await eventually(published, timeout_s=30, what="the relay to publish")
    assert len(records) == 1
    envelope = orjson.loads(records[0].value)
    assert envelope["id"] == event_id_for("stripe", "evt_1")
    assert envelope["type"] == "processor.payment_succeeded"
    assert records[0].key == b"pi_1"
    assert envelope["data"]["attempt_id"] == "att-1" and envelope["data"]["amount_minor"] == 2500


@pytest.mark.integration
async def test_a_bad_signature_is_refused_counted_and_changes_nothing(endpoint: tuple[Stack, str]) -> None:
    stack, url = endpoint
    before = {r: rejected(r) for r in ("bad_signature", "missing_signature", "stale_timestamp")}
    body, forged = signed(PAYMENT_SUCCEEDED, secret="whsec_someone_else")
    assert (await post(url, body, forged))[0] == 400
    assert (await post(url, body, None))[0] == 400
    body, stale = signed(PAYMENT_SUCCEEDED, at=int(time.time()) - 3600)
    assert (await post(url, body, stale))[0] == 400
    good_body, good_header = signed(PAYMENT_SUCCEEDED)
    tampered = good_body.replace(b"2500", b"9500")
    assert (await post(url, tampered, good_header))[0] == 400
    assert await rows(stack) == (0, 0)
    assert rejected("bad_signature") == before["bad_signature"] + 2
    assert rejected("missing_signature") == before["missing_signature"] + 1
    assert rejected("stale_timestamp") == before["stale_timestamp"] + 1


@pytest.mark.integration
async def test_fakepsp_deliveries_late_twice_and_out_of_order_are_each_published_once(
    endpoint: tuple[Stack, str],
) -> None:
    stack, url = endpoint
    args = ("--webhook-url", url, "--webhook-secret", SECRET, "--seed", "3", "--webhook-delay-max-ms", "800",
            "--webhook-duplicate-per-mille", "1000")  # fmt: skip
    with fakepsp(*args) as psp:
        async with aiohttp.ClientSession() as http:
            for n, token in enumerate(["tok_visa", "tok_visa", "tok_insufficient_funds", "tok_visa"]):
                form = {"amount": "1500", "currency": "usd", "payment_method": token, "confirm": "true",
                        "metadata[attempt_id]": f"att-f{n}", "metadata[invoice_number]": "INV-f"}  # fmt: skip
                async with http.post(f"{psp}/v1/payment_intents", data=form, headers={"Idempotency-Key": f"kf{n}"}):
                    pass
            refund = {"payment_intent": "pi_fake00000001", "amount": "500"}
            async with http.post(f"{psp}/v1/refunds", data=refund, headers={"Idempotency-Key": "rf-f"}) as r:
                assert r.status == 200
        dispute = await admin(psp, "POST", "/_admin/disputes", {"charge": "pi_fake00000004"})
        await admin(psp, "POST", f"/_admin/disputes/{dispute['id']}/close", {"status": "won"})
        events = (await admin(psp, "GET", "/_admin/events"))["data"]

        async def delivered() -> bool:
            log = (await admin(psp, "GET", "/_admin/webhooks"))["log"]
            return sum(1 for e in log if e.get("status") == 200) >= 2 * len(events)

        await eventually(delivered, timeout_s=30, what="fakepsp to deliver every event twice")
    assert len(events) == 7  # 3 succeeded, 1 failed, 1 refunded, dispute created and closed
    assert await rows(stack) == (7, 7)
    types = await stack.pool.fetch("select type from webhooks.received order by type")
    assert sorted(r["type"] for r in types) == sorted(e["type"] for e in events)
