"""The payments worker's I/O side: send pending attempts to their gateway, ask about unknown ones.

Phases, each its own transaction, so a SIGKILL anywhere leaves a state the next worker resolves:

1. claim: ``pending`` → ``sending`` (``sent_at`` = now), committed *before* the gateway call;
2. the call, with the attempt's idempotency key (outside any transaction);
3. record: the result, the ledger and the events (:func:`services.payments.collection.record_result`).

A ``sending`` attempt older than the gateway timeout plus a margin was interrupted: it is never sent
again, the processor is asked (``inquire``) what became of it — as are ``unknown`` attempts, on R14's
inquiry schedule (wall clock: it is the processor's reality we wait for, not billing time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from libs.errors import InfrastructureError
from libs.messaging.consume import Tx
from libs.messaging.worker import Runtime
from libs.settings import Settings
from services.payments import books, collection, metrics, refunds
from services.payments.config import PaymentsConfig
from services.payments.gateways.port import ChargeRequest, ChargeResult, Gateway, RefundResult

log = structlog.get_logger("settle.payments")

GatewayFactory = Callable[[Settings], Mapping[str, Gateway]]
CLAIM_BATCH = 200


async def claim(pool: asyncpg.Pool, limit: int = CLAIM_BATCH) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                """update payments.attempts a set state = 'sending', sent_at = now(), claim = a.claim + 1
                     from payments.intents t
                    where a.attempt_id in (select attempt_id from payments.attempts where state = 'pending'
                                            order by created_at limit $1 for update skip locked)
                      and t.intent_id = a.intent_id
                returning a.attempt_id, a.idempotency_key, a.gateway, a.token, a.amount_minor, a.currency,
                          a.created_at, a.claim, t.invoice_number, t.renter_id,
                          (select kind from payments.methods m where m.renter_id = t.renter_id
                             and m.method_id = a.method_id) as kind""",
                limit,
            )
        )


async def record(
    pool: asyncpg.Pool,
    config: PaymentsConfig,
    attempt_id: str,
    result: ChargeResult,
    *,
    inquiry: bool,
    claim: int | None = None,
) -> str:
    circuits = collection.Circuits()
    async with pool.acquire() as conn:
        async with conn.transaction():
            tx = Tx(conn, "payments")
            state = await collection.record_result(
                tx, config, attempt_id, result, circuits=circuits, inquiry=inquiry, claim=claim
            )
            await collection.release_marks(tx, cause=None)
            await tx.flush()
        await collection.note_circuits(conn, circuits, config)
    return state


@dataclass
class _Answer:
    attempt_id: str
    result: ChargeResult
    inquiry: bool
    claim: int | None
    done: asyncio.Future[str]


class Recorder:
    """Commits gateway answers in batches: whatever answers arrived while the last batch was being
    written go into the next one — one transaction, one books recompute and one ledger post (one wait
    on the currency's chain head) for all of them, instead of one each. An answer is still only
    committed after its call returned; a worker killed with answers waiting leaves their attempts
    ``sending``, which the interrupted-send inquiry resolves, as for a kill during the call.

    A batch that fails (a deadlock, a bad row) is recorded again one answer per transaction, so one
    answer's failure is its own."""

    def __init__(self, pool: asyncpg.Pool, config: PaymentsConfig, *, max_batch: int = 64) -> None:
        self.pool = pool
        self.config = config
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Answer] = asyncio.Queue()

    async def record(self, attempt_id: str, result: ChargeResult, *, inquiry: bool, claim: int | None) -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Answer(attempt_id, result, inquiry, claim, done))
        return await done

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[_Answer]) -> None:
        try:
            states = await record_many(self.pool, self.config, batch)
        except Exception as error:  # each answer is retried on its own below
            if len(batch) > 1:
                log.info("a batch of payment results failed; recording them one by one", error=str(error))
            for answer in batch:
                try:
                    state = await record(
                        self.pool, self.config, answer.attempt_id, answer.result, inquiry=answer.inquiry,
                        claim=answer.claim,
                    )  # fmt: skip
                except Exception as single:  # handed to the waiting send
                    if not answer.done.done():
                        answer.done.set_exception(single)
                else:
                    if not answer.done.done():
                        answer.done.set_result(state)
            return
        for answer, state in zip(batch, states, strict=True):
            if not answer.done.done():
                answer.done.set_result(state)


