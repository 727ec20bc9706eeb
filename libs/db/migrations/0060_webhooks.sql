-- The webhooks worker: one row per processor event ever accepted (gateway, event id), written in the
-- same transaction as the event's outbox row, so a webhook delivered twice is published once.
create schema if not exists webhooks;

create table webhooks.received (
    gateway      text        not null,
    event_id     text        not null,
    fingerprint  bytea       not null,
    type         text        not null,
    object_id    text        not null,
    received_at  timestamptz not null default now(),
    primary key (gateway, event_id)
);
create index received_received_at on webhooks.received (received_at);
