"""Prepaid wallets (R8): wallet state, top-ups received and pending, the charges a wallet run takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import asyncpg

from services.rating.domain import WalletState, exact_from_x3600, x3600_from_exact


async def load_wallet(conn: asyncpg.Connection, contract_id: str) -> WalletState:
    row = await conn.fetchrow("select * from rating.wallets where contract_id = $1", contract_id)
    if row is None:
        return WalletState()
    periods = await conn.fetch(
        """select period_start, usage_x3600, drawn_x3600, overage_x3600, topups_x3600 from rating.wallet_periods
            where contract_id = $1""",
        contract_id,
    )
    return WalletState(
        balance=exact_from_x3600(row["balance_x3600"]),
        last_topup=None if row["last_topup_x3600"] is None else exact_from_x3600(row["last_topup_x3600"]),
        usage_by_period={p["period_start"]: exact_from_x3600(p["usage_x3600"]) for p in periods},
        drawn_by_period={p["period_start"]: exact_from_x3600(p["drawn_x3600"]) for p in periods},
        overage_by_period={p["period_start"]: exact_from_x3600(p["overage_x3600"]) for p in periods},
        topups_by_period={p["period_start"]: exact_from_x3600(p["topups_x3600"]) for p in periods},
        low_balance_armed=row["low_balance_armed"],
        exhausted=row["exhausted"],
    )


async def save_wallet(conn: asyncpg.Connection, contract_id: str, state: WalletState) -> None:
    await conn.execute(
        """insert into rating.wallets
               (contract_id, balance_x3600, last_topup_x3600, low_balance_armed, exhausted)
           values ($1, $2, $3, $4, $5)
           on conflict (contract_id) do update set balance_x3600 = excluded.balance_x3600,
               last_topup_x3600 = excluded.last_topup_x3600, low_balance_armed = excluded.low_balance_armed,
               exhausted = excluded.exhausted""",
        contract_id,
        x3600_from_exact(state.balance),
        None if state.last_topup is None else x3600_from_exact(state.last_topup),
        state.low_balance_armed,
        state.exhausted,
    )
    periods = state.periods
    if periods:
        await conn.executemany(
            """insert into rating.wallet_periods
                   (contract_id, period_start, usage_x3600, drawn_x3600, overage_x3600, topups_x3600)
               values ($1, $2, $3, $4, $5, $6)
               on conflict (contract_id, period_start) do update set usage_x3600 = excluded.usage_x3600,
                   drawn_x3600 = excluded.drawn_x3600, overage_x3600 = excluded.overage_x3600,
                   topups_x3600 = excluded.topups_x3600""",
            [
                (
                    contract_id,
                    p,
                    x3600_from_exact(state.usage(p)),
                    x3600_from_exact(state.drawn(p)),
                    x3600_from_exact(state.overage(p)),
                    x3600_from_exact(state.topups(p)),
                )
                for p in periods
            ],
        )


@dataclass(frozen=True)
class TopUp:
    seq: int
    event_id: str
    amount: Decimal
    currency: str
    at: datetime


def _topup(row: asyncpg.Record) -> TopUp:
    return TopUp(row["seq"], row["event_id"], row["amount"], row["currency"], row["at"])


async def insert_topup(
    conn: asyncpg.Connection,
    event_id: str,
    contract_id: str,
    amount: Decimal,
    currency: str,
    at: datetime,
    status: str,
) -> None:
    await conn.execute(
        """insert into rating.wallet_topups (event_id, contract_id, amount, currency, at, status)
           values ($1, $2, $3, $4, $5, $6) on conflict (event_id) do nothing""",
        event_id,
        contract_id,
        amount,
        currency,
        at,
        status,
    )


async def held_topups(conn: asyncpg.Connection, contract_id: str) -> list[TopUp]:
    rows = await conn.fetch(
        "select * from rating.wallet_topups where contract_id = $1 and status = 'held' order by seq",
        contract_id,
    )
    return [_topup(r) for r in rows]


async def set_topup_status(conn: asyncpg.Connection, event_id: str, status: str, reason: str | None = None) -> None:
    await conn.execute(
        "update rating.wallet_topups set status = $2, reason = $3 where event_id = $1",
        event_id,
        status,
        reason,
    )


async def topups_due(conn: asyncpg.Connection, contract_id: str, through: datetime) -> list[TopUp]:
    """Received (posted) top-ups not yet run through the wallet, made at or before ``through``."""
    rows = await conn.fetch(
        """select * from rating.wallet_topups where contract_id = $1 and status = 'received' and at <= $2
            order by seq""",
        contract_id,
        through,
    )
    return [_topup(r) for r in rows]


async def pending_topups_total(conn: asyncpg.Connection, contract_id: str) -> Fraction:
    """Σ of received top-ups not yet applied: money in the wallet account the R8 state has not seen."""
    total = await conn.fetchval(
        """select coalesce(sum(amount), 0) from rating.wallet_topups
            where contract_id = $1 and status = 'received'""",
        contract_id,
    )
    return Fraction(total)


async def mark_topups_applied(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute(
            "update rating.wallet_topups set status = 'applied' where seq = any($1::bigint[])", list(seqs)
        )