async def record_many(pool: asyncpg.Pool, config: PaymentsConfig, batch: list[_Answer]) -> list[str]:
    circuits = collection.Circuits()
    async with pool.acquire() as conn:
        async with conn.transaction():
            states = await _record_many(conn, config, batch, circuits)
        await collection.note_circuits(conn, circuits, config)
    return states


async def _record_many(
    conn: asyncpg.Connection, config: PaymentsConfig, batch: list[_Answer], circuits: collection.Circuits
) -> list[str]:
    tx = Tx(conn, "payments")
    touched: dict[books.Touched, datetime] = {}
    attempts = await collection.lock_attempts(conn, sorted({a.attempt_id for a in batch}))
    # Charges made on open attempts (almost every answer) are recorded together; any other answer —
    # a decline, an error, an unknown outcome, a second answer about one attempt — one by one.
    together: dict[str, _Answer] = {}
    seen: set[str] = set()
    for answer in batch:
        attempt = attempts.get(answer.attempt_id)
        if (
            attempt is not None
            and answer.result.outcome == "succeeded"
            and attempt["state"] in ("pending", "sending", "unknown")
            and answer.attempt_id not in seen
        ):
            together[answer.attempt_id] = answer
        seen.add(answer.attempt_id)
    await collection.record_successes(
        tx,
        config,
        [(attempts[a.attempt_id], a.result, a.inquiry) for a in together.values()],
        touched,
        circuits,
    )
    states = [
        "succeeded"
        if together.get(a.attempt_id) is a
        else await collection.record_result(
            tx,
            config,
            a.attempt_id,
            a.result,
            circuits=circuits,
            inquiry=a.inquiry,
            claim=a.claim,
            touched=touched,
        )
        for a in batch
    ]
    if touched:
        await books.recompute_all(tx, touched, cause=None, at=touched)
    await collection.release_marks(tx, cause=None)
    await tx.flush()
    return states


RESEND_CHECK_AFTER_S = 1.0
"""A send that starts later than this after its claim first checks that it still holds the claim."""


async def send_one(
    pool: asyncpg.Pool,
    config: PaymentsConfig,
    gateways: Mapping[str, Gateway],
    row: asyncpg.Record,
    recorder: Recorder | None = None,
    claimed_at: float | None = None,
) -> str:
    gateway = gateways.get(row["gateway"])
    loop = asyncio.get_running_loop()
    if claimed_at is None or loop.time() - claimed_at > RESEND_CHECK_AFTER_S:
        # The send starts now: its clock (for the interrupted-send inquiry) starts now too, and only if this
        # worker still holds the claim (an inquiry may have given the attempt back to pending meanwhile).
        # A send that starts at once needs no check: the claim set that clock, and an inquiry only takes
        # a send older than the gateway timeout plus ``interrupted_after_s``.
        async with pool.acquire() as conn:
            held = await conn.execute(
                """update payments.attempts set sent_at = now()
                    where attempt_id = $1 and state = 'sending' and claim = $2""",
                row["attempt_id"],
                row["claim"],
            )
        if not held.endswith("1"):
            return "overtaken"
    if gateway is None:
        result = ChargeResult("error", code="gateway_not_configured", message=f"no adapter for {row['gateway']}")
    else:
        result = await gateway.charge(
            ChargeRequest(
                attempt_id=row["attempt_id"],
                idempotency_key=row["idempotency_key"],
                amount_minor=row["amount_minor"],
                currency=row["currency"],
                token=row["token"],
                invoice_number=row["invoice_number"],
                renter_id=row["renter_id"],
            )
        )
    metrics.ATTEMPTS.labels(row["gateway"], row["kind"] or "unknown", row["currency"], result.outcome).inc()
    if recorder is not None:
        return await recorder.record(row["attempt_id"], result, inquiry=False, claim=row["claim"])
    return await record(pool, config, row["attempt_id"], result, inquiry=False, claim=row["claim"])


