"""Held data: what metering, rating and invoicing keep aside until something else arrives, made visible and
operable (``settle held list | release | drop``, the ``settle_held_*`` gauges).

Why over 500 lines: one section per held kind (six), each with its list, release and drop and the
reason an operator reads; they share the audit and dead-letter plumbing below.

Kinds (item id ``<service>:<kind>:<key>``), why each is held, and what an operator can do:

* ``metering:lifecycle_event:<event id>`` — a window end whose start has not arrived, or a decommission
  before any provisioning (R2, domain rule E3); applies by itself when that arrives. Release: refused
  (nothing to apply). Drop: removed from the allocation's facts.
* ``metering:contract_event:<event id>`` — an amendment or termination before its contract; applied when
  ``contract.created`` arrives. Release: refused. Drop.
* ``metering:allocation:<allocation id>`` — provisioned for a contract metering does not know: its hours
  are not emitted until the contract arrives (other contracts bill on). Release and drop: refused
  (publish the contract).
* ``rating:usage:<event id>`` — usage of a contract rating does not know. It GATES the watermark of its
  ``usage.metered`` partition: nothing of that partition is invoiced while it waits. Release, drop.
* ``rating:contract_event:<event id>``, ``invoicing:contract_event:<event id>`` — as for metering.
  Release: refused. Drop.
* ``rating:topup:<event id>`` — a top-up for a contract rating does not know. Release: refused. Drop.

**drop** removes the item from the hold for good, in one transaction with the audit row
(``settle.operator_actions``). Events are dead-lettered (``settle.dead_letters`` and ``<topic>.dlq``)
with ``dropped by <actor>: <reason>``, the bytes rebuilt from what the service stored (exact for
rating's usage, which keeps the whole envelope; lifecycle and contract events keep type, time and data,
the ``source`` becomes ``/settle/operator/held``), and the consumer's inbox claim of the event is
forgotten — so ``settle dlq redrive ID`` gives it back to the service as new input (held again if
what it waits for is still missing). Dropping rating usage un-gates the partition: its watermark is
forwarded at once when nothing else gates it. A dropped top-up is ``quarantined`` in
``rating.wallet_topups`` with the reason (its payment reference is not stored, so it is not
dead-lettered; the money question is the operator's).

**release** of rating usage means "stop waiting for it": if its contract is known by now, the contract's
held usage is rated at once; otherwise the usage stays held (it is rated when the contract arrives and
lands on the contract's invoice for its period, or — if that period was invoiced meanwhile — as an
adjustment on the next one, R3) but no longer gates the watermark, which is forwarded at once.
Nothing else can be released: a held lifecycle or contract event has nothing to apply to until what
it waits for arrives — drop it if that will never happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from pydantic import BaseModel

from domain.contracts import store as contracts_store
from libs import limits
from libs.errors import OperatorRequestError
from libs.ids import derive_id
from libs.messaging.consume import Tx
from libs.messaging.deadletters import DeadLetter, record_dead_letters
from libs.messaging.partitioner import partition_for
from libs.times import format_utc
from schemas import topics
from schemas.envelope import Envelope, encode
from services.held_gauges import KINDS, UNKNOWN_CONTRACT
from services.metering import store as metering_store
from services.metering.domain import EVENT_KINDS, evaluate_allocation
from services.operations.audit import add_detail, check_reason, record_action
from services.rating import handlers as rating_handlers
from services.rating import store as rating_store

log = structlog.get_logger("settle.held")

SERVICES = ("metering", "rating", "invoicing")
SOURCE = "/settle/operator/held"
_FACT_TYPES = {kind: event_type for event_type, kind in EVENT_KINDS.items()}


@dataclass(frozen=True)
class HeldItem:
    """One held item as an operator sees it."""

    id: str
    service: str
    kind: str
    reason: str
    event_time: datetime | None
    received_at: datetime
    status: str = "held"
    """``held``, or ``released`` (rating usage no longer gating its partition)."""
    keys: dict[str, Any] = field(default_factory=dict)
    """Ids that say what it is about: event, allocation, contract, partition ..."""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "event_time": None if self.event_time is None else format_utc(self.event_time),
            "received_at": self.received_at.astimezone(UTC).isoformat(),
            **self.keys,
        }


def item_id(service: str, kind: str, key: str) -> str:
    return f"{service}:{kind}:{key}"


def parse_item_id(text: str) -> tuple[str, str, str]:
    parts = text.split(":", 2)
    if len(parts) != 3 or parts[0] not in KINDS or parts[1] not in KINDS[parts[0]] or not parts[2]:
        raise OperatorRequestError(
            f"{text!r} is not a held item id (<service>:<kind>:<key>, as `settle held list` prints it)"
        )
    return parts[0], parts[1], parts[2]


# ====================================================================================================
# Listing and counting
# ====================================================================================================


async def list_held(conn: asyncpg.Connection, service: str | None = None) -> list[HeldItem]:
    """Every held item (at most :data:`libs.limits.HELD_LIST_MAX` per kind), oldest received first."""
    items: list[HeldItem] = []
    limit = limits.HELD_LIST_MAX
    if service in (None, "metering"):
        for r in await conn.fetch(
            """select h.event_id, h.allocation_id, h.kind, h.at, h.received_at, h.reason, a.contract_id
                 from metering.held_events h left join metering.allocations a using (allocation_id)
                order by h.received_at, h.event_id limit $1""",
            limit,
        ):
            items.append(
                HeldItem(
                    item_id("metering", "lifecycle_event", r["event_id"]),
                    "metering",
                    "lifecycle_event",
                    r["reason"],
                    r["at"],
                    r["received_at"],
                    keys={
                        "event_id": r["event_id"],
                        "event_type": _FACT_TYPES.get(r["kind"], r["kind"]),
                        "allocation_id": r["allocation_id"],
                        "contract_id": r["contract_id"],
                    },
                )
            )
        items += await _contract_events(conn, "metering", limit)
        for r in await conn.fetch(
            f"""select a.allocation_id, a.contract_id, a.first_seen_at,
                       (select min((f->>'at')::timestamptz) from jsonb_array_elements(a.facts) f
                         where f->>'kind' = 'provisioned') as provisioned_at
                  {UNKNOWN_CONTRACT}
                 order by a.first_seen_at, a.allocation_id limit $1""",
            limit,
        ):
            items.append(
                HeldItem(
                    item_id("metering", "allocation", r["allocation_id"]),
                    "metering",
                    "allocation",
                    f"provisioned for contract {r['contract_id']}, which metering does not know: its hours are "
                    "not emitted until contract.created arrives (other contracts bill on)",
                    r["provisioned_at"],
                    r["first_seen_at"],
                    keys={"allocation_id": r["allocation_id"], "contract_id": r["contract_id"]},
                )
            )
    if service in (None, "rating"):
        for r in await conn.fetch(
            """select event_id, contract_id, partition, envelope, held_at, released_at
                 from rating.usage_held order by seq limit $1""",
            limit,
        ):
            data = r["envelope"]["data"]
            released = r["released_at"] is not None
            reason = f"usage of contract {r['contract_id']}, which rating does not know; " + (
                f"released by an operator at {format_utc(r['released_at'].replace(microsecond=0))}: "
                "rated when the contract arrives, no longer gating"
                if released
                else f"gates the watermark of {topics.USAGE_METERED.name} partition {r['partition']} "
                "(nothing of that partition is invoiced while it waits)"
            )
            items.append(
                HeldItem(
                    item_id("rating", "usage", r["event_id"]),
                    "rating",
                    "usage",
                    reason,
                    datetime.fromisoformat(r["envelope"]["time"].replace("Z", "+00:00")),
                    r["held_at"],
                    status="released" if released else "held",
                    keys={
                        "event_id": r["event_id"],
                        "contract_id": r["contract_id"],
                        "partition": r["partition"],
                        "allocation_id": data.get("allocation_id"),
                        "meter": data.get("meter"),
                        "hour_start": data.get("hour_start"),
                        "revision": data.get("revision"),
                    },
                )
            )
        items += await _contract_events(conn, "rating", limit)
        for r in await conn.fetch(
            """select event_id, contract_id, amount, currency, at, received_at from rating.wallet_topups
                where status = 'held' order by seq limit $1""",
            limit,
        ):
            items.append(
                HeldItem(
                    item_id("rating", "topup", r["event_id"]),
                    "rating",
                    "topup",
                    f"top-up of {r['amount']} {r['currency']} for contract {r['contract_id']}, which rating does not "
                    "know: received into the wallet when the contract arrives",
                    r["at"],
                    r["received_at"],
                    keys={
                        "event_id": r["event_id"],
                        "contract_id": r["contract_id"],
                        "amount": str(r["amount"]),
                        "currency": r["currency"],
                    },
                )
            )
    if service in (None, "invoicing"):
        items += await _contract_events(conn, "invoicing", limit)
    return items


async def _contract_events(conn: asyncpg.Connection, schema: str, limit: int) -> list[HeldItem]:
    rows = await conn.fetch(
        f"""select event_id, contract_id, type, time, held_at from {schema}.contract_events_held
             order by held_at, event_id limit $1""",
        limit,
    )
    return [
        HeldItem(
            item_id(schema, "contract_event", r["event_id"]),
            schema,
            "contract_event",
            f"{r['type']} before its contract {r['contract_id']}: applied when contract.created arrives",
            r["time"],
            r["held_at"],
            keys={"event_id": r["event_id"], "event_type": r["type"], "contract_id": r["contract_id"]},
        )
        for r in rows
    ]


class OperatorAction(BaseModel):
    """The cause of what an operator's action emits (a forwarded watermark, a wallet run)."""

    action_id: int
    action: str
    item_id: str
    actor: str


