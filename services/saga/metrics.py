"""The saga coordinator's Prometheus metrics (declared once; alert rules in deploy/ use these names)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SAGAS = Gauge("settle_sagas", "Sagas (one per contract billing period) by state", ["state"])
OLDEST_OPEN = Gauge(
    "settle_saga_oldest_open_seconds",
    "Wall seconds since the oldest saga in each open state entered it (0: none)",
    ["state"],
)
OVERDUE = Gauge(
    "settle_sagas_overdue",
    "Open sagas whose event-time deadline is more than a day behind the latest tick (not moved: stuck)",
)
COMPENSATIONS = Counter(
    "settle_saga_compensations_total", "Compensation requests published, by kind (every attempt)", ["kind"]
)
COMPENSATION_FAILURES = Counter(
    "settle_saga_compensation_failures_total", "Compensations the acting side reported failed, by kind", ["kind"]
)
ENDED = Counter("settle_sagas_ended_total", "Sagas that reached a terminal state, by state", ["state"])
REOPENED = Counter(
    "settle_sagas_reopened_total",
    "Sagas moved out of a terminal state by a late fact (e.g. a supplier's plan read after the cycle completed),"
    " by the state left",
    ["state"],
)