async def claim_inquiries(
    pool: asyncpg.Pool, timeout_s: float, interrupted_after_s: float, limit: int = 100
) -> list[asyncpg.Record]:
    """Attempts to ask about: unknown ones whose time came, and interrupted sends (``sending`` for
    longer than the gateway timeout plus ``interrupted_after_s``: the worker that sent them died).
    Pushes their next inquiry a minute on, so two workers do not ask at once (the answer is recorded
    idempotently)."""
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                """update payments.attempts set next_inquiry_at = now() + interval '1 minute'
                    where attempt_id in (
                        select attempt_id from payments.attempts
                         where (state = 'unknown' and next_inquiry_at <= now())
                            or (state = 'sending' and sent_at < now() - $1::interval
                                and (next_inquiry_at is null or next_inquiry_at <= now()))
                         order by attempt_id limit $2 for update skip locked)
                returning attempt_id, idempotency_key, gateway, state, claim""",
                timedelta(seconds=timeout_s + interrupted_after_s),
                limit,
            )
        )


async def inquire_one(
    pool: asyncpg.Pool,
    config: PaymentsConfig,
    gateways: Mapping[str, Gateway],
    row: asyncpg.Record,
    recorder: Recorder | None = None,
) -> str:
    gateway = gateways.get(row["gateway"])
    if gateway is None:
        return "skipped"
    answer = await gateway.inquire(row["attempt_id"], row["idempotency_key"])
    if answer.found and answer.result is not None:
        result = answer.result
    elif answer.found:
        result = ChargeResult("unknown", message="the processor has it but gave no outcome")
    else:
        # Nothing reached the processor: send the *same* attempt again, with the same idempotency key
        # (a request still in flight and this one cannot both charge), never a new attempt.
        async with pool.acquire() as conn:
            status = await conn.execute(
                """update payments.attempts set state = 'pending', inquiries = inquiries + 1, next_inquiry_at = null,
                       message = 'not at the processor when asked: sent again with the same idempotency key'
                    where attempt_id = $1 and state in ('sending', 'unknown') and claim = $2 and inquiries < 10""",
                row["attempt_id"],
                row["claim"],
            )
        if status.endswith("1"):
            return "pending"
        result = ChargeResult("error", code="not_found", message="the processor has no charge for this attempt")
    if recorder is not None:
        return await recorder.record(row["attempt_id"], result, inquiry=True, claim=row["claim"])
    return await record(pool, config, row["attempt_id"], result, inquiry=True, claim=row["claim"])


async def refund_one(pool: asyncpg.Pool, gateways: Mapping[str, Gateway], row: asyncpg.Record) -> str:
    """Send a refund with its own idempotency key, then commit the answer (a crash in between: the
    stale ``sending`` row is sent again with the same key, and the processor refunds once)."""
    gateway = gateways.get(row["gateway"])
    if gateway is None:
        result = RefundResult("error", code="gateway_not_configured", message=f"no adapter for {row['gateway']}")
    else:
        result = await gateway.refund(row["charge_id"], row["amount_minor"], row["idempotency_key"])
    metrics.REFUNDS.labels(row["gateway"], result.outcome).inc()
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn, "payments")
        state = await refunds.record(tx, row, result)
        await tx.flush()
        return state