@dataclass(frozen=True)
class ActionResult:
    action_id: int
    item_id: str
    action: str
    outcome: str
    """What happened, in a sentence."""
    dead_letter_id: int | None = None


async def drop(conn: asyncpg.Connection, held_id: str, *, reason: str, actor: str) -> ActionResult:
    """Drop a held item (module docstring). Run it in a transaction: all of it happens or nothing."""
    service, kind, key = parse_item_id(held_id)
    check_reason(reason)
    if (service, kind) == ("metering", "lifecycle_event"):
        return await _drop_lifecycle_event(conn, key, reason, actor)
    if kind == "contract_event":
        return await _drop_contract_event(conn, service, key, reason, actor)
    if (service, kind) == ("rating", "usage"):
        return await _drop_usage(conn, key, reason, actor)
    if (service, kind) == ("rating", "topup"):
        return await _drop_topup(conn, key, reason, actor)
    raise OperatorRequestError(
        f"{held_id} cannot be dropped: an allocation waiting for its contract is not blocking anyone; "
        "publish the contract (contract.created) and metering emits its hours"
    )


async def release(conn: asyncpg.Connection, held_id: str, *, reason: str, actor: str) -> ActionResult:
    """Release a held item (module docstring): only rating usage can be released."""
    service, kind, key = parse_item_id(held_id)
    check_reason(reason)
    if (service, kind) == ("rating", "usage"):
        return await _release_usage(conn, key, reason, actor)
    what = {
        "lifecycle_event": "its start (or provisioning) has not arrived, there is nothing to apply it to",
        "contract_event": "its contract has not arrived, there is nothing to apply it to",
        "allocation": "its contract has not arrived; publish contract.created and its hours are emitted",
        "topup": "its contract has not arrived, there is no wallet to put it in",
    }[kind]
    raise OperatorRequestError(
        f"{held_id} cannot be released: {what}. It applies by itself when that arrives; "
        "`settle held drop` it if that will never happen"
    )


