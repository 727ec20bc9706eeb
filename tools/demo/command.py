"""``settle demo``: the command the composition root (:mod:`services.cli.main`) mounts on the app."""

from __future__ import annotations

from typing import Annotated

import typer

from libs.db.pool import create_pool
from libs.settings import get_settings
from services.cli.runtime import console, resolve, run_async


@run_async
async def demo(
    seed: Annotated[int, typer.Option(help="Seed of the generated marketplace.")] = 7,
    contracts: Annotated[int, typer.Option(help="Contracts in the marketplace.")] = 30,
    out: Annotated[str | None, typer.Option(help="Folder for the documents (default: state dir).")] = None,
) -> None:
    """Bill a generated two-month GPU marketplace with the whole fleet on the local stack."""
    from pathlib import Path

    from libs.db.migrate import migrate
    from tools.demo.run import run_demo  # the demo is imported only when it runs: `settle --help` stays fast

    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    console.print(
        f"PostgreSQL: {targets.database_kind} · broker: {targets.broker_kind} "
        f"({'development broker: in memory, not durable' if targets.broker_kind == 'mock' else 'Kafka'})"
    )
    pool = await create_pool(targets.database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    finally:
        await pool.close()
    ok = await run_demo(
        settings,
        targets.database_url,
        targets.bootstrap_servers,
        seed=seed,
        contracts=contracts,
        out=Path(out) if out else None,
        console=console,
    )
    if not ok:
        raise typer.Exit(1)