async def release_waiting_marks(pool: asyncpg.Pool) -> None:
    """The ticks whose collections all answered: a safety net for a tick answered while its last
    collection's answer was being committed (each transaction saw the other's work as not yet there)."""
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn, "payments")
        if await collection.release_marks(tx, cause=None):
            await tx.flush()


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        metrics.UNKNOWN_OPEN.set(await conn.fetchval("select count(*) from payments.attempts where state = 'unknown'"))
        metrics.NEEDS_OPERATOR.set(
            await conn.fetchval("select count(*) from payments.attempts where state = 'needs_operator'")
        )
        for row in await conn.fetch("select state, count(*) as n from payments.intents group by state"):
            metrics.INTENTS.labels(row["state"]).set(row["n"])
        for state in ("pending", "sending", "manual", "failed"):
            metrics.REFUNDS_WAITING.labels(state).set(
                await conn.fetchval("select count(*) from payments.refunds where state = $1", state)
            )
        metrics.REFUNDS_OVERPAID.set(
            await conn.fetchval("select count(*) from payments.refunds where overpaid_minor > 0")
        )
        metrics.DISPUTES_OPEN.set(await conn.fetchval("select count(*) from payments.disputes where state = 'open'"))
        metrics.PAST_DUE.set(
            await conn.fetchval("select count(*) from payments.invoice_status where status = 'past_due'")
        )
        waiting = await conn.fetchrow(
            "select count(*) as n, min(at) as oldest, max(at) as latest from payments.ticks_unanswered"
        )
        metrics.TICKS_WAITING.set(waiting["n"])
        span = (waiting["latest"] - waiting["oldest"]).total_seconds() if waiting["n"] else 0.0
        metrics.TICKS_WAITING_SPAN.set(span)
        for row in await conn.fetch(
            "select gateway, coalesce(open_until > now(), false) as open from payments.circuits"
        ):
            metrics.CIRCUIT_OPEN.labels(row["gateway"]).set(1 if row["open"] else 0)


def collector_task(
    config: PaymentsConfig, factory: GatewayFactory, *, concurrency: int = 64, writers: int = 2
) -> Callable[[Runtime], object]:
    async def run(runtime: Runtime) -> None:
        gateways = factory(runtime.settings)
        pool = runtime.pool
        recorder = Recorder(pool, config)
        writing = [asyncio.create_task(recorder.run()) for _ in range(writers)]
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[str]] = set()
        timeout_s = float(getattr(runtime.settings, "gateway_timeout_s", 10.0))
        rounds = 0

        async def guarded(step: Coroutine[Any, Any, str]) -> str:
            async with slots:
                try:
                    return await step
                except (InfrastructureError, OSError, asyncpg.PostgresConnectionError) as error:
                    log.warning("payment step interrupted; it is resolved by inquiry", error=str(error))
                    return "interrupted"

        try:
            while not runtime.stop.is_set():
                work = 0
                with contextlib.suppress(OSError, asyncpg.PostgresConnectionError, InfrastructureError):
                    # Claim only what can be sent now: a claimed attempt waiting in this process would
                    # age towards the interrupted-send inquiry while nothing was sent.
                    free = concurrency - len(running)
                    claimed = await claim(pool, min(CLAIM_BATCH, free)) if free > 0 else []
                    claimed_at = asyncio.get_running_loop().time()
                    for row in claimed:
                        work += 1
                        task = asyncio.create_task(guarded(send_one(pool, config, gateways, row, recorder, claimed_at)))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    free = concurrency - len(running)
                    refunds_due = (
                        await refunds.claim(pool, timeout_s + config.interrupted_after_s, free) if free > 0 else []
                    )
                    for row in refunds_due:
                        work += 1
                        task = asyncio.create_task(guarded(refund_one(pool, gateways, row)))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    if rounds % 10 == 0:
                        for row in await claim_inquiries(pool, timeout_s, config.interrupted_after_s):
                            work += 1
                            task = asyncio.create_task(guarded(inquire_one(pool, config, gateways, row, recorder)))
                            running.add(task)
                            task.add_done_callback(running.discard)
                        await refresh_gauges(pool)
                        await release_waiting_marks(pool)
                rounds += 1
                if not work:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(runtime.stop.wait(), 0.1)
                elif len(running) >= concurrency:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if running:
                await asyncio.wait(running, timeout=timeout_s + 5)
        finally:
            for pending in [*running, *writing]:
                pending.cancel()
            for gateway in gateways.values():
                with contextlib.suppress(Exception):
                    await gateway.close()

    return run
