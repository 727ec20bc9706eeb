"""What the CLI, the demo and the tests read of payments (the payments worker's tables, read-only)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg

from libs.money import format_minor
from services.payments.money import to_minor


async def invoice_payment_fields(conn: asyncpg.Connection, invoices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each invoice document with ``payment_status``, ``amount_paid`` and ``amount_remaining`` (strings).

    An invoice payments has not reported on yet has had nothing paid: ``paid`` when its amount due is
    zero (R11), else ``open``."""
    numbers = [d["number"] for d in invoices]
    rows = {
        r["number"]: r
        for r in await conn.fetch(
            """select number, currency, paid_minor, remaining_minor, status from payments.invoice_status
                where number = any($1)""",
            numbers,
        )
    }
    out = []
    for doc in invoices:
        row = rows.get(doc["number"])
        cur = doc["currency"]
        if row is None:
            due = to_minor(Decimal(doc["amount_due"]), cur)
            status, paid, remaining = ("paid" if due == 0 else "open"), 0, due
        else:
            status, paid, remaining = row["status"], row["paid_minor"], row["remaining_minor"]
        out.append(
            {
                **doc,
                "payment_status": status,
                "amount_paid": format_minor(paid, cur),
                "amount_remaining": format_minor(remaining, cur),
            }
        )
    return out


async def attempts(
    conn: asyncpg.Connection, *, renter: str | None = None, state: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select a.attempt_id, t.invoice_number, t.renter_id, a.try_no, a.call_no, a.gateway, a.amount_minor,
                  a.currency, a.at, a.state, a.code, a.decline_kind, a.charge_id, a.inquiries, t.state as intent_state
             from payments.attempts a join payments.intents t using (intent_id)
            where ($1::text is null or t.renter_id = $1) and ($2::text is null or a.state = $2)
            order by a.at, a.attempt_id limit $3""",
        renter,
        state,
        limit,
    )
    return [
        {
            "payment_id": r["attempt_id"],
            "invoice_number": r["invoice_number"],
            "renter_id": r["renter_id"],
            "try": r["try_no"],
            "call": r["call_no"],
            "gateway": r["gateway"],
            "amount": format_minor(r["amount_minor"], r["currency"]),
            "currency": r["currency"],
            "at": r["at"].isoformat(),
            "state": r["state"],
            "code": r["code"],
            "decline_kind": r["decline_kind"],
            "charge_id": r["charge_id"],
            "inquiries": r["inquiries"],
            "intent_state": r["intent_state"],
        }
        for r in rows
    ]


async def attempt_detail(conn: asyncpg.Connection, payment_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """select a.*, t.invoice_number, t.renter_id, t.state as intent_state, t.tries, t.next_try_at, t.reason
             from payments.attempts a join payments.intents t using (intent_id) where a.attempt_id = $1""",
        payment_id,
    )
    if row is None:
        return None
    siblings = await conn.fetch(
        """select attempt_id, try_no, call_no, gateway, state, code from payments.attempts
            where intent_id = $1 order by try_no, call_no""",
        row["intent_id"],
    )
    applied = await conn.fetch(
        "select invoice_number, amount_minor, at from payments.applications where source_id = $1 order by seq",
        f"attempt:{payment_id}",
    )
    cur = row["currency"]
    return {
        "payment_id": payment_id,
        "invoice_number": row["invoice_number"],
        "renter_id": row["renter_id"],
        "gateway": row["gateway"],
        "routing": json.loads(row["decision"]) if isinstance(row["decision"], str) else row["decision"],
        "amount": format_minor(row["amount_minor"], cur),
        "currency": cur,
        "at": row["at"].isoformat(),
        "state": row["state"],
        "code": row["code"],
        "decline_kind": row["decline_kind"],
        "charge_id": row["charge_id"],
        "idempotency_key": row["idempotency_key"],
        "inquiries": row["inquiries"],
        "message": row["message"],
        "intent": {
            "state": row["intent_state"],
            "tries": row["tries"],
            "next_try_at": row["next_try_at"].isoformat() if row["next_try_at"] else None,
            "reason": row["reason"],
            "attempts": [dict(s) for s in siblings],
        },
        "applied_to": [
            {
                "invoice_number": a["invoice_number"],
                "amount": format_minor(a["amount_minor"], cur),
                "at": a["at"].isoformat(),
            }
            for a in applied
        ],
    }


async def receipts(
    conn: asyncpg.Connection, *, renter: str | None = None, unmatched: bool = False
) -> list[dict[str, Any]]:
    """Money in of every kind with what it paid; ``unmatched``: receipts that paid no invoice at all."""
    rows = await conn.fetch(
        """select m.renter_id, m.source_id, m.currency, m.kind, m.amount_minor, m.at, m.reference, m.rail, m.gateway,
                  coalesce((select sum(a.amount_minor) from payments.applications a
                             where a.renter_id = m.renter_id and a.source_id = m.source_id), 0) as applied_minor
             from payments.money_in m
            where ($1::text is null or m.renter_id = $1)
            order by m.at, m.source_id""",
        renter,
    )
    out = []
    for r in rows:
        applied = int(r["applied_minor"])
        if unmatched and (r["kind"] != "receipt" or applied > 0):
            continue
        out.append(
            {
                "receipt_id": r["source_id"].split(":", 1)[1],
                "kind": r["kind"],
                "renter_id": r["renter_id"],
                "currency": r["currency"],
                "amount": format_minor(r["amount_minor"], r["currency"]),
                "applied": format_minor(applied, r["currency"]),
                "unapplied": format_minor(r["amount_minor"] - applied, r["currency"]),
                "received_at": r["at"].isoformat(),
                "rail": r["rail"] or r["gateway"],
                "reference": r["reference"],
            }
        )
    return out


async def credit_balances(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select renter_id, currency, credit_minor from payments.books
            where credit_minor <> 0 order by renter_id, currency"""
    )
    return [
        {
            "renter_id": r["renter_id"],
            "currency": r["currency"],
            "credit_balance": format_minor(r["credit_minor"], r["currency"]),
        }
        for r in rows
    ]


