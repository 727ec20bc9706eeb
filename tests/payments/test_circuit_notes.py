"""The breaker's arithmetic, written after the answers' commit (``collection.note_circuits``): a success
resets a gateway's count of consecutive failures, each failure after it adds one, and reaching the
configured number opens the circuit for a while — the same as noting each answer on its own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.payments import collection
from services.payments.config import load
from tests.conftest import Stack

pytestmark = pytest.mark.integration


async def _note(stack: Stack, gateway: str, *oks: bool) -> tuple[int, bool] | None:
    config = replace(load(None), circuit_failures=3, circuit_open_s=60)
    circuits = collection.Circuits()
    for ok in oks:
        circuits.note(gateway, ok=ok)
    async with stack.pool.acquire() as conn:
        await collection.note_circuits(conn, circuits, config)
        row = await conn.fetchrow(
            "select failures, coalesce(open_until > now(), false) as open from payments.circuits where gateway = $1",
            gateway,
        )
    return None if row is None else (int(row["failures"]), bool(row["open"]))


async def test_successes_on_a_healthy_gateway_write_nothing(stack: Stack) -> None:
    assert await _note(stack, "stripe", True, True) is None


async def test_failures_count_from_the_last_success_and_open_the_circuit_at_the_threshold(stack: Stack) -> None:
    assert await _note(stack, "ledgerpay", False, False) == (2, False)
    # one more failure (in another batch) reaches three: open
    assert await _note(stack, "ledgerpay", False) == (3, True)
    # a success then one failure: the count starts again from the success; the circuit stays open for its time
    assert await _note(stack, "ledgerpay", False, True, False) == (1, True)
    # a success alone resets the count
    assert await _note(stack, "ledgerpay", True) == (0, True)


async def test_three_failures_after_a_success_in_one_batch_open_it(stack: Stack) -> None:
    assert await _note(stack, "stripe", False, True, False, False, False) == (3, True)
    assert await _note(stack, "ledgerpay", False, False, True, False) == (1, False)