# --- metering ---------------------------------------------------------------------------------------
async def _drop_lifecycle_event(conn: asyncpg.Connection, event_id: str, reason: str, actor: str) -> ActionResult:
    held_id = item_id("metering", "lifecycle_event", event_id)
    allocation_id = await conn.fetchval("select allocation_id from metering.held_events where event_id = $1", event_id)
    if allocation_id is None:
        raise OperatorRequestError(f"{held_id} is not held (see `settle held list`)")
    rows = await metering_store.lock_allocations(conn, [allocation_id], create=False)
    row = rows.get(allocation_id)
    state = evaluate_allocation(row.facts if row is not None else [])
    if row is None or event_id not in state.held:
        # What it waited for arrived meanwhile (or the row was backfilled wrongly): nothing to drop or
        # dead-letter; the listing is corrected and the request audited as such.
        await conn.execute("delete from metering.held_events where event_id = $1", event_id)
        if row is not None:
            row.held = state.held
            await metering_store.save_held(conn, [row])
        action_id = await record_action(
            conn,
            actor=actor,
            action="drop",
            service="metering",
            kind="lifecycle_event",
            item_id=held_id,
            reason=reason,
            detail={"event_id": event_id, "allocation_id": allocation_id, "stale": True},
        )
        return ActionResult(
            action_id,
            held_id,
            "drop",
            "it was not held any more (what it waited for arrived): only the listing changed",
        )
    dropped = [f for f in row.facts if f.event_id == event_id]
    row.facts = [f for f in row.facts if f.event_id != event_id]
    after = evaluate_allocation(row.facts)
    row.held = after.held
    row.provision = after.provision
    await metering_store.save_allocation(conn, row)
    await metering_store.save_held(conn, [row])
    fact = dropped[0]
    event_type = _FACT_TYPES[fact.kind]
    data: dict[str, Any] = {"allocation_id": allocation_id}
    if fact.window_id is not None:
        data["incident_id" if fact.kind.startswith("outage") else "window_id"] = fact.window_id
    action_id = await record_action(
        conn,
        actor=actor,
        action="drop",
        service="metering",
        kind="lifecycle_event",
        item_id=held_id,
        reason=reason,
        detail={"event_id": event_id, "event_type": event_type, "at": format_utc(fact.at), "data": data},
    )
    value = encode(event_id=event_id, source=SOURCE, type=event_type, time=fact.at, data=data, subject=allocation_id)
    letter_id = await _dead_letter(
        conn, "metering", topics.INFRA_LIFECYCLE, allocation_id, value, event_id, event_type, action_id, actor, reason
    )
    return ActionResult(action_id, held_id, "drop", f"removed from allocation {allocation_id}", letter_id)


