"""invoicing's second consumer ("invoicing-clawbacks"): ``payout.clawback`` from payouts (R15) is recorded
for the supplier's statement of its month — or of the next open month when that one is already stated
(extension of R12: a negative ``clawbacks`` line on the next statement, never an edit of a past one).

It only records (a clawback row and the pending (supplier, currency, month) that makes the month's close
state the pair); the statement closer claims the rows (``store.claim_statement_clawbacks``). Separate from
the charges consumer: payouts.v1 is not behind the charges watermark barrier, and a clawback never decides
when a month closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libs.messaging.consume import Subscription, Tx
from libs.money import currency_exponent
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import PayoutClawback
from services.invoicing import store

CONSUMER = "invoicing-clawbacks"


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    rows: list[store.ClawbackRow] = []
    for event in events:
        data = event.data
        if not isinstance(data, PayoutClawback):
            continue  # planned, held, released, waiting, compensation answers
        amount_minor = data.amount.scaleb(currency_exponent(data.currency))
        assert amount_minor == amount_minor.to_integral_value() and amount_minor < 0
        rows.append(
            store.ClawbackRow(
                clawback_id=data.clawback_id,
                supplier_id=data.supplier_id,
                currency=data.currency,
                month=data.month,
                amount_minor=int(amount_minor),
                invoice_number=data.invoice_number,
                kind=data.kind,
                ref=data.ref,
                event_id=event.id,
            )
        )
    new = await store.insert_clawbacks(tx.conn, rows)
    # Lock order: clawback rows, then supplier_pending. A month already stated for the pair still gets the
    # pending row: the next close of the pair takes every pending month up to its own.
    await store.mark_supplier_pending(tx.conn, {(r.supplier_id, r.currency, r.month) for r in new})


SUBSCRIPTION = Subscription(
    consumer=CONSUMER,
    topics=(topics.PAYOUTS,),
    handler=on_batch,
    batch_max=500,
)
