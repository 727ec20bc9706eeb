"""R14 collection: intents, tries and attempts, and what each gateway answer does — in a transaction.

An intent per invoice; a *try* is one scheduled collection (on the due date, then day 1, 3, 5, 7, 10
and 14 after it); a try makes one *attempt* per gateway call (a definite failure fails over to another
gateway within the same try; an unknown outcome never does). Attempts are created ``pending`` here and
sent by :mod:`services.payments.collector`, which commits ``sending`` before the call and the result
after it, so a worker killed in between leaves a ``sending`` attempt that is resolved by asking the
processor — never by calling again with a new key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from libs.ids import derive_id
from libs.ledger import ensure_accounts
from libs.messaging.consume import Tx
from libs.times import format_utc
from schemas import topics
from schemas.barrier import emit_watermark
from schemas.envelope import Envelope
from schemas.events import PaymentEvent, SuspendRequested
from services.payments import books, store
from services.payments.config import PaymentsConfig
from services.payments.domain import dunning, routing
from services.payments.domain.allocation import remaining_at
from services.payments.gateways.port import ChargeResult
from services.payments.money import shown


async def release_marks(tx: Tx, *, cause: Envelope[Any] | None) -> list[datetime]:
    """Send ``payments.watermark(T)`` to every partition of invoices.payments.v1 for each answered tick T
    that no collection still waits for: no attempt dated at or before T is ``pending`` or ``sending``.

    R14 collects on the due date and R15 releases what was applied at or before planning: a card charged
    because of tick T (due at or before it) is money of T's planning, so the mark T waits for its answer
    (a gateway timeout at most). An unknown outcome does not hold the mark (its inquiry follows the
    processor's clock): if it turns out charged, it counts at the next planning. Called when a tick is
    answered and after answers are recorded (and now and then by the collector), in the caller's
    transaction; the ``delete … returning`` makes each mark go out once."""
    released = sorted(
        r["at"]
        for r in await tx.conn.fetch(
            """delete from payments.ticks_collecting
                where at < coalesce((select min(at) from payments.attempts where state in ('pending', 'sending')),
                                    'infinity'::timestamptz)
            returning at"""
        )
    )
    for at in released:
        for partition in range(topics.INVOICE_PAYMENTS.partitions):
            emit_watermark(
                tx.emitter,
                topics.INVOICE_PAYMENTS,
                type="payments.watermark",
                source="payments",
                through=at,
                partition=partition,
                event_id=derive_id("payments.watermark", partition, format_utc(at)),
                cause=cause,
            )
    return released


async def remaining_when_started(
    conn: asyncpg.Connection, starts: list[tuple[str, str, str, datetime]]
) -> dict[tuple[str, datetime], int]:
    """R14: each (renter, currency, invoice number, attempt time)'s amount still due when the attempt starts —
    by (number, time). Money read already but received after that time does not count (``remaining_at``)."""
    if not starts:
        return {}
    facts = await books.load_facts_many(
        conn, [books.Touched(r, c) for r, c in sorted({(r, c) for r, c, _, _ in starts})]
    )
    out: dict[tuple[str, datetime], int] = {}
    for renter_id, currency, number, at in starts:
        invoices, notes, money_in, money_out = facts[books.Touched(renter_id, currency)]
        out[(number, at)] = remaining_at(
            invoices, money_in, number=number, at=at, credit_notes=notes, money_out=money_out
        )
    return out


async def start_due(tx: Tx, config: PaymentsConfig, through: datetime, *, cause: Envelope[Any] | None) -> int:
    """Open an intent (first try on the due date) for every postpaid invoice due by ``through``, and
    start every retry that fell due. Returns the attempts created.

    A fixed number of statements however many fall due (a month's close makes thousands due at one
    tick): the routing health and the default methods are read once — nothing this transaction does
    changes them — and the new intents and attempts are written in one round trip each."""
    conn = tx.conn
    due = await store.due_without_intent(conn, through, 10_000)
    retries = await store.retries_due(conn, through, 10_000)
    if not due and not retries:
        return 0
    health = await store.health(conn, [g.name for g in config.gateways])
    methods = await store.default_methods(conn, [(r["renter_id"], r["currency"]) for r in [*due, *retries]])
    remaining = await remaining_when_started(
        conn,
        [(r["renter_id"], r["currency"], r["number"], r["due_at"]) for r in due]
        + [(r["renter_id"], r["currency"], r["invoice_number"], r["next_try_at"]) for r in retries],
    )
    intents: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for inv in due:
        intent_id = derive_id("payment_intent", inv["invoice_id"])
        amount = remaining[(inv["number"], inv["due_at"])]
        if amount <= 0:  # paid by its due date; money read now but received later does not count there
            intents.append(
                {
                    "intent_id": intent_id, "invoice_id": inv["invoice_id"], "invoice_number": inv["number"],
                    "contract_id": inv["contract_id"], "renter_id": inv["renter_id"], "currency": inv["currency"],
                    "state": "settled_otherwise", "tries": 0, "first_try_at": None, "next_try_at": None,
                    "reason": "nothing due at the due date",
                }
            )  # fmt: skip
            continue
        method = methods.get((inv["renter_id"], inv["currency"]))
        intent = {
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
        }
        if method is not None:
            attempt, reason = _plan(config, intent_id, inv["currency"], 1, 1, inv["due_at"], amount, method, health)
            if attempt is None:
                intent.update(state="no_method", reason=reason)
            else:
                attempts.append(attempt)
        intents.append(intent)
    for intent in retries:
        amount = remaining[(intent["invoice_number"], intent["next_try_at"])]
        if amount <= 0:
            await store.update_intent(conn, intent["intent_id"], state="settled_otherwise", reason="paid otherwise")
            continue
        method = methods.get((intent["renter_id"], intent["currency"]))
        if method is None:
            await store.update_intent(
                conn, intent["intent_id"], state="no_method", reason="the default payment method was removed"
            )
            continue
        try_no = intent["tries"] + 1
        attempt, reason = _plan(
            config,
            intent["intent_id"],
            intent["currency"],
            try_no,
            1,
            intent["next_try_at"],
            amount,
            method,
            health,
        )
        if attempt is None:
            await store.update_intent(conn, intent["intent_id"], state="no_method", tries=try_no, reason=reason)
        else:
            await store.update_intent(conn, intent["intent_id"], state="collecting", tries=try_no)
            attempts.append(attempt)
    await store.insert_intents(conn, intents)
    await store.insert_attempts(conn, attempts)
    return len(attempts)


def _plan(
    config: PaymentsConfig,
    intent_id: str,
    currency: str,
    try_no: int,
    call_no: int,
    at: datetime,
    amount_minor: int,
    method: store.Method,
    health: dict[str, routing.Health],
    tried: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any] | None, str]:
    """The attempt routing chooses for one call (its row), or None and why no gateway can take it."""
    attempt_id = derive_id("payment_attempt", intent_id, try_no, call_no)
    decision = routing.choose(
        attempt_id,
        kind=method.kind,
        currency=currency,
        amount_minor=amount_minor,
        gateways=list(config.gateways),
        health=health,
        tried=tried,
        explore_every=config.explore_every,
    )
    if decision.gateway is None:
        return None, decision.reason
    return {
        "attempt_id": attempt_id,
        "intent_id": intent_id,
        "try_no": try_no,
        "call_no": call_no,
        "idempotency_key": derive_id("idempotency", attempt_id),
        "gateway": decision.gateway,
        "method_id": method.method_id,
        "token": method.token,
        "amount_minor": amount_minor,
        "currency": currency,
        "at": at,
        "decision": decision.as_json(),
    }, ""


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
    """One more call within a try (a fail-over): routed on the health as it is now."""
    conn = tx.conn
    intent = await conn.fetchrow("select currency from payments.intents where intent_id = $1", intent_id)
    assert intent is not None
    health = await store.health(conn, [g.name for g in config.gateways])
    attempt, reason = _plan(
        config, intent_id, intent["currency"], try_no, call_no, at, amount_minor, method, health, tried
    )
    if attempt is None:
        await store.update_intent(conn, intent_id, state="waiting_retry" if tried else "no_method", reason=reason)
        return 0
    await store.insert_attempt(conn, attempt)
    return 1


async def record_result(
    tx: Tx,
    config: PaymentsConfig,
    attempt_id: str,
    result: ChargeResult,
    *,
    circuits: Circuits,
    inquiry: bool = False,
    claim: int | None = None,
    touched: dict[books.Touched, datetime] | None = None,
) -> str:
    """Commit what the gateway said about an attempt (its call or an inquiry). Returns the new state.

    ``claim``: the claim the answering send or inquiry held. When the attempt has been claimed again
    since (an inquiry gave it back to pending and it was re-sent with the same key), an old answer
    decides nothing — unless it says the processor charged, which is a fact whoever asked.

    ``circuits``: what the answer says of its gateway's health is noted there, for the caller to write
    after its commit (:func:`note_circuits`).

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
        made, delay = dunning.still_unknown(attempt["inquiries"], inquiry, config.inquiry_delays)
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
            made,
            delay,
            result.message[:500],
        )
        circuits.note(attempt["gateway"], ok=False)
        return "unknown"

    if outcome == "succeeded":
        collected: dict[books.Touched, datetime] = {} if touched is None else touched
        await record_successes(tx, config, [(attempt, result, inquiry)], collected, circuits)
        if touched is None:
            await books.recompute_all(tx, collected, cause=None, at=collected)
        return "succeeded"

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
    circuits.note(attempt["gateway"], ok=outcome != "error")
    cause_time: datetime = attempt["at"]
    event = _event(attempt, result)
    reason = f"{outcome}: {result.code or result.message or 'no code'}"
    _emit(tx, "payment.failed", event, reason=reason)
    if outcome == "declined" and kind == "hard":
        await store.update_intent(
            conn, attempt["intent_id"], state="hard_declined", hard_method=attempt["method_id"], reason=reason
        )
        # The renter may have changed its default method while this attempt was out: then it goes on.
        await store.resume_on_method_change(
            conn, attempt["renter_id"], attempt["currency"], attempt["at"], waiting_for_one=False
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
        # R14: each attempt is for the amount still due when it starts (a receipt may have come meanwhile) —
        # the fail-over starts at the failed call's time, so money received after it does not count.
        number, at = attempt["invoice_number"], attempt["at"]
        started = await remaining_when_started(conn, [(attempt["renter_id"], attempt["currency"], number, at)])
        remaining = started[(number, at)]
        if remaining <= 0:
            await store.update_intent(conn, attempt["intent_id"], state="settled_otherwise", reason="paid otherwise")
            return "error"
        if await _attempt(
            tx,
            config,
            attempt["intent_id"],
            attempt["try_no"],
            attempt["call_no"] + 1,
            cause_time,
            remaining,
            method,
            tried,
        ):
            return "error"  # failed over within the same try
    await schedule_next(tx, attempt, reason=reason)
    return str(outcome)


async def lock_attempts(conn: asyncpg.Connection, attempt_ids: list[str]) -> dict[str, asyncpg.Record]:
    """The attempts (with their intents) of a batch of answers, locked in attempt order — the order
    every batch locks in, so two batches never deadlock on them."""
    rows = await conn.fetch(
        """select a.*, t.invoice_id, t.invoice_number, t.contract_id, t.renter_id, t.first_try_at, t.tries,
                  t.state as intent_state
             from payments.attempts a join payments.intents t using (intent_id)
            where a.attempt_id = any($1::text[]) order by a.attempt_id collate "C" for update of a, t""",
        attempt_ids,
    )
    return {r["attempt_id"]: r for r in rows}


async def record_successes(
    tx: Tx,
    config: PaymentsConfig,
    answers: list[tuple[asyncpg.Record, ChargeResult, bool]],
    touched: dict[books.Touched, datetime],
    circuits: Circuits,
) -> None:
    """A charge the processor made, for one or many open attempts at once (locked; each ``(attempt,
    result, inquiry)``, one per attempt): the attempt, the money in and its entry, the intent, the
    ``payment.succeeded`` event, in a fixed number of statements. The books to recompute are added to
    ``touched`` (renter-currency → latest money time)."""
    if not answers:
        return
    conn = tx.conn
    await conn.execute(
        """update payments.attempts a set state = 'succeeded', code = v.code, decline_kind = null,
               charge_id = v.charge_id, message = v.message, resolved_at = now(), next_inquiry_at = null,
               inquiries = a.inquiries + v.inquiry
             from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])
                  as v (attempt_id, code, charge_id, message, inquiry)
            where a.attempt_id = v.attempt_id""",
        [a["attempt_id"] for a, _, _ in answers],
        [r.code for _, r, _ in answers],
        [r.charge_id for _, r, _ in answers],
        [r.message[:500] for _, r, _ in answers],
        [1 if inquiry else 0 for _, _, inquiry in answers],
    )
    for attempt, _, _ in answers:
        circuits.note(attempt["gateway"], ok=True)
    inserted = {
        r["source_id"]
        for r in await conn.fetch(
            """insert into payments.money_in (renter_id, source_id, currency, kind, amount_minor, at, reference,
                   order_key, gateway, event_id)
               select v.renter_id, v.source_id, v.currency, 'collection', v.amount_minor, v.at, v.reference,
                      v.source_id, v.gateway, v.event_id
                 from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], $6::text[],
                             $7::text[], $8::text[])
                      as v (renter_id, source_id, currency, amount_minor, at, reference, gateway, event_id)
               on conflict do nothing returning source_id""",
            [a["renter_id"] for a, _, _ in answers],
            [f"attempt:{a['attempt_id']}" for a, _, _ in answers],
            [a["currency"] for a, _, _ in answers],
            [a["amount_minor"] for a, _, _ in answers],
            [a["at"] for a, _, _ in answers],
            [a["invoice_number"] for a, _, _ in answers],
            [a["gateway"] for a, _, _ in answers],
            [a["attempt_id"] for a, _, _ in answers],
        )
    }
    specs: list[Any] = []
    for attempt, result, _ in answers:
        attempt_id, currency, cause_time = attempt["attempt_id"], attempt["currency"], attempt["at"]
        if f"attempt:{attempt_id}" in inserted:
            entry, accounts = books.money_in_entry(
                entry_id=derive_id("payments.collected", attempt_id),
                cause_id=attempt_id,
                renter_id=attempt["renter_id"],
                currency=currency,
                amount_minor=attempt["amount_minor"],
                at=cause_time,
                gateway=attempt["gateway"],
            )
            specs.extend(accounts)
            tx.post(entry)
        _emit(tx, "payment.succeeded", _event(attempt, result), reason="collected")
        key = books.Touched(attempt["renter_id"], currency)
        touched[key] = max(cause_time, touched.get(key, cause_time))
    await ensure_accounts(conn, specs)
    await conn.execute(
        """update payments.intents set state = 'succeeded', reason = '', updated_at = now()
            where intent_id = any($1::text[])""",
        sorted({a["intent_id"] for a, _, _ in answers}),
    )


def _event(attempt: asyncpg.Record, result: ChargeResult) -> dict[str, Any]:
    return {
        "payment_id": attempt["attempt_id"],
        "renter_id": attempt["renter_id"],
        "currency": attempt["currency"],
        "amount": shown(attempt["amount_minor"], attempt["currency"]),
        "invoice_number": attempt["invoice_number"],
        "contract_id": attempt["contract_id"],
        "gateway": attempt["gateway"],
        "code": result.code,
        "at": attempt["at"],
    }


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


@dataclass
class Circuits:
    """What one transaction's answers said about each gateway's health, in order. Written by
    :func:`note_circuits` once the answers are committed, in its own short statement: a write inside the
    answers' transaction would hold the gateway's ``payments.circuits`` row until their commit, and every
    answer on that gateway, across workers, would wait for the one before. A worker killed between the
    two loses these notes only; the breaker is routing's advice, never money."""

    seen: dict[str, list[bool]] = field(default_factory=dict)

    def note(self, gateway: str, *, ok: bool) -> None:
        self.seen.setdefault(gateway, []).append(ok)


async def note_circuits(conn: asyncpg.Connection, circuits: Circuits, config: PaymentsConfig) -> None:
    """Consecutive failures open a gateway's circuit for a while (routing steers around it): per gateway,
    a success resets the count and each failure after it adds one; reaching ``circuit_failures`` opens
    the circuit for ``circuit_open_s`` from now (again at every further failure)."""
    for gateway, oks in sorted(circuits.seen.items()):
        if all(oks):
            # A success on a healthy gateway changes nothing: no write at all.
            failures = await conn.fetchval("select failures from payments.circuits where gateway = $1", gateway)
            if not failures:  # no row yet, or a count of 0
                continue
        reset = True in oks
        added = oks[::-1].index(True) if reset else len(oks)  # the failures after the last success
        await conn.execute(
            """insert into payments.circuits (gateway, failures, open_until)
               values ($1, $2::int, case when $2::int >= $4::int then now() + make_interval(secs => $5) end)
               on conflict (gateway) do update
                  set failures = case when $3::boolean then 0 else payments.circuits.failures end + $2::int,
                      open_until = case when $2::int > 0
                                         and case when $3::boolean then 0 else payments.circuits.failures end
                                             + $2::int >= $4::int
                                        then now() + make_interval(secs => $5) else payments.circuits.open_until end,
                      updated_at = now()""",
            gateway,
            added,
            reset,
            config.circuit_failures,
            config.circuit_open_s,
        )
