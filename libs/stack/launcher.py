"""Starting, finding and stopping the local broker process (``python -m libs.stack.broker``).

The broker is noida-db by default (durable, Kafka-like retention) or librdkafka's mock cluster
(``SETTLE_LOCAL_BROKER=mock``); see :mod:`libs.stack.broker`.

Two ways to run one:

* :func:`ensure_broker` — the shared development broker of a state directory. Started detached
  (double fork, new session), it outlives the command that started it; later commands find it
  through ``broker.json`` and reuse it; ``stack_down`` stops it.
* :func:`start_mock_broker` — a private broker owned by the caller (a test fixture): a child
  process with its own state file, stopped by :meth:`MockBrokerProcess.stop` and also when its
  parent dies (``--exit-with-parent``), so a killed test run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from libs.errors import BrokerUnavailableError, ConfigurationError
from libs.stack.broker import DEFAULT_RETENTION_MS
from libs.stack.mock_cluster import DEFAULT_BROKERS, find_librdkafka
from libs.stack.noida import find_noida
from libs.stack.state import (
    BROKER_LOCK_NAME,
    BROKER_LOG_NAME,
    BROKER_STATE_NAME,
    BrokerState,
    ensure_state_dir,
    hold_lock,
    is_broker_process,
    probe_tcp,
    read_broker_state,
    remove_state_file,
    split_address,
    stop_process,
)
from libs.stack.targets import BrokerTarget

LocalBrokerKind = Literal["noida", "mock"]

if TYPE_CHECKING:
    from libs.settings import Settings

READY_WAIT_S = 30.0
"""Longest wait for a starting broker's state file (ready in ~0.2 s; a durable noida-db log of
hundreds of MB takes seconds to load)."""
UNRESPONSIVE_WAIT_S = 10.0
"""A recorded broker whose process lives but does not accept TCP is waited for this long (it may be
saving its log), then reported — never stopped: only `settle stack down` stops a broker."""
READY_POLL_S = 0.01
PROBE_TIMEOUT_S = 1.0
"""TCP connect to a recorded broker; a local socket answers in microseconds."""
LOCK_WAIT_S = READY_WAIT_S + 5.0
"""Longest wait for another process that is starting or stopping the broker."""
STOP_STAGES: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0))
"""SIGTERM, then SIGKILL after 5 s: the broker's clean exit takes milliseconds."""
LOG_TAIL_BYTES = 2000
BROKER_MODULE = "libs.stack.broker"


def _source_root() -> Path:
    """Directory that holds the ``libs`` package, so ``-m libs.stack.broker`` imports from any cwd."""
    return Path(__file__).resolve().parents[2]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(_source_root()), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def broker_command(
    state_file: Path,
    topics: Mapping[str, int],
    *,
    kind: LocalBrokerKind = "noida",
    retention_ms: int = DEFAULT_RETENTION_MS,
    brokers: int = DEFAULT_BROKERS,
    detach: bool = False,
    exit_with_parent: bool = False,
) -> list[str]:
    """Command line of a broker process that creates exactly ``topics``."""
    command = [sys.executable, "-m", BROKER_MODULE, "--state-file", str(state_file), "--kind", kind]
    if kind == "noida":
        command += ["--retention-ms", str(retention_ms)]
    else:
        command += ["--brokers", str(brokers)]
    for name, partitions in topics.items():
        command += ["--topic", f"{name}={partitions}"]
    if detach:
        command.append("--detach")
    if exit_with_parent:
        command.append("--exit-with-parent")
    return command


def read_log_tail(log_path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """Last ``max_bytes`` of a log, for error messages; empty when there is none."""
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - max_bytes))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _not_ready_error(what: str, log_path: Path) -> BrokerUnavailableError:
    tail = read_log_tail(log_path)
    last_line = tail.splitlines()[-1] if tail else "(empty log)"
    return BrokerUnavailableError(f"the local broker {what}; see {log_path}: {last_line}")


def _check_installed(kind: LocalBrokerKind) -> None:
    if kind == "noida":
        find_noida()
    else:
        find_librdkafka()


