"""The local Kafka-protocol broker, run as a long-lived process: noida-db (default) or librdkafka's mock.

::

    python -m libs.stack.broker --state-file PATH [--kind noida|mock] [--data-dir DIR]
                                [--retention-ms MS] [--brokers 3] [--topic-prefix P]
                                [--topic NAME=PARTITIONS ...] [--detach] [--exit-with-parent]

``--kind noida`` (the default) supervises a noida-db child process (:mod:`libs.stack.noida`): a
durable log in ``--data-dir`` with Kafka-like retention (``--retention-ms`` per topic). ``--kind mock``
hosts librdkafka's mock cluster in this process (below): in memory, and it deletes the unconsumed head
of a partition past ~5 MiB — kept as a second, independent implementation of the protocol.

The mock cluster ships inside the confluent-kafka wheel (``confluent_kafka.libs/librdkafka*.so*``)
and is driven through ctypes. It speaks the real protocol over TCP on random 127.0.0.1 ports; its
topics and offsets live in this process's memory only (see /work/shared/LOCAL_STACK.md for what it
does not honour). At start it creates every topic it is given (``--topic``; else the registered
registry, ``libs.messaging.topic.all_physical``) with its exact partition count, because the mock
refuses CreateTopics and would auto-create
4-partition topics. When it is ready it writes a :class:`~libs.stack.state.BrokerState` to the
state file (atomically); it removes that file when SIGTERM, SIGINT or SIGHUP stops it.

Exit status: 0 after a clean stop, 1 when the cluster could not start, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from libs.errors import MissingDependencyError
from libs.stack.mock_cluster import DEFAULT_BROKERS, MAX_BROKERS, MAX_PARTITIONS, MockCluster
from libs.stack.state import BrokerState, remove_state_file, write_broker_state

MAX_TOPICS = 10_000
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
"""Kafka's default retention; the outbox keeps sent rows as long (SETTLE_OUTBOX_RETENTION_S)."""
PARENT_POLL_S = 1.0
"""With --exit-with-parent: how often the broker checks that its parent is alive."""
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def wait_for_stop(exit_with_parent: bool) -> int:
    """Block until SIGTERM/SIGINT/SIGHUP or, with ``exit_with_parent``, the parent's death.

    The caller blocked the signals before librdkafka started its threads (which therefore never
    take them); here they are handled in this thread only. Portable where ``sigtimedwait`` is not
    (macOS). Returns the signal number, or 0 when the parent went away.
    """
    received: list[int] = []
    stopped = threading.Event()

    def on_signal(signo: int, frame: object) -> None:
        received.append(signo)
        stopped.set()

    for signo in STOP_SIGNALS:
        signal.signal(signo, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    parent_pid = os.getppid()
    while not stopped.wait(PARENT_POLL_S):
        if exit_with_parent and os.getppid() != parent_pid:
            return 0
    return received[0]


def run_broker(state_file: Path, *, brokers: int, topics: Mapping[str, int], exit_with_parent: bool = False) -> int:
    """Start the cluster, create ``topics``, publish the state file, serve until stopped."""
    # Blocked before librdkafka starts its threads, so they inherit the mask and the stop signals
    # reach this thread (see wait_for_stop) instead of killing the process without cleanup.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        cluster = MockCluster(brokers)
    except (MissingDependencyError, RuntimeError, OSError) as exc:
        print(f"settle broker: cannot start the mock cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        for name, partitions in topics.items():
            cluster.create_topic(name, partitions)
        state = BrokerState(
            pid=os.getpid(),
            bootstrap_servers=cluster.bootstrap_servers,
            started_at=datetime.now(UTC),
            topics=dict(topics),
        )
        write_broker_state(state_file, state)
    except (RuntimeError, OSError) as exc:
        print(f"settle broker: cannot start: {exc}", file=sys.stderr, flush=True)
        cluster.close()
        return 1
    print(
        f"settle broker: librdkafka {cluster.version} mock cluster pid={state.pid} "
        f"bootstrap={state.bootstrap_servers} topics={len(topics)} ready",
        file=sys.stderr,
        flush=True,
    )
    try:
        signo = wait_for_stop(exit_with_parent)
    finally:
        # Remove the claim first: from here on no client should be sent to these ports.
        remove_state_file(state_file, pid=state.pid)
        cluster.close()
    reason = signal.Signals(signo).name if signo else "parent exited"
    print(f"settle broker: pid={state.pid} stopped ({reason})", file=sys.stderr, flush=True)
    return 0


def run_noida(
    state_file: Path, *, topics: Mapping[str, int], data_dir: Path, retention_ms: int, exit_with_parent: bool
) -> int:
    """Start noida-db, create ``topics``, publish the state file, serve until stopped or until noida dies."""
    from libs.stack.noida import start_and_create

    stopped = threading.Event()
    received: list[int] = []

    def on_signal(signo: int, frame: object) -> None:
        received.append(signo)
        stopped.set()

    for signo in STOP_SIGNALS:
        signal.signal(signo, on_signal)
    try:
        server = start_and_create(data_dir, topics, retention_ms)
    except (MissingDependencyError, RuntimeError, OSError) as exc:
        print(f"settle broker: cannot start noida-db: {exc}", file=sys.stderr, flush=True)
        return 1
    state = BrokerState(
        kind="noida",
        pid=os.getpid(),
        bootstrap_servers=server.bootstrap_servers,
        started_at=datetime.now(UTC),
        topics=dict(topics),
    )
    write_broker_state(state_file, state)
    print(
        f"settle broker: noida-db pid={state.pid} bootstrap={state.bootstrap_servers} topics={len(topics)} "
        f"data={data_dir} retention_ms={retention_ms} ready",
        file=sys.stderr,
        flush=True,
    )
    parent_pid = os.getppid()
    reason = ""
    try:
        while not stopped.wait(PARENT_POLL_S):
            if exit_with_parent and os.getppid() != parent_pid:
                reason = "parent exited"
                break
            if not server.alive():
                reason = "noida-db exited"
                break
    finally:
        remove_state_file(state_file, pid=state.pid)
        server.stop()
    reason = reason or signal.Signals(received[0]).name
    print(f"settle broker: pid={state.pid} stopped ({reason})", file=sys.stderr, flush=True)
    return 0 if reason != "noida-db exited" else 1


def parse_topic(text: str) -> tuple[str, int]:
    name, sep, partitions = text.rpartition("=")
    if not sep or not name or not partitions.isdigit() or not 1 <= int(partitions) <= MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PARTITIONS (1..{MAX_PARTITIONS})")
    return name, int(partitions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m libs.stack.broker", description="Run librdkafka's mock cluster as the local broker."
    )
    parser.add_argument("--state-file", type=Path, required=True, help="where to write the JSON state")
    parser.add_argument(
        "--brokers",
        type=int,
        default=DEFAULT_BROKERS,
        choices=range(1, MAX_BROKERS + 1),
        metavar=f"1..{MAX_BROKERS}",
        help="mock brokers in the cluster (default 3)",
    )
    parser.add_argument("--kind", choices=("noida", "mock"), default="noida", help="which broker (default noida)")
    parser.add_argument("--data-dir", type=Path, default=None, help="noida: where the log lives")
    parser.add_argument(
        "--retention-ms", type=int, default=DEFAULT_RETENTION_MS, help="noida: retention.ms of created topics"
    )
    parser.add_argument("--topic-prefix", default="", help="prefix of every registry topic name")
    parser.add_argument(
        "--topic",
        type=parse_topic,
        action="append",
        default=[],
        metavar="NAME=PARTITIONS",
        help="create exactly these topics instead of the registry (repeatable; no prefix is applied)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="fork into the background: the launching process is not the broker's parent",
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the launching process dies (test brokers)"
    )
    return parser


def resolve_topics(prefix: str, explicit: Sequence[tuple[str, int]]) -> dict[str, int]:
    if explicit:
        return dict(explicit)
    from libs.messaging.topic import all_physical  # the registry the composition root registered

    return all_physical(prefix)


def detach() -> None:
    """Double fork: the launcher waits for the first child, the broker is reparented to init.

    So a long-lived launcher (a worker, a test session) never accumulates the broker as a zombie,
    and the broker survives the launcher. Called before any thread exists.
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    topics = resolve_topics(args.topic_prefix, args.topic)
    if len(topics) > MAX_TOPICS:
        print(f"settle broker: {len(topics)} topics, at most {MAX_TOPICS}", file=sys.stderr)
        return 2
    state_file: Path = args.state_file.expanduser().resolve()
    if args.detach:
        detach()
    if args.kind == "noida":
        data_dir = (args.data_dir or state_file.parent / "kafka-data").expanduser().resolve()
        return run_noida(
            state_file,
            topics=topics,
            data_dir=data_dir,
            retention_ms=args.retention_ms,
            exit_with_parent=args.exit_with_parent,
        )
    return run_broker(state_file, brokers=args.brokers, topics=topics, exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
