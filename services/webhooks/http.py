"""The webhook endpoint (aiohttp): ``POST /webhooks/stripe``.

For each request: read at most :data:`MAX_BODY_BYTES`; verify ``Stripe-Signature`` with the SDK
(``stripe.WebhookSignature.verify_header``: HMAC-SHA256 of ``"<t>.<body>"`` with the endpoint secret,
and ``t`` no older than ``SETTLE_STRIPE_WEBHOOK_TOLERANCE_S``); a request that fails is answered 400 and
counted in ``settle_webhook_rejected_total{gateway,reason}`` — nothing is written. A verified event of a
type Settle listens to is claimed by (gateway, event id) and published to ``processor.events.v1`` through
the outbox in the same PostgreSQL transaction, so a redelivery (processors retry until they get a 2xx,
and sometimes send twice anyway) is answered 200 and published once. When the database is down the
answer is 503: the processor keeps the event and retries.
"""

from __future__ import annotations

import json

import asyncpg
import stripe
import structlog
from aiohttp import web

from libs.db.pool import transaction
from libs.errors import InfrastructureError, RetryableError
from libs.observability import metrics
from libs.settings import Settings
from services.webhooks import domain, store

log = structlog.get_logger("settle.webhooks")

MAX_BODY_BYTES = 256 * 1024
"""Stripe's events are a few KiB; anything this large is not one."""


def build_app(settings: Settings, pool: asyncpg.Pool) -> web.Application:
    async def stripe_webhook(request: web.Request) -> web.Response:
        gateway = "stripe"
        payload = await request.read()
        header = request.headers.get("Stripe-Signature")
        reason = _verify(payload, header, settings)
        if reason is not None:
            metrics.WEBHOOKS_REJECTED.labels(gateway, reason).inc()
            log.warning("webhook rejected", gateway=gateway, reason=reason)
            return web.json_response({"error": reason}, status=400)
        try:
            normalized = domain.normalize_stripe(json.loads(payload))
        except (ValueError, domain.MalformedWebhookError) as error:
            metrics.WEBHOOKS_REJECTED.labels(gateway, "malformed").inc()
            log.warning("webhook rejected", gateway=gateway, reason="malformed", error=str(error)[:300])
            return web.json_response({"error": "malformed"}, status=400)
        if normalized is None:
            metrics.WEBHOOK_EVENTS.labels(gateway, "ignored").inc()
            return web.json_response({"received": True, "ignored": True})
        type_, key, data = normalized
        try:
            async with transaction(pool) as conn:
                outcome = await store.record_event(conn, type_=type_, key=key, data=data, payload=payload)
        except (InfrastructureError, RetryableError) as error:
            log.warning("webhook not recorded; the processor will retry", gateway=gateway, error=str(error)[:300])
            return web.json_response({"error": "unavailable"}, status=503)
        metrics.WEBHOOK_EVENTS.labels(gateway, outcome).inc()
        if outcome == "conflict":
            log.error("webhook event id reused with another payload", gateway=gateway, event=data.processor_event_id)
        return web.json_response({"received": True, "outcome": outcome})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes([web.post("/webhooks/stripe", stripe_webhook)])
    return app


def _verify(payload: bytes, header: str | None, settings: Settings) -> str | None:
    """None when the signature holds, else the rejection reason (a metric label)."""
    if not header:
        return "missing_signature"
    if not settings.stripe_webhook_secret:
        return "no_secret_configured"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed"
    try:
        stripe.WebhookSignature.verify_header(
            text, header, settings.stripe_webhook_secret, tolerance=settings.stripe_webhook_tolerance_s
        )
    except stripe.SignatureVerificationError as error:
        return "stale_timestamp" if "tolerance" in str(error) else "bad_signature"
    return None
