-- Reconciliation (R17): imported bank and processor lines, and each run's matches and breaks.
-- Amounts are bigint minor units of the row's currency, positive; `direction` carries the sign.
create schema if not exists reconcile;

-- One row per bank file ever imported (camt.053 or BAI2); file_id = sha256 of its bytes, so importing
-- the same file again changes nothing.
create table reconcile.bank_files (
    file_id     text        primary key,
    name        text        not null,
    format      text        not null check (format in ('camt053', 'bai2')),
    statements  int         not null,
    lines       int         not null,
    imported_at timestamptz not null default now()
);

-- A bank line, keyed by a hash of its content and its ordinal among equal lines of its statement: the
-- same line in an overlapping statement (intraday, then end of day) is stored once.
create table reconcile.bank_lines (
    line_hash          text        primary key,
    file_id            text        not null references reconcile.bank_files (file_id),
    line_no            int         not null,
    account            text        not null,
    currency           text        not null check (currency ~ '^[A-Z]{3}$'),
    amount_minor       bigint      not null check (amount_minor >= 0),
    direction          text        not null check (direction in ('credit', 'debit')),
    status             text        not null check (status in ('booked', 'pending', 'info')),
    booking_date       date,
    value_date         date,
    type_code          text        not null default '',
    end_to_end_id      text,
    bank_reference     text,
    customer_reference text,
    description        text        not null default '',
    return_reason      text
);
create index bank_lines_day on reconcile.bank_lines (coalesce(booking_date, value_date));

-- Processor balance transactions (charges, refunds, disputes, payouts) as the processor reports them.
create table reconcile.processor_lines (
    gateway      text        not null,
    txn_id       text        not null,
    type         text        not null,
    source       text        not null,
    amount_minor bigint      not null,
    fee_minor    bigint      not null,
    net_minor    bigint      not null check (net_minor = amount_minor - fee_minor),
    currency     text        not null check (currency ~ '^[A-Z]{3}$'),
    created_at   timestamptz not null,
    available_at timestamptz not null,
    reference    text,
    imported_at  timestamptz not null default now(),
    primary key (gateway, txn_id)
);
create index processor_lines_created on reconcile.processor_lines (created_at);

-- A reconciliation run: its date, window and what it found (the report's totals as JSON).
create table reconcile.runs (
    run_id        bigint generated always as identity primary key,
    as_of         date        not null,
    window_days   int         not null check (window_days >= 0),
    matches       int         not null,
    breaks        int         not null,
    overdue       int         not null,
    totals        jsonb       not null,
    started_at    timestamptz not null default now()
);

-- Each match: its leg, how it was made, and the records (source, source id) it joins.
create table reconcile.matches (
    run_id     bigint not null references reconcile.runs (run_id),
    match_no   int    not null,
    leg        text   not null check (leg in ('processor', 'bank')),
    how        text   not null check (how in ('reference', 'amount')),
    currency   text   not null,
    amount_minor bigint not null,
    records    jsonb  not null,
    primary key (run_id, match_no)
);

-- Each break: exactly one R17 reason, its age in days on the run's date, overdue (older than the window
-- and not a timing difference), and the records involved.
create table reconcile.breaks (
    run_id     bigint not null references reconcile.runs (run_id),
    break_no   int    not null,
    reason     text   not null check (reason in ('missing_in_bank', 'missing_in_ledger', 'missing_at_processor',
                                                 'amount_mismatch', 'currency_mismatch', 'duplicate', 'timing')),
    leg        text   not null check (leg in ('processor', 'bank')),
    age_days   int    not null,
    overdue    boolean not null,
    records    jsonb  not null,
    primary key (run_id, break_no)
);
create index breaks_reason on reconcile.breaks (run_id, reason);
