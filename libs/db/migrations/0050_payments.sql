-- payments: money received and collected, applied to invoices in event time (R11), collection with
-- retries and dunning (R14), refunds and disputes. Amounts are bigint minor units of `currency`.
create schema if not exists payments;

-- Facts. The allocation of one renter in one currency is recomputed from these whenever one arrives.
create table payments.invoices (
    invoice_id       text primary key,
    number           text        not null unique,
    contract_id      text        not null,
    renter_id        text        not null,
    currency         text        not null,
    billing_mode     text        not null,
    period_start     timestamptz not null,
    exists_at        timestamptz not null,  -- the end of the period (R11)
    issued_at        timestamptz not null,
    due_at           timestamptz not null,
    amount_due_minor bigint      not null,
    event_id         text        not null
);
create index on payments.invoices (renter_id, currency);
create index on payments.invoices (due_at) where billing_mode = 'postpaid' and amount_due_minor > 0;

create table payments.credit_notes (
    credit_note_id text primary key,
    invoice_number text        not null,
    renter_id      text        not null,
    currency       text        not null,
    at             timestamptz not null,
    total_minor    bigint      not null,
    event_id       text        not null
);
create index on payments.credit_notes (renter_id, currency);

-- Money in: receipts (payments.received.v1), successful collections, dispute reversals.
create table payments.money_in (
    renter_id    text        not null,
    source_id    text        not null,  -- receipt:<receipt_id> | attempt:<attempt_id> | dispute_won:<id>
    currency     text        not null,
    kind         text        not null check (kind in ('receipt', 'collection', 'dispute_reversal')),
    amount_minor bigint      not null check (amount_minor > 0),
    at           timestamptz not null,
    reference    text        not null default '',
    order_key    text        not null,
    rail         text,
    gateway      text,
    event_id     text        not null,
    recorded_at  timestamptz not null default now(),
    primary key (renter_id, source_id)
);
create index on payments.money_in (renter_id, currency);

-- Money out: refunds and disputes, each against one invoice (capped at what was paid on it).
create table payments.money_out (
    source_id      text primary key,
    renter_id      text        not null,
    currency       text        not null,
    kind           text        not null check (kind in ('refund', 'dispute')),
    invoice_number text        not null,
    amount_minor   bigint      not null check (amount_minor > 0),
    at             timestamptz not null,
    event_id       text        not null
);
create index on payments.money_out (renter_id, currency);

-- What the ledger holds for a renter in a currency (the totals last posted); the row is the lock that
-- serialises recomputations of one renter-currency across consumers.
create table payments.books (
    renter_id        text   not null,
    currency         text   not null,
    money_in_minor   bigint not null default 0,
    applied_minor    bigint not null default 0,
    credit_minor     bigint not null default 0,
    note_refund_minor bigint not null default 0,
    note_excess_minor bigint not null default 0,
    taken_minor      bigint not null default 0,
    version          bigint not null default 0,
    primary key (renter_id, currency)
);

-- The current payment status of each invoice (the read model behind `settle invoices list`).
create table payments.invoice_status (
    invoice_id       text primary key,
    number           text        not null unique,
    contract_id      text        not null,
    renter_id        text        not null,
    currency         text        not null,
    amount_due_minor bigint      not null,
    paid_minor       bigint      not null,
    remaining_minor  bigint      not null,
    status           text        not null,
    past_due         boolean     not null default false,
    paid_at          timestamptz,
    revision         int         not null,
    updated_at       timestamptz not null default now()
);
create index on payments.invoice_status (renter_id, currency);

-- The applications of the latest recomputation, for tracing (`settle payments show`, receipts list).
create table payments.applications (
    renter_id      text        not null,
    currency       text        not null,
    seq            int         not null,
    source_id      text        not null,
    invoice_number text        not null,
    amount_minor   bigint      not null,
    at             timestamptz not null,
    primary key (renter_id, currency, seq)
);
create index on payments.applications (source_id);
create index on payments.applications (invoice_number);

