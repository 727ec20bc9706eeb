"""``settle stack up | down | status``: the local broker and PostgreSQL of one state directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from libs.errors import BrokerUnavailableError
from libs.stack.database import current_database, embedded_database, resolve_database, stop_embedded_database
from libs.stack.launcher import (
    LOCK_WAIT_S,
    ensure_broker,
    find_running_broker,
    stop_recorded_broker,
)
from libs.stack.state import BROKER_LOCK_NAME, BROKER_LOG_NAME, hold_lock
from libs.stack.targets import BrokerTarget, StackStatus

if TYPE_CHECKING:
    from libs.settings import Settings


async def stack_up(settings: Settings) -> StackStatus:
    """Make sure a broker and a database are there (starting the local ones as needed); report them."""
    broker = await ensure_broker(settings)
    database = await resolve_database(settings)
    state_dir = settings.state_dir.expanduser().resolve()
    return StackStatus(
        state_dir=state_dir,
        broker=broker,
        database=database,
        embedded_database=embedded_database(state_dir),
        broker_log=state_dir / BROKER_LOG_NAME,
    )


async def stack_down(settings: Settings) -> None:
    """Stop what this state directory runs: the mock broker and the embedded PostgreSQL.

    Each is stopped with bounded waits and escalation (broker: SIGTERM, SIGKILL after 5 s;
    PostgreSQL: fast shutdown, immediate, SIGKILL). Servers Settle did not start (the one at
    127.0.0.1:5432, SETTLE_DATABASE_URL, SETTLE_KAFKA_BOOTSTRAP_SERVERS) are never touched. The
    embedded data directory is kept. Raises BrokerUnavailableError / DatabaseUnavailableError
    when a process survives SIGKILL.
    """
    state_dir = settings.state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        return
    try:
        async with hold_lock(state_dir / BROKER_LOCK_NAME, LOCK_WAIT_S):
            await stop_recorded_broker(state_dir)
    except TimeoutError:
        raise BrokerUnavailableError(
            f"another process has held the local broker's lock for {LOCK_WAIT_S:g} s; retry"
        ) from None
    await stop_embedded_database(state_dir)


async def stack_status(settings: Settings) -> StackStatus:
    """What runs now and where; starts and creates nothing."""
    state_dir = settings.state_dir.expanduser().resolve()
    broker: BrokerTarget | None
    if settings.kafka_bootstrap_servers:
        broker = BrokerTarget(settings.kafka_bootstrap_servers, "env", None)
    else:
        state = await find_running_broker(state_dir)
        broker = None if state is None else BrokerTarget(state.bootstrap_servers, state.kind, state.pid)
    return StackStatus(
        state_dir=state_dir,
        broker=broker,
        database=await current_database(settings),
        embedded_database=embedded_database(state_dir),
        broker_log=state_dir / BROKER_LOG_NAME,
    )
