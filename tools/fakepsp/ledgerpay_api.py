"""The LedgerPay dialect: a second, different processor in the same process (prefix ``/ledgerpay/v1``).

JSON in and out; ``X-Request-Id`` is the idempotency key (a replay answers the stored result with
``X-Replayed: true``; the same id with another body is ``422 REQUEST_ID_REUSED``, an id still in flight
``409 REQUEST_IN_PROGRESS``); ``X-Api-Key`` authenticates. Every answer is slower than Stripe's
(``--ledgerpay-latency-ms``). A charge answers ``result``:

* ``APPROVED`` (HTTP 201) — charged; ``fee`` is 2.5 % + 25 minor units;
* ``REFUSED`` (HTTP 200) — the issuer declined; ``reason_code`` is ISO 8583-like: ``51`` insufficient
  funds, ``05`` do not honour (soft), ``43`` stolen card, ``54`` expired card (hard);
* ``ERROR`` (HTTP 200) — LedgerPay failed before processing: nothing was charged (not stored under the
  request id, so a retry with the same id runs again).

An outage answers HTTP 503 ``{"result": "ERROR", "error_code": "UNAVAILABLE"}``. The statement
(``GET /ledgerpay/v1/entries``) lists SALE, REFUND, CHARGEBACK, CHARGEBACK_REVERSAL and SETTLEMENT
entries oldest first, paged with ``cursor``/``next_cursor``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

from tools.fakepsp import tokens
from tools.fakepsp.runtime import Delivery, Fake, Stored
from tools.fakepsp.state import BooksError

PREFIX = "/ledgerpay/v1"
MAX_PAGE = 200
REASONS = {"51": "insufficient funds", "05": "do not honour", "43": "stolen card", "54": "expired card"}
KINDS = {
    "charge": "SALE",
    "refund": "REFUND",
    "dispute": "CHARGEBACK",
    "dispute_reversal": "CHARGEBACK_REVERSAL",
    "payout": "SETTLEMENT",
}


def lp_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"result": "ERROR", "error_code": code, "message": message}, status=status)


def iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def charge_body(p: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": p["id"],
        "reference": p["metadata"].get("attempt_id", ""),
        "invoice": p["metadata"].get("invoice_number", ""),
        "amount": {"value": p["amount"], "currency": p["currency"]},
        "refunded": {"value": p["amount_refunded"], "currency": p["currency"]},
        "created_at": iso(p["created"]),
    }
    if p["status"] == "succeeded":
        body.update(result="APPROVED", fee={"value": p["fee"], "currency": p["currency"]})
    else:
        code = p["decline"]["reason_code"]
        body.update(result="REFUSED", reason_code=code, reason=REASONS.get(code, "refused"))
    return body


def routes(fake: Fake) -> list[web.RouteDef]:
    books = fake.books

    def conflict(kind: str, message: str) -> web.Response:
        if kind == "mismatch":
            return lp_error(422, "REQUEST_ID_REUSED", "X-Request-Id was already used with another request body")
        return lp_error(409, "REQUEST_IN_PROGRESS", "a request with this X-Request-Id is still being processed")

    async def read_json(request: web.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def create_charge(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        key = request.headers.get("X-Request-Id")
        if body is None or not key:
            return lp_error(400, "BAD_REQUEST", "a JSON object body and an X-Request-Id header are required")
        amount = body.get("amount") or {}
        value, currency = amount.get("value"), str(amount.get("currency", ""))
        token, reference = str(body.get("token", "")), str(body.get("reference", ""))
        invoice = str(body.get("invoice", ""))
        if not isinstance(value, int) or value <= 0 or len(currency) != 3 or not reference:
            return lp_error(400, "BAD_REQUEST", "amount.value (positive integer), amount.currency and reference")
        if not tokens.is_known(token):
            return lp_error(400, "UNKNOWN_TOKEN", f"unknown token {token!r}")

        async def execute() -> tuple[Stored, bool, Delivery]:
            script = tokens.script_for(token, books.executed_before(token, invoice))
            books.note_executed(token, invoice)
            if script.kind == "error500":
                books.count("error500")
                return (
                    Stored(200, {"result": "ERROR", "error_code": "SYSTEM_ERROR", "reference": reference}),
                    False,
                    "now",
                )
            metadata = {"attempt_id": reference, "invoice_number": invoice, "customer": str(body.get("customer", ""))}
            decline = None
            if script.kind == "decline":
                decline = {"reason_code": script.reason_code, "code": script.code, "decline_code": script.decline_code}
            try:
                p = books.record_payment(
                    "ledgerpay",
                    amount_minor=value,
                    currency=currency,
                    token=token,
                    metadata=metadata,
                    idempotency_key=key,
                    succeeded=decline is None,
                    decline=decline,
                )
            except BooksError as error:
                return Stored(400, {"result": "ERROR", "error_code": error.code.upper()}), False, "now"
            books.count("charge" if decline is None else "declined")
            delivery: Delivery = {"slow": "slow", "timeout": "hang", "drop": "drop"}.get(script.kind, "now")  # type: ignore[assignment]
            return Stored(201 if decline is None else 200, charge_body(p)), True, delivery

        return await fake.idempotent(
            request,
            dialect="ledgerpay",
            key=key,
            params=body,
            execute=execute,
            render_conflict=conflict,
            replay_header="X-Replayed",
        )

    async def get_charge(request: web.Request) -> web.Response:
        p = books.payments.get(request.match_info["id"])
        if p is None or p["dialect"] != "ledgerpay":
            return lp_error(404, "NOT_FOUND", "no such charge")
        return web.json_response(charge_body(p))

    async def find_charges(request: web.Request) -> web.Response:
        reference = request.query.get("reference")
        if not reference:
            return lp_error(400, "BAD_REQUEST", "reference is required")
        found = books.search("ledgerpay", {"attempt_id": reference})
        return web.json_response({"charges": [charge_body(p) for p in found]})

    async def create_refund(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        key = request.headers.get("X-Request-Id")
        if body is None or not key:
            return lp_error(400, "BAD_REQUEST", "a JSON object body and an X-Request-Id header are required")
        value = (body.get("amount") or {}).get("value")
        if value is not None and not isinstance(value, int):
            return lp_error(400, "BAD_REQUEST", "amount.value must be an integer")

        async def execute() -> tuple[Stored, bool, Delivery]:
            try:
                r, _ = books.refund("ledgerpay", str(body.get("charge_id", "")), value, {"request_id": key})
            except BooksError as error:
                if error.status == 404:
                    return (
                        Stored(404, {"result": "ERROR", "error_code": "NOT_FOUND", "message": error.message}),
                        False,
                        "now",
                    )
                return Stored(200, {"result": "REFUSED", "reason_code": "RF01", "reason": error.message}), True, "now"
            books.count("refund")
            return (
                Stored(
                    201,
                    {
                        "result": "APPROVED",
                        "id": r["id"],
                        "charge_id": r["payment_id"],
                        "amount": {"value": r["amount"], "currency": r["currency"]},
                    },
                ),
                True,
                "now",
            )

        return await fake.idempotent(
            request,
            dialect="ledgerpay",
            key=key,
            params=body,
            execute=execute,
            render_conflict=conflict,
            replay_header="X-Replayed",
        )

    async def entries(request: web.Request) -> web.Response:
        q = request.query
        try:
            since = int(q.get("since", "0"))
            limit = min(int(q.get("limit", "50")), MAX_PAGE)
        except ValueError:
            return lp_error(400, "BAD_REQUEST", "since and limit are integers")
        rows = [t for t in books.txns if t["dialect"] == "ledgerpay" and t["created"] >= since]
        if "cursor" in q:
            ids = [t["id"] for t in rows]
            if q["cursor"] not in ids:
                return lp_error(400, "BAD_CURSOR", "unknown cursor")
            rows = rows[ids.index(q["cursor"]) + 1 :]
        page = rows[: max(limit, 1)]
        return web.json_response(
            {
                "entries": [
                    {
                        "id": t["id"],
                        "kind": KINDS[t["type"]],
                        "source": t["source"],
                        "charge_id": t["payment_id"],
                        "reference": t["metadata"].get("attempt_id"),
                        "gross": t["amount"],
                        "fee": t["fee"],
                        "net": t["net"],
                        "currency": t["currency"],
                        "booked_at": iso(t["created"]),
                        "value_date": iso(t["available_on"]),
                    }
                    for t in page
                ],
                "next_cursor": page[-1]["id"] if len(rows) > len(page) else None,
            }
        )

    return [
        web.post(f"{PREFIX}/charges", create_charge),
        web.get(f"{PREFIX}/charges", find_charges),
        web.get(f"{PREFIX}/charges/{{id}}", get_charge),
        web.post(f"{PREFIX}/refunds", create_refund),
        web.get(f"{PREFIX}/entries", entries),
    ]
