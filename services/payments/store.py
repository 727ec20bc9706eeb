"""SQL of the payments service (schema ``payments``, migration 0050) other than the allocation's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from schemas import topics
from services.payments.domain.routing import Health


@dataclass(frozen=True)
class Method:
    method_id: str
    kind: str
    token: str


async def event_now(conn: asyncpg.Connection) -> datetime | None:
    value: datetime | None = await conn.fetchval("select at from payments.clock where id = 1")
    return value


async def advance_clock(conn: asyncpg.Connection, at: datetime) -> None:
    await conn.execute(
        """insert into payments.clock (id, at) values (1, $1)
           on conflict (id) do update set at = greatest(payments.clock.at, excluded.at)""",
        at,
    )


async def queue_tick(conn: asyncpg.Connection, at: datetime) -> None:
    """A tick read; answered once invoicing's close of it is read too (``ticks_to_answer``)."""
    await conn.execute("insert into payments.ticks_unanswered (at) values ($1) on conflict do nothing", at)


async def save_invoice_mark(conn: asyncpg.Connection, partition: int, through: datetime) -> None:
    """invoicing's ``invoices.watermark`` of one partition (only moves forward)."""
    await conn.execute(
        """insert into payments.invoice_marks (partition, through) values ($1, $2)
           on conflict (partition) do update
           set through = greatest(payments.invoice_marks.through, excluded.through)""",
        partition,
        through,
    )


async def invoice_marks(conn: asyncpg.Connection) -> dict[int, datetime]:
    rows = await conn.fetch("select partition, through from payments.invoice_marks")
    return {r["partition"]: r["through"] for r in rows}


def marked_through(marks: dict[int, datetime]) -> datetime | None:
    """How far invoicing's closes have been read on every partition of invoices.finalized.v1 (the least
    mark), or None while some partition has sent no mark yet."""
    if len(marks) < topics.INVOICES_FINALIZED.partitions:
        return None
    return min(marks.values())


async def ticks_to_answer(conn: asyncpg.Connection, ready: datetime | None) -> list[datetime]:
    """Queued ticks at or before ``ready`` (None: all), oldest first, taken off the queue."""
    rows = await conn.fetch(
        "delete from payments.ticks_unanswered where $1::timestamptz is null or at <= $1 returning at", ready
    )
    return sorted(r["at"] for r in rows)


async def save_method(conn: asyncpg.Connection, row: dict[str, Any]) -> bool:
    """The latest event per method (event time, then event id) wins; True when this one did."""
    status = await conn.execute(
        """insert into payments.methods
               (renter_id, method_id, kind, token, currency, is_default, attached, at, event_id)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           on conflict (renter_id, method_id) do update set kind = excluded.kind, token = excluded.token,
               currency = excluded.currency, is_default = excluded.is_default, attached = excluded.attached,
               at = excluded.at, event_id = excluded.event_id
           where (payments.methods.at, payments.methods.event_id) < (excluded.at, excluded.event_id)""",
        row["renter_id"],
        row["method_id"],
        row["kind"],
        row["token"],
        row["currency"],
        row["is_default"],
        row["attached"],
        row["at"],
        row["event_id"],
    )
    return bool(status.endswith("1"))


async def resume_on_method_change(
    conn: asyncpg.Connection, renter_id: str, currency: str, changed_at: datetime, *, waiting_for_one: bool
) -> int:
    """R14: a hard decline stops retries until the method changes. Hard-declined intents of (renter,
    currency) whose renter's default method in the currency is now another one wait for their next try, from
    the change (the later of ``changed_at`` and that method's time) or their first try if later. With
    ``waiting_for_one`` (a default was attached), intents that had no method resume too. Returns how many."""
    status = await conn.execute(
        """with d as (select method_id, greatest(at, $3::timestamptz) as changed from payments.methods
                       where renter_id = $1 and currency = $2 and attached and is_default
                       order by at desc, event_id desc limit 1)
           update payments.intents t
              set state = 'waiting_retry',
                  next_try_at = greatest(d.changed, coalesce(t.first_try_at, greatest(d.changed, i.due_at))),
                  first_try_at = coalesce(t.first_try_at, greatest(d.changed, i.due_at)),
                  reason = 'payment method changed', updated_at = now()
             from d, payments.invoices i
            where i.invoice_id = t.invoice_id and t.renter_id = $1 and t.currency = $2
              and ((t.state = 'no_method' and $4)
                   or (t.state = 'hard_declined' and t.hard_method is distinct from d.method_id))""",
        renter_id,
        currency,
        changed_at,
        waiting_for_one,
    )
    return int(status.split()[-1])