async def _drop_contract_event(
    conn: asyncpg.Connection, schema: str, event_id: str, reason: str, actor: str
) -> ActionResult:
    held_id = item_id(schema, "contract_event", event_id)
    contract_id = await conn.fetchval(
        f"select contract_id from {schema}.contract_events_held where event_id = $1", event_id
    )
    if contract_id is None:
        raise OperatorRequestError(f"{held_id} is not held (see `settle held list`)")
    if schema == "rating":
        await rating_store.lock_batch(conn, [], [contract_id])
    row = await conn.fetchrow(
        f"""delete from {schema}.contract_events_held where event_id = $1
            returning event_id, contract_id, type, time, data, held_at""",
        event_id,
    )
    if row is None:
        raise OperatorRequestError(f"{held_id} is no longer held (its contract arrived)")
    action_id = await record_action(
        conn,
        actor=actor,
        action="drop",
        service=schema,
        kind="contract_event",
        item_id=held_id,
        reason=reason,
        detail={"event_id": event_id, "event_type": row["type"], "at": format_utc(row["time"]), "data": row["data"]},
    )
    value = encode(
        event_id=event_id, source=SOURCE, type=row["type"], time=row["time"], data=row["data"], subject=contract_id
    )
    letter_id = await _dead_letter(
        conn, schema, topics.CONTRACTS, contract_id, value, event_id, row["type"], action_id, actor, reason
    )
    return ActionResult(action_id, held_id, "drop", f"{row['type']} of {contract_id} dropped", letter_id)


