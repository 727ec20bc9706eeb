"""Wiring of the webhooks worker: an HTTP server (a background task), no Kafka subscription."""

from __future__ import annotations

import structlog
from aiohttp import web

from libs.messaging.worker import Runtime, Service
from services.webhooks.http import build_app

log = structlog.get_logger("settle.webhooks")


async def serve_webhooks(runtime: Runtime) -> None:
    """Serve the webhook endpoint on ``SETTLE_WEBHOOKS_HOST:SETTLE_WEBHOOKS_PORT`` until the worker stops."""
    settings = runtime.settings
    runner = web.AppRunner(build_app(settings, runtime.pool), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.webhooks_host, settings.webhooks_port)
        await site.start()
        log.info("webhook endpoint listening", host=settings.webhooks_host, port=settings.webhooks_port)
        await runtime.stop.wait()
    finally:
        await runner.cleanup()


SERVICE = Service(
    name="webhooks",
    tasks=(serve_webhooks,),
    description="Processors' webhooks (signature-checked, deduplicated) → processor.events.v1",
)
