"""Kafka's default key partitioner (murmur2, as the Java client), so rows know their partition when
they are written to the outbox and a relay can keep each partition's order."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    assert partitions > 0
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
