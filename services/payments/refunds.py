"""Refunds: money paid on an invoice given back — from a credit note on a paid invoice (R11) or an
operator's ``settle payments refund`` — and sent to the card charge that paid it.

The allocation (R11) decides *how much* comes back (never more than was paid on the invoice) and
posts ``Dr renter unapplied / Cr renter refunds_payable``. This module turns each amount given back
into one ``payments.refunds`` row, created once (its id derives from what caused it):

* the invoice was paid by a collected charge → ``pending`` on that charge's gateway; the collector
  sends it with the refund's own idempotency key (a resend after a crash cannot refund twice) and, on
  success, posts ``Dr refunds_payable / Cr processor_clearing:<gateway>`` and publishes
  ``payment.refunded``;
* it was paid by a bank receipt (wire, ACH or SEPA credit, stablecoin) → ``manual``: finance pays it
  back over the bank and it stays on ``settle payments list --refunds`` until an operator reports it
  paid (``settle payments refund-paid``: ``Dr refunds_payable / Cr cash_clearing``, published as
  ``payment.refunded``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import structlog

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import AccountSpec, ensure_accounts
from libs.ledger.postings import build_entry, credit, debit
from libs.messaging.consume import Tx
from libs.money import minor_to_ledger
from schemas import topics
from schemas.events import PaymentEvent
from services.payments.domain.allocation import Allocation
from services.payments.gateways.port import RefundResult
from services.payments.money import shown

log = structlog.get_logger("settle.payments.refunds")


async def open_rows(
    conn: asyncpg.Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, asyncpg.Record]]:
    """(renter, currency) → its refund rows not failed or cancelled, by refund id: one statement for a batch."""
    found: dict[tuple[str, str], dict[str, asyncpg.Record]] = {}
    for r in await conn.fetch(
        """select f.renter_id, f.currency, f.refund_id, f.state, f.amount_minor, f.overpaid_minor
             from payments.refunds f
             join unnest($1::text[], $2::text[]) as k (renter_id, currency) using (renter_id, currency)
            where f.state not in ('failed', 'cancelled')""",
        [r for r, _ in keys],
        [c for _, c in keys],
    ):
        found.setdefault((r["renter_id"], r["currency"]), {})[r["refund_id"]] = r
    return found


def rest_of(refund_id: str, n: int = 1) -> str:
    """The id of the n-th refund that gives back the rest of ``refund_id`` once it and the rests before left
    with less than the allocation now gives back."""
    return derive_id("refund", refund_id, "rest") if n == 1 else derive_id("refund", refund_id, "rest", n)


_NOT_SENT = ("pending", "manual")


def _rests_of_sent(
    wanted: list[tuple[str, str, int, datetime, str]], open_rows: dict[str, asyncpg.Record]
) -> tuple[list[tuple[str, str, int, datetime, str]], dict[str, int]]:
    """``wanted`` with each refund already sent (or being sent) with another amount replaced by what is
    left of it: the allocation's amount minus what it and its rests sent, as the next rest (:func:`rest_of`).
    Also returns what each refund sent beyond what the allocation now gives back (by refund id; the renter
    was paid back too much): a refund it no longer gives back at all, or one it gives back less of (its
    rests included)."""
    out: list[tuple[str, str, int, datetime, str]] = []
    overpaid: dict[str, int] = {}
    followed: set[str] = set()
    for refund_id, invoice_number, amount, at, reason in wanted:
        followed.add(refund_id)
        known = open_rows.get(refund_id)
        if known is None or known["state"] in _NOT_SENT:
            out.append((refund_id, invoice_number, amount, at, reason))
            continue
        sent, n = known["amount_minor"], 1  # the chain: rests sent, then at most one not sent (the last)
        while (rest := open_rows.get(rest_of(refund_id, n))) is not None and rest["state"] not in _NOT_SENT:
            followed.add(rest_of(refund_id, n))
            sent += rest["amount_minor"]
            n += 1
        followed.add(rest_of(refund_id, n))
        if amount > sent:
            out.append(
                (rest_of(refund_id, n), invoice_number, amount - sent, at, f"{reason}: the rest of refund {refund_id}")
            )
        elif amount < sent:
            overpaid[refund_id] = sent - amount
            log.warning(
                "refund already sent for more than the allocation now gives back: the renter was paid back too much",
                refund_id=refund_id,
                sent_minor=sent,
                wanted_minor=amount,
            )
    for refund_id, row in open_rows.items():
        if refund_id not in followed and row["state"] not in _NOT_SENT:
            overpaid[refund_id] = row["amount_minor"]  # sent, and not given back at all any more
    return out, overpaid


async def _note_overpaid(
    conn: asyncpg.Connection, open_rows: dict[str, asyncpg.Record], overpaid: dict[str, int]
) -> None:
    """Keep each refund's amount sent beyond what the allocation gives back (zero for the others); writes
    only what changed (nothing, almost always)."""
    changed = {i: overpaid.get(i, 0) for i, r in open_rows.items() if r["overpaid_minor"] != overpaid.get(i, 0)}
    if changed:
        await conn.execute(
            """update payments.refunds f set overpaid_minor = c.minor
                 from unnest($1::text[], $2::bigint[]) as c (refund_id, minor) where f.refund_id = c.refund_id""",
            list(changed),
            list(changed.values()),
        )


async def ensure_rows(
    conn: asyncpg.Connection,
    renter_id: str,
    currency: str,
    result: Allocation,
    open_rows: dict[str, asyncpg.Record],
) -> int:
    """One refund row per amount the allocation gives back. Returns rows created. ``open_rows``: the
    renter-currency's rows not failed or cancelled (:func:`open_rows`).

    A row not sent yet (``pending``) or not paid by hand yet (``manual``) follows the allocation: another
    amount replaces its amount (and the charge it goes to), and a refund the allocation no longer gives
    back is ``cancelled`` — so what leaves is what refunds_payable holds. A row already sent keeps its
    amount: when the allocation then gives back *more*, the rest goes as one more refund (``rest_of``),
    which follows the allocation like any row not sent; when it gives back less, the renter was paid back
    too much — kept on the row as ``overpaid_minor`` (listed, counted, alerted; README, payments gaps)."""
    wanted: list[tuple[str, str, int, datetime, str]] = []
    for app in result.credit_note_refunds:
        wanted.append(
            (derive_id("refund", app.source_id, app.invoice_number), app.invoice_number, app.amount_minor, app.at,
             f"{_CREDIT_NOTE_REASON}{app.source_id} on a paid invoice")
        )  # fmt: skip
    taken = {a.source_id: a for a in result.applications if a.amount_minor < 0}
    for source_id, amount in result.money_out_taken.items():
        if not source_id.startswith("refund:") or amount <= 0:
            continue
        app = taken[source_id]
        wanted.append((source_id.split(":", 1)[1], app.invoice_number, amount, app.at, "operator refund"))
    wanted, overpaid = _rests_of_sent(wanted, open_rows)
    await _note_overpaid(conn, open_rows, overpaid)
    wanted_ids = {w[0] for w in wanted}
    for refund_id, row in sorted(open_rows.items()):
        if refund_id in wanted_ids or row["state"] not in ("pending", "manual"):
            continue
        await conn.execute(
            """update payments.refunds set state = 'cancelled',
                   message = 'the allocation no longer gives this amount back (late money or a late invoice)'
                where refund_id = $1 and state in ('pending', 'manual')""",
            refund_id,
        )
    created = 0
    for refund_id, invoice_number, amount, at, reason in wanted:
        known = open_rows.get(refund_id)
        if known is not None and known["amount_minor"] == amount:
            continue
        if known is not None and known["state"] not in _NOT_SENT:
            continue  # sent meanwhile (the chain above took it into account)
        # The invoice's card charge that can take the whole refund: what it paid on the invoice less what
        # other refunds (not failed or cancelled) already take from it — a processor refuses more.
        charge = await conn.fetchrow(
            """select a.attempt_id, a.gateway, a.charge_id from payments.applications ap
                 join payments.attempts a on ap.source_id = 'attempt:' || a.attempt_id
                where ap.renter_id = $1 and ap.invoice_number = $2 and a.state = 'succeeded' and a.charge_id is not null
                  and ap.amount_minor - coalesce((select sum(r.amount_minor) from payments.refunds r
                                                   where r.attempt_id = a.attempt_id and r.refund_id <> $4
                                                     and r.state not in ('failed', 'cancelled')), 0) >= $3
                order by ap.amount_minor desc, a.attempt_id limit 1""",
            renter_id,
            invoice_number,
            amount,
            refund_id,
        )
        status = await conn.execute(
            """insert into payments.refunds (refund_id, renter_id, currency, invoice_number, amount_minor, at, reason,
                   attempt_id, gateway, idempotency_key, state, charge_id, message)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
               on conflict (refund_id) do update set amount_minor = excluded.amount_minor, at = excluded.at,
                   attempt_id = excluded.attempt_id, gateway = excluded.gateway, state = excluded.state,
                   charge_id = excluded.charge_id, message = excluded.message
               where payments.refunds.state in ('pending', 'manual', 'cancelled')""",
            refund_id,
            renter_id,
            currency,
            invoice_number,
            amount,
            at,
            reason,
            charge["attempt_id"] if charge else None,
            charge["gateway"] if charge else None,
            derive_id("idempotency", "refund", refund_id),
            "pending" if charge else "manual",
            charge["charge_id"] if charge else None,
            "" if charge else "paid by a bank receipt: refund it over the bank",
        )
        created += int(status.endswith("1"))
    return created


async def claim(pool: asyncpg.Pool, stale_after_s: float, limit: int = 100) -> list[asyncpg.Record]:
    """Refunds to send: ``pending`` ones, and ``sending`` ones a crash or a timeout left behind (sent
    again with the *same* idempotency key: the processor refunds once)."""
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                """update payments.refunds set state = 'sending', sent_at = now()
                    where refund_id in (select refund_id from payments.refunds
                                         where state = 'pending'
                                            or (state = 'sending' and sent_at < now() - make_interval(secs => $1))
                                         order by created_at limit $2 for update skip locked)
                returning *""",
                stale_after_s,
                limit,
            )
        )


async def record(tx: Tx, refund: asyncpg.Record, result: RefundResult) -> str:
    """Commit a gateway's answer to a refund; unknown: left ``sending`` (asked again, same key)."""
    conn = tx.conn
    row = await conn.fetchrow("select * from payments.refunds where refund_id = $1 for update", refund["refund_id"])
    assert row is not None
    if row["state"] != "sending" or result.outcome == "unknown":
        return str(row["state"])
    if result.outcome != "succeeded":
        await conn.execute(
            "update payments.refunds set state = 'failed', message = $2, overpaid_minor = 0 where refund_id = $1",
            row["refund_id"],
            f"{result.outcome}: {result.code or result.message}"[:500],
        )
        return "failed"
    await conn.execute(
        "update payments.refunds set state = 'succeeded', processor_id = $2, message = '' where refund_id = $1",
        row["refund_id"],
        result.refund_id,
    )
    clearing = chart.processor_clearing(row["gateway"], row["currency"])
    book(
        tx,
        dict(row),
        clearing,
        entry_id=derive_id("payments.refunded", row["refund_id"]),
        kind="payments.refunded",
        at=row["at"],
        # The processor's refund id is a reference reconciliation matches the processor's line by (R17).
        description=f"refund {row['refund_id']} of {row['invoice_number']}"
        + (f", processor refund {result.refund_id}" if result.refund_id else "")
        + f" ({row['reason']})",
    )
    await ensure_accounts(conn, [chart.refunds_payable(row["renter_id"], row["currency"]), clearing])
    return "succeeded"


