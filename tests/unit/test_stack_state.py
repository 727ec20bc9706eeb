"""The local stack's state file and the "reuse, else restart" decision, without any broker.

A fake broker here is a sleeping Python process whose command line carries the broker's module
name (that is how a live broker is told from a process that recycled its pid) plus an in-process
TCP listener standing for its first bootstrap address. Launching is replaced by a fake that
records the call, so these tests show *when* a new broker is started, never start one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.errors import BrokerUnavailableError, ConfigurationError, MissingDependencyError
from libs.settings import Settings
from libs.stack import database, launcher, mock_cluster, state
from libs.stack.state import BROKER_MARKER, BROKER_STATE_NAME, BrokerState
from schemas.topics import all_physical

SLEEP_S = 60
REPOSITORY = Path(__file__).resolve().parents[2]


def _spawn_sleeper(*extra_argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({SLEEP_S})", *extra_argv])


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(5)


@pytest.fixture
def fake_broker_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that passes the broker identity check (the marker in its argv)."""
    process = _spawn_sleeper(f"--pretend-{BROKER_MARKER}")
    yield process
    _reap(process)


@pytest.fixture
def bystander_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a broker: stands for a recycled pid."""
    process = _spawn_sleeper()
    yield process
    _reap(process)


@pytest.fixture
async def listener() -> AsyncIterator[str]:
    """``127.0.0.1:<port>`` of a TCP listener that accepts and closes connections."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


