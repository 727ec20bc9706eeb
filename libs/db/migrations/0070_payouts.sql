-- payouts: R15 planning. Facts consumed (payees, FX rates, statements, supplier earnings per invoice,
-- invoices and their payment status), and the payouts planned from them. Amounts are bigint minor units
-- of the column's currency; exact earnings are numeric (× 3600, as charges.rated.v1 carries them).
create schema if not exists payouts;

-- Event time as the clock ticks say: planning time.
create table payouts.clock (
    id boolean primary key default true check (id),
    at timestamptz not null
);

-- supplier.payee_updated, every version (the latest at or before planning applies). `account` is the
-- rail's object as sent (the rails need it); `account_masked` is what listings and logs show.
create table payouts.payees (
    event_id         text primary key,
    supplier_id      text        not null,
    at               timestamptz not null,
    payout_currency  text        not null,
    rail             text        not null,
    account          jsonb       not null,
    account_masked   text        not null,
    minimum_payout   numeric     not null check (minimum_payout >= 0),
    pay_when_paid    boolean     not null,
    on_hold          boolean     not null,
    recorded_at      timestamptz not null default now()
);
create index on payouts.payees (supplier_id, at desc, event_id desc);

-- fx.rate: 1 base = rate quote, as of `as_of`.
create table payouts.fx_rates (
    rate_id  text primary key,
    base     text        not null,
    quote    text        not null,
    rate     numeric     not null check (rate > 0),
    as_of    timestamptz not null,
    event_id text        not null
);
create index on payouts.fx_rates (base, quote, as_of desc);

-- statement.finalized: what R15 pays (net, when positive) per supplier, currency and month.
create table payouts.statements (
    statement_id text primary key,
    number       text        not null,
    supplier_id  text        not null,
    currency     text        not null,
    month        text        not null,
    net_minor    bigint      not null,
    issued_at    timestamptz not null,
    unique (supplier_id, currency, month)
);

-- charge.rated, summed: a supplier's exact earnings of the allocation-hours that one invoice bills
-- (contract, billing period start), per calendar month of delivery (R12: earnings land on that month).
create table payouts.invoice_earnings (
    supplier_id   text        not null,
    currency      text        not null,
    contract_id   text        not null,
    period_start  timestamptz not null,
    month         text        not null,
    earning_x3600 numeric     not null,
    charges       bigint      not null,
    primary key (supplier_id, currency, contract_id, period_start, month)
);

-- invoice.finalized: the invoice that bills a contract's period, and its total.
create table payouts.invoices (
    invoice_id       text primary key,
    number           text        not null,
    contract_id      text        not null,
    period_start     timestamptz not null,
    currency         text        not null,
    total_minor      bigint      not null,
    amount_due_minor bigint      not null,
    issued_at        timestamptz not null,
    unique (contract_id, period_start)
);

-- invoice.payment_status, every revision: what remained at each instant (as_of).
create table payouts.invoice_status (
    invoice_id      text        not null,
    revision        integer     not null,
    remaining_minor bigint      not null,
    as_of           timestamptz not null,
    primary key (invoice_id, revision)
);

-- Plans: a payout (state planned / on_hold, later the rails' states) or, per supplier and statement
-- currency, at most one `waiting` row: the latest planning that found no payout, with its reason.
create table payouts.payouts (
    payout_id           text primary key,
    supplier_id         text        not null,
    currency            text        not null,
    months              text[]      not null check (cardinality(months) > 0),
    amount_minor        bigint      not null,
    held_minor          bigint      not null check (held_minor >= 0),
    payout_currency     text,
    payout_amount_minor bigint,
    rate_id             text,
    rate                numeric,
    rail                text,
    payee_event_id      text,
    state               text        not null,
    reason              text,
    planned_at          timestamptz not null,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (state = 'waiting' or (amount_minor > 0 and payout_amount_minor > 0 and rail is not null)),
    check (state <> 'waiting' or reason is not null)
);
create index on payouts.payouts (supplier_id, currency);
create unique index payouts_one_waiting on payouts.payouts (supplier_id, currency) where state = 'waiting';

-- Pay-when-paid holdings behind each payout (statement currency): for the operator's `show`.
create table payouts.payout_holdings (
    payout_id       text        not null references payouts.payouts (payout_id) on delete cascade,
    contract_id     text        not null,
    period_start    timestamptz not null,
    earnings_minor  bigint      not null,
    released_minor  bigint      not null,
    primary key (payout_id, contract_id, period_start)
);

-- Operator hold / release of a payout, with who and why (settle payouts hold|release).
create table payouts.operator_actions (
    id         bigint generated always as identity primary key,
    at         timestamptz not null default now(),
    actor      text        not null,
    action     text        not null check (action in ('hold', 'release')),
    payout_id  text        not null references payouts.payouts (payout_id),
    reason     text        not null check (reason <> ''),
    from_state text        not null,
    to_state   text        not null
);
create index on payouts.operator_actions (payout_id, at);
