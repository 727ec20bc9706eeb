"""Writing and reading the ledger with asyncpg. The database enforces the invariants; this module
batches writes (two INSERT statements for any number of entries) and reads reports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from libs.ids import derive_id
from libs.ledger.postings import AccountSpec, Entry, Posting, asset_of
from libs.ledger.proof import GENESIS, EntryRecord, LedgerHasher, assets_of_chain, chain_of, lanes_of, link, record_of


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
    """Insert entries and all their postings, chained (``libs.ledger.proof``), in the caller's transaction.

    For every asset set the entries are in, locks the head of one of its lanes (a free one if any; the
    lane's serialization point) until the transaction ends, asset sets in a fixed order; then writes the
    entries (one statement), their postings (one statement) and the new heads. Raises (through the
    caller's error mapping) UnbalancedEntryError, LedgerFloorError, or a unique violation when an entry
    for the same (cause, kind) exists.
    """
    if not entries:
        return
    records = [record_of(e) for e in entries]
    lanes = {assets: await _lock_lane(conn, assets) for assets in sorted({chain_of(r) for r in records})}
    heads = {chain: (seq, prev) for chain, seq, prev in lanes.values()}
    chains = [lanes[chain_of(r)][0] for r in records]
    seqs: list[int] = []
    prevs: list[bytes] = []
    hashes: list[bytes] = []
    for record, chain in zip(records, chains, strict=True):
        seq, prev = heads[chain]
        digest = link(prev, record)
        seqs.append(seq + 1)
        prevs.append(prev)
        hashes.append(digest)
        heads[chain] = (seq + 1, digest)
    await conn.execute(
        """
        insert into ledger.entries (id, cause_id, kind, occurred_at, correlation_id, description, reverses,
                                    chain, chain_seq, prev_hash, hash)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                             $7::text[], $8::text[], $9::bigint[], $10::bytea[], $11::bytea[])
        """,
        [e.id for e in entries],
        [e.cause_id for e in entries],
        [e.kind for e in entries],
        [e.occurred_at for e in entries],
        [e.correlation_id for e in entries],
        [e.description for e in entries],
        [e.reverses for e in entries],
        chains,
        seqs,
        prevs,
        hashes,
    )
    entry_ids: list[str] = []
    posting_seqs: list[int] = []
    accounts: list[str] = []
    assets: list[str] = []
    amounts: list[int] = []
    for entry in entries:
        for seq, posting in enumerate(entry.postings):
            entry_ids.append(entry.id)
            posting_seqs.append(seq)
            accounts.append(posting.account)
            assets.append(asset_of(posting.currency))
            amounts.append(posting.amount_units)
    await conn.execute(
        """
        insert into ledger.postings (entry_id, seq, account, asset, amount)
        select * from unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::numeric[])
        """,
        entry_ids,
        posting_seqs,
        accounts,
        assets,
        amounts,
    )
    await conn.execute(
        """
        update ledger.chain_heads h set seq = v.seq, hash = v.hash
          from unnest($1::text[], $2::bigint[], $3::bytea[]) as v (chain, seq, hash)
         where h.chain = v.chain
        """,
        list(heads),
        [seq for seq, _ in heads.values()],
        [digest for _, digest in heads.values()],
    )


async def _lock_lane(conn: asyncpg.Connection, assets: str) -> tuple[str, int, bytes]:
    """(chain, seq, hash) of one lane of ``assets``, its head locked FOR UPDATE until the transaction ends:
    the first lane no other transaction holds, or — all held — one picked by the session (waiting for
    it). Lane heads are created on first use. Asset sets are locked in one order by every poster and
    each waits for at most one lane per set, so two posters never deadlock on heads."""
    lanes = lanes_of(assets)
    free = """select chain, seq, hash from ledger.chain_heads where chain = any($1::text[])
               order by chain collate "C" for update skip locked limit 1"""
    row = await conn.fetchrow(free, lanes)
    if row is None:
        known = await conn.fetchval("select count(*) from ledger.chain_heads where chain = any($1::text[])", lanes)
        if known < len(lanes):  # first use of this asset set: create its lanes' heads
            await conn.execute(
                """insert into ledger.chain_heads (chain) select unnest($1::text[]) order by 1
                   on conflict (chain) do nothing""",
                lanes,
            )
            row = await conn.fetchrow(free, lanes)
        if row is None:  # every lane is being written: wait for one
            row = await conn.fetchrow(
                """select chain, seq, hash from ledger.chain_heads
                    where chain = ($1::text[])[1 + pg_backend_pid() % cardinality($1::text[])] for update""",
                lanes,
            )
    assert row is not None, assets
    return str(row["chain"]), int(row["seq"]), bytes(row["hash"])


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
    chains: dict[str, int] = field(default_factory=dict)
    """Chain → entries in it (when the chain was checked)."""
    chain_breaks: list[tuple[str, int | None, str | None, str]] = field(default_factory=list)
    """(chain, position, entry id, what is wrong), in chain order: the first of a chain is its first bad entry."""
    unchained_entries: int = 0
    """Entries written before chaining started (migration 0006): not covered by the chain."""

    @property
    def ok(self) -> bool:
        return not (
            self.unbalanced_entries
            or self.balance_mismatches
            or self.floor_breaches
            or self.empty_entries
            or self.chain_breaks
            or any(self.trial_balance.values())
        )


async def verify(conn: asyncpg.Connection, *, chain: bool = True) -> VerifyReport:
    """Recompute everything from postings (and, with ``chain``, every entry's chain link from its rows);
    the report lists every break (``ok`` when there are none)."""
    report = VerifyReport()
    if chain:
        await verify_chains(conn, report)
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


_ENTRY_ROWS = """
select e.id, e.cause_id, e.kind, e.occurred_at, e.reverses, e.description, e.correlation_id,
       e.chain, e.chain_seq, e.prev_hash, e.hash, p.accounts, p.assets, p.amounts
  from ledger.entries e
  cross join lateral (select array_agg(q.account) as accounts, array_agg(q.asset) as assets,
                             array_agg(q.amount::text) as amounts
                        from ledger.postings q where q.entry_id = e.id) p
"""
_CURSOR_PREFETCH = 2000
_BREAKS_MAX = 1000


@contextlib.asynccontextmanager
async def _snapshot(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """One consistent snapshot for a long read (the caller's transaction when it has one)."""
    if conn.is_in_transaction():
        yield
        return
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        yield


def _record(row: asyncpg.Record) -> EntryRecord:
    accounts = row["accounts"] or []
    return EntryRecord(
        id=row["id"],
        cause_id=row["cause_id"],
        kind=row["kind"],
        occurred_at=row["occurred_at"],
        reverses=row["reverses"],
        description=row["description"],
        correlation_id=row["correlation_id"],
        postings=tuple(zip(accounts, row["assets"] or [], (int(a) for a in row["amounts"] or []), strict=True)),
    )


@dataclass(frozen=True)
class LedgerHash:
    hash: str
    """SHA-256, hex (``libs.ledger.proof``: the canonical form)."""
    entries: int
    postings: int
    through: datetime | None


async def hash_ledger(conn: asyncpg.Connection, *, through: datetime | None = None) -> LedgerHash:
    """The ledger hash of every entry (occurred at or before ``through`` when given), streamed from a
    repeatable-read snapshot in canonical order."""
    hasher = LedgerHasher()
    async with _snapshot(conn):
        query = (
            _ENTRY_ROWS
            + """ where ($1::timestamptz is null or e.occurred_at <= $1)
                 order by e.occurred_at, e.id collate "C" """
        )
        async for row in conn.cursor(query, through, prefetch=_CURSOR_PREFETCH):
            hasher.add(_record(row))
    return LedgerHash(hasher.hexdigest(), hasher.entries, hasher.postings, through)


async def verify_chains(conn: asyncpg.Connection, report: VerifyReport) -> None:
    """Walk every chain in order and recompute each link from the entry's rows and its postings.

    A break names the chain, the position and the entry: a link whose content does not give its
    stored hash (an entry or posting edited), a ``prev_hash`` that is not its predecessor's hash (a
    link re-hashed or replaced), a missing position (an entry deleted), a head that disagrees with the
    chain's last entry (the tail deleted or re-written), an entry chained under other assets than
    its postings', or an unchained entry written after chaining started."""
    breaks = report.chain_breaks

    def broken(chain: str, seq: int | None, entry_id: str | None, reason: str) -> None:
        if len(breaks) < _BREAKS_MAX:
            breaks.append((chain, seq, entry_id, reason))

    async with _snapshot(conn):
        heads = {
            r["chain"]: (int(r["seq"]), bytes(r["hash"]))
            for r in await conn.fetch("select chain, seq, hash from ledger.chain_heads")
        }
        last: dict[str, tuple[int, bytes, str]] = {}
        current: str | None = None
        expected_seq = 1
        prev = GENESIS
        prev_id: str | None = None
        query = _ENTRY_ROWS + """ where e.chain is not null order by e.chain collate "C", e.chain_seq"""
        async for row in conn.cursor(query, prefetch=_CURSOR_PREFETCH):
            chain, seq, entry_id = row["chain"], int(row["chain_seq"]), row["id"]
            if chain != current:
                current, expected_seq, prev, prev_id = chain, 1, GENESIS, None
                report.chains[chain] = 0
            report.chains[chain] += 1
            record = _record(row)
            if seq != expected_seq:
                broken(chain, seq, entry_id, f"positions {expected_seq}..{seq - 1} are missing (entries deleted)")
            stored_prev, stored_hash = bytes(row["prev_hash"]), bytes(row["hash"])
            if stored_prev != prev:
                after = f"entry {prev_id}" if prev_id else "the chain's start"
                broken(chain, seq, entry_id, f"prev_hash is not the hash of {after} (a link re-hashed or replaced)")
            if chain_of(record) != assets_of_chain(chain):
                broken(chain, seq, entry_id, f"its postings are in {chain_of(record) or 'no asset'}, not {chain}")
            if link(stored_prev, record) != stored_hash:
                broken(chain, seq, entry_id, "its content does not give its hash (the entry or a posting was edited)")
            prev, prev_id, expected_seq = stored_hash, entry_id, seq + 1
            last[chain] = (seq, stored_hash, entry_id)
        for chain in sorted(set(heads) | set(last)):
            head_seq, head_hash = heads.get(chain, (0, GENESIS))
            last_seq, last_hash, last_id = last.get(chain, (0, GENESIS, None))
            if chain not in heads:
                broken(chain, last_seq, last_id, "the chain has no head row")
            elif (head_seq, head_hash) != (last_seq, last_hash):
                broken(
                    chain,
                    head_seq,
                    last_id,
                    f"the head says position {head_seq} but the chain ends at {last_seq}"
                    if head_seq != last_seq
                    else "the head's hash is not the last entry's (the tail was re-written)",
                )
        report.unchained_entries = await conn.fetchval(
            """select count(*) from ledger.entries e, ledger.chain_origin o
                where e.chain is null and e.txid < o.txid"""
        )
        for r in await conn.fetch(
            """select e.id from ledger.entries e, ledger.chain_origin o
                where e.chain is null and e.txid >= o.txid order by e.id limit $1""",
            _BREAKS_MAX,
        ):
            broken("(none)", None, r["id"], "written after chaining started but not chained")
