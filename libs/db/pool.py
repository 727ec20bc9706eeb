"""The asyncpg pool and the one place PostgreSQL errors become Settle errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from libs.errors import (
    DatabaseUnavailableError,
    LedgerFloorError,
    RetryableError,
    SettleError,
    UnbalancedEntryError,
)

Connection = asyncpg.Connection
Pool = asyncpg.Pool

# SQLSTATEs that mean "try again": serialization failure, deadlock, lock not available, query canceled
# by lock_timeout/statement_timeout.
_RETRYABLE_STATES = {"40001", "40P01", "55P03", "57014"}
# The server cannot serve us right now (too many connections, out of memory or disk): an outage.
_UNAVAILABLE_STATES = {"53000", "53100", "53200", "53300"}
# Raised by the ledger's own triggers (see migrations): we pick SQLSTATEs in the user range.
_LEDGER_UNBALANCED = "SL001"
_LEDGER_IMMUTABLE = "SL002"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


_SESSION_STATE: set[int] = set()
"""Backend pids of pooled connections whose *session* holds state (advisory locks, LISTEN)."""


def keeps_session_state(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Mark a pooled connection whose session takes state beyond its transactions — a session advisory
    lock, a LISTEN — so that releasing it to the pool clears the session (see :func:`_reset_session`)."""
    _SESSION_STATE.add(conn.get_server_pid())


async def _reset_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection it takes back, besides rolling back an open transaction
    (which asyncpg always does first).

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip for every ``pool.acquire()``, a sixth of a payments worker's
    statements. Settle's transactions leave no session state behind (cursors live inside a transaction,
    temporary tables drop on commit, settings are ``set local``), so only a connection marked with
    :func:`keeps_session_state` — the partition leases' advisory locks, the relay's LISTEN, the
    migration lock — gets that reset."""
    pid = conn.get_server_pid()
    if pid in _SESSION_STATE:
        _SESSION_STATE.discard(pid)
        await conn.execute(conn.get_reset_query())


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 10.0, read_only: bool = False
) -> asyncpg.Pool:
    """Open a pool; a database that does not answer raises DatabaseUnavailableError with the DSN's host.

    ``read_only``: every session starts with ``default_transaction_read_only`` on, so the server
    itself refuses any write (read commands: a bug cannot change the books).
    """
    server_settings = {"application_name": "settle", "lock_timeout": "30s"}
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_reset_session,
            timeout=timeout_s,
            command_timeout=120,
            server_settings=server_settings,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL ({_redact(dsn)}): {exc}") from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection. Failing to *get* one is always an outage, whatever the server said
    (refused, too many connections, "database is not currently accepting connections" ...):
    DatabaseUnavailableError, never a reason to dead-letter a message."""
    try:
        acquired = pool.acquire()
        conn = await acquired.__aenter__()
    except SettleError:
        raise
    except Exception as exc:
        raise DatabaseUnavailableError(f"cannot get a database connection: {type(exc).__name__}: {exc}") from exc
    try:
        yield conn
    finally:
        await acquired.__aexit__(None, None, None)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """Acquire a connection and run one transaction; errors are mapped by :func:`map_db_error`."""
    try:
        async with connection(pool) as conn, conn.transaction():
            yield conn
    except SettleError:
        raise
    except BaseException as exc:
        mapped = map_db_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


def map_db_error(exc: BaseException) -> SettleError | None:
    """PostgreSQL/driver exception → Settle error class (by what the caller does next), else None."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state in _RETRYABLE_STATES:
            return RetryableError(f"{type(exc).__name__} ({state}): {exc}")
        if state == _LEDGER_UNBALANCED:
            return UnbalancedEntryError(str(exc))
        if state == "23514" and "floor" in str(exc):
            return LedgerFloorError(f"an account would go below its floor: {getattr(exc, 'detail', '') or exc}")
        if isinstance(exc, asyncpg.exceptions.ConnectionFailureError | asyncpg.exceptions.CannotConnectNowError):
            return DatabaseUnavailableError(str(exc))
        if state.startswith(("08", "57P")) or state in _UNAVAILABLE_STATES:
            return DatabaseUnavailableError(f"{type(exc).__name__} ({state}): {exc}")
        return None
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return DatabaseUnavailableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError):
        return DatabaseUnavailableError(f"{type(exc).__name__}: {exc}")
    return None


def _redact(dsn: str) -> str:
    if "@" not in dsn:
        return dsn
    scheme, _, rest = dsn.partition("://")
    _, _, host = rest.rpartition("@")
    return f"{scheme}://***@{host}"


async def fetch_value(pool: asyncpg.Pool, sql: str, *args: Any) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchval(sql, *args)
