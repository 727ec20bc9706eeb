"""The ledger hash and the entry chain against real PostgreSQL: concurrent posters keep every chain
whole, the hash does not depend on the order rows were written, and `settle ledger verify` names the
first entry a superuser edited behind the triggers' back (README, "Ledger proof: hash and chain")."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.ledger import AccountSpec, Entry, credit, debit, ensure_accounts, hash_ledger, post, reverse, verify
from libs.ledger.proof import GENESIS, assets_of_chain, lanes_of
from tests.conftest import Servers, Stack, fresh_stack
from tests.fleet import settle_in_process

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)
CURRENCIES = ("USD", "EUR", "JPY")


def _specs() -> list[AccountSpec]:
    return [AccountSpec(f"{name}-{cur}", cur, "asset", "p") for name in "abc" for cur in CURRENCIES]


def _entries(n: int) -> list[Entry]:
    """n entries over three currencies (every fifth one touching two), times out of id order."""
    made = []
    for i in range(n):
        cur = CURRENCIES[i % 3]
        postings = [debit(f"a-{cur}", 100 + i, cur), credit(f"b-{cur}", 100 + i, cur)]
        if i % 5 == 0:
            postings += [debit("c-JPY", 7, "JPY"), credit("a-JPY", 7, "JPY")]
        made.append(
            Entry(
                id=f"e-{i:04d}",
                cause_id=f"cause-{i}",
                kind="transfer",
                occurred_at=T0 + timedelta(minutes=(i * 37) % 600),
                postings=tuple(postings),
                correlation_id=f"corr-{i}",
                description=f"transfer {i}",
            )
        )
    return made


async def cli(stack: Stack, *args: str) -> tuple[int, str]:
    """Run a `settle` verb in this process (in a thread: it runs its own event loop) against the
    test's database: (exit code, output)."""
    return await asyncio.to_thread(_cli, stack, *args)


def _cli(stack: Stack, *args: str) -> tuple[int, str]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SETTLE_")}
    env.update(SETTLE_DATABASE_URL=stack.database_url, SETTLE_STATE_DIR=str(stack.settings.state_dir))
    done = settle_in_process(env, *args)
    return done.returncode, done.stdout + done.stderr


async def _post_each(conn: asyncpg.Connection, entries: list[Entry]) -> None:
    for entry in entries:
        async with conn.transaction():
            await post(conn, [entry])


async def test_concurrent_posters_keep_every_chain_whole(stack: Stack) -> None:
    """12 connections post 240 entries one transaction each, over four chains: every chain has
    contiguous positions, each link is its predecessor's hash, and verify recomputes all of them."""
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, _specs())
    entries = _entries(240)

    async def poster(k: int) -> None:
        conn = await asyncpg.connect(stack.database_url)
        try:
            await _post_each(conn, entries[k::12])
        finally:
            await conn.close()

    await asyncio.gather(*(poster(k) for k in range(12)))
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
        rows = await conn.fetch(
            "select chain, chain_seq, prev_hash, hash from ledger.entries order by chain, chain_seq"
        )
        heads = {r["chain"]: r["seq"] for r in await conn.fetch("select chain, seq from ledger.chain_heads")}
    assert report.ok, report
    per_assets: Counter[str] = Counter()
    for chain, n in report.chains.items():
        assert chain in lanes_of(assets_of_chain(chain)), chain
        per_assets[assets_of_chain(chain)] += n
    assert per_assets == {"USD/8": 64, "EUR/8": 64, "JPY/6": 80, "JPY/6+USD/8": 16, "EUR/8+JPY/6": 16}
    # twelve posters at once: some found the first lane held and chained into another
    assert len(report.chains) > len(per_assets)
    assert {chain: seq for chain, seq in heads.items() if seq} == report.chains  # unused lanes' heads stay at 0
    by_chain: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_chain.setdefault(row["chain"], []).append(row)
    for links in by_chain.values():
        assert [r["chain_seq"] for r in links] == list(range(1, len(links) + 1))
        assert [bytes(r["prev_hash"]) for r in links] == [GENESIS] + [bytes(r["hash"]) for r in links[:-1]]


