"""What an operator sees of payouts and does to them (``settle payouts …``).

* :func:`payout_json` — one payout or waiting plan as the JSON object ``list --json`` prints;
* :func:`dry_run` — what planning would decide at an instant, read-only (nothing written);
* :func:`hold` / :func:`release` — an operator's hold or release of a payout, in ONE transaction
  with its audit row (``payouts.operator_actions``), the ledger move between in transit and on hold, and
  the ``payout.held`` / ``payout.released`` event in the outbox (the relay publishes it);
* :func:`retry` — one more attempt of a returned or rejected payout that R16 would not send again
  (audited; the file round sends it, ledgered as any retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs import limits
from libs.errors import OperatorRequestError
from libs.ids import derive_id
from libs.ledger import ensure_accounts, post
from libs.messaging.outbox import Emitter, write_outbox
from libs.money import format_minor
from schemas import topics
from services.payouts import entries, planner, store
from services.payouts.domain.planning import plan_payouts


def _get(row: dict[str, Any] | asyncpg.Record, name: str) -> Any:
    """A column added by migration 0071 (``planner.row_of`` dicts of a dry run do not carry it)."""
    return row.get(name)


def payout_json(row: dict[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """``amount`` is in the statement ``currency``; ``payout_amount`` in ``payout_currency`` (what the
    rail sends); ``rate_id``/``rate`` only when converted; ``reason`` only when not payable (or on hold).
    R16: ``rail`` is the rail it went by once in a file (else the payee's), ``file_id`` the file of its latest
    attempt, ``attempt`` (from 1) once cut, ``rail_reason`` why it waits for an operator."""
    payout_currency = row["payout_currency"]
    payout_minor = row["payout_amount_minor"]
    doc: dict[str, Any] = {
        "payout_id": row["payout_id"],
        "supplier_id": row["supplier_id"],
        "months": list(row["months"]),
        "currency": row["currency"],
        "payout_currency": payout_currency,
        "amount": format_minor(row["amount_minor"], row["currency"]),
        "payout_amount": None
        if payout_minor is None or payout_currency is None
        else format_minor(payout_minor, payout_currency),
        "held": format_minor(row["held_minor"], row["currency"]),
        "rail": _get(row, "sent_rail") or row["rail"],
        "state": row["state"],
        "planned_at": row["planned_at"].isoformat().replace("+00:00", "Z"),
        "file_id": _get(row, "file_id"),
    }
    if _get(row, "attempt"):
        doc["attempt"] = row["attempt"]
    if _get(row, "rail_reason") is not None:
        doc["rail_reason"] = row["rail_reason"]
    if row["rate_id"] is not None:
        doc["rate_id"] = row["rate_id"]
        doc["rate"] = format(row["rate"], "f")
    if row["reason"] is not None:
        doc["reason"] = row["reason"]
    return doc


async def list_payouts(
    conn: asyncpg.Connection, *, supplier: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    return [payout_json(r) for r in await store.list_payouts(conn, supplier=supplier, state=state)]


async def show_payout(conn: asyncpg.Connection, payout_id: str) -> dict[str, Any]:
    row = await store.payout(conn, payout_id)
    if row is None:
        raise OperatorRequestError(f"no payout {payout_id!r} (settle payouts list shows them)")
    doc = payout_json(row)
    doc["account"] = await store.payee_masked(conn, row["payee_event_id"])
    doc["holdings"] = [
        {
            "contract_id": h["contract_id"],
            "period_start": h["period_start"].isoformat().replace("+00:00", "Z"),
            "earnings": format_minor(h["earnings_minor"], row["currency"]),
            "released": format_minor(h["released_minor"], row["currency"]),
        }
        for h in await store.holdings(conn, payout_id)
    ]
    doc["actions"] = [
        {
            "at": a["at"].isoformat(),
            "actor": a["actor"],
            "action": a["action"],
            "from": a["from_state"],
            "to": a["to_state"],
            "reason": a["reason"],
        }
        for a in await store.actions(conn, payout_id)
    ]
    doc["attempts"] = [  # R16: each time it went out, and what the bank said
        {
            "attempt": i["attempt"],
            "file_id": i["file_id"],
            "ref": i["ref"],
            "outcome": i["outcome"],
            "code": i["code"],
            "payee_event_id": i["payee_event_id"],
        }
        for i in await conn.fetch(
            "select * from payouts.payout_file_items where payout_id = $1 order by attempt", payout_id
        )
    ]
    doc["notices"] = [
        # a NOC's corrected data may be an account number: shown masked, like the payee's account
        {"attempt": n["attempt"], "code": n["code"], "corrected": "…" + (n["corrected_data"] or "")[-4:]}
        for n in await conn.fetch("select * from payouts.payee_notices where payout_id = $1 order by 1, 2", payout_id)
    ]
    return doc


async def dry_run(conn: asyncpg.Connection, at: datetime | None) -> tuple[datetime | None, list[dict[str, Any]]]:
    """What planning would decide at ``at`` (default: the last tick), without writing anything."""
    when = at or await store.clock_now(conn)
    if when is None:
        return None, []
    pairs = await store.pairs_to_plan(conn, when)
    if not pairs:
        return when, []
    plans = plan_payouts(await planner.load_inputs(conn, when, pairs))
    return when, [payout_json(planner.row_of(plan, when)) for plan in plans]


@dataclass(frozen=True)
class ActionResult:
    payout_id: str
    action_id: int
    from_state: str
    to_state: str


async def _request(conn: asyncpg.Connection, payout_id: str, reason: str) -> tuple[str, asyncpg.Record]:
    """An operator's request on a payout: its reason checked (the audit keeps it), the payout locked."""
    text = reason.strip()
    if not text:
        raise OperatorRequestError("say why (--reason TEXT): the audit keeps it")
    if len(text) > limits.MAX_TEXT_CHARS * 4:
        raise OperatorRequestError(f"the reason is {len(text)} characters; at most {limits.MAX_TEXT_CHARS * 4}")
    row = await store.payout(conn, payout_id, lock=True)
    if row is None:
        raise OperatorRequestError(f"no payout {payout_id!r} (settle payouts list shows them)")
    return text, row


async def _act(conn: asyncpg.Connection, payout_id: str, *, hold: bool, reason: str, actor: str) -> ActionResult:
    text, row = await _request(conn, payout_id, reason)
    want_from, to_state = ("planned", "on_hold") if hold else ("on_hold", "planned")
    if row["state"] != want_from:
        verb = "hold" if hold else "release"
        raise OperatorRequestError(f"payout {payout_id} is {row['state']}: {verb} applies to {want_from} payouts only")
    if hold and row["file_id"] is not None:  # R16: cut into a file (committed before it leaves): it goes
        raise OperatorRequestError(f"payout {payout_id} is in payout file {row['file_id']}: too late to hold it")
    at = await store.clock_now(conn)
    assert at is not None, "a payout exists, so a tick planned it"
    action_id: int = await conn.fetchval(
        """insert into payouts.operator_actions (actor, action, payout_id, reason, from_state, to_state)
           values ($1, $2, $3, $4, $5, $6) returning id""",
        actor[: limits.MAX_ID_CHARS],
        "hold" if hold else "release",
        payout_id,
        text,
        want_from,
        to_state,
    )
    await conn.execute(
        "update payouts.payouts set state = $2, updated_at = now() where payout_id = $1", payout_id, to_state
    )
    entry, specs = entries.hold_entry(
        payout_id=payout_id,
        action_id=action_id,
        hold=hold,
        payout_currency=row["payout_currency"],
        payout_amount_minor=row["payout_amount_minor"],
        at=at,
    )
    emitter = Emitter("payouts")
    updated = dict(row) | {"state": to_state}
    kind = "payout.held" if hold else "payout.released"
    emitter.emit(
        topics.PAYOUTS,
        key=row["supplier_id"],
        type=kind,
        time=at,
        cause=None,
        event_id=derive_id("event", kind, payout_id, action_id),
        data=planner.event_of(updated),
        correlation_id=payout_id,
    )
    await ensure_accounts(conn, specs)
    await write_outbox(conn, emitter.drain())
    await post(conn, [entry])  # last: it holds the ledger's chain heads until commit
    return ActionResult(payout_id, action_id, want_from, to_state)


async def hold(conn: asyncpg.Connection, payout_id: str, *, reason: str, actor: str) -> ActionResult:
    """A planned payout is put on hold (never sent until released). The caller owns the transaction."""
    return await _act(conn, payout_id, hold=True, reason=reason, actor=actor)


async def release(conn: asyncpg.Connection, payout_id: str, *, reason: str, actor: str) -> ActionResult:
    """An on-hold payout becomes planned again (the rails may send it). The caller owns the transaction."""
    return await _act(conn, payout_id, hold=False, reason=reason, actor=actor)


async def retry(conn: asyncpg.Connection, payout_id: str, *, reason: str, actor: str) -> ActionResult:
    """An operator's retry of a returned or rejected payout R16 would not send again (its details did not
    change; e.g. the supplier confirmed them, or the reject was the bank's outage): the next file round
    sends one more attempt with the supplier's latest payee details (``Dr payable / Cr in transit`` then,
    as for any retry). Once per failed attempt. The caller owns the transaction."""
    text, row = await _request(conn, payout_id, reason)
    state = row["state"]
    if state not in ("returned", "rejected"):
        raise OperatorRequestError(f"payout {payout_id} is {state}: retry applies to returned or rejected payouts")
    attempt = int(_get(row, "attempt") or 0)
    if await conn.fetchval(
        "select 1 from payouts.retry_overrides where payout_id = $1 and after_attempt = $2", payout_id, attempt
    ):
        raise OperatorRequestError(f"payout {payout_id}: attempt {attempt} was already retried by an operator")
    action_id: int = await conn.fetchval(
        """insert into payouts.operator_actions (actor, action, payout_id, reason, from_state, to_state)
           values ($1, 'retry', $2, $3, $4, $4) returning id""",
        actor[: limits.MAX_ID_CHARS],
        payout_id,
        text,
        state,
    )
    await conn.execute(
        "insert into payouts.retry_overrides (payout_id, after_attempt, action_id) values ($1, $2, $3)",
        payout_id,
        attempt,
        action_id,
    )
    return ActionResult(payout_id, action_id, state, state)


# --- payout files (R16) -----------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def file_json(row: asyncpg.Record) -> dict[str, Any]:
    currency = row["currency"]
    return {
        "file_id": row["file_id"],
        "rail": row["rail"],
        "state": row["state"],
        "count": row["entry_count"],
        "currency": currency,
        "total": format_minor(row["total_minor"], currency),
        "effective_date": row["effective_date"].isoformat(),
        "created": _iso(row["tick"]),
        "sha256": row["sha256"],
        "name": row["name"],
    }


async def list_files(conn: asyncpg.Connection, *, state: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """select file_id, rail, state, entry_count, currency, total_minor, effective_date, tick, sha256, name
             from payouts.payout_files where ($1::text is null or state = $1) order by tick, rail, sequence""",
        state,
    )
    return [file_json(r) for r in rows]


async def show_file(conn: asyncpg.Connection, file_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("select * from payouts.payout_files where file_id = $1", file_id)
    if row is None:
        raise OperatorRequestError(f"no payout file {file_id!r} (settle payouts files list shows them)")
    doc = file_json(row)
    doc["path"] = row["path"]
    doc["batch_id"] = row["batch_id"]
    doc["payouts"] = [
        {
            "payout_id": i["payout_id"],
            "attempt": i["attempt"],
            "ref": i["ref"],
            "rail_reference": i["rail_reference"],
            "amount": format_minor(i["amount_minor"], i["currency"]),
            "currency": i["currency"],
            "outcome": i["outcome"],
            "code": i["code"],
        }
        for i in await conn.fetch(
            "select * from payouts.payout_file_items where file_id = $1 order by payout_id", file_id
        )
    ]
    doc["history"] = [
        {"state": h["state"], "at": _iso(h["at"]), "detail": h["detail"]}
        for h in await conn.fetch("select * from payouts.payout_file_states where file_id = $1 order by id", file_id)
    ]
    return doc
