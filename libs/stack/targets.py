"""What the local stack hands to a process: where the broker and the database are, and who runs them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

BrokerKind = Literal["env", "noida", "mock", "container"]
"""``env``: SETTLE_KAFKA_BOOTSTRAP_SERVERS; ``noida``: the local noida-db broker (default);
``mock``: the local librdkafka mock-cluster process;
``container``: Docker."""
DatabaseKind = Literal["env", "local", "embedded", "container"]
"""``env``: SETTLE_DATABASE_URL; ``local``: 127.0.0.1:5432; ``embedded``: our own server in the state dir."""


@dataclass(frozen=True)
class BrokerTarget:
    """A Kafka-protocol broker to connect to.

    ``bootstrap_servers`` is a comma-separated ``host:port`` list. ``pid`` is the broker process
    when Settle runs it on this machine (kind ``noida`` or ``mock``), else None.
    """

    bootstrap_servers: str
    kind: BrokerKind
    pid: int | None = None


@dataclass(frozen=True)
class DatabaseTarget:
    """A PostgreSQL server to connect to; ``url`` is a DSN asyncpg accepts.

    ``pid`` is the postmaster when Settle runs the server (kind ``embedded``), else None.
    """

    url: str
    kind: DatabaseKind
    pid: int | None = None

    @property
    def display_url(self) -> str:
        """``url`` with any password replaced by ``***``, for logs and ``settle stack status``."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class StackStatus:
    """What runs, as seen from one state directory. Reading a status starts nothing.

    ``broker`` / ``database`` are what a Settle process would use now (None: nothing usable, the
    next ``settle stack up`` or worker start would launch it). ``embedded_database`` is Settle's
    own embedded PostgreSQL when it runs, even if ``database`` points elsewhere, because
    ``stack_down`` stops it.
    """

    state_dir: Path
    broker: BrokerTarget | None
    database: DatabaseTarget | None
    embedded_database: DatabaseTarget | None
    broker_log: Path
