"""The background close: invoices per contract period (R1, R3, R5-R7, R10), credit notes, supplier
statements per month (R12) — in chunks, each chunk one transaction.

How work is found (the consumer only records; see :mod:`services.invoicing.handlers`):

* a contract is due when the next period to invoice ends at or before its partition's watermark
  (``contract_state.next_close_at``), or when late charges arrived for it (``late_work``). Up to
  :data:`libs.limits.CLOSE_CHUNK_CONTRACTS` contracts are locked ``for update skip locked`` per
  transaction, so two invoicing workers share the work and a first-of-month close of 100,000
  contracts is 200 short transactions, never one giant one, while the consumer keeps flowing;
* once no contract is due up to the least partition watermark, ``invoices.watermark`` tells every
  partition of invoices.finalized.v1 so (:mod:`~services.invoicing.invoice_marks`);
* month M's statements close when every partition's watermark reached the first instant of M+1 and
  every known contract's periods ending by then are invoiced (invoices first, then statements).

Idempotent and crash-safe: a chunk commits its documents, their numbers, the charges they carry,
the close progress, the ledger entries and the outbox rows together; a killed worker leaves nothing
half-done and the next one resumes where the last commit left off. ``unique (contract_id,
period_start)`` and ``unique (supplier_id, currency, month)`` hold even against a bug.

A contract whose close breaks a billing rule (or hits a bug) is set aside with the reason in
``contract_state.blocked_reason`` (it then holds back the month's statements, on purpose: a month is
not final while one of its invoices is missing); the rest of its chunk closes without it.

The pieces: :mod:`~services.invoicing.invoice_close` (contract periods: invoices, credit notes),
:mod:`~services.invoicing.statement_close` (monthly statements), :mod:`~services.invoicing.entries`
(their ledger entries, pure). This module is the loop that runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import structlog

from domain.contracts.store import load_many
from libs import limits
from libs.db.pool import transaction
from libs.errors import InfrastructureError, RetryableError, SettleError
from libs.messaging.worker import Runtime
from services.invoicing import invoice_marks, store
from services.invoicing.entries import RenterAmounts, invoice_amounts, renter_entry, statement_entry
from services.invoicing.invoice_close import ContractPlan, finalize_plans, plan_contract
from services.invoicing.statement_close import close_statement_chunk

log = structlog.get_logger("settle.invoicing.closer")

IDLE_WAIT_S = 0.2
"""How long the closer sleeps when it found nothing to do (it also wakes on stop)."""


def _reason(error: BaseException) -> str:
    if isinstance(error, SettleError):
        return error.reason
    return f"unexpected {type(error).__name__}: {error}"


class Closer:
    """One invoicing worker's closer. Several may run (one per worker): they share the work."""

    def __init__(self, pool: asyncpg.Pool, *, chunk: int | None = None) -> None:
        limit = limits.CLOSE_CHUNK_CONTRACTS  # read now, not at import: a setting may lower it
        self.chunk = limit if chunk is None else chunk
        assert 0 < self.chunk <= limit, f"close chunk {self.chunk} outside 1..{limit}"
        self.pool = pool

    async def step(self) -> bool:
        """One unit of work (a chunk of contracts, else a chunk of statements). False: nothing to do."""
        if await self.close_invoices():
            return True
        async with transaction(self.pool) as conn:
            if await invoice_marks.announce(conn):  # after the invoices it vouches for committed
                return True
        return await self.close_statements()

    async def close_invoices(self) -> bool:
        picked: list[str] = []
        try:
            async with transaction(self.pool) as conn:
                marks = await store.current_watermarks(conn)
                states = await store.pick_contracts(conn, marks, self.chunk)
                if not states:
                    return False
                picked = [s.contract_id for s in states]
                await self._close(conn, states, marks)
            return True
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            if not picked:
                raise
            log.info(
                "close chunk failed; closing its contracts one by one",
                error=_reason(error)[:300],
                contracts=len(picked),
            )
        for contract_id in picked:
            await self._close_alone(contract_id)
        return True

    async def _close(
        self, conn: asyncpg.Connection, states: Sequence[store.ContractState], marks: dict[int, datetime]
    ) -> int:
        ids = [s.contract_id for s in states]
        terms = await load_many(conn, store.SCHEMA, ids)
        late = await store.take_late_work(conn, ids)  # before reading charges (store.mark_late)
        plans = []
        for state in states:
            contract_terms = terms.get(state.contract_id)
            assert contract_terms is not None, f"contract {state.contract_id} has progress but no terms"
            plans.append(
                await plan_contract(
                    conn, state, contract_terms, marks.get(state.partition), late.get(state.contract_id)
                )
            )
        return await finalize_plans(conn, plans)

    async def _close_alone(self, contract_id: str) -> None:
        try:
            async with transaction(self.pool) as conn:
                marks = await store.current_watermarks(conn)
                states = await store.pick_contracts(conn, marks, 1, only=[contract_id])
                if states:
                    await self._close(conn, states, marks)
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            reason = _reason(error)
            log.error(
                "contract close blocked",
                contract_id=contract_id,
                reason=reason[:500],
                exc_info=not isinstance(error, SettleError),
            )
            async with transaction(self.pool) as conn:
                await store.block_contract(conn, contract_id, reason)

    async def close_statements(self) -> bool:
        try:
            async with transaction(self.pool) as conn:
                return await close_statement_chunk(conn, self.chunk)
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            log.info("statement chunk failed; closing one by one", error=_reason(error)[:300])
        async with transaction(self.pool) as conn:
            locked, month = await store.lock_statement_progress(conn)
            pairs = await store.statement_pairs(conn, month, self.chunk) if locked and month else []
        for pair in pairs:
            try:
                async with transaction(self.pool) as conn:
                    await close_statement_chunk(conn, 1, only=[pair])
            except (InfrastructureError, RetryableError):
                raise
            except Exception as error:
                reason = _reason(error)
                log.error(
                    "statement blocked",
                    supplier_id=pair[0],
                    currency=pair[1],
                    month=month,
                    reason=reason[:500],
                    exc_info=not isinstance(error, SettleError),
                )
                async with transaction(self.pool) as conn:
                    assert month is not None
                    await store.block_statement(conn, pair[0], pair[1], month, reason)
        return True


async def run_closer(rt: Runtime) -> None:
    """The invoicing worker's background task: close until stopped; never blocks the consumer."""
    # ``close_chunk_contracts`` (when the settings have it) may lower the chunk, never raise it.
    configured = getattr(rt.settings, "close_chunk_contracts", None)
    limit = limits.CLOSE_CHUNK_CONTRACTS
    closer = Closer(rt.pool, chunk=limit if configured is None else max(1, min(int(configured), limit)))
    backoff_s = IDLE_WAIT_S
    while not rt.stop.is_set():
        worked = False
        try:
            worked = await closer.step()
            backoff_s = IDLE_WAIT_S
        except RetryableError as error:
            log.info("close step will be retried", error=str(error)[:300])
            worked = True
        except InfrastructureError as error:
            log.warning("database unavailable; close paused", error=str(error)[:300])
            backoff_s = min(backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
        except Exception:  # a bug outside one contract's close: keep the worker alive, say it loudly
            log.exception("close step failed")
            backoff_s = min(backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
        if not worked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), backoff_s)


__all__ = [
    "Closer",
    "ContractPlan",
    "RenterAmounts",
    "close_statement_chunk",
    "finalize_plans",
    "invoice_amounts",
    "plan_contract",
    "renter_entry",
    "run_closer",
    "statement_entry",
]
