"""The local stack: a Kafka-protocol broker and PostgreSQL for development and tests.

Nothing to install beyond the Python dependencies and nothing to configure: a worker calls
:func:`ensure_broker` and :func:`resolve_database`, which honour ``SETTLE_KAFKA_BOOTSTRAP_SERVERS``
and ``SETTLE_DATABASE_URL`` and otherwise use (starting when needed) a local noida-db broker (or
librdkafka's mock cluster) and the server at 127.0.0.1:5432 or an embedded PostgreSQL. Their state
lives in ``Settings.state_dir`` (see :mod:`libs.stack.state`). Tests start a private broker per test
with :func:`start_local_broker`; machines with Docker can use :func:`start_containers` (real Kafka and
PostgreSQL through testcontainers).

Missing pieces raise :class:`libs.errors.MissingDependencyError` with one sentence saying what to
install or set.
"""

from __future__ import annotations

from libs.stack.containers import ContainerStack, docker_available, start_containers
from libs.stack.control import stack_down, stack_status, stack_up
from libs.stack.database import (
    embedded_database,
    local_database_url,
    probe_database,
    resolve_database,
    start_embedded_database,
    stop_embedded_database,
)
from libs.stack.launcher import (
    LocalBrokerProcess,
    MockBrokerProcess,
    ensure_broker,
    start_local_broker,
    start_mock_broker,
)
from libs.stack.targets import BrokerKind, BrokerTarget, DatabaseKind, DatabaseTarget, StackStatus

__all__ = [
    "BrokerKind",
    "BrokerTarget",
    "ContainerStack",
    "DatabaseKind",
    "DatabaseTarget",
    "LocalBrokerProcess",
    "MockBrokerProcess",
    "StackStatus",
    "docker_available",
    "embedded_database",
    "ensure_broker",
    "local_database_url",
    "probe_database",
    "resolve_database",
    "stack_down",
    "stack_status",
    "stack_up",
    "start_containers",
    "start_embedded_database",
    "start_local_broker",
    "start_mock_broker",
    "stop_embedded_database",
]
