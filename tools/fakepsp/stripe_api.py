"""The Stripe dialect: the subset of Stripe's API the Stripe adapter (and its SDK) speaks.

Form-encoded POSTs with an ``Idempotency-Key`` header; JSON answers shaped like Stripe's objects;
errors as ``{"error": {"type", "code", "decline_code", "message", "param"}}`` with Stripe's statuses
(400 invalid request or ``idempotency_error``, 402 card error, 404 missing, 409 key in flight, 500
``api_error``, 503 during an outage). Replays carry ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tools.fakepsp import tokens
from tools.fakepsp.runtime import Delivery, Fake, Stored
from tools.fakepsp.state import BooksError

MAX_LIST_LIMIT = 100


def stripe_error(status: int, type_: str, message: str, **extra: Any) -> web.Response:
    error = {"type": type_, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return web.json_response({"error": error}, status=status)


def books_error(error: BooksError) -> web.Response:
    return stripe_error(error.status, "invalid_request_error", error.message, code=error.code, param=error.param)


def metadata_of(form: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in form.items():
        match = re.fullmatch(r"metadata\[([^\]]+)\]", name)
        if match:
            found[match.group(1)] = str(value)
    return found


# --- objects ----------------------------------------------------------------------------------------------


def payment_intent(p: dict[str, Any]) -> dict[str, Any]:
    succeeded = p["status"] == "succeeded"
    decline = p["decline"]
    return {
        "id": p["id"],
        "object": "payment_intent",
        "amount": p["amount"],
        "amount_received": p["amount"] if succeeded else 0,
        "currency": p["currency"].lower(),
        "status": "succeeded" if succeeded else "requires_payment_method",
        "metadata": p["metadata"],
        "payment_method": p["token"],
        "latest_charge": p["charge_id"],
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "created": p["created"],
        "livemode": False,
        "last_payment_error": None if decline is None else {"type": "card_error", "charge": p["charge_id"], **decline},
    }


def charge(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p["charge_id"],
        "object": "charge",
        "amount": p["amount"],
        "amount_captured": p["amount"] if p["status"] == "succeeded" else 0,
        "amount_refunded": p["amount_refunded"],
        "refunded": p["amount_refunded"] == p["amount"],
        "currency": p["currency"].lower(),
        "payment_intent": p["id"],
        "metadata": p["metadata"],
        "status": "succeeded" if p["status"] == "succeeded" else "failed",
        "created": p["created"],
        "livemode": False,
    }


def refund(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "object": "refund",
        "amount": r["amount"],
        "charge": r["charge_id"],
        "payment_intent": r["payment_id"],
        "currency": r["currency"].lower(),
        "status": r["status"],
        "metadata": r["metadata"],
        "created": r["created"],
    }


def dispute(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": d["id"],
        "object": "dispute",
        "amount": d["amount"],
        "charge": d["charge_id"],
        "payment_intent": d["payment_id"],
        "currency": d["currency"].lower(),
        "reason": d["reason"],
        "status": d["status"],
        "created": d["created"],
        "metadata": {},
        "livemode": False,
    }


def payout(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"],
        "object": "payout",
        "amount": p["amount"],
        "currency": p["currency"].lower(),
        "arrival_date": p["arrival_date"],
        "created": p["created"],
        "status": p["status"],
        "automatic": True,
    }


# --- routes -----------------------------------------------------------------------------------------------


def routes(fake: Fake) -> list[web.RouteDef]:
    books = fake.books

    def conflict(kind: str, message: str) -> web.Response:
        status = 400 if kind == "mismatch" else 409
        return stripe_error(status, "idempotency_error", message)

    async def create_payment_intent(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        params = sorted((k, str(v)) for k, v in form.items())
        token = str(form.get("payment_method", ""))
        metadata = metadata_of(form)
        try:
            amount = int(str(form.get("amount", "")))
        except ValueError:
            return stripe_error(400, "invalid_request_error", "Invalid integer: amount", param="amount")
        currency = str(form.get("currency", ""))
        if amount <= 0:
            return stripe_error(400, "invalid_request_error", "Amount must be positive", param="amount")
        if not re.fullmatch(r"[A-Za-z]{3}", currency):
            return stripe_error(400, "invalid_request_error", f"Invalid currency: {currency}", param="currency")
        if str(form.get("confirm", "")).lower() != "true":
            return stripe_error(
                400, "invalid_request_error", "this fake only creates confirmed intents", param="confirm"
            )
        if not tokens.is_known(token):
            return stripe_error(
                400,
                "invalid_request_error",
                f"No such PaymentMethod: '{token}'",
                code="resource_missing",
                param="payment_method",
            )
        key = request.headers.get("Idempotency-Key")
        invoice = metadata.get("invoice_number", "")

        async def execute() -> tuple[Stored, bool, Delivery]:
            script = tokens.script_for(token, books.executed_before(token, invoice))
            books.note_executed(token, invoice)
            if script.kind == "error500":
                books.count("error500")
                return Stored(500, {"error": {"type": "api_error", "message": script.message}}), False, "now"
            try:
                if script.kind == "decline":
                    decline = {"code": script.code, "decline_code": script.decline_code, "message": script.message}
                    p = books.record_payment(
                        "stripe",
                        amount_minor=amount,
                        currency=currency,
                        token=token,
                        metadata=metadata,
                        idempotency_key=key or "",
                        succeeded=False,
                        decline=decline,
                    )
                    books.count("declined")
                    fake.sender.publish("payment_intent.payment_failed", payment_intent(p), request_key=key)
                    body = {
                        "error": {
                            "type": "card_error",
                            "charge": p["charge_id"],
                            **decline,
                            "payment_intent": payment_intent(p),
                        }
                    }
                    return Stored(402, body), True, "now"
                p = books.record_payment(
                    "stripe",
                    amount_minor=amount,
                    currency=currency,
                    token=token,
                    metadata=metadata,
                    idempotency_key=key or "",
                    succeeded=True,
                    decline=None,
                )
            except BooksError as error:
                return (
                    Stored(
                        error.status,
                        {"error": {"type": "invalid_request_error", "message": error.message, "code": error.code}},
                    ),
                    False,
                    "now",
                )
            books.count("charge")
            fake.sender.publish("payment_intent.succeeded", payment_intent(p), request_key=key)
            delivery: Delivery = {"slow": "slow", "timeout": "hang", "drop": "drop"}.get(script.kind, "now")  # type: ignore[assignment]
            return Stored(200, payment_intent(p)), True, delivery

        return await fake.idempotent(
            request,
            dialect="stripe",
            key=key,
            params=params,
            execute=execute,
            render_conflict=conflict,
            replay_header="Idempotent-Replayed",
        )

    async def get_payment_intent(request: web.Request) -> web.Response:
        p = books.payments.get(request.match_info["id"])
        if p is None or p["dialect"] != "stripe":
            return stripe_error(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{request.match_info['id']}'",
                code="resource_missing",
                param="intent",
            )
        return web.json_response(payment_intent(p))

    async def search_payment_intents(request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        clauses = re.findall(r"metadata\[['\"]([^'\"]+)['\"]\]\s*:\s*['\"]([^'\"]*)['\"]", query)
        if not clauses:
            return stripe_error(400, "invalid_request_error", f"unsupported search query: {query!r}", param="query")
        found = books.search("stripe", dict(clauses))
        return web.json_response(
            {
                "object": "search_result",
                "url": "/v1/payment_intents/search",
                "has_more": False,
                "next_page": None,
                "data": [payment_intent(p) for p in found],
            }
        )

    async def create_refund(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        params = sorted((k, str(v)) for k, v in form.items())
        ref = str(form.get("payment_intent") or form.get("charge") or "")
        raw_amount = form.get("amount")
        try:
            amount = None if raw_amount is None else int(str(raw_amount))
        except ValueError:
            return stripe_error(400, "invalid_request_error", "Invalid integer: amount", param="amount")
        metadata = metadata_of(form)
        key = request.headers.get("Idempotency-Key")

        async def execute() -> tuple[Stored, bool, Delivery]:
            try:
                r, p = books.refund("stripe", ref, amount, metadata)
            except BooksError as error:
                body = {
                    "error": {
                        "type": "invalid_request_error",
                        "message": error.message,
                        "code": error.code,
                        "param": error.param,
                    }
                }
                return Stored(error.status, body), error.status != 404, "now"
            books.count("refund")
            fake.sender.publish("charge.refunded", charge(p), request_key=key)
            return Stored(200, refund(r)), True, "now"

        return await fake.idempotent(
            request,
            dialect="stripe",
            key=key,
            params=params,
            execute=execute,
            render_conflict=conflict,
            replay_header="Idempotent-Replayed",
        )

    async def list_balance_transactions(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(int(q.get("limit", "10")), MAX_LIST_LIMIT)
            gte = int(q["created[gte]"]) if "created[gte]" in q else None
            lt = int(q["created[lt]"]) if "created[lt]" in q else None
        except ValueError:
            return stripe_error(400, "invalid_request_error", "Invalid integer", param="limit")
        if limit < 1:
            return stripe_error(400, "invalid_request_error", "limit must be at least 1", param="limit")
        expand = any(v == "data.source" for k, v in q.items() if k.startswith("expand"))
        rows = [
            t
            for t in books.txns_of("stripe")
            if (gte is None or t["created"] >= gte)
            and (lt is None or t["created"] < lt)
            and ("type" not in q or t["type"] == q["type"])
            and ("payout" not in q or t["payout"] == q["payout"])
        ]
        if "starting_after" in q:
            ids = [t["id"] for t in rows]
            if q["starting_after"] not in ids:
                return stripe_error(
                    404,
                    "invalid_request_error",
                    "No such balance transaction",
                    code="resource_missing",
                    param="starting_after",
                )
            rows = rows[ids.index(q["starting_after"]) + 1 :]
        page = rows[:limit]
        return web.json_response(
            {
                "object": "list",
                "url": "/v1/balance_transactions",
                "has_more": len(rows) > limit,
                "data": [balance_transaction(t, expand) for t in page],
            }
        )

    def balance_transaction(t: dict[str, Any], expand: bool) -> dict[str, Any]:
        source: Any = t["source"]
        if expand:
            if t["type"] == "charge":
                source = charge(books.payments[t["payment_id"]])
            elif t["type"] == "refund":
                source = refund(books.refunds[t["source"]])
            elif t["type"] in ("dispute", "dispute_reversal"):
                source = dispute(books.disputes[t["source"]])
            elif t["type"] == "payout":
                source = payout(books.payouts[t["source"]])
        return {
            "id": t["id"],
            "object": "balance_transaction",
            "amount": t["amount"],
            "currency": t["currency"].lower(),
            "fee": t["fee"],
            "net": t["net"],
            "type": t["type"],
            "reporting_category": t["type"],
            "source": source,
            "created": t["created"],
            "available_on": t["available_on"],
            "status": "available" if books.now() >= t["available_on"] else "pending",
            "fee_details": [{"amount": t["fee"], "currency": t["currency"].lower(), "type": "stripe_fee"}]
            if t["fee"]
            else [],
        }

    async def list_payouts(request: web.Request) -> web.Response:
        rows = [payout(p) for p in reversed(books.payouts.values()) if p["dialect"] == "stripe"]
        return web.json_response({"object": "list", "url": "/v1/payouts", "has_more": False, "data": rows})

    async def get_payout(request: web.Request) -> web.Response:
        p = books.payouts.get(request.match_info["id"])
        if p is None or p["dialect"] != "stripe":
            return stripe_error(404, "invalid_request_error", "No such payout", code="resource_missing")
        return web.json_response(payout(p))

    return [
        web.post("/v1/payment_intents", create_payment_intent),
        web.get("/v1/payment_intents/search", search_payment_intents),
        web.get("/v1/payment_intents/{id}", get_payment_intent),
        web.post("/v1/refunds", create_refund),
        web.get("/v1/balance_transactions", list_balance_transactions),
        web.get("/v1/payouts", list_payouts),
        web.get("/v1/payouts/{id}", get_payout),
    ]
