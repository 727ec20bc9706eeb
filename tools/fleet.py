"""Run `settle run …` worker processes (as production does) for the demo and the benchmarks, and
tell when the fleet is idle (nothing left to consume, publish or close)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import asyncpg

from libs.messaging.broker import end_offsets
from libs.messaging.positions import group_lag
from libs.messaging.worker import Service

ROOT = Path(__file__).resolve().parents[1]


def worker_env(database_url: str, bootstrap_servers: str, topic_prefix: str = "", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SETTLE_DATABASE_URL": database_url,
            "SETTLE_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "SETTLE_TOPIC_PREFIX": topic_prefix,
            "SETTLE_METRICS_PORT": "0",
            "SETTLE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def worker_processes(
    env: Mapping[str, str], commands: Sequence[Sequence[str]], log_dir: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one `settle run <args>` process per command; SIGTERM (then SIGKILL) them on exit."""
    started = []
    for command in commands:
        log = subprocess.DEVNULL
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = (log_dir / f"{'-'.join(command[:1])}.log").open("ab")  # type: ignore[assignment]
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", *command],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@contextlib.contextmanager
def fakepsp_process(
    env: Mapping[str, str], args: Sequence[str] = (), log_dir: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``settle fakepsp --port 0 ARGS``; yields (its base URL, the process). Its first stdout line
    says where it listens; what it prints after that goes to ``<log_dir>/fakepsp.log``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "fakepsp", "--port", "0", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "fakepsp listening on http://127.0.0.1:PORT"
        if not line.startswith("fakepsp listening on "):
            raise RuntimeError(f"fakepsp did not start: {line!r} (exit {process.poll()})")
        stream = process.stdout

        def drain() -> None:
            if log_dir is None:
                for _ in stream:
                    pass
                return
            log_dir.mkdir(parents=True, exist_ok=True)
            with (log_dir / "fakepsp.log").open("a") as log:
                log.write(line)
                for rest in stream:
                    log.write(rest)

        threading.Thread(target=drain, daemon=True).start()
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def consumer_lag(
    pool: asyncpg.Pool, bootstrap_servers: str, services: Sequence[Service], topic_prefix: str = ""
) -> int:
    """Messages the services' consumer groups have not handled yet (broker end − PostgreSQL position)."""
    total = 0
    for service in services:
        for sub in service.subscriptions:
            ends = await end_offsets(bootstrap_servers, {topic_prefix + t.name: t.partitions for t in sub.topics})
            logical = {(tp.topic[len(topic_prefix) :], tp.partition): end for tp, end in ends.items()}
            async with pool.acquire() as conn:
                total += sum((await group_lag(conn, sub.consumer, logical)).values())
    return total


async def pending_work(pool: asyncpg.Pool, services: Sequence[Service]) -> int:
    async with pool.acquire() as conn:
        backlog = int(await conn.fetchval("select count(*) from settle.outbox where sent_at is null"))
        for service in services:
            if service.pending is not None:
                backlog += await service.pending(conn)
    return backlog


async def wait_idle(
    pool: asyncpg.Pool,
    bootstrap_servers: str,
    services: Sequence[Service],
    *,
    topic_prefix: str = "",
    timeout_s: float = 600,
    alive: Sequence[subprocess.Popen[bytes]] = (),
    also_busy: Callable[[asyncpg.Pool], Awaitable[int]] | None = None,
) -> None:
    """Until every group has consumed everything, the outbox is empty and no service has work
    pending (nor ``also_busy``, work a service does outside its consumer, such as gateway calls) —
    twice in a row, so work that one step hands to the next is not missed."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fleet was not idle within {timeout_s:.0f} s")
        for process in alive:
            if process.poll() is not None:
                raise RuntimeError(f"worker {process.args!r} exited with status {process.returncode}")
        busy = await pending_work(pool, services) + await consumer_lag(pool, bootstrap_servers, services, topic_prefix)
        if also_busy is not None:
            busy += await also_busy(pool)
        quiet = quiet + 1 if busy == 0 else 0
        await asyncio.sleep(0.3)
