"""Crash tests: a real `settle run` process is SIGKILLed at random points while it works, then
restarted, again and again. Afterwards every effect exists exactly once and the ledger verifies.

Nothing is cooperative about the kill: SIGKILL lands wherever the process is (mid-batch, between
the database commit and the offset commit, mid-relay-round between publish and mark-sent).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from libs.ledger import verify
from schemas import topics
from schemas.events import TransferRequested
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
T0 = datetime(2026, 12, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _env(stack: Stack) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SETTLE_DATABASE_URL": stack.database_url,
            "SETTLE_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
            "SETTLE_TOPIC_PREFIX": stack.settings.topic_prefix,
            "SETTLE_STATE_DIR": str(stack.settings.state_dir),
            "SETTLE_METRICS_PORT": "0",
            "SETTLE_CONSUME_BATCH_MAX": "100",
            "SETTLE_RELAY_BATCH_MAX": "100",
            "SETTLE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _start(stack: Stack, *names: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``settle run NAMES`` as a process of its own (``env``: the stack's, unless given), output to ``log``."""
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", *names],
        env=_env(stack) if env is None else env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def _transfers(n: int) -> list[tuple[topics.Topic, str, bytes]]:
    out = []
    for i in range(n):
        data = TransferRequested(
            transfer_id=f"tr-{i}", from_account="chaos:bank", to_account="chaos:fees", amount="0.01", currency="USD"
        )
        out.append(
            (
                topics.JOURNAL_REQUESTS,
                f"tr-{i}",
                event_bytes("journal.transfer_requested", data, id=f"ev-{i}", time=T0 + timedelta(seconds=i)),
            )
        )
    return out


async def _sent(stack: Stack) -> int:
    return int(
        await stack.pool.fetchval(
            "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
        )
    )


async def _kill_while_working(
    stack: Stack, process: subprocess.Popen[bytes], progress_sql: str, done: int, rng: random.Random
) -> bool:
    """Wait until the process makes progress, then SIGKILL it a random moment later (mid-work)."""
    start = int(await stack.pool.fetchval(progress_sql))
    for _ in range(300):
        now = int(await stack.pool.fetchval(progress_sql))
        if now >= done or process.poll() is not None:
            return False
        if now > start:
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            _kill(process)
            return True
        await asyncio.sleep(0.05)
    raise AssertionError("the worker made no progress in 15 s")


async def test_consumer_killed_at_random_points_has_every_effect_once(stack: Stack, tmp_path: Path) -> None:
    n = 20_000
    await publish(stack, _transfers(n))
    rng = random.Random(20261201)
    kills = 0
    log = tmp_path / "worker.log"
    for _ in range(5):
        process = _start(stack, "journal", log=log)
        if await _kill_while_working(stack, process, "select count(*) from settle.inbox", n, rng):
            kills += 1
        else:
            _kill(process)
            break
    assert kills >= 3, f"the worker finished before it could be killed enough times; log:\n{log.read_text()[-2000:]}"
    process = _start(stack, "journal", log=log)
    try:
        await wait_until(lambda: _posted_all(stack, n), timeout_s=120, what=f"{n} transfers posted and relayed")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    entries = await stack.pool.fetch("select cause_id from ledger.entries where kind = 'journal.transfer'")
    assert len(entries) == n and len({r["cause_id"] for r in entries}) == n  # each input once, none twice
    assert await stack.pool.fetchval("select count(*) from settle.inbox where consumer = 'journal'") == n
    outbox = await stack.pool.fetch("select event_id from settle.outbox where topic = 'journal.posted.v1'")
    assert len(outbox) == n == len({r["event_id"] for r in outbox})  # each effect queued exactly once
    published = [orjson.loads(r.value) for r in await read_topic(stack, topics.JOURNAL_POSTED)]
    assert {e["data"]["transfer_id"] for e in published} == {f"tr-{i}" for i in range(n)}  # nothing lost
    assert len({e["id"] for e in published}) == n  # redelivered copies keep their event id
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok and report.trial_balance == {"USD/8": 0}
    fees = await stack.pool.fetchval("select -balance from ledger.accounts where code = 'chaos:bank'")
    assert int(fees) == n * 10**6  # n × $0.01 in USD/8 units


async def _posted_all(stack: Stack, n: int) -> bool:
    return await _sent(stack) >= n


async def test_relay_killed_at_random_points_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    """The relay alone is killed repeatedly while a large backlog drains; every committed row is
    published at least once and duplicates keep their event id."""
    n = 20_000
    # Queue the backlog through the real consumer first (no relay running).
    await publish(stack, _transfers(n))
    from services.journal.main import SERVICE as JOURNAL
    from tests.fleet import running

    async with running(stack, [JOURNAL], relays=0):
        await wait_until(lambda: _queued(stack, n), timeout_s=120, what="all events in the outbox")
    assert await _sent(stack) == 0
    rng = random.Random(7)
    log = tmp_path / "relay.log"
    kills = 0
    sent_sql = "select count(*) from settle.outbox where topic = 'journal.posted.v1' and sent_at is not null"
    for _ in range(5):
        process = _start(stack, "relay", log=log)
        if await _kill_while_working(stack, process, sent_sql, n, rng):
            kills += 1
        else:
            _kill(process)
            break
    assert kills >= 3, f"the relay finished before it could be killed enough times; log:\n{log.read_text()[-2000:]}"
    process = _start(stack, "relay", log=log)
    try:
        await wait_until(lambda: _posted_all(stack, n), timeout_s=120, what="backlog relayed")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    published = [orjson.loads(r.value)["id"] for r in await read_topic(stack, topics.JOURNAL_POSTED)]
    copies = Counter(published)
    expected = {
        r["event_id"]
        for r in await stack.pool.fetch("select event_id from settle.outbox where topic = 'journal.posted.v1'")
    }
    assert set(copies) == expected and len(expected) == n  # every committed row published
    # Per partition, the first publication of each event keeps outbox order (lanes are ordered).
    order = {
        r["event_id"]: r["id"]
        for r in await stack.pool.fetch("select event_id, id from settle.outbox where topic = 'journal.posted.v1'")
    }
    by_partition: dict[int, list[int]] = {}
    seen: set[str] = set()
    for record in sorted(await read_topic(stack, topics.JOURNAL_POSTED), key=lambda r: (r.partition, r.offset)):
        event_id = orjson.loads(record.value)["id"]
        if event_id not in seen:
            seen.add(event_id)
            by_partition.setdefault(record.partition, []).append(order[event_id])
    for ids in by_partition.values():
        assert ids == sorted(ids)


async def _queued(stack: Stack, n: int) -> bool:
    return int(await stack.pool.fetchval("select count(*) from settle.outbox where topic = 'journal.posted.v1'")) >= n
