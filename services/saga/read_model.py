"""What ``settle sagas list|show`` read: sagas, their transitions (each with the event behind it) and
compensations. Plain SQL over the saga schema; nothing here writes."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.saga import domain

_STUCK = """(s.state in ('needs_operator', 'compensation_failed', 'inquiring', 'pending')
             or (s.state <> all($1::text[]) and s.deadline is not null
                 and s.deadline < (select max(event_time) from saga.transitions)))"""


async def sagas(conn: asyncpg.Connection, *, stuck: bool = False, state: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""select s.saga_id, s.invoice_number, s.contract_id, s.renter_id, s.currency, s.period_start, s.state,
                   s.reason, s.waits_for, s.deadline, s.inquiry, s.state_since, s.updated_at,
                   (select count(*) from saga.compensations c where c.saga_id = s.saga_id) as compensations
              from saga.sagas s
             where ($2::bool is false or {_STUCK}) and ($3::text is null or s.state = $3)
             order by s.period_start nulls first, s.invoice_number""",
        sorted(domain.TERMINAL),
        stuck,
        state,
    )
    return [dict(r) for r in rows]


async def saga_detail(
    conn: asyncpg.Connection, saga: str, policy: domain.Policy | None = None
) -> dict[str, Any] | None:
    """By saga id or invoice number: the saga, every step with the event behind it, its compensations.
    ``steps`` are those the worker stored with the saga's latest state (evaluated under the worker's
    policy); for a saga not updated since they were stored, its facts evaluated under ``policy``
    (``settle sagas show`` passes the settings'), else the default policy."""
    row = await conn.fetchrow("select * from saga.sagas where saga_id = $1 or invoice_number = $1", saga)
    if row is None:
        return None
    detail = {k: v for k, v in dict(row).items() if k not in ("facts", "steps")}
    detail["transitions"] = [
        dict(r)
        for r in await conn.fetch(
            """select seq, from_state, to_state, reason, waits_for, deadline, event_id, event_type, event_time
                 from saga.transitions where saga_id = $1 order by seq""",
            row["saga_id"],
        )
    ]
    detail["compensations"] = [
        dict(r)
        for r in await conn.fetch(
            """select kind, ref, state, attempts, last_reason, request_event_id, cause_event_id, requested_at
                 from saga.compensations where saga_id = $1 order by requested_at, kind, ref""",
            row["saga_id"],
        )
    ]
    detail["operator_commands"] = [
        dict(r)
        for r in await conn.fetch("select * from saga.operator_commands where saga_id = $1 order by at", row["saga_id"])
    ]
    if row["steps"] is not None:
        detail["steps"] = list(row["steps"])
    else:
        facts = domain.Facts.model_validate(row["facts"])
        detail["steps"] = list(domain.evaluate(facts, policy or domain.Policy()).steps)
    return detail