def _closed_address() -> str:
    """An address nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def _state(pid: int, bootstrap: str, topics: Mapping[str, int] | None = None) -> BrokerState:
    return BrokerState(
        pid=pid,
        bootstrap_servers=bootstrap,
        started_at=datetime(2026, 11, 21, 12, 0, tzinfo=UTC),
        topics=dict(all_physical() if topics is None else topics),
    )


def _settings(state_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"state_dir": state_dir, "kafka_bootstrap_servers": None, "topic_prefix": ""}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class FakeLaunch:
    """Stands in for launching a detached broker: records calls, returns a prepared state."""

    def __init__(self, result: BrokerState) -> None:
        self.result = result
        self.calls: list[tuple[Path, dict[str, int]]] = []

    async def __call__(self, state_dir: Path, topics: Mapping[str, int], kind: str, retention_ms: int) -> BrokerState:
        assert kind in ("noida", "mock") and retention_ms > 0
        self.calls.append((state_dir, dict(topics)))
        state.write_broker_state(state_dir / BROKER_STATE_NAME, self.result)
        return self.result


# --- atomic write ---------------------------------------------------------------------------------


def test_written_state_reads_back_equal_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    written = _state(4242, "127.0.0.1:9092,127.0.0.1:9093")
    path = tmp_path / BROKER_STATE_NAME
    state.write_broker_state(path, written)
    assert state.read_broker_state(path) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [BROKER_STATE_NAME]


def test_failed_replace_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broker.json"
    old = _state(1, "127.0.0.1:1")
    state.write_broker_state(path, old)

    def failing_replace(src: str, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        state.write_broker_state(path, _state(2, "127.0.0.1:2"))
    assert state.read_broker_state(path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.json"]


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    versions = [{"n": n, "pad": "x" * (n * 997 % 20_000)} for n in range(200)]
    state.write_json_atomic(path, versions[0])
    seen: list[object] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_continuously() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads(path.read_bytes()))
            except BaseException as exc:  # a partial file would raise JSONDecodeError here
                errors.append(exc)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for version in versions[1:]:
            state.write_json_atomic(path, version)
    finally:
        done.set()
        reader.join(10)
    assert errors == []
    assert seen, "the reader ran"
    assert all(value in versions for value in seen)


# --- reading untrusted files ------------------------------------------------------------------------

VALID = _state(10, "127.0.0.1:9092").model_dump(mode="json")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        json.dumps({**VALID, "pid": "ten"}).encode(),
        json.dumps({**VALID, "pid": 0}).encode(),
        json.dumps({**VALID, "kind": "container"}).encode(),
        json.dumps({**VALID, "bootstrap_servers": "localhost"}).encode(),
        json.dumps({**VALID, "bootstrap_servers": "127.0.0.1:99999"}).encode(),
        json.dumps({**VALID, "started_at": "2026-11-21T12:00:00"}).encode(),  # naive
        json.dumps({**VALID, "topics": {"a": 0}}).encode(),
        json.dumps({k: v for k, v in VALID.items() if k != "started_at"}).encode(),
        b" " * (state.STATE_FILE_MAX_BYTES + 1),
    ],
    ids=lambda content: repr(content[:40]),
)
def test_corrupt_state_files_read_as_absent(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / BROKER_STATE_NAME
    path.write_bytes(content)
    assert state.read_broker_state(path) is None


def test_missing_state_file_reads_as_absent(tmp_path: Path) -> None:
    assert state.read_broker_state(tmp_path / "nothing.json") is None


def test_remove_with_pid_spares_a_newer_brokers_file(tmp_path: Path) -> None:
    path = tmp_path / BROKER_STATE_NAME
    state.write_broker_state(path, _state(200, "127.0.0.1:1"))
    assert state.remove_state_file(path, pid=100) is False
    assert path.exists()
    assert state.remove_state_file(path, pid=200) is True
    assert not path.exists()


# --- processes --------------------------------------------------------------------------------------


def test_pid_alive_for_a_live_process_and_not_for_an_exited_one() -> None:
    assert state.pid_alive(os.getpid())
    process = _spawn_sleeper()
    try:
        assert state.pid_alive(process.pid)
    finally:
        _reap(process)
    assert not state.pid_alive(process.pid)
    assert not state.pid_alive(0)
    assert not state.pid_alive(-1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie detection needs procfs")
def test_an_unreaped_exited_process_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while ") Z" not in Path(f"/proc/{process.pid}/stat").read_text():
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        os.kill(process.pid, 0)  # the zombie still answers kill(0) ...
        assert not state.pid_alive(process.pid)  # ... but is not alive
    finally:
        process.wait(5)


def test_only_a_process_carrying_the_marker_counts_as_a_broker(
    fake_broker_process: subprocess.Popen[bytes], bystander_process: subprocess.Popen[bytes]
) -> None:
    assert state.is_broker_process(fake_broker_process.pid)
    if state.process_cmdline(bystander_process.pid) is not None:  # platforms without procfs cannot tell
        assert not state.is_broker_process(bystander_process.pid)


# --- the reuse / restart decision -------------------------------------------------------------------


async def test_a_live_reachable_broker_is_reused(
    tmp_path: Path,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(fake_broker_process.pid, listener))
    launch = FakeLaunch(_state(1, "127.0.0.1:1"))
    monkeypatch.setattr(launcher, "_launch_detached", launch)

    target = await launcher.ensure_broker(_settings(tmp_path))

    assert launch.calls == []
    assert (target.kind, target.pid, target.bootstrap_servers) == ("mock", fake_broker_process.pid, listener)


@pytest.mark.parametrize("content", [b"{not json", b"", json.dumps({"pid": 1}).encode()])
async def test_a_corrupt_state_file_starts_a_new_broker(
    tmp_path: Path,
    content: bytes,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / BROKER_STATE_NAME).write_bytes(content)
    launched = _state(fake_broker_process.pid, listener)
    launch = FakeLaunch(launched)
    monkeypatch.setattr(launcher, "_launch_detached", launch)

    target = await launcher.ensure_broker(_settings(tmp_path))

    assert [call[0] for call in launch.calls] == [state.ensure_state_dir(tmp_path)]
    assert launch.calls[0][1] == all_physical()
    assert target.pid == launched.pid
    assert state.read_broker_state(tmp_path / BROKER_STATE_NAME) == launched


async def test_a_dead_pid_starts_a_new_broker(
    tmp_path: Path,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = _spawn_sleeper(f"--pretend-{BROKER_MARKER}")
    _reap(gone)
    # The listener answers, so only the dead pid can cause the restart.
    state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(gone.pid, listener))
    launch = FakeLaunch(_state(fake_broker_process.pid, listener))
    monkeypatch.setattr(launcher, "_launch_detached", launch)

    target = await launcher.ensure_broker(_settings(tmp_path))

    assert len(launch.calls) == 1
    assert target.pid == fake_broker_process.pid


async def test_a_recycled_pid_starts_a_new_broker_and_is_never_signalled(
    tmp_path: Path,
    bystander_process: subprocess.Popen[bytes],
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if state.process_cmdline(bystander_process.pid) is None:
        pytest.skip("this platform cannot tell a recycled pid from the broker")
    state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(bystander_process.pid, listener))
    launch = FakeLaunch(_state(fake_broker_process.pid, listener))
    monkeypatch.setattr(launcher, "_launch_detached", launch)

    await launcher.ensure_broker(_settings(tmp_path))

    assert len(launch.calls) == 1
    assert bystander_process.poll() is None, "a process that is not our broker was signalled"


async def test_a_live_but_unreachable_broker_is_reported_and_never_stopped(
    tmp_path: Path,
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 8: a command must never stop a broker it did not start (a busy broker that answered late
    was replaced by an empty one, and the running fleet lost every topic)."""
    hung = _spawn_sleeper(f"--pretend-{BROKER_MARKER}")
    replacement = _spawn_sleeper(f"--pretend-{BROKER_MARKER}")
    try:
        state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(hung.pid, _closed_address()))
        launch = FakeLaunch(_state(replacement.pid, listener))
        monkeypatch.setattr(launcher, "_launch_detached", launch)
        monkeypatch.setattr(launcher, "UNRESPONSIVE_WAIT_S", 0.5)

        with pytest.raises(BrokerUnavailableError, match="does not accept connections; it was left running"):
            await launcher.ensure_broker(_settings(tmp_path))

        assert hung.poll() is None, "the recorded broker is still running"
        assert launch.calls == [], "no second broker was started beside it"
        assert (tmp_path / BROKER_STATE_NAME).exists()
    finally:
        _reap(hung)
        _reap(replacement)


