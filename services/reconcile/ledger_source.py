"""The ledger side of reconciliation: an adapter with one method, so the matching never sees SQL.

:class:`LedgerSource` is what a run needs — the postings on the reconciled accounts up to a date.
:class:`PostgresLedgerSource` reads them from ``ledger.postings`` (joined to their entries and accounts)
by the account prefixes of :data:`~services.reconcile.domain.sources.LEDGER_RULES`; the pure
:func:`~services.reconcile.domain.sources.ledger_records` turns them into records. Payout movements are
read from ``platform:payouts_in_transit`` as the payouts service posts them (R15 planning) — when the
rails post a "sent" entry, only the rules change, not this interface. Tests post entries through
``libs.ledger`` and read them back through this adapter.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

import asyncpg

from services.reconcile.domain.sources import LEDGER_RULES, LedgerPosting, LedgerRule


class LedgerSource(Protocol):
    async def postings(self, through: date) -> list[LedgerPosting]:
        """Postings on the reconciled accounts of entries that occurred on or before ``through`` (UTC)."""
        ...


class PostgresLedgerSource:
    def __init__(self, conn: asyncpg.Connection, rules: tuple[LedgerRule, ...] = LEDGER_RULES) -> None:
        self._conn = conn
        self._prefixes = sorted({r.prefix for r in rules})

    async def postings(self, through: date) -> list[LedgerPosting]:
        until = datetime.combine(through + timedelta(days=1), time(0), UTC)
        rows = await self._conn.fetch(
            """
            select e.id, e.cause_id, e.kind, e.occurred_at, e.description, p.account, a.currency, p.amount
              from ledger.postings p
              join ledger.entries e on e.id = p.entry_id
              join ledger.accounts a on a.code = p.account
             where p.account like any($1::text[]) and e.occurred_at < $2
             order by e.id, p.seq
            """,
            [prefix.replace("_", r"\_") + "%" for prefix in self._prefixes],
            until,
        )
        return [
            LedgerPosting(
                r["id"],
                r["cause_id"],
                r["kind"],
                r["occurred_at"],
                r["account"],
                r["currency"],
                int(r["amount"]),
                r["description"],
            )
            for r in rows
        ]