async def record_paid_by_bank(
    tx: Tx, *, refund_id: str, renter_id: str, currency: str, reference: str, paid_at: datetime, by: str
) -> str:
    """An operator reports a ``manual`` refund paid over the bank (``settle payments refund-paid``):
    ``Dr refunds_payable / Cr cash_clearing`` on the day it left, the bank reference in the entry's
    description (reconciliation matches it with the bank's debit line) and ``payment.refunded``
    published. Returns the outcome kept with the command."""
    conn = tx.conn
    row = await conn.fetchrow(
        "select * from payments.refunds where refund_id = $1 and renter_id = $2 and currency = $3 for update",
        refund_id,
        renter_id,
        currency,
    )
    if row is None:
        return f"refused: no refund {refund_id} of {renter_id} in {currency}"
    if row["state"] != "manual":
        return f"refused: refund {refund_id} is {row['state']}, not waiting for a bank payment"
    if not reference.strip():
        return "refused: a bank payment names the bank's reference"
    await conn.execute(
        "update payments.refunds set state = 'succeeded', processor_id = $2, message = $3 where refund_id = $1",
        refund_id,
        reference,
        f"paid over the bank on {paid_at.date().isoformat()} (reported by {by})"[:500],
    )
    cash = chart.cash_clearing(currency)
    book(
        tx,
        dict(row),
        cash,
        entry_id=derive_id("payments.refund_paid", refund_id),
        kind="payments.refund_paid",
        at=paid_at,
        description=f"refund {refund_id} of {row['invoice_number']} paid over the bank, reference {reference}",
    )
    await ensure_accounts(conn, [chart.refunds_payable(renter_id, currency), cash])
    return f"refund {refund_id} paid over the bank ({reference})"