async def refunds(
    conn: asyncpg.Connection, *, renter: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select * from payments.refunds
            where ($1::text is null or renter_id = $1) and ($2::text is null or state = $2)
            order by at, refund_id""",
        renter,
        state,
    )
    return [
        {
            "refund_id": r["refund_id"],
            "invoice_number": r["invoice_number"],
            "renter_id": r["renter_id"],
            "amount": format_minor(r["amount_minor"], r["currency"]),
            "currency": r["currency"],
            "state": r["state"],
            "overpaid": format_minor(r["overpaid_minor"], r["currency"]),
            "gateway": r["gateway"],
            "at": r["at"].isoformat(),
            "reason": r["reason"],
            "attempt_id": r["attempt_id"],
            "processor_id": r["processor_id"],
            "message": r["message"],
        }
        for r in rows
    ]


async def disputes(conn: asyncpg.Connection, *, renter: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "select * from payments.disputes where ($1::text is null or renter_id = $1) order by opened_at, dispute_id",
        renter,
    )
    return [
        {
            "dispute_id": r["dispute_id"],
            "invoice_number": r["invoice_number"],
            "renter_id": r["renter_id"],
            "amount": format_minor(r["amount_minor"], r["currency"]),
            "currency": r["currency"],
            "state": r["state"],
            "gateway": r["gateway"],
            "fee": format_minor(r["fee_minor"], r["currency"]),
            "opened_at": r["opened_at"].isoformat(),
            "closed_at": r["closed_at"].isoformat() if r["closed_at"] else None,
            "attempt_id": r["attempt_id"],
        }
        for r in rows
    ]


async def commands(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("select * from payments.commands order by at, command_id")
    return [
        {
            "command_id": r["command_id"],
            "type": r["type"],
            "renter_id": r["renter_id"],
            "requested_by": r["requested_by"],
            "reason": r["reason"],
            "at": r["at"].isoformat(),
            "outcome": r["outcome"],
        }
        for r in rows
    ]
