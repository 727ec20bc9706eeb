"""payouts answers the saga's inquiries about the payouts of an invoice's earnings.

The saga asks when a paid cycle's payout is not sent by its deadline (``inquiry`` = ``payout``, 45 days of
event time after the release) or not settled after it was sent (``settlement``, 5 days after sending): a
``saga.step`` on ``sagas.v1``. payouts answers from its own records as they stand when it reads the
question — every payout whose plan named the invoice (``payouts.payouts.invoice_numbers``, kept since
migration 0103), with its state, its reason and the file of its latest attempt — or says that no payout
names the invoice. The answer is ``payout.inquiry_answered`` on ``payouts.v1``, once per question (its id
derives from the question's). It moves no money and no state; it is what an operator reads when the saga
hands the cycle over."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.messaging.consume import Tx
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import PayoutInquiryAnswered, PayoutInquiryLine, SagaEvent

ASKED = frozenset({"payout", "settlement"})
"""The ``inquiry`` of a saga step that asks payouts."""


def is_question(event: Envelope[Any]) -> bool:
    data = event.data
    return isinstance(data, SagaEvent) and event.type == "saga.step" and data.inquiry in ASKED


async def answer(tx: Tx, event: Envelope[SagaEvent]) -> None:
    """Answer one inquiry (see the module docstring)."""
    question = event.data
    tx.emit(
        topics.PAYOUTS,
        key=question.saga_id,
        type="payout.inquiry_answered",
        time=event.time,
        cause=event,
        event_id=derive_id("payout.inquiry_answered", event.id),
        correlation_id=question.saga_id,
        data=await _answer(tx.conn, question),
    )


async def _answer(conn: asyncpg.Connection, question: SagaEvent) -> PayoutInquiryAnswered:
    number = question.invoice_number
    rows = await conn.fetch(
        """select p.supplier_id, p.payout_id, p.state, p.reason, p.rail_reason, f.name, f.state as file_state
             from payouts.payouts p
             left join payouts.payout_files f on f.file_id = p.file_id
            where $1 = any(p.invoice_numbers)
            order by p.supplier_id, p.planned_at, p.payout_id""",
        number,
    )
    lines = []
    for r in rows:
        why = r["rail_reason"] or r["reason"]
        lines.append(
            PayoutInquiryLine(
                supplier_id=r["supplier_id"],
                payout_id=r["payout_id"],
                state=r["state"],
                reason=why[:200] if why else None,
                file=f"{r['name']} ({r['file_state']})"[:200] if r["name"] else None,
            )
        )
    if not lines:
        detail = f"no payout names invoice {number} (plans before migration 0103 named none)"
    else:
        detail = "; ".join(_said(line) for line in lines)
    return PayoutInquiryAnswered(
        saga_id=question.saga_id,
        invoice_number=number,
        inquiry="settlement" if question.inquiry == "settlement" else "payout",
        known=bool(lines),
        payouts=lines[:1000],
        detail=detail[:2000],
        asked_at=question.at,
    )


def _said(line: PayoutInquiryLine) -> str:
    what = f"{line.supplier_id}: payout {line.payout_id} {line.state}"
    if line.reason:
        what += f" ({line.reason})"
    if line.file:
        what += f", file {line.file}"
    return what
