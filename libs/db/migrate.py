"""Versioned plain-SQL migrations.

Files live in ``libs/db/migrations/NNNN_name.sql``; each is applied once, in order, inside its own
transaction, under an advisory lock (concurrent migrators wait rather than race). The checksum of
every applied file is recorded: editing an applied migration is refused (write a new one instead).

Only :func:`migrate` writes. Read commands call :func:`require_migrated`, which only SELECTs: a
database with pending migrations is reported (:class:`~libs.errors.NotMigratedError`), never fixed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from libs.db.pool import keeps_session_state
from libs.errors import ConfigurationError, NotMigratedError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x5E771E  # advisory lock id for migrations
_SELECT_APPLIED = "select version, checksum from settle.schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise ConfigurationError(f"migration file {path.name} does not match NNNN_name.sql")
        found.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigurationError(f"two migrations share a version number: {versions}")
    return found


def _check_unchanged(migration: Migration, applied_checksum: str) -> None:
    if applied_checksum != migration.checksum:
        raise ConfigurationError(
            f"migration {migration.name} changed after it was applied "
            f"(checksum {applied_checksum[:12]} → {migration.checksum[:12]}); add a new migration instead"
        )


async def pending_migrations(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Names of the migrations not yet applied, in order (all of them on an empty database).

    Read-only: SELECTs only, takes no lock, creates nothing. Raises ConfigurationError when an
    applied migration's file changed since (as :func:`migrate` would).
    """
    table = await conn.fetchval("select to_regclass('settle.schema_migrations')")
    applied: dict[str, str] = {}
    if table is not None:
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(_SELECT_APPLIED)}
    pending: list[str] = []
    for migration in discover(folder):
        checksum = applied.get(migration.version)
        if checksum is None:
            pending.append(migration.name)
        else:
            _check_unchanged(migration, checksum)
    return pending


async def require_migrated(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> None:
    """Raise NotMigratedError (hint ``settle migrate``) unless every migration is applied. Read-only."""
    pending = await pending_migrations(conn, folder)
    if pending:
        total = len(discover(folder))
        if len(pending) == total:
            raise NotMigratedError(f"the database is not migrated ({total} migrations pending)")
        raise NotMigratedError(f"the database lacks {len(pending)} of {total} migrations ({', '.join(pending)})")


async def migrate(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied. Idempotent."""
    keeps_session_state(conn)
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            create schema if not exists settle;
            create table if not exists settle.schema_migrations (
                version text primary key,
                name text not null,
                checksum text not null,
                applied_at timestamptz not null default now()
            )"""
        )
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(_SELECT_APPLIED)}
        done: list[str] = []
        for migration in discover(folder):
            checksum = applied.get(migration.version)
            if checksum is not None:
                _check_unchanged(migration, checksum)
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into settle.schema_migrations(version, name, checksum) values ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
