"""Wiring of the invoicing worker: the consumer records, the background closer closes."""

import asyncpg

from libs.messaging.worker import Service
from services.held_gauges import metrics_task
from services.invoicing import store
from services.invoicing.clawbacks import SUBSCRIPTION as CLAWBACKS
from services.invoicing.closer import run_closer
from services.invoicing.handlers import SUBSCRIPTION
from services.invoicing.statements import month_bounds


async def pending(conn: asyncpg.Connection) -> int:
    """Closes the closer still owes: due contract periods, late charges to place, and (as one unit)
    a month whose statements could close now. 0 when idle; quarantined work is not pending."""
    marks = await store.current_watermarks(conn)
    closes = await store.count_pending_closes(conn, marks)
    # The month the statement closer works on: where it left off, else the first with earnings. It has
    # work while that month may close (every partition's watermark is past it); a late row for a month
    # already stated waits for the next statement and is not pending work.
    locked_month = await conn.fetchval(f"select next_month from {store.SCHEMA}.statement_progress where id")
    month = locked_month or await store.earliest_pending_month(conn)
    statements = 0
    if month is not None and len(marks) == store.PARTITIONS:
        _, boundary = month_bounds(month)
        statements = int(min(marks.values()) >= boundary)
    return closes + statements


SERVICE = Service(
    name="invoicing",
    subscriptions=(SUBSCRIPTION, CLAWBACKS),
    tasks=(run_closer, metrics_task("invoicing")),
    pending=pending,
    description="Period close per contract (invoices, credit notes) and supplier statements per month "
    "(charges.rated.v1 + contracts.v1 → invoices.finalized.v1, credit_notes.issued.v1, "
    "statements.finalized.v1; payout.clawback → the supplier's next statement)",
)