class LocalBrokerProcess:
    """A local broker owned by this process (see :func:`start_local_broker`). Use as a context manager."""

    def __init__(self, process: subprocess.Popen[bytes], state: BrokerState, state_file: Path, log_path: Path) -> None:
        assert process.pid == state.pid, (process.pid, state.pid)
        self._process = process
        self.state = state
        self.state_file = state_file
        self.log_path = log_path

    @property
    def bootstrap_servers(self) -> str:
        return self.state.bootstrap_servers

    @property
    def pid(self) -> int:
        return self.state.pid

    @property
    def topics(self) -> Mapping[str, int]:
        return self.state.topics

    @property
    def target(self) -> BrokerTarget:
        return BrokerTarget(self.bootstrap_servers, self.state.kind, self.pid)

    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_s: float = STOP_STAGES[0][1]) -> int:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. Idempotent; returns the exit status.

        Stop the clients first: a client whose broker vanished may hang in its own stop.
        """
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                try:
                    self._process.wait(STOP_STAGES[-1][1])
                except subprocess.TimeoutExpired:
                    raise BrokerUnavailableError(f"the local broker (pid {self.pid}) survived SIGKILL") from None
        remove_state_file(self.state_file, pid=self.pid)  # the broker removes it, unless it was killed
        return self._process.returncode

    def __enter__(self) -> LocalBrokerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


MockBrokerProcess = LocalBrokerProcess
"""The first wave's name for it."""


def start_mock_broker(
    topics: Mapping[str, int] | None = None,
    *,
    state_dir: Path,
    brokers: int = DEFAULT_BROKERS,
    timeout_s: float = READY_WAIT_S,
) -> LocalBrokerProcess:
    """A private librdkafka mock-cluster broker (see :func:`start_local_broker`)."""
    return start_local_broker(topics, state_dir=state_dir, kind="mock", brokers=brokers, timeout_s=timeout_s)


def start_local_broker(
    topics: Mapping[str, int] | None = None,
    *,
    state_dir: Path,
    kind: LocalBrokerKind = "noida",
    retention_ms: int = DEFAULT_RETENTION_MS,
    brokers: int = DEFAULT_BROKERS,
    timeout_s: float = READY_WAIT_S,
) -> LocalBrokerProcess:
    """Start a fresh broker owned by the caller and wait (blocking, at most ``timeout_s``) until it is ready.

    ``topics`` (name → partitions) defaults to the whole registry without prefix. The state file
    and log go to ``state_dir`` (created if missing): give each concurrent broker its own.
    Raises MissingDependencyError (no noida-db / librdkafka), ConfigurationError (``state_dir`` is in
    use by a running broker) or BrokerUnavailableError (did not start).
    """
    if topics is None:
        from libs.messaging.topic import all_physical

        topics = all_physical()
    _check_installed(kind)
    state_dir = ensure_state_dir(state_dir)
    state_file = state_dir / BROKER_STATE_NAME
    log_path = state_dir / BROKER_LOG_NAME
    running = read_broker_state(state_file)
    if running is not None and is_broker_process(running.pid):
        raise ConfigurationError(
            f"{state_dir} already belongs to a running broker (pid {running.pid}): give each broker "
            f"its own state directory."
        )
    remove_state_file(state_file)
    command = broker_command(
        state_file, topics, kind=kind, retention_ms=retention_ms, brokers=brokers, exit_with_parent=True
    )
    process = _spawn(command, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        state = read_broker_state(state_file)
        if state is not None and state.pid == process.pid:
            return LocalBrokerProcess(process, state, state_file, log_path)
        status = process.poll()
        if status is not None:
            raise _not_ready_error(f"exited with status {status} before it was ready", log_path)
        if time.monotonic() >= deadline:
            process.kill()
            process.wait()
            raise _not_ready_error(f"was not ready within {timeout_s:g} s", log_path)
        time.sleep(READY_POLL_S)


async def find_running_broker(state_dir: Path) -> BrokerState | None:
    """The broker recorded in ``state_dir`` when it is our live process and accepts TCP; else None."""
    state = recorded_broker(state_dir)
    if state is None or not await answers(state):
        return None
    return state


def recorded_broker(state_dir: Path) -> BrokerState | None:
    """The broker recorded in ``state_dir`` when its process is alive (it may not answer yet)."""
    state = read_broker_state(state_dir / BROKER_STATE_NAME)
    return state if state is not None and is_broker_process(state.pid) else None


async def answers(state: BrokerState) -> bool:
    host, port = split_address(state.bootstrap_servers.split(",")[0])
    return await probe_tcp(host, port, PROBE_TIMEOUT_S)


async def stop_recorded_broker(state_dir: Path) -> int | None:
    """Stop the broker recorded in ``state_dir`` (bounded) and remove its state file.

    A process that merely reuses the recorded pid is never signalled. Returns the pid stopped, or
    None when no broker of ours was running. Raises BrokerUnavailableError if it outlived SIGKILL.
    """
    state_file = state_dir / BROKER_STATE_NAME
    state = read_broker_state(state_file)
    stopped: int | None = None
    if state is not None and is_broker_process(state.pid):
        if not await stop_process(state.pid, STOP_STAGES):
            raise BrokerUnavailableError(f"the local broker (pid {state.pid}) survived SIGKILL")
        stopped = state.pid
    remove_state_file(state_file)  # stale, corrupt or left by a killed broker
    return stopped


def check_topics(state: BrokerState, wanted: Mapping[str, int]) -> None:
    """Raise ConfigurationError when the running broker lacks a wanted topic or has other partitions.

    The broker creates the registry's topics at its start, and restarting it would interrupt whoever
    uses it, so the operator decides.
    """
    wrong = sorted(name for name, partitions in wanted.items() if state.topics.get(name) != partitions)
    if wrong:
        raise ConfigurationError(
            f"the running local broker (pid {state.pid}) lacks {len(wrong)} topic(s) this process needs "
            f"(e.g. {wrong[0]!r}; another SETTLE_TOPIC_PREFIX or an older registry): run `settle stack down` "
            f"and retry, or set SETTLE_KAFKA_BOOTSTRAP_SERVERS."
        )


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_child_env(),
        )


