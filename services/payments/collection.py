"""R14 collection: intents, tries and attempts, and what each gateway answer does — in a transaction.

An intent per invoice; a *try* is one scheduled collection (on the due date, then day 1, 3, 5, 7, 10
and 14 after it); a try makes one *attempt* per gateway call (a definite failure fails over to another
gateway within the same try; an unknown outcome never does). Attempts are created ``pending`` here and
sent by :mod:`services.payments.collector`, which commits ``sending`` before the call and the result
after it, so a worker killed in between leaves a ``sending`` attempt that is resolved by asking the
processor — never by calling again with a new key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.messaging.consume import Tx
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import PaymentEvent, SuspendRequested
from services.payments import books, store
from services.payments.config import PaymentsConfig
from services.payments.domain import dunning, routing
from services.payments.gateways.port import ChargeResult
from services.payments.money import shown


async def start_due(tx: Tx, config: PaymentsConfig, through: datetime, *, cause: Envelope[Any] | None) -> int:
    """Open an intent (first try on the due date) for every postpaid invoice due by ``through``, and
    start every retry that fell due. Returns the attempts created."""
    conn = tx.conn
    created = 0
    for inv in await store.due_without_intent(conn, through, 10_000):
        intent_id = derive_id("payment_intent", inv["invoice_id"])
        method = await store.default_method(conn, inv["renter_id"], inv["currency"])
        await store.insert_intent(
            conn,
            {
                "intent_id": intent_id,
                "invoice_id": inv["invoice_id"],
                "invoice_number": inv["number"],
                "contract_id": inv["contract_id"],
                "renter_id": inv["renter_id"],
                "currency": inv["currency"],
                "state": "collecting" if method else "no_method",
                "tries": 1 if method else 0,
                "first_try_at": inv["due_at"] if method else None,
                "next_try_at": None,
                "reason": "" if method else "no default payment method in this currency at the due date",
            },
        )
        if method is not None:
            created += await _attempt(tx, config, intent_id, 1, 1, inv["due_at"], inv["remaining_minor"], method)
    for intent in await store.retries_due(conn, through, 10_000):
        if intent["remaining_minor"] <= 0:
            await store.update_intent(conn, intent["intent_id"], state="settled_otherwise", reason="paid otherwise")
            continue
        method = await store.default_method(conn, intent["renter_id"], intent["currency"])
        if method is None:
            await store.update_intent(
                conn, intent["intent_id"], state="no_method", reason="the default payment method was removed"
            )
            continue
        try_no = intent["tries"] + 1
        await store.update_intent(conn, intent["intent_id"], state="collecting", tries=try_no)
        created += await _attempt(
            tx, config, intent["intent_id"], try_no, 1, intent["next_try_at"], intent["remaining_minor"], method
        )
    return created


async def _attempt(
    tx: Tx,
    config: PaymentsConfig,
    intent_id: str,
    try_no: int,
    call_no: int,
    at: datetime,
    amount_minor: int,
    method: store.Method,
    tried: frozenset[str] = frozenset(),
) -> int:
    conn = tx.conn
    intent = await conn.fetchrow("select currency from payments.intents where intent_id = $1", intent_id)
    assert intent is not None
    attempt_id = derive_id("payment_attempt", intent_id, try_no, call_no)
    decision = routing.choose(
        attempt_id,
        kind=method.kind,
        currency=intent["currency"],
        amount_minor=amount_minor,
        gateways=list(config.gateways),
        health=await store.health(conn, [g.name for g in config.gateways]),
        tried=tried,
        explore_every=config.explore_every,
    )
    if decision.gateway is None:
        await store.update_intent(
            conn, intent_id, state="waiting_retry" if tried else "no_method", reason=decision.reason
        )
        return 0
    await store.insert_attempt(
        conn,
        {
            "attempt_id": attempt_id,
            "intent_id": intent_id,
            "try_no": try_no,
            "call_no": call_no,
            "idempotency_key": derive_id("idempotency", attempt_id),
            "gateway": decision.gateway,
            "method_id": method.method_id,
            "token": method.token,
            "amount_minor": amount_minor,
            "currency": intent["currency"],
            "at": at,
            "decision": decision.as_json(),
        },
    )
    return 1


async def record_result(
    tx: Tx,
    config: PaymentsConfig,
    attempt_id: str,
    result: ChargeResult,
    *,
    inquiry: bool = False,
    claim: int | None = None,
    touched: dict[books.Touched, datetime] | None = None,
) -> str:
    """Commit what the gateway said about an attempt (its call or an inquiry). Returns the new state.

    ``claim``: the claim the answering send or inquiry held. When the attempt has been claimed again
    since (an inquiry gave it back to pending and it was re-sent with the same key), an old answer
    decides nothing — unless it says the processor charged, which is a fact whoever asked.

    ``touched``: a caller recording several answers in one transaction collects here the books to
    recompute (renter-currency → latest money time) and recomputes them once; without it, the books of a
    collected payment are recomputed here."""
    conn = tx.conn
    attempt = await conn.fetchrow(
        """select a.*, t.invoice_id, t.invoice_number, t.contract_id, t.renter_id, t.first_try_at, t.tries,
                  t.state as intent_state
             from payments.attempts a join payments.intents t using (intent_id)
            where a.attempt_id = $1 for update of a, t""",
        attempt_id,
    )
    assert attempt is not None, attempt_id
    if attempt["state"] not in ("pending", "sending", "unknown"):
        return str(attempt["state"])  # already resolved (a duplicate inquiry or webhook)
    overtaken = claim is not None and attempt["claim"] != claim
    if (overtaken or (inquiry and attempt["state"] == "pending")) and result.outcome != "succeeded":
        return str(attempt["state"])  # the current claim's send decides
    outcome = result.outcome
    now_sql = "now()"
    if outcome == "unknown":
        made = attempt["inquiries"] if inquiry else 0
        delay = dunning.next_inquiry_after(made, config.inquiry_delays)
        if delay is None:
            await conn.execute(
                f"""update payments.attempts set state = 'needs_operator', inquiries = $2, resolved_at = {now_sql},
                       message = $3 where attempt_id = $1""",
                attempt_id,
                made,
                "outcome still unknown after every inquiry: ask the processor by hand",
            )
            return "needs_operator"
        await conn.execute(
            """update payments.attempts set state = 'unknown', inquiries = $2, next_inquiry_at = now() + $3,
                   message = $4 where attempt_id = $1""",
            attempt_id,
            made + (1 if inquiry else 0),
            delay,
            result.message[:500],
        )
        await _circuit(conn, attempt["gateway"], ok=False, config=config)
        return "unknown"

    kind = config.codes.kind(attempt["gateway"], result.code) if outcome == "declined" else None
    await conn.execute(
        f"""update payments.attempts set state = $2, code = $3, decline_kind = $4, charge_id = $5, message = $6,
               resolved_at = {now_sql}, next_inquiry_at = null, inquiries = inquiries + $7 where attempt_id = $1""",
        attempt_id,
        outcome,
        result.code,
        kind,
        result.charge_id,
        result.message[:500],
        1 if inquiry else 0,
    )
    await _circuit(conn, attempt["gateway"], ok=outcome != "error", config=config)
    cause_time: datetime = attempt["at"]
    amount = attempt["amount_minor"]
    currency = attempt["currency"]
    event = {
        "payment_id": attempt_id,
        "renter_id": attempt["renter_id"],
        "currency": currency,
        "amount": shown(amount, currency),
        "invoice_number": attempt["invoice_number"],
        "contract_id": attempt["contract_id"],
        "gateway": attempt["gateway"],
        "code": result.code,
        "at": cause_time,
    }
    if outcome == "succeeded":
        inserted = await conn.execute(
            """insert into payments.money_in (renter_id, source_id, currency, kind, amount_minor, at, reference,
                   order_key, gateway, event_id)
               values ($1, $2, $3, 'collection', $4, $5, $6, $7, $8, $9) on conflict do nothing""",
            attempt["renter_id"],
            f"attempt:{attempt_id}",
            currency,
            amount,
            cause_time,
            attempt["invoice_number"],
            f"attempt:{attempt_id}",
            attempt["gateway"],
            attempt_id,
        )
        if inserted.endswith("1"):
            entry, specs = books.money_in_entry(
                entry_id=derive_id("payments.collected", attempt_id),
                cause_id=attempt_id,
                renter_id=attempt["renter_id"],
                currency=currency,
                amount_minor=amount,
                at=cause_time,
                gateway=attempt["gateway"],
            )
            await ensure_accounts(conn, specs)
            tx.post(entry)
        await store.update_intent(conn, attempt["intent_id"], state="succeeded", reason="")
        _emit(tx, "payment.succeeded", event, reason="collected")
        key = books.Touched(attempt["renter_id"], currency)
        if touched is None:
            await books.recompute_all(tx, [key], cause=None, at=cause_time)
        else:
            touched[key] = max(cause_time, touched.get(key, cause_time))
        return "succeeded"

    reason = f"{outcome}: {result.code or result.message or 'no code'}"
    _emit(tx, "payment.failed", event, reason=reason)
    if outcome == "declined" and kind == "hard":
        await store.update_intent(
            conn, attempt["intent_id"], state="hard_declined", hard_method=attempt["method_id"], reason=reason
        )
        return "declined"
    if outcome == "error" and not inquiry:
        tried = frozenset(
            r["gateway"]
            for r in await conn.fetch(
                "select gateway from payments.attempts where intent_id = $1 and try_no = $2",
                attempt["intent_id"],
                attempt["try_no"],
            )
        )
        method = store.Method(attempt["method_id"], await _kind_of(conn, attempt), attempt["token"])
        if await _attempt(
            tx,
            config,
            attempt["intent_id"],
            attempt["try_no"],
            attempt["call_no"] + 1,
            cause_time,
            amount,
            method,
            tried,
        ):
            return "error"  # failed over within the same try
    await schedule_next(tx, attempt, reason=reason)
    return str(outcome)


async def _kind_of(conn: asyncpg.Connection, attempt: asyncpg.Record) -> str:
    value = await conn.fetchval(
        "select kind from payments.methods where renter_id = $1 and method_id = $2",
        attempt["renter_id"],
        attempt["method_id"],
    )
    return str(value or "card")


async def schedule_next(tx: Tx, attempt: asyncpg.Record, *, reason: str) -> None:
    """A soft decline or a definite error: the next try per R14, or dunning exhausted → past due."""
    conn = tx.conn
    intent = await conn.fetchrow("select * from payments.intents where intent_id = $1", attempt["intent_id"])
    assert intent is not None
    nxt = dunning.next_try_at(intent["first_try_at"], intent["tries"])
    if nxt is not None:
        await store.update_intent(conn, intent["intent_id"], state="waiting_retry", next_try_at=nxt, reason=reason)
        return
    await store.update_intent(conn, intent["intent_id"], state="past_due", next_try_at=None, reason=reason)
    row = await store.set_past_due(conn, intent["invoice_id"])
    at = attempt["at"]
    if row is not None:
        books.emit_status(
            tx,
            row["invoice_id"],
            row["number"],
            row["contract_id"],
            row["renter_id"],
            row["currency"],
            (row["amount_due_minor"], row["paid_minor"], row["remaining_minor"], row["status"]),
            row["revision"],
            cause=None,
            at=at,
        )
        _emit(
            tx,
            "invoice.past_due",
            {
                "payment_id": intent["intent_id"],
                "renter_id": intent["renter_id"],
                "currency": intent["currency"],
                "amount": shown(row["remaining_minor"], intent["currency"]),
                "invoice_number": intent["invoice_number"],
                "contract_id": intent["contract_id"],
                "gateway": None,
                "code": attempt["code"],
                "at": at,
            },
            reason=f"dunning exhausted after {intent['tries']} tries ({reason})",
        )
        tx.emit(
            topics.PLATFORM_COMMANDS,
            key=intent["contract_id"],
            type="platform.suspend_requested",
            time=at,
            cause=None,
            event_id=derive_id("platform.suspend_requested", "past_due", intent["invoice_id"]),
            data=SuspendRequested(
                contract_id=intent["contract_id"], renter_id=intent["renter_id"], reason="payment_past_due", at=at
            ),
        )


def _emit(tx: Tx, type: str, fields: dict[str, Any], *, reason: str) -> None:
    tx.emit(
        topics.PAYMENTS,
        key=fields["renter_id"],
        type=type,
        time=fields["at"],
        cause=None,
        event_id=derive_id(type, fields["payment_id"]),
        data=PaymentEvent(**fields, reason=reason[:500]),
    )


async def _circuit(conn: asyncpg.Connection, gateway: str, *, ok: bool, config: PaymentsConfig) -> None:
    """Consecutive failures open a gateway's circuit for a while (routing steers around it)."""
    if ok:
        # A success on a healthy gateway changes nothing: no write, so no row lock held to the commit
        # (every result on one gateway would otherwise wait for the one before).
        failures = await conn.fetchval("select failures from payments.circuits where gateway = $1", gateway)
        if failures == 0:
            return
        await conn.execute(
            """insert into payments.circuits (gateway, failures) values ($1, 0)
               on conflict (gateway) do update set failures = 0, updated_at = now()""",
            gateway,
        )
        return
    await conn.execute(
        """insert into payments.circuits (gateway, failures) values ($1, 1)
           on conflict (gateway) do update set failures = payments.circuits.failures + 1,
               open_until = case when payments.circuits.failures + 1 >= $2
                                 then now() + make_interval(secs => $3) else payments.circuits.open_until end,
               updated_at = now()""",
        gateway,
        config.circuit_failures,
        config.circuit_open_s,
    )
