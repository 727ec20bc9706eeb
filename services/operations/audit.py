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


async def start_run(conn: asyncpg.Connection, *, operator: str, command: str, arguments: dict[str, Any]) -> int:
    """Record that a replay or rebuild starts (``settle.replay_runs``, outcome ``running``); returns its id."""
    run_id: int = await conn.fetchval(
        "insert into settle.replay_runs (operator, command, arguments) values ($1, $2, $3) returning id",
        operator[: limits.MAX_ID_CHARS],
        command,
        arguments,
    )
    return run_id


async def finish_run(conn: asyncpg.Connection, run_id: int, *, ok: bool, detail: dict[str, Any]) -> None:
    """Record how a run ended (``done`` or ``failed``) and what it did or why it stopped."""
    await conn.execute(
        """update settle.replay_runs set finished_at = now(), outcome = $2, detail = detail || $3::jsonb
            where id = $1""",
        run_id,
        "done" if ok else "failed",
        detail,
    )


async def list_runs(conn: asyncpg.Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select id, started_at, finished_at, operator, command, arguments, outcome, detail
             from settle.replay_runs order by id desc limit $1""",
        min(limit, limits.HELD_LIST_MAX),
    )
    return [dict(r) for r in rows]
