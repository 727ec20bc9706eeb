"""Test helpers that drive the fleet over real connections: publish with a real producer, run
services with the real worker runtime, wait for conditions. Nothing here fakes Kafka."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from libs.messaging.broker import publish_keyed, start_producer, stop_client
from libs.messaging.worker import Service, WorkerState, run_worker
from schemas.envelope import encode
from schemas.topics import BY_NAME, Topic
from tests.conftest import Stack


def event_bytes(
    type: str,
    data: BaseModel | dict[str, Any],
    *,
    id: str,
    time: datetime,
    source: str = "/test",
    correlationid: str | None = None,
) -> bytes:
    return encode(event_id=id, source=source, type=type, time=time, data=data, correlationid=correlationid)


async def publish(stack: Stack, items: Sequence[tuple[Topic | str, str | None, bytes]]) -> None:
    """Send (topic, key, value) with an idempotent producer, keyed like the relay (publish_keyed)."""
    producer = await start_producer(stack.bootstrap_servers, client_id="test-publisher")
    try:
        await publish_keyed(
            producer,
            [
                (
                    topic if isinstance(topic, Topic) else BY_NAME[topic],
                    key.encode() if key is not None else None,
                    value,
                )
                for topic, key, value in items
            ],
            prefix=stack.settings.topic_prefix,
        )
    finally:
        await stop_client(producer)


@contextlib.asynccontextmanager
async def running(stack: Stack, services: Sequence[Service], *, relays: int = 1) -> AsyncIterator[WorkerState]:
    """Run services (and relays) in this process until the block exits."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    state = WorkerState()

    async def main() -> None:
        await run_worker(
            services,
            stack.settings,
            pool=stack.pool,
            bootstrap_servers=stack.bootstrap_servers,
            stop=stop,
            relays=relays,
            ready=ready,
            state=state,
        )

    task = asyncio.create_task(main())
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.is_set(), "worker did not start within 60 s"
    try:
        yield state
        if relays:
            await relayed(stack)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def relayed(stack: Stack, *, timeout_s: float = 30) -> None:
    """Until the outbox holds no row that is due and not yet sent: what the workers committed is on the
    broker, so a story that reads a topic after its workers stop reads all of it (a slow relay on a
    loaded machine must not read as a missing event)."""

    async def sent() -> bool:
        unsent = await stack.pool.fetchval(
            "select count(*) from settle.outbox where sent_at is null and (not_before is null or not_before <= now())"
        )
        return unsent == 0

    await wait_until(sent, timeout_s=timeout_s, what="the relay to send every due outbox row")


async def members_share(*workers: WorkerState, timeout_s: float = 30) -> None:
    """Until every worker of a consumer group leases some partitions (a group re-balances each second)."""

    async def shared() -> bool:
        return all(all(r.owned_slots > 0 for r in w.readers) for w in workers)

    await wait_until(shared, timeout_s=timeout_s, what="every member of the group to lease partitions")


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def read_topic(stack: Stack, topic: Topic, *, timeout_s: float = 30) -> list[Any]:
    """Every record currently in a topic (all partitions, from the beginning), without a consumer group."""
    from libs.messaging.broker import read_all

    return await read_all(
        stack.bootstrap_servers, stack.settings.topic_prefix + topic.name, topic.partitions, timeout_s=timeout_s
    )


def settle_in_process(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``settle ARGS`` in this process with ``env`` on top of the process's environment (a None
    value unsets), as a subprocess would, minus the ~2–3 s of interpreter start and imports: the real
    Typer app through ``CliRunner``, in its own thread (a command runs its own event loop; the caller's
    loop waits, as it would on ``subprocess.run``). An exception the CLI lets escape (a bug, never an
    exit status) is raised here, so it fails the test instead of passing for an exit code of 1."""
    from typer.testing import CliRunner

    from libs.settings import get_settings
    from services.cli.main import build_app

    def invoke() -> subprocess.CompletedProcess[str]:
        get_settings.cache_clear()
        try:
            done = CliRunner().invoke(build_app(), list(args), env={**env, "NO_COLOR": "1"})
        finally:
            get_settings.cache_clear()
        if done.exception is not None and not isinstance(done.exception, SystemExit):
            raise AssertionError(f"settle {' '.join(args)} raised") from done.exception
        return subprocess.CompletedProcess(["settle", *args], done.exit_code, done.stdout, done.stderr)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(invoke).result(timeout=120)
