"""What the kernel knows of a topic: a name, a key, a partition count and the event types it carries.

The kernel knows no billing topic. The product's registry (``schemas.topics``) is handed to it once per
process by the composition root (:func:`register_topics`: the ``settle`` command, the test session);
the few kernel functions that need every topic (creating and checking them, redriving a dead letter to
its partition) read it with :func:`registered_topics`. Dead-letter topics are derived (``<name>.dlq``,
:data:`DLQ_PARTITIONS` partitions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from libs.errors import ConfigurationError

DLQ_PARTITIONS = 1


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    """What the message key is (the entity whose order matters)."""
    partitions: int
    description: str
    types: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    producer: str = "settle"
    """Who writes it: ``platform`` (input contract), ``operator`` or a Settle service."""
    archive: bool = False
    """Keep every record a consumer reads from it in the input archive (``settle.input_archive``), in the
    consuming transaction: what cannot be rebuilt from a Settle outbox must be kept to be replayed."""

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def model_for(self, event_type: str) -> type[BaseModel] | None:
        return self.types.get(event_type)


_registry: tuple[Topic, ...] | None = None


def register_topics(registry: Iterable[Topic]) -> None:
    """Give the kernel the process's topic registry (once; registering the same topics again is a no-op)."""
    global _registry
    topics = tuple(registry)
    assert len({t.name for t in topics}) == len(topics), "topic names are unique"
    if _registry is not None and _registry != topics:
        raise ConfigurationError("another topic registry is already registered in this process")
    _registry = topics


def registered_topics() -> tuple[Topic, ...]:
    """The registry :func:`register_topics` was given. Raises ConfigurationError when none was."""
    if _registry is None:
        raise ConfigurationError(
            "no topic registry registered in this process: the composition root calls "
            "libs.messaging.topic.register_topics(schemas.topics.REGISTRY) at start"
        )
    return _registry


def physical_topics(registry: Iterable[Topic], prefix: str = "") -> dict[str, int]:
    """Every topic to create (data topics and their dead-letter topics) → partition count."""
    topics = tuple(registry)
    created = {prefix + t.name: t.partitions for t in topics}
    created.update({prefix + t.dlq: DLQ_PARTITIONS for t in topics})
    return created


def all_physical(prefix: str = "") -> dict[str, int]:
    """:func:`physical_topics` of the registered registry."""
    return physical_topics(registered_topics(), prefix)


def topic_named(name: str) -> Topic | None:
    """The registered topic called ``name`` (no prefix), or None."""
    return next((t for t in registered_topics() if t.name == name), None)
