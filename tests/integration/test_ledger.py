"""Ledger invariants against real PostgreSQL (ARCHITECTURE §3: 1, 2, 3)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.db.pool import map_db_error
from libs.errors import LedgerFloorError, UnbalancedEntryError
from libs.ledger import AccountSpec, Entry, Posting, balances, credit, debit, ensure_accounts, post, reverse, verify
from tests.conftest import Stack

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)
_EXAMPLES = itertools.count()


def _entry(n: int, postings: list[Posting], kind: str = "test") -> Entry:
    return Entry(id=f"e-{kind}-{n}", cause_id=f"cause-{kind}-{n}", kind=kind, occurred_at=T0, postings=tuple(postings))


async def test_fifty_concurrent_debits_never_cross_the_floor(stack: Stack) -> None:
    """50 debits of 3 units race from 50 connections at a wallet holding 100: exactly 33 land."""
    async with stack.pool.acquire() as conn:
        await ensure_accounts(
            conn,
            [
                AccountSpec("wallet", "USD", "liability", "renter:r1", floor_units=0),
                AccountSpec("cash", "USD", "asset", "platform"),
                AccountSpec("spend", "USD", "revenue", "platform"),
            ],
        )
        async with conn.transaction():
            await post(conn, [_entry(0, [debit("cash", 100, "USD"), credit("wallet", 100, "USD")], "topup")])

    start = asyncio.Event()
    connected = asyncio.Event()
    opened = 0
    racers = 50

    async def one_debit(n: int) -> BaseException | None:
        """None when the debit landed, else how the database refused it."""
        nonlocal opened
        conn = await asyncpg.connect(stack.database_url)
        opened += 1
        if opened == racers:
            connected.set()
        try:
            await start.wait()
            try:
                async with conn.transaction():
                    await post(conn, [_entry(n, [debit("wallet", 3, "USD"), credit("spend", 3, "USD")], "draw")])
            except asyncpg.PostgresError as exc:
                return map_db_error(exc) or exc
            return None
        finally:
            await conn.close()

    tasks = [asyncio.create_task(one_debit(n)) for n in range(1, racers + 1)]
    await asyncio.wait_for(connected.wait(), timeout=30)  # every connection open before they race
    start.set()
    outcomes = await asyncio.gather(*tasks)
    refusals = [o for o in outcomes if o is not None]
    assert all(isinstance(r, LedgerFloorError) for r in refusals), refusals  # only the floor refuses, no deadlock
    landed = len(outcomes) - len(refusals)

    async with stack.pool.acquire() as conn:
        wallet = next(b for b in await balances(conn) if b.code == "wallet")
        posted = await conn.fetchval("select count(*) from ledger.entries where kind = 'draw'")
        report = await verify(conn)
    assert landed == 33 and posted == 33
    assert wallet.normal_units == 100 - 3 * 33 == 1
    assert report.ok, report


async def test_database_refuses_an_unbalanced_entry(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, [AccountSpec("a", "USD", "asset", "p"), AccountSpec("b", "USD", "revenue", "p")])
        with pytest.raises(asyncpg.PostgresError) as caught:  # noqa: PT012 (the entry and its postings, one transaction)
            async with conn.transaction():
                await conn.execute(  # chained like post() would (migration 0006 refuses an unchained entry)
                    "insert into ledger.entries (id, cause_id, kind, occurred_at, chain, chain_seq, prev_hash, hash)"
                    " values ('x', 'c', 'k', now(), 'USD/8', 1, $1, $1)",
                    bytes(32),
                )
                await conn.execute(
                    "insert into ledger.postings (entry_id, seq, account, asset, amount)"
                    " values ('x', 0, 'a', 'USD/8', 5), ('x', 1, 'b', 'USD/8', -4)"
                )
        assert isinstance(map_db_error(caught.value), UnbalancedEntryError)
        assert await conn.fetchval("select count(*) from ledger.entries") == 0


async def test_unbalanced_entry_is_refused_before_the_database(stack: Stack) -> None:
    with pytest.raises(UnbalancedEntryError):
        _entry(1, [debit("a", 5, "USD"), credit("b", 4, "USD")])
    with pytest.raises(UnbalancedEntryError):  # balanced in total, not per currency
        _entry(2, [debit("a", 5, "USD"), credit("b", 5, "EUR")])


async def test_journal_rows_cannot_be_updated_deleted_or_truncated(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, [AccountSpec("a", "USD", "asset", "p"), AccountSpec("b", "USD", "revenue", "p")])
        async with conn.transaction():
            await post(conn, [_entry(1, [debit("a", 7, "USD"), credit("b", 7, "USD")])])
        for sql in (
            "update ledger.postings set amount = 8 where entry_id = 'e-test-1' and seq = 0",
            "delete from ledger.postings",
            "update ledger.entries set kind = 'other'",
            "delete from ledger.entries",
            "truncate ledger.postings cascade",
            "update ledger.accounts set balance = 0",
            "delete from ledger.accounts",
        ):
            with pytest.raises(asyncpg.PostgresError, match=r"append-only|only through postings"):
                await conn.execute(sql)
        # Balanced postings cannot be smuggled into an existing entry by a later transaction either.
        with pytest.raises(asyncpg.PostgresError, match="transaction that creates it"):
            await conn.execute(
                "insert into ledger.postings values ('e-test-1', 5, 'a', 'USD/8', 1), ('e-test-1', 6, 'b', 'USD/8', -1)"
            )
        # Corrections are reversals: a new entry that mirrors the old one.
        async with conn.transaction():
            mirror = await reverse(conn, "e-test-1", cause_id="fix-1", occurred_at=T0)
        assert {p.amount_units for p in mirror.postings} == {-7, 7}
        assert {b.code: b.balance_units for b in await balances(conn)} == {"a": 0, "b": 0}
        assert (await verify(conn)).ok


async def test_verify_reports_a_tampered_balance(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, [AccountSpec("a", "USD", "asset", "p"), AccountSpec("b", "USD", "revenue", "p")])
        async with conn.transaction():
            await post(conn, [_entry(1, [debit("a", 7, "USD"), credit("b", 7, "USD")])])
        await conn.execute("alter table ledger.accounts disable trigger all")
        await conn.execute("update ledger.accounts set balance = balance + 1 where code = 'a'")
        report = await verify(conn)
    assert not report.ok
    assert report.balance_mismatches == [("a", 8, 7)]
    assert report.trial_balance == {"USD/8": 1}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    transfers=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(1, 10**12),
            st.sampled_from(["USD", "JPY", "EUR"]),
        ),
        min_size=1,
        max_size=40,
    )
)
async def test_trial_balance_is_zero_after_any_postings(
    stack: Stack, transfers: list[tuple[str, str, int, str]]
) -> None:
    batch = f"h{next(_EXAMPLES)}"
    async with stack.pool.acquire() as conn:
        specs = [AccountSpec(f"{name}-{cur}", cur, "asset", "p") for name in "abc" for cur in ("USD", "JPY", "EUR")]
        await ensure_accounts(conn, specs)
        entries = [
            _entry(i, [debit(f"{src}-{cur}", amount, cur), credit(f"{dst}-{cur}", amount, cur)], batch)
            for i, (src, dst, amount, cur) in enumerate(transfers)
            if src != dst
        ]
        if entries:
            async with conn.transaction():
                await post(conn, entries)
        report = await verify(conn)
    assert report.ok, report
    assert set(report.trial_balance.values()) <= {0}


async def test_postings_to_unknown_accounts_or_entries_are_refused(stack: Stack) -> None:
    """The statement trigger checks existence in one pass (no row-by-row foreign keys)."""
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, [AccountSpec("a", "USD", "asset", "p")])
        with pytest.raises(asyncpg.PostgresError, match="unknown account nowhere"):
            async with conn.transaction():
                await post(conn, [_entry(1, [debit("a", 5, "USD"), credit("nowhere", 5, "USD")])])
        with pytest.raises(asyncpg.PostgresError, match="unknown journal entry ghost"):
            await conn.execute(
                "insert into ledger.postings values ('ghost', 0, 'a', 'USD/8', 1), ('ghost', 1, 'a', 'USD/8', -1)"
            )
        with pytest.raises(asyncpg.PostgresError, match="another asset"):
            async with conn.transaction():
                await post(conn, [_entry(2, [Posting("a", "EUR", 5), Posting("a", "EUR", -5)])])
        assert (await verify(conn)).ok
