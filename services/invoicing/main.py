"""Wiring of the invoicing worker: the consumer records, the background closer closes."""

from libs.messaging.worker import Service
from services.invoicing.closer import run_closer
from services.invoicing.handlers import SUBSCRIPTION

SERVICE = Service(
    name="invoicing",
    subscriptions=(SUBSCRIPTION,),
    tasks=(run_closer,),
    description="Period close per contract (invoices, credit notes) and supplier statements per month "
    "(charges.rated.v1 + contracts.v1 → invoices.finalized.v1, credit_notes.issued.v1, "
    "statements.finalized.v1)",
)
