"""Every limit Settle enforces, in one place (TIGER_STYLE: put a limit on everything).

Units are last in the names. Settings may lower some of these at run time; none may raise them.
"""

from __future__ import annotations

# --- messages ---------------------------------------------------------------------------------
MAX_EVENT_BYTES = 64 * 1024
"""Largest serialized CloudEvent accepted on any topic; larger is dead-lettered unread."""
MAX_ID_CHARS = 128
"""Longest id (event id, allocation id, contract id ...) accepted in any event."""
MAX_TEXT_CHARS = 256
EARLIEST_EVENT_YEAR = 2000
LATEST_EVENT_YEAR = 2099
"""Every time in an event (its envelope ``time`` and any time in ``data``) lies in years 2000–2099 UTC:
an ancient or far-future time is a broken producer clock, dead-lettered rather than billed (a fixed
window, not the wall clock, so a replay decides the same)."""
MAX_SLA_TIERS = 16
MAX_METER_NAME_CHARS = 32
MAX_SEGMENTS_PER_HOUR = 512
"""Billable segments carried by one hourly usage record (more is pathological flapping: ~30 KB)."""
MAX_GPU_COUNT = 4096
MAX_BARRIER_TOPICS = 16
"""Topics a clock tick's barrier names."""
MAX_BARRIER_PARTITIONS = 1000

# --- consumption ------------------------------------------------------------------------------
CONSUME_BATCH_MAX = 1000
"""Messages handled in one database transaction."""
CONSUME_BATCH_TIMEOUT_MS = 50
TRANSIENT_RETRY_ATTEMPTS = 5
"""In-process attempts for a RetryableError before the message is dead-lettered."""
TRANSIENT_RETRY_MAX_WAIT_S = 2.0
INFRA_BACKOFF_MAX_S = 30.0
"""Longest pause between attempts while a dependency (database) is down."""
CONSUMER_START_ATTEMPTS = 8
"""Bounded retries of a Kafka client's start while the broker comes up."""
GROUP_MEMBERS_MAX = 64
"""Workers of one consumer group (each holds a member lock; more cannot join)."""
ASSIGNMENT_INTERVAL_S = 1.0
"""How often a worker re-balances its partition slots against the live members of its group."""
CONSUMER_POLL_MS = 200
"""Longest a consumer waits for records before it looks at its leases, holds and gaps again."""
CONSUMER_IDLE_POLL_MS = 20
"""How long one poll listens before the partitions rest (an empty answer) or the records are handled."""
CONSUMER_IDLE_BACKOFF_MAX_MS = 200
"""Longest rest of an idle consumer between polls (the most a new record waits for it)."""
GAP_REFILL_MAX = 1_000_000
"""Records one gap may be refilled with from the producer's outbox; a bigger gap waits for an operator."""

# --- outbox and relay ---------------------------------------------------------------------------
RELAY_BATCH_MAX = 2000
"""Outbox rows one relay claims per round."""
RELAY_IDLE_WAIT_S = 1.0
"""Longest a relay sleeps without a NOTIFY before it looks again (covers missed notifications)."""
OUTBOX_RETENTION_S = 7 * 24 * 3600
"""Sent outbox rows are pruned after this age."""
INBOX_RETENTION_S = 35 * 24 * 3600
"""Inbox claims are pruned after this age (``libs.messaging.inbox``; README, "Inbox retention")."""
INBOX_RETENTION_FLOOR_S = 14 * 24 * 3600
"""The shortest inbox retention ever applied: a redelivery can come as long as Kafka keeps the event
(7 days by default) plus as long as a relay may re-publish it (the outbox retention, 7 days)."""
INBOX_PRUNE_BATCH_MAX = 10_000
"""Inbox rows deleted per transaction by the pruner."""
INBOX_PRUNE_INTERVAL_S = 3600.0
"""Seconds between the pruner's rounds (it loops without pause while a round deletes a full batch)."""

# --- operations -------------------------------------------------------------------------------
DLQ_LIST_MAX = 1000
REDRIVE_MAX = 10_000
PUBLISH_FILE_MAX_LINES = 5_000_000
REPLAY_MAX_EVENTS = 10_000_000
HELD_LIST_MAX = 1000
"""Held items one `settle held list` shows per kind."""
HELD_METRICS_INTERVAL_S = 60.0
"""Seconds between refreshes of the held-data gauges."""
CLOSE_CHUNK_CONTRACTS = 500
"""Contracts closed per transaction at a period end, so a first-of-month close never blocks others."""

# --- metering policy ---------------------------------------------------------------------------
STALE_ALLOCATION_AFTER_S = 30 * 24 * 3600
"""An allocation open with no lifecycle event for this long raises `metering.allocation_stale`."""
WINDOW_OPEN_LIMIT_S = 72 * 3600
"""A maintenance or outage window open this long raises `metering.window_open_too_long`."""
ARCHIVE_READ_CHUNK = 1000
"""Archived records read (and handed to ``consume()``) per chunk by replay and rebuild."""
