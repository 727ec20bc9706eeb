"""Wiring of the metering worker: two consumer groups and the closer."""

from libs.messaging.consume import Subscription
from libs.messaging.worker import Service
from schemas import topics
from services.metering.handlers import on_lifecycle_events, on_samples, run_closer

SERVICE = Service(
    name="metering",
    subscriptions=(
        Subscription(consumer="metering", topics=(topics.INFRA_LIFECYCLE, topics.CONTRACTS, topics.CLOCK_TICKS),
                     handler=on_lifecycle_events, batch_max=500),
        Subscription(consumer="metering-samples", topics=(topics.USAGE_SAMPLES,), handler=on_samples,
                     batch_max=1000, producer="metering"),
    ),
    tasks=(run_closer,),
    description="Lifecycle events and telemetry → GPU-seconds per allocation per UTC hour (usage.metered.v1)",
)
