"""Payout files (R16): planned payouts go out exactly once, and their lifecycle is tracked to completion.

Three steps, each its own transaction, in the payouts worker (:func:`files_task`) and its bank-results
consumer (:data:`BANK_RESULTS`):

1. **Cut** (:func:`cut_files`): under the planning clock's lock, every ``planned`` payout not yet in a file
   (and every failed payout R16 lets go again) is routed to a rail (the payee's, limits and currencies
   checked, else ``waiting_operator`` with the reasons), its attempt's instruction built, and one file per
   rail is built at the clock's tick — batch id, sequence, name and creation time derive from (rail,
   tick, sequence), never the wall clock. The file row (bytes, SHA-256, totals, count) and its items are
   committed **before** anything leaves.
2. **Send** (:func:`send_built`): every ``built`` file is handed to the transport (:class:`DirectoryTransport`:
   temp file, fsync, rename under the file's deterministic name; the same name with the same SHA-256 is
   a recognised resend, different bytes an error), then in one transaction the file becomes
   ``submitted`` and its payouts ``sent`` (``payout.sent`` in the outbox). A crash between the two sends
   the same stored bytes again: there is never a second file for the same payouts.
3. **Bank results** (``payouts.bank_results.v1``): ``payout_file.acknowledged`` (file → ``acknowledged``),
   ``payout_returns.received`` (a NACHA return/NOC file or a pacs.002/pain.002, read by the rail's
   ``parse_returns``: returns and rejects reversed in the ledger, the payee flagged, NOCs recorded) and
   ``payout.settlement_confirmed`` (reconciliation matched the payout to a posted bank transaction:
   ``completed``, in transit → cash). A file whose every payout has an outcome is ``settled`` (or
   ``rejected`` when the bank refused all of it).

A payout id is in at most one file that has not failed it (a unique index); a retry is a new attempt with
its own rail reference (:func:`~services.payouts.domain.dispatch.attempt_ref`) in a later file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from libs.db.pool import transaction
from libs.errors import PermanentError
from libs.ids import derive_id
from libs.ledger import Entry, ensure_accounts, post
from libs.messaging.consume import Subscription, Tx
from libs.messaging.outbox import Emitter, write_outbox
from libs.messaging.worker import Runtime
from libs.money import currency_exponent
from schemas import topics
from schemas.envelope import Envelope
from schemas.events import (
    PayoutFileAcknowledged,
    PayoutReturnsReceived,
    PayoutSettlementConfirmed,
    PayoutSettlementsConfirmed,
)
from services.payouts import config as payouts_config
from services.payouts import entries, metrics, planner, store
from services.payouts.domain.dispatch import (
    FailedAttempt,
    file_identity,
    instruction_for,
    may_retry,
    route,
)
from services.payouts.rails.calendar import DEFAULT_RAILS, RailConfig, effective_date
from services.payouts.rails.iso20022 import block_end_to_end_ids
from services.payouts.rails.iso20022 import message_id as iso_message_id
from services.payouts.rails.port import (
    BankFileError,
    InvalidBatchError,
    PayoutBatch,
    PayoutInstruction,
    Rail,
    RailReturn,
)

log = structlog.get_logger("settle.payouts.files")

RAILS: dict[str, Rail] = payouts_config.parse({}).rail_impls
"""The rails with the built-in (placeholder) originator: what readers (returns, acknowledgements) use, since
reading a bank's answer does not depend on our side of the file. Writers come from the worker's
:class:`~services.payouts.config.PayoutsConfig` (``SETTLE_PAYOUTS_CONFIG``)."""


# --- transport -------------------------------------------------------------------------------------------
class TransportError(PermanentError):
    """The transport refused a file (e.g. a different file already has its name)."""


class DirectoryTransport:
    """Hands a file to the bank by writing it into a directory (an SFTP drop's local side): a temp file,
    fsync, rename to the file's name, fsync of the directory. Sending the same bytes again is a no-op."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, name: str, content: bytes, sha256: str) -> Path:
        assert "/" not in name and not name.startswith(".")
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / name
        if target.exists():
            if hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
                return target  # a recognised resend: the bank already has exactly these bytes
            raise TransportError(f"{target} exists with different bytes: refusing to overwrite a sent file")
        temp = self.directory / f".{name}.tmp"
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return target


# --- reads ------------------------------------------------------------------------------------------------
async def _payee(conn: asyncpg.Connection, event_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("select * from payouts.payees where event_id = $1", event_id)
    return row


async def _latest_payee(conn: asyncpg.Connection, supplier_id: str, at: datetime) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """select * from payouts.payees where supplier_id = $1 and at <= $2
            order by at desc, event_id desc limit 1""",
        supplier_id,
        at,
    )
    return row


_DETAILS = "p.rail || ' ' || p.account::text"
"""A payee version's details as R16 compares them: rail and account (jsonb's text form is canonical)."""


async def _failed_attempts(conn: asyncpg.Connection, payout_id: str) -> list[FailedAttempt]:
    rows = await conn.fetch(
        f"""select f.attempt, f.kind, f.code, coalesce({_DETAILS}, f.payee_event_id) as details
              from payouts.payee_flags f left join payouts.payees p on p.event_id = f.payee_event_id
             where f.payout_id = $1 order by f.attempt""",
        payout_id,
    )
    return [FailedAttempt(r["attempt"], r["kind"], r["code"], r["details"]) for r in rows]


async def _payee_details(conn: asyncpg.Connection, event_id: str) -> str | None:
    details: str | None = await conn.fetchval(f"select {_DETAILS} from payouts.payees p where event_id = $1", event_id)
    return details


# --- 1. cut -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    payout: asyncpg.Record
    attempt: int
    payee: asyncpg.Record
    retry: bool


async def _candidates(conn: asyncpg.Connection, tick: datetime) -> list[Candidate]:
    """Payouts to put in a file now: planned ones not in a live file item (their planning payee), those
    waiting for an operator (routed again with the latest payee) and failed ones R16 — or an operator's
    ``settle payouts retry`` — lets go again."""
    out: list[Candidate] = []
    rows = await conn.fetch(
        """select p.* from payouts.payouts p
            where p.state in ('planned', 'waiting_operator', 'returned', 'rejected')
              and not exists (select 1 from payouts.payout_file_items i
                               where i.payout_id = p.payout_id and (i.outcome is null or i.outcome = 'completed'))
            order by p.payout_id for update""",
    )
    for row in rows:
        if row["state"] == "planned" and row["attempt"] == 0:
            payee = await _payee(conn, row["payee_event_id"])
            if payee is not None and not await _held_by_flag(conn, row, payee):
                out.append(Candidate(row, 1, payee, retry=False))
            continue
        latest = await _latest_payee(conn, row["supplier_id"], tick)
        if latest is None:
            continue
        if row["state"] == "waiting_operator":
            if not await _held_by_flag(conn, row, latest):
                out.append(Candidate(row, max(row["attempt"], 0) + 1, latest, retry=row["attempt"] > 0))
            continue
        if row["state"] in ("returned", "rejected") and (
            may_retry(await _failed_attempts(conn, row["payout_id"]), await _payee_details(conn, latest["event_id"]))
            or await _operator_retry(conn, row["payout_id"], row["attempt"])
        ):
            out.append(Candidate(row, row["attempt"] + 1, latest, retry=True))
    return out


async def _held_by_flag(conn: asyncpg.Connection, payout: asyncpg.Record, payee: asyncpg.Record) -> bool:
    """R16 "flags the payee": an account the bank returned or rejected (other than R01/R09, which may be
    presented again) gets no new payout until the payee's details change — the payout waits for an
    operator, with the flag as its reason. True when it was held so."""
    flag = await conn.fetchrow(
        f"""select f.kind, f.code, f.payout_id from payouts.payee_flags f
              join payouts.payees p on p.event_id = f.payee_event_id
             where f.supplier_id = $1 and f.payout_id <> $3
               and not (f.kind = 'return' and f.code in ('R01', 'R09'))
               and {_DETAILS} = (select {_DETAILS} from payouts.payees p where p.event_id = $2)
             order by f.at desc limit 1""",
        payout["supplier_id"],
        payee["event_id"],
        payout["payout_id"],
    )
    if flag is None:
        return False
    await _wait_for_operator(
        conn,
        payout["payout_id"],
        f"payee flagged: payout {flag['payout_id']} was {flag['kind']}ed ({flag['code']}) to these account details; "
        "waiting for new details (supplier.payee_updated)",
    )
    return True


async def _operator_retry(conn: asyncpg.Connection, payout_id: str, attempt: int) -> bool:
    """``settle payouts retry``: an operator asked for one more attempt after this failed one."""
    found = await conn.fetchval(
        "select 1 from payouts.retry_overrides where payout_id = $1 and after_attempt = $2", payout_id, attempt
    )
    return found is not None


TRACES_PER_PAYOUT = 2
"""Trace numbers a file reserves per payout: its entry, and at most one offset entry per batch."""


async def _first_trace(conn: asyncpg.Connection, rail: str) -> int:
    """Where the rail's next file starts its trace numbers: after the previous file's reservation (files of
    a rail are cut one after another, under the clock row's lock: deterministic). Files from before
    migration 0075 carry no reservation: continue after the highest trace among their entries."""
    reserved = await conn.fetchval(
        """select next_trace from payouts.payout_files where rail = $1 and next_trace is not null
            order by tick desc, sequence desc limit 1""",
        rail,
    )
    if reserved is not None:
        return int(reserved)
    highest = await conn.fetchval(
        """select max(right(i.rail_reference, 7)::bigint) from payouts.payout_file_items i
             join payouts.payout_files f using (file_id)
            where f.rail = $1 and i.rail_reference ~ '^[0-9]{15}$'""",
        rail,
    )
    return 1 if highest is None else int(highest) + TRACES_PER_PAYOUT


async def _wait_for_operator(conn: asyncpg.Connection, payout_id: str, reason: str) -> None:
    await conn.execute(
        """update payouts.payouts set state = 'waiting_operator', rail_reason = $2, updated_at = now()
            where payout_id = $1 and (state <> 'waiting_operator' or rail_reason is distinct from $2)""",
        payout_id,
        reason[:1000],
    )


async def cut_files(
    conn: asyncpg.Connection,
    *,
    configs: Mapping[str, RailConfig] = DEFAULT_RAILS,
    rail_impls: Mapping[str, Rail] = RAILS,
) -> list[str]:
    """One round of cutting, in the caller's transaction. Returns the ids of the files built."""
    tick: datetime | None = await conn.fetchval("select at from payouts.clock where id for update")
    if tick is None:
        return []
    by_rail: dict[tuple[str, str], list[tuple[Candidate, PayoutInstruction]]] = defaultdict(list)
    for c in await _candidates(conn, tick):
        p = c.payout
        routed = route(
            p["payout_amount_minor"], p["payout_currency"], c.payee["rail"], c.payee["fallback_rail"], configs
        )
        if routed.rail is None or routed.rail not in rail_impls:
            await _wait_for_operator(conn, p["payout_id"], routed.reason)
            continue
        try:
            instruction = instruction_for(
                payout_id=p["payout_id"],
                attempt=c.attempt,
                rail=routed.rail,
                account=c.payee["account"],
                amount_minor=p["payout_amount_minor"],
                currency=p["payout_currency"],
                effective_date=effective_date(configs[routed.rail], tick),
            )
        except (KeyError, ValueError, InvalidBatchError) as exc:
            await _wait_for_operator(conn, p["payout_id"], f"{routed.rail}: account unusable ({type(exc).__name__})")
            continue
        problems = rail_impls[routed.rail].validate(instruction.payee)
        if problems:
            await _wait_for_operator(conn, p["payout_id"], f"{routed.rail}: " + "; ".join(problems))
            continue
        by_rail[(routed.rail, instruction.currency)].append((c, instruction))  # one currency a file: its total
    built: list[str] = []
    posted: list[Entry] = []
    # A rail's artefact carries at most max_per_file payouts (RTP and FedNow: one per message): more are cut
    # into several files of the round, each with its own sequence.
    chunks = [
        (rail_name, currency, by_rail[(rail_name, currency)][k : k + rail_impls[rail_name].max_per_file])
        for rail_name, currency in sorted(by_rail)
        for k in range(0, len(by_rail[(rail_name, currency)]), rail_impls[rail_name].max_per_file)
    ]
    for rail_name, currency, items in chunks:
        # The file's number among this rail's files of the tick's UTC day: NACHA's file id modifier (a second
        # file of a day must never look like a resend of the first). Ticks only move forward: deterministic.
        sequence: int = await conn.fetchval(
            """select count(*) from payouts.payout_files
                where rail = $1 and (tick at time zone 'UTC')::date = ($2::timestamptz at time zone 'UTC')::date""",
            rail_name,
            tick,
        )
        ident = file_identity(rail_name, tick, sequence)
        first_trace = await _first_trace(conn, rail_name)
        batch = PayoutBatch(
            ident.batch_id, tick, tuple(i for _, i in items), sequence=sequence, first_trace=first_trace
        )
        built_file = rail_impls[rail_name].build(batch)
        await conn.execute(
            """insert into payouts.payout_files (file_id, rail, tick, sequence, batch_id, name, effective_date, state,
                   content, sha256, media_type, entry_count, total_minor, currency, next_trace)
               values ($1, $2, $3, $4, $5, $6, $7, 'built', $8, $9, $10, $11, $12, $13, $14)""",
            ident.file_id,
            rail_name,
            tick,
            sequence,
            ident.batch_id,
            ident.name,
            min(i.effective_date for _, i in items),
            built_file.content,
            built_file.digest,
            built_file.media_type,
            built_file.count,
            sum(i.amount_minor for _, i in items),
            currency,
            first_trace + TRACES_PER_PAYOUT * len(items),
        )
        await _file_state(conn, ident.file_id, "built", f"{built_file.count} payouts, sha256 {built_file.digest}")
        for c, instruction in items:
            p = c.payout
            await conn.execute(
                """insert into payouts.payout_file_items (file_id, payout_id, attempt, ref, rail_reference,
                       payee_event_id, amount_minor, currency) values ($1, $2, $3, $4, $5, $6, $7, $8)""",
                ident.file_id,
                p["payout_id"],
                c.attempt,
                instruction.payout_id,
                built_file.references[instruction.payout_id],
                c.payee["event_id"],
                instruction.amount_minor,
                instruction.currency,
            )
            await conn.execute(
                """update payouts.payouts set attempt = $2, file_id = $3, sent_rail = $4, rail_reason = null,
                       state = 'planned', updated_at = now() where payout_id = $1""",
                p["payout_id"],
                c.attempt,
                ident.file_id,
                rail_name,
            )
            if c.attempt > 1:  # an earlier attempt failed: its reversal put the money back in the payable
                entry, specs = entries.rail_entry(
                    "payout.retried",
                    ledger_key=ledger_key(p["payout_id"], c.attempt, instruction.payout_id),
                    supplier_id=p["supplier_id"],
                    payout_currency=p["payout_currency"],
                    amount_minor=p["payout_amount_minor"],
                    at=tick,
                )
                await ensure_accounts(conn, specs)
                posted.append(entry)
        built.append(ident.file_id)
        log.info(
            "payout file built", file_id=ident.file_id, rail=rail_name, payouts=len(items), sha256=built_file.digest
        )
    if posted:
        await post(conn, posted)  # last: it holds the ledger's chain heads until commit
    return built


def ledger_key(payout_id: str, attempt: int, ref: str) -> str:
    """The cause of an attempt's ledger entries: the payout id for the first attempt (its planned entry's
    cause, so reconciliation nets them), the attempt's rail reference for a retry."""
    return payout_id if attempt == 1 else ref


async def _file_state(conn: asyncpg.Connection, file_id: str, state: str, detail: str | None = None) -> None:
    await conn.execute(
        "insert into payouts.payout_file_states (file_id, state, detail) values ($1, $2, $3)", file_id, state, detail
    )


# --- 2. send ------------------------------------------------------------------------------------------------
def _event(
    payout: Mapping[str, Any],
    state: str,
    invoices: tuple[list[str], list[str]],
    *,
    file_id: str | None,
    code: str | None = None,
) -> Any:
    ids, numbers = invoices
    return planner.event_of(dict(payout) | {"state": state}).model_copy(
        update={"file_id": file_id, "return_code": code, "invoices": ids, "invoice_numbers": numbers}
    )


async def send_built(pool: asyncpg.Pool, transport: DirectoryTransport) -> list[str]:
    """Hand every ``built`` file to the transport, then mark it ``submitted`` and its payouts ``sent``."""
    async with pool.acquire() as conn:
        files = await conn.fetch(
            """select file_id, name, content, sha256 from payouts.payout_files
                where state = 'built' order by built_at, file_id"""
        )
    sent: list[str] = []
    failed: Exception | None = None
    for f in files:
        content = bytes(f["content"])
        assert hashlib.sha256(content).hexdigest() == f["sha256"], "a stored file is what was built"
        try:
            path = await asyncio.to_thread(transport.send, f["name"], content, f["sha256"])
        except Exception as error:  # this file stays built (sent again next round); the others go on
            log.error("payout file not sent", file_id=f["file_id"], error=f"{type(error).__name__}: {error}")
            failed = failed or error
            continue
        async with transaction(pool) as conn:
            if await mark_submitted(conn, f["file_id"], str(path)):
                sent.append(f["file_id"])
    if failed is not None:
        raise failed
    return sent


async def mark_submitted(conn: asyncpg.Connection, file_id: str, path: str) -> bool:
    row = await conn.fetchrow("select * from payouts.payout_files where file_id = $1 for update", file_id)
    if row is None or row["state"] != "built":
        return False
    await conn.execute(
        "update payouts.payout_files set state = 'submitted', path = $2, submitted_at = now() where file_id = $1",
        file_id,
        path,
    )
    await _file_state(conn, file_id, "submitted", path)
    emitter = Emitter("payouts")
    items = await conn.fetch(
        "select * from payouts.payout_file_items where file_id = $1 and outcome is null order by payout_id", file_id
    )
    for item in items:
        payout = await conn.fetchrow("select * from payouts.payouts where payout_id = $1 for update", item["payout_id"])
        await conn.execute(
            "update payouts.payouts set state = 'sent', updated_at = now() where payout_id = $1", item["payout_id"]
        )
        emitter.emit(
            topics.PAYOUTS,
            key=payout["supplier_id"],
            type="payout.sent",
            time=row["tick"],
            cause=None,
            event_id=derive_id("event", "payout.sent", item["payout_id"], item["attempt"]),
            data=_event(payout, "sent", await store.payout_invoices(conn, payout), file_id=file_id),
            correlation_id=item["payout_id"],
        )
    await write_outbox(conn, emitter.drain())
    log.info("payout file submitted", file_id=file_id, path=path, payouts=len(items))
    return True


# --- 3. bank results -----------------------------------------------------------------------------------------
async def _item_by_key(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """select * from payouts.payout_file_items
            where (attempt = 1 and payout_id = $1) or ref = $1
            order by attempt desc limit 1 for update""",
        key,
    )
    return row


async def _settle_file_if_done(conn: asyncpg.Connection, file_id: str) -> None:
    counts = await conn.fetchrow(
        """select count(*) filter (where outcome is null) as open, count(*) filter (where outcome = 'rejected') as rej,
                  count(*) as n from payouts.payout_file_items where file_id = $1""",
        file_id,
    )
    if counts["open"] > 0:
        return
    state = "rejected" if counts["rej"] == counts["n"] else "settled"
    done = await conn.execute(
        "update payouts.payout_files set state = $2 where file_id = $1 and state not in ('settled', 'rejected')",
        file_id,
        state,
    )
    if done.endswith("1"):
        await _file_state(conn, file_id, state)


async def acknowledge(conn: asyncpg.Connection, file_id: str) -> bool:
    row = await conn.fetchrow("select state from payouts.payout_files where file_id = $1 for update", file_id)
    if row is None:
        log.warning("acknowledgement of an unknown payout file", file_id=file_id)
        return False
    if row["state"] != "submitted":
        return False  # built: not sent yet; acknowledged or later: a repeat
    await conn.execute(
        "update payouts.payout_files set state = 'acknowledged', acknowledged_at = now() where file_id = $1", file_id
    )
    await _file_state(conn, file_id, "acknowledged")
    return True


async def _acknowledge_message(conn: asyncpg.Connection, rail: str, message: str) -> None:
    """A status report about one of our messages (ISO: its MsgId, derived from the file's batch id) that
    did not reject it: the bank has the file. Only a ``submitted`` file moves (a repeat does nothing)."""
    rows = await conn.fetch(
        """select file_id, batch_id from payouts.payout_files
            where rail = $1 and (batch_id = $2 or length(batch_id) > 35)""",  # a longer id is hashed (MsgId)
        rail,
        message,
    )
    named = [r["file_id"] for r in rows if message in (r["batch_id"], iso_message_id(r["batch_id"]))]
    if not named:
        log.warning("status report about no payout file of ours", rail=rail, message=message)
    for file_id in named:
        await acknowledge(conn, file_id)


async def _outcome(
    tx: Tx, item: asyncpg.Record, outcome: str, *, code: str | None, reason: str, at: datetime, cause: Envelope[Any]
) -> None:
    """An attempt completed, returned or rejected: item, payout, ledger, flag, event."""
    conn = tx.conn
    payout = await conn.fetchrow("select * from payouts.payouts where payout_id = $1 for update", item["payout_id"])
    key = ledger_key(item["payout_id"], item["attempt"], item["ref"])
    previous = item["outcome"]
    if outcome == "completed":
        kind = "payout.completed"
    elif previous == "completed":
        kind = "payout.returned_after_completion"
    else:
        kind = "payout.returned" if outcome == "returned" else "payout.rejected"
    await conn.execute(
        """update payouts.payout_file_items set outcome = $3, code = $4, outcome_at = $5
            where file_id = $1 and payout_id = $2""",
        item["file_id"],
        item["payout_id"],
        outcome,
        code,
        at,
    )
    latest = payout["attempt"] == item["attempt"]
    if latest:
        await conn.execute(
            "update payouts.payouts set state = $2, updated_at = now() where payout_id = $1", item["payout_id"], outcome
        )
    if outcome != "completed":
        await conn.execute(
            """insert into payouts.payee_flags (supplier_id, payee_event_id, payout_id, attempt, kind, code, reason, at)
               values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing""",
            payout["supplier_id"],
            item["payee_event_id"],
            item["payout_id"],
            item["attempt"],
            "return" if outcome == "returned" else "reject",
            code or "",
            reason[:1000],
            at,
        )
    entry, specs = entries.rail_entry(
        kind,
        ledger_key=key,
        supplier_id=payout["supplier_id"],
        payout_currency=item["currency"],
        amount_minor=item["amount_minor"],
        at=at,
    )
    await ensure_accounts(conn, specs)
    tx.post(entry)
    event_type = {"completed": "payout.completed", "returned": "payout.returned", "rejected": "payout.rejected"}[
        outcome
    ]
    tx.emit(
        topics.PAYOUTS,
        key=payout["supplier_id"],
        type=event_type,
        time=at,
        cause=cause,
        event_id=derive_id("event", event_type, item["payout_id"], item["attempt"]),
        data=_event(payout, outcome, await store.payout_invoices(conn, payout), file_id=item["file_id"], code=code),
        correlation_id=item["payout_id"],
    )
    await _settle_file_if_done(conn, item["file_id"])
    log.info("payout outcome", payout_id=item["payout_id"], attempt=item["attempt"], outcome=outcome, code=code)


async def _resolve_return(conn: asyncpg.Connection, rail: str, answer: RailReturn) -> list[asyncpg.Record]:
    """The live (or completed) attempts an answer of the bank is about — an attempt already returned or
    rejected is not answered twice (the same report imported again changes nothing). An ISO answer names our end-to-end
    id (the attempt's ref) or, for a whole-message reject, the message id (the file's batch id); a NACHA
    return names the trace number, looked up among that rail's attempts, latest file first."""
    if answer.payout_id is not None:
        rows = await conn.fetch(
            """select i.* from payouts.payout_file_items i join payouts.payout_files f using (file_id)
                where i.ref = $1 and f.rail = $2 and (i.outcome is null or i.outcome = 'completed')
                for update of i""",
            answer.payout_id,
            rail,
        )
        if rows:
            return list(rows)
    rows = await conn.fetch(
        """select i.* from payouts.payout_file_items i join payouts.payout_files f using (file_id)
            where f.rail = $2 and f.state <> 'built' and (i.outcome is null or i.outcome = 'completed')
              and (i.rail_reference = $1 or f.batch_id = $1)
            order by f.tick desc, f.sequence desc for update of i""",
        answer.rail_reference,
        rail,
    )
    if not rows:
        return await _resolve_block(conn, rail, answer.rail_reference)
    entries_named = [r for r in rows if r["rail_reference"] == answer.rail_reference]
    if not entries_named:
        return list(rows)  # a whole file refused (the answer names its message id)
    # NACHA trace numbers continue across a rail's files (first_trace), but files built before migration 0075
    # restarted theirs: among live attempts with this trace, the one whose amount the return states; still
    # more than one → ambiguous, never guessed (an operator reads the log).
    if len(entries_named) > 1 and answer.amount_minor is not None:
        entries_named = [r for r in entries_named if r["amount_minor"] == answer.amount_minor]
    if len(entries_named) != 1:
        log.error("bank answer matches several payouts: not applied", rail=rail, reference=answer.rail_reference)
        return []
    return entries_named


async def _resolve_block(conn: asyncpg.Connection, rail: str, block_id: str) -> list[asyncpg.Record]:
    """A pain.001 payment-information block rejected as a whole (``OrgnlPmtInfId`` = ``<MsgId>-NNNNNN``):
    the live attempts whose end-to-end ids the block of our sent file carries."""
    if rail not in ("wire", "sepa") or "-" not in block_id:
        return []
    sent = await conn.fetch(
        """select file_id, content from payouts.payout_files
            where rail = $1 and state <> 'built' and left(batch_id, 28) = $2 order by tick desc, sequence desc""",
        rail,
        block_id.rsplit("-", 1)[0],
    )
    for file in sent:
        refs = block_end_to_end_ids(bytes(file["content"]), block_id)
        if refs:
            return list(
                await conn.fetch(
                    """select * from payouts.payout_file_items
                        where file_id = $1 and ref = any($2::text[]) and (outcome is null or outcome = 'completed')
                        order by payout_id for update""",
                    file["file_id"],
                    refs,
                )
            )
    return []


async def apply_returns(tx: Tx, data: PayoutReturnsReceived, event: Envelope[Any]) -> int:
    content = base64.b64decode(data.content_b64, validate=True)
    if hashlib.sha256(content).hexdigest() != data.sha256:
        raise BankFileError(f"{data.name}: content does not match its sha256")
    answers = RAILS[data.rail].parse_returns(content)
    applied = 0
    for answer in answers:
        if answer.kind == "acknowledgement":
            await _acknowledge_message(tx.conn, data.rail, answer.rail_reference)
            continue
        items = await _resolve_return(tx.conn, data.rail, answer)
        if not items:
            log.warning("bank answer about no payout of ours", rail=data.rail, code=answer.code, file=data.name)
            continue
        for item in items:
            if answer.kind == "notification_of_change":
                await tx.conn.execute(
                    """insert into payouts.payee_notices (payout_id, attempt, code, corrected_data, at)
                       values ($1, $2, $3, $4, $5) on conflict do nothing""",
                    item["payout_id"],
                    item["attempt"],
                    answer.code,
                    answer.corrected_data,
                    event.time,
                )
                continue
            outcome = "returned" if answer.kind == "return" else "rejected"
            await _outcome(tx, item, outcome, code=answer.code, reason=answer.reason, at=event.time, cause=event)
            applied += 1
    return applied


async def confirm_settlement(
    tx: Tx, data: PayoutSettlementConfirmed, event: Envelope[Any], at: datetime | None = None
) -> bool:
    """One confirmation (alone, or an item of a ``payout.settlements_confirmed``, dated ``at``: its
    ``booked_on``): the payout's attempt becomes ``completed``, in transit → cash."""
    item = await _item_by_key(tx.conn, data.reference)
    if item is None or item["outcome"] is not None:
        return False  # not ours, or already completed / failed (reconciliation confirms on every run)
    state = await tx.conn.fetchval("select state from payouts.payout_files where file_id = $1", item["file_id"])
    if state == "built":
        log.warning("settlement confirmed for a payout file not yet sent", file_id=item["file_id"])
        return False
    if (item["amount_minor"], item["currency"]) != (data.amount_minor, data.currency):
        log.warning("settlement confirmation disagrees on the amount", reference=data.reference)
        return False
    await _outcome(tx, item, "completed", code=None, reason=data.bank_record, at=at or event.time, cause=event)
    return True


async def on_bank_results(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    for event in events:
        data = event.data
        if isinstance(data, PayoutFileAcknowledged):
            await acknowledge(tx.conn, data.file_id)
        elif isinstance(data, PayoutReturnsReceived):
            await apply_returns(tx, data, event)
        elif isinstance(data, PayoutSettlementsConfirmed):
            for item in data.confirmations:
                booked = datetime.combine(date.fromisoformat(item.booked_on), time(0), UTC)
                await confirm_settlement(tx, item, event, at=booked)
        elif isinstance(data, PayoutSettlementConfirmed):  # one a message: what runs before 2026-12-07 sent
            await confirm_settlement(tx, data, event)


BANK_RESULTS = Subscription(
    consumer="payouts-bank",
    producer="payouts",
    topics=(topics.PAYOUT_BANK_RESULTS,),
    handler=on_bank_results,
    batch_max=100,
)


# --- gauges and the worker's task ------------------------------------------------------------------------
async def refresh_gauges(conn: asyncpg.Connection) -> None:
    metrics.PAYOUTS.clear()
    for r in await conn.fetch(
        "select state, coalesce(sent_rail, rail, '-') as rail, count(*) as n from payouts.payouts group by 1, 2"
    ):
        metrics.PAYOUTS.labels(r["state"], r["rail"]).set(r["n"])
    metrics.RETURNS.clear()
    for r in await conn.fetch("select kind, code, count(*) as n from payouts.payee_flags group by 1, 2"):
        metrics.RETURNS.labels(r["kind"], r["code"]).set(r["n"])
    metrics.IN_TRANSIT.clear()
    for r in await conn.fetch(
        """select i.currency, sum(i.amount_minor) as s from payouts.payout_file_items i
             join payouts.payout_files f using (file_id)
            where i.outcome is null and f.state <> 'built' group by 1""",
    ):
        metrics.IN_TRANSIT.labels(r["currency"]).set(int(r["s"]) / 10 ** currency_exponent(r["currency"]))
    age = await conn.fetchval(
        """select extract(epoch from now() - min(coalesce(submitted_at, built_at)))::float8
             from payouts.payout_files where state in ('built', 'submitted')"""
    )
    metrics.OLDEST_UNACKNOWLEDGED.set(age or 0)
    metrics.WAITING_OPERATOR.set(
        await conn.fetchval("select count(*) from payouts.payouts where state = 'waiting_operator'")
    )
    metrics.TICKS_UNPLANNED.set(await conn.fetchval("select count(*) from payouts.ticks where not planned"))


async def run_round(
    pool: asyncpg.Pool, transport: DirectoryTransport | None, config: payouts_config.PayoutsConfig | None = None
) -> tuple[list[str], list[str]]:
    """Cut, then send: one round of the worker's task (also what a test drives directly)."""
    built: list[str] = []
    sent: list[str] = []
    if transport is not None:
        async with transaction(pool) as conn:
            if config is None:
                built = await cut_files(conn)
            else:
                built = await cut_files(conn, configs=config.rails, rail_impls=config.rail_impls)
        sent = await send_built(pool, transport)
    async with pool.acquire() as conn:
        await refresh_gauges(conn)
    return built, sent


async def files_task(runtime: Runtime) -> None:
    directory = runtime.settings.payout_outbox_dir
    transport = DirectoryTransport(directory) if directory is not None else None
    config = payouts_config.load(runtime.settings.payouts_config)
    if transport is not None and config.placeholder_originator:
        log.warning(
            "payout files use the built-in PLACEHOLDER originator and debtor accounts; "
            "set SETTLE_PAYOUTS_CONFIG before a real bank sees a file"
        )
    while not runtime.stop.is_set():
        try:
            await run_round(runtime.pool, transport, config)
        except Exception as error:  # the task must not stop the worker: log, try again next round
            log.error("payout files round failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stop.wait(), timeout=runtime.settings.payout_files_interval_s)
