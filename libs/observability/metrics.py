"""Every Prometheus metric Settle exports, declared once (names are part of the dashboards' contract)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("settle_messages_total", "Messages handled by a consumer, by outcome", ["consumer", "outcome"])
DEDUP_HITS = Counter("settle_dedup_hits_total", "Redelivered events skipped by the inbox", ["consumer"])
HANDLER_SECONDS = Histogram(
    "settle_batch_handler_seconds",
    "Time to handle one consumed batch (decode, claim, handler, commit)",
    ["consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "settle_batch_size", "Records per consumed batch", ["consumer"], buckets=(1, 10, 50, 100, 250, 500, 1000)
)
CONSUMER_LAG = Gauge(
    "settle_consumer_lag_messages", "High watermark minus position", ["consumer", "topic", "partition"]
)
INFRA_FAILURES = Counter(
    "settle_infrastructure_failures_total", "Batches not acknowledged because a dependency was down", ["consumer"]
)
CONSUMER_GAPS = Counter(
    "settle_consumer_gap_total",
    "Ranges of a partition the broker deleted before a consumer read them, by what happened next "
    "(refilled from the producer's outbox, or stopped for an operator)",
    ["consumer", "topic", "outcome"],
)
CONSUMER_GAPS_OPEN = Gauge(
    "settle_consumer_gaps_open", "Partitions a consumer has stopped because of an unrecovered gap", ["consumer"]
)
CONSUMER_PARTITIONS_OWNED = Gauge(
    "settle_consumer_partitions_owned", "Partition slots this process holds for a consumer group", ["consumer"]
)
CONSUMER_HELD_PARTITIONS = Gauge(
    "settle_consumer_held_partitions",
    "Partitions paused at a barrier (a clock tick's end offsets) until the close that needs them is done",
    ["consumer"],
)
OUTBOX_PUBLISHED = Counter("settle_outbox_published_total", "Outbox rows published by relays", ["topic"])
OUTBOX_BACKLOG = Gauge("settle_outbox_backlog_rows", "Outbox rows not yet published")
OUTBOX_OLDEST_AGE = Gauge("settle_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
OUTBOX_PRUNED = Counter("settle_outbox_pruned_total", "Sent outbox rows deleted after retention")
RELAY_ROUND_SECONDS = Histogram(
    "settle_relay_round_seconds",
    "Time of one relay round (claim, publish, mark sent)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CLOCK_LATEST_TICK = Gauge(
    "settle_clock_latest_tick_timestamp_seconds",
    "Event time (Unix seconds) of the latest clock tick the metering worker applied: closes follow it",
)
DEAD_LETTERS_OPEN = Gauge("settle_dead_letters_open", "Dead letters not redriven", ["consumer"])
LEDGER_ENTRIES = Counter("settle_ledger_entries_total", "Journal entries posted", ["kind"])
DOMAIN_EVENTS = Counter(
    "settle_domain_events_total",
    "Business events (invoices finalized, wallet exhausted, quarantined lifecycle events ...)",
    ["service", "event"],
)
HELD_ITEMS = Gauge(
    "settle_held_items", "Items a service holds until something else arrives (or an operator acts)", ["service", "kind"]
)
HELD_OLDEST_AGE = Gauge(
    "settle_held_oldest_age_seconds", "Age (since received) of the oldest held item; 0 when none", ["service", "kind"]
)
HELD_ALERT_AFTER = Gauge(
    "settle_held_alert_after_seconds", "SETTLE_HELD_ALERT_AFTER_S: held data older than this is alerted on"
)
INBOX_PRUNED = Counter("settle_inbox_pruned_total", "Inbox claims deleted after the inbox retention")
WEBHOOKS_REJECTED = Counter(
    "settle_webhook_rejected_total",
    "Webhook requests refused with HTTP 400 before any state change (bad or missing signature, stale, malformed)",
    ["gateway", "reason"],
)
WEBHOOK_EVENTS = Counter(
    "settle_webhook_events_total",
    "Verified webhook events by outcome (accepted, duplicate, conflict: same id with another payload, ignored type)",
    ["gateway", "outcome"],
)
RECONCILE_BREAKS = Gauge(
    "settle_reconcile_breaks",
    "Unexplained breaks of the last reconciliation run (R17) by reason and age bucket (0-3d, 4-7d, 8-30d, 31d+)",
    ["reason", "age_bucket"],
)
RECONCILE_EXPLAINED = Gauge(
    "settle_reconcile_explained_breaks",
    "Breaks of the last reconciliation run that an operator explained (settle breaks explain), by reason",
    ["reason"],
)
RECONCILE_OVERDUE = Gauge(
    "settle_reconcile_overdue_breaks",
    "Breaks of the last run older than its window that are not timing differences (an operator must act)",
)
RECONCILE_MATCHED = Gauge(
    "settle_reconcile_matched", "Records matched by the last reconciliation run, per source", ["source"]
)
RECONCILE_LAST_RUN = Gauge(
    "settle_reconcile_last_run_timestamp_seconds", "Unix time the last reconciliation run finished"
)
