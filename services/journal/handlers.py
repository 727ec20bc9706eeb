"""journal's consumer: lock the touched accounts in a fixed order, decide each transfer against the
running balance (floors hold), post every accepted entry and emit posted/refused — one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libs.ledger import ensure_accounts
from libs.messaging.consume import Subscription, Tx
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import TransferPosted, TransferRefused, TransferRequested
from services.journal.domain import allows, plan_transfer


async def on_transfer_requested(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    plans = []
    for event in events:
        request: TransferRequested = event.data
        plans.append(
            (
                event,
                request,
                plan_transfer(request, event_id=event.id, occurred_at=event.time, correlation_id=event.correlationid),
            )
        )
    await ensure_accounts(tx.conn, [spec for _, _, plan in plans for spec in plan.accounts])
    codes = sorted({spec.code for _, _, plan in plans for spec in plan.accounts})
    rows = await tx.conn.fetch(
        """select code, balance, normal_balance, floor from ledger.accounts
            where code = any($1) order by code for update""",
        codes,
    )
    running = {r["code"]: int(r["balance"]) for r in rows}
    meta = {r["code"]: (r["normal_balance"], None if r["floor"] is None else int(r["floor"])) for r in rows}
    for event, request, plan in plans:
        normal, floor = meta[request.from_account]
        if not allows(running[request.from_account], normal, floor, plan.amount_units):
            tx.emit(
                topics.JOURNAL_POSTED,
                key=request.transfer_id,
                type="journal.transfer_refused",
                time=event.time,
                cause=event,
                data=TransferRefused(
                    transfer_id=request.transfer_id,
                    reason=f"{request.from_account} would go below its floor",
                ),
            )
            continue
        running[request.from_account] -= plan.amount_units
        running[request.to_account] += plan.amount_units
        tx.post(plan.entry)
        tx.emit(
            topics.JOURNAL_POSTED,
            key=request.transfer_id,
            type="journal.transfer_posted",
            time=event.time,
            cause=event,
            data=TransferPosted(
                transfer_id=request.transfer_id,
                entry_id=plan.entry.id,
                from_account=request.from_account,
                to_account=request.to_account,
                amount=request.amount,
                currency=request.currency,
            ),
        )


SUBSCRIPTION = Subscription(
    consumer="journal", topics=(topics.JOURNAL_REQUESTS,), handler=on_transfer_requested, batch_max=1000
)
