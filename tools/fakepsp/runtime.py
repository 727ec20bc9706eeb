"""What every route of the fake processor shares: configuration, the books, webhooks, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from tools.fakepsp.state import Books, Dialect
from tools.fakepsp.webhooks import Sender, WebhookConfig

Delivery = Literal["now", "slow", "hang", "drop"]


@dataclass(frozen=True)
class FakeConfig:
    host: str = "127.0.0.1"
    port: int = 12111
    api_key: str | None = None
    """When set, requests must carry it (Stripe: ``Authorization: Bearer``; LedgerPay: ``X-Api-Key``)."""
    latency_ms: int = 0
    """Added to every Stripe-dialect answer."""
    ledgerpay_latency_ms: int = 150
    """Added to every LedgerPay answer (it is the slower processor)."""
    slow_ms: int = 1500
    """How late ``tok_slow`` answers."""
    hang_ms: int = 30_000
    """How long ``tok_timeout_after_charge`` holds its answer (longer than any client timeout)."""
    state_file: Path | None = None
    id_namespace: str = ""
    """See ``Books.namespace``."""
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)


@dataclass(frozen=True)
class Stored:
    """An idempotent result: what the first request with a key answered."""

    status: int
    body: dict[str, Any]


Execute = Callable[[], Awaitable[tuple[Stored, bool, Delivery]]]
"""Runs a request once: (answer, whether to store it under the key, how to deliver it)."""


class Fake:
    """The processor process: one per ``settle fakepsp``."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.books = Books.load(config.state_file)
        self.books.namespace = config.id_namespace
        self.sender = Sender(self.books, config.webhooks)
        self.outage = False
        self.outage_dialect: str | None = None
        """With ``outage``: only this dialect is down (None: both)."""
        self._in_flight: set[str] = set()
        self.lock = asyncio.Lock()
        """Serializes the books' mutations (handlers await between reading and writing)."""

    async def idempotent(
        self,
        request: web.Request,
        *,
        dialect: Dialect,
        key: str | None,
        params: Any,
        execute: Execute,
        render_conflict: Callable[[str, str], web.Response],
        replay_header: str,
    ) -> web.StreamResponse:
        """Run ``execute`` once per key; a replay with the same parameters answers the stored result,
        other parameters are a conflict (Stripe's ``idempotency_error``), as is a key still in flight."""
        endpoint = f"{request.method} {request.path}"
        fingerprint = hashlib.sha256(json.dumps([endpoint, params], sort_keys=True).encode()).hexdigest()
        slot = f"{dialect}:{key}" if key else None
        if slot is not None:
            stored = self.books.idempotency.get(slot)
            if stored is not None:
                if stored["fingerprint"] != fingerprint:
                    self.books.count("idempotency_mismatch")
                    return render_conflict(
                        "mismatch",
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{key}' if you meant to execute a different request.",
                    )
                self.books.count("replay")
                return web.json_response(
                    stored["body"],
                    status=stored["status"],
                    headers={replay_header: "true", "Idempotency-Key": key or ""},
                )
            if slot in self._in_flight:
                self.books.count("idempotency_in_flight")
                return render_conflict(
                    "in_flight", "There is currently another in-progress request using this Idempotent Key."
                )
            self._in_flight.add(slot)
        try:
            async with self.lock:
                answer, keep, delivery = await execute()
                if keep and slot is not None:
                    self.books.idempotency[slot] = {
                        "fingerprint": fingerprint,
                        "status": answer.status,
                        "body": answer.body,
                    }
                self.books.save()
        finally:
            if slot is not None:
                self._in_flight.discard(slot)
        return await self.deliver(request, answer, delivery)

    async def deliver(self, request: web.Request, answer: Stored, delivery: Delivery) -> web.StreamResponse:
        if delivery == "slow":
            await asyncio.sleep(self.config.slow_ms / 1000)
        elif delivery == "hang":
            await asyncio.sleep(self.config.hang_ms / 1000)
        elif delivery == "drop":
            if request.transport is not None:
                request.transport.close()  # the client sees the connection end without an answer
            return web.Response(status=204)
        return web.json_response(answer.body, status=answer.status)
