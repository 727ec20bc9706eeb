"""The local stack for real: the mock-cluster broker over TCP, the local and the embedded PostgreSQL.

Every broker test gets a fresh broker process (~0.2 s) with its own state directory under
pytest's tmp_path; the embedded PostgreSQL runs in a temporary state directory too, never in the
repository or the user's real state directory.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from libs.settings import Settings
from libs.stack import (
    MockBrokerProcess,
    database,
    embedded_database,
    ensure_broker,
    resolve_database,
    stack_down,
    stack_status,
    stack_up,
    start_mock_broker,
)
from libs.stack.state import BROKER_STATE_NAME, pid_alive, probe_tcp, split_address
from schemas.topics import USAGE_METERED, all_physical

pytestmark = pytest.mark.integration

MESSAGES = 1000
KEYS = 37
CLIENT_STOP_S = 10.0
CONSUME_DEADLINE_S = 30.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MockBrokerProcess]:
    with start_mock_broker(state_dir=tmp_path / "broker") as process:
        yield process
    assert not process.running()


def _settings(state_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "state_dir": state_dir,
        "kafka_bootstrap_servers": None,
        "database_url": None,
        "topic_prefix": "",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_keyed_messages_round_trip_through_a_consumer_group(broker: MockBrokerProcess) -> None:
    topic = USAGE_METERED.name
    sent: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = []
        for sequence in range(MESSAGES):
            key = f"contract-{sequence % KEYS}"
            sent[key].append(sequence)
            futures.append((key, await producer.send(topic, key=key.encode(), value=str(sequence).encode())))
        for key, future in futures:
            metadata = await future
            # One key, one partition: the order of a contract's events is the partition's order.
            assert partition_of.setdefault(key, metadata.partition) == metadata.partition
    finally:
        await asyncio.wait_for(producer.stop(), CLIENT_STOP_S)

    received: dict[str, list[int]] = defaultdict(list)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=f"test-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + CONSUME_DEADLINE_S
        count = 0
        while count < MESSAGES and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    assert record.key is not None
                    assert record.value is not None
                    key = record.key.decode()
                    assert tp.partition == partition_of[key]
                    received[key].append(int(record.value))
                    count += 1
        assignment = consumer.assignment()
        await consumer.commit()
        committed = {tp.partition: await consumer.committed(tp) for tp in assignment}
    finally:
        await asyncio.wait_for(consumer.stop(), CLIENT_STOP_S)

    assert count == MESSAGES
    assert received == sent  # every message once, in send order per key
    assert {tp.partition for tp in assignment} == set(range(USAGE_METERED.partitions))
    per_partition: dict[int, int] = defaultdict(int)
    for key, sequences in sent.items():
        per_partition[partition_of[key]] += len(sequences)
    assert committed == {p: per_partition.get(p, 0) for p in range(USAGE_METERED.partitions)}


async def test_every_registry_topic_has_its_partition_count(broker: MockBrokerProcess) -> None:
    expected = all_physical()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics()  # all topics: none is auto-created by asking
        cluster = await admin.describe_cluster()
    finally:
        await asyncio.wait_for(admin.close(), CLIENT_STOP_S)
    actual = {topic["topic"]: len(topic["partitions"]) for topic in described if topic["error_code"] == 0}
    assert actual == expected
    assert dict(broker.topics) == expected
    assert len(cluster["brokers"]) == len(broker.bootstrap_servers.split(",")) == 3
    assert cluster["controller_id"] in {b["node_id"] for b in cluster["brokers"]}, "admin clients need it"


async def test_a_private_broker_stops_and_removes_its_state_file(tmp_path: Path) -> None:
    process = start_mock_broker({"only.v1": 2}, state_dir=tmp_path)
    host, port = split_address(process.bootstrap_servers.split(",")[0])
    assert await probe_tcp(host, port, 1.0)
    assert process.stop() == 0  # clean exit on SIGTERM
    assert not (tmp_path / BROKER_STATE_NAME).exists()
    assert not await probe_tcp(host, port, 1.0)
    assert process.stop() == 0, "stop is idempotent"


async def test_the_shared_broker_is_reused_and_stack_down_stops_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "state")
    try:
        first, second = await asyncio.gather(ensure_broker(settings), ensure_broker(settings))
        assert first == second, "concurrent callers share one broker"
        assert first.kind == settings.local_broker  # noida-db unless SETTLE_LOCAL_BROKER says mock
        assert first.pid is not None
        assert pid_alive(first.pid)
        again = await ensure_broker(settings)
        assert again == first, "a later caller reuses it"

        status = await stack_status(settings)
        assert status.broker == first
        host, port = split_address(first.bootstrap_servers.split(",")[0])
        assert await probe_tcp(host, port, 1.0)

        await stack_down(settings)

        assert not pid_alive(first.pid)
        assert not (settings.state_dir / BROKER_STATE_NAME).exists()
        assert not await probe_tcp(host, port, 1.0)
        assert (await stack_status(settings)).broker is None
    finally:
        await stack_down(settings)


async def test_stack_up_reports_what_runs_and_stack_down_leaves_the_local_server_alone(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "state")
    try:
        status = await stack_up(settings)
        assert status.broker is not None
        assert status.broker.kind == settings.local_broker
        assert status.database is not None
        assert status.database.kind == "local"
        assert status.embedded_database is None
        assert status.broker_log == settings.state_dir / "broker.log"
        assert await stack_status(settings) == status
    finally:
        await stack_down(settings)
    after = await stack_status(settings)
    assert after.broker is None
    assert after.database == status.database, "the server Settle did not start still runs"


async def test_a_killed_shared_broker_is_replaced(tmp_path: Path) -> None:
    import os
    import signal

    settings = _settings(tmp_path / "state")
    try:
        first = await ensure_broker(settings)
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)  # leaves its state file behind
        deadline = time.monotonic() + 5
        while pid_alive(first.pid):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        second = await ensure_broker(settings)
        assert second.pid != first.pid, "a broker whose process died is replaced"
    finally:
        await stack_down(settings)


async def test_the_default_broker_keeps_its_records_across_a_restart(tmp_path: Path) -> None:
    """noida-db keeps its log in the state dir: a restarted local broker still has what it was given."""
    from aiokafka import AIOKafkaProducer

    from libs.messaging.broker import read_all, stop_client

    settings = _settings(tmp_path / "state", local_broker="noida")
    topic = "infra.lifecycle.v1"
    try:
        first = await ensure_broker(settings)
        assert first.kind == "noida"
        producer = AIOKafkaProducer(bootstrap_servers=first.bootstrap_servers, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i in range(50):
                await (await producer.send(topic, value=f"kept-{i}".encode(), key=b"k", partition=2))
        finally:
            await stop_client(producer)
        await stack_down(settings)
        second = await ensure_broker(settings)
        assert second.pid != first.pid
        records = [r for r in await read_all(second.bootstrap_servers, topic, 6) if r.partition == 2]
        assert [r.value for r in records] == [f"kept-{i}".encode() for i in range(50)]
    finally:
        await stack_down(settings)


async def test_resolve_database_finds_the_local_server(tmp_path: Path) -> None:
    target = await resolve_database(_settings(tmp_path / "state"))
    assert target.kind == "local"
    assert target.url == "postgresql://postgres@127.0.0.1:5432/settle"
    connection = await asyncpg.connect(target.url)
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()
    assert not (tmp_path / "state" / "pgdata").exists(), "nothing embedded was started"


async def test_resolve_database_prefers_the_environment(tmp_path: Path) -> None:
    url = "postgresql://settle:secret@db.example:5432/settle"
    target = await resolve_database(_settings(tmp_path, database_url=url))
    assert (target.url, target.kind) == (url, "env")


async def test_embedded_postgres_starts_survives_a_restart_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SETTLE_DATABASE_URL", raising=False)
    monkeypatch.setattr(database, "LOCAL_POSTGRES_PORT", _closed_port())
    settings = _settings(tmp_path / "state")
    try:
        started_at = time.monotonic()
        first = await resolve_database(settings)
        first_start_s = time.monotonic() - started_at
        assert first.kind == "embedded"
        assert first.pid is not None
        assert (settings.state_dir / "pgdata" / "PG_VERSION").exists()
        connection = await asyncpg.connect(first.url)
        try:
            assert await connection.fetchval("select 1") == 1
            await connection.execute("create table kept (note text)")
            await connection.execute("insert into kept values ('before restart')")
        finally:
            await connection.close()
        assert await resolve_database(settings) == first, "a running embedded server is reused"
        assert (await stack_status(settings)).database == first

        await stack_down(settings)
        assert not pid_alive(first.pid)
        assert embedded_database(settings.state_dir) is None

        started_at = time.monotonic()
        second = await resolve_database(settings)
        restart_s = time.monotonic() - started_at
        assert second.kind == "embedded"
        assert second.pid != first.pid
        connection = await asyncpg.connect(second.url)
        try:
            assert await connection.fetchval("select note from kept") == "before restart"
        finally:
            await connection.close()
        print(f"embedded PostgreSQL: first start {first_start_s:.2f} s, restart {restart_s:.2f} s")
    finally:
        await stack_down(settings)
    assert embedded_database(settings.state_dir) is None