-- Payment methods (tokens only). The latest event per method by event time wins.
create table payments.methods (
    renter_id  text        not null,
    method_id  text        not null,
    kind       text        not null,
    token      text        not null,
    currency   text        not null,
    is_default boolean     not null,
    attached   boolean     not null,
    at         timestamptz not null,
    event_id   text        not null,
    primary key (renter_id, method_id)
);

-- Event time as the clock ticks say (collections start on due dates in event time).
create table payments.clock (
    id  int primary key check (id = 1),
    at  timestamptz not null
);

-- Collection: one intent per invoice, attempts under it (R14).
create table payments.intents (
    intent_id        text primary key,
    invoice_id       text        not null unique,
    invoice_number   text        not null,
    contract_id      text        not null,
    renter_id        text        not null,
    currency         text        not null,
    state            text        not null check (state in
                     ('collecting', 'waiting_retry', 'succeeded', 'hard_declined', 'past_due', 'settled_otherwise', 'no_method')),
    tries            int         not null default 0,   -- scheduled tries started (R14: at most 7)
    first_try_at     timestamptz,
    next_try_at      timestamptz,                      -- event time of the next scheduled try
    hard_method      text,                             -- the method a hard decline stopped
    reason           text        not null default '',
    updated_at       timestamptz not null default now()
);
create index on payments.intents (state, next_try_at);

create table payments.attempts (
    attempt_id      text primary key,
    intent_id       text        not null references payments.intents,
    try_no          int         not null,
    call_no         int         not null,              -- > 1 when a definite failure failed over
    idempotency_key text        not null unique,
    gateway         text        not null,
    method_id       text        not null,
    token           text        not null,
    amount_minor    bigint      not null check (amount_minor > 0),
    currency        text        not null,
    at              timestamptz not null,              -- event time of the try
    state           text        not null check (state in
                    ('pending', 'sending', 'succeeded', 'declined', 'error', 'unknown', 'needs_operator')),
    code            text,
    decline_kind    text,                              -- soft | hard (configuration)
    charge_id       text,
    message         text        not null default '',
    decision        jsonb       not null,              -- the routing decision and its reason
    inquiries       int         not null default 0,
    next_inquiry_at timestamptz,                       -- wall clock (the processor's reality)
    sent_at         timestamptz,
    resolved_at     timestamptz,
    created_at      timestamptz not null default now()
);
create index on payments.attempts (state);
create index on payments.attempts (intent_id);
create index on payments.attempts (gateway, resolved_at);

create table payments.refunds (
    refund_id       text primary key,
    renter_id       text        not null,
    currency        text        not null,
    invoice_number  text        not null,
    amount_minor    bigint      not null check (amount_minor > 0),
    at              timestamptz not null,
    reason          text        not null,
    attempt_id      text,                               -- the collected charge refunded (card rails)
    gateway         text,
    idempotency_key text        not null unique,
    state           text        not null check (state in ('pending', 'sending', 'succeeded', 'failed', 'manual')),
    processor_id    text,
    message         text        not null default '',
    created_at      timestamptz not null default now()
);
create index on payments.refunds (state);

create table payments.disputes (
    dispute_id   text primary key,
    attempt_id   text,
    charge_id    text        not null,
    gateway      text        not null,
    renter_id    text        not null,
    currency     text        not null,
    invoice_number text      not null,
    amount_minor bigint      not null,
    fee_minor    bigint      not null default 0,
    state        text        not null check (state in ('open', 'won', 'lost')),
    opened_at    timestamptz not null,
    closed_at    timestamptz
);

-- Circuit breakers per gateway (wall clock: a gateway's health is the processor's reality).
create table payments.circuits (
    gateway          text primary key,
    failures         int         not null default 0,
    open_until       timestamptz,
    updated_at       timestamptz not null default now()
);
