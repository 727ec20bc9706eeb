"""``invoices.watermark``: invoicing tells every partition of invoices.finalized.v1 how far its invoices
are out, so a consumer can tell "no invoice yet" from "not read yet".

The mark ``through`` is the least charges watermark over the partitions (a tick time) once no contract
has a period ending by then that is not invoiced — the contracts whose close is quarantined excepted:
they wait for an operator, and holding every reader back for them would stop the money side too. It is
sent in its own transaction, after the transactions that wrote those invoices committed (their outbox
rows come first on each partition), at most once per instant (``invoicing.invoices_announced``).

Payments answers a clock tick only once it has this mark at or past the tick from every partition
(:mod:`services.payments.handlers`): the statuses of the invoices the tick's close issued — paid at
issue from the renter's credit balance (R11) — are then out before ``payments.watermark``, so they count
at that tick's payout planning (R15: money applied at or before planning releases earnings).
"""

from __future__ import annotations

import asyncpg

from libs.ids import derive_id
from libs.messaging.outbox import Emitter, write_outbox
from libs.times import format_utc
from schemas import topics
from schemas.barrier import emit_watermark
from services.invoicing import store
from services.invoicing.invoice_close import PRODUCER

TYPE = "invoices.watermark"


async def announce(conn: asyncpg.Connection) -> bool:
    """Send the mark when it can move forward; True when it did (in ``conn``'s transaction)."""
    row = await conn.fetchrow("select through from invoicing.invoices_announced where id for update skip locked")
    if row is None:
        return False  # another worker is announcing right now
    marks = await store.current_watermarks(conn)
    if len(marks) < topics.CHARGES_RATED.partitions:
        return False
    through = min(marks.values())
    if row["through"] is not None and through <= row["through"]:
        return False
    waiting = await conn.fetchval(
        """select exists (select 1 from invoicing.contract_state
                           where next_close_at <= $1 and blocked_reason is null)""",
        through,
    )
    if waiting:
        return False  # the closer is still at it (or another worker's chunk has not committed)
    emitter = Emitter(PRODUCER)
    for partition in range(topics.INVOICES_FINALIZED.partitions):
        emit_watermark(
            emitter,
            topics.INVOICES_FINALIZED,
            type=TYPE,
            source="invoicing",
            through=through,
            partition=partition,
            event_id=derive_id(TYPE, partition, format_utc(through)),
            cause=None,
        )
    await write_outbox(conn, emitter.drain())
    await conn.execute("update invoicing.invoices_announced set through = $1 where id", through)
    return True