async def test_concurrent_callers_start_one_broker(
    tmp_path: Path,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launch = FakeLaunch(_state(fake_broker_process.pid, listener))

    async def slow_launch(state_dir: Path, topics: Mapping[str, int], kind: str, retention_ms: int) -> BrokerState:
        await asyncio.sleep(0.1)  # the others arrive while this one holds the lock
        return await launch(state_dir, topics, kind, retention_ms)

    monkeypatch.setattr(launcher, "_launch_detached", slow_launch)
    settings = _settings(tmp_path)

    targets = await asyncio.gather(*(launcher.ensure_broker(settings) for _ in range(5)))

    assert len(launch.calls) == 1
    assert {target.pid for target in targets} == {fake_broker_process.pid}


async def test_the_state_dir_is_created_with_its_parents(
    tmp_path: Path,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_dir = tmp_path / "a" / "b" / "state"
    monkeypatch.setattr(launcher, "_launch_detached", FakeLaunch(_state(fake_broker_process.pid, listener)))
    await launcher.ensure_broker(_settings(state_dir))
    assert state_dir.is_dir()


async def test_the_environment_wins_and_touches_no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_launch(*args: object) -> None:
        raise AssertionError("nothing may start")

    monkeypatch.setattr(launcher, "_launch_detached", no_launch)
    state_dir = tmp_path / "never"
    servers = "kafka-1:9092,kafka-2:9092"
    target = await launcher.ensure_broker(_settings(state_dir, kafka_bootstrap_servers=servers))
    assert (target.kind, target.bootstrap_servers, target.pid) == ("env", servers, None)
    assert not state_dir.exists()


async def test_a_running_broker_without_the_wanted_topics_is_a_configuration_error(
    tmp_path: Path,
    fake_broker_process: subprocess.Popen[bytes],
    listener: str,
) -> None:
    state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(fake_broker_process.pid, listener))
    with pytest.raises(ConfigurationError, match="settle stack down"):
        await launcher.ensure_broker(_settings(tmp_path, topic_prefix="run42."))
    assert fake_broker_process.poll() is None, "the running broker is left alone"


async def test_stop_recorded_broker_stops_ours_and_spares_a_recycled_pid(
    tmp_path: Path,
    bystander_process: subprocess.Popen[bytes],
) -> None:
    ours = _spawn_sleeper(f"--pretend-{BROKER_MARKER}")
    try:
        state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(ours.pid, "127.0.0.1:1"))
        assert await launcher.stop_recorded_broker(tmp_path) == ours.pid
        assert ours.wait(5) == -15  # SIGTERM was enough
        assert not (tmp_path / BROKER_STATE_NAME).exists()
    finally:
        _reap(ours)
    if state.process_cmdline(bystander_process.pid) is not None:
        state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(bystander_process.pid, "127.0.0.1:1"))
        assert await launcher.stop_recorded_broker(tmp_path) is None
        assert bystander_process.poll() is None
        assert not (tmp_path / BROKER_STATE_NAME).exists(), "the stale file is removed"


