"""Issue 10 chaos: the payouts worker (`settle run payouts`, a real process with its relay and file task)
SIGKILLed again and again while it plans a month for many suppliers, cuts the files and hands them to the
bank's drop. Afterwards every supplier has exactly one payout of exactly its statement's net, every payout
is in exactly one file and was announced sent once, the files in the drop are the stored bytes, and the
ledger verifies with exactly the payouts' total in transit."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import topics
from services.clock.domain import tick_bytes
from services.clock.main import input_barrier
from services.payouts.rails.nacha import read_nacha
from tests.chaos.test_kill_workers import _env, _kill, _start
from tests.conftest import Stack
from tests.fleet import publish, read_topic, wait_until
from tests.integration.test_invoicing_service import assert_ledger_sound, balance_units
from tests.scenarios.test_payout_files_stories import ACH_1, SEPA_1, payee, statement
from tests.scenarios.test_payouts_stories import statements_closed, ticked

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
N = 4000
FEB2 = datetime(2026, 2, 2, tzinfo=UTC)


def _supplier(i: int) -> tuple[str, str, str, dict[str, str], Decimal]:
    """Even suppliers are paid in USD by ACH, odd ones in EUR by SEPA; nets from 1.01 to ~5,000."""
    net = Decimal(1 + (i * 7919) % 500_000) / 100 + Decimal("0.01")
    if i % 2 == 0:
        return f"sup-{i:05d}", "USD", "ach", ACH_1, net
    return f"sup-{i:05d}", "EUR", "sepa", SEPA_1, net


def _both_phases(phases: list[tuple[int, int, int]]) -> bool:
    """A kill landed before anything was planned, and one after all was planned but not all sent."""
    return any(p[0] == 0 for p in phases) and any(p[0] == N and p[2] < N for p in phases)


async def test_payouts_worker_killed_while_planning_and_cutting_pays_everyone_once(
    stack: Stack, tmp_path: Path
) -> None:
    drop = tmp_path / "bank-drop"
    suppliers = [_supplier(i) for i in range(N)]
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    items: list[Any] = []
    for i, (sid, currency, rail, account, net) in enumerate(suppliers):
        items.append(payee(sid, currency, rail, account, at=jan1, n=1))
        items.append(statement(sid, currency, f"{net}", i + 1))
    items += statements_closed("2026-01", datetime(2026, 2, 1, tzinfo=UTC))
    items += ticked(FEB2)[1:]  # payments' answers to the tick (payments does not run here)
    await publish(stack, items)
    # The tick as `settle clock tick` sends it: its barrier counts every payee above, so a restarted worker
    # that reads the tick's partition before all of suppliers.v1 waits instead of planning `no_payee`.
    barrier = await input_barrier(stack.bootstrap_servers, stack.settings.topic_prefix)
    await publish(stack, [(topics.CLOCK_TICKS, "clock", tick_bytes(FEB2, barrier))])

    env = {
        **_env(stack),
        "SETTLE_PAYOUT_OUTBOX_DIR": str(drop),
        "SETTLE_PAYOUT_FILES_INTERVAL_S": "0.2",
    }
    log = tmp_path / "payouts.log"
    rng = random.Random(10)
    kills = 0
    phases: list[tuple[int, int, int]] = []  # (planned, files, sent) when each kill landed

    async def progress() -> int:
        return int(
            await stack.pool.fetchval(
                """select (select count(*) from settle.inbox where consumer like 'payouts%')
                        + (select count(*) from payouts.payouts)
                        + (select count(*) from payouts.payouts where state = 'sent')
                        + (select count(*) from settle.outbox where topic = 'payouts.v1' and sent_at is not null)"""
            )
        )

    async def all_sent() -> bool:
        sent = await stack.pool.fetchval("select count(*) from payouts.payouts where state = 'sent'")
        unsent = await stack.pool.fetchval(
            "select count(*) from settle.outbox where topic = 'payouts.v1' and sent_at is null"
        )
        return bool(sent == N and unsent == 0)

    for _ in range(20):
        process = _start(stack, "payouts", log=log, env=env)
        before = await progress()
        for _ in range(400):  # wait until it works, then kill it a random moment later
            now = await progress()
            if now > before or process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if any(p[0] == 0 for p in phases) and not _both_phases(phases):
            # Killed while consuming already: now let this run plan (one transaction for every supplier,
            # longer than a random kill's window on a slow machine) and kill it while it cuts the files.
            for _ in range(2400):
                if await stack.pool.fetchval("select count(*) from payouts.payouts") == N or process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        else:
            planned = await stack.pool.fetchval("select count(*) from payouts.payouts")
            await asyncio.sleep(rng.uniform(0.2, 1.2) if planned == 0 else rng.uniform(0.0, 0.3))
        if await all_sent():  # nothing left to kill it in
            _kill(process)
            break
        phases.append(
            tuple(
                await stack.pool.fetchrow(
                    """select (select count(*) from payouts.payouts), (select count(*) from payouts.payout_files),
                              (select count(*) from payouts.payouts where state = 'sent')"""
                )
            )
        )
        _kill(process)
        kills += 1
        if kills >= 6 and _both_phases(phases):
            break  # enough: killed while consuming and between planning and the last file; the rest is time
    assert kills >= 4, f"the worker finished before it could be killed enough times; log:\n{log.read_text()[-2000:]}"
    assert _both_phases(phases), f"kills landed while consuming and between planning and the last file sent: {phases}"

    process = _start(stack, "payouts", log=log, env=env)
    try:
        await wait_until(all_sent, timeout_s=240, what="every payout sent and announced")
    finally:
        _kill(process)

    rows = await stack.pool.fetch(
        "select payout_id, supplier_id, currency, amount_minor, payout_amount_minor, state from payouts.payouts"
    )
    expected = {sid: (currency, int(net * 100)) for sid, currency, _, _, net in suppliers}
    assert Counter(r["supplier_id"] for r in rows) == Counter(expected.keys()), "one payout per supplier"
    assert {r["supplier_id"]: (r["currency"], r["payout_amount_minor"]) for r in rows} == expected

    in_files = await stack.pool.fetch(
        """select i.payout_id, i.amount_minor, f.file_id, f.name, f.rail, f.sha256, f.content, f.total_minor
             from payouts.payout_file_items i join payouts.payout_files f using (file_id)"""
    )
    assert Counter(r["payout_id"] for r in in_files) == Counter(r["payout_id"] for r in rows), "each in one file"
    files: dict[str, dict[str, Any]] = {}
    totals: dict[str, int] = defaultdict(int)
    for r in in_files:
        files[r["file_id"]] = dict(r)
        totals[r["file_id"]] += r["amount_minor"]
    on_disk = {p.name: p.read_bytes() for p in drop.iterdir() if not p.name.startswith(".")}
    assert set(on_disk) == {f["name"] for f in files.values()}, "the drop holds exactly the stored files"
    for f in files.values():
        assert (
            hashlib.sha256(on_disk[f["name"]]).hexdigest() == f["sha256"] and bytes(f["content"]) == on_disk[f["name"]]
        )
        assert totals[f["file_id"]] == f["total_minor"]
    ach = [read_nacha(on_disk[f["name"]]) for f in files.values() if f["rail"] == "ach"]
    entries = [e.amount_minor for a in ach for b in a.batches for e in b.entries]
    assert sorted(entries) == sorted(m for c, m in expected.values() if c == "USD")

    published = [orjson.loads(r.value) for r in await read_topic(stack, topics.PAYOUTS, timeout_s=30)]
    sent_ids = {e["id"] for e in published if e["type"] == "payout.sent"}
    sent_payouts = Counter(
        e["data"]["payout_id"] for e in {e["id"]: e for e in published if e["type"] == "payout.sent"}.values()
    )
    assert len(sent_ids) == N and set(sent_payouts.values()) == {1}, "one payout.sent event id per payout"

    await assert_ledger_sound(stack)
    for currency in ("USD", "EUR"):
        total = sum(m for c, m in expected.values() if c == currency)
        assert await balance_units(stack, f"platform:payouts_in_transit:{currency}") == -total * 10**6, currency
