"""What every CLI command needs: settings, the stack's addresses, a pool, and one error policy.

Two ways to reach the stack:

* :func:`resolve` / :func:`database` — for commands meant to change things (``migrate``, ``run``,
  ``demo``, ``stack up``, ``publish``, ``clock tick``, ``dlq redrive``, ``smoke``, ``bench``): they may
  start the embedded PostgreSQL or the local broker, and :func:`database` applies migrations.
* :func:`read_only` — for every read verb (``status``, ``invoices``/``statements``, ``dlq list|show``,
  ``ledger``): finds what runs, starts nothing, migrates nothing, and its sessions are read-only.
  What is missing is one :class:`~libs.errors.SettleError` with a hint, printed by :func:`run_async`
  as one line (or one JSON object under ``--json``) with exit status 2.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import asyncpg
from rich.console import Console
from rich.markup import escape

from libs.db.migrate import migrate, require_migrated
from libs.db.pool import create_pool, map_db_error
from libs.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseUnavailableError,
    InfrastructureError,
    NotMigratedError,
    SettleError,
)
from libs.settings import Settings, get_settings
from libs.stack.targets import BrokerTarget, DatabaseTarget

# Piped output (CI logs, `settle demo | tee`) keeps wide tables readable instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


EXIT_NOT_READY = 2
"""Exit status of a command that could not do its work: not migrated, nothing running, unreachable,
misconfigured (1 stays for "the check ran and found a break", e.g. ``ledger verify``)."""


def error_line(exc: SettleError) -> str:
    """One line for a human: what is wrong, then the command that fixes it (newlines folded)."""
    text = str(exc) if isinstance(exc, ConfigurationError | InfrastructureError) else exc.reason
    text = " ".join(text.split())
    return f"{text}: run `{exc.hint}`" if exc.hint else text


def error_object(exc: SettleError) -> dict[str, Any]:
    """The ``--json`` form of an error: ``{"error": what is wrong, "hint": the fixing command or null}``."""
    return {"error": " ".join(str(exc).split()), "hint": exc.hint}


def report_error(exc: SettleError, *, as_json: bool) -> None:
    """Print ``exc`` as one line: on stderr for humans, as one JSON object on stdout under ``--json``."""
    if as_json:
        print(json.dumps(error_object(exc)))
    else:
        err_console.print(f"[bold red]settle:[/] {escape(error_line(exc))}", soft_wrap=True)


def run_async(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async command; Settle's errors become one clear line and exit status 2 (never a trace).

    A command with an ``as_json`` parameter (``--json``) set prints its error as one JSON object."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except SettleError as exc:
            report_error(exc, as_json=bool(kwargs.get("as_json")))
            sys.exit(EXIT_NOT_READY)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The database went away mid-command: an outage is one line too. Anything else is a bug.
            mapped = map_db_error(exc)
            if not isinstance(mapped, InfrastructureError):
                raise
            report_error(mapped, as_json=bool(kwargs.get("as_json")))
            sys.exit(EXIT_NOT_READY)
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


# --- the read-only context ------------------------------------------------------------------------------------
BROKER_PROBE_TIMEOUT_S = 2.0
"""TCP connect to a configured Kafka bootstrap address before any client is started."""
START_HINT = "settle stack up"


@dataclass(frozen=True)
class ReadOnly:
    """What a read verb works with: a read-only pool on a migrated database. Nothing was started."""

    settings: Settings
    database: DatabaseTarget
    pool: asyncpg.Pool

    async def broker(self) -> BrokerTarget:
        """The broker that runs now, started by nobody: ``SETTLE_KAFKA_BOOTSTRAP_SERVERS`` when set and
        reachable, else the local broker recorded in the state directory. Raises BrokerUnavailableError."""
        return await find_broker(self.settings)


async def find_database(settings: Settings) -> DatabaseTarget:
    """The PostgreSQL a command would use now, starting nothing; DatabaseUnavailableError when none runs."""
    from libs.stack.database import current_database

    target = await current_database(settings)
    if target is None:
        raise DatabaseUnavailableError(
            "no PostgreSQL is running (SETTLE_DATABASE_URL is unset, nothing answers at 127.0.0.1:5432 "
            "and the embedded one is stopped)",
            hint=START_HINT,
        )
    return target


async def find_broker(settings: Settings) -> BrokerTarget:
    """The Kafka broker that runs now, starting nothing; BrokerUnavailableError when none answers."""
    from libs.stack.launcher import find_running_broker
    from libs.stack.state import probe_tcp, split_address

    if settings.kafka_bootstrap_servers:
        servers = settings.kafka_bootstrap_servers
        for address in servers.split(","):
            try:
                host, port = split_address(address)
            except ValueError:
                raise ConfigurationError(f"SETTLE_KAFKA_BOOTSTRAP_SERVERS: {address!r} is not host:port") from None
            if await probe_tcp(host, port, BROKER_PROBE_TIMEOUT_S):
                return BrokerTarget(servers, "env", None)
        raise BrokerUnavailableError(f"cannot reach Kafka at {servers} (SETTLE_KAFKA_BOOTSTRAP_SERVERS)")
    state = await find_running_broker(settings.state_dir.expanduser().resolve())
    if state is None:
        raise BrokerUnavailableError(
            "no broker is running (SETTLE_KAFKA_BOOTSTRAP_SERVERS is unset and the local broker is stopped)",
            hint=START_HINT,
        )
    return BrokerTarget(state.bootstrap_servers, "mock", state.pid)


async def _open_read_only_pool(target: DatabaseTarget) -> asyncpg.Pool:
    try:
        return await create_pool(target.url, max_size=2, read_only=True)
    except DatabaseUnavailableError as exc:
        if not isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
            raise
        if target.kind == "env":
            raise DatabaseUnavailableError(f"{exc.__cause__} (SETTLE_DATABASE_URL)") from exc
        # On the local or embedded server, `settle migrate` creates Settle's database.
        raise NotMigratedError(f"PostgreSQL ({target.kind}) has no Settle database yet") from exc


@asynccontextmanager
async def read_only(settings: Settings | None = None) -> AsyncIterator[ReadOnly]:
    """The one way a read verb reaches the stack: never migrates, never starts a server or a broker.

    Finds the database (:func:`find_database`), opens a small pool whose sessions are read-only, and
    checks every migration is applied (SELECTs only). Raises DatabaseUnavailableError (nothing runs or
    it does not answer) or NotMigratedError (pending migrations; hint ``settle migrate``).
    """
    settings = settings or get_settings()
    target = await find_database(settings)
    pool = await _open_read_only_pool(target)
    try:
        async with pool.acquire() as conn:
            await require_migrated(conn)
        yield ReadOnly(settings, target, pool)
    finally:
        await pool.close()
