-- metering: allocation state from lifecycle facts, emitted hours, telemetry aggregates, the clock.
create schema if not exists metering;
create table metering.contracts (
    contract_id text primary key,
    renter_id   text        not null,
    currency    text        not null,
    billing_mode text       not null,
    partition   int         not null,
    terms       jsonb       not null,
    updated_at  timestamptz not null default now()
);
create index on metering.contracts (partition);
create table metering.contract_events_held (
    event_id    text primary key,
    contract_id text        not null,
    type        text        not null,
    time        timestamptz not null,
    data        jsonb       not null,
    held_at     timestamptz not null default now()
);
create index on metering.contract_events_held (contract_id);

-- One row per allocation: every lifecycle fact in arrival order (state is recomputed from them by
-- event time), the provisioning data once accepted, and how far its hours have been emitted.
create table metering.allocations (
    allocation_id  text primary key,
    facts          jsonb       not null default '[]'::jsonb,
    next_seq       int         not null default 0,
    contract_id    text,
    renter_id      text,
    supplier_id    text,
    gpu_model      text,
    gpu_count      int,
    closed_through timestamptz,
    idle           boolean     not null default false,
    last_event_at  timestamptz,
    updated_at     timestamptz not null default now()
);
create index allocations_contract on metering.allocations (contract_id);
create index allocations_behind on metering.allocations (closed_through) where not idle and contract_id is not null;

-- What was emitted per allocation, meter and hour: the state at the latest revision.
create table metering.hours (
    allocation_id text        not null,
    meter         text        not null,
    hour_start    timestamptz not null,
    revision      int         not null check (revision >= 1),
    usage         jsonb       not null,
    primary key (allocation_id, meter, hour_start)
);

-- Telemetry aggregates per allocation, meter and hour; emitted_quantity is what usage.metered says.
create table metering.samples (
    allocation_id    text        not null,
    meter            text        not null,
    hour_start       timestamptz not null,
    quantity         numeric     not null,
    emitted_quantity numeric,
    revision         int         not null default 0,
    primary key (allocation_id, meter, hour_start)
);

-- Time: the latest tick (target) and the last watermark sent downstream.
create table metering.clock (
    id             int primary key default 1 check (id = 1),
    target         timestamptz,
    watermark_sent timestamptz
);
insert into metering.clock (id) values (1);

-- Anomalies raised (each once): stale allocations, windows open too long, quarantined/held facts.
create table metering.anomalies (
    anomaly_id    text primary key,
    allocation_id text        not null,
    kind          text        not null,
    reason        text        not null,
    event_ids     text[]      not null,
    at            timestamptz not null,
    raised_at     timestamptz not null default now()
);
create index anomalies_allocation on metering.anomalies (allocation_id);
