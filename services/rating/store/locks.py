"""The batch's transaction-scoped advisory locks: partitions first, then contracts, sorted (see
:mod:`services.rating.store`)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

_PARTITION_LOCK = "rating.partition:"
_CONTRACT_LOCK = "rating.contract:"


async def lock_batch(conn: asyncpg.Connection, partitions: Sequence[int], contract_ids: Sequence[str]) -> None:
    """Take the batch's locks: partitions (sorted), then contracts (sorted); held until commit.

    Single-bigint advisory locks: a key space apart from the relay's two-int lane locks.
    """
    keys = [f"{_PARTITION_LOCK}{p:04d}" for p in sorted(set(partitions))] + [
        f"{_CONTRACT_LOCK}{c}" for c in sorted(set(contract_ids))
    ]
    if not keys:
        return
    # One round trip: a function scan over an array yields its elements in array order, with no
    # sort or join in between, so the locks are taken in the order of ``keys``.
    await conn.execute("select count(pg_advisory_xact_lock(hashtextextended(k, 0))) from unnest($1::text[]) as k", keys)


async def prepaid_contracts(conn: asyncpg.Connection, partitions: Sequence[int]) -> list[str]:
    """Prepaid contracts whose usage lives on these partitions, sorted."""
    if not partitions:
        return []
    rows = await conn.fetch(
        """select contract_id from rating.contracts
            where partition = any($1::int[]) and billing_mode = 'prepaid' order by contract_id""",
        list(partitions),
    )
    return [r["contract_id"] for r in rows]
