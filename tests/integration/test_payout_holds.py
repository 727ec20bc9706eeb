"""A saga's earnings hold at payouts (issue 11's ``hold_earnings``) against the invoice's payment status, in
whatever order the two arrive: the hold ends once the latest status has nothing remaining, never before the
hold itself, and money dated before the hold frees the earnings at the next planning."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.payouts import compensations, store
from services.payouts.domain.compensations import SagaHold
from tests.conftest import Stack

pytestmark = pytest.mark.integration

HELD = datetime(2027, 3, 5, tzinfo=UTC)  # the saga's deadline passed: earnings held
PAID_BEFORE = datetime(2027, 2, 16, tzinfo=UTC)  # money dated before the hold, learnt of after it


def invoice(n: int) -> dict[str, object]:
    return {
        "invoice_id": f"inv-{n}",
        "number": f"INV-2027-{n:06d}",
        "contract_id": f"ctr-{n}",
        "period_start": datetime(2027, 1, 1, tzinfo=UTC),
    }


async def hold_of(stack: Stack, n: int) -> SagaHold:
    row = await stack.pool.fetchrow(
        "select held_at, released_at from payouts.earnings_holds where invoice_id = $1", f"inv-{n}"
    )
    return SagaHold(row["held_at"], row["released_at"])


async def status(stack: Stack, n: int, revision: int, remaining: int, as_of: datetime) -> None:
    async with stack.pool.acquire() as conn:
        await store.save_status(conn, f"inv-{n}", revision, remaining, as_of, None)
        await compensations.on_payment_status(conn, f"inv-{n}")


async def hold(stack: Stack, n: int) -> None:
    async with stack.pool.acquire() as conn:
        await compensations._hold(conn, f"req-{n}", invoice(n), HELD)


async def test_a_hold_ends_when_the_invoice_is_paid_whichever_arrives_first(stack: Stack) -> None:
    # 1. the hold, then a status "paid" dated before it: released from the hold's own time (it was held for good)
    await hold(stack, 1)
    await status(stack, 1, 1, 0, PAID_BEFORE)
    assert (await hold_of(stack, 1)).released_at == HELD
    # 2. the same two the other way round: the same hold
    await status(stack, 2, 1, 0, PAID_BEFORE)
    await hold(stack, 2)
    assert (await hold_of(stack, 2)).released_at == HELD
    # neither holds anything at any planning: the money counts from before the hold
    for n in (1, 2):
        h = await hold_of(stack, n)
        assert not h.active(HELD) and not h.active(datetime(2027, 4, 1, tzinfo=UTC))
    # 3. held while unpaid; a later status with money still due releases nothing; the paid one releases at its as_of
    await hold(stack, 3)
    await status(stack, 3, 1, 5_000, datetime(2027, 3, 6, tzinfo=UTC))
    assert (await hold_of(stack, 3)).released_at is None
    paid = datetime(2027, 3, 10, tzinfo=UTC)
    await status(stack, 3, 2, 0, paid)
    h = await hold_of(stack, 3)
    assert h.released_at == paid and h.active(datetime(2027, 3, 9, tzinfo=UTC)) and not h.active(paid)
    # an older revision arriving late (money due) does not hold again
    await status(stack, 3, 1, 5_000, datetime(2027, 3, 6, tzinfo=UTC))
    assert (await hold_of(stack, 3)).released_at == paid


async def test_a_hold_ends_when_the_invoice_became_paid_not_at_a_later_change_that_left_it_paid(
    stack: Stack,
) -> None:
    """Payments publishes a status per instant that changed the invoice (the earlier ones ``latest: false``,
    payouts keeps them all): paid on Mar 10, then a credit note's refund on Mar 20 that leaves it paid, read
    in one batch. The hold ends on Mar 10 — when the money covered the invoice — not on Mar 20 (the latest
    status's instant)."""
    await hold(stack, 4)
    paid, refunded = datetime(2027, 3, 10, tzinfo=UTC), datetime(2027, 3, 20, tzinfo=UTC)
    async with stack.pool.acquire() as conn:
        await store.save_status(conn, "inv-4", 1, 5_000, datetime(2027, 3, 6, tzinfo=UTC), None)
        await store.save_status(conn, "inv-4", 2, 0, paid, None)  # latest: false — no release on its own
        await store.save_status(conn, "inv-4", 3, 0, refunded, None)
        await compensations.on_payment_status(conn, "inv-4")  # the latest one
    h = await hold_of(stack, 4)
    assert h.released_at == paid and not h.active(datetime(2027, 3, 15, tzinfo=UTC))
    # what a hold requested after all that would be released from (no earlier than its own time)
    async with stack.pool.acquire() as conn:
        assert await compensations.paid_since(conn, "inv-4") == paid
