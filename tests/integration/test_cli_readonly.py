"""Read commands never migrate and never start anything; what is wrong is one line.

Every case sets ``SETTLE_DATABASE_URL`` to a database made for the test and ``SETTLE_STATE_DIR`` to an
empty temporary directory (so no broker is recorded and none may be started there). What is wrong is
one line (one JSON object under ``--json``) with exit status 2; afterwards the database has exactly
the tables it had before and the state directory is still empty. Every read verb runs in process
through typer's CliRunner (the whole matrix in seconds); a few run as the installed `settle`
executable in a subprocess, the way an operator runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from libs.db.migrate import MIGRATIONS_DIR, discover, migrate, pending_migrations, require_migrated
from libs.errors import DatabaseUnavailableError, NotMigratedError
from libs.settings import Settings, get_settings
from libs.stack import database as stack_database
from libs.stack import start_mock_broker
from libs.stack.database import with_database
from services.cli.main import build_app
from services.cli.runtime import read_only
from tests.conftest import Servers

pytestmark = pytest.mark.integration

SETTLE = Path(sys.executable).with_name("settle")
CLI_TIMEOUT_S = 60.0
PARALLEL_RUNS = 4
EXIT_NOT_READY = 2

JSON_VERBS: list[list[str]] = [
    ["status", "--json"],
    ["invoices", "list", "--json"],
    ["invoices", "list", "--credit-notes", "--json"],
    ["statements", "list", "--json"],
    ["dlq", "list", "--json"],
    ["ledger", "balances", "--json"],
    ["ledger", "verify", "--json"],
    ["ledger", "hash", "--json"],
    ["payouts", "list", "--json"],
    ["payouts", "plan", "--dry-run", "--json"],
    ["sagas", "list", "--json"],
    ["sagas", "list", "--stuck", "--json"],
]
TEXT_VERBS: list[list[str]] = [
    ["status"],
    ["invoices", "list"],
    ["invoices", "show", "INV-2026-000001"],
    ["invoices", "pdf", "INV-2026-000001"],
    ["statements", "list"],
    ["statements", "show", "STM-2026-000001"],
    ["statements", "pdf", "STM-2026-000001"],
    ["dlq", "list"],
    ["dlq", "show", "1"],
    ["ledger", "balances"],
    ["ledger", "verify"],
    ["ledger", "hash", "--through", "2026-12-01T00:00:00Z"],
    ["payouts", "list"],
    ["payouts", "show", "no-such-payout"],
    ["sagas", "list"],
    ["sagas", "show", "no-such-saga"],
]


@dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"settle {' '.join(self.args)} → {self.returncode}\nstdout: {self.stdout!r}\nstderr: {self.stderr!r}"


def _env(database_url: str, state_dir: Path, bootstrap_servers: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETTLE_")}
    env.update(SETTLE_DATABASE_URL=database_url, SETTLE_STATE_DIR=str(state_dir), NO_COLOR="1")
    if bootstrap_servers is not None:
        env["SETTLE_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    return env


def invoke_cli(verbs: list[list[str]], env: dict[str, str], cwd: Path) -> list[Run]:
    """Run each command line of ``verbs`` in this process (typer's CliRunner), one after the other."""
    runner = CliRunner()
    # None unsets: a SETTLE_* variable of the test run itself (e.g. a real Kafka) must not leak in.
    scoped_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SETTLE_")}
    scoped_env.update(env)
    runs = []
    here = Path.cwd()
    os.chdir(cwd)
    try:
        for args in verbs:
            get_settings.cache_clear()  # settings are read from the environment once per process
            done = runner.invoke(build_app(), args, env=scoped_env)
            assert done.exception is None or isinstance(done.exception, SystemExit), (args, done.exception)
            runs.append(Run(args, done.exit_code, done.stdout, done.stderr))
    finally:
        get_settings.cache_clear()
        os.chdir(here)
    return runs


def run_cli(verbs: list[list[str]], env: dict[str, str], cwd: Path) -> list[Run]:
    """Run each command line of ``verbs`` as its own `settle` process (a few at a time)."""

    def one(args: list[str]) -> Run:
        done = subprocess.run(
            [str(SETTLE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
        return Run(args, done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return list(pool.map(one, verbs))


def assert_one_error(run: Run, *, mentions: str) -> dict[str, object] | None:
    """Exit 2 and one line naming ``mentions``: a JSON object on stdout under --json, else on stderr."""
    assert run.returncode == EXIT_NOT_READY, run
    if "--json" in run.args:
        assert run.stderr == "", run
        lines = run.stdout.splitlines()
        assert len(lines) == 1, run
        error = json.loads(lines[0])
        assert isinstance(error, dict), run
        assert mentions in f"{error['error']} {error['hint']}", run
        return error
    assert run.stdout == "", run
    assert len(run.stderr.splitlines()) == 1, run
    assert run.stderr.startswith("settle: ") and mentions in run.stderr, run
    assert "Traceback" not in run.stderr, run
    return None


def user_tables(url: str) -> list[str]:
    async def fetch() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                """select table_schema || '.' || table_name as name from information_schema.tables
                    where table_schema not in ('pg_catalog', 'information_schema') order by 1"""
            )
        finally:
            await conn.close()
        return [r["name"] for r in rows]

    return asyncio.run(fetch())


def broker_processes_of(state_dir: Path) -> list[int]:
    """Live processes whose command line names ``state_dir`` (a broker started there would)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(state_dir).encode() in cmdline:
            found.append(int(proc.name))
    return found


def assert_nothing_started(state_dir: Path) -> None:
    assert not state_dir.exists() or not any(state_dir.iterdir()), sorted(state_dir.iterdir())
    assert broker_processes_of(state_dir) == []


# --- databases --------------------------------------------------------------------------------------------------


def _admin(servers: Servers, sql: str) -> None:
    async def execute() -> None:
        conn = await asyncpg.connect(servers.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


@pytest.fixture
def empty_db(servers: Servers) -> Iterator[str]:
    """A fresh database with no table at all."""
    name = f"settle_ro_{uuid.uuid4().hex[:12]}"
    _admin(servers, f'create database "{name}"')
    try:
        yield with_database(servers.admin_dsn, name)
    finally:
        _admin(servers, f'drop database if exists "{name}" with (force)')


@pytest.fixture
def migrated_db(servers: Servers, template_db: str) -> Iterator[str]:
    """A fresh clone of the session's migrated template."""
    name = f"settle_ro_{uuid.uuid4().hex[:12]}"
    _admin(servers, f'create database "{name}" template "{template_db}"')
    try:
        yield with_database(servers.admin_dsn, name)
    finally:
        _admin(servers, f'drop database if exists "{name}" with (force)')


def migrate_first(url: str, count: int, folder: Path) -> list[str]:
    """Apply only the first ``count`` migrations (copied into ``folder``); returns their names."""
    folder.mkdir()
    for migration in discover()[:count]:
        shutil.copy(MIGRATIONS_DIR / migration.name, folder / migration.name)

    async def apply() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            return await migrate(conn, folder)
        finally:
            await conn.close()

    return asyncio.run(apply())


# --- not migrated -----------------------------------------------------------------------------------------------


SUBPROCESS_SAMPLE: list[list[str]] = [["status", "--json"], ["invoices", "list"], ["ledger", "verify"]]


def test_read_verbs_on_an_empty_database_say_migrate_and_change_nothing(empty_db: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = _env(empty_db, state_dir)
    runs = invoke_cli(JSON_VERBS + TEXT_VERBS, env, tmp_path) + run_cli(SUBPROCESS_SAMPLE, env, tmp_path)
    for run in runs:
        error = assert_one_error(run, mentions="settle migrate")
        assert error is None or error == {
            "error": f"the database is not migrated ({len(discover())} migrations pending)",
            "hint": "settle migrate",
        }, run
    assert user_tables(empty_db) == []  # nothing was migrated
    assert_nothing_started(state_dir)
    assert not list(tmp_path.glob("*.pdf"))


def test_read_verbs_on_a_partly_migrated_database_name_what_is_missing(empty_db: str, tmp_path: Path) -> None:
    applied = migrate_first(empty_db, 2, tmp_path / "first-two")
    tables_before = user_tables(empty_db)
    state_dir = tmp_path / "state"
    runs = invoke_cli(
        [["status", "--json"], ["invoices", "list"], ["ledger", "verify"], ["ledger", "verify", "--json"]],
        _env(empty_db, state_dir),
        cwd=tmp_path,
    )
    missing = [m.name for m in discover()[len(applied) :]]
    for run in runs:
        assert_one_error(run, mentions="settle migrate")
        assert f"lacks {len(missing)} of {len(discover())} migrations ({', '.join(missing)})" in run.stdout + run.stderr
    assert user_tables(empty_db) == tables_before
    assert_nothing_started(state_dir)


# --- nothing reachable ------------------------------------------------------------------------------------------


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    url = "postgresql://postgres@127.0.0.1:1/settle"  # port 1: nothing listens
    env = _env(url, state_dir)
    runs = invoke_cli([["ledger", "verify", "--json"], ["status"]], env, tmp_path)
    for run in runs + run_cli([["ledger", "verify"]], env, tmp_path):
        assert_one_error(run, mentions="cannot connect to PostgreSQL")
    assert_nothing_started(state_dir)


def test_a_missing_database_is_one_line(servers: Servers, tmp_path: Path) -> None:
    url = with_database(servers.admin_dsn, f"settle_absent_{uuid.uuid4().hex[:12]}")
    (run,) = invoke_cli([["invoices", "list", "--json"]], _env(url, tmp_path / "state"), tmp_path)
    assert_one_error(run, mentions="does not exist")


def test_options_that_cannot_go_together_are_one_line_before_any_connection(tmp_path: Path) -> None:
    """``--overpaid`` filters refunds: without ``--refunds`` it is refused before the database is asked
    (here there is none). ``settle fakepsp --id-namespace`` takes letters and digits only (it goes into
    every id) and refuses anything else before it listens."""
    state_dir = tmp_path / "state"
    env = _env("postgresql://postgres@127.0.0.1:1/settle", state_dir)
    (run,) = invoke_cli([["payments", "list", "--overpaid", "--json"]], env, tmp_path)
    assert_one_error(run, mentions="--overpaid lists refunds: add --refunds")
    (fake,) = invoke_cli([["fakepsp", "--port", "0", "--id-namespace", "m-2027"]], env, tmp_path)
    assert fake.returncode == 2, fake
    assert "--id-namespace" in fake.stdout + fake.stderr and "letters and digits only" in fake.stdout + fake.stderr
    assert_nothing_started(state_dir)


# --- migrated ---------------------------------------------------------------------------------------------------


def test_read_verbs_work_on_a_migrated_database(migrated_db: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    tables_before = user_tables(migrated_db)
    listing = [
        v for v in JSON_VERBS + TEXT_VERBS if v[0] != "status" and v[1] in ("list", "balances", "verify", "hash")
    ]
    env = _env(migrated_db, state_dir)
    for run in invoke_cli(listing, env, tmp_path) + run_cli([["ledger", "verify"]], env, tmp_path):
        assert run.returncode == 0, run
        assert run.stderr == "", run
    (verify,) = invoke_cli([["ledger", "verify", "--json"]], env, tmp_path)
    assert json.loads(verify.stdout)["ok"] is True
    # A document that does not exist is a clear line too, not a trace.
    (missing,) = invoke_cli([["invoices", "show", "INV-2026-000001"]], env, tmp_path)
    assert_one_error(missing, mentions="no finalized document INV-2026-000001")
    assert user_tables(migrated_db) == tables_before
    assert_nothing_started(state_dir)


def test_status_without_a_broker_reports_the_database_and_says_lag_is_unknown(migrated_db: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    as_json, as_text = invoke_cli([["status", "--json"], ["status"]], _env(migrated_db, state_dir), tmp_path)
    assert as_json.returncode == EXIT_NOT_READY, as_json
    (line,) = as_json.stdout.splitlines()
    report = json.loads(line)
    assert report["error"].startswith("no broker is running"), report
    assert report["hint"] == "settle stack up"
    assert report["consumers"] is None
    assert report["outbox"] == {"backlog": 0, "delayed": 0, "oldest_age_s": 0.0}
    assert report["dead_letters"] == []
    assert as_text.returncode == EXIT_NOT_READY, as_text
    assert "consumer lag: unknown (no broker)" in as_text.stdout
    assert as_text.stderr.splitlines() == [
        "settle: no broker is running (SETTLE_KAFKA_BOOTSTRAP_SERVERS is unset and the local broker is stopped): "
        "run `settle stack up`"
    ]
    assert_nothing_started(state_dir)


def test_status_with_an_unreachable_broker_is_one_line(migrated_db: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    (run,) = invoke_cli([["status"]], _env(migrated_db, state_dir, bootstrap_servers="127.0.0.1:1"), tmp_path)
    assert run.returncode == EXIT_NOT_READY, run
    assert run.stderr.splitlines() == ["settle: cannot reach Kafka at 127.0.0.1:1 (SETTLE_KAFKA_BOOTSTRAP_SERVERS)"]
    assert_nothing_started(state_dir)


def test_status_reads_lag_from_the_broker_recorded_in_the_state_dir(migrated_db: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with start_mock_broker(state_dir=state_dir) as broker:
        (run,) = run_cli([["status", "--json"]], _env(migrated_db, state_dir), tmp_path)
        assert broker.running()
    assert run.returncode == 0, run
    report = json.loads(run.stdout)
    assert "error" not in report
    groups = {c["group"]: c for c in report["consumers"]}
    assert {"metering", "rating", "invoicing"} <= set(groups)
    assert all(c["total_lag"] == 0 for c in groups.values())


# --- the read-only check and sessions, in process ------------------------------------------------------------


async def test_pending_migrations_only_reads(empty_db: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        names = [m.name for m in discover()]
        async with conn.transaction(readonly=True):  # the server refuses any write in here
            assert await pending_migrations(conn) == names
            with pytest.raises(NotMigratedError, match="not migrated") as caught:
                await require_migrated(conn)
        assert caught.value.hint == "settle migrate"
        await migrate(conn)
        async with conn.transaction(readonly=True):
            assert await pending_migrations(conn) == []
            await require_migrated(conn)
    finally:
        await conn.close()


async def test_read_only_sessions_refuse_writes(migrated_db: str, tmp_path: Path) -> None:
    settings = Settings(database_url=migrated_db, state_dir=tmp_path / "state", kafka_bootstrap_servers=None)
    async with read_only(settings) as ctx:
        assert ctx.database.kind == "env"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await ctx.pool.execute("delete from settle.schema_migrations")
    assert_nothing_started(tmp_path / "state")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_no_database_running_starts_no_embedded_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(stack_database, "LOCAL_POSTGRES_PORT", _closed_port())  # "nothing at 127.0.0.1:5432"
    state_dir = tmp_path / "state"
    settings = Settings(database_url=None, state_dir=state_dir, kafka_bootstrap_servers=None)
    with pytest.raises(DatabaseUnavailableError, match="no PostgreSQL is running") as caught:
        async with read_only(settings):
            pass
    assert caught.value.hint == "settle stack up"
    assert_nothing_started(state_dir)  # no pgdata: the embedded server was not initialised or started


async def test_a_local_server_without_the_settle_database_says_migrate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not await stack_database.probe_database(stack_database.local_database_url()):
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    absent = f"settle_absent_{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(stack_database, "APP_DATABASE", absent)
    settings = Settings(database_url=None, state_dir=tmp_path / "state", kafka_bootstrap_servers=None)
    with pytest.raises(NotMigratedError, match=r"PostgreSQL \(local\) has no Settle database yet") as caught:
        async with read_only(settings):
            pass
    assert caught.value.hint == "settle migrate"
    conn = await asyncpg.connect(stack_database.local_database_url())
    try:
        assert await conn.fetchval("select count(*) from pg_database where datname = $1", absent) == 0
    finally:
        await conn.close()
    assert_nothing_started(tmp_path / "state")
