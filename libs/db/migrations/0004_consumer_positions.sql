-- Consumer positions, partition gaps and published offsets (no billing data lost when a consumer lags).

-- Where each consumer group is in each partition it reads: the offset of the next record to handle.
-- Written in the same transaction as the batch's inbox claims and effects, so a restarted worker
-- resumes exactly where the committed work ends (Kafka's own committed offsets are not used).
create table settle.consumer_positions (
    consumer    text        not null,
    topic       text        not null,   -- logical topic name (no deployment prefix)
    partition   int         not null check (partition >= 0),
    next_offset bigint      not null check (next_offset >= 0),
    updated_at  timestamptz not null default now(),
    primary key (consumer, topic, partition)
);

-- A range of a partition the broker no longer has (retention deleted it before it was consumed, or
-- the broker lost its log). The partition is stopped until the range is recovered (automatically
-- from the producing service's outbox, or by an operator) — never skipped silently.
create table settle.consumer_gaps (
    id            bigint generated always as identity primary key,
    consumer      text        not null,
    topic         text        not null,
    partition     int         not null,
    missing_from  bigint      not null,   -- first offset the consumer still needed
    missing_to    bigint      not null,   -- first offset the broker still has (exclusive end)
    reason        text        not null,
    detected_at   timestamptz not null default now(),
    resolved_at   timestamptz,
    resolution    text
);
create unique index consumer_gaps_open on settle.consumer_gaps (consumer, topic, partition) where resolved_at is null;

-- The offset each outbox row got when it was published: a gap in an internal topic can be refilled
-- from here, exactly, in order (see libs/messaging/gaps.py and `settle outbox resend`).
alter table settle.outbox add column published_offset bigint;
create index outbox_published on settle.outbox (topic, partition, published_offset) where published_offset is not null;