async def due_without_intent(conn: asyncpg.Connection, through: datetime, limit: int) -> list[asyncpg.Record]:
    """Postpaid invoices due by ``through`` with no intent yet that may still ask for money at their due
    date: something remains now, or money or a credit note dated after the due date changed that (R14
    charges what was due *at* the due date; the caller computes it)."""
    return list(
        await conn.fetch(
            """select i.invoice_id, i.number, i.contract_id, i.renter_id, i.currency, i.due_at, s.remaining_minor
                 from payments.invoices i join payments.invoice_status s using (invoice_id)
                where i.billing_mode = 'postpaid' and i.amount_due_minor > 0 and i.due_at <= $1
                  and (s.remaining_minor > 0
                       or exists (select 1 from payments.applications ap
                                   where ap.invoice_number = i.number and ap.renter_id = i.renter_id
                                     and ap.currency = i.currency and ap.at > i.due_at and ap.amount_minor > 0)
                       or exists (select 1 from payments.credit_notes c
                                   where c.invoice_number = i.number and c.renter_id = i.renter_id
                                     and c.at > i.due_at))
                  and not exists (select 1 from payments.intents t where t.invoice_id = i.invoice_id)
                order by i.due_at, i.invoice_id limit $2""",
            through,
            limit,
        )
    )


async def retries_due(conn: asyncpg.Connection, through: datetime, limit: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            """select t.*, s.remaining_minor from payments.intents t join payments.invoice_status s using (invoice_id)
                where t.state = 'waiting_retry' and t.next_try_at <= $1
                order by t.next_try_at, t.intent_id limit $2 for update of t""",
            through,
            limit,
        )
    )


async def remaining_of(conn: asyncpg.Connection, invoice_id: str) -> int:
    value = await conn.fetchval("select remaining_minor from payments.invoice_status where invoice_id = $1", invoice_id)
    return int(value or 0)


async def health(conn: asyncpg.Connection, names: list[str], window: int = 100) -> dict[str, Health]:
    """Rolling success rate per gateway over its last ``window`` resolved calls (an index scan per
    gateway), and its circuit."""
    rows = await conn.fetch(
        """select g.name as gateway, count(*) filter (where r.state = 'succeeded') as ok, count(r.state) as n
             from unnest($1::text[]) as g(name)
             left join lateral (select state from payments.attempts a
                                 where a.gateway = g.name and a.resolved_at is not null
                                 order by a.resolved_at desc limit $2) r on true
            group by g.name""",
        names,
        window,
    )
    circuits = {
        r["gateway"]: bool(r["open"])
        for r in await conn.fetch("select gateway, coalesce(open_until > now(), false) as open from payments.circuits")
    }
    result = {r["gateway"]: Health(int(r["ok"]), int(r["n"]), circuits.get(r["gateway"], False)) for r in rows}
    for name, is_open in circuits.items():
        result.setdefault(name, Health(circuit_open=is_open))
    return result


async def default_methods(conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Method]:
    """Each (renter, currency)'s default payment method (the latest attached default), one statement."""
    pairs = sorted(set(keys))
    if not pairs:
        return {}
    rows = await conn.fetch(
        """select distinct on (m.renter_id, m.currency) m.renter_id, m.currency, m.method_id, m.kind, m.token
             from payments.methods m
             join unnest($1::text[], $2::text[]) as k (renter_id, currency) using (renter_id, currency)
            where m.attached and m.is_default
            order by m.renter_id, m.currency, m.at desc, m.event_id desc""",
        [r for r, _ in pairs],
        [c for _, c in pairs],
    )
    return {(r["renter_id"], r["currency"]): Method(r["method_id"], r["kind"], r["token"]) for r in rows}


_INTENT_COLUMNS = (
    "intent_id", "invoice_id", "invoice_number", "contract_id", "renter_id", "currency", "state", "tries",
    "first_try_at", "next_try_at", "reason",
)  # fmt: skip
_ATTEMPT_COLUMNS = (
    "attempt_id", "intent_id", "try_no", "call_no", "idempotency_key", "gateway", "method_id", "token",
    "amount_minor", "currency", "at", "decision",
)  # fmt: skip


async def insert_intents(conn: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New intents (one pipelined round trip for all; an intent already there is kept)."""
    if rows:
        await conn.executemany(
            """insert into payments.intents (intent_id, invoice_id, invoice_number, contract_id, renter_id, currency,
                   state, tries, first_try_at, next_try_at, reason)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict do nothing""",
            [tuple(row[c] for c in _INTENT_COLUMNS) for row in rows],
        )


async def insert_attempts(conn: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New ``pending`` attempts (one pipelined round trip for all; an attempt already there is kept)."""
    if rows:
        await conn.executemany(
            """insert into payments.attempts (attempt_id, intent_id, try_no, call_no, idempotency_key, gateway,
                   method_id, token, amount_minor, currency, at, state, decision)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12) on conflict do nothing""",
            [tuple(json.dumps(row[c]) if c == "decision" else row[c] for c in _ATTEMPT_COLUMNS) for row in rows],
        )


async def insert_attempt(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    await insert_attempts(conn, [row])


async def update_intent(conn: asyncpg.Connection, intent_id: str, **fields: Any) -> None:
    names = sorted(fields)
    sets = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    await conn.execute(
        f"update payments.intents set {sets}, updated_at = now() where intent_id = $1",
        intent_id,
        *(fields[n] for n in names),
    )


async def set_past_due(conn: asyncpg.Connection, invoice_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """update payments.invoice_status set past_due = true, status = 'past_due', revision = revision + 1,
               updated_at = now()
            where invoice_id = $1 and remaining_minor > 0 and not past_due
            returning invoice_id, number, contract_id, renter_id, currency, amount_due_minor, paid_minor,
                      remaining_minor, status, revision""",
        invoice_id,
    )
    return row
