"""Drive one consumer group's consume() directly with records built in the test: no broker, the real
inbox, handler, dead letters and transaction — for tests about what the database does with events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.messaging.consume import BatchResult, Consumer, Subscription
from libs.messaging.partitioner import partition_for
from schemas.topics import Topic
from tests.conftest import Stack


@dataclass
class Record:
    """What consume() reads of a Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


class Feed:
    """Hands records to one consumer group, one batch per call, with increasing offsets per
    (topic, partition); the partition is the key's (as Kafka's default partitioner) unless given."""

    def __init__(self, stack: Stack, subscription: Subscription) -> None:
        self.consumer = Consumer(stack.pool, subscription)
        self.offsets: dict[tuple[str, int], int] = {}

    async def send(self, topic: Topic, key: str, value: bytes, partition: int | None = None) -> BatchResult:
        p = partition_for(key.encode(), topic.partitions) if partition is None else partition
        offset = self.offsets.get((topic.name, p), 0)
        self.offsets[(topic.name, p)] = offset + 1
        return await self.consumer.process([Record(topic.name, p, offset, key.encode(), value)])
