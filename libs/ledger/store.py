"""Writing and reading the ledger with asyncpg. The database enforces the invariants; this module
batches writes (two INSERT statements for any number of entries) and reads reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from libs.ids import derive_id
from libs.ledger.postings import AccountSpec, Entry, Posting, asset_of


async def ensure_accounts(conn: asyncpg.Connection, specs: Iterable[AccountSpec]) -> None:
    """Create missing accounts (existing ones are left as they are)."""
    unique = {s.code: s for s in specs}
    if not unique:
        return
    existing = await conn.fetchval("select count(*) from ledger.accounts where code = any($1)", list(unique))
    if existing == len(unique):
        return  # the common case, and a read takes no locks
    rows = sorted(unique.values(), key=lambda s: s.code)
    await conn.execute(
        """
        insert into ledger.accounts (code, currency, asset, type, owner, normal_balance, floor, description)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::numeric[], $8::text[])
        on conflict (code) do nothing
        """,
        [s.code for s in rows],
        [s.currency for s in rows],
        [asset_of(s.currency) for s in rows],
        [s.type for s in rows],
        [s.owner for s in rows],
        [s.normal for s in rows],
        [s.floor_units for s in rows],
        [s.description for s in rows],
    )


async def post(conn: asyncpg.Connection, entries: Sequence[Entry]) -> None:
    """Insert entries and all their postings: one statement each, in the caller's transaction.

    Raises (through the caller's error mapping) UnbalancedEntryError, LedgerFloorError, or a unique
    violation when an entry for the same (cause, kind) exists.
    """
    if not entries:
        return
    await conn.execute(
        """
        insert into ledger.entries (id, cause_id, kind, occurred_at, correlation_id, description, reverses)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[])
        """,
        [e.id for e in entries],
        [e.cause_id for e in entries],
        [e.kind for e in entries],
        [e.occurred_at for e in entries],
        [e.correlation_id for e in entries],
        [e.description for e in entries],
        [e.reverses for e in entries],
    )
    entry_ids: list[str] = []
    seqs: list[int] = []
    accounts: list[str] = []
    assets: list[str] = []
    amounts: list[int] = []
    for entry in entries:
        for seq, posting in enumerate(entry.postings):
            entry_ids.append(entry.id)
            seqs.append(seq)
            accounts.append(posting.account)
            assets.append(asset_of(posting.currency))
            amounts.append(posting.amount_units)
    await conn.execute(
        """
        insert into ledger.postings (entry_id, seq, account, asset, amount)
        select * from unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::numeric[])
        """,
        entry_ids,
        seqs,
        accounts,
        assets,
        amounts,
    )


async def reverse(
    conn: asyncpg.Connection, entry_id: str, *, cause_id: str, occurred_at: datetime, description: str = ""
) -> Entry:
    """Post the mirror image of an entry (the only way to correct the ledger)."""
    rows = await conn.fetch(
        """select p.account, a.currency, p.amount from ledger.postings p
           join ledger.accounts a on a.code = p.account where p.entry_id = $1 order by p.seq""",
        entry_id,
    )
    if not rows:
        raise LookupError(f"no journal entry {entry_id}")
    kind = await conn.fetchval("select kind from ledger.entries where id = $1", entry_id)
    mirror = Entry(
        id=derive_id("reversal", entry_id),
        cause_id=cause_id,
        kind=f"reversal:{kind}",
        occurred_at=occurred_at,
        postings=tuple(Posting(r["account"], r["currency"], -int(r["amount"])) for r in rows),
        description=description or f"reversal of {entry_id}",
        reverses=entry_id,
    )
    await post(conn, [mirror])
    return mirror


@dataclass(frozen=True)
class AccountBalance:
    code: str
    currency: str
    asset: str
    type: str
    owner: str
    normal_balance: str
    balance_units: int
    """Debit-positive."""
    floor_units: int | None

    @property
    def normal_units(self) -> int:
        """The balance on the account's normal side (a wallet holding money is positive)."""
        return self.balance_units if self.normal_balance == "debit" else -self.balance_units


async def balances(
    conn: asyncpg.Connection, *, owner: str | None = None, prefix: str | None = None
) -> list[AccountBalance]:
    rows = await conn.fetch(
        """select code, currency, asset, type, owner, normal_balance, balance, floor from ledger.accounts
           where ($1::text is null or owner = $1) and ($2::text is null or code like $2 || '%')
           order by code""",
        owner,
        prefix,
    )
    return [
        AccountBalance(
            r["code"],
            r["currency"],
            r["asset"],
            r["type"],
            r["owner"],
            r["normal_balance"],
            int(r["balance"]),
            None if r["floor"] is None else int(r["floor"]),
        )
        for r in rows
    ]


@dataclass
class VerifyReport:
    entries: int = 0
    postings: int = 0
    accounts: int = 0
    unbalanced_entries: list[tuple[str, str, int]] = field(default_factory=list)
    balance_mismatches: list[tuple[str, int, int]] = field(default_factory=list)
    """(account, stored balance, recomputed from postings)."""
    floor_breaches: list[tuple[str, int, int]] = field(default_factory=list)
    empty_entries: list[str] = field(default_factory=list)
    trial_balance: dict[str, int] = field(default_factory=dict)
    """Sum of every account's stored balance per asset: zero in a healthy ledger."""

    @property
    def ok(self) -> bool:
        return not (
            self.unbalanced_entries
            or self.balance_mismatches
            or self.floor_breaches
            or self.empty_entries
            or any(self.trial_balance.values())
        )


async def verify(conn: asyncpg.Connection) -> VerifyReport:
    """Recompute everything from postings; the report lists every break (``ok`` when there are none)."""
    report = VerifyReport()
    report.entries = await conn.fetchval("select count(*) from ledger.entries")
    report.postings = await conn.fetchval("select count(*) from ledger.postings")
    report.accounts = await conn.fetchval("select count(*) from ledger.accounts")
    report.unbalanced_entries = [
        (r["entry_id"], r["asset"], int(r["total"]))
        for r in await conn.fetch(
            """select entry_id, asset, sum(amount) as total from ledger.postings
               group by entry_id, asset having sum(amount) <> 0 order by entry_id limit 1000"""
        )
    ]
    report.balance_mismatches = [
        (r["code"], int(r["balance"]), int(r["recomputed"]))
        for r in await conn.fetch(
            """select a.code, a.balance, coalesce(p.total, 0) as recomputed
                 from ledger.accounts a
                 left join (select account, sum(amount) as total from ledger.postings group by account) p
                   on p.account = a.code
                where a.balance <> coalesce(p.total, 0)
                order by a.code limit 1000"""
        )
    ]
    report.floor_breaches = [
        (r["code"], int(r["balance"]), int(r["floor"]))
        for r in await conn.fetch(
            """select code, balance, floor from ledger.accounts where floor is not null
               and (case when normal_balance = 'debit' then balance else -balance end) < floor"""
        )
    ]
    report.empty_entries = [
        r["id"]
        for r in await conn.fetch(
            """select e.id from ledger.entries e where not exists
               (select 1 from ledger.postings p where p.entry_id = e.id) limit 1000"""
        )
    ]
    report.trial_balance = {
        r["asset"]: int(r["total"])
        for r in await conn.fetch(
            "select asset, sum(balance) as total from ledger.accounts group by asset order by asset"
        )
    }
    return report