# --- rating -----------------------------------------------------------------------------------------
async def _lock_usage(conn: asyncpg.Connection, event_id: str, held_id: str) -> asyncpg.Record:
    """Lock like a rating batch that forwards the partition's watermark, then read the held row."""
    first = await conn.fetchrow("select contract_id, partition from rating.usage_held where event_id = $1", event_id)
    if first is None:
        raise OperatorRequestError(f"{held_id} is not held (see `settle held list`)")
    await rating_store.lock_batch(conn, [first["partition"]], [])
    prepaid = await rating_store.prepaid_contracts(conn, [first["partition"]])
    await rating_store.lock_batch(conn, [], sorted({first["contract_id"], *prepaid}))
    row = await conn.fetchrow(
        """select seq, event_id, contract_id, partition, envelope, held_at, released_at
             from rating.usage_held where event_id = $1""",
        event_id,
    )
    if row is None:
        raise OperatorRequestError(f"{held_id} is no longer held (its contract arrived)")
    return row


def _cause(action_id: int, action: str, held_id: str, actor: str) -> Envelope[Any]:
    return Envelope[Any](
        id=derive_id("operator.action", action_id),
        source=SOURCE,
        type=f"settle.operator.{action}",
        time=datetime.now(UTC).replace(microsecond=0),
        data=OperatorAction(action_id=action_id, action=action, item_id=held_id, actor=actor),
    )


async def _drop_usage(conn: asyncpg.Connection, event_id: str, reason: str, actor: str) -> ActionResult:
    held_id = item_id("rating", "usage", event_id)
    row = await _lock_usage(conn, event_id, held_id)
    await conn.execute("delete from rating.usage_held where event_id = $1", event_id)
    doc = row["envelope"]
    action_id = await record_action(
        conn,
        actor=actor,
        action="drop",
        service="rating",
        kind="usage",
        item_id=held_id,
        reason=reason,
        detail={
            "event_id": event_id,
            "contract_id": row["contract_id"],
            "partition": row["partition"],
            "envelope": doc,
        },
    )
    value = encode(
        event_id=doc["id"],
        source=doc["source"],
        type=doc["type"],
        time=datetime.fromisoformat(doc["time"].replace("Z", "+00:00")),
        data=doc["data"],
        subject=doc["subject"],
        correlationid=doc["correlationid"],
        causationid=doc["causationid"],
        schemaversion=doc["schemaversion"],
    )
    letter_id = await _dead_letter(
        conn, "rating", topics.USAGE_METERED, row["contract_id"], value, event_id, doc["type"], action_id, actor, reason
    )
    forwarded = await _ungate(conn, row["partition"], _cause(action_id, "drop", held_id, actor))
    outcome = f"usage of {row['contract_id']} dropped" + (
        f"; watermark of partition {row['partition']} forwarded through {forwarded}" if forwarded else ""
    )
    await add_detail(conn, action_id, {"forwarded_through": forwarded})
    return ActionResult(action_id, held_id, "drop", outcome, letter_id)


async def _release_usage(conn: asyncpg.Connection, event_id: str, reason: str, actor: str) -> ActionResult:
    held_id = item_id("rating", "usage", event_id)
    row = await _lock_usage(conn, event_id, held_id)
    contract_id, partition = row["contract_id"], row["partition"]
    known = await contracts_store.load_terms(conn, rating_store.SCHEMA, contract_id) is not None
    if not known and row["released_at"] is not None:
        raise OperatorRequestError(f"{held_id} was released already; it is rated when {contract_id} arrives")
    action_id = await record_action(
        conn,
        actor=actor,
        action="release",
        service="rating",
        kind="usage",
        item_id=held_id,
        reason=reason,
        detail={"event_id": event_id, "contract_id": contract_id, "partition": partition},
    )
    cause = _cause(action_id, "release", held_id, actor)
    if known:
        tx = Tx(conn, rating_handlers.CONSUMER)
        rated = await rating_handlers.rate_held_now(tx, contract_id, cause)
        await tx.flush()
        outcome = f"contract {contract_id} is known: its {rated} held usage record(s) rated now"
    else:
        await conn.execute("update rating.usage_held set released_at = now() where event_id = $1", event_id)
        forwarded = await _ungate(conn, partition, cause)
        outcome = f"no longer gates partition {partition}; rated when contract {contract_id} arrives" + (
            f"; watermark forwarded through {forwarded}" if forwarded else ""
        )
    await add_detail(conn, action_id, {"outcome": outcome})
    return ActionResult(action_id, held_id, "release", outcome)


