"""What every CLI command needs: settings, the stack's addresses, a pool, and one error policy."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import asyncpg
from rich.console import Console

from libs.db.migrate import migrate
from libs.db.pool import create_pool
from libs.errors import ConfigurationError, InfrastructureError, SettleError
from libs.settings import Settings, get_settings

# Piped output (CI logs, `settle demo | tee`) keeps wide tables readable instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


def run_async(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async command; Settle's errors become one clear line and exit status 2 (never a trace)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except (ConfigurationError, InfrastructureError) as exc:
            err_console.print(f"[bold red]settle:[/] {exc}")
            sys.exit(2)
        except SettleError as exc:
            err_console.print(f"[bold red]settle:[/] {exc.reason}")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


@dataclass(frozen=True)
class Targets:
    database_url: str
    database_kind: str
    bootstrap_servers: str | None
    broker_kind: str | None


async def resolve(settings: Settings | None = None, *, broker: bool = True) -> Targets:
    """Where PostgreSQL and Kafka are, by the stack's rules (env, local server, embedded, mock broker)."""
    from libs.stack import ensure_broker, resolve_database

    settings = settings or get_settings()
    database = await resolve_database(settings)
    if not broker:
        return Targets(database.url, database.kind, None, None)
    target = await ensure_broker(settings)
    return Targets(database.url, database.kind, target.bootstrap_servers, target.kind)


@asynccontextmanager
async def database(
    settings: Settings | None = None, *, migrated: bool = True, max_size: int | None = None
) -> AsyncIterator[asyncpg.Pool]:
    settings = settings or get_settings()
    targets = await resolve(settings, broker=False)
    pool = await create_pool(targets.database_url, max_size=max_size or settings.db_pool_max)
    try:
        if migrated:
            async with pool.acquire() as conn:
                await migrate(conn)
        yield pool
    finally:
        await pool.close()
