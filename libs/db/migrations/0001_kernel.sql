-- Kernel: inbox (exactly-once consumption), outbox (transactional publishing), dead letters.
create schema if not exists settle;

-- One row per (consumer, event id) ever handled. The fingerprint tells a redelivery (same payload,
-- skipped) from a conflict (same id, different payload: dead-lettered).
create table settle.inbox (
    consumer     text        not null,
    event_id     text        not null,
    fingerprint  bytea       not null,
    topic        text        not null,
    partition    int         not null,
    "offset"     bigint      not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, event_id)
);
create index inbox_processed_at on settle.inbox (processed_at);

-- Events waiting to be published. The partition is computed when the row is written (the same
-- murmur2 partitioner as Kafka's default), so a relay publishes each (topic, partition) lane in id
-- order and a watermark sent to partition p follows everything written to p before it.
create table settle.outbox (
    id          bigint generated always as identity primary key,
    topic       text        not null,
    partition   int         not null check (partition >= 0),
    key         bytea,
    value       bytea       not null,
    headers     jsonb       not null default '[]'::jsonb,
    event_id    text        not null,
    not_before  timestamptz,
    created_at  timestamptz not null default now(),
    sent_at     timestamptz
);
create index outbox_pending on settle.outbox (topic, partition, id) where sent_at is null;
create index outbox_sent_at on settle.outbox (sent_at) where sent_at is not null;

-- Wake relays on commit instead of polling (one notification per statement; PostgreSQL folds
-- identical notifications of one transaction into one).
create function settle.outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('settle_outbox', '');
    return null;
end $$;
create trigger outbox_notify after insert on settle.outbox
    for each statement execute function settle.outbox_notify();

-- Messages a consumer could not process, with the reason a human can act on and the original bytes.
create table settle.dead_letters (
    id            bigint generated always as identity primary key,
    consumer      text        not null,
    topic         text        not null,
    partition     int         not null,
    "offset"      bigint      not null,
    key           bytea,
    value         bytea,
    headers       jsonb       not null default '[]'::jsonb,
    event_id      text,
    event_type    text,
    error_class   text        not null,
    reason        text        not null,
    created_at    timestamptz not null default now(),
    redriven_at   timestamptz,
    redrive_count int         not null default 0,
    unique (consumer, topic, partition, "offset")
);
create index dead_letters_open on settle.dead_letters (consumer, created_at) where redriven_at is null;
