"""Wiring of the payouts worker: one consumer that records what R15 needs and plans at each close, one
that applies the bank's results to payout files (R16), and the task that cuts and sends the files."""

from libs.messaging.worker import Service
from services.payouts.files import BANK_RESULTS, files_task
from services.payouts.handlers import SUBSCRIPTION

SERVICE = Service(
    name="payouts",
    subscriptions=(SUBSCRIPTION, BANK_RESULTS),
    tasks=(files_task,),
    description="Payout planning per supplier and statement currency at each close (R15) "
    "(statements, charges, invoices, invoice payments, suppliers, fx rates, ticks → payouts.v1); payout files "
    "cut per rail, sent through SETTLE_PAYOUT_OUTBOX_DIR and followed to completion (R16; payouts.bank_results.v1)",
)
