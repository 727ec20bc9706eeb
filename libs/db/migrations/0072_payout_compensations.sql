-- payouts acts on the saga's compensation requests (issues 10, 11; services/payouts/compensations.py).
-- Each request is answered once per request id; each (kind, ref) is applied once, whatever the attempt.

-- Every request seen, with its answer (the request id is the saga's event id: (saga, kind, ref, attempt)).
create table payouts.compensation_requests (
    request_id     text primary key,
    saga_id        text        not null,
    kind           text        not null check (kind in ('hold_earnings', 'clawback', 'reverse_revenue',
                                                        'reverse_supplier_share')),
    ref            text        not null,
    attempt        int         not null check (attempt >= 1),
    invoice_number text        not null,
    outcome        text        not null check (outcome in ('applied', 'duplicate', 'failed')),
    reason         text        not null default '',
    at             timestamptz not null,            -- the request's event time
    recorded_at    timestamptz not null default now()
);

-- Applied once per (kind, ref): a retried attempt finds its row and applies nothing again. `lines` is the
-- answer's per-supplier result (jsonb list), repeated to a duplicate request.
create table payouts.compensations_applied (
    kind           text        not null,
    ref            text        not null,
    invoice_number text        not null,
    request_id     text        not null references payouts.compensation_requests (request_id),
    lines          jsonb       not null,
    at             timestamptz not null,
    primary key (kind, ref)
);

-- hold_earnings: every supplier's earnings tied to the invoice are held from payouts from `held_at` until
-- a payment status with nothing remaining (`released_at`, its as_of).
create table payouts.earnings_holds (
    invoice_id   text primary key,
    number       text        not null,
    contract_id  text        not null,
    period_start timestamptz not null,
    held_at      timestamptz not null,
    released_at  timestamptz,
    request_id   text        not null
);

-- clawback / reverse_supplier_share: one supplier's share, published as payout.clawback for its next
-- statement. `refunded_minor` is the request's amount (invoice currency), `amount_minor` the share (> 0,
-- statement currency), `earnings_minor` the E it was taken of.
create table payouts.clawbacks (
    clawback_id    text primary key,
    kind           text        not null check (kind in ('clawback', 'reverse_supplier_share')),
    ref            text        not null,
    invoice_id     text        not null,
    supplier_id    text        not null,
    currency       text        not null,
    earnings_minor bigint      not null,
    refunded_minor bigint      not null check (refunded_minor >= 0),
    amount_minor   bigint      not null check (amount_minor > 0),
    month          text        not null,
    at             timestamptz not null,
    request_id     text        not null,
    unique (supplier_id, invoice_id, kind, ref)
);
create index on payouts.clawbacks (invoice_id, supplier_id);