async def test_a_poster_finding_every_lane_held_waits_for_one_and_chains_onto_it(stack: Stack) -> None:
    """Eight transactions hold the eight USD lanes: a ninth poster waits (no error, no ninth lane) on the
    lane its session picks, and once that lane's holder ends it chains onto that lane, while the other
    seven are still held; the ledger verifies."""
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, _specs())
        first, later = (e for e in _entries(7) if e.id in ("e-0003", "e-0006"))  # USD only
        async with conn.transaction():
            await post(conn, [first])  # creates the lanes
    lanes = lanes_of("USD/8")
    holders = [await asyncpg.connect(stack.database_url) for _ in lanes]
    poster = await asyncpg.connect(stack.database_url)
    held = []
    picked = poster.get_server_pid() % len(lanes)  # the lane its session waits on when all are held
    try:
        for holder, lane in zip(holders, lanes, strict=True):
            tx = holder.transaction()
            await tx.start()
            assert await holder.fetchval("select seq from ledger.chain_heads where chain = $1 for update", lane) >= 0
            held.append(tx)

        async def post_later() -> str:
            async with poster.transaction():
                await post(poster, [later])
            return str(await poster.fetchval("select chain from ledger.entries where id = $1", later.id))

        task = asyncio.create_task(post_later())
        async with stack.pool.acquire() as conn:
            for _ in range(200):
                waiting_on = await conn.fetchval("select pg_blocking_pids($1)", poster.get_server_pid())
                if waiting_on:
                    break
                await asyncio.sleep(0.05)
        assert waiting_on == [holders[picked].get_server_pid()], "the poster waits on one lane, its session's"
        assert not task.done()
        await held[picked].rollback()
        chain = await asyncio.wait_for(task, 30)
        assert chain == lanes[picked]
        assert [h.is_in_transaction() for h in holders] == [n != picked for n in range(len(lanes))]
    finally:
        for n, tx in enumerate(held):
            if holders[n].is_in_transaction():
                await tx.rollback()
        for conn in (*holders, poster):
            await conn.close()
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok, report
    assert report.chains == Counter([lanes[0], lanes[picked]])


