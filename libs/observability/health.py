"""``/metrics``, ``/healthz`` and ``/readyz`` on one small aiohttp server per worker process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


class HealthServer:
    """Liveness: the event loop answers. Readiness: every check passes (database, broker, consumers)."""

    def __init__(self, checks: dict[str, ReadinessCheck], *, host: str = "0.0.0.0", port: int = 9400) -> None:
        self.checks = checks
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        results = {}
        ready = True
        for name, check in self.checks.items():
            try:
                ok, detail = await check()
            except Exception as exc:  # a failing check is "not ready", never a crash
                ok, detail = False, repr(exc)
            results[name] = {"ok": ok, "detail": detail}
            ready = ready and ok
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)
