"""Test helpers: a real ``settle fakepsp`` process, and a webhook receiver on a real TCP port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import Stack

STARTUP_TIMEOUT_S = 30


@contextlib.contextmanager
def fakepsp(*args: str) -> Iterator[str]:
    """Run ``settle fakepsp --port 0 ARGS`` as its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "fakepsp", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "fakepsp listening on http://127.0.0.1:PORT"
        assert line.startswith("fakepsp listening on "), f"fakepsp did not start: {line!r} (exit {proc.poll()})"
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def against_fakepsp(stack: Stack, base: str, **settings: Any) -> Stack:
    """The stack with both gateways pointed at the fake processor at ``base`` (plus ``settings``)."""
    update = {
        "stripe_api_base": base,
        "stripe_api_key": "sk_test_settle",
        "ledgerpay_api_base": base + "/ledgerpay",
        **settings,
    }
    return dataclasses.replace(stack, settings=stack.settings.model_copy(update=update))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def admin(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, base + path, json=body) as response:
        return await response.json()


@dataclass
class Receiver:
    """Collects webhook deliveries; fails the first ``fail_first`` of them with HTTP 500."""

    url: str = ""
    fail_first: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refused < self.fail_first:
            self.refused += 1
            return web.Response(status=500)
        self.received.append((dict(request.headers), body))
        return web.Response(status=200)


@contextlib.asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[Receiver]:
    got = Receiver(fail_first=fail_first)
    app = web.Application()
    app.add_routes([web.post("/hook", got.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()


async def eventually(check: Any, *, timeout_s: float = 20, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