async def test_the_hash_is_the_same_whatever_order_the_rows_were_written_in(
    stack: Stack, servers: Servers, template_db: str, tmp_path: Path
) -> None:
    entries = _entries(60)
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, _specs())
        async with conn.transaction():
            await post(conn, entries)  # one batch, in id order
        first = await hash_ledger(conn)
        through = await hash_ledger(conn, through=T0 + timedelta(hours=5))
    async with fresh_stack(servers, template_db, tmp_path / "other") as other, other.pool.acquire() as conn:
        await ensure_accounts(conn, _specs())
        await _post_each(conn, list(reversed(entries)))  # one by one, backwards: other chains, other txids
        second = await hash_ledger(conn)
        # One more entry — or one amount different — and the hashes part.
        extra = Entry("e-extra", "cause-x", "transfer", T0, (debit("a-USD", 1, "USD"), credit("b-USD", 1, "USD")))
        async with conn.transaction():
            await post(conn, [extra])
        third = await hash_ledger(conn)
    assert (second.hash, second.entries, second.postings) == (first.hash, 60, 144)
    assert third.hash != first.hash and third.entries == 61
    expected_through = sum(1 for e in entries if e.occurred_at <= T0 + timedelta(hours=5))
    assert 0 < through.entries == expected_through < 60 and through.hash != first.hash

    code, out = await cli(stack, "ledger", "hash", "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["hash"] == first.hash and shown["entries"] == 60 and shown["through"] is None
    code, out = await cli(stack, "ledger", "hash", "--through", "2026-12-01T05:00:00Z", "--json")
    assert (code, json.loads(out)["hash"]) == (0, through.hash)
    code, out = await cli(stack, "ledger", "hash", "--through", "yesterday")
    assert code == 2 and "RFC 3339" in out


async def _tamper(stack: Stack, *statements: str) -> None:
    """Run SQL as a superuser with every trigger off (session_replication_role = replica)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await conn.fetchval("select rolsuper from pg_roles where rolname = current_user")
        async with conn.transaction():
            await conn.execute("set local session_replication_role = replica")
            for sql in statements:
                await conn.execute(sql)
    finally:
        await conn.close()


async def _ledger(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await ensure_accounts(conn, _specs())
        await _post_each(conn, _entries(30))
        async with conn.transaction():
            await reverse(conn, "e-0007", cause_id="fix-7", occurred_at=T0)


async def test_verify_passes_on_an_untouched_ledger(stack: Stack) -> None:
    await _ledger(stack)
    code, out = await cli(stack, "ledger", "verify")
    assert code == 0, out
    assert "every chain recomputes" in out and "USD/8 (8)" in out
    code, out = await cli(stack, "ledger", "verify", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["ok"] is True and shown["chain_breaks"] == []


@pytest.mark.parametrize(
    ("statements", "bad_entry", "reason"),
    [
        # Edits no other check sees: the balances still match the postings.
        (
            ["update ledger.entries set occurred_at = occurred_at + interval '1 hour' where id = 'e-0012'"],
            "e-0012",
            "content does not give its hash",
        ),
        (["update ledger.entries set cause_id = 'someone-else' where id = 'e-0004'"], "e-0004", "content"),
        (["update ledger.entries set description = 'nothing to see' where id = 'e-0021'"], "e-0021", "content"),
        # An amount moved on both sides, balances fixed up to match: balanced, trial balance zero.
        (
            [
                "update ledger.postings set amount = amount + 1 where entry_id = 'e-0009' and amount > 0",
                "update ledger.postings set amount = amount - 1 where entry_id = 'e-0009' and amount < 0",
                "update ledger.accounts set balance = balance + 1 where code = 'a-USD'",
                "update ledger.accounts set balance = balance - 1 where code = 'b-USD'",
            ],
            "e-0009",
            "a posting was edited",
        ),
        # A posting moved to another account of the same asset (balances fixed up too).
        (
            [
                "update ledger.postings set account = 'c-EUR' where entry_id = 'e-0001' and account = 'a-EUR'",
                "update ledger.accounts set balance = balance - 101 where code = 'a-EUR'",
                "update ledger.accounts set balance = balance + 101 where code = 'c-EUR'",
            ],
            "e-0001",
            "content",
        ),
        # An entry deleted with its postings (and its effect on balances).
        (
            [
                "delete from ledger.postings where entry_id = 'e-0002'",
                "delete from ledger.entries where id = 'e-0002'",
                "update ledger.accounts set balance = balance - 102 where code = 'a-JPY'",
                "update ledger.accounts set balance = balance + 102 where code = 'b-JPY'",
            ],
            "e-0005",
            "missing (entries deleted)",
        ),
        # An edit with the entry's own hash re-computed: its successor's prev_hash gives it away.
        (
            [
                "update ledger.entries set kind = 'gift' where id = 'e-0003'",
                "update ledger.entries set hash = sha256(hash) where id = 'e-0003'",
            ],
            "e-0003",
            "content",
        ),
        # The chain's last entry deleted: the head row still counts it.
        (
            [
                "delete from ledger.postings where entry_id = 'e-0027'",
                "delete from ledger.entries where id = 'e-0027'",
                "update ledger.accounts set balance = balance - 127 where code = 'a-USD'",
                "update ledger.accounts set balance = balance + 127 where code = 'b-USD'",
            ],
            "e-0024",
            "the head says position 8 but the chain ends at 7",
        ),
    ],
)
async def test_verify_names_the_first_entry_a_superuser_edited(
    stack: Stack, statements: list[str], bad_entry: str, reason: str
) -> None:
    await _ledger(stack)
    await _tamper(stack, *statements)
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert not report.ok
    # Only the chain sees it: every entry still balances, balances match postings, trial balance zero.
    assert not (report.unbalanced_entries or report.balance_mismatches or any(report.trial_balance.values()))
    _, _, entry_id, why = report.chain_breaks[0]
    assert (entry_id, reason in why) == (bad_entry, True), report.chain_breaks
    code, out = await cli(stack, "ledger", "verify")
    assert code == 1, out
    assert f"first bad entry: {bad_entry}" in " ".join(out.split()) and "FAILED" in out


async def test_an_unchained_entry_is_refused_and_a_forged_one_is_named(stack: Stack) -> None:
    await _ledger(stack)
    async with stack.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="entries_chained"):
            await conn.execute(
                "insert into ledger.entries (id, cause_id, kind, occurred_at) values ('forged', 'c', 'k', now())"
            )
    await _tamper(
        stack,
        "alter table ledger.entries drop constraint entries_chained",
        "insert into ledger.entries (id, cause_id, kind, occurred_at) values ('forged', 'c', 'k', now())",
    )
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
    assert [b[2:] for b in report.chain_breaks] == [("forged", "written after chaining started but not chained")]
    assert report.unchained_entries == 0
