-- rating: prices usage (R4, R13), runs prepaid wallets (R8) and watches credit limits (R9).
--
-- Exact amounts are stored as "x3600" numerics: the exact amount in major units times 3600. Every
-- amount rating handles (usage charges gpu_seconds × price, decimal top-ups, and sums, differences
-- and minimums of those) is a multiple of 1/3600 of a decimal with at most 12 places, so x3600 is a
-- terminating decimal and PostgreSQL's unconstrained numeric holds it without loss. The one
-- conversion back is exact_from_x3600 (x3600 / 3600 as a Fraction).
create schema if not exists rating;

-- The contracts projection (services.contracts.store.PROJECTION_DDL with schema = rating).
create table rating.contracts (
    contract_id text primary key,
    renter_id   text        not null,
    currency    text        not null,
    billing_mode text       not null,
    partition   int         not null,
    terms       jsonb       not null,
    updated_at  timestamptz not null default now()
);
create index on rating.contracts (partition);
create table rating.contract_events_held (
    event_id    text primary key,
    contract_id text        not null,
    type        text        not null,
    time        timestamptz not null,
    data        jsonb       not null,
    held_at     timestamptz not null default now()
);
create index on rating.contract_events_held (contract_id);

-- The last priced state of each (allocation, meter, hour): what the next revision (or a late
-- amendment / termination) is rated against. segments: [[start, end], ...] RFC 3339 strings.
create table rating.priced_hours (
    allocation_id  text        not null,
    meter          text        not null,
    hour_start     timestamptz not null,
    contract_id    text        not null,
    renter_id      text        not null,
    supplier_id    text        not null,
    usage_id       text        not null,
    revision       int         not null check (revision >= 1),
    gpu_count      int         not null check (gpu_count >= 0),
    segments       jsonb       not null,
    quantity       numeric     not null check (quantity >= 0),
    charge_x3600   numeric     not null,
    earning_x3600  numeric     not null,
    versions       int[]       not null,
    gpu_seconds    bigint      not null,
    primary key (allocation_id, meter, hour_start)
);
create index priced_hours_contract on rating.priced_hours (contract_id, hour_start);

-- Every non-zero charge delta rating emitted: the input of the wallet (prepaid, applied in event-time
-- order at a watermark) and of the credit exposure (postpaid, until an invoice covers its period).
create table rating.charges (
    seq            bigint generated always as identity primary key,
    charge_id      text        not null unique,
    contract_id    text        not null,
    allocation_id  text        not null,
    meter          text        not null,
    hour_start     timestamptz not null,
    at             timestamptz not null,  -- hour_start + 1h: when the hour's usage is complete
    period_start   timestamptz not null,
    period_end     timestamptz not null,
    billing_mode   text        not null check (billing_mode in ('prepaid', 'postpaid')),
    charge_x3600   numeric     not null,
    earning_x3600  numeric     not null,
    wallet_applied boolean     not null default false,
    invoiced       boolean     not null default false
);
create index charges_wallet_pending on rating.charges (contract_id, at) where not wallet_applied;
create index charges_uninvoiced on rating.charges (contract_id, period_start) where not invoiced;

-- Usage of contracts rating does not know yet, rated (in arrival order) when the contract arrives.
-- While a partition holds usage, its watermark is not forwarded.
create table rating.usage_held (
    seq         bigint generated always as identity primary key,
    event_id    text        not null unique,
    contract_id text        not null,
    partition   int         not null,
    envelope    jsonb       not null,
    held_at     timestamptz not null default now()
);
create index usage_held_contract on rating.usage_held (contract_id);
create index usage_held_partition on rating.usage_held (partition);

-- Watermarks per usage.metered partition: the latest received and the latest forwarded to
-- charges.rated (they differ while usage is held for the partition).
create table rating.watermarks (
    partition          int primary key check (partition >= 0),
    received_through   timestamptz not null,
    forwarded_through  timestamptz
);

-- Prepaid wallet state (R8), services.rating.domain.WalletState in x3600 numerics.
create table rating.wallets (
    contract_id        text primary key,
    balance_x3600      numeric not null check (balance_x3600 >= 0),
    last_topup_x3600   numeric check (last_topup_x3600 > 0),
    low_balance_armed  boolean not null,
    exhausted          boolean not null
);
create table rating.wallet_periods (
    contract_id   text        not null,
    period_start  timestamptz not null,
    usage_x3600   numeric     not null,
    drawn_x3600   numeric     not null check (drawn_x3600 >= 0),
    overage_x3600 numeric     not null check (overage_x3600 >= 0),
    primary key (contract_id, period_start),
    check (drawn_x3600 + overage_x3600 = usage_x3600)
);

-- Top-ups: held (contract unknown) → received (money posted to the wallet account) → applied (the
-- R8 state machine ran over it at a watermark); quarantined when it can never apply (reason).
create table rating.wallet_topups (
    seq          bigint generated always as identity primary key,
    event_id     text        not null unique,
    contract_id  text        not null,
    amount       numeric     not null check (amount > 0),
    currency     text        not null,
    at           timestamptz not null,
    status       text        not null check (status in ('held', 'received', 'applied', 'quarantined')),
    reason       text
);
create index wallet_topups_open on rating.wallet_topups (contract_id, at) where status in ('held', 'received');

-- Credit exposure (R9) of postpaid contracts: unpaid invoiced (Σ amount_due of finalized invoices; no
-- payments are known to rating yet) + rated charges of periods that have no finalized invoice yet.
create table rating.credit_exposure (
    contract_id        text primary key,
    invoiced_due       numeric not null default 0,  -- Σ amount_due of finalized invoices, major units
    uninvoiced_x3600   numeric not null default 0   -- Σ charge_x3600 of charges not yet on an invoice
);
create table rating.invoices (
    invoice_id    text primary key,
    contract_id   text        not null,
    period_start  timestamptz not null,
    period_end    timestamptz not null,
    amount_due    numeric     not null check (amount_due >= 0)
);
create index invoices_contract on rating.invoices (contract_id, period_start);
