"""Kafka clients for Settle: producers for the relay and operators, topic setup and checks.

Consumers are partition readers (see :mod:`libs.messaging.subscriber`); every client goes over TCP
to a real Kafka or to the local mock-cluster broker — there is no in-memory broker anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IncompatibleBrokerVersion, KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from libs.errors import BrokerUnavailableError, ConfigurationError
from libs.messaging.partitioner import partition_for
from libs.messaging.topic import Topic, all_physical


def bootstrap_list(bootstrap_servers: str) -> list[str]:
    return [s.strip() for s in bootstrap_servers.split(",") if s.strip()]


def make_producer(bootstrap_servers: str, *, client_id: str = "settle") -> AIOKafkaProducer:
    """Idempotent producer, ``acks=all``: no duplicates from producer retries, order kept per partition."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_list(bootstrap_servers),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )


async def start_producer(bootstrap_servers: str, *, client_id: str = "settle") -> AIOKafkaProducer:
    producer = make_producer(bootstrap_servers, client_id=client_id)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise BrokerUnavailableError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    return producer


async def stop_client(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient | None, timeout_s: float = 10.0
) -> None:
    """Stop a client without hanging (a vanished mock broker can make stop() wait forever)."""
    if client is None:
        return
    stop = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stop, timeout_s)


def keyed_partition(topic: Topic, key: bytes | None) -> int:
    """The partition the relay writes a message to: murmur2 of the key over the topic's partition count
    (Kafka's default partitioner), partition 0 for a keyless message — so anything published from
    outside the outbox (operators, the demo, tests) lands where Settle's own messages of that key do."""
    return partition_for(key, topic.partitions) if key else 0


async def publish_keyed(
    producer: AIOKafkaProducer, items: Iterable[tuple[Topic, bytes | None, bytes]], *, prefix: str = ""
) -> int:
    """Send (topic, key, value) items in order, each to its :func:`keyed_partition`, and wait for
    every acknowledgement. Returns how many were sent. The one way Settle publishes by key."""
    futures = []
    for topic, key, value in items:
        futures.append(
            await producer.send(prefix + topic.name, value=value, key=key, partition=keyed_partition(topic, key))
        )
    await asyncio.gather(*futures)
    return len(futures)


async def topic_partitions(bootstrap_servers: str, names: list[str]) -> dict[str, int]:
    """Partition count of each named topic as the broker reports it (absent topics are left out)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(bootstrap_servers), enable_auto_commit=False)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await stop_client(consumer)
        raise BrokerUnavailableError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    try:
        metadata = await consumer._client.fetch_all_metadata()  # a fresh snapshot of every topic
        found = {}
        for name in names:
            parts = metadata.partitions_for_topic(name)
            if parts:
                found[name] = len(parts)
        return found
    finally:
        await stop_client(consumer)


async def create_topics(bootstrap_servers: str, prefix: str = "", replication_factor: int = 1) -> dict[str, str]:
    """Create every registry topic (and its dead-letter topic); returns name → created/exists/preexisting.

    The local mock broker cannot create topics through the admin API: its topics are created when it
    starts, so this falls back to checking them.
    """
    wanted = all_physical(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(bootstrap_servers))
    results: dict[str, str] = {}
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=replication_factor) for name, n in wanted.items()]
        )
        for topic, code, *_ in getattr(response, "topic_errors", ()):
            results[topic] = (
                "created" if code == 0 else "exists" if code == TopicAlreadyExistsError.errno else f"error {code}"
            )
    except IncompatibleBrokerVersion:
        results = {}
    except KafkaConnectionError as exc:
        raise BrokerUnavailableError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    except KafkaError as exc:
        raise ConfigurationError(f"topic creation failed: {exc}") from exc
    finally:
        await stop_client(admin)
    await check_topics(bootstrap_servers, prefix)
    for name in wanted:
        results.setdefault(name, "exists")
    return results


async def check_topics(bootstrap_servers: str, prefix: str = "", expected: Mapping[str, int] | None = None) -> None:
    """Refuse to run against topics that are missing or have another partition count than the registry
    (watermarks and per-key order depend on it)."""
    wanted = dict(expected or all_physical(prefix))
    found = await topic_partitions(bootstrap_servers, list(wanted))
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ConfigurationError(f"{len(missing)} topics are missing (e.g. {missing[0]}): run `settle topics create`")
    wrong = {n: (found[n], wanted[n]) for n in wanted if found[n] != wanted[n]}
    if wrong:
        name, (have, want) = next(iter(wrong.items()))
        raise ConfigurationError(f"topic {name} has {have} partitions; the registry says {want}")


async def end_offsets(bootstrap_servers: str, topics: Mapping[str, int]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_list(bootstrap_servers), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return dict(await consumer.end_offsets(parts)) if parts else {}
    finally:
        await stop_client(consumer)


async def read_all(bootstrap_servers: str, topic: str, partitions: int, *, timeout_s: float = 60) -> list[Any]:
    """Every record currently in a topic (all partitions, from the beginning), without a consumer group.

    For operators' reports, tests and benchmarks — not a consumption path (nothing is committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_list(bootstrap_servers),
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailableError(f"could not read {topic} to its end within {timeout_s} s")
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(batch)
        return records
    finally:
        await stop_client(consumer)
