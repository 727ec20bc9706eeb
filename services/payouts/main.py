"""Wiring of the payouts worker: one consumer that records what R15 needs and plans at each close."""

from libs.messaging.worker import Service
from services.payouts.handlers import SUBSCRIPTION

SERVICE = Service(
    name="payouts",
    subscriptions=(SUBSCRIPTION,),
    description="Payout planning per supplier and statement currency at each close (R15) "
    "(statements, charges, invoices, invoice payments, suppliers, fx rates, ticks → payouts.v1)",
)