# --- missing pieces ---------------------------------------------------------------------------------


def _assert_one_sentence(message: str) -> None:
    assert "\n" not in message
    assert message.endswith(".")
    assert message.count(". ") == 0, message


def test_missing_confluent_kafka_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "confluent_kafka" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as caught:
        mock_cluster.find_librdkafka()
    message = str(caught.value)
    _assert_one_sentence(message)
    assert "confluent-kafka" in message
    assert "SETTLE_KAFKA_BOOTSTRAP_SERVERS" in message


def test_start_mock_broker_checks_the_library_before_spawning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise MissingDependencyError("confluent-kafka is not installed: run `make install`.")

    monkeypatch.setattr(launcher, "find_librdkafka", missing)
    with pytest.raises(MissingDependencyError):
        launcher.start_mock_broker({"t": 1}, state_dir=tmp_path)
    assert not (tmp_path / state.BROKER_LOG_NAME).exists(), "no process was started"


def test_the_bundled_librdkafka_is_found() -> None:
    assert mock_cluster.find_librdkafka().is_file()


async def test_the_embedded_data_dir_is_refused_inside_the_repository() -> None:
    repository = REPOSITORY
    with pytest.raises(ConfigurationError, match="SETTLE_STATE_DIR"):
        await database.start_embedded_database(repository / ".state")
    assert not (repository / ".state").exists()


def test_no_embedded_server_is_reported_for_an_empty_state_dir(tmp_path: Path) -> None:
    assert database.embedded_database(tmp_path) is None


def test_a_password_is_hidden_in_the_display_url() -> None:
    from libs.stack import DatabaseTarget

    target = DatabaseTarget("postgresql://settle:s3cret@db.example:5433/settle", "env")
    assert target.display_url == "postgresql://settle:***@db.example:5433/settle"
    assert "s3cret" not in target.display_url
    socket_url = "postgresql://postgres@/postgres?host=/x"
    assert DatabaseTarget(socket_url, "embedded").display_url == socket_url


def test_a_private_broker_refuses_a_state_dir_of_a_running_broker(
    tmp_path: Path, fake_broker_process: subprocess.Popen[bytes]
) -> None:
    state.write_broker_state(tmp_path / BROKER_STATE_NAME, _state(fake_broker_process.pid, "127.0.0.1:1"))
    with pytest.raises(ConfigurationError, match="its own state directory"):
        launcher.start_mock_broker({"t": 1}, state_dir=tmp_path)
    assert state.read_broker_state(tmp_path / BROKER_STATE_NAME) is not None, "its file stays"


def test_without_a_docker_engine_containers_are_a_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from libs.stack import containers

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    assert containers.docker_available() is False
    with pytest.raises(MissingDependencyError) as caught, containers.start_containers():
        pass
    _assert_one_sentence(str(caught.value))
    assert "Docker" in str(caught.value)