async def _launch_detached(
    state_dir: Path, topics: Mapping[str, int], kind: LocalBrokerKind, retention_ms: int
) -> BrokerState:
    """Start the shared broker in the background and wait for its state file. Caller holds the lock."""
    _check_installed(kind)
    state_file = state_dir / BROKER_STATE_NAME
    log_path = state_dir / BROKER_LOG_NAME
    remove_state_file(state_file)
    command = broker_command(state_file, topics, kind=kind, retention_ms=retention_ms, detach=True)
    launcher = await asyncio.to_thread(_spawn, command, log_path)
    deadline = time.monotonic() + READY_WAIT_S
    # The launched process forks the broker and exits at once; reap it so it leaves no zombie.
    # Polling (not an Event): the signals are a child's exit and a file appearing.
    while (status := launcher.poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(READY_POLL_S)
    if status is None:
        launcher.kill()
        launcher.wait()
        raise _not_ready_error(f"launcher did not detach within {READY_WAIT_S:g} s", log_path)
    if status != 0:
        raise _not_ready_error(f"launcher exited with status {status}", log_path)
    while time.monotonic() < deadline:
        state = read_broker_state(state_file)
        if state is not None and is_broker_process(state.pid):
            return state
        await asyncio.sleep(READY_POLL_S)
    raise _not_ready_error(f"was not ready within {READY_WAIT_S:g} s", log_path)


async def ensure_broker(settings: Settings) -> BrokerTarget:
    """The broker this process should use, starting the local broker when none is set or running.

    ``SETTLE_KAFKA_BOOTSTRAP_SERVERS`` wins (kind ``env``, nothing is checked or started). Else the
    broker recorded in ``<state_dir>/broker.json`` is reused when its pid is our broker; if that
    process lives but does not accept TCP it is waited for (:data:`UNRESPONSIVE_WAIT_S`) and then
    reported — never stopped, because other processes may be using it. Only when no broker process
    lives is a new one started (``SETTLE_LOCAL_BROKER``: noida-db by default), detached, and this
    waits up to :data:`READY_WAIT_S` for it. Raises MissingDependencyError, BrokerUnavailableError,
    or ConfigurationError when the running broker lacks wanted topics.
    """
    if settings.kafka_bootstrap_servers:
        return BrokerTarget(settings.kafka_bootstrap_servers, "env", None)
    from libs.messaging.topic import all_physical

    wanted = all_physical(settings.topic_prefix)
    state_dir = ensure_state_dir(settings.state_dir)
    state = await _wait_for_recorded(state_dir)
    if state is None:
        try:
            async with hold_lock(state_dir / BROKER_LOCK_NAME, LOCK_WAIT_S):
                # Re-check under the lock: another process may have started it meanwhile.
                state = await _wait_for_recorded(state_dir)
                if state is None:
                    remove_state_file(state_dir / BROKER_STATE_NAME)  # left by a broker that died
                    retention_ms = settings.local_broker_retention_s * 1000
                    state = await _launch_detached(state_dir, wanted, settings.local_broker, retention_ms)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"another process has been starting the local broker for {LOCK_WAIT_S:g} s; "
                f"see {state_dir / BROKER_LOG_NAME}"
            ) from None
    check_topics(state, wanted)
    return BrokerTarget(state.bootstrap_servers, state.kind, state.pid)


async def _wait_for_recorded(state_dir: Path) -> BrokerState | None:
    """The recorded live broker once it answers; None when no broker process lives.

    Raises BrokerUnavailableError when it lives but stays silent for :data:`UNRESPONSIVE_WAIT_S`."""
    deadline = time.monotonic() + UNRESPONSIVE_WAIT_S
    while True:
        state = recorded_broker(state_dir)
        if state is None:
            return None
        if await answers(state):
            return state
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"the local broker (pid {state.pid}, {state.bootstrap_servers}) is running but does not accept "
                f"connections; it was left running (see {state_dir / BROKER_LOG_NAME}; `settle stack down` stops it)"
            )
        await asyncio.sleep(0.2)
