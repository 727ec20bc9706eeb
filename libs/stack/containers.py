"""Real Kafka (KRaft) and PostgreSQL in Docker through testcontainers, for machines with a Docker engine.

Importable without Docker and without testcontainers: both are imported when
:func:`start_containers` runs. Detect an engine with :func:`docker_available` (a ping, not the
presence of a ``docker`` binary: a client without an engine is common).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.errors import BrokerUnavailableError, MissingDependencyError
from libs.stack.targets import BrokerTarget, DatabaseTarget

POSTGRES_IMAGE = "postgres:16-alpine"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
"""Confluent Platform 7.6 = Apache Kafka 3.6; KRaft needs 7.0 or later."""
DOCKER_PING_TIMEOUT_S = 3
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
KAFKA_START_TIMEOUT_S = 120
TOPIC_CREATE_TIMEOUT_S = 30.0
REPLICATION_FACTOR = 1
NO_DOCKER = "no Docker engine answers: start Docker, or use the local stack (`settle stack up`)"


@dataclass(frozen=True)
class ContainerStack:
    """A running PostgreSQL and Kafka pair; both stop when :func:`start_containers` exits."""

    database: DatabaseTarget
    broker: BrokerTarget


def _default_socket_missing() -> bool:
    """True when the engine would be the default Unix socket and that socket does not exist.

    Checked first because docker-py leaks the socket of a failed Unix connection (a
    ResourceWarning at garbage collection), and "no socket file" is the usual no-engine case.
    """
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return False  # tcp:// or ssh://: only a ping can tell
    return not Path(host.removeprefix("unix://") or DEFAULT_DOCKER_SOCKET).exists()


def docker_available() -> bool:
    """True when a Docker engine answers a ping (False without the ``docker`` package too)."""
    if _default_socket_missing():
        return False
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
    except Exception:  # DockerException, bad DOCKER_HOST, missing socket: all mean "no engine"
        return False
    try:
        return bool(client.ping())
    except Exception:  # APIError, ConnectionError, timeout: the engine does not answer
        return False
    finally:
        client.close()


def _container_classes() -> tuple[Any, Any]:
    """PostgresContainer and KafkaContainer; testcontainers >= 4.14 moved them to ``community``."""
    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.kafka import KafkaContainer
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise MissingDependencyError(
                "testcontainers is not installed: run `make install` (it is a test dependency)."
            ) from None
    return PostgresContainer, KafkaContainer


def create_topics(bootstrap_servers: str, topics: Mapping[str, int]) -> None:
    """Create ``topics`` (name → partitions) on a real cluster, accepting ones that already exist."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported
    except ImportError:
        raise MissingDependencyError("confluent-kafka is not installed: run `make install`.") from None
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=partitions, replication_factor=REPLICATION_FACTOR)
            for name, partitions in topics.items()
        ],
        operation_timeout=TOPIC_CREATE_TIMEOUT_S,
        request_timeout=TOPIC_CREATE_TIMEOUT_S,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=TOPIC_CREATE_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailableError(f"could not create topic {name!r}: {exc.args[0].str()}") from exc


@contextlib.contextmanager
def start_containers(
    topics: Mapping[str, int] | None = None,
    *,
    postgres_image: str = POSTGRES_IMAGE,
    kafka_image: str = KAFKA_IMAGE,
) -> Iterator[ContainerStack]:
    """Start PostgreSQL and a one-node KRaft Kafka, create ``topics`` (default: the registry), yield both.

    Blocks while images are pulled and containers start (minutes on a cold machine). Both
    containers are stopped and removed on exit, also after an error. Raises
    MissingDependencyError without a Docker engine or without testcontainers.
    """
    if not docker_available():
        raise MissingDependencyError(f"{NO_DOCKER}.")
    postgres_class, kafka_class = _container_classes()
    if topics is None:
        from libs.messaging.topic import all_physical

        topics = all_physical()
    import docker.errors

    with contextlib.ExitStack() as stack:
        try:
            # __enter__ removes the container when its own start fails.
            postgres = stack.enter_context(postgres_class(postgres_image, driver=None))
            kafka = kafka_class(kafka_image).with_kraft()
            stack.callback(kafka.stop)  # stop() tolerates a container that never started
            kafka.start(timeout=KAFKA_START_TIMEOUT_S)
        except docker.errors.DockerException as exc:
            raise MissingDependencyError(f"{NO_DOCKER} ({type(exc).__name__}).") from exc
        bootstrap_servers = kafka.get_bootstrap_server()
        create_topics(bootstrap_servers, topics)
        yield ContainerStack(
            database=DatabaseTarget(postgres.get_connection_url(), "container", None),
            broker=BrokerTarget(bootstrap_servers, "container", None),
        )