def book(
    tx: Tx, row: dict[str, Any], counterpart: AccountSpec, *, entry_id: str, kind: str, at: datetime, description: str
) -> None:
    """``Dr refunds_payable / Cr counterpart`` for a refund that left, and ``payment.refunded`` published."""
    currency = row["currency"]
    units = minor_to_ledger(row["amount_minor"], currency)
    entry = build_entry(
        id=entry_id,
        cause_id=row["refund_id"],
        kind=kind,
        occurred_at=at,
        description=description,
        postings=[
            debit(chart.refunds_payable(row["renter_id"], currency).code, units, currency),
            credit(counterpart.code, units, currency),
        ],
    )
    assert entry is not None
    tx.post(entry)
    emit(tx, "payment.refunded", row, reason=row["reason"])


_CREDIT_NOTE_REASON = "credit note "
"""How a refund row that carries a credit note back to the renter states its reason (and its rests'
reasons, which start with it): ``credit note <id> on a paid invoice``."""


def credit_note_of(reason: str) -> str | None:
    """The credit note a refund carries back to the renter, read from its reason; None for an operator's or
    a processor's refund."""
    if not reason.startswith(_CREDIT_NOTE_REASON):
        return None
    return reason[len(_CREDIT_NOTE_REASON) :].split(" ", 1)[0] or None


def emit(tx: Tx, type: str, row: dict[str, Any], *, reason: str) -> None:
    tx.emit(
        topics.PAYMENTS,
        key=row["renter_id"],
        type=type,
        time=row["at"],
        cause=None,
        event_id=derive_id(type, row["refund_id"]),
        data=PaymentEvent(
            payment_id=row["refund_id"],
            renter_id=row["renter_id"],
            currency=row["currency"],
            amount=shown(row["amount_minor"], row["currency"]),
            invoice_number=row["invoice_number"],
            gateway=row["gateway"],
            at=row["at"],
            reason=reason[:500],
            credit_note_id=credit_note_of(row["reason"]),
        ),
    )
