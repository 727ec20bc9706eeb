"""Signed webhook delivery, as messy as a real processor's: late, sometimes twice, out of order, retried.

Each event is signed at every delivery attempt with Stripe's scheme — header
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` — and POSTed to the
configured URL. A seeded random generator, drawn in event-creation order, decides each event's delay
(uniform in ``[delay_min_ms, delay_max_ms]``; two events created close together therefore often arrive
in the other order) and whether it is delivered a second time (``duplicate_per_mille``), so a run is
reproducible given the seed and the sequence of requests. A delivery that fails (connection error or a
non-2xx answer) is retried with exponential backoff up to ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tools.fakepsp.state import Books


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    secret: str = "whsec_fakepsp"
    seed: int = 0
    delay_min_ms: int = 50
    delay_max_ms: int = 400
    duplicate_per_mille: int = 200
    max_attempts: int = 8
    retry_base_ms: int = 200
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        assert 0 <= self.delay_min_ms <= self.delay_max_ms <= 600_000
        assert 0 <= self.duplicate_per_mille <= 1000
        assert 1 <= self.max_attempts <= 50


def sign(payload: str, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for ``payload`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass
class Sender:
    books: Books
    config: WebhookConfig
    log: list[dict[str, Any]] = field(default_factory=list)
    """One entry per delivery attempt: event id, type, copy (1 or 2), attempt, HTTP status or error."""
    planned: list[dict[str, Any]] = field(default_factory=list)
    """Each scheduled copy: event id, copy, delay in ms (what the seed decided)."""
    _rng: random.Random = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)

    def publish(self, type_: str, obj: dict[str, Any], *, request_key: str | None = None) -> dict[str, Any]:
        """Record an event and schedule its delivery (and maybe a duplicate)."""
        event = {
            "id": f"evt_fake{self.books.namespace}{len(self.books.events) + 1:08d}",
            "object": "event",
            "api_version": "2024-06-20",
            "created": self.books.now(),
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": request_key},
            "type": type_,
            "data": {"object": obj},
        }
        self.books.events.append(event)
        delay = self._rng.randint(self.config.delay_min_ms, self.config.delay_max_ms)
        twice = self._rng.randrange(1000) < self.config.duplicate_per_mille
        again = self._rng.randint(self.config.delay_min_ms, self.config.delay_max_ms) + delay
        if self.config.url:
            self._schedule(event, 1, delay)
            if twice:
                self._schedule(event, 2, again)
        return event

    def resend(self, event_id: str) -> bool:
        event = next((e for e in self.books.events if e["id"] == event_id), None)
        if event is None or not self.config.url:
            return False
        self._schedule(event, 0, 0)
        return True

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def _schedule(self, event: dict[str, Any], copy: int, delay_ms: int) -> None:
        self.planned.append({"event_id": event["id"], "type": event["type"], "copy": copy, "delay_ms": delay_ms})
        task = asyncio.get_running_loop().create_task(self._deliver(event, copy, delay_ms))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: dict[str, Any], copy: int, delay_ms: int) -> None:
        assert self.config.url is not None
        await asyncio.sleep(delay_ms / 1000)
        payload = json.dumps(event, sort_keys=True)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        for attempt in range(1, self.config.max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "Stripe-Signature": sign(payload, self.config.secret, int(time.time())),
            }
            entry: dict[str, Any] = {"event_id": event["id"], "type": event["type"], "copy": copy, "attempt": attempt}
            try:
                async with self._session.post(self.config.url, data=payload.encode(), headers=headers) as response:
                    entry["status"] = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                entry["error"] = type(error).__name__
            self.log.append(entry)
            if 200 <= entry.get("status", 0) < 300:
                return
            await asyncio.sleep(self.config.retry_base_ms * 2 ** (attempt - 1) / 1000)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
