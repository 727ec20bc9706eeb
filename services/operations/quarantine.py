"""Quarantined invoice closes: a contract whose close broke a rule (or hit a bug) is set aside with the
reason in ``invoicing.contract_state.blocked_reason`` and holds back its month's supplier statements
(:mod:`services.invoicing.closer`). ``settle invoices quarantine list | retry``. A supplier statement
whose close failed is set aside too (``invoicing.statements_blocked``; ``settle statements blocked``):
read-only here — its items go to the pair's next statement.

Retry clears the block (audited in ``settle.operator_actions``); the closer's next round picks the
contract up like any due contract. If the cause is still there, the close fails again and the
contract is set aside again with the (new) reason — retry after fixing the cause (a contract
amendment, a redriven event, a code fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs import limits
from libs.errors import OperatorRequestError
from libs.times import format_utc
from services.operations.audit import record_action


@dataclass(frozen=True)
class QuarantinedClose:
    contract_id: str
    partition: int
    reason: str
    blocked_since: datetime
    """When the block was recorded (the contract state's last update)."""
    next_period_start: datetime | None
    next_close_at: datetime | None
    invoiced_through: datetime | None

    def as_json(self) -> dict[str, Any]:
        def t(value: datetime | None) -> str | None:
            return None if value is None else format_utc(value)

        return {
            "contract_id": self.contract_id,
            "partition": self.partition,
            "reason": self.reason,
            "blocked_since": self.blocked_since.astimezone(UTC).isoformat(),
            "next_period_start": t(self.next_period_start),
            "next_close_at": t(self.next_close_at),
            "invoiced_through": t(self.invoiced_through),
        }


async def list_quarantined(conn: asyncpg.Connection) -> list[QuarantinedClose]:
    rows = await conn.fetch(
        """select contract_id, partition, blocked_reason, updated_at, next_period_start, next_close_at,
                  invoiced_through
             from invoicing.contract_state where blocked_reason is not null
            order by updated_at, contract_id limit $1""",
        limits.HELD_LIST_MAX,
    )
    return [
        QuarantinedClose(
            r["contract_id"],
            r["partition"],
            r["blocked_reason"],
            r["updated_at"],
            r["next_period_start"],
            r["next_close_at"],
            r["invoiced_through"],
        )
        for r in rows
    ]


async def retry(conn: asyncpg.Connection, contract_id: str, *, reason: str, actor: str) -> int:
    """Clear a contract's block so the closer tries again; returns the audit id. In a transaction."""
    row = await conn.fetchrow(
        """select blocked_reason, next_close_at from invoicing.contract_state
            where contract_id = $1 for update""",
        contract_id,
    )
    if row is None:
        raise OperatorRequestError(f"invoicing does not know contract {contract_id}")
    if row["blocked_reason"] is None:
        raise OperatorRequestError(f"contract {contract_id} is not quarantined")
    action_id = await record_action(
        conn,
        actor=actor,
        action="retry",
        service="invoicing",
        kind="close",
        item_id=f"invoicing:close:{contract_id}",
        reason=reason,
        detail={"contract_id": contract_id, "blocked_reason": row["blocked_reason"]},
    )
    await conn.execute(
        "update invoicing.contract_state set blocked_reason = null, updated_at = now() where contract_id = $1",
        contract_id,
    )
    return action_id


@dataclass(frozen=True)
class BlockedStatement:
    """A supplier's statement of a month set aside by the close (it broke a rule, or hit a bug): the month
    closed for everyone else, and this pair's items wait for its next month's statement."""

    supplier_id: str
    currency: str
    month: str
    reason: str
    blocked_at: datetime
    carried_to: str | None
    """The month of the pair's next statement, if one was issued since (it took the blocked items)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "supplier_id": self.supplier_id,
            "currency": self.currency,
            "month": self.month,
            "reason": self.reason,
            "blocked_at": self.blocked_at.astimezone(UTC).isoformat(),
            "carried_to": self.carried_to,
        }


async def list_blocked_statements(conn: asyncpg.Connection) -> list[BlockedStatement]:
    rows = await conn.fetch(
        """select b.supplier_id, b.currency, b.month, b.reason, b.blocked_at,
                  (select min(s.month) from invoicing.statements s
                    where s.supplier_id = b.supplier_id and s.currency = b.currency and s.month > b.month)
                    as carried_to
             from invoicing.statements_blocked b
            order by b.blocked_at, b.supplier_id, b.currency, b.month limit $1""",
        limits.HELD_LIST_MAX,
    )
    return [
        BlockedStatement(r["supplier_id"], r["currency"], r["month"], r["reason"], r["blocked_at"], r["carried_to"])
        for r in rows
    ]
