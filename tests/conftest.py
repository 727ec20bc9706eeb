"""The one stack fixture every integration test uses (same rules as `settle stack`).

* PostgreSQL: ``SETTLE_DATABASE_URL`` when set; else a Docker engine → testcontainers; else the server
  at 127.0.0.1:5432 when it answers; else embedded PostgreSQL. Each test gets a FRESH database cloned
  from a template migrated once per session.
* Kafka: ``SETTLE_KAFKA_BOOTSTRAP_SERVERS`` when set (each test then uses its own topic prefix, topics
  created through the admin API); else a Docker engine → testcontainers Kafka; else a FRESH local
  broker process per test (real Kafka protocol over TCP; started in ~0.1 s): noida-db, or librdkafka's
  mock cluster with ``SETTLE_LOCAL_BROKER=mock`` (the suite runs on both).

No test replaces the TCP path with an in-memory broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.db.migrate import migrate
from libs.db.pool import create_pool
from libs.messaging.topic import register_topics
from libs.settings import Settings
from libs.stack.database import with_database
from schemas.topics import REGISTRY

register_topics(REGISTRY)  # the test session is a composition root: the kernel gets the product's topics


@dataclass(frozen=True)
class Servers:
    admin_dsn: str
    """DSN of a database we may CREATE DATABASE from (the server's maintenance database)."""
    kafka: str | None
    """Bootstrap servers of a shared real Kafka (env or container); None → a mock broker per test."""


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    from libs.stack import containers

    env_db = os.environ.get("SETTLE_DATABASE_URL")
    env_kafka = os.environ.get("SETTLE_KAFKA_BOOTSTRAP_SERVERS")
    if (not env_db or not env_kafka) and containers.docker_available():
        with containers.start_containers() as stack:
            yield Servers(env_db or stack.database.url, env_kafka or stack.broker.bootstrap_servers)
        return
    if env_db:
        yield Servers(env_db, env_kafka)
        return
    from libs.stack import resolve_database

    settings = Settings(state_dir=Path(os.environ.get("SETTLE_STATE_DIR") or tmp_path_factory.mktemp("state")))
    target = asyncio.run(resolve_database(settings))
    yield Servers(target.url, env_kafka)


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> Iterator[str]:
    """A database migrated once per session; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = f"settle_tmpl_{os.getpid()}"

    async def setup() -> None:
        admin = await asyncpg.connect(servers.admin_dsn)
        try:
            await admin.execute(f'drop database if exists "{name}"')
            await admin.execute(f'create database "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(servers.admin_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def teardown() -> None:
        admin = await asyncpg.connect(servers.admin_dsn)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


@dataclass
class Stack:
    database_url: str
    bootstrap_servers: str
    settings: Settings
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def fresh_stack(servers: Servers, template_db: str, folder: Path) -> AsyncIterator[Stack]:
    """A fresh database (cloned from the template) and a fresh broker (or topic prefix) in ``folder``."""
    from libs.messaging.broker import create_topics
    from libs.stack import start_local_broker

    database = f"settle_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        await admin.execute(f'create database "{database}" template "{template_db}"')
        # Commits need not wait for the WAL flush: the tests kill Settle's processes, never PostgreSQL, so
        # what they prove does not depend on it, and on a slow disk it is a large share of the suite's time.
        await admin.execute(f'alter database "{database}" set synchronous_commit = off')
    finally:
        await admin.close()
    url = with_database(servers.admin_dsn, database)
    broker = None
    prefix = ""
    if servers.kafka is None:
        broker = start_local_broker(state_dir=folder / "broker", kind=Settings().local_broker)
        bootstrap = broker.bootstrap_servers
    else:
        bootstrap = servers.kafka
        prefix = f"t{uuid.uuid4().hex[:8]}."
        await create_topics(bootstrap, prefix)
    settings = Settings(
        database_url=url,
        kafka_bootstrap_servers=bootstrap,
        state_dir=folder / "state",
        topic_prefix=prefix,
        metrics_port=0,
        documents_dir=folder / "documents",
    )
    pool = await create_pool(url, max_size=12)
    try:
        yield Stack(url, bootstrap, settings, pool)
    finally:
        leaked = await _session_state_in_pool(pool)
        stuck = False
        held = ""
        # A connection still held (a worker task that outlived its stop) must not hang the suite.
        closing = asyncio.ensure_future(pool.close())
        await asyncio.wait([closing], timeout=30)
        if not closing.done():
            stuck = True
            held = await _who_holds(servers.admin_dsn, database)  # before anything is torn down
            closing.cancel()
            pool.terminate()
        elif closing.exception() is not None:
            raise closing.exception()  # type: ignore[misc]
        if broker is not None:
            broker.stop()
        admin = await asyncpg.connect(servers.admin_dsn)
        try:
            await admin.execute(f'drop database if exists "{database}" with (force)')
        finally:
            await admin.close()
        if leaked:  # an error under the suite's filterwarnings, like the warning below
            warnings.warn(
                "pooled connections went back to the pool with session state: "
                f"{'; '.join(leaked)}; mark a connection that takes session state with "
                "libs.db.pool.keeps_session_state",
                stacklevel=1,
            )
        if stuck:  # an error under the suite's filterwarnings: the test that leaked a connection is named
            warnings.warn(
                f"the test's pool did not close within 30 s: connections were still held\n{held}", stacklevel=1
            )


async def _session_state_in_pool(pool: asyncpg.Pool) -> list[str]:
    """Session state left on the pool's idle connections: advisory locks (outside a transaction they are
    session locks), LISTEN channels and settings changed with a plain ``SET``. The pool resets only
    connections marked with ``keeps_session_state``; an unmarked one would hand that state to its next
    holder (``libs/db/pool.py``). Each idle connection is asked about its own session. A setting counts
    only when it differs from what ``RESET`` gives (asyncpg itself sets ``jit`` and puts it back)."""
    idle = sum(1 for h in pool._holders if h.is_connected() and h.is_idle())
    found: list[str] = []
    held: list[Any] = []
    try:
        async with asyncio.timeout(5):
            for _ in range(idle):
                held.append(await pool.acquire())
            for conn in held:
                row = await conn.fetchrow(
                    """select pg_backend_pid() as pid,
                              array(select objid::bigint from pg_locks where locktype = 'advisory' and granted
                                       and pid = pg_backend_pid() order by 1) as locks,
                              array(select pg_listening_channels() order by 1) as channels,
                              array(select name from pg_settings where source = 'session'
                                       and setting is distinct from reset_val order by 1) as settings"""
                )
                if row["locks"] or row["channels"] or row["settings"]:
                    found.append(
                        f"pid {row['pid']}: advisory locks {list(row['locks'])}, LISTEN {list(row['channels'])}, "
                        f"SET {list(row['settings'])}"
                    )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pass  # a test that took the database away, or a connection still busy: nothing more to check
    finally:
        for conn in held:
            await pool.release(conn)
    return found


async def _who_holds(admin_dsn: str, database: str) -> str:
    """What a pool that would not close was doing: the database's sessions (state, wait, query) and
    this process's tasks with their stacks — so a leaked connection names its holder."""
    lines = ["sessions:"]
    admin = await asyncpg.connect(admin_dsn)
    try:
        for r in await admin.fetch(
            """select pid, state, wait_event_type, wait_event, now() - xact_start as in_xact, left(query, 200) as q
                 from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()""",
            database,
        ):
            lines.append(f"  {r['pid']} {r['state']} {r['wait_event_type']}/{r['wait_event']} {r['in_xact']}: {r['q']}")
    finally:
        await admin.close()
    lines.append("tasks:")
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        lines.append(stack.getvalue())
    return "\n".join(lines)[:20_000]


@pytest.fixture
async def stack(servers: Servers, template_db: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with fresh_stack(servers, template_db, tmp_path) as made:
        yield made
