"""The fake processor's HTTP application: both dialects, the admin API, outage and latency.

Admin API (for tests and the demo; never behind the outage switch):

* ``GET /_admin/stats`` — charges made (total, per attempt id, per idempotency key), request counters;
* ``POST /_admin/outage`` ``{"on": true|false, "dialect": "stripe"|"ledgerpay"}`` — every request (of
  that dialect only, when one is named) answers 503 while on;
* ``POST /_admin/disputes`` ``{"charge": <payment or charge id>, "amount"?: int, "reason"?: str}`` — opens
  a dispute (webhook ``charge.dispute.created`` for Stripe charges); ``POST /_admin/disputes/{id}/close``
  ``{"status": "won"|"lost"}`` closes it (``charge.dispute.closed``);
* ``POST /_admin/payouts`` ``{"dialect": "stripe"|"ledgerpay", "currency": "USD"}`` — pays out the unpaid
  balance; ``GET /_admin/reports/payouts/{id}`` — the payout report (its lines, gross, fees, net);
* ``GET /_admin/webhooks`` — planned deliveries, the delivery log, how many are pending;
  ``POST /_admin/webhooks/resend`` ``{"event_id": ...}``; ``GET /_admin/events``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tools.fakepsp import ledgerpay_api, stripe_api
from tools.fakepsp.runtime import Fake, FakeConfig
from tools.fakepsp.state import BooksError

FAKE_KEY = web.AppKey("fake", Fake)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(config: FakeConfig) -> web.Application:
    fake = Fake(config)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_admin"):
            return await handler(request)
        ledgerpay = path.startswith(ledgerpay_api.PREFIX)
        if fake.outage and (
            fake.outage_dialect is None or fake.outage_dialect == ("ledgerpay" if ledgerpay else "stripe")
        ):
            fake.books.count("outage")
            if ledgerpay:
                return ledgerpay_api.lp_error(503, "UNAVAILABLE", "LedgerPay is unavailable")
            return stripe_api.stripe_error(
                503, "api_error", "The service is temporarily unavailable (scripted outage)."
            )
        if config.api_key is not None:
            given = request.headers.get("X-Api-Key") if ledgerpay else request.headers.get("Authorization", "")
            expected = config.api_key if ledgerpay else f"Bearer {config.api_key}"
            if given != expected:
                if ledgerpay:
                    return ledgerpay_api.lp_error(401, "UNAUTHORIZED", "bad X-Api-Key")
                return stripe_api.stripe_error(401, "invalid_request_error", "Invalid API Key provided")
        latency = config.ledgerpay_latency_ms if ledgerpay else config.latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)
        return await handler(request)

    app = web.Application(middlewares=[gate])
    app[FAKE_KEY] = fake
    app.add_routes(stripe_api.routes(fake))
    app.add_routes(ledgerpay_api.routes(fake))
    app.add_routes(admin_routes(fake))

    async def on_cleanup(_: web.Application) -> None:
        await fake.sender.close()
        fake.books.save()

    app.on_cleanup.append(on_cleanup)
    return app


def admin_routes(fake: Fake) -> list[web.RouteDef]:
    books = fake.books

    async def body_of(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="a JSON object is expected")
        return data

    def refused(error: BooksError) -> web.Response:
        return web.json_response({"error": error.code, "message": error.message}, status=error.status)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**books.stats(), "outage": fake.outage, "webhooks_pending": fake.sender.pending})

    async def outage(request: web.Request) -> web.Response:
        body = await body_of(request)
        dialect = body.get("dialect")
        if dialect not in (None, "stripe", "ledgerpay"):
            return web.json_response({"error": "dialect_invalid", "message": "stripe or ledgerpay"}, status=400)
        fake.outage = bool(body.get("on", True))
        fake.outage_dialect = dialect
        return web.json_response({"outage": fake.outage, "dialect": dialect})

    async def open_dispute(request: web.Request) -> web.Response:
        data = await body_of(request)
        async with fake.lock:
            try:
                d, p = books.open_dispute(
                    str(data.get("charge", "")), data.get("amount"), str(data.get("reason", "fraudulent"))
                )
            except BooksError as error:
                return refused(error)
            if p["dialect"] == "stripe":
                fake.sender.publish("charge.dispute.created", stripe_api.dispute(d))
            books.save()
        return web.json_response(stripe_api.dispute(d), status=201)

    async def close_dispute(request: web.Request) -> web.Response:
        data = await body_of(request)
        async with fake.lock:
            try:
                d, p = books.close_dispute(request.match_info["id"], str(data.get("status", "")))
            except BooksError as error:
                return refused(error)
            if p["dialect"] == "stripe":
                fake.sender.publish("charge.dispute.closed", stripe_api.dispute(d))
            books.save()
        return web.json_response(stripe_api.dispute(d))

    async def make_payout(request: web.Request) -> web.Response:
        data = await body_of(request)
        dialect = data.get("dialect", "stripe")
        if dialect not in ("stripe", "ledgerpay"):
            raise web.HTTPBadRequest(text="dialect is stripe or ledgerpay")
        async with fake.lock:
            payout = books.payout(dialect, str(data.get("currency", "USD")))
            books.save()
        if payout is None:
            return web.json_response({"payout": None, "message": "nothing to pay out"})
        return web.json_response(payout, status=201)

    async def payout_report(request: web.Request) -> web.Response:
        payout = books.payouts.get(request.match_info["id"])
        if payout is None:
            raise web.HTTPNotFound(text="no such payout")
        lines = [t for t in books.txns if t["id"] in set(payout["balance_transactions"])]
        return web.json_response(
            {
                "payout": payout,
                "lines": lines,
                "gross": sum(t["amount"] for t in lines),
                "fees": sum(t["fee"] for t in lines),
                "net": sum(t["net"] for t in lines),
            }
        )

    async def webhooks(_: web.Request) -> web.Response:
        return web.json_response(
            {"planned": fake.sender.planned, "log": fake.sender.log, "pending": fake.sender.pending}
        )

    async def resend(request: web.Request) -> web.Response:
        sent = fake.sender.resend(str((await body_of(request)).get("event_id", "")))
        return web.json_response({"resent": sent}, status=200 if sent else 404)

    async def events(_: web.Request) -> web.Response:
        return web.json_response({"data": books.events})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    return [
        web.get("/_admin/stats", stats),
        web.post("/_admin/outage", outage),
        web.post("/_admin/disputes", open_dispute),
        web.post("/_admin/disputes/{id}/close", close_dispute),
        web.post("/_admin/payouts", make_payout),
        web.get("/_admin/reports/payouts/{id}", payout_report),
        web.get("/_admin/webhooks", webhooks),
        web.post("/_admin/webhooks/resend", resend),
        web.get("/_admin/events", events),
        web.get("/_admin/health", health),
    ]


async def serve(config: FakeConfig, stop: asyncio.Event, *, started: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set; ``started`` gets the bound port (``port=0`` picks a free one)."""
    runner = web.AppRunner(build_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    try:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else config.port
        if started is not None:
            started(port)
        await stop.wait()
    finally:
        await runner.cleanup()
