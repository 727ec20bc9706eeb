"""The payouts service's Prometheus metrics (declared once; alert rules in deploy/ use these names).

Gauges, set from the database by the payouts worker's file task (restart-safe: nothing is counted in
memory)."""

from __future__ import annotations

from prometheus_client import Gauge

PAYOUTS = Gauge("settle_payouts", "Payouts by state and rail (R15, R16)", ["state", "rail"])
RETURNS = Gauge(
    "settle_payout_returns", "Payout attempts returned or rejected by the bank, by kind and code", ["kind", "code"]
)
IN_TRANSIT = Gauge(
    "settle_payouts_in_transit_amount",
    "Amount of payouts sent and not yet completed, returned or rejected, in the currency's major unit",
    ["currency"],
)
OLDEST_UNACKNOWLEDGED = Gauge(
    "settle_payout_file_oldest_unacknowledged_seconds",
    "Age of the oldest payout file built or submitted and not acknowledged by the bank (0: none)",
)
TICKS_UNPLANNED = Gauge(
    "settle_payout_ticks_unplanned",
    "Clock ticks payouts has read and not planned yet: planning waits for the statements final by the tick, "
    "payments' answer (payments.watermark), rating's charges.watermark and invoicing's invoices.watermark",
)
WAITING_OPERATOR = Gauge(
    "settle_payouts_waiting_operator",
    "Payouts no rail can carry (over every limit, invalid payee): an operator decides",
)
