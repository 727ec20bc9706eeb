"""``settle.operator_actions``: who did what to which held or quarantined item, and why."""

from __future__ import annotations

import getpass
import os
from typing import Any

import asyncpg

from libs import limits
from libs.errors import OperatorRequestError


def default_actor() -> str:
    """Who is acting when ``--actor`` is not given: the login name."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise OperatorRequestError("say why (--reason TEXT): the audit keeps it")
    if len(text) > limits.MAX_TEXT_CHARS * 4:
        raise OperatorRequestError(f"the reason is {len(text)} characters; at most {limits.MAX_TEXT_CHARS * 4}")
    return text


async def record_action(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    service: str,
    kind: str,
    item_id: str,
    reason: str,
    detail: dict[str, Any],
) -> int:
    """Append one audited action (in the caller's transaction, with the action itself); returns its id."""
    action_id: int = await conn.fetchval(
        """insert into settle.operator_actions (actor, action, service, kind, item_id, reason, detail)
           values ($1, $2, $3, $4, $5, $6, $7) returning id""",
        actor[: limits.MAX_ID_CHARS],
        action,
        service,
        kind,
        item_id,
        check_reason(reason),
        detail,
    )
    return action_id


async def add_detail(conn: asyncpg.Connection, action_id: int, detail: dict[str, Any]) -> None:
    """Complete an action's detail with what doing it produced (same transaction as the insert)."""
    await conn.execute(
        "update settle.operator_actions set detail = detail || $2::jsonb where id = $1", action_id, detail
    )


async def list_actions(
    conn: asyncpg.Connection, *, item_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select id, at, actor, action, service, kind, item_id, reason, detail from settle.operator_actions
            where ($1::text is null or item_id = $1) order by id desc limit $2""",
        item_id,
        min(limit, limits.HELD_LIST_MAX),
    )
    return [dict(r) for r in rows]
