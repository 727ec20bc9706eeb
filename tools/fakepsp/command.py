"""``settle fakepsp``: run the fake payment processor (both dialects) until interrupted."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from libs.settings import get_settings
from tools.fakepsp.runtime import FakeConfig
from tools.fakepsp.server import serve
from tools.fakepsp.webhooks import WebhookConfig


def fakepsp(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default SETTLE_FAKEPSP_PORT; 0 picks a free one).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Require this API key (default: accept any).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where Stripe-dialect webhooks are POSTed.")] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="Signing secret (default SETTLE_STRIPE_WEBHOOK_SECRET, else whsec_fakepsp).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of webhook delays and duplicates.")] = 0,
    webhook_delay_min_ms: Annotated[int, typer.Option(help="Shortest webhook delay.")] = 50,
    webhook_delay_max_ms: Annotated[int, typer.Option(help="Longest webhook delay.")] = 400,
    webhook_duplicate_per_mille: Annotated[int, typer.Option(help="Events delivered twice, per mille.")] = 200,
    latency_ms: Annotated[int, typer.Option(help="Added to every Stripe-dialect answer.")] = 0,
    ledgerpay_latency_ms: Annotated[int, typer.Option(help="Added to every LedgerPay answer.")] = 150,
    slow_ms: Annotated[int, typer.Option(help="How late tok_slow answers.")] = 1500,
    hang_ms: Annotated[int, typer.Option(help="How long tok_timeout_after_charge holds its answer.")] = 30_000,
    state_file: Annotated[Path | None, typer.Option(help="Keep the books in this JSON file across restarts.")] = None,
    id_namespace: Annotated[
        str, typer.Option(help="Letters and digits put into every id (ch_fake<NS>00000001): ids unique across runs.")
    ] = "",
) -> None:
    """Run the fake payment processor: a Stripe API subset under /v1, LedgerPay under /ledgerpay/v1."""
    if not id_namespace.isalnum() and id_namespace:
        raise typer.BadParameter("letters and digits only", param_hint="--id-namespace")
    settings = get_settings()
    config = FakeConfig(
        host=host,
        port=settings.fakepsp_port if port is None else port,
        api_key=api_key,
        latency_ms=latency_ms,
        ledgerpay_latency_ms=ledgerpay_latency_ms,
        slow_ms=slow_ms,
        hang_ms=hang_ms,
        state_file=state_file,
        id_namespace=id_namespace,
        webhooks=WebhookConfig(
            url=webhook_url,
            secret=webhook_secret or settings.stripe_webhook_secret or "whsec_fakepsp",
            seed=seed,
            delay_min_ms=webhook_delay_min_ms,
            delay_max_ms=webhook_delay_max_ms,
            duplicate_per_mille=webhook_duplicate_per_mille,
        ),
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def started(bound: int) -> None:
            print(f"fakepsp listening on http://{host}:{bound}", flush=True)

        await serve(config, stop, started=started)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        sys.exit(130)
