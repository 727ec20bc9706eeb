"""Issue 11 chaos: the saga worker (`settle run saga`, a real process) SIGKILLed mid-cycle, again and again,
then restarted. Every saga still ends, and no compensation is requested twice: each (saga, kind, ref,
attempt) has one row, one outbox row and one event id on sagas.v1."""

from __future__ import annotations

import random
import signal
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import topics
from schemas.events import PaymentEvent
from tests.chaos.test_kill_workers import _kill, _kill_while_working, _start
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, wait_until
from tests.integration.test_payments_service import FEB, invoice
from tests.scenarios.test_saga_stories import _status

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
N = 1500
DUE = FEB + timedelta(days=15)


def _cycle(i: int) -> list[tuple[Any, str, bytes]]:
    """Even cycles are paid (one in four later refunded); odd ones go past due."""
    contract, renter = f"ctr-{i}", f"rnt-{i}"
    inv = invoice(f"INV-2026-{i:06d}", contract, renter, due="100.00", start=FEB - timedelta(days=31), end=FEB)
    out: list[tuple[Any, str, bytes]] = [
        (topics.INVOICES_FINALIZED, contract, event_bytes("invoice.finalized", inv, id=f"i-{i}", time=FEB))
    ]
    if i % 2 == 0:
        out.append((topics.INVOICE_PAYMENTS, contract, _status(inv.number, contract, renter, 2, "paid", "100.00", DUE)))
        if i % 4 == 0:
            data = PaymentEvent(
                payment_id=f"rf-{i}",
                renter_id=renter,
                currency="USD",
                amount=Decimal("10.00"),
                invoice_number=inv.number,
                at=DUE + timedelta(days=5),
            )
            out.append(
                (
                    topics.PAYMENTS,
                    renter,
                    event_bytes("payment.refunded", data, id=f"rf-{i}", time=DUE + timedelta(days=5)),
                )
            )
    else:
        at = DUE + timedelta(days=14)
        data = PaymentEvent(
            payment_id=f"pi-{i}",
            renter_id=renter,
            currency="USD",
            amount=Decimal("100.00"),
            invoice_number=inv.number,
            contract_id=contract,
            at=at,
            reason="dunning exhausted",
        )
        out.append((topics.PAYMENTS, renter, event_bytes("invoice.past_due", data, id=f"pd-{i}", time=at)))
    return out


async def test_saga_worker_killed_mid_cycle_ends_every_saga_and_compensates_once(stack: Stack, tmp_path: Path) -> None:
    items = [item for i in range(N) for item in _cycle(i)]
    await publish(stack, items)
    rng = random.Random(11)
    log = tmp_path / "saga.log"
    kills = 0
    progress = "select count(*) from settle.inbox where consumer = 'saga'"
    for _ in range(5):
        process = _start(stack, "saga", log=log)
        if await _kill_while_working(stack, process, progress, len(items), rng):
            kills += 1
        else:
            _kill(process)
            break
    assert kills >= 3, f"the worker finished before it could be killed enough times; log:\n{log.read_text()[-2000:]}"
    process = _start(stack, "saga", log=log)
    expected = {f"INV-2026-{i:06d}": "completed" if i % 4 == 2 else "compensated" for i in range(N)}
    n_requests = N // 2 + len(range(0, N, 4))
    try:

        async def ended() -> bool:
            rows = await stack.pool.fetch("select invoice_number, state from saga.sagas")
            sent = await stack.pool.fetchval(
                "select count(*) from settle.outbox where topic = 'sagas.v1' and sent_at is not null"
            )
            total = await stack.pool.fetchval("select count(*) from settle.outbox where topic = 'sagas.v1'")
            return {r["invoice_number"]: r["state"] for r in rows} == expected and sent == total

        await wait_until(ended, timeout_s=180, what="every saga ended and its events relayed")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    comps = await stack.pool.fetch("select kind, ref, attempts, state from saga.compensations")
    assert len(comps) == n_requests
    assert all(c["attempts"] == 1 and c["state"] == "done" for c in comps)
    assert Counter(c["kind"] for c in comps) == {"hold_earnings": N // 2, "clawback": len(range(0, N, 4))}
    twice = await stack.pool.fetchval(
        """select count(*) from (select event_id from settle.outbox where topic = 'sagas.v1'
                                  group by event_id having count(*) > 1) d"""
    )
    assert twice == 0, "each saga event queued once"
    published = [orjson.loads(r.value) for r in await read_topic(stack, topics.SAGAS, timeout_s=30)]
    requests = [e for e in published if e["type"] == "saga.compensation_requested"]
    keys = Counter(
        (e["data"]["saga_id"], e["data"]["compensation"], e["data"]["ref"], e["data"]["attempt"]) for e in requests
    )
    # a relay killed between publish and mark-sent may publish a row again: the same event id, never a new one
    assert len({e["id"] for e in requests}) == n_requests == len(keys)
    transitions = await stack.pool.fetchval(
        "select count(*) from (select saga_id, seq from saga.transitions group by 1, 2 having count(*) > 1) d"
    )
    assert transitions == 0
