-- The input archive: every record a consumer read from an archived topic (the platform's inputs and the
-- clock's ticks), kept as it came — bytes, key, headers, place in the log — so that a range can be
-- replayed, or all derived state rebuilt, after the broker has deleted it (libs.messaging.archive).
--
-- One row per log position (topic, partition, offset), whoever read it first: several consumer groups
-- read the same topic and each archives in its own batch transaction; the others' inserts do nothing.
-- Range-partitioned by the event's month (the same for every consumer of a record, so the unique key,
-- which must contain the partition key, still identifies the log position). Records whose event time is
-- unknown (undecodable bytes) or outside 2000–2100 have a null event_time and live in the default
-- partition. Month partitions are created on demand by the writers and dropped whole by the prune.
create table settle.input_archive (
    topic         text        not null,
    partition     int         not null,
    "offset"      bigint      not null,
    event_time    timestamptz,
    event_id      text,
    event_type    text,
    key           bytea,
    value         bytea,
    headers       jsonb       not null default '[]'::jsonb,  -- [[name, base64 value], ...]
    consumer      text        not null,
    received_at   timestamptz not null default now(),
    constraint input_archive_position unique nulls not distinct (topic, partition, "offset", event_time)
) partition by range (event_time);

create table settle.input_archive_undated partition of settle.input_archive default;

-- Each replay and rebuild, who ran it, with what arguments, and how it ended (the operator audit of
-- runs; settle.operator_actions is the audit of actions on single held or quarantined items).
create table settle.replay_runs (
    id          bigint generated always as identity primary key,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    operator    text        not null,
    command     text        not null check (command in ('replay', 'rebuild')),
    arguments   jsonb       not null,
    outcome     text        not null default 'running' check (outcome in ('running', 'done', 'failed')),
    detail      jsonb       not null default '{}'::jsonb
);
