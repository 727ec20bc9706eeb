-- saga: one saga per contract billing period (= per renter invoice), following the cycle across
-- services (issue 11). Its state is a function of its facts (services/saga/domain.py); every change of
-- state is kept with the event that caused it; compensations are requested at most once per
-- (saga, kind, ref), retried with a new attempt number only after a failure.
create schema if not exists saga;

create table saga.sagas (
    saga_id        text primary key,
    invoice_number text        not null unique,
    invoice_id     text,
    contract_id    text,
    renter_id      text,
    currency       text,
    period_start   timestamptz,
    period_end     timestamptz,
    state          text        not null,
    reason         text        not null default '',
    waits_for      text        not null default '',
    deadline       timestamptz,            -- event time: checked at each clock tick
    inquiry        text,                   -- the step asked about, while one is
    facts          jsonb       not null,   -- domain.Facts
    version        int         not null default 0,
    started_at     timestamptz,            -- event time of the invoice
    state_since    timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
create index on saga.sagas (state, deadline);

create table saga.transitions (
    saga_id     text        not null references saga.sagas (saga_id),
    seq         int         not null,
    from_state  text,
    to_state    text        not null,
    reason      text        not null,
    waits_for   text        not null,
    deadline    timestamptz,
    event_id    text        not null,      -- the event that caused it
    event_type  text        not null,
    event_time  timestamptz not null,
    recorded_at timestamptz not null default now(),
    primary key (saga_id, seq)
);

create table saga.compensations (
    saga_id          text        not null references saga.sagas (saga_id),
    kind             text        not null check (kind in ('hold_earnings', 'clawback', 'reverse_revenue',
                                                          'reverse_supplier_share')),
    ref              text        not null,
    state            text        not null check (state in ('requested', 'done', 'failed')),
    attempts         int         not null check (attempts >= 1),
    last_reason      text        not null default '',
    request_event_id text        not null,  -- the saga.compensation_requested of the latest attempt
    cause_event_id   text        not null,
    requested_at     timestamptz not null,  -- event time
    updated_at       timestamptz not null default now(),
    primary key (saga_id, kind, ref)
);
create index on saga.compensations (state);

-- `settle sagas retry`: audited, once per command id.
create table saga.operator_commands (
    command_id   text primary key,
    saga_id      text        not null references saga.sagas (saga_id),
    requested_by text        not null,
    reason       text        not null,
    from_state   text        not null,
    to_state     text        not null,
    at           timestamptz not null default now()
);
