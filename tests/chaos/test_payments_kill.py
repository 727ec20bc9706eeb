"""At most one charge per attempt, under SIGKILL: a real `settle run payments` process is killed at
random moments while it collects through `settle fakepsp` (slow answers keep calls in flight, a 5xx
chain makes failovers), restarted, killed again — then the charges are counted at the processor.

A kill between "sending" and the result leaves an attempt the next worker must resolve by asking the
processor (R14), never by charging again: the processor's own count is the proof.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.ledger import verify
from schemas import topics
from schemas.inputs import ClockTicked
from tests.chaos.test_kill_workers import _env, _kill, _start
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, relayed, wait_until
from tests.integration.test_payments_service import FEB, invoice
from tests.payments.processes import admin, fakepsp
from tests.payments.test_collection_stories import method

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RENTERS = 90
KILLS = 8
TOKENS = ("tok_slow", "tok_visa", "tok_chain_500_then_ok")


async def test_sigkill_between_send_and_commit_never_charges_twice(stack: Stack, tmp_path: Path) -> None:
    rng = random.Random(9)
    config = tmp_path / "payments.yaml"
    config.write_text(
        "gateways:\n"
        "  - {name: stripe, kinds: [card], fee_fixed_minor: 30, fee_bps: 290}\n"
        "  - {name: ledgerpay, kinds: [card], fee_fixed_minor: 20, fee_bps: 250}\n"
        "interrupted_after_s: 1\n"
        # R14's schedule is configuration; compressed here so that an inquiry which itself times out on a
        # loaded machine is asked again within the test's wait (by default the second ask is 5 min later).
        "inquiry_delays_s: [2, 5, 10, 20, 40]\n"
    )
    log = tmp_path / "payments.log"
    with fakepsp("--slow-ms", "400") as base:
        env = _env(stack) | {
            "SETTLE_STRIPE_API_BASE": base,
            "SETTLE_STRIPE_API_KEY": "sk_test_settle",
            "SETTLE_LEDGERPAY_API_BASE": base + "/ledgerpay",
            "SETTLE_GATEWAY_TIMEOUT_S": "2",
            "SETTLE_PAYMENTS_CONFIG": str(config),
        }

        items: list[tuple[Any, str, bytes]] = []
        for n in range(1, RENTERS + 1):
            renter = f"rnt-{n:03d}"
            m = method(renter, TOKENS[n % len(TOKENS)], f"pm-{n}")
            items.append(
                (topics.PAYMENT_METHODS, renter, event_bytes("payment_method.attached", m, id=f"m{n}", time=FEB))
            )
            inv = invoice(
                f"INV-2026-{n:06d}", f"ctr-{n}", renter, due=f"{n}.25", start=FEB - timedelta(days=31), end=FEB
            )
            items.append(
                (
                    topics.INVOICES_FINALIZED,
                    inv.contract_id,
                    event_bytes("invoice.finalized", inv, id=f"i{n}", time=FEB),
                )
            )
        due = FEB + timedelta(days=15)
        items.append(
            (topics.CLOCK_TICKS, "clock", event_bytes("clock.ticked", ClockTicked(at=due), id="tick", time=due))
        )
        await publish(stack, items)

        kills = 0
        async with stack.pool.acquire() as conn:
            for _ in range(KILLS):
                worker = _start(stack, "payments", log=log, env=env)
                await asyncio.sleep(rng.uniform(1.5, 3.5))
                _kill(worker)
                kills += 1
            in_flight = await conn.fetchval("select count(*) from payments.attempts where state = 'sending'")
        worker = _start(stack, "payments", log=log, env=env)
        try:

            async def collected() -> bool:
                async with stack.pool.acquire() as c:
                    done = await c.fetchval("select count(*) from payments.intents where state = 'succeeded'")
                    busy = await c.fetchval(
                        "select count(*) from payments.attempts where state in ('pending', 'sending', 'unknown')"
                    )
                return done == RENTERS and busy == 0

            try:
                await wait_until(collected, timeout_s=240, what="every invoice collected after the kills")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await _state_dump(stack)}\n{log.read_text()[-4000:]}") from None
            stats = await admin(base, "GET", "/_admin/stats")
            await relayed(stack, timeout_s=60)
        finally:
            _kill(worker)

    async with stack.pool.acquire() as conn:
        succeeded = {
            r["attempt_id"]
            for r in await conn.fetch("select attempt_id from payments.attempts where state = 'succeeded'")
        }
        collections = await conn.fetchval("select count(*) from payments.money_in where kind = 'collection'")
        inquired = await conn.fetchval("select count(*) from payments.attempts where inquiries > 0")
        report = await verify(conn)
    events = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in await read_topic(stack, topics.PAYMENTS)}
    assert kills == KILLS
    # At the processor: one charge per invoice, and every charge belongs to an attempt we recorded as succeeded.
    assert stats["charges"] == RENTERS, (stats["charges"], in_flight)
    assert Counter(stats["charges_by_attempt"].values()) == Counter({1: RENTERS})
    assert set(stats["charges_by_attempt"]) == succeeded
    assert collections == RENTERS
    assert inquired > 0, "no kill landed between send and commit: the test proved nothing"
    assert sum(1 for e in events.values() if e["type"] == "payment.succeeded") == RENTERS
    assert report.ok, report


async def _state_dump(stack: Stack) -> str:
    """What the attempts and intents look like when collection did not finish: the failure's evidence."""
    async with stack.pool.acquire() as conn:
        intents = await conn.fetch(
            "select state || ' (' || coalesce(reason, '') || ')' as state, count(*) from payments.intents"
            " group by 1 order by 1"
        )
        attempts = await conn.fetch(
            "select attempt_id, intent_id, state, claim, gateway, code, sent_at, inquiries, next_inquiry_at,"
            " now() as db_now from payments.attempts where state not in ('succeeded') order by attempt_id limit 40"
        )
    lines = ["intents: " + ", ".join(f"{r['state']}={r['count']}" for r in intents)]
    lines += [str(dict(r)) for r in attempts]
    return "\n".join(lines)