async def _ungate(conn: asyncpg.Connection, partition: int, cause: Envelope[Any]) -> str | None:
    """Forward the partition's watermark if nothing gates it now; returns the time forwarded to."""
    before = await rating_store.load_watermark(conn, partition)
    tx = Tx(conn, rating_handlers.CONSUMER)
    await rating_handlers.forward_ungated(tx, partition, cause)
    await tx.flush()
    after = await rating_store.load_watermark(conn, partition)
    if after is None or after.forwarded_through is None:
        return None
    if before is not None and before.forwarded_through == after.forwarded_through:
        return None
    return format_utc(after.forwarded_through)


async def _drop_topup(conn: asyncpg.Connection, event_id: str, reason: str, actor: str) -> ActionResult:
    held_id = item_id("rating", "topup", event_id)
    contract_id = await conn.fetchval(
        "select contract_id from rating.wallet_topups where event_id = $1 and status = 'held'", event_id
    )
    if contract_id is None:
        raise OperatorRequestError(f"{held_id} is not held (see `settle held list`)")
    await rating_store.lock_batch(conn, [], [contract_id])
    row = await conn.fetchrow(
        """update rating.wallet_topups set status = 'quarantined', reason = $2
            where event_id = $1 and status = 'held' returning amount, currency, at""",
        event_id,
        f"dropped by {actor}: {reason}"[:2000],
    )
    if row is None:
        raise OperatorRequestError(f"{held_id} is no longer held (its contract arrived)")
    action_id = await record_action(
        conn,
        actor=actor,
        action="drop",
        service="rating",
        kind="topup",
        item_id=held_id,
        reason=reason,
        detail={
            "event_id": event_id,
            "contract_id": contract_id,
            "amount": str(row["amount"]),
            "currency": row["currency"],
            "at": format_utc(row["at"]),
        },
    )
    return ActionResult(action_id, held_id, "drop", "quarantined in rating.wallet_topups (no money moved)")


# --- dead letters -----------------------------------------------------------------------------------
async def _dead_letter(
    conn: asyncpg.Connection,
    consumer: str,
    topic: topics.Topic,
    key: str,
    value: bytes,
    event_id: str,
    event_type: str,
    action_id: int,
    actor: str,
    reason: str,
) -> int:
    """Dead-letter a dropped event where the consumer first read it (its inbox claim says where; a
    claim already pruned: offset ``-action id``), then forget the claim so a redrive is new input."""
    claim = await conn.fetchrow(
        """delete from settle.inbox where consumer = $1 and event_id = $2 returning partition, "offset" """,
        consumer,
        event_id,
    )
    key_bytes = key.encode()
    partition = claim["partition"] if claim else partition_for(key_bytes, topic.partitions)
    offset = claim["offset"] if claim else -action_id
    letter = DeadLetter(
        consumer=consumer,
        topic=topic.name,
        partition=partition,
        offset=offset,
        key=key_bytes,
        value=value,
        headers=(("settle-operator-action", str(action_id)),),
        event_id=event_id,
        event_type=event_type,
        error_class="HeldDropped",
        reason=f"dropped from {consumer}'s hold by {actor} (operator action {action_id}): {reason}",
    )
    if await record_dead_letters(conn, [letter]) != 1:
        # The consumer dead-lettered something else at that very offset: keep both, apart.
        letter = DeadLetter(**{**letter.__dict__, "offset": -action_id})
        if await record_dead_letters(conn, [letter]) != 1:
            raise OperatorRequestError(f"could not dead-letter {event_id}: a dead letter is in the way")
    letter_id: int = await conn.fetchval(
        """select id from settle.dead_letters where consumer = $1 and topic = $2 and partition = $3
              and "offset" = $4""",
        letter.consumer,
        letter.topic,
        letter.partition,
        letter.offset,
    )
    where = None if claim is None else {"partition": claim["partition"], "offset": claim["offset"]}
    await add_detail(conn, action_id, {"dead_letter_id": letter_id, "inbox_claim": where})
    return letter_id
