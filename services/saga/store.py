"""Persistence of sagas: one row per saga (its facts and derived state), every transition with the event
that caused it, compensations with their attempts. :func:`advance` is the one place a saga moves: the
worker calls it for each event, ``settle sagas retry`` for an operator's retry, both inside their
transaction with the outbox rows it emits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.messaging.consume import Tx
from libs.money import format_minor
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import SagaEvent
from services.saga import domain
from services.saga import metrics as saga_metrics


@dataclass(frozen=True)
class Cause:
    """The event behind a transition: an envelope from the log, or an operator's command."""

    event_id: str
    type: str
    time: datetime
    envelope: Envelope[Any] | None = None


def saga_id_of(invoice_number: str) -> str:
    return derive_id("saga", invoice_number)


def _status_key(s: domain.Status) -> tuple[object, ...]:
    return (s.state, s.reason, s.waits_for, s.deadline, s.inquiry)


async def advance(
    tx: Tx, invoice_number: str, inputs: list[tuple[Cause, domain.Input]], policy: domain.Policy
) -> domain.Status:
    """Apply inputs to the saga of ``invoice_number`` (created on first sight) under a row lock; persist each
    change of state with its cause, publish it on ``sagas.v1``, request due compensations (once per key
    and attempt)."""
    conn = tx.conn
    saga_id = saga_id_of(invoice_number)
    await conn.execute(
        """insert into saga.sagas (saga_id, invoice_number, state, facts) values ($1, $2, 'pending', '{}'::jsonb)
           on conflict do nothing""",
        saga_id,
        invoice_number,
    )
    row = await conn.fetchrow("select * from saga.sagas where saga_id = $1 for update", saga_id)
    assert row is not None
    facts = domain.Facts.model_validate(row["facts"])
    status = domain.evaluate(facts, policy)
    seq = await conn.fetchval("select coalesce(max(seq), 0) from saga.transitions where saga_id = $1", saga_id)
    requested = {
        f"{r['kind']}:{r['ref']}": r["attempts"]
        for r in await conn.fetch("select kind, ref, attempts from saga.compensations where saga_id = $1", saga_id)
    }
    latest = status  # the evaluation of the facts as they stand (its steps are stored; ``status`` moves on a change)
    for cause, event in inputs:
        facts = domain.apply(facts, event)
        new = latest = domain.evaluate(facts, policy)
        if _status_key(new) != _status_key(status):
            seq += 1
            await _transition(tx, saga_id, invoice_number, facts, status, new, cause, seq)
            status = new
        for req in domain.requests(facts, status, requested, policy):
            comp = req.compensation
            requested[comp.key] = req.attempt
            await _request(tx, saga_id, invoice_number, facts, status, req, cause)
            if not policy.await_acknowledgement:
                # the request is the act (in the outbox, delivered at least once; the consumer acts once per
                # id): recorded done in the same transaction
                facts = domain.apply(
                    facts,
                    domain.CompensationResult(
                        compensation=comp.kind,
                        ref=comp.ref,
                        attempt=req.attempt,
                        ok=True,
                        at=cause.time,
                        acknowledged=False,
                    ),
                )
                await conn.execute(
                    "update saga.compensations set state = 'done', updated_at = now() where saga_id = $1 "
                    "and kind = $2 and ref = $3",
                    saga_id,
                    comp.kind,
                    comp.ref,
                )
            new = latest = domain.evaluate(facts, policy)
            if _status_key(new) != _status_key(status):
                seq += 1
                await _transition(tx, saga_id, invoice_number, facts, status, new, cause, seq)
                status = new
        if isinstance(event, domain.CompensationResult) and event.ok:
            # the acting side's answer (payouts): recorded with what it did, in both acknowledgement modes;
            # the first answer stays (a retried attempt's answer is the duplicate of it)
            await conn.execute(
                "update saga.compensations set state = 'done', last_reason = $4, updated_at = now() "
                "where saga_id = $1 and kind = $2 and ref = $3 and last_reason not like 'acknowledged%'",
                saga_id,
                event.compensation,
                event.ref,
                f"acknowledged (attempt {event.attempt}): {event.reason}"[:2000],
            )
        if isinstance(event, domain.CompensationResult) and not event.ok:
            await conn.execute(
                "update saga.compensations set state = 'failed', last_reason = $4, updated_at = now() "
                "where saga_id = $1 and kind = $2 and ref = $3",
                saga_id,
                event.compensation,
                event.ref,
                event.reason,
            )
            saga_metrics.COMPENSATION_FAILURES.labels(event.compensation).inc()
    inv = facts.invoice
    # the story as the facts now tell it: a fact that changes no state (payments' answer to an inquiry, a
    # second payment) still adds its step
    steps = latest.steps
    await conn.execute(
        """update saga.sagas set invoice_id = $2, contract_id = $3, renter_id = $4, currency = $5,
               period_start = $6, period_end = $7, state = $8, reason = $9, waits_for = $10, deadline = $11,
               inquiry = $12, facts = $13, version = version + 1, started_at = $14, steps = $15,
               state_since = case when state is distinct from $8 then now() else state_since end,
               updated_at = now()
           where saga_id = $1""",
        saga_id,
        inv.invoice_id if inv else None,
        inv.contract_id if inv else None,
        inv.renter_id if inv else None,
        inv.currency if inv else None,
        inv.period_start if inv else None,
        inv.period_end if inv else None,
        status.state,
        status.reason,
        status.waits_for,
        status.deadline,
        status.inquiry,
        facts.model_dump(mode="json"),
        inv.issued_at if inv else None,
        list(steps),
    )
    return status


