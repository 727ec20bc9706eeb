"""The pool's release: only a connection marked as holding session state is reset (libs.db.pool)."""

from __future__ import annotations

import pytest

from libs.db.pool import create_pool, keeps_session_state
from tests.conftest import Stack

pytestmark = pytest.mark.integration


async def test_a_plain_release_costs_no_reset_round_trip(stack: Stack) -> None:
    """A connection that took no session state goes back as it is: no ``RESET ALL`` (nor the rest of
    asyncpg's default reset) was sent, so a session setting made on purpose to see it survives."""
    pool = await create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute("set application_name = 'settle-probe'")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await conn.fetchval("select current_setting('application_name')") == "settle-probe"
    finally:
        await pool.close()


async def test_a_connection_marked_with_session_state_goes_back_clean(stack: Stack) -> None:
    """Advisory locks and LISTEN outlive a transaction: a connection marked with keeps_session_state
    is cleared on release, so the next holder inherits no lock, no channel and no setting."""
    pool = await create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            keeps_session_state(conn)
            await conn.execute("select pg_advisory_lock(4242)")
            await conn.execute('listen "settle_probe"')
            await conn.execute("set application_name = 'settle-probe'")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            locks = await conn.fetchval(
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
            )
            assert locks == 0
            assert await conn.fetch("select pg_listening_channels()") == []
            assert await conn.fetchval("select current_setting('application_name')") == "settle"
            # The mark is spent: a later plain use of this connection is released without a reset.
            await conn.execute("set application_name = 'settle-probe-2'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("select current_setting('application_name')") == "settle-probe-2"
    finally:
        await pool.close()
