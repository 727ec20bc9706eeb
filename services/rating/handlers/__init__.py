"""rating's consumer: usage → exact charges and earnings (R4, R13), prepaid wallets (R8), credit limits (R9).

One handler for the batch (``usage.metered.v1``, ``contracts.v1``, ``wallets.v1``,
``invoices.finalized.v1``), one transaction. Thin: lock, load, decide with
:mod:`services.rating.domain`, save, post, emit.

* ``usage.metered``: price the record's full state against the last priced state of its
  (allocation, meter, hour) → a signed ``charge.rated`` delta (``charge_id = derive_id("charge",
  usage_id)``) and ONE ledger entry with both sides of the allocation-hour (R13)::

      Dr renter unbilled_receivable / Cr platform unbilled_revenue     (charge)
      Dr platform cost_of_revenue   / Cr supplier payable_accrued      (earning)

  Ledger units telescope per allocation-hour: each entry posts ``round_ledger(new total) −
  round_ledger(previous total)``, so the accrual of an hour is always its exact amount rounded once.
  Usage of a contract rating does not know yet is held and rated when the contract arrives.
* ``contract.*``: the projection; a late amendment or termination re-prices the stored hours it
  affects (``charge_id = derive_id("charge", usage_id, "reprice", contract event id)``).
* ``wallet.topped_up``: the money is in the wallet at once (``Dr cash_clearing / Cr wallet``); the R8
  state machine sees it at the next usage watermark.
* ``usage.watermark(T, p)``: unless usage is held for partition p, run every prepaid wallet of p over
  its charges with ``hour_start + 1h ≤ T`` and top-ups with ``time ≤ T`` in event-time order
  (``wallet_order_key``), post ``Dr wallet / Cr prepaid_applied``, emit ``wallet.drawn`` and the
  alerts and commands, then forward ``charges.watermark(T, p)``.
* ``invoice.finalized`` (postpaid): R9 exposure = Σ amount still owed on the contract's finalized
  invoices (``invoice.payment_status`` from payments lowers it by what was paid) + the exact charges
  of periods that have no finalized invoice; an invoice moves its period's charges from the second
  term to the first. Crossing the credit limit
  upward (on a charge or an invoice) emits ``credit.limit_exceeded`` and a suspend request; the
  charge is booked regardless.

One module per handler: ``usage`` (usage.metered), ``contracts`` (contract.*), ``wallets``
(wallet.topped_up and the wallet run), ``watermarks`` (usage.watermark), ``exposure``
(invoice.finalized and R9); ``batch`` is what they share. This package dispatches the batch.

Ledger entries are unique per ``(cause_id, kind)``: charges use the charge id as cause (one entry
per allocation-hour delta, several may come from one contract event), wallet runs
``derive_id("wallet.run", contract, T)``, top-ups their event id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from domain.contracts import store as contracts_store
from libs.errors import DomainRuleError
from libs.ledger import ensure_accounts
from libs.messaging.consume import Subscription, Tx
from schemas import topics
from schemas.barrier import watermark_waits
from schemas.envelope import Envelope
from services.rating import store
from services.rating.handlers.batch import CONSUMER, CONTRACT_TYPES, Batch, contract_of, watermark_partition
from services.rating.handlers.contracts import on_contract
from services.rating.handlers.exposure import on_invoice, on_payment_status
from services.rating.handlers.usage import on_usage
from services.rating.handlers.wallets import on_topup
from services.rating.handlers.watermarks import (
    FORWARDED_BARRIER,
    forward_ungated,
    on_watermark,
    rate_held_now,
    read_limits_taking_effect,
)


async def on_batch(tx: Tx, events: Sequence[Envelope[Any]]) -> None:
    """Handle a batch in offset order, in the caller's transaction (see the module docstring)."""
    batch = Batch(tx)
    # Locks first (store.lock_batch): the partitions whose watermark this batch may forward, then
    # every contract it may touch — including the prepaid contracts of those partitions, whose
    # wallets a forwarded watermark runs.
    partitions = {watermark_partition(e) for e in events if e.type == "usage.watermark"}
    partitions |= {
        contracts_store.contract_partition(e.data.contract_id) for e in events if e.type == "contract.created"
    }
    contract_ids = {c for c in (contract_of(e) for e in events) if c is not None}
    await store.lock_batch(tx.conn, sorted(partitions), [])
    contract_ids |= set(await store.prepaid_contracts(tx.conn, sorted(partitions)))
    contract_ids |= await read_limits_taking_effect(batch, [e for e in events if e.type == "usage.watermark"])
    await store.lock_batch(tx.conn, [], sorted(contract_ids))
    for n, event in enumerate(events):
        if event.type == "usage.metered":
            if n == 0 or events[n - 1].type != "usage.metered":
                run = list(_hours_of_run(events, n))
                await batch.prefetch((hour for hour, _ in run))
                await batch.prefetch_terms({contract for _, contract in run})
            await on_usage(batch, event)
            continue
        await batch.flush()  # what follows may read the rows the usage before it wrote
        if event.type == "usage.watermark":
            await on_watermark(batch, event)
        elif event.type in CONTRACT_TYPES:
            await on_contract(batch, event)
        elif event.type == "wallet.topped_up":
            await on_topup(batch, event)
        elif event.type == "invoice.finalized":
            await on_invoice(batch, event)
        elif event.type == "invoice.payment_status":
            await on_payment_status(batch, event)
        elif event.type in ("payments.watermark", "invoices.watermark"):
            continue  # for payouts and payments (R15 planning); exposure follows invoices and statuses alone
        else:  # the topic registry decodes nothing else for these topics
            raise DomainRuleError(f"rating does not handle {event.type!r}")
    await batch.flush()
    await ensure_accounts(tx.conn, batch.accounts.values())


def _hours_of_run(events: Sequence[Envelope[Any]], start: int) -> Iterator[tuple[store.HourKey, str]]:
    """The (allocation, meter, hour) and the contract of each usage record from ``start`` to the next other
    event."""
    for event in events[start:]:
        if event.type != "usage.metered":
            return
        yield (event.data.allocation_id, event.data.meter, event.data.hour_start), event.data.contract_id


WATERMARK_WAITS_FOR = (topics.CONTRACTS, topics.WALLETS)
"""A usage watermark is run only once these are read up to its tick's barrier (schemas.barrier)."""


SUBSCRIPTION = Subscription(
    consumer=CONSUMER,
    topics=(
        topics.USAGE_METERED,
        topics.CONTRACTS,
        topics.WALLETS,
        topics.INVOICES_FINALIZED,
        topics.INVOICE_PAYMENTS,
    ),
    handler=on_batch,
    waits=watermark_waits(topics.USAGE_METERED, "usage.watermark", WATERMARK_WAITS_FOR),
    # Usage of a contract whose earlier usage record is dead-lettered waits (revisions of an hour apply in
    # order). Platform inputs (contracts, top-ups) hold nothing: their effects follow event time (R4, R8), so
    # a bad one (no effect, dead-lettered) does not stop the contract's later events.
    hold_topics=frozenset({topics.USAGE_METERED.name}),
)


__all__ = [
    "CONSUMER",
    "FORWARDED_BARRIER",
    "SUBSCRIPTION",
    "WATERMARK_WAITS_FOR",
    "forward_ungated",
    "on_batch",
    "rate_held_now",
]
