"""The LedgerPay adapter: the gateway port over LedgerPay's JSON API, with aiohttp.

LedgerPay (our second processor dialect; ``settle fakepsp`` serves it under ``/ledgerpay``) takes
``X-Request-Id`` as its idempotency key and ``reference`` (our attempt id) on every charge. Outcomes:

* ``result: APPROVED`` → ``succeeded`` (``charge_id`` = LedgerPay's id, ``fee_minor`` from ``fee``);
* ``result: REFUSED`` → ``declined`` with ``code`` = the reason code (``51``, ``05``, ``43``, ``54``);
* ``result: ERROR`` in a 2xx/4xx answer, HTTP 4xx, or HTTP 503 → ``error`` (LedgerPay says it processed
  nothing); except ``409 REQUEST_IN_PROGRESS`` and ``422 REQUEST_ID_REUSED`` → ``unknown`` (an earlier
  request with this id exists: only an inquiry tells what it did);
* any other 5xx, a body we cannot read, a read timeout or a connection closed mid-answer → ``unknown``;
  connection refused or a connect timeout → ``error``.

Inquiry lists charges by ``reference``. The statement (``/v1/entries``) is read page by page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from services.payments.gateways.port import (
    BalanceTransaction,
    ChargeRequest,
    ChargeResult,
    InquiryResult,
    Outcome,
    RefundResult,
)

MAX_STATEMENT_PAGES = 1000
PAGE_LIMIT = 200
TYPES = {
    "SALE": "charge",
    "REFUND": "refund",
    "CHARGEBACK": "dispute",
    "CHARGEBACK_REVERSAL": "dispute_reversal",
    "SETTLEMENT": "payout",
}
"""LedgerPay entry kinds → the port's balance transaction types."""


class LedgerPayGateway:
    """Implements :class:`services.payments.gateways.port.Gateway` for LedgerPay."""

    def __init__(
        self,
        *,
        api_base: str,
        api_key: str | None,
        timeout_s: float,
        connect_timeout_s: float,
        name: str = "ledgerpay",
    ) -> None:
        assert timeout_s > 0 and connect_timeout_s > 0
        self.name = name
        self._base = api_base.rstrip("/") + "/v1"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s))
        self._headers = {"X-Api-Key": api_key} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _call(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, key: str | None = None, **params: Any
    ) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, JSON object or None when the body is not one). Transport errors propagate."""
        headers = {"X-Request-Id": key} if key else {}
        async with self._client().request(
            method, self._base + path, json=json, headers=headers, params=params or None
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            return response.status, body if isinstance(body, dict) else None

    # --- the port -------------------------------------------------------------------------------------------
    async def charge(self, request: ChargeRequest) -> ChargeResult:
        assert request.amount_minor > 0
        payload = {
            "reference": request.attempt_id,
            "amount": {"value": request.amount_minor, "currency": request.currency.upper()},
            "token": request.token,
            "invoice": request.invoice_number,
            "customer": request.renter_id,
        }
        try:
            status, body = await self._call("POST", "/charges", json=payload, key=request.idempotency_key)
        except Exception as error:  # the port never raises for an answer (or its absence)
            return ChargeResult(outcome=transport_outcome(error), code=type(error).__name__, message=str(error)[:500])
        return charge_result(status, body)

    async def inquire(self, attempt_id: str, idempotency_key: str) -> InquiryResult:
        try:
            status, body = await self._call("GET", "/charges", reference=attempt_id)
        except Exception as error:
            return InquiryResult(
                found=True, result=ChargeResult(outcome="unknown", code=type(error).__name__, message="inquiry failed")
            )
        if status != 200 or body is None:
            return InquiryResult(
                found=True, result=ChargeResult(outcome="unknown", code=f"http_{status}", message="inquiry failed")
            )
        charges = body.get("charges") or []
        if not charges:
            return InquiryResult(found=False)
        approved = [c for c in charges if c.get("result") == "APPROVED"]
        return InquiryResult(found=True, result=charge_result(200, approved[0] if approved else charges[0]))

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        assert amount_minor > 0
        payload = {"charge_id": charge_id, "amount": {"value": amount_minor}}
        try:
            status, body = await self._call("POST", "/refunds", json=payload, key=idempotency_key)
        except Exception as error:
            return RefundResult(outcome=transport_outcome(error), code=type(error).__name__, message=str(error)[:500])
        result = (body or {}).get("result")
        if result == "APPROVED":
            return RefundResult(outcome="succeeded", refund_id=(body or {}).get("id"))
        if result == "REFUSED":
            return RefundResult(
                outcome="declined", code=(body or {}).get("reason_code"), message=(body or {}).get("reason", "")
            )
        return RefundResult(outcome=status_outcome(status, body), code=(body or {}).get("error_code"))

    async def balance_transactions(self, *, since: datetime | None = None) -> list[BalanceTransaction]:
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        if since is not None:
            params["since"] = int(since.timestamp())
        lines: list[BalanceTransaction] = []
        for _ in range(MAX_STATEMENT_PAGES):
            status, body = await self._call("GET", "/entries", **params)
            if status != 200 or body is None:
                raise RuntimeError(f"LedgerPay statement answered HTTP {status}")
            lines.extend(entry_line(e) for e in body.get("entries") or [])
            cursor = body.get("next_cursor")
            if not cursor:
                return lines
            params["cursor"] = cursor
        raise RuntimeError(f"more than {MAX_STATEMENT_PAGES} pages of LedgerPay entries")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def charge_result(status: int, body: dict[str, Any] | None) -> ChargeResult:
    result = (body or {}).get("result")
    if body is not None and result == "APPROVED":
        fee = (body.get("fee") or {}).get("value")
        return ChargeResult(outcome="succeeded", charge_id=body.get("id"), fee_minor=fee)
    if body is not None and result == "REFUSED":
        return ChargeResult(
            outcome="declined", charge_id=body.get("id"), code=body.get("reason_code"), message=body.get("reason", "")
        )
    code = (body or {}).get("error_code") or f"http_{status}"
    return ChargeResult(outcome=status_outcome(status, body), code=code, message=(body or {}).get("message", ""))


def status_outcome(status: int, body: dict[str, Any] | None) -> Outcome:
    """An answer that is neither APPROVED nor REFUSED."""
    code = (body or {}).get("error_code")
    if code in ("REQUEST_IN_PROGRESS", "REQUEST_ID_REUSED"):
        return "unknown"
    if body is not None and body.get("result") == "ERROR" and status < 500:
        return "error"
    if 400 <= status < 500 or status == 503:
        return "error"
    return "unknown"


def transport_outcome(error: BaseException) -> Outcome:
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return "error"
    if isinstance(error, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return "error"
    return "unknown"


def entry_line(e: dict[str, Any]) -> BalanceTransaction:
    return BalanceTransaction(
        id=str(e["id"]),
        type=TYPES.get(str(e["kind"]), "adjustment"),
        source=str(e["source"]),
        amount_minor=int(e["gross"]),
        fee_minor=int(e["fee"]),
        net_minor=int(e["net"]),
        currency=str(e["currency"]).upper(),
        created=_parse_time(str(e["booked_at"])),
        available_on=_parse_time(str(e["value_date"])),
        reference=e.get("reference"),
    )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
