"""payments' answer to the saga's question about an invoice it does not have says how far payments has
read invoicing's close announcements, so an operator can tell "never sent" from "not read yet"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import topics
from schemas.events import SagaEvent
from services.payments import inquiries
from tests.conftest import Stack

pytestmark = pytest.mark.integration
MARCH = datetime(2027, 3, 1, tzinfo=UTC)
ASKED_AT = MARCH + timedelta(days=40)


def collection_question(number: str, at: datetime) -> SagaEvent:
    """The saga's question to payments about an invoice (``inquiry`` = collection), as a saga asks it."""
    return SagaEvent(
        saga_id=f"saga-{number}",
        invoice_number=number,
        contract_id="ctr-x",
        renter_id="rnt-x",
        currency="USD",
        period_start=None,
        state="inquiring",
        reason="no answer from payments",
        waits_for="an answer to the inquiry (payment status)",
        inquiry=inquiries.ASKED,
        cause_event_id="tick-x",
        cause_type="clock.ticked",
        at=at,
    )


async def test_an_unknown_invoice_is_answered_with_how_far_payments_has_read_the_closes(stack: Stack) -> None:
    partitions = topics.INVOICES_FINALIZED.partitions
    async with stack.pool.acquire() as conn:
        before = await inquiries._answer(conn, collection_question("INV-NOBODY", ASKED_AT))
        for partition in range(partitions - 1):
            await conn.execute(
                "insert into payments.invoice_marks (partition, through) values ($1, $2)",
                partition,
                MARCH + timedelta(days=partition),
            )
        partly = await inquiries._answer(conn, collection_question("INV-NOBODY", ASKED_AT))
        await conn.execute(
            "insert into payments.invoice_marks (partition, through) values ($1, $2)",
            partitions - 1,
            MARCH - timedelta(days=31),
        )
        read = await inquiries._answer(conn, collection_question("INV-NOBODY", ASKED_AT))

    said = "payments has no invoice INV-NOBODY: not received, or not read yet (a lagging consumer)"
    assert (before.known, before.status, partly.known, read.known) == (False, None, False, False)
    assert (
        before.detail
        == partly.detail
        == (f"{said}; it has not read a close announcement of invoicing (invoices.watermark) on every partition")
    )
    # the least mark over the partitions: what every partition has been read through
    assert read.detail == (
        f"{said}; it has read every invoice of invoicing's closes through 2027-01-29T00:00:00+00:00: "
        "one issued by then never came"
    )
