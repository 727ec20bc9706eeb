"""The local stack's state directory: the broker's state file, written atomically, and process checks.

Layout of ``Settings.state_dir`` (never inside the repository)::

    broker.json   BrokerState of the running mock broker (written by the broker, removed at its exit)
    broker.log    the broker's stdout/stderr
    broker.lock   flock that serialises "check, else start" between processes
    pgdata/       the embedded PostgreSQL's data directory (kept across restarts)

A state file is only a claim: a reader believes it when the pid is alive, is our broker (its
command line carries :data:`BROKER_MARKER`, so a recycled pid is not mistaken for it) and the
first bootstrap address accepts a TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

BROKER_STATE_NAME = "broker.json"
BROKER_LOG_NAME = "broker.log"
BROKER_LOCK_NAME = "broker.lock"
PGDATA_NAME = "pgdata"
BROKER_MARKER = "libs.stack.broker"
"""Module name in the broker's command line; identifies our broker behind a pid."""
STATE_FILE_MAX_BYTES = 1024 * 1024
"""A state file larger than this is corrupt, not read."""
PROCESS_POLL_S = 0.02
LOCK_POLL_S = 0.05


class BrokerState(BaseModel):
    """Content of ``broker.json``: the broker's pid, bootstrap list and the topics it created."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["mock", "noida"] = "mock"
    pid: int = Field(gt=0)
    bootstrap_servers: str
    started_at: AwareDatetime
    topics: dict[str, int]

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for address in value.split(","):
            split_address(address)  # raises ValueError on a malformed entry
        return value

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, value: dict[str, int]) -> dict[str, int]:
        for name, partitions in value.items():
            if not name or partitions < 1:
                raise ValueError(f"topic {name!r} with {partitions} partitions")
        return value


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; ``[v6]:port`` is accepted. Raises ValueError."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port_text)


def ensure_state_dir(state_dir: Path) -> Path:
    """Create the state directory with its parents (mode 0700 for what is new); returns it absolute."""
    state_dir = state_dir.expanduser().resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def write_json_atomic(path: Path, payload: Mapping[str, object]) -> None:
    """Replace ``path`` with ``payload`` as JSON so that a reader sees the old or the new file, never half.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path`` (atomic on
    POSIX) and fsyncs the directory. On any failure the temporary file is removed and ``path`` is
    untouched.
    """
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_broker_state(path: Path, state: BrokerState) -> None:
    write_json_atomic(path, state.model_dump(mode="json"))


def read_broker_state(path: Path) -> BrokerState | None:
    """The state in ``path``; None when the file is missing, too large, not JSON or not a BrokerState.

    A corrupt file is treated like a missing one: the caller starts a new broker, which replaces it.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(STATE_FILE_MAX_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if len(data) > STATE_FILE_MAX_BYTES:
        return None
    try:
        return BrokerState.model_validate_json(data)
    except ValidationError:
        return None


def remove_state_file(path: Path, *, pid: int | None = None) -> bool:
    """Remove ``path``; with ``pid``, only while it still names that pid (a newer broker's file stays)."""
    if pid is not None:
        state = read_broker_state(path)
        if state is not None and state.pid != pid:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process; a zombie (exited, not yet reaped) counts as dead.

    The zombie case matters here: pid 1 of a container may reap late or never, and a process we
    stopped must not look alive until then.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust kill(0)
    except OSError:
        return True
    # Field 3 follows the parenthesised command name, which may itself contain ") ".
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def process_cmdline(pid: int) -> tuple[str, ...] | None:
    """The command line of ``pid``; None when it cannot be known (no procfs, other user, gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def is_broker_process(pid: int) -> bool:
    """True when ``pid`` is alive and is (as far as this platform can tell) a Settle local broker."""
    if not pid_alive(pid):
        return False
    cmdline = process_cmdline(pid)
    if cmdline is None:
        return True  # cannot tell; the TCP probe of the caller still has to pass
    return any(BROKER_MARKER in part for part in cmdline)


async def probe_tcp(host: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout_s``; the socket is closed."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def stop_process(pid: int, stages: Sequence[tuple[signal.Signals, float]]) -> bool:
    """Send each stage's signal in turn, waiting up to its seconds for ``pid`` to exit.

    Returns True once the process is gone (or was already), False if it outlived every stage.
    The caller must have checked that ``pid`` is the process it means (see :func:`is_broker_process`).
    """
    for signo, wait_s in stages:
        if not pid_alive(pid):
            return True
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            await asyncio.sleep(PROCESS_POLL_S)
    return not pid_alive(pid)


@contextlib.asynccontextmanager
async def hold_lock(path: Path, timeout_s: float) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting at most ``timeout_s``.

    Serialises "check, else start" between processes and between tasks of one process (each
    acquisition opens its own file description). Raises TimeoutError when the wait runs out.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} is locked by another process") from None
                await asyncio.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock
