"""Wiring of the journal worker."""

from libs.messaging.worker import Service
from services.journal.handlers import SUBSCRIPTION

SERVICE = Service(
    name="journal",
    subscriptions=(SUBSCRIPTION,),
    description="Manual ledger transfers (journal.requests.v1 → ledger → journal.posted.v1)",
)
