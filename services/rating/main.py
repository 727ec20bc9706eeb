"""Wiring of the rating worker."""

from libs.messaging.worker import Service
from services.held_gauges import metrics_task
from services.rating.handlers import SUBSCRIPTION

SERVICE = Service(
    name="rating",
    subscriptions=(SUBSCRIPTION,),
    tasks=(metrics_task("rating"),),
    description=(
        "Exact charges and supplier earnings per allocation-hour, prepaid wallets, credit limits "
        "(usage.metered.v1, contracts.v1, wallets.v1, invoices.finalized.v1 → charges.rated.v1, "
        "billing.alerts.v1, platform.commands.v1 + ledger)"
    ),
)
