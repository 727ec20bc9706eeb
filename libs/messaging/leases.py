"""Which partitions of a consumer group this worker reads: leases held as PostgreSQL advisory locks.

Settle does not use Kafka's group protocol. Its exactly-once comes from the PostgreSQL inbox and its
positions live in PostgreSQL (:mod:`libs.messaging.positions`), so partition ownership lives there
too, like the relay's lanes. This removes a dependency on the broker's group coordinator (the mock
broker's join race, a broker that blocks a group after a member is SIGKILLed) and gives instant
failover: a worker that dies closes its database session, and its locks vanish with it.

A group's partitions are split into *slots*: slot ``s`` is partition ``s`` of every topic the group
reads (topics with fewer partitions simply have no partition ``s``). Each worker holds, on one
dedicated connection:

* one **member lock** ``(group key, MEMBER_BASE + i)`` — the group's size is the number of member
  locks granted, read from ``pg_locks``;
* a **slot lock** ``(group key, s)`` for each slot it reads.

Every :meth:`Leases.refresh` balances: with ``m`` members each wants ``ceil(slots / m)`` slots; a
worker holding more releases its highest slots (between batches, so nothing is in flight), one
holding fewer takes free ones. A batch is fenced: it commits only if its worker still holds the
slots of its records (:meth:`Leases.check_owned`, run inside the batch transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib

import asyncpg

from libs import limits
from libs.db.pool import keeps_session_state
from libs.errors import DatabaseUnavailableError, InfrastructureError

MEMBER_BASE = 1_000_000
"""Member lock ids start here; slot ids are partition numbers (below MAX_PARTITIONS)."""

_GRANTED_SQL = """
select objid::bigint as id from pg_locks
 where locktype = 'advisory' and objsubid = 2 and granted and classid::bigint = $1
   and database = (select oid from pg_database where datname = current_database())
"""
"""Advisory locks are per database, and so is a group: workers of another database on the same server
(another deployment, a parallel test) are not members of this one."""


def group_key(consumer: str) -> int:
    """The first advisory-lock key of a group (positive int4; a namespace apart from the relay's keys)."""
    return zlib.crc32(f"settle.consumer:{consumer}".encode()) & 0x7FFFFFFF


class LeaseLostError(InfrastructureError):
    """This worker no longer holds a slot a batch needs; the batch is rolled back and redelivered."""


class Leases:
    """The slots one worker holds for one consumer group. Not safe for concurrent use."""

    def __init__(self, pool: asyncpg.Pool, consumer: str, slots: int) -> None:
        assert 1 <= slots < MEMBER_BASE, slots
        self.pool = pool
        self.consumer = consumer
        self.slots = slots
        self.key = group_key(consumer)
        self.owned: frozenset[int] = frozenset()
        self._conn: asyncpg.Connection | None = None
        self._member: int | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        """Backend pid of the connection holding the locks (for fencing checks), None when none."""
        return self._pid

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self.close()
        try:
            conn = await self.pool.acquire()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailableError(f"cannot hold partition leases: {exc}") from exc
        self._conn = conn
        self._pid = conn.get_server_pid()
        keeps_session_state(conn)
        for i in range(limits.GROUP_MEMBERS_MAX):
            if await conn.fetchval("select pg_try_advisory_lock($1, $2)", self.key, MEMBER_BASE + i):
                self._member = i
                return conn
        await self.close()
        raise InfrastructureError(
            f"consumer group {self.consumer} already has {limits.GROUP_MEMBERS_MAX} workers; this one waits"
        )

    async def refresh(self) -> frozenset[int]:
        """Re-balance against the live members; returns the slots now held.

        Raises InfrastructureError when the database is unreachable (every lease is then lost)."""
        try:
            conn = await self._connect()
            granted = [int(r["id"]) for r in await conn.fetch(_GRANTED_SQL, self.key)]
            members = max(1, sum(1 for g in granted if g >= MEMBER_BASE))
            taken = {g for g in granted if g < MEMBER_BASE}
            want = -(-self.slots // members)
            owned = set(self.owned)
            for slot in sorted(owned, reverse=True)[: max(0, len(owned) - want)]:
                await conn.fetchval("select pg_advisory_unlock($1, $2)", self.key, slot)
                owned.discard(slot)
            for slot in range(self.slots):
                if len(owned) >= want:
                    break
                if slot in owned or slot in taken:
                    continue
                if await conn.fetchval("select pg_try_advisory_lock($1, $2)", self.key, slot):
                    owned.add(slot)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise DatabaseUnavailableError(f"lost the partition leases of {self.consumer}: {exc}") from exc
        self.owned = frozenset(owned)
        return self.owned

    async def check_owned(self, conn: asyncpg.Connection, slots: set[int]) -> None:
        """Inside a batch transaction: raise LeaseLostError unless this worker still holds ``slots``."""
        if not slots:
            return
        if self._pid is None:
            raise LeaseLostError(f"{self.consumer}: no lease connection")
        held = await conn.fetchval(
            """select count(*) from pg_locks
                where locktype = 'advisory' and objsubid = 2 and granted and classid::bigint = $1
                  and pid = $2 and objid::bigint = any($3::bigint[])
                  and database = (select oid from pg_database where datname = current_database())""",
            self.key,
            self._pid,
            sorted(slots),
        )
        if int(held) != len(slots):
            raise LeaseLostError(f"{self.consumer}: partitions {sorted(slots)} are no longer leased to this worker")

    async def close(self) -> None:
        """Give every lease back (closing the session releases its locks)."""
        conn, self._conn = self._conn, None
        self.owned = frozenset()
        self._member = None
        self._pid = None
        if conn is not None:
            try:
                with contextlib.suppress(Exception):
                    await conn.execute("select pg_advisory_unlock_all()")
            finally:
                # A second cancellation (a worker's shutdown gives its tasks 10 s, then cancels again) may
                # land here: the connection must still go back — or be closed — or its session keeps this
                # worker's locks and the group's partitions stay leased to no one alive.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.pool.release(conn))
