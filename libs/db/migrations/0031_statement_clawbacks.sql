-- invoicing: supplier clawbacks (payout.clawback from payouts, R15) wait here for the supplier's statement
-- of their month, or of the next open month when that one is already stated (extension of R12: a negative
-- `clawbacks` line, never an edit of a past statement). One row per clawback id (redelivery: nothing new).
create table invoicing.clawbacks (
    clawback_id    text primary key,
    supplier_id    text        not null,
    currency       text        not null,
    month          text        not null check (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    amount_minor   bigint      not null check (amount_minor < 0),
    invoice_number text        not null,
    kind           text        not null,
    ref            text        not null,
    event_id       text        not null,
    stated_month   text,
    recorded_at    timestamptz not null default now()
);
create index clawbacks_unstated on invoicing.clawbacks (supplier_id, currency) where stated_month is null;
