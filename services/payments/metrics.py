"""The payments service's Prometheus metrics (declared once; alert rules in deploy/ use these names)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter(
    "settle_payment_attempts_total",
    "Gateway calls of collection attempts, by gateway, method kind, currency and outcome "
    "(success rate per gateway = succeeded / all)",
    ["gateway", "method", "currency", "outcome"],
)
UNKNOWN_OPEN = Gauge("settle_payment_unknown_open", "Attempts whose outcome is unknown (being asked about)")
NEEDS_OPERATOR = Gauge("settle_payment_needs_operator", "Attempts whose outcome stayed unknown after every inquiry")
INTENTS = Gauge("settle_payment_intents", "Collection intents by state (the dunning funnel)", ["state"])
COLLECT_SECONDS = Histogram(
    "settle_payment_collect_seconds",
    "Wall time from an attempt's creation to its successful result",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
CIRCUIT_OPEN = Gauge("settle_payment_circuit_open", "1 while a gateway's circuit breaker is open", ["gateway"])
REFUNDS = Counter(
    "settle_payment_refunds_total", "Refunds sent to processors, by gateway and outcome", ["gateway", "outcome"]
)
REFUNDS_WAITING = Gauge(
    "settle_payment_refunds_waiting", "Refunds not yet done, by state (pending, sending, manual, failed)", ["state"]
)
REFUNDS_OVERPAID = Gauge(
    "settle_payment_refunds_overpaid",
    "Refunds sent or paid for more than the allocation now gives back (the renter was paid back too much)",
)
DISPUTES_OPEN = Gauge("settle_payment_disputes_open", "Disputes opened by processors and not yet closed")
PAST_DUE = Gauge("settle_invoices_past_due", "Invoices whose dunning is exhausted and still unpaid")
TICKS_WAITING = Gauge(
    "settle_payment_ticks_waiting",
    "Clock ticks read but not answered: invoicing has not announced their close (invoices.watermark)",
)
TICKS_WAITING_SPAN = Gauge(
    "settle_payment_ticks_waiting_event_seconds",
    "Event time from the oldest tick waiting for invoicing's close to the latest tick read (0: none waits)",
)
