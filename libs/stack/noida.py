"""noida-db's Kafka service as the local broker: a real Kafka-protocol broker that keeps what it is given.

Why this one (measured 2026-12, README "The local broker"): librdkafka's mock cluster deletes the
unconsumed head of a partition past ~5 MiB, which silently lost billing data when a consumer lagged.
noida-db (PyPI ``noida-db``, one static binary in the wheel) keeps records until the topic's
retention (``retention.ms``/``retention.bytes``, honoured per topic), survives a graceful restart
(its data dir holds the log), supports CreateTopics, the idempotent producer and transactions. Its
one known defect — a consumer group blocked after a member is SIGKILLed — does not touch Settle,
whose workers lease partitions through PostgreSQL and never join a Kafka consumer group.

This module starts the binary as a child of the broker process (:mod:`libs.stack.broker`), on
127.0.0.1 only, with ``PR_SET_PDEATHSIG`` so it never outlives its supervisor, then creates the
registry's topics through the admin API with the configured retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from libs.errors import MissingDependencyError

READY_WAIT_S = 15.0
STOP_WAIT_S = 60.0
"""A graceful stop saves the log to the data dir (~10 s per 256 MB of messages)."""
PORT_FILE = "port"
_PR_SET_PDEATHSIG = 1
INSTALL_HINT = (
    "run `make install` (it installs noida-db), or set SETTLE_LOCAL_BROKER=mock or SETTLE_KAFKA_BOOTSTRAP_SERVERS"
)


def find_noida() -> Path:
    """The noida-db binary inside its wheel. Raises MissingDependencyError when it is not installed."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"noida-db is not installed: {INSTALL_HINT}.")
    binary = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
    if not binary.is_file():
        raise MissingDependencyError(f"the noida-db package has no binary at {binary}: {INSTALL_HINT}.")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(data_dir: Path) -> int:
    """The port used last time for this data dir when it is free (clients that remember it reconnect),
    else a free one; remembered in ``<data_dir>/port``."""
    remembered = data_dir / PORT_FILE
    with contextlib.suppress(OSError, ValueError):
        port = int(remembered.read_text().strip())
        if 1024 <= port <= 65535 and _port_free(port):
            return port
    port = _free_port()
    remembered.write_text(str(port))
    return port


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervising broker process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class NoidaKafka:
    """One noida-db process serving Kafka on 127.0.0.1:``port`` with its log in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = find_noida()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = choose_port(data_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the binary and wait until it accepts TCP. Raises RuntimeError when it does not."""
        command = [str(self.binary), "start", "--only", "kafka", "--host", "127.0.0.1"]
        command += ["--kafka-port", str(self.port), "--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"noida-db exited with status {self.process.returncode} before it was ready")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"noida-db did not accept connections on port {self.port} within {READY_WAIT_S:g} s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (noida-db saves its log), SIGKILL after :data:`STOP_WAIT_S`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


async def create_registry_topics(bootstrap_servers: str, topics: Mapping[str, int], retention_ms: int) -> None:
    """Create every topic that does not exist yet, with ``retention.ms``; existing ones must have the
    same partition count (a durable broker keeps its topics across restarts)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from libs.messaging.broker import check_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, topic_configs={"retention.ms": str(retention_ms)})
            for name, n in topics.items()
            if name not in existing
        ]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()
    await check_topics(bootstrap_servers, expected=topics)


def start_and_create(data_dir: Path, topics: Mapping[str, int], retention_ms: int) -> NoidaKafka:
    """Start noida-db and create the topics (blocking). Raises RuntimeError or MissingDependencyError."""
    server = NoidaKafka(data_dir)
    server.start()
    try:
        asyncio.run(create_registry_topics(server.bootstrap_servers, topics, retention_ms))
    except Exception as exc:
        server.stop()
        raise RuntimeError(f"noida-db started but the topics could not be created: {exc}") from exc
    return server