def _event(
    saga_id: str,
    number: str,
    facts: domain.Facts,
    status: domain.Status,
    cause: Cause,
    **extra: Any,
) -> SagaEvent:
    inv = facts.invoice
    return SagaEvent(
        saga_id=saga_id,
        invoice_number=number,
        contract_id=inv.contract_id if inv else None,
        renter_id=inv.renter_id if inv else None,
        currency=inv.currency if inv else None,
        period_start=inv.period_start if inv else None,
        state=status.state,
        reason=status.reason[:2000],
        waits_for=status.waits_for[:500],
        deadline=status.deadline,
        inquiry=status.inquiry,
        cause_event_id=cause.event_id,
        cause_type=cause.type,
        at=cause.time,
        **extra,
    )


_TERMINAL_TYPES = {
    "completed": "saga.completed",
    "compensated": "saga.compensated",
    "needs_operator": "saga.needs_operator",
}


async def _transition(
    tx: Tx,
    saga_id: str,
    number: str,
    facts: domain.Facts,
    old: domain.Status,
    new: domain.Status,
    cause: Cause,
    seq: int,
) -> None:
    await tx.conn.execute(
        """insert into saga.transitions (saga_id, seq, from_state, to_state, reason, waits_for, deadline, event_id,
               event_type, event_time)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        saga_id,
        seq,
        old.state,
        new.state,
        new.reason,
        new.waits_for,
        new.deadline,
        cause.event_id,
        cause.type,
        cause.time,
    )
    if old.state == "pending" and new.state != "pending":
        type_ = "saga.started"
    else:
        type_ = _TERMINAL_TYPES.get(new.state, "saga.step")
    tx.emit(
        topics.SAGAS,
        key=saga_id,
        type=type_,
        time=cause.time,
        cause=cause.envelope,
        event_id=derive_id("saga.transition", saga_id, seq),
        correlation_id=saga_id,
        data=_event(saga_id, number, facts, new, cause),
    )
    if new.terminal and new.state != old.state:
        saga_metrics.ENDED.labels(new.state).inc()
    if old.terminal and not new.terminal:
        saga_metrics.REOPENED.labels(old.state).inc()


async def _request(
    tx: Tx,
    saga_id: str,
    number: str,
    facts: domain.Facts,
    status: domain.Status,
    req: domain.Request,
    cause: Cause,
) -> None:
    comp = req.compensation
    event_id = derive_id("saga.compensation_requested", saga_id, comp.kind, comp.ref, req.attempt)
    amount_minor = domain.requested_amount_minor(facts, comp)
    amount = (
        None
        if amount_minor is None or facts.invoice is None
        else Decimal(format_minor(amount_minor, facts.invoice.currency))
    )
    await tx.conn.execute(
        """insert into saga.compensations (saga_id, kind, ref, state, attempts, request_event_id, cause_event_id,
               requested_at)
           values ($1, $2, $3, 'requested', $4, $5, $6, $7)
           on conflict (saga_id, kind, ref) do update set state = 'requested', attempts = excluded.attempts,
               request_event_id = excluded.request_event_id, cause_event_id = excluded.cause_event_id,
               updated_at = now()
           where saga.compensations.attempts < excluded.attempts""",
        saga_id,
        comp.kind,
        comp.ref,
        req.attempt,
        event_id,
        cause.event_id,
        cause.time,
    )
    tx.emit(
        topics.SAGAS,
        key=saga_id,
        type="saga.compensation_requested",
        time=cause.time,
        cause=cause.envelope,
        event_id=event_id,
        correlation_id=saga_id,
        data=_event(
            saga_id,
            number,
            facts,
            status,
            cause,
            compensation=comp.kind,
            ref=comp.ref,
            attempt=req.attempt,
            amount=amount,
        ),
    )
    saga_metrics.COMPENSATIONS.labels(comp.kind).inc()


async def due_at(conn: asyncpg.Connection, at: datetime) -> list[str]:
    """Invoice numbers of open sagas whose deadline (or retry) has come by event time ``at``."""
    rows = await conn.fetch(
        """select invoice_number from saga.sagas
            where state <> all($2::text[]) and deadline is not null and deadline <= $1
            order by deadline, invoice_number""",
        at,
        sorted(domain.TERMINAL),
    )
    return [r["invoice_number"] for r in rows]
