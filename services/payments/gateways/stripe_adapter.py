"""The Stripe adapter: the gateway port over Stripe's official SDK (``stripe``), asynchronously.

One ``StripeClient`` per adapter, on the SDK's aiohttp client (``AIOHTTPClient``) with our timeouts and
no SDK-level retries (``max_network_retries=0``: whether and when to retry is the payments service's
decision, always with the same idempotency key). The base URL comes from settings, so the same code
talks to Stripe or to ``settle fakepsp``.

How answers map to outcomes (the port's four):

* a PaymentIntent with status ``succeeded`` → ``succeeded`` (``charge_id`` = the PaymentIntent id);
  ``processing``/``requires_action``/other non-final statuses → ``unknown`` (inquire later);
* HTTP 402 ``card_error`` → ``declined``, ``code`` = ``"<code>/<decline_code>"`` (``card_declined/
  insufficient_funds``), or just the code when there is no decline code or it repeats it (``expired_card``);
* other 4xx (invalid request, authentication, permission, rate limit 429) → ``error``: Stripe refused the
  request before processing it. Except ``idempotency_error``: a key reused with other parameters (400) or
  still in flight (409) means an earlier request with this key exists and may have charged → ``unknown``;
* **5xx: 503 → ``error``, any other 5xx (500, 502, 504 …) → ``unknown``.** Stripe documents that a 500
  may or may not have been processed (a retry with the same key is safe); 503 is the "unavailable,
  nothing done" answer (our fakepsp's outage), so only it is taken as "not charged";
* transport: connection refused / DNS failure / connect timeout → ``error`` (nothing was sent); a read
  timeout, a connection closed mid-answer or any other failure after sending → ``unknown``.

Inquiry searches PaymentIntents by ``metadata['attempt_id']`` (Search API); none found → ``found=False``.
An inquiry that gets no answer (timeout, outage) is ``found=True`` with an ``unknown`` result: ``found`` is
False only when the processor said it has nothing. (Stripe's search index lags writes by up to a minute in
production; a caller should not take ``found=False`` seconds after a timeout as final — fakepsp has no lag.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import stripe

from services.payments.gateways.port import (
    BalanceTransaction,
    ChargeRequest,
    ChargeResult,
    InquiryResult,
    Outcome,
    RefundResult,
)

MAX_BALANCE_PAGES = 1000
PAGE_LIMIT = 100


class StripeGateway:
    """Implements :class:`services.payments.gateways.port.Gateway` for Stripe."""

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str,
        timeout_s: float,
        connect_timeout_s: float,
        name: str = "stripe",
    ) -> None:
        assert timeout_s > 0 and connect_timeout_s > 0
        self.name = name
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s)),
        )
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")},
            http_client=self._http,
            max_network_retries=0,
        )

    # --- the port -------------------------------------------------------------------------------------------
    async def charge(self, request: ChargeRequest) -> ChargeResult:
        assert request.amount_minor > 0
        params: dict[str, Any] = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "payment_method": request.token,
            "confirm": True,
            "metadata": {
                "attempt_id": request.attempt_id,
                "invoice_number": request.invoice_number,
                "renter_id": request.renter_id,
            },
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": request.idempotency_key},
            )
        except Exception as error:  # every failure becomes an outcome: the port never raises for an answer
            return self._failed_charge(error)
        return result_of_intent(intent)

    async def inquire(self, attempt_id: str, idempotency_key: str) -> InquiryResult:
        query = f"metadata['attempt_id']:'{_quoted(attempt_id)}'"
        try:
            found = await self._client.v1.payment_intents.search_async({"query": query, "limit": 10})
        except Exception as error:
            return inquiry_failed(error)
        intents = list(found.data)
        if not intents:
            return InquiryResult(found=False)
        # One attempt, one key: more than one intent would be a double charge — report the succeeded one.
        succeeded = [i for i in intents if i.status == "succeeded"]
        return InquiryResult(found=True, result=result_of_intent(succeeded[0] if succeeded else intents[0]))

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        assert amount_minor > 0
        params: dict[str, Any] = {
            "amount": amount_minor,
            "metadata": {"idempotency_key": idempotency_key},
            ("payment_intent" if charge_id.startswith("pi_") else "charge"): charge_id,
        }
        try:
            refund = await self._client.v1.refunds.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        except Exception as error:
            outcome, code, message = classify(error)
            if outcome == "declined":
                outcome = "error"
            return RefundResult(outcome=outcome, code=code, message=message)
        status = refund.status
        if status == "succeeded":
            return RefundResult(outcome="succeeded", refund_id=refund.id)
        if status in ("failed", "canceled"):
            return RefundResult(outcome="declined", refund_id=refund.id, code=_field(refund, "failure_reason"))
        return RefundResult(outcome="unknown", refund_id=refund.id, message=f"refund status {status}")

    async def balance_transactions(self, *, since: datetime | None = None) -> list[BalanceTransaction]:
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "expand": ["data.source"]}
        if since is not None:
            params["created"] = {"gte": int(since.timestamp())}
        lines: list[BalanceTransaction] = []
        for _ in range(MAX_BALANCE_PAGES):
            page = await self._client.v1.balance_transactions.list_async(params)  # type: ignore[arg-type]
            lines.extend(balance_line(t) for t in page.data)
            if not page.has_more or not page.data:
                return lines
            params["starting_after"] = page.data[-1].id
        raise RuntimeError(f"more than {MAX_BALANCE_PAGES} pages of balance transactions")

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # --- mapping ---------------------------------------------------------------------------------------------
    def _failed_charge(self, error: BaseException) -> ChargeResult:
        outcome, code, message = classify(error)
        charge_id = None
        if isinstance(error, stripe.CardError):
            intent = _error_body(error).get("payment_intent") or {}
            charge_id = intent.get("id") if isinstance(intent, dict) else None
        return ChargeResult(outcome=outcome, charge_id=charge_id, code=code, message=message)


def inquiry_failed(error: BaseException) -> InquiryResult:
    """The inquiry itself got no answer: ``found`` is only False when the processor *said* so, so this is
    ``found=True`` with an ``unknown`` result — still undecided, ask again later."""
    _, code, message = classify(error)
    return InquiryResult(found=True, result=ChargeResult(outcome="unknown", code=code, message=f"inquiry: {message}"))


def result_of_intent(intent: Any) -> ChargeResult:
    status = intent.status
    if status == "succeeded":
        return ChargeResult(outcome="succeeded", charge_id=intent.id)
    error = _field(intent, "last_payment_error")
    if status in ("requires_payment_method", "canceled") and error:
        return ChargeResult(
            outcome="declined",
            charge_id=intent.id,
            code=decline_code(_field(error, "code"), _field(error, "decline_code")),
            message=_field(error, "message") or "",
        )
    return ChargeResult(outcome="unknown", charge_id=intent.id, message=f"payment intent status {status}")


def decline_code(code: str | None, decline: str | None) -> str | None:
    if decline and code and decline != code:
        return f"{code}/{decline}"
    return code or decline


def classify(error: BaseException) -> tuple[Outcome, str | None, str]:
    """An exception of a call → (outcome, code, message); see the module docstring for the table."""
    message = str(getattr(error, "user_message", None) or error)[:500]
    if isinstance(error, stripe.CardError):
        return "declined", decline_code(error.code, _error_body(error).get("decline_code")), message
    if isinstance(error, stripe.IdempotencyError):
        return "unknown", "idempotency_error", message
    if isinstance(error, stripe.APIConnectionError):
        return _transport(error.__cause__ or error), "connection_error", message
    if isinstance(error, stripe.StripeError):
        status = error.http_status or 0
        code = error.code or (f"http_{status}" if status else None)
        if status == 409:
            return "unknown", code, message
        if 400 <= status < 500 or status == 503:
            return "error", code, message
        return "unknown", code, message
    return _transport(error), type(error).__name__, message


def _error_body(error: stripe.StripeError) -> dict[str, Any]:
    body = error.json_body if isinstance(error.json_body, dict) else {}
    inner = body.get("error")
    return inner if isinstance(inner, dict) else {}


def _transport(cause: BaseException) -> Outcome:
    """Nothing was sent (``error``) only when the connection was never made."""
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return "error"
    if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, aiohttp.ServerDisconnectedError):
        return "error"
    if isinstance(cause, ConnectionRefusedError):
        return "error"
    return "unknown"  # read timeouts, resets, closed mid-answer, anything else after sending


def _quoted(value: str) -> str:
    """Stripe search strings are single-quoted; a quote inside is escaped with a backslash."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def balance_line(t: Any) -> BalanceTransaction:
    source = _field(t, "source")
    reference = None
    source_id = source
    if source is not None and not isinstance(source, str):  # expanded: the charge, refund, dispute or payout
        source_id = _field(source, "id")
        metadata = _field(source, "metadata")
        if metadata is not None:
            reference = _field(metadata, "attempt_id") or _field(metadata, "idempotency_key")
    return BalanceTransaction(
        id=t["id"],
        type=t["type"],
        source=str(source_id),
        amount_minor=int(t["amount"]),
        fee_minor=int(t["fee"]),
        net_minor=int(t["net"]),
        currency=str(t["currency"]).upper(),
        created=datetime.fromtimestamp(int(t["created"]), UTC),
        available_on=datetime.fromtimestamp(int(t["available_on"]), UTC),
        reference=reference,
    )


def _field(obj: Any, name: str) -> Any:
    """A field of a StripeObject (or dict), None when absent (StripeObject has no ``get``)."""
    return obj[name] if name in obj else None  # noqa: SIM401 (no .get on StripeObject)
